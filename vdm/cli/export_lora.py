"""``vdm-export-lora ckpt_path=... out=DIR`` (also ``python -m vdm.export_lora``): a LoRA
fine-tuning checkpoint's adapters as diffusers' ``pytorch_lora_weights.safetensors``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from vdm.cli.errors import user_errors_in_one_line
from vdm.cli.overrides import check_overrides
from vdm.errors import UserError
from vdm.inference.lora_export import export_lora


def run(cfg: DictConfig):
    """Export ``cfg.ckpt_path``'s adapters to ``cfg.out``; return the file written."""
    for key in ("ckpt_path", "out"):
        if OmegaConf.is_missing(cfg, key) or not cfg.get(key):
            raise UserError(f"{key} is missing: python -m vdm.export_lora ckpt_path=PATH out=DIR")
    return export_lora(cfg.ckpt_path, cfg.out, cfg.weights)


@hydra.main(version_base="1.3", config_path="../conf", config_name="export_lora")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors_in_one_line():
        print(f"LoRA adapters: {run(cfg)}")


def main() -> None:
    """``vdm-export-lora [overrides]``, as conf/export_lora.yaml and the overrides say."""
    check_overrides("export_lora", sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()
