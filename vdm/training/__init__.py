"""Training with Lightning: the module that trains a denoiser, the callbacks around it (sample
videos, non-finite and signal guards, progress and throughput in the logs), optimizer groups and
schedules, and the task that builds a run from its config and fits it."""
