"""`make install`: which torch goes into the virtualenv (pinned, from another index, or kept);
`.ci/run`: what CI requires that a laptop does not."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def make(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", *args], cwd=REPO, capture_output=True, text=True, timeout=1200)
    if check and result.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result


def torch_install_lines(*args: str, venv: Path) -> list[str]:
    """The pip commands that ``make -n install`` would run for torch, in a fresh ``venv``."""
    planned = make("-n", "install", f"VENV={venv}", *args).stdout.splitlines()
    return [line for line in planned if "-m pip install" in line and '"torch==' in line]


def test_the_default_pins_torch_from_the_configured_indexes(tmp_path):
    (line,) = torch_install_lines(venv=tmp_path / "venv")
    assert '"torch==2.13.0"' in line and "--index-url" not in line


def test_torch_index_url_picks_the_build_and_its_own_stamp(tmp_path):
    index = "https://download.pytorch.org/whl/cu128"
    (line,) = torch_install_lines(f"TORCH_INDEX_URL={index}", venv=tmp_path / "venv")
    assert line.rstrip().endswith(f'"torch==2.13.0" --force-reinstall --index-url {index}')
    planned = make("-n", "install", f"VENV={tmp_path}/venv", f"TORCH_INDEX_URL={index}").stdout
    assert f"touch {tmp_path}/venv/.installed-2.13.0-cu128" in planned  # not the CPU stamp


def test_keep_installs_no_torch(tmp_path):
    assert torch_install_lines("TORCH_VERSION=keep", venv=tmp_path / "venv") == []


def test_keep_without_torch_in_the_venv_says_how_to_install_one(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    result = make("install", f"VENV={venv}", "TORCH_VERSION=keep", check=False)
    assert result.returncode != 0
    assert f"TORCH_VERSION=keep, but {venv} has no torch" in result.stdout
    assert "--index-url" in result.stdout
    assert not list(venv.glob(".installed-*"))


@pytest.mark.slow
def test_keep_uses_the_torch_already_in_the_venv(tmp_path):
    """A user's own torch (here the pinned CPU wheel, standing in for a CUDA build) survives
    ``make install TORCH_VERSION=keep``, and vdm imports beside it."""
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=1200)
    (dist_info,) = (venv / "lib").glob("python*/site-packages/torch-*.dist-info")
    (dist_info / "USERS_OWN_BUILD").touch()  # a reinstall of torch would remove it
    make("install", f"VENV={venv}", "TORCH_VERSION=keep")
    assert (dist_info / "USERS_OWN_BUILD").is_file()
    assert (venv / ".installed-keep").is_file()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    imported = subprocess.run(
        [str(python), "-c", "import torch, vdm.train; print(torch.__version__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert imported.stdout.startswith("2.13.0")
    # later calls remember keep: nothing to do, and no torch pin planned
    assert "Nothing to be done" in make("install", f"VENV={venv}").stdout
    assert torch_install_lines(venv=venv) == []


def test_missing_test_videos_skip_here_but_fail_in_ci(tmp_path):
    from conftest import find_shared_videos

    with pytest.raises(pytest.skip.Exception):
        find_shared_videos(tmp_path, {})
    for environ in ({"VDM_REQUIRE_TEST_VIDEOS": "1"}, {"CI": "true"}):
        with pytest.raises(pytest.fail.Exception, match="test videos not found"):
            find_shared_videos(tmp_path, environ)
    (tmp_path / "real").mkdir()
    assert find_shared_videos(tmp_path, {"CI": "true"}) == tmp_path


def test_ci_requires_the_test_videos():
    ci = (REPO / ".ci" / "run").read_text()
    assert "export VDM_REQUIRE_TEST_VIDEOS=1" in ci
