"""`python -m vdm.export_lora`: the `vdm-export-lora` command (vdm/cli/export_lora.py)."""

from vdm.cli.export_lora import main, run

__all__ = ["main", "run"]

if __name__ == "__main__":
    main()
