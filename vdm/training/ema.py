"""Lightning's ``EMAWeightAveraging``, with checkpoints that hold the training weights as the
training weights whenever they are written."""

from __future__ import annotations

import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging

from vdm.training.lightning_internals import averages_weights, swap_averaged_weights


def ema_skipping_shared(decay: float):
    """Lightning's EMA update, ``decay·ema + (1 − decay)·current``, that leaves alone a weight
    the averaged copy shares with the model (the frozen base of a LoRA fine-tuning): averaging a
    weight with itself would round it off its value, step after step."""

    def average(ema: torch.Tensor, current: torch.Tensor, num_averaged) -> torch.Tensor:
        if ema.data_ptr() == current.data_ptr():
            return ema
        return decay * ema + (1 - decay) * current

    return average


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` (same arguments) that stays right when a run stops mid-validation.

    The callback swaps the EMA weights into the module at the start of each validation (so
    validation and sample videos use them) and back at its end. A checkpoint written in between
    (a signal during validation or sample videos, SLURM's requeue) would hold the EMA weights as
    the training weights and the reverse, and the resumed run would silently lose its steps.
    Here every checkpoint written while swapped gets its two weight sets the right way round,
    and a run that stops mid-validation puts the training weights back.

    Example:
        >>> trainer = Trainer(callbacks=[EMA(decay=0.999)])

    The arguments are those of Lightning's ``EMAWeightAveraging``, named here so that a
    misspelt key fails when the callback is built, not when Lightning passes it on to
    ``AveragedModel`` at the start of training.

    Args:
        decay: EMA decay per update.
        update_every_n_steps: optimizer steps between updates.
        update_starting_at_step: the first step that updates (None: from the start).
        update_starting_at_epoch: the first epoch that updates (None: from the start).
        device: where the averaged copy lives (None: with the model).
        use_buffers: average the buffers too.
    """

    def __init__(
        self,
        decay: float = 0.999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        update_starting_at_epoch: int | None = None,
        device: torch.device | str | int | None = None,
        use_buffers: bool = True,
    ) -> None:
        super().__init__(
            device=device, use_buffers=use_buffers, decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
            update_starting_at_epoch=update_starting_at_epoch,
        )  # fmt: skip
        self._kwargs["avg_fn"] = ema_skipping_shared(decay)
        self.swapped = False  # the module holds the EMA weights (during validation)

    @property
    def state_key(self) -> str:
        # The parent's key, so runs checkpointed with EMAWeightAveraging itself resume.
        return "EMAWeightAveraging"

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_start(trainer, pl_module)
        self.swapped = averages_weights(self)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_epoch_end(trainer, pl_module)
        self.swapped = False

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict
    ) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self.swapped and "current_model_state" in checkpoint:
            # While swapped, the module holds the EMA weights and the averaged model the
            # training weights: the parent filed each under the other's key.
            checkpoint["state_dict"], checkpoint["current_model_state"] = (
                checkpoint["current_model_state"],
                checkpoint["state_dict"],
            )

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception) -> None:
        if self.swapped:  # stopped inside a validation: the training weights go back in place
            swap_averaged_weights(self, pl_module)
            self.swapped = False
