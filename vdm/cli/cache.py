"""``vdm-cache [train overrides]`` (also ``python -m vdm.cache``): build the latent cache that
``python train.py`` with the same overrides would build, ahead of training (e.g. on a CPU node,
or once for a whole sweep). It encodes on a GPU when there is one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vdm.cli.errors import user_errors_in_one_line
from vdm.cli.overrides import CONF, check_overrides
from vdm.errors import UserError
from vdm.inference.build import build_autoencoder, fill_autoencoder_geometry, instantiate_config
from vdm.inference.run import resolve_device
from vdm.training.latent_cache import build_latent_cache

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> Path:
    """Build (or find) the latent cache of ``cfg``'s training set; return its folder."""
    fill_autoencoder_geometry(cfg)
    autoencoder = build_autoencoder(cfg)
    if autoencoder.fingerprint is None:
        raise UserError(
            "vdm-cache encodes with an autoencoder: add autoencoder=vdm "
            "autoencoder.ckpt_path=... or autoencoder=diffusers autoencoder.path=DIR."
        )
    datamodule = instantiate_config(cfg.data, "data")
    datamodule.prepare_data()
    datamodule.setup()
    options = {k: v for k, v in (cfg.get("latents") or {}).items() if k != "cache"}
    return build_latent_cache(
        datamodule.train_set, autoencoder, **options, device=resolve_device("auto")
    )


def main() -> None:
    """``vdm-cache [overrides]``: the overrides of the training run whose cache to build."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    overrides = sys.argv[1:]
    check_overrides("train", overrides)
    with user_errors_in_one_line():
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        folder = run(cfg)
    print(f"Latent cache: {folder}")


if __name__ == "__main__":
    main()
