"""A frozen published text encoder (T5, UMT5, CLIP) read from a local folder, behind vdm's text
interface. Nothing is downloaded: the folder is the model, as ``save_pretrained`` wrote it (model
and tokenizer in one folder) or as a diffusers pipeline holds it (``text_encoder/`` and
``tokenizer/``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from vdm.errors import MissingFileError, UserError
from vdm.files.verify import files_sha256
from vdm.models.text_embedding import TextEmbedding

log = logging.getLogger(__name__)

KEY = "text_encoder.path"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# model_type -> (kind, transformers class); CLIP's projection variant is chosen by architectures.
MODEL_TYPES = {
    "t5": ("t5", "T5EncoderModel"),
    "umt5": ("t5", "UMT5EncoderModel"),
    "clip_text_model": ("clip", "CLIPTextModel"),
    "clip": ("clip", "CLIPTextModel"),  # a whole CLIP model: its text tower alone is loaded
}
SUPPORTED = "T5EncoderModel, UMT5EncoderModel, CLIPTextModel, CLIPTextModelWithProjection"
DEFAULT_LENGTH = {"clip": 77, "t5": 226}  # CLIP's trained length; CogVideoX's T5 length
# What the rows past a caption's tokens hold (see PretrainedTextEncoder's padding argument).
PADDINGS = ("zeros", "encoded")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Tokenizer files besides the vocabulary files a tokenizer class names itself.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json")  # fmt: skip


def import_transformers(needed_by: str = "a pretrained text encoder"):
    """The transformers module, or one line saying that ``needed_by`` needs it and how to install
    it."""
    try:
        import transformers  # optional: runs without text never import it
    except ImportError:
        raise UserError(
            f"{needed_by} needs the transformers package: pip install 'vdm[text]' "
            "(or pip install transformers)."
        ) from None
    return transformers


def model_folders(path: str | Path) -> tuple[Path, Path, dict]:
    """``(model folder, tokenizer folder, config)`` of ``path``: one ``save_pretrained`` folder, or
    a pipeline folder's ``text_encoder/`` and ``tokenizer/``."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MissingFileError(
            f"{KEY}={root} is not a folder: give the folder a T5 or CLIP text encoder and its "
            "tokenizer were saved to (save_pretrained), or a pipeline folder with text_encoder/."
        )
    if (root / "config.json").is_file():
        folder, tokenizer_folder = root, root
    elif (root / "text_encoder" / "config.json").is_file():
        folder, tokenizer_folder = root / "text_encoder", root / "tokenizer"
    else:
        raise UserError(
            f"{KEY}={root} has no config.json (nor text_encoder/config.json): point it at the "
            "folder the text encoder was saved to."
        )
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{KEY}: {folder}/config.json is not readable JSON ({error}).") from None
    return folder, tokenizer_folder, config


def model_class(folder: Path, config: dict) -> tuple[str, str]:
    """``(kind, class name)`` for a saved config: ``kind`` is ``t5`` or ``clip``."""
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type == "clip" and "text_config" not in config:
        model_type = None  # a CLIP config without a text tower: nothing to load
    if model_type not in MODEL_TYPES:
        found = ", ".join(architectures) or "no architectures"
        raise UserError(
            f"{KEY}={folder} holds {found} (model_type {model_type}): supported are {SUPPORTED}."
        )
    kind, name = MODEL_TYPES[model_type]
    if "CLIPTextModelWithProjection" in architectures:
        name = "CLIPTextModelWithProjection"
    return kind, name


def weight_files(folder: Path, key: str = KEY) -> list[Path]:
    """The weight files ``from_pretrained`` reads: the safetensors where there are any (a folder
    may also hold the same weights as ``.bin``), else the ``.bin`` files; ``key`` is the config
    key named when there are none."""
    for suffix in WEIGHT_SUFFIXES:
        files = sorted(p for p in folder.iterdir() if p.name.endswith(suffix))
        if files:
            return files
    raise UserError(f"{key}={folder} has a config.json but no weight files (*.safetensors).")


