"""The run folder's name, registered as the ``${vdm_run_name:}`` resolver that
``conf/hydra/default.yaml`` uses.

Under SLURM a requeued job must find its own folder again (Lightning resumes from the
``hpc_ckpt_*.ckpt`` it left there), while two runs in one allocation must not share one. Hence
``slurm-<job>`` (``slurm-<array job>_<task>`` for an array task), ``-step<n>`` for the n-th
``srun`` of an allocation after the first (a requeued job starts its steps from 0 again), and
the start time outside SLURM. ``run_name=...`` on the command line names the folder instead.
"""

from __future__ import annotations

import os

from omegaconf import OmegaConf


def slurm_run_name(environ: dict[str, str] | None = None) -> str | None:
    """``slurm-<job>[_<task>][-step<n>]`` from SLURM's variables, or None outside SLURM."""
    env = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in env:
        return None
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        name = f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    else:
        name = f"slurm-{env['SLURM_JOB_ID']}"
    step = env.get("SLURM_STEP_ID", "0")
    # The batch script itself is step "batch" (or none): the same folder as srun's step 0.
    if step.isdigit() and int(step) > 0:
        name += f"-step{step}"
    return name


def run_name(given: str | None, start_time: str) -> str:
    """``given`` if set, else the SLURM name, else ``start_time``."""
    return given or slurm_run_name() or start_time


OmegaConf.register_new_resolver("vdm_run_name", run_name, replace=True)
