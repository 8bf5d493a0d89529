"""The objects a run config names: its denoiser, its diffusion process and its sampler, built
with Hydra's ``instantiate`` from ``_target_`` keys (a composed config, or the plain config a
checkpoint stores)."""

from __future__ import annotations

import logging
import math

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from vdm.autoencoders import Autoencoder, PixelSpace, diffusers_geometry, vdm_geometry
from vdm.autoencoders.base import latent_frame_count
from vdm.diffusion.sampling_loop import SamplingLoop
from vdm.errors import UnknownKeyError, UserError
from vdm.inference.model import Process

log = logging.getLogger(__name__)


def instantiate_config(conf: DictConfig, key: str, **kwargs):
    """``hydra.utils.instantiate(conf, **kwargs)``, with a user's errors as vdm's own: a value
    the constructor refuses (a :class:`~vdm.errors.UserError`, which Hydra wraps) comes through
    as it is, and a key it does not take as an :class:`~vdm.errors.UnknownKeyError` naming
    ``key`` (the config node, e.g. ``trainer``)."""
    try:
        return instantiate(conf, **kwargs)
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "unexpected keyword argument" in str(cause):
            raise UnknownKeyError(f"{key}: {cause}") from None
        raise


def is_flow(diffusion: DictConfig) -> bool:
    """Whether a ``diffusion`` config is rectified flow (else DDPM)."""
    return str(diffusion.get("_target_", "")).endswith("FlowMatching")


def is_published(cfg: DictConfig) -> bool:
    """Whether the run's denoiser is a published diffusers transformer (``model=diffusers``)."""
    return str(OmegaConf.select(cfg, "model._target_", default="")).endswith(
        "load_diffusers_denoiser"
    )


def fill_published_objective(cfg: DictConfig) -> None:
    """With ``model=diffusers``: make the run's objective the one the pipeline folder's
    scheduler describes (flow matching or DDPM), which the transformer's weights were trained
    for. Idempotent.

    The rule, for every key the scheduler determines: left null, it is filled from the
    scheduler; set, it must equal the scheduler's value, or the run is refused in one line
    naming the key. The keys: a DDPM model's ``diffusion.prediction`` and its whole noise
    schedule (``schedule.kind``, ``num_steps``, ``beta_start``, ``beta_end``,
    ``zero_terminal_snr``, ``snr_shift``; ``schedule=published`` leaves them all null). A flow
    model's ``diffusion.shift`` is only filled: another shift is a choice of the run (Wan uses
    3.0 at 480p, 5.0 at 720p)."""
    if not is_published(cfg):
        return
    from vdm.published.folder import dynamic_shift, scheduler_objective  # JSON only

    path = cfg.model.path
    objective = scheduler_objective(path)
    if objective is None:
        return
    kind = "flow" if is_flow(cfg.diffusion) else "ddpm"
    if objective["kind"] != kind:
        raise UserError(
            f"model.path={path}: its scheduler trains with "
            f"{'flow matching' if objective['kind'] == 'flow' else 'DDPM'}, this run with "
            f"diffusion={kind}: use diffusion={objective['kind']} (the finetune presets do)."
        )
    if kind == "flow":
        with open_dict(cfg.diffusion):
            if cfg.diffusion.get("shift") is None:
                shift = objective["shift"]
                if shift is None:  # by the clip's size (LTX-Video), as its pipeline computes it
                    shift = dynamic_shift(latent_positions(cfg), objective["dynamic"])
                    log.info("diffusion.shift=%.3f: the scheduler's for these clips", shift)
                cfg.diffusion.shift = shift
        return
    fill_or_check(cfg.diffusion, "diffusion", {"prediction": objective["prediction"]}, path)
    schedule = objective["schedule"]
    ignored = ("beta_start", "beta_end") if schedule["kind"] == "cosine" else ()
    fill_or_check(cfg.schedule, "schedule", schedule, path, ignored)


def fill_or_check(
    conf: DictConfig, key: str, values: dict, path: str, ignored: tuple[str, ...] = ()
) -> None:
    """Set the keys of ``conf`` (the config node ``key``) to ``values`` (the scheduler's, of the
    folder ``path``) where they are null or the same value written shorter (floats within 1e-6
    relative: ``snr_shift=1.732051`` is √3); refuse any other, except the ``ignored`` keys,
    which that schedule kind does not use."""
    hint = "schedule=published leaves them all null" if key == "schedule" else "as the presets"
    with open_dict(conf):
        for name, value in values.items():
            given = conf.get(name)
            if given is None or same_value(given, value):
                conf[name] = value
            elif name not in ignored:
                raise UserError(
                    f"model.path={path}: its scheduler trains with {key}.{name}={value}, this "
                    f"run with {given}: leave {key}.{name} null for the scheduler's ({hint})."
                )


