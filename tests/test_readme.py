"""The README and docs/ name only what exists: every command composes with the real configs, every
inline override names a real key or option, every repository file and link target exists."""

import functools
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from vdm.cli.train import null_groups_as_deletions

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Pages whose inline `key=value` spans are Python keyword arguments, not command-line overrides.
PYTHON_API_PAGES = {"library.md"}

ENTRY_POINTS = {  # how a command starts → the config it composes
    "python train.py": "train",
    "python -m vdm.sample": "sample",
    "vdm-train": "train",
    "vdm-sample": "sample",
    "vdm-evaluate": "evaluate",
    "sbatch scripts/slurm/train.sbatch": "train",
    "python -m vdm.evaluate": "evaluate",
    "python -m vdm.export_lora": "export_lora",
    "vdm-export-lora": "export_lora",
}
REPO_PATH = re.compile(r"^((conf|bench|vdm|tests|docs|scripts|\.ci)/[\w./*-]*|train\.py|Makefile)$")
OVERRIDE = re.compile(r"^(~[a-z_][\w.]*|\+?[a-z_][\w.]*=\S*)$")
MAKE_VARIABLE = re.compile(r"^([A-Z][A-Z_]*)=(.*)$")


def code_blocks(text: str) -> list[str]:
    """Lines of the fenced code blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.split(" #")[0].strip() for line in joined.splitlines()]
    return [line for line in lines if line]


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


def commands(text: str) -> list[tuple[str, list[str]]]:
    """(config name, overrides) of every train / sample / evaluate command, in blocks or spans,
    and of ``make train ARGS="..."``."""
    found = []
    segments = [s for line in code_blocks(text) + inline_spans(text) for s in line.split("&&")]
    for segment in segments:
        for start, config in ENTRY_POINTS.items():
            if start in segment:
                # <run>, <time>: placeholders the reader fills in, not part of the syntax
                args = shlex.split(re.sub(r"<[^>]*>", "X", segment.split(start, 1)[1]))
                found.append((config, [a for a in args if a != "-m"]))
        make = re.match(r"make train\b.*ARGS=(\"[^\"]*\"|'[^']*')", segment.strip())
        if make:
            found.append(("train", shlex.split(make.group(1)[1:-1])))
    return found


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """One override list per value of each sweep (``a=x,y``), the others at their first value."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = [
        f"{o.get_key_element()}={next(o.sweep_string_iterator())}" if o.is_sweep_override() else raw
        for o, raw in zip(parsed, overrides, strict=True)
    ]
    variants = [first]
    for i, o in enumerate(parsed):
        if o.is_sweep_override():
            for value in list(o.sweep_string_iterator())[1:]:
                variants.append([*first[:i], f"{o.get_key_element()}={value}", *first[i + 1 :]])
    return variants


def composes(config: str, overrides: list[str]) -> str | None:
    """None if ``overrides`` compose with ``conf/<config>.yaml``, else Hydra's message."""
    return _composes(config, tuple(overrides))


