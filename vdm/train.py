"""`python -m vdm.train`: the `vdm-train` command (vdm/cli/train.py)."""

from vdm.cli.train import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
