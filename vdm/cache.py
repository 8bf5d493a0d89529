"""`python -m vdm.cache`: the `vdm-cache` command (vdm/cli/cache.py)."""

from vdm.cli.cache import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
