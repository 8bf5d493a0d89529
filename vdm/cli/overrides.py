"""The command line's overrides, checked before Hydra runs the command, so that a misspelt key,
an unknown option or an override Hydra cannot parse is one ``vdm: error:`` line (Hydra itself
prints several lines, without the prefix)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

CONF = Path(__file__).resolve().parents[1] / "conf"


def checkable(args: list[str]) -> list[str] | None:
    """The overrides of ``args`` to check by composing, or None when Hydra must see them itself
    (a flag such as ``--cfg`` or ``-m``, or a sweep's ``a,b`` values). ``hydra.*`` overrides are
    Hydra's own: left to it."""
    if any(a.startswith("-") for a in args):
        return None
    return [a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))]


def options(group: str) -> list[str]:
    """The options of a config group: the names of its YAML files."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def describe(error: Exception, args: list[str]) -> str:
    """One line for Hydra's error about ``args``: what is wrong and how to fix it."""
    text = str(error)
    missing = re.search(r"Could not find '([\w/]+)/(\w+)'", text)
    if missing:
        group, option = missing.groups()
        known = ", ".join(options(group)) or "none"
        return f"{group}={option}: no such option (conf/{group}/ has {known})."
    unknown = re.search(r"Could not override '([\w.]+)'", text) or re.search(
        r"Key '(\w+)' is not in struct\s+full_key: ([\w.]+)", text
    )
    if unknown:
        key = unknown.groups()[-1]
        given = next((a for a in args if a.split("=", 1)[0] == key), key)
        return (
            f"{given}: {key} is no key of the config (misspelt? see conf/; to add a key that is "
            f"not there, write +{given})."
        )
    if "Error parsing override" in text:
        given = re.search(r"Error parsing override '(.*)'", text)
        what = given.group(1) if given else "an override"
        return (
            f"{what}: Hydra cannot parse this override (key=value, group=option, +key=value, "
            "~key; quote values with spaces)."
        )
    sweep = re.search(r"Ambiguous value for argument '(.*)'", text)
    if sweep:
        return (
            f"{sweep.group(1)}: a comma makes a sweep; add -m to sweep, or write [a,b] for a list "
            "or quote the value for a string."
        )
    return next((line.strip() for line in text.splitlines() if line.strip()), repr(error))


def check_overrides(config_name: str, args: list[str]) -> None:
    """Compose ``conf/<config_name>.yaml`` with ``args`` as Hydra will; a composition error is
    one line on stderr and exit status 1."""
    overrides = checkable(args)
    if overrides is None:
        return
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as error:
        print(f"vdm: error: {describe(error, overrides)}", file=sys.stderr)
        sys.exit(1)
