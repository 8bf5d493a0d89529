"""`python -m vdm.evaluate`: the `vdm-evaluate` command (vdm/cli/evaluate.py)."""

from vdm.cli.evaluate import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
