"""The diffusion core: noise schedules, the Gaussian process and its samplers (no Lightning)."""

from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, guided
from vdm.diffusion.schedule import NoiseSchedule

__all__ = [
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "GaussianDiffusion",
    "NoiseSchedule",
    "guided",
]
