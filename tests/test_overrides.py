"""A command line Hydra cannot compose is one ``vdm: error:`` line before Hydra runs (Hydra's
own message is several lines without the prefix the README promises)."""

import pytest

from vdm.cli.overrides import check_overrides, checkable


@pytest.mark.parametrize(
    ("config", "args", "line"),
    [
        ("train", ["model=does_not_exist"], "model=does_not_exist: no such option (conf/model/ "
         "has diffusers, transformer, transformer_base, transformer_tiny, unet3d, unet3d_base, "
         "unet3d_tiny)."),
        ("train", ["foo=1"], "foo=1: foo is no key of the config (misspelt? see conf/; to add a "
         "key that is not there, write +foo=1)."),
        ("train", ["trainer.max_step=3"], "trainer.max_step=3: trainer.max_step is no key"),
        ("train", ["data.size=abc="], "data.size=abc=: Hydra cannot parse this override"),
        ("train", ["schedule=linear,cosine"], "schedule=linear,cosine: a comma makes a sweep"),
        ("sample", ["sampler=bogus"], "sampler=bogus: no such option (conf/sampler/ has "
         "checkpoint, ddim, ddpm, dpmpp, euler, heun)."),
        ("evaluate", ["fvd.extractr=x"], "fvd.extractr=x: fvd.extractr is no key"),
    ],
)  # fmt: skip
def test_an_override_hydra_cannot_compose_is_one_line(capsys, config, args, line):
    with pytest.raises(SystemExit) as caught:
        check_overrides(config, args)
    assert caught.value.code == 1
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(f"vdm: error: {line}")


def test_good_overrides_pass_and_hydras_flags_are_left_to_hydra(capsys):
    check_overrides("train", ["model=transformer", "+trainer.profiler=simple", "~logger"])
    check_overrides("sample", ["ckpt_path=/x.ckpt", "sampler=dpmpp", "sampler.steps=5"])
    assert capsys.readouterr().err == ""
    assert checkable(["-m", "schedule=linear,cosine"]) is None  # a sweep: Hydra's to read
    assert checkable(["--cfg", "job"]) is None
    assert checkable(["hydra.run.dir=/x", "seed=1"]) == ["seed=1"]
