"""``vdm-train [overrides]`` (also ``python train.py`` and ``python -m vdm.train``): train as
conf/train.yaml and the overrides say. ``run(cfg)`` is the same on a composed config."""

from __future__ import annotations

import logging
import math
import signal
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning import Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf

from vdm.autoencoders import describe
from vdm.cli.checks import check_published_config, check_train_config
from vdm.cli.errors import exit_code, user_errors_in_one_line
from vdm.cli.optimization_checks import optimizer_mismatch
from vdm.cli.overrides import check_overrides
from vdm.errors import UserError
from vdm.files.checkpoint import load_checkpoint, model_config_mismatch
from vdm.files.run_lock import hold_run_folder
from vdm.inference.build import fill_autoencoder_geometry, fill_text_width
from vdm.training.guards import NonFiniteTrainingError
from vdm.training.task import RunStopped, fit

log = logging.getLogger(__name__)

# The configs ship inside the package (conf/ at the repository root links there).
CONF = Path(__file__).resolve().parents[1] / "conf"


def resume_own_checkpoint(cfg: DictConfig) -> None:
    """Without ``ckpt_path``, a run folder that already holds ``checkpoints/last.ckpt`` (the same
    ``run_name`` again, a requeued SLURM job) resumes from it, through the same checks as an
    explicit ``ckpt_path``. (Lightning would resume it unasked and unchecked; a SLURM job's
    ``hpc_ckpt_*.ckpt`` stays Lightning's to pick.)"""
    if cfg.get("ckpt_path"):
        return
    try:
        run_dir = Path(OmegaConf.select(cfg, "paths.output_dir", default=None) or "")
    except ValueError:  # ${hydra:...} outside a Hydra run: no run folder to look in
        return
    folder = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
    last = Path(folder or run_dir / "checkpoints") / "last.ckpt"
    requeued = SLURMEnvironment.detect() and any(run_dir.glob("hpc_ckpt_*.ckpt"))
    if str(run_dir) not in ("", ".") and last.exists() and not requeued:
        log.info("%s exists: resuming this run folder's run (another run_name starts anew)", last)
        cfg.ckpt_path = str(last)


def check_resume(cfg: DictConfig) -> int | None:
    """Fail early, in one line, when ``ckpt_path`` cannot resume this run's model; return the
    checkpoint's optimizer step (None without ``ckpt_path``)."""
    if not cfg.get("ckpt_path"):
        return None
    checkpoint = load_checkpoint(cfg.ckpt_path)
    config = checkpoint["hyper_parameters"]
    task, stored_task = cfg.get("task", "diffusion"), config.get("task", "diffusion")
    if task != stored_task:
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} is a task={stored_task} checkpoint: resume it with "
            f"task={stored_task}, or start this task={task} run without ckpt_path."
        )
    check_resume_autoencoder(cfg, checkpoint.get("autoencoder"))
    net = "vae" if task == "autoencoder" else "model"  # the network the run trains
    stored = config[net]
    differs = model_config_mismatch(stored, OmegaConf.to_container(cfg[net], resolve=True))
    if differs:
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} holds another {net} ({net}.{f', {net}.'.join(differs)} "
            f"differ; it has {stored['_target_']}): resume with the {net} config that wrote it."
        )
    optimizer = OmegaConf.to_container(cfg.optimizer, resolve=True)
    why = optimizer_mismatch(config.get("optimizer") or {}, optimizer)
    if why:
        raise UserError(f"ckpt_path={cfg.ckpt_path} cannot resume this run: {why}.")
    changed = sorted(
        k
        for k in optimizer
        if k != "_partial_" and config.get("optimizer", {}).get(k) != optimizer[k]
    )
    if changed:  # Lightning restores the optimizer's and the schedule's state over them
        log.warning(
            "optimizer.%s differ from the checkpoint's; a resumed run keeps the checkpoint's "
            "optimizer state (start a new run to change them)",
            ", optimizer.".join(changed),
        )
    return int(checkpoint.get("global_step", 0))


OPTIONS = {"load_vdm_autoencoder": "vdm", "load_diffusers_autoencoder": "diffusers"}


