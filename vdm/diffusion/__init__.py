"""The diffusion core: noise schedules, the Gaussian process, rectified flow and their samplers
(no Lightning)."""

from vdm.diffusion.context import ContextMasks, task_mask
from vdm.diffusion.extend import extend_video
from vdm.diffusion.flow import FlowMatching
from vdm.diffusion.flow_samplers import FlowEulerSampler, FlowHeunSampler
from vdm.diffusion.process import GaussianDiffusion
from vdm.diffusion.samplers import DDIMSampler, DDPMSampler, DPMSolverSampler, guided
from vdm.diffusion.schedule import NoiseSchedule

__all__ = [
    "ContextMasks",
    "DDIMSampler",
    "DDPMSampler",
    "DPMSolverSampler",
    "FlowEulerSampler",
    "FlowHeunSampler",
    "FlowMatching",
    "GaussianDiffusion",
    "NoiseSchedule",
    "extend_video",
    "guided",
    "task_mask",
]