@functools.cache
def _composes(config: str, overrides: tuple[str, ...]) -> str | None:
    overrides = list(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            for variant in expand_sweeps(null_groups_as_deletions(overrides)):
                compose(config, overrides=variant, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        return str(error).splitlines()[0]
    return None


def is_override_span(span: str) -> bool:
    tokens = span.split()
    return bool(tokens) and "=" in span and all(OVERRIDE.match(t) for t in tokens)


def problems(page: Path, text: str) -> list[str]:
    """Everything ``text`` (the markdown of ``page``) names that does not exist."""
    found = []
    for config, overrides in commands(text):
        error = composes(config, overrides)
        if error:
            found.append(f"{config}: {' '.join(overrides)}: {error}")
    if page.name not in PYTHON_API_PAGES:
        for span in inline_spans(text):
            configs = ENTRY_POINTS.values()
            if is_override_span(span) and all(composes(c, span.split()) for c in configs):
                found.append(f"`{span}` is no key or option of train, sample or evaluate")
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    for line in code_blocks(text) + inline_spans(text):
        for segment in line.split("&&"):
            words = segment.split()
            if words[:1] == ["make"]:
                found += make_problems(words[1:], makefile, targets)
            for word in words:
                found += path_problems(word.split("=")[-1].strip("\"'"))
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve()
        if path and not linked.exists():
            found.append(f"link {target}: {linked} does not exist")
        elif anchor and linked.suffix in (".md", ""):
            headings = anchors(linked.read_text() if path else text)
            if anchor not in headings:
                found.append(f"link {target}: no heading #{anchor} in {path or page.name}")
    return found


def make_problems(words: list[str], makefile: str, targets: set[str]) -> list[str]:
    """Targets and ``VARIABLE=value`` arguments of a ``make`` command that the Makefile lacks."""
    found = []
    for word in words:
        variable = MAKE_VARIABLE.match(word)
        if variable:
            if not re.search(rf"^{variable.group(1)} \?=", makefile, flags=re.M):
                found.append(f"make variable {variable.group(1)} is not in the Makefile")
        elif re.fullmatch(r"[a-z][\w-]*", word) and word not in targets:
            found.append(f"make target {word} is not in the Makefile")
    return found


def path_problems(word: str) -> list[str]:
    """A repository path (``tests/x.py`` or ``tests/x.py::test_name``) that does not exist."""
    path, _, name = word.partition("::")
    if not REPO_PATH.match(path):
        return []
    matches = list(REPO.glob(path))
    if not matches:
        return [f"{path} does not exist"]
    if name and f"def {name}(" not in matches[0].read_text():
        return [f"{path} has no {name}"]
    return []


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    headings = re.findall(r"^#+\s+(.+)$", prose, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_command_key_file_and_link_exists(page):
    assert problems(page, page.read_text()) == []


def test_the_check_finds_what_does_not_exist():
    page = REPO / "docs" / "page.md"  # never written: only its folder matters for links
    text = """
```bash
python train.py trainer=tpu data.size=64
python -m vdm.sample ckpt_path=x.ckpt num_sample=4
make train ARGS="schedule=quadratic"
make install TORCH_WHEEL=cu128
```
Run `python train.py -m schedule=linear,nosuch`, set `model.no_such_key=3`, read
`bench/no_such_bench.py`, see [the notes](docs/none.md) and [a heading](#nowhere).
"""
    found = problems(page, text)
    assert len(found) == 9, found
    for name in ("tpu", "num_sample", "quadratic", "TORCH_WHEEL", "nosuch", "no_such_key",
                 "no_such_bench.py", "none.md", "nowhere"):  # fmt: skip
        assert any(name in problem for problem in found), (name, found)


def test_the_check_accepts_real_commands_sweeps_and_deletions():
    text = """
```bash
python train.py -m schedule=linear,cosine logger=null ~callbacks.ema +trainer.profiler=simple
make train ARGS="model=transformer" && make test ARGS="tests/test_schedule.py -k linear"
make test-slow ARGS="tests/test_cli.py::test_resume_continues_from_the_checkpoint"
```
## A heading, with punctuation

[here](#a-heading-with-punctuation), [the design](design.md#conventions)
`hydra.run.dir=/tmp/run` and `python -m vdm.evaluate ckpt_path=... fvd.extractor=i3d.pt`
"""
    assert problems(REPO / "docs" / "page.md", text) == []


def test_the_readme_lists_every_default_callback_and_each_group_option():
    """The configuration table's rows name what the configs hold, no more, no less."""
    readme = (REPO / "README.md").read_text()
    (row,) = [line for line in readme.splitlines() if line.startswith("| `callbacks/` |")]
    listed = re.findall(r"`(\w+)`", row.split("`default` =")[1].split("|")[0])
    default = (REPO / "conf" / "callbacks" / "default.yaml").read_text()
    assert listed == [c for c in re.findall(r"^  - (\w+)$", default, flags=re.M) if c != "_self_"]
    for group in ("schedule", "sampler", "diffusion", "context", "logger", "data"):
        (row,) = [line for line in readme.splitlines() if line.startswith(f"| `{group}/` |")]
        named = set(re.findall(r"`(\w+)`", row.split("|")[2])) - {"null"}  # a group turned off
        options = {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}
        assert named == options, group