def check_resume_autoencoder(cfg: DictConfig, stored: dict | None) -> None:
    """Refuse, before any work, to resume latents of another geometry or pixels as latents (the
    weights' fingerprint itself is compared when Lightning loads the checkpoint)."""
    current = OmegaConf.to_container(cfg.get("autoencoder") or {}, resolve=True)
    pixels = not current or str(current.get("_target_", "")).endswith("PixelSpace")
    keys = ("latent_channels", "spatial_factor", "temporal_factor")
    if stored is None and pixels:
        return
    if stored is not None and not pixels and all(stored.get(k) == current.get(k) for k in keys):
        return
    option = str(current.get("_target_", "")).rsplit(".", 1)[-1]
    now = "pixels (autoencoder=none)" if pixels else f"autoencoder={OPTIONS.get(option, option)}"
    was = describe(stored)
    raise UserError(
        f"ckpt_path={cfg.ckpt_path}: trained on {was}, not on {now}: resume with the autoencoder "
        "it was trained with (its run config's autoencoder=...)."
    )


def run_folder_lock(cfg: DictConfig) -> AbstractContextManager[None]:
    """The run folder's lock (:func:`~vdm.files.run_lock.hold_run_folder`: one live run per
    folder); nothing when ``paths.output_dir`` is unset, or ``${hydra:...}`` outside a run."""
    try:
        output_dir = OmegaConf.select(cfg, "paths.output_dir", default=None)
    except ValueError:  # the interpolation has no Hydra run to resolve against
        output_dir = None
    return hold_run_folder(Path(output_dir)) if output_dir else nullcontext()


def run(cfg: DictConfig) -> Trainer | None:
    """Check ``cfg`` (before any data is rendered), then train in a run folder no other live
    run holds; a signal's stop exits with ``128 + n`` after its checkpoint. A checkpoint that
    already reached ``trainer.max_steps`` trains nothing and returns None."""
    resume_own_checkpoint(cfg)
    check_published_config(cfg)  # a published model's folder first: its VAE and text come from it
    fill_autoencoder_geometry(cfg)  # the checks work in latent units
    fill_text_width(cfg)  # a frozen text encoder's width, as the checkpoint's config records it
    check_train_config(cfg)
    step = check_resume(cfg)
    if step is not None and 0 < cfg.trainer.max_steps <= step:
        log.info(
            "ckpt_path=%s is at step %d, trainer.max_steps=%d: the run is finished, nothing to "
            "train (raise trainer.max_steps to train on)", cfg.ckpt_path, step,
            cfg.trainer.max_steps,
        )  # fmt: skip
        return None
    try:
        with run_folder_lock(cfg):
            return fit(cfg)
    except RunStopped as stop:
        log.error("Stopped by %s at step %d", signal.Signals(stop.signum).name, stop.step)
        raise SystemExit(exit_code(stop.signum)) from None


def sweep_trial(cfg: DictConfig) -> bool:
    """Whether this run is one trial of a Hydra sweep that optimises a metric."""
    return HydraConfig.get().mode == RunMode.MULTIRUN and bool(cfg.get("optimized_metric"))


def optimized_value(cfg: DictConfig, trainer: Trainer) -> float | None:
    """The value of ``cfg.optimized_metric`` at the end of the run, for Hydra's sweepers (an
    Optuna search minimises it); None when the key is null. A metric the run did not log fails
    a sweep trial (the sweeper needs a number) but only warns in a single run."""
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if name not in trainer.callback_metrics:
        known = ", ".join(sorted(trainer.callback_metrics)) or "none"
        message = (
            f"optimized_metric={name} was not logged by this run (logged: {known}): pick one "
            "of those, e.g. optimized_metric=val/loss."
        )
        if sweep_trial(cfg):
            raise UserError(message)
        log.warning(message)
        return None
    value = float(trainer.callback_metrics[name])
    return value if math.isfinite(value) else float("inf")


def null_groups_as_deletions(argv: list[str]) -> list[str]:
    """``logger=null`` turns a config group off, as users expect; Hydra spells that ``~logger``
    on the command line and rejects the first form."""
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    return [f"~{a[:-5]}" if a.endswith("=null") and a[:-5] in groups else a for a in argv]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with user_errors_in_one_line():
        try:
            trainer = run(cfg)
        except NonFiniteTrainingError as error:
            if not sweep_trial(cfg):
                raise
            # A learning rate that diverges is an answer for the search, not a reason to stop it.
            log.error("This trial diverged; the sweeper gets inf. %s", error)
            return float("inf")
        return None if trainer is None else optimized_value(cfg, trainer)


def main() -> None:
    """``vdm-train [overrides]``: train as conf/train.yaml and the overrides say."""
    sys.argv = null_groups_as_deletions(sys.argv)
    check_overrides("train", sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