def dtype_argument(transformers, dtype: torch.dtype) -> dict:
    """``from_pretrained``'s dtype keyword: ``dtype`` from transformers 4.56 on (the old
    ``torch_dtype`` warns there), ``torch_dtype`` before."""
    from packaging.version import Version  # a dependency of transformers

    new = Version(transformers.__version__) >= Version("4.56")
    return {"dtype" if new else "torch_dtype": dtype}


class PretrainedTextEncoder(nn.Module):
    """A frozen T5 / UMT5 / CLIP text encoder from a local folder.

    Captions are tokenized, padded to ``max_length`` and encoded without gradients. ``tokens``
    are the last hidden states. With ``padding="zeros"`` (the default) the encoder attends to
    the real tokens only and the padding rows are zeroed (as Wan's pipeline does): the mask
    already says they are padding, and zeros make an embedding independent of the padded length
    and let the cache store the real rows only. ``pooled`` is CLIP's pooled output (its projected
    ``text_embeds`` where they have the token width) and, as T5 has no pooled output, the mean of
    T5's real tokens (a mean over padding too would change with ``max_length``).

    Example::

        # a diffusers pipeline folder: its T5-XXL in text_encoder/, tokenizer/ pads to 226;
        # the pad rows encoded as CogVideoXPipeline encodes them
        encoder = PretrainedTextEncoder(
            "~/models/CogVideoX-2b", dtype="bfloat16", device="cuda", padding="encoded"
        )
        text = encoder.encode(["a red ball bounces", ""])  # tokens (2, 226, 4096)

    Args:
        path: a folder written by ``save_pretrained`` (model and tokenizer), or a diffusers
            pipeline folder with ``text_encoder/`` and ``tokenizer/``.
        max_length: the padded length ``L``, longer captions are truncated; default the
            tokenizer's ``model_max_length`` where it sets one, else 77 (CLIP) or 226 (T5). Lower
            it for short captions: the denoisers attend over all ``L`` positions.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (weights and outputs). Half precision
            halves the memory of a large T5; T5 overflows in ``float16``, use ``bfloat16``.
        device: where the weights live (``.to(device)`` moves them later).
        padding: ``zeros``, or ``encoded`` to give a model what CogVideoX's pipeline gives it:
            the encoder runs without an attention mask, so the pad tokens are encoded like any
            other and every row is kept, the mask all True (the model was trained attending to
            those rows; zeros there change its output). An embedding then depends on
            ``max_length``, which must be the pipeline's (CogVideoX: 226).
    """

    trainable = False

    def __init__(
        self,
        path: str | Path,
        max_length: int | None = None,
        dtype: str = "float32",
        device: str | torch.device = "cpu",
        padding: str = "zeros",
    ):
        super().__init__()
        transformers = import_transformers()
        if dtype not in DTYPES:
            raise UserError(f"text_encoder.dtype={dtype}: use one of {', '.join(DTYPES)}.")
        if padding not in PADDINGS:
            raise UserError(f"text_encoder.padding={padding}: use one of {', '.join(PADDINGS)}.")
        self.padding = padding
        folder, tokenizer_folder, config = model_folders(path)
        self.kind, name = model_class(folder, config)
        weights = weight_files(folder)
        if self.kind == "t5" and dtype == "float16":
            log.warning("T5 in float16 overflows to inf on real captions: use bfloat16.")
        self.tokenizer = self._load_tokenizer(transformers, tokenizer_folder)
        self.model = getattr(transformers, name).from_pretrained(
            folder, local_files_only=True, **dtype_argument(transformers, DTYPES[dtype])
        )
        self.model.requires_grad_(False).eval().to(device)
        self.dtype = DTYPES[dtype]
        self.max_length = self._length(max_length)
        text_config = self.model.config
        self.dim = int(text_config.hidden_size if self.kind == "clip" else text_config.d_model)
        self.fingerprint = {
            "kind": self.kind,
            "class": name,
            "path": str(path),
            "sha256": files_sha256(weights + self._tokenizer_files(tokenizer_folder)),
            "max_length": self.max_length,
            "dtype": dtype,
        }
        if padding != "zeros":  # the only layout before the option: its fingerprints stay as were
            self.fingerprint["padding"] = padding
        log.info("Loaded %s from %s (%s, max_length %d)", name, folder, dtype, self.max_length)

    def _load_tokenizer(self, transformers, folder: Path):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, TypeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(
                f"{KEY}: no tokenizer could be loaded from {folder} ({reason}): save the "
                "tokenizer beside the model (tokenizer.save_pretrained)."
            ) from None
        tokenizer.padding_side = "right"  # real tokens first: the cache and the mean rely on it
        return tokenizer

    def _tokenizer_files(self, folder: Path) -> list[Path]:
        vocabulary = getattr(self.tokenizer, "vocab_files_names", {}).values()
        names = set(TOKENIZER_FILES) | set(vocabulary)
        return sorted(folder / name for name in names if (folder / name).is_file())

    def _length(self, max_length: int | None) -> int:
        """The padded length: given, else the tokenizer's (a huge number means it set none)."""
        # CLIP has learned absolute positions: a longer sequence would index past the table.
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if max_length is None:
            max_length = self.tokenizer.model_max_length
            if not max_length or max_length >= 100_000:
                max_length = DEFAULT_LENGTH[self.kind]
            if self.kind == "clip" and positions:
                max_length = min(max_length, positions)
        if max_length < 1:
            raise UserError(f"text_encoder.max_length={max_length}: give a number of tokens > 0.")
        if self.kind == "clip" and positions and max_length > positions:
            raise UserError(
                f"text_encoder.max_length={max_length}: this CLIP model takes 1 to "
                f"{positions} tokens."
            )
        return int(max_length)

    @property
    def device(self) -> torch.device:
        """Where the weights (and the embeddings :meth:`encode` returns) are."""
        return next(self.model.parameters()).device

    def __deepcopy__(self, memo: dict) -> PretrainedTextEncoder:
        # Frozen: a copy of a module holding it (the EMA's averaged model) shares it rather
        # than holding a second T5 in memory.
        return self

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        """Stay in eval mode: a module above switching to training must not turn on the
        encoder's dropout (T5 has 0.1), which would make embeddings random."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> TextEmbedding:
        """Embeddings of ``captions``, on :attr:`device`.

        Args:
            captions: ``B`` strings; ``""`` is the null prompt.

        Returns:
            ``tokens (B, L, D)`` in the encoder's dtype, zero where ``mask (B, L)`` is False (with
            ``padding="encoded"`` nowhere: the mask is all True), and ``pooled (B, D)``.
        """
        batch = self.tokenizer(
            list(captions),
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        ids, real = batch["input_ids"], batch["attention_mask"]
        attended = real if self.padding == "zeros" else None  # None: every token, pads too
        if self.kind == "clip":
            tokens, pooled = self._clip(ids, attended)
        else:
            tokens = self.model(input_ids=ids, attention_mask=attended).last_hidden_state
            pooled = None
        real = real.bool()
        if pooled is None:  # T5: the mean of the real tokens, summed in float32
            count = real.sum(1, keepdim=True).clamp(min=1)
            pooled = (tokens.float() * real[..., None]).sum(1) / count
        if self.padding == "zeros":
            mask = real
            tokens = tokens.masked_fill(~mask[..., None], 0)
        else:
            mask = torch.ones_like(real)
        return TextEmbedding(tokens.to(self.dtype), mask, pooled.to(self.dtype))

    def _clip(
        self, ids: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP's ``(last hidden states, pooled)`` (``mask`` None: attending to the pad tokens
        too); the projection variant's ``text_embeds`` replace the pooled output only where they
        have the token width."""
        text_model = getattr(self.model, "text_model", self.model)
        out = text_model(input_ids=ids, attention_mask=mask)
        pooled = out.pooler_output
        projection = getattr(self.model, "text_projection", None)
        if projection is not None and projection.out_features == self.dim:
            pooled = projection(pooled)
        return out.last_hidden_state, pooled
