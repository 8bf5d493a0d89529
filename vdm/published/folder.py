"""A diffusers pipeline folder as vdm reads it: the transformer's class and config
(``transformer/config.json``), the SHA-256 of its weights, and the training objective its
scheduler (``scheduler/scheduler_config.json``) describes. JSON only: no weights are loaded here."""

from __future__ import annotations

import json
import math
from pathlib import Path

from vdm.data.index import default_cache_dir
from vdm.errors import MissingFileError, UserError
from vdm.files.verify import files_sha256_remembered

KEY = "model.path"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# Sharded weights come with an index naming the shards; it is part of what makes the model.
INDEX_SUFFIXES = (".safetensors.index.json", ".bin.index.json")
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler",
                   "FlowMatchHeunDiscreteScheduler", "DPMSolverMultistepScheduler")  # fmt: skip


def read_json(file: Path, key: str = KEY) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{key}: {file} is not readable JSON ({error}).") from None


def transformer_folder(path: str | Path) -> tuple[Path, dict]:
    """``(folder, config)`` of the transformer in ``path``: a pipeline folder's ``transformer/``,
    or a folder the transformer alone was saved to."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise MissingFileError(
            f"{KEY}={root} is not a folder: download the diffusers pipeline yourself (e.g. "
            "huggingface-cli download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --local-dir DIR) and "
            "give its folder."
        )
    for folder in (root / "transformer", root):
        config_file = folder / "config.json"
        if config_file.is_file():
            config = read_json(config_file)
            if "Transformer" in str(config.get("_class_name", "")):
                return folder, config
    raise UserError(
        f"{KEY}={root} holds no diffusers transformer (no transformer/config.json naming a "
        "...Transformer3DModel): give a pipeline folder saved by diffusers (save_pretrained)."
    )


def weight_files(folder: Path) -> list[Path]:
    """The transformer's weight files (shards and their index), sorted."""
    names = WEIGHT_SUFFIXES + INDEX_SUFFIXES
    files = sorted(p for p in folder.iterdir() if p.name.endswith(names))
    if not any(p.name.endswith(WEIGHT_SUFFIXES) for p in files):
        raise UserError(f"{KEY}={folder} has a config.json but no weight files (*.safetensors).")
    return files


def weights_digest(folder: Path) -> str:
    """SHA-256 over the transformer's weight files: the same base model wherever it lies
    (remembered under ``$VDM_CACHE_DIR/digests/``: a 14 B model's files are hashed once)."""
    return files_sha256_remembered(weight_files(folder), default_cache_dir() / "digests")


def scheduler_config(path: str | Path) -> dict | None:
    """The pipeline's ``scheduler/scheduler_config.json``, or None when the folder has none."""
    root = Path(path).expanduser()
    for file in (root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json"):
        if file.is_file():
            return read_json(file)
    return None


# FlowMatchEulerDiscreteScheduler's keys for a size-dependent shift, with its defaults.
DYNAMIC_DEFAULTS = {"base_image_seq_len": 256, "max_image_seq_len": 4096, "base_shift": 0.5,
                    "max_shift": 1.15, "time_shift_type": "exponential"}  # fmt: skip


def dynamic_shift(positions: int, dynamic: dict) -> float:
    """The constant shift a size-dependent scheduler applies to clips of ``positions`` latent
    positions (frames × height × width, as the LTX-Video pipeline counts them).

    The pipelines compute ``μ`` linearly in the sequence length, between ``base_shift`` at
    ``base_image_seq_len`` and ``max_shift`` at ``max_image_seq_len``; the exponential time
    shift ``e^μ / (e^μ + (1/t − 1))`` is exactly vdm's ``shift·t / (1 + (shift − 1)·t)`` with
    ``shift = e^μ`` (the linear one, ``μ / (μ + (1/t − 1))``, with ``shift = μ``).
    """
    base, top = dynamic["base_image_seq_len"], dynamic["max_image_seq_len"]
    slope = (dynamic["max_shift"] - dynamic["base_shift"]) / (top - base)
    mu = dynamic["base_shift"] + slope * (positions - base)
    return math.exp(mu) if dynamic["time_shift_type"] == "exponential" else mu


# diffusers' beta_schedule names -> vdm's schedule.kind
BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
                  "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}  # fmt: skip
# What a scheduler class assumes for a key its saved config leaves out (save_pretrained writes
# them all; a hand-written config may not): CogVideoX's schedulers default to its own schedule.
CLASS_DEFAULTS = {
    "CogVideoXDDIMScheduler": {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                               "beta_end": 0.012, "snr_shift_scale": 3.0},
    "CogVideoXDPMScheduler": {"beta_schedule": "scaled_linear", "beta_start": 0.00085,
                              "beta_end": 0.012, "snr_shift_scale": 3.0},
}  # fmt: skip
DDPM_DEFAULTS = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02,
                 "num_train_timesteps": 1000, "rescale_betas_zero_snr": False,
                 "snr_shift_scale": 1.0}  # fmt: skip


