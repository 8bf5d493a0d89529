"""The package layout of docs/design.md holds: each folder imports only the folders below it,
the commands never import each other, and the library loads without the command line."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

VDM = Path(__file__).resolve().parents[1] / "vdm"

# What each folder may import from vdm (docs/design.md, "What may import what").
BASE = {"errors", "diffusion", "models", "files", "data", "autoencoders", "text", "published"}
ALLOWED = {
    "diffusion": {"errors"},
    "models": {"errors"},
    "files": {"errors"},
    "data": {"errors", "files"},
    "autoencoders": {"errors", "models", "files"},
    "text": {"errors", "models", "files", "data"},
    "published": {"errors", "models", "files", "data", "autoencoders"},
    "conf": set(),
    "inference": BASE,
    "evaluation": BASE | {"inference"},
    "training": BASE | {"inference"},
    "cli": BASE | {"inference", "evaluation", "training", "cli"},
}
COMMANDS = {"vdm.cli.train", "vdm.cli.sample", "vdm.cli.evaluate", "vdm.cli.cache",
            "vdm.cli.export_lora"}  # fmt: skip
# vdm/*.py: entry shims
SHIMS = {"train.py", "sample.py", "evaluate.py", "cache.py", "export_lora.py", "__init__.py"}
TOP = SHIMS | {"errors.py"}  # and the user-error types every folder may raise


def vdm_imports(path: Path) -> set[str]:
    """The vdm modules a file imports (``from vdm.x import y`` counts as ``vdm.x``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vdm"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vdm"))
    return found


def modules() -> list[Path]:
    return sorted(p for p in VDM.rglob("*.py") if p.parent != VDM)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(VDM)))
def test_each_folder_imports_only_the_folders_below_it(path):
    folder = path.relative_to(VDM).parts[0]
    assert folder in ALLOWED, f"vdm/{folder}/ is not in docs/design.md's layout"
    for name in vdm_imports(path):
        parts = name.split(".")
        target = parts[1] if len(parts) > 1 else ""
        assert target == folder or target in ALLOWED[folder], f"{path.name} imports {name}"


def test_the_commands_never_import_each_other():
    for command in COMMANDS:
        path = VDM / "cli" / f"{command.rsplit('.', 1)[1]}.py"
        assert not (vdm_imports(path) & (COMMANDS - {command})), command


def test_top_level_modules_are_only_the_entry_shims_and_the_error_types():
    assert {p.name for p in VDM.glob("*.py")} == TOP
    assert vdm_imports(VDM / "errors.py") == set()
    for shim in SHIMS - {"__init__.py"}:
        assert vdm_imports(VDM / shim) == {f"vdm.cli.{shim[:-3]}"}


def test_only_the_commands_read_argv_or_compose_configs():
    for path in modules():
        if path.relative_to(VDM).parts[0] == "cli":
            continue
        text = path.read_text()
        for marker in ("sys.argv", "hydra.main", "@hydra", "initialize_config_dir", "HydraConfig"):
            assert marker not in text, f"{path.relative_to(VDM)} uses {marker}"


def test_the_library_loads_without_the_command_line():
    code = (
        "import sys\n"
        "from vdm.inference import load_run, DiffusionModel\n"
        "from vdm.training.task import fit\n"
        "from vdm.evaluation.fvd import fvd_of_samples\n"
        "bad = sorted(m for m in sys.modules if m.startswith('vdm.cli'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_inference_needs_no_training_code():
    code = (
        "import sys\n"
        "import vdm.inference\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('vdm.training', 'vdm.evaluation')))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_autoencoders_import_neither_lightning_nor_hydra_nor_diffusers_until_used():
    code = (
        "import sys\n"
        "import vdm.autoencoders\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'hydra', 'diffusers'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
