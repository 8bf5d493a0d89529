"""The private Lightning attributes vdm relies on (vdm/training/lightning_internals.py) behave as
it expects with the installed Lightning: a release that moves one fails here first."""

import re
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from lightning import LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment
from packaging.requirements import Requirement

from vdm.training import lightning_internals as internals


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_the_installed_lightning_is_in_the_pinned_range():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    (spec,) = re.findall(r'^\s*"(lightning[<>=!~][^"]*)"', pyproject, flags=re.M)
    assert version("lightning") in Requirement(spec).specifier
    assert list(Requirement(spec).specifier.filter(["9.0.0"])) == []  # an upper bound is set


def test_attached_trainer_is_none_until_the_module_is_fitted():
    module = Tiny()
    assert internals.attached_trainer(module) is None
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 2)))
    trainer.fit(module, data)
    assert internals.attached_trainer(module) is trainer


def test_stop_after_this_step_ends_fit_with_lightnings_sigterm_stop():
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class StopAtTwo(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 2:
                internals.stop_after_this_step(trainer)

    trainer = Trainer(max_steps=10, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[StopAtTwo()])  # fmt: skip
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(16, 2)))
    with pytest.raises(SIGTERMException):
        trainer.fit(Tiny(), data)
    assert trainer.global_step == 2  # the step ran to its end, no further


def test_the_hpc_checkpoint_path_counts_up_in_the_run_folder(tmp_path):
    trainer = Trainer(default_root_dir=tmp_path, logger=False)
    assert internals.hpc_checkpoint_path(trainer) == str(tmp_path / "hpc_ckpt_1.ckpt")
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    assert internals.hpc_checkpoint_path(trainer) == str(tmp_path / "hpc_ckpt_2.ckpt")


def test_the_cluster_environment_is_slurms_under_slurm(monkeypatch):
    assert isinstance(internals.cluster_environment(Trainer(logger=False)), LightningEnvironment)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    assert isinstance(internals.cluster_environment(Trainer(logger=False)), SLURMEnvironment)


def test_the_offline_wandb_folder_is_known_once_the_run_started(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbLogger(save_dir=tmp_path, offline=True, project="test")
    assert internals.wandb_offline_dir(logger) is None  # nothing started yet
    folder = logger.experiment.dir.removesuffix("/files")
    try:
        assert internals.wandb_offline_dir(logger) == folder
        assert "offline-run-" in folder and folder.startswith(str(tmp_path))
    finally:
        import wandb

        wandb.finish()


def test_a_spawned_fit_did_not_train_in_this_process():
    assert internals.trained_in_this_process(Trainer(logger=False, accelerator="cpu"))
    spawned = Trainer(logger=False, accelerator="cpu", strategy="ddp_spawn", devices=2)
    assert not internals.trained_in_this_process(spawned)
