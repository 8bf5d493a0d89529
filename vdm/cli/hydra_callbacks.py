"""A Hydra callback: an unwritable run folder, or one that another live run holds, is one line
and exit status 1, before Hydra writes into it (and prints a traceback)."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vdm.cli.checks import check_writable
from vdm.errors import UserError
from vdm.files.run_lock import check_run_folder


def _check(key: str, folder: str, in_use: bool = False) -> None:
    try:
        check_writable(key, folder)
        if in_use:  # before Hydra writes .hydra/ and train.log into another run's folder
            check_run_folder(Path(folder))
    except UserError as error:
        print(f"vdm: error: {error}", file=sys.stderr)
        sys.exit(1)


class CheckRunDir(Callback):
    """Checks ``hydra.run.dir`` (``hydra.sweep.dir`` for ``-m``) is a writable folder, and that
    no other live run holds the run folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check("hydra.run.dir", config.hydra.run.dir, in_use=True)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check("hydra.sweep.dir", config.hydra.sweep.dir)
