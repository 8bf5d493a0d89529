"""A published diffusers video transformer behind vdm's denoiser interface,
``forward(x, t, labels=None, context=None, text=None)``, optionally with LoRA adapters.

The transformer sees exactly what its own pipeline gives it (see :mod:`vdm.published.families`),
so a fine-tuned model samples as diffusers does. With LoRA the base weights are frozen and stay
out of everything vdm writes: the state dict (so checkpoints and the EMA's copy hold the
adapters alone), the optimizer and the averaged copy's memory (the copy shares them)."""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from vdm.autoencoders.dtypes import torch_dtype
from vdm.errors import UserError
from vdm.models.text_embedding import TextEmbedding
from vdm.published.families import Family, family_of
from vdm.published.folder import KEY, transformer_folder, weights_digest
from vdm.published.lora import add_lora, lora_config

log = logging.getLogger(__name__)

TEXT_WIDTH_KEYS = ("text_dim", "text_embed_dim", "caption_channels", "cross_attention_dim")


def text_width(config: dict) -> int:
    """The caption width a transformer config expects (its cross-attention's input)."""
    for key in TEXT_WIDTH_KEYS:
        if config.get(key):
            return int(config[key])
    return 0


class DiffusersDenoiser(nn.Module):
    """``transformer`` (a diffusers video transformer of ``family``) as a vdm denoiser.

    Args:
        transformer: the diffusers model.
        family: how to call it (:func:`~vdm.published.families.family_of`).
        fingerprint: what base model it is (class, weights' SHA-256, LoRA settings); recorded
            in checkpoints, which refuse another.
    """

    num_classes = 0  # prompted, never class-conditional
    frame_conditioning = False

    def __init__(self, transformer: nn.Module, family: Family, fingerprint: dict) -> None:
        super().__init__()
        self.transformer = transformer
        self.family = family
        self.fingerprint = fingerprint
        self.text_dim = text_width(dict(transformer.config))
        self.in_channels = int(transformer.config.in_channels)
        # Names (relative to this module) of the frozen base weights when adapters train:
        # left out of state dicts, shared by copies.
        self.frozen = frozenset(
            name for name, p in self.named_parameters() if not p.requires_grad
        ) if fingerprint.get("lora") else frozenset()  # fmt: skip
        self.register_state_dict_post_hook(drop_frozen)
        self.register_load_state_dict_post_hook(allow_missing_frozen)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        text: TextEmbedding | None = None,
    ) -> torch.Tensor:
        """The transformer's prediction for ``x (B, C, T, H, W)`` at times ``t (B,)``, prompted
        with ``text``."""
        if labels is not None or context is not None or t.dim() != 1:
            raise UserError(
                f"{type(self.transformer).__name__} takes a prompt, not class labels or given "
                "frames: train it with data.num_classes=0 and context=none."
            )
        if text is None:
            raise UserError(
                "A published transformer is prompted: give it a text encoder "
                "(text_encoder=t5 text_encoder.path=${model.path}, as the finetune presets do)."
            )
        dtype = self.transformer.dtype
        tokens = text.tokens.to(dtype)
        mask = text.mask.to(tokens.device)
        out = self.family.call(self.transformer, x.to(dtype), t, tokens, mask)
        return out.to(x.dtype)

    def __deepcopy__(self, memo: dict) -> DiffusersDenoiser:
        # An averaged (EMA) copy of a LoRA model shares the frozen base rather than holding a
        # second one: only the adapters are averaged and differ.
        for name, parameter in self.named_parameters():
            if name in self.frozen:
                memo[id(parameter)] = parameter
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            clone.__dict__[key] = copy.deepcopy(value, memo)
        return clone


def drop_frozen(module: DiffusersDenoiser, state: dict, prefix: str, _metadata) -> None:
    """State-dict hook: leave the frozen base weights out (a LoRA checkpoint holds adapters)."""
    for name in module.frozen:
        state.pop(prefix + name, None)


def allow_missing_frozen(module: DiffusersDenoiser, incompatible) -> None:
    """Load hook: the frozen base weights are loaded from the base folder, not the state dict."""
    missing = incompatible.missing_keys
    kept = [k for k in missing if not any(k.endswith(name) for name in module.frozen)]
    missing[:] = kept


def import_diffusers():
    try:
        import diffusers  # optional: vdm's own denoisers never import it
    except ImportError:
        raise UserError(
            "model=diffusers needs the diffusers package: pip install 'vdm[finetune]'."
        ) from None
    return diffusers


