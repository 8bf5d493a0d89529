"""`python -m vdm.sample`: the `vdm-sample` command (vdm/cli/sample.py)."""

from vdm.cli.sample import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
