"""AutoencoderModule: trains vdm's video VAE (``python train.py task=autoencoder``) with the same
data, trainer, callbacks and checkpoints as diffusion training."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from vdm.errors import UserError
from vdm.inference.generation import clip_seed
from vdm.models.video_vae import VideoVAE, kl_divergence
from vdm.training.optim import optimizers_for

RECONSTRUCTION_LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


class AutoencoderModule(LightningModule):
    """Trains ``vae`` on batches ``{"video", ...}``: ``reconstruction + kl_weight · KL``.

    Logs ``train/loss``, ``train/reconstruction``, ``train/kl``, and at validation
    ``val/loss``, ``val/psnr`` and ``val/ssim`` of the reconstruction of the posterior mean (what
    a latent diffusion model's samples decode through). The VAE tracks the per-channel
    statistics of its latents in training (:meth:`VideoVAE.track_latent_statistics`); they
    normalise the latents for diffusion. ``reconstruct`` gives the reconstruction videos.

    Args:
        vae: the autoencoder to train.
        optimizer, lr_scheduler: as for :class:`~vdm.training.module.VideoDiffusionModule`.
        reconstruction: ``l1`` or ``l2``.
        kl_weight: weight of the KL term (per latent element, against the per-pixel loss).
        seed: seed of the posterior samples of each step.
        config: the resolved, plain run config to store in checkpoints.
    """

    def __init__(
        self,
        vae: VideoVAE,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        reconstruction: str = "l2",
        kl_weight: float = 1e-4,
        seed: int = 0,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTION_LOSSES:
            raise UserError(
                f"vae_loss.reconstruction={reconstruction}: use one of "
                f"{', '.join(RECONSTRUCTION_LOSSES)}."
            )
        if not isinstance(kl_weight, int | float) or kl_weight < 0:
            raise UserError(f"vae_loss.kl_weight={kl_weight}: must be a number >= 0.")
        self.save_hyperparameters(config or {}, logger=False)
        self.vae = vae
        self.optimizer_factory, self.lr_scheduler_factory = optimizer, lr_scheduler
        self.reconstruction_loss = RECONSTRUCTION_LOSSES[reconstruction]
        self.kl_weight, self.seed = kl_weight, seed

    def _generator(self, *key: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(clip_seed(self.seed, *key))

    def _losses(self, video: torch.Tensor, reconstruction: torch.Tensor, mean, logvar):
        rec = self.reconstruction_loss(reconstruction.float(), video.float())
        kl = kl_divergence(mean, logvar).mean()
        return rec + self.kl_weight * kl, rec, kl

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video = batch["video"]
        generator = self._generator(0, self.global_step, self.global_rank, batch_idx)
        reconstruction, mean, logvar = self.vae(video, generator)
        loss, rec, kl = self._losses(video, reconstruction, mean, logvar)
        self.vae.track_latent_statistics(mean)
        self.last_loss = loss.detach()  # for NonFiniteGuard, before the update
        b = len(video)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        self.log("train/reconstruction", rec, batch_size=b)
        self.log("train/kl", kl, batch_size=b)
        return loss

    @torch.no_grad()
    def reconstruct(self, video: torch.Tensor) -> torch.Tensor:
        """The decoded posterior mean of ``video``, in [-1, 1]."""
        mean, _ = self.vae.encode(video)
        return self.vae.decode(mean).clamp(-1, 1)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        video = batch["video"]
        mean, logvar = self.vae.encode(video)
        reconstruction = self.vae.decode(mean)
        loss, _, _ = self._losses(video, reconstruction, mean, logvar)
        frames = [((x.float().clamp(-1, 1) + 1) / 2).transpose(1, 2).flatten(0, 1)
                  for x in (reconstruction, video)]  # fmt: skip
        b = len(video)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=b)
        self.log("val/psnr", peak_signal_noise_ratio(*frames, data_range=1.0, dim=(1, 2, 3)),
                 sync_dist=True, batch_size=b)  # fmt: skip
        self.log("val/ssim", structural_similarity_index_measure(*frames, data_range=1.0),
                 sync_dist=True, batch_size=b)  # fmt: skip

    def configure_optimizers(self) -> dict:
        return optimizers_for(self, self.optimizer_factory, self.lr_scheduler_factory)
