"""`python train.py [overrides]`: the same as `vdm-train` (vdm/train.py; conf/ and the README)."""

from vdm.train import main

if __name__ == "__main__":
    main()