def same_value(given, expected) -> bool:
    if isinstance(expected, float) and isinstance(given, int | float) and given is not True:
        return math.isclose(float(given), expected, rel_tol=1e-6)
    return given == expected


def latent_positions(cfg: DictConfig) -> int:
    """Latent frames × height × width of the run's training clips (the autoencoder's geometry
    filled in)."""
    fill_autoencoder_geometry(cfg)
    conf = cfg.autoencoder
    frames = latent_frame_count(cfg.data.clip_len, conf.temporal_factor or 1, bool(conf.causal))
    side = cfg.data.size // (conf.spatial_factor or 1)
    return (frames or 1) * side * side


def build_diffusion(cfg: DictConfig) -> Process:
    """The process of ``cfg.diffusion``: DDPM over the noise schedule of ``cfg.schedule``, or
    rectified flow (which has no schedule); a published model's from its folder's scheduler
    where the config leaves it open (:func:`fill_published_objective`)."""
    fill_published_objective(cfg)
    log.info("Instantiating diffusion <%s>", cfg.diffusion._target_)
    if is_flow(cfg.diffusion):
        return instantiate_config(cfg.diffusion, "diffusion")
    unset = [key for key, value in cfg.schedule.items() if value is None]
    if unset:
        raise UserError(
            f"schedule.{unset[0]} is null: schedule=published reads the schedule of a "
            "model=diffusers folder's DDPM scheduler; otherwise use schedule=linear, cosine, "
            "scaled_linear or sigmoid."
        )
    log.info("Instantiating schedule <%s>", cfg.schedule._target_)
    schedule = instantiate_config(cfg.schedule, "schedule")
    return instantiate_config(cfg.diffusion, "diffusion", schedule=schedule)


def fill_text_width(cfg: DictConfig) -> None:
    """Fill a frozen text encoder's ``dim`` (left null in its config) from its folder's
    ``config.json``, so the denoiser's ``text_dim`` is known before any weights load."""
    conf = OmegaConf.select(cfg, "text_encoder")
    if conf is None or conf.get("dim") is not None or conf.get("path") is None:
        return
    from vdm.text.load import text_width  # reads JSON only; the package is optional

    with open_dict(conf):
        conf.dim = text_width(conf.path)


def build_model(cfg: DictConfig) -> nn.Module:
    """The denoiser of ``cfg.model`` (``UNet3D``, ``SpaceTimeTransformer``, or a published
    diffusers transformer)."""
    fill_text_width(cfg)
    fill_autoencoder_geometry(cfg)  # a published model checks its channels against the VAE's
    log.info("Instantiating model <%s>", cfg.model._target_)
    model = instantiate_config(cfg.model, "model", _convert_="all")
    log.info("Model has %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    return model


def build_text_encoder(cfg: DictConfig) -> nn.Module | None:
    """The text encoder of ``cfg.text_encoder``, or None (``text_encoder=none``, and the configs
    of checkpoints written before text encoders)."""
    conf = OmegaConf.select(cfg, "text_encoder")
    if conf is None or "_target_" not in conf:
        return None
    log.info("Instantiating text encoder <%s>", conf._target_)
    return instantiate_config(conf, "text_encoder")


def build_sampler(sampler: DictConfig) -> SamplingLoop:
    """The sampler of a ``sampler`` config."""
    log.info("Instantiating sampler <%s>", sampler._target_)
    return instantiate_config(sampler, "sampler")


GEOMETRY_KEYS = ("latent_channels", "spatial_factor", "temporal_factor", "causal")


def fill_autoencoder_geometry(cfg: DictConfig) -> None:
    """Fill ``cfg.autoencoder``'s geometry keys (left null in its config) from the model it
    names (a vdm checkpoint's config, a diffusers folder's ``config.json``), so that the checks
    and the denoiser's channels work in latent units before any weights load. Idempotent."""
    conf = OmegaConf.select(cfg, "autoencoder")
    if conf is None or conf.get("latent_channels") is not None:
        return
    target = str(conf.get("_target_", ""))
    if target.endswith("load_vdm_autoencoder"):
        geometry = vdm_geometry(conf.get("ckpt_path"))
    elif target.endswith("load_diffusers_autoencoder"):
        geometry = diffusers_geometry(conf.get("path"))
    else:
        return
    with open_dict(conf):
        for key in GEOMETRY_KEYS:
            conf[key] = geometry[key]


def build_autoencoder(cfg: DictConfig) -> Autoencoder:
    """The frozen autoencoder of ``cfg.autoencoder`` (pixel space when the config has none,
    as the configs of checkpoints written before autoencoders)."""
    conf = OmegaConf.select(cfg, "autoencoder")
    if conf is None:
        return PixelSpace(OmegaConf.select(cfg, "data.channels", default=3))
    fill_autoencoder_geometry(cfg)
    log.info("Instantiating autoencoder <%s>", conf._target_)
    return instantiate_config(conf, "autoencoder")
