"""Hydra entry point: `python train.py [overrides]` (see conf/train.yaml and the README)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from vdm.train import run, user_errors_in_one_line

CONF = Path(__file__).resolve().parent / "conf"


def null_groups_as_deletions(argv: list[str]) -> list[str]:
    """``logger=null`` turns a config group off, as users expect; Hydra spells that ``~logger``
    on the command line and rejects the first form."""
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    return [f"~{a[:-5]}" if a.endswith("=null") and a[:-5] in groups else a for a in argv]


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        run(cfg)


if __name__ == "__main__":
    sys.argv = null_groups_as_deletions(sys.argv)
    main()
