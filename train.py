"""Hydra entry point: `python train.py [overrides]` (see conf/train.yaml)."""

import hydra
from omegaconf import DictConfig

from vdm.train import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
