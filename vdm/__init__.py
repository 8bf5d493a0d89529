"""vdm: train video diffusion models with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

# Registers ${vdm_run_name:...}, which conf/hydra/default.yaml names run folders with.
from vdm.conf import resolvers as _resolvers  # noqa: F401