def load_diffusers_denoiser(
    path: str,
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    lora: dict | None = None,
    in_channels: int | None = None,
    text_dim: int | None = None,
    num_classes: int = 0,
    frame_conditioning: bool = False,
) -> DiffusersDenoiser:
    """The transformer of the diffusers pipeline folder ``path`` as a vdm denoiser
    (``model=diffusers``).

    Args:
        path: a pipeline folder (``transformer/`` inside) or the transformer's own folder.
        dtype: of the weights: float32 | bfloat16 | float16. With LoRA a bfloat16 base halves
            the memory while the adapters stay float32; full fine-tuning wants float32 weights
            (and trainer.precision=bf16-mixed for speed).
        gradient_checkpointing: recompute each block's activations in backward.
        lora: ``{rank, alpha, dropout, target_modules}`` (null targets: the family's attention
            projections), or None to train every weight.
        in_channels, text_dim: what the run's autoencoder and text encoder give; checked
            against the transformer's config (None: not checked).
        num_classes, frame_conditioning: must be 0 / false: published transformers take prompts.
    """
    if not path:
        raise UserError(f"model=diffusers needs {KEY}=DIR (a diffusers pipeline folder).")
    folder, config = transformer_folder(path)
    name = config["_class_name"]
    family = family_of(name, f"{KEY}={path}")
    if num_classes or frame_conditioning:
        raise UserError(
            f"{KEY}={path}: a {name} takes prompts, not class labels or given frames: set "
            "data.num_classes=0 and context=none."
        )
    diffusers = import_diffusers()
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise UserError(
            f"{KEY}={path}: diffusers {diffusers.__version__} has no {name}: pip install -U "
            "diffusers."
        )
    check_width(path, "in_channels", int(config.get("in_channels", 0)), in_channels,
                "the autoencoder's latent_channels (autoencoder.path=${model.path})")  # fmt: skip
    check_width(path, "text width", text_width(config), text_dim,
                "the text encoder's dim (text_encoder.path=${model.path})")  # fmt: skip
    fingerprint = {"kind": "diffusers", "class": name, "path": str(path),
                   "sha256": weights_digest(folder), "lora": None}  # fmt: skip
    transformer = cls.from_pretrained(folder, torch_dtype=torch_dtype(dtype, "model.dtype"))
    if gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if lora is not None:
        targets = lora.get("target_modules") or family.lora_targets
        settings = {
            "rank": lora.get("rank", 16),
            "alpha": lora.get("alpha"),
            "dropout": lora.get("dropout", 0.0),
            "target_modules": list(targets),
        }
        add_lora(transformer, lora_config(**settings))
        fingerprint["lora"] = settings
    trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
    log.info(
        "Loaded %s from %s (%s; %.2f M of %.2f M parameters train)", name, folder, dtype,
        trainable / 1e6, sum(p.numel() for p in transformer.parameters()) / 1e6,
    )  # fmt: skip
    return DiffusersDenoiser(transformer, family, fingerprint)


def check_width(path: str, what: str, model_value: int, given: int | None, source: str) -> None:
    if given is not None and model_value and int(given) != model_value:
        raise UserError(
            f"{KEY}={path}: the transformer's {what} is {model_value} but the run gives "
            f"{given}: use {source}."
        )


def check_same_base(recorded: dict | None, denoiser: nn.Module, where: str) -> None:
    """Refuse (one line) a checkpoint trained on another base model or with other adapters."""
    current = getattr(denoiser, "fingerprint", None)
    if recorded is None and current is None:
        return
    if recorded is None or current is None:
        raise UserError(f"{where} was trained with another denoiser than {KEY}'s model.")
    for key in ("class", "sha256"):
        if recorded.get(key) != current.get(key):
            raise UserError(
                f"{where} was fine-tuned from another base model ({recorded.get('class')} at "
                f"{recorded.get('path')}, weights {str(recorded.get('sha256'))[:12]}…) than "
                f"{KEY}={current.get('path')} ({current.get('class')}, "
                f"{str(current.get('sha256'))[:12]}…): point model.path (model_path=) at the "
                "base it was trained on."
            )
    if recorded.get("lora") != current.get("lora"):
        raise UserError(
            f"{where} has LoRA {recorded.get('lora')}, the config {current.get('lora')}: "
            "resume with the run's own lora settings."
        )
