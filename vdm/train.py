"""`run(cfg)`: build everything a training run needs from a composed Hydra config."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig
from torch import nn

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import Sampler

log = logging.getLogger(__name__)


def build_diffusion(cfg: DictConfig) -> GaussianDiffusion:
    """The diffusion process of ``cfg.diffusion`` over the noise schedule of ``cfg.schedule``."""
    log.info("Instantiating schedule <%s>", cfg.schedule._target_)
    schedule = instantiate(cfg.schedule)
    log.info("Instantiating diffusion <%s>", cfg.diffusion._target_)
    return instantiate(cfg.diffusion, schedule=schedule)


def build_model(cfg: DictConfig) -> nn.Module:
    """The denoiser of ``cfg.model`` (``UNet3D`` or ``SpaceTimeTransformer``)."""
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model, _convert_="all")
    log.info("Model has %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def build_sampler(cfg: DictConfig) -> Sampler:
    """The sampler of ``cfg.sampler``."""
    log.info("Instantiating sampler <%s>", cfg.sampler._target_)
    return instantiate(cfg.sampler)


def run(cfg: DictConfig) -> None:
    """Seed, then build the diffusion core and the sampler.

    The data module and the Lightning training loop are not built yet; until they land this
    checks the model and diffusion configuration and stops with a clear message instead of
    pretending to train.
    """
    seed_everything(cfg.seed, workers=True)
    build_model(cfg)
    diffusion = build_diffusion(cfg)
    sampler = build_sampler(cfg)
    log.info(
        "Built %r with prediction=%s, loss_weighting=%s; sampler %s",
        diffusion.schedule,
        diffusion.prediction,
        diffusion.loss_weighting,
        type(sampler).__name__,
    )
    raise SystemExit(
        "vdm: the model and diffusion config are valid, but training needs the data module and "
        "the Lightning module, which are not in this version yet."
    )
