"""`python train.py [overrides]`: the same as `vdm-train` (vdm/cli/train.py; README)."""

from vdm.cli.train import main

if __name__ == "__main__":
    main()