def scheduler_objective(path: str | Path) -> dict | None:
    """The training objective the folder's scheduler describes, as vdm's config keys:

    - flow matching (``FlowMatchEulerDiscreteScheduler``, or a multistep scheduler with
      ``use_flow_sigmas`` / ``prediction_type: flow_prediction``): ``{"kind": "flow", "shift"}``
      (``shift`` or Wan's ``flow_shift``); a scheduler that shifts by the clip's size
      (``use_dynamic_shifting``, LTX-Video) gives ``shift: None`` and ``dynamic``, the
      arguments of :func:`dynamic_shift`;
    - DDPM: ``{"kind": "ddpm", "prediction", "schedule"}``, ``schedule`` holding the keys of
      :class:`~vdm.diffusion.schedule.NoiseSchedule` (``kind``, ``num_steps``, ``beta_start``,
      ``beta_end``, ``zero_terminal_snr``, ``snr_shift``). CogVideoX's ``snr_shift_scale`` s
      divides the SNR by s, vdm's ``snr_shift`` k by k², both before the zero-terminal rescale:
      ``snr_shift = sqrt(s)``.

    None when the folder has no scheduler config.
    """
    config = scheduler_config(path)
    if config is None:
        return None
    name = config.get("_class_name", "")
    prediction = config.get("prediction_type")
    flow = (
        name.startswith("FlowMatch")
        or prediction == "flow_prediction"
        or bool(config.get("use_flow_sigmas"))
    )
    if flow:
        if config.get("use_dynamic_shifting"):
            dynamic = {key: config.get(key, default) for key, default in DYNAMIC_DEFAULTS.items()}
            return {"kind": "flow", "shift": None, "dynamic": dynamic}
        shift = config.get("flow_shift", config.get("shift", 1.0))
        return {"kind": "flow", "shift": float(shift)}
    predictions = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
    if prediction not in predictions:
        raise UserError(
            f"{KEY}={path}: {name}'s prediction_type {prediction!r} is not one vdm trains "
            "(epsilon, v_prediction, sample, flow_prediction)."
        )
    return {"kind": "ddpm", "prediction": predictions[prediction],
            "schedule": ddpm_schedule(path, name, config)}  # fmt: skip


def ddpm_schedule(path: str | Path, name: str, config: dict) -> dict:
    """A DDPM scheduler's β table as the keys of vdm's ``schedule`` config."""
    values = {**DDPM_DEFAULTS, **CLASS_DEFAULTS.get(name, {})}
    values.update((k, v) for k, v in config.items() if k in values and v is not None)
    beta_schedule = values["beta_schedule"]
    if config.get("trained_betas") is not None or beta_schedule not in BETA_SCHEDULES:
        what = "trained_betas" if config.get("trained_betas") is not None else beta_schedule
        raise UserError(
            f"{KEY}={path}: {name}'s β table ({what}) is not one vdm builds "
            f"(beta_schedule {', '.join(BETA_SCHEDULES)})."
        )
    return {
        "kind": BETA_SCHEDULES[beta_schedule],
        "num_steps": int(values["num_train_timesteps"]),
        "beta_start": float(values["beta_start"]),
        "beta_end": float(values["beta_end"]),
        "zero_terminal_snr": bool(values["rescale_betas_zero_snr"]),
        "snr_shift": math.sqrt(float(values["snr_shift_scale"])),
    }
