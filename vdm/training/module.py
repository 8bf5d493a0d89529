"""VideoDiffusionModule: a denoiser trained by a GaussianDiffusion or a FlowMatching process, as
a LightningModule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from lightning import LightningModule
from torch import nn

from vdm.autoencoders import Autoencoder, check_same_autoencoder, sample_posterior
from vdm.diffusion.context import ContextMasks
from vdm.diffusion.flow import FlowMatching
from vdm.diffusion.process import GaussianDiffusion
from vdm.errors import UserError
from vdm.inference.model import (
    DenoiserHolder,
    attach_text_encoder,
    takes_given_frames,
    takes_text,
    text_encoder_of,
)
from vdm.published import check_same_base
from vdm.text import check_same_text_encoder
from vdm.training.lightning_internals import attached_trainer
from vdm.training.optim import optimizers_for

log = logging.getLogger(__name__)

QUARTILES = 4  # train/loss_q0..q3: loss per quarter of the timestep range


class VideoDiffusionModule(DenoiserHolder, LightningModule):
    """Trains ``denoiser`` to reverse ``diffusion`` on batches ``{"video", "label", "fps"}``.

    Logs ``train/loss``, ``train/loss_q0``..``q3`` (the loss in each quarter of the timestep
    range, from least to most noisy) and ``val/loss``, computed with noise and timesteps fixed
    per validation batch so values compare across steps and runs. For class-conditional
    denoisers, labels are replaced by the null label with probability ``label_dropout``, which
    trains the unconditional model that classifier-free guidance needs. With ``context_masks``
    each clip also gets given frames (prediction, interpolation, ...): they enter clean and only
    the other frames count in the loss.

    Randomness of a training step (timesteps, noise, label dropout) comes from
    ``(seed, global_step, rank, micro-batch)``, so a resumed run continues exactly as the
    uninterrupted one, and the micro-batches of one step (``trainer.accumulate_grad_batches``)
    draw different timesteps and noise.
    EMA is not kept here: Lightning's ``EMAWeightAveraging`` callback does it, and checkpoints
    then hold the EMA weights in ``state_dict``.

    Example:
        >>> module = VideoDiffusionModule(UNet3D(num_classes=3), GaussianDiffusion(NoiseSchedule()),
        ...                               optimizer=functools.partial(torch.optim.AdamW, lr=2e-4))
        >>> trainer.fit(module, datamodule=MovingShapesDataModule())

    Args:
        denoiser: ``UNet3D``, ``SpaceTimeTransformer`` or any module with their ``forward``.
        diffusion: the forward process, targets and loss weighting.
        optimizer: builds the optimizer from the parameters (a Hydra partial).
        lr_scheduler: builds a per-step learning-rate scheduler from the optimizer, or None.
        label_dropout: probability of training a sample unconditionally (conditional models).
        context_masks: draws each training clip's given frames; None = every frame generated.
        seed: seed of the per-step randomness.
        config: the resolved, plain run configuration to store in checkpoints (so that
            ``python -m vdm.sample`` can rebuild the model); primitives only, never modules.
        autoencoder: train on its latents (None: pixel space). Batches hold ``video`` (encoded
            here, a fresh posterior sample every step) or the cached posterior
            ``latents_mean`` / ``latents_std``. Checkpoints record its fingerprint under
            ``"autoencoder"`` and resuming with another is refused.
        text_encoder: prompt the denoiser with the batches' ``caption`` (a denoiser built with
            ``text_dim`` = the encoder's ``dim``). A trainable encoder trains with the denoiser;
            a frozen one's fingerprint goes into checkpoints under ``"text_encoder"``.
        caption_dropout: probability of training a sample on the null prompt ``""`` instead of
            its caption (the unconditional model guidance needs); drawn apart from labels.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        diffusion: GaussianDiffusion | FlowMatching,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        label_dropout: float = 0.1,
        seed: int = 0,
        config: dict | None = None,
        context_masks: ContextMasks | None = None,
        autoencoder: Autoencoder | None = None,
        text_encoder: nn.Module | None = None,
        caption_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if autoencoder is not None:
            self.autoencoder = autoencoder  # a plain attribute: frozen, not in the state dict
        if (text_encoder is not None) != takes_text(denoiser):
            raise UserError(
                "A text encoder and a denoiser built with text go together: set model.text_dim "
                "to the encoder's dim (the configs do: ${text_encoder.dim}), or text_encoder=none "
                "with model.text_dim=0."
            )
        attach_text_encoder(self, text_encoder)
        self.caption_dropout = caption_dropout
        self.save_hyperparameters(config or {}, logger=False)
        self.denoiser = denoiser
        self.diffusion = diffusion
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.label_dropout = label_dropout
        self.seed = seed
        self.context_masks = context_masks
        if context_masks is not None and not takes_given_frames(denoiser):
            raise UserError(
                "context masks need a denoiser built with frame conditioning: set "
                "model.frame_conditioning=true (context=mixed does)."
            )

    def _generator(self, *key: int) -> torch.Generator:
        """A generator on this device seeded from ``(seed, *key)``."""
        state = np.random.SeedSequence([self.seed, *key]).generate_state(2, dtype=np.uint32)
        seed = int(state[0]) << 32 | int(state[1])
        return torch.Generator(device=self.device).manual_seed(seed & (2**63 - 1))

    def _micro_batch(self, batch_idx: int) -> tuple[int, ...]:
        """The micro-batch's index within its optimizer step, as a seed key: ``()`` for the
        first (so a run without accumulation draws what it always drew), ``(i,)`` for the
        ``i``-th. Lightning steps after every ``accumulate_grad_batches`` batches of an epoch."""
        trainer = attached_trainer(self)
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        micro = batch_idx % accumulate
        return (micro,) if micro else ()

    def _labels(self, batch: dict) -> torch.Tensor | None:
        if self.num_classes == 0:
            return None
        if "label" not in batch:
            raise UserError(
                f"The denoiser is class-conditional (model.num_classes={self.num_classes}) but "
                "the data has no labels: set data.num_classes=0, or use a folder with class "
                "sub-folders."
            )
        return batch["label"]

    def _clean(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """What the denoiser learns to produce: the batch's video, or its latents (a posterior
        sample drawn from ``generator``; pixel space draws nothing)."""
        if "latents_mean" in batch:
            return sample_posterior(batch["latents_mean"], batch["latents_std"], generator)
        return self.autoencoder.encode(batch["video"], generator)

    def _loss(self, batch: dict, generator: torch.Generator, train: bool):
        """The loss of ``batch``; ``train`` drops labels and captions at their rates, while
        validation keeps them all."""
        video = self._clean(batch, generator)
        b = video.shape[0]
        labels = self._labels(batch)
        if labels is not None and train and self.label_dropout > 0:
            drop = torch.rand(b, generator=generator, device=self.device) < self.label_dropout
            labels = labels.masked_fill(drop, self.num_classes)
        t = self.diffusion.sample_timesteps(b, self.device, generator)
        noise = self.diffusion.noise(video.shape, generator, self.device)
        context = {}
        if self.context_masks is not None:  # drawn after t and ε: context=none draws as before
            masks = self.context_masks.sample(b, video.shape[2], generator, self.device)
            context["context"] = masks
        if text_encoder_of(self) is not None:  # drawn last: runs without text draw as before
            context["text"] = self._text(batch, generator, self.caption_dropout if train else 0.0)
        return self.diffusion.training_loss(
            self.denoiser, video, t=t, noise=noise.to(video.dtype), labels=labels, **context
        )

    def _text(self, batch: dict, generator: torch.Generator, dropout: float):
        """The embedding of the batch's captions, each replaced by the null prompt ``""`` with
        probability ``dropout`` (drawn from ``generator``)."""
        if "caption" not in batch:
            raise UserError(
                "The model is prompted with text (text_encoder is set) but the batches carry "
                "no captions: give the data captions (data.captions=FILE, or a .txt beside each "
                "video), or train with text_encoder=none."
            )
        captions = list(batch["caption"])
        drop = torch.rand(len(captions), generator=generator, device=self.device) < dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        return self.encode_text(captions)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = self._generator(
            0, self.global_step, self.global_rank, *self._micro_batch(batch_idx)
        )
        loss, per_sample, t = self._loss(batch, generator, train=True)
        self.last_loss = loss.detach()  # for NonFiniteGuard, before the update
        b = per_sample.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        # DDPM steps are integers out of num_steps, flow times floats in [0, 1].
        fraction = t / self.diffusion.num_steps if not t.is_floating_point() else t
        quartile = (fraction * QUARTILES).long().clamp(max=QUARTILES - 1)
        for q in range(QUARTILES):
            in_q = quartile == q
            if in_q.any():
                self.log(f"train/loss_q{q}", per_sample[in_q].mean(), batch_size=int(in_q.sum()))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        # The same noise and timesteps for this batch at every validation: comparable values.
        generator = self._generator(1, batch_idx, self.global_rank)
        loss, _, _ = self._loss(batch, generator, train=False)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=len(batch["video"]))

    def on_fit_start(self) -> None:
        """With text: refuse data without captions before the first step, and encode every
        caption of a frozen encoder into its cache once, here, rather than batch by batch."""
        encoder = text_encoder_of(self)
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        if encoder is None or datamodule is None:
            return
        sets = [getattr(datamodule, name, None) for name in ("train_set", "val_set")]
        captions = [getattr(dataset, "captions", None) for dataset in sets if dataset is not None]
        if any(c is None for c in captions):
            raise UserError(
                "The model is prompted with text (text_encoder is set) but the data has no "
                "captions: give it captions (data.captions=FILE, or a .txt beside each video), "
                "or train with text_encoder=none."
            )
        if hasattr(encoder, "precompute"):
            encoder.to(self.device)
            encoded = encoder.precompute(c for part in captions for c in part)
            log.info("Text cache: %d new caption embeddings", encoded)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.autoencoder.fingerprint is not None:  # pixel-space checkpoints stay as they were
            checkpoint["autoencoder"] = self.autoencoder.fingerprint
        encoder = text_encoder_of(self)
        if encoder is not None and encoder.fingerprint is not None:
            checkpoint["text_encoder"] = encoder.fingerprint
        base = getattr(self.denoiser, "fingerprint", None)
        if base is not None:  # a published base model: the checkpoint holds what differs from it
            checkpoint["denoiser"] = base

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_same_autoencoder(checkpoint.get("autoencoder"), self.autoencoder, "ckpt_path")
        check_same_text_encoder(checkpoint.get("text_encoder"), text_encoder_of(self), "ckpt_path")
        check_same_base(checkpoint.get("denoiser"), self.denoiser, "ckpt_path")

    def configure_optimizers(self) -> dict:
        model = self.trainer.model if attached_trainer(self) is not None else self
        return optimizers_for(model, self.optimizer_factory, self.lr_scheduler_factory)
