"""A Hydra callback: an unwritable run folder is one line and exit status 1, before Hydra tries to
create it (and prints a traceback)."""

from __future__ import annotations

import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vdm.cli.checks import ConfigError, check_writable


def _check(key: str, folder: str) -> None:
    try:
        check_writable(key, folder)
    except ConfigError as error:
        print(f"vdm: error: {error}", file=sys.stderr)
        sys.exit(1)


class CheckRunDir(Callback):
    """Checks ``hydra.run.dir`` (``hydra.sweep.dir`` for ``-m``) is a writable folder."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check("hydra.sweep.dir", config.hydra.sweep.dir)
