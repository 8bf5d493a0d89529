"""The objects a run config names: its denoiser, its diffusion process and its sampler, built
with Hydra's ``instantiate`` from ``_target_`` keys (a composed config, or the plain config a
checkpoint stores)."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.inference.model import Process

log = logging.getLogger(__name__)


def is_flow(diffusion: DictConfig) -> bool:
    """Whether a ``diffusion`` config is rectified flow (else DDPM)."""
    return str(diffusion.get("_target_", "")).endswith("FlowMatching")


def build_diffusion(cfg: DictConfig) -> Process:
    """The process of ``cfg.diffusion``: DDPM over the noise schedule of ``cfg.schedule``, or
    rectified flow (which has no schedule)."""
    log.info("Instantiating diffusion <%s>", cfg.diffusion._target_)
    if is_flow(cfg.diffusion):
        return instantiate(cfg.diffusion)
    log.info("Instantiating schedule <%s>", cfg.schedule._target_)
    return instantiate(cfg.diffusion, schedule=instantiate(cfg.schedule))


def build_model(cfg: DictConfig) -> nn.Module:
    """The denoiser of ``cfg.model`` (``UNet3D`` or ``SpaceTimeTransformer``)."""
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate(cfg.model, _convert_="all")
    log.info("Model has %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def build_sampler(sampler: DictConfig) -> SamplingLoop:
    """The sampler of a ``sampler`` config."""
    log.info("Instantiating sampler <%s>", sampler._target_)
    return instantiate(sampler)
