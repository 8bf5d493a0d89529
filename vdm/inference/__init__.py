"""Sampling trained models, without Lightning or the command line: load a run from its
checkpoint, generate clips in seeded batches, continue or fill in given frames, and sample long
videos window by window."""

from vdm.inference.generation import (
    class_labels,
    sample_long_videos,
    sample_videos,
    side_by_side,
    window_context,
)
from vdm.inference.model import DiffusionModel, generate
from vdm.inference.run import LoadedRun, load_run

__all__ = [
    "DiffusionModel",
    "LoadedRun",
    "class_labels",
    "generate",
    "load_run",
    "sample_long_videos",
    "sample_videos",
    "side_by_side",
    "window_context",
]
