"""Hydra entry point: `python train.py [overrides]` (see conf/train.yaml and the README)."""

import hydra
from omegaconf import DictConfig

from vdm.train import run, user_errors_in_one_line


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


if __name__ == "__main__":
    main()
