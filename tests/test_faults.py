"""A run never loses work and never reports success when it failed: divergence, signals,
corrupt checkpoints, bad configs. Signals are raised in-process here; tests/test_cli.py sends
them to a real `python train.py`."""

import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import compose_config, compose_run
from lightning import Callback

from vdm.cli.checks import ConfigError
from vdm.cli.errors import user_errors_in_one_line
from vdm.cli.sample import run as sample
from vdm.cli.train import run
from vdm.errors import UserError
from vdm.files.checkpoint import AtomicCheckpointIO, load_checkpoint, nonfinite_weights
from vdm.files.verify import sidecar_of
from vdm.training.guards import NonFiniteTrainingError

COMMON = [
    "callbacks.ema.update_starting_at_step=1",
    "lr_scheduler.total_steps=6",
    "trainer.val_check_interval=6",
]


class AtStep(Callback):
    """Calls ``action(trainer)`` once, in the middle of training step ``step`` (after backward,
    before the update)."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action, self.done = step, action, False

    def on_after_backward(self, trainer, pl_module) -> None:
        if trainer.global_step == self.step and not self.done:
            self.done = True
            self.action(trainer, pl_module)


def train(tmp_path: Path, *overrides: str, extra: list[Callback] = ()):
    """``run`` with extra callbacks added to the composed run."""
    cfg = compose_run(tmp_path, *overrides)
    if extra:
        from vdm.training import task as train_module

        build = train_module.build_callbacks
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(train_module, "build_callbacks", lambda c: [*build(c), *extra])
            return run(cfg)
    return run(cfg)


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("*.ckpt"))


# -- divergence --------------------------------------------------------------------------------


def test_a_diverging_run_stops_in_one_line_and_keeps_only_finite_checkpoints(tmp_path):
    with pytest.raises(NonFiniteTrainingError) as caught:
        train(tmp_path, "optimizer.lr=1e6", "trainer.max_steps=20", "trainer.val_check_interval=10")
    message = str(caught.value)
    assert "\n" not in message and "non-finite" in message and "at step" in message
    assert "optimizer.lr" in message  # says what to change
    for path in checkpoints(tmp_path):
        assert nonfinite_weights(torch.load(path, weights_only=True)) == [], path


def test_a_nonfinite_gradient_is_caught_before_the_update(tmp_path):
    def poison(trainer, module):
        next(module.parameters()).grad.fill_(float("nan"))

    with pytest.raises(NonFiniteTrainingError, match="gradient norm.*at step 3") as caught:
        train(tmp_path, *COMMON[:2], "trainer.max_steps=6", "trainer.val_check_interval=2",
              extra=[AtStep(3, poison)])  # fmt: skip
    assert "last finite loss" in str(caught.value) and "step 2" in str(caught.value)
    kept = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert kept["global_step"] == 2  # the newest checkpoint, finite, is still there


def test_skip_mode_drops_the_update_counts_it_and_carries_on(tmp_path):
    weights = {}

    def poison(trainer, module):
        weights["before"] = [p.detach().clone() for p in module.denoiser.parameters()]
        next(module.parameters()).grad.fill_(float("nan"))

    class After(Callback):
        def on_train_batch_end(self, trainer, module, *args):
            if trainer.global_step == 4 and "after" not in weights:  # step 3 ended
                weights["after"] = [p.detach().clone() for p in module.denoiser.parameters()]

    trainer = train(
        tmp_path, *COMMON, "trainer.max_steps=6", "callbacks.nonfinite.mode=skip",
        extra=[AtStep(3, poison), After()],
    )  # fmt: skip
    assert trainer.global_step == 6
    for before, after in zip(weights["before"], weights["after"], strict=True):
        assert torch.equal(before, after)  # the poisoned step changed nothing
    assert float(trainer.callback_metrics["train/nonfinite_steps"]) == 1.0


def test_skip_mode_stops_after_too_many_in_a_row(tmp_path):
    with pytest.raises(NonFiniteTrainingError, match="3 in a row"):
        train(tmp_path, "optimizer.lr=1e6", "trainer.max_steps=20",
              "callbacks.nonfinite.mode=skip", "callbacks.nonfinite.max_skips=3")  # fmt: skip


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_step_checkpoints_that_step_and_resumes_exactly(tmp_path, signum, status):
    """The signal arrives inside step 3 (after backward): the step finishes, its checkpoint is
    written, the run exits 128 + signal; resumed, it ends bit-identical to an uninterrupted one."""
    send = AtStep(3, lambda trainer, module: os.kill(os.getpid(), signum))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as caught:
        train(tmp_path / "first", *COMMON, "trainer.max_steps=6", extra=[send])
    assert caught.value.code == status
    saved = tmp_path / "first" / "checkpoints" / "interrupted-step-000004.ckpt"
    assert load_checkpoint(saved)["global_step"] == 4  # step 3 (0-based) completed
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    assert last.resolve() == saved.resolve()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers

    run(compose_run(tmp_path / "resumed", *COMMON, "trainer.max_steps=6", f"ckpt_path={last}"))
    run(compose_run(tmp_path / "full", *COMMON, "trainer.max_steps=6"))
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.ckpt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    for key in ("state_dict", "current_model_state"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)


VALIDATING = [
    "callbacks.ema.update_starting_at_step=1",
    "lr_scheduler.total_steps=6",
    "trainer.max_steps=6",
    "trainer.val_check_interval=3",
    "trainer.limit_val_batches=2",
    "callbacks.model_checkpoint.save_top_k=-1",  # keep step 3's checkpoint for comparison
]


class SignalInValidation(Callback):
    """Sends ``signum`` to this process in the validation after step ``step``: in its first
    batch (``during="batches"``), or at the second model call of its sample videos
    (``during="sampling"``, after the validation's 2 batches); counts the model calls after."""

    def __init__(self, signum: int, step: int, during: str) -> None:
        self.signum, self.step, self.during = signum, step, during
        self.sent, self.calls_after = False, 0

    def send(self) -> None:
        self.sent = True
        os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if self.during == "batches" and trainer.global_step == self.step and not self.sent:
            self.send()

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self.during != "sampling" or trainer.global_step != self.step:
            return
        calls = 0

        def count(module, args) -> None:
            nonlocal calls
            calls += 1
            if self.sent:
                self.calls_after += 1
            elif calls == 2 + 2:  # 2 validation batches, then the second sampler step
                self.send()

        pl_module.denoiser.register_forward_pre_hook(count)


def same_weights(a: dict, b: dict) -> bool:
    return all(
        torch.equal(value, b[part][name])
        for part in ("state_dict", "current_model_state")
        for name, value in a[part].items()
    )


@pytest.mark.parametrize("during", ["batches", "sampling"])
@pytest.mark.parametrize(
    ("signum", "status", "slurm"), [(signal.SIGINT, 130, False), (signal.SIGUSR1, 138, True)]
)
def test_a_signal_during_validation_saves_the_training_weights_and_resumes_exactly(
    tmp_path, monkeypatch, during, signum, status, slurm
):
    """EMA weights are swapped in during validation: a checkpoint written then (the interrupted
    one, or SLURM's hpc_ckpt) must still hold the training weights as training weights, sampling
    must stop at once, and the resumed run must end bit-identical to an uninterrupted one."""
    run(compose_run(tmp_path / "full", *VALIDATING))
    full = tmp_path / "full" / "checkpoints"
    if slurm:
        from test_slurm import SLURM, stand_in_scontrol

        stand_in_scontrol(tmp_path, monkeypatch)
        for key, value in SLURM.items():
            monkeypatch.setenv(key, value)
    send = SignalInValidation(signum, 3, during)
    with pytest.raises(SystemExit) as caught:
        train(tmp_path / "job", *VALIDATING, extra=[send])
    assert caught.value.code == status
    assert send.calls_after == 0  # the sampler stopped before its next model call
    saved = (
        tmp_path / "job" / "hpc_ckpt_1.ckpt"
        if slurm
        else tmp_path / "job" / "checkpoints" / "interrupted-step-000003.ckpt"
    )
    assert same_weights(load_checkpoint(saved), load_checkpoint(full / "step-000003.ckpt"))

    resume = [] if slurm else [f"ckpt_path={saved}"]  # the requeued job finds hpc_ckpt itself
    run(compose_run(tmp_path / "job" if slurm else tmp_path / "resumed", *VALIDATING, *resume))
    resumed = (tmp_path / "job" if slurm else tmp_path / "resumed") / "checkpoints"
    end = load_checkpoint(resumed / "last.ckpt")
    assert end["global_step"] == 6
    assert same_weights(end, load_checkpoint(full / "step-000006.ckpt"))


# -- checkpoints -------------------------------------------------------------------------------


@pytest.fixture
def written(tmp_path) -> Path:
    """A real checkpoint of a 2-step run, with its checksum sidecar."""
    run(compose_run(tmp_path, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    return tmp_path / "checkpoints" / "last.ckpt"


def test_resuming_with_another_optimizer_grouping_is_one_line_naming_the_key(written, tmp_path):
    with pytest.raises(UserError, match=r"optimizer.weight_decay=0.0 there, 0.01 here") as caught:
        run(
            compose_run(tmp_path / "resumed", f"ckpt_path={written}", "optimizer.weight_decay=0.01")
        )
    assert "\n" not in str(caught.value)


def test_checkpoints_have_a_checksum_and_load(written):
    sidecar = sidecar_of(written)
    assert sidecar.name == "step-000002.ckpt.checksum"
    digest, name = sidecar.read_text().split()
    assert name == "step-000002.ckpt" and len(digest) == 64
    assert load_checkpoint(written)["global_step"] == 2


def test_a_corrupted_checkpoint_is_refused_in_one_line(written, tmp_path):
    real = written.resolve()
    data = bytearray(real.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = os.urandom(4096)
    real.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged: member .* SHA-256 differs") as caught:
        load_checkpoint(written)
    assert "\n" not in str(caught.value) and str(written) in str(caught.value)
    with pytest.raises(ValueError, match="is damaged: member "):  # resuming: before any work
        run(compose_run(tmp_path / "resume", f"ckpt_path={written}"))
    with pytest.raises(ValueError, match="is damaged: member "):
        sample(compose_config("sample", f"ckpt_path={written}", f"out_dir={tmp_path / 's'}"))


def test_a_checkpoint_with_nonfinite_weights_is_refused(written, tmp_path):
    checkpoint = torch.load(written, weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] * float("nan")
    bad = tmp_path / "nan.ckpt"
    torch.save(checkpoint, bad)
    with pytest.raises(ValueError, match="non-finite weights"):
        load_checkpoint(bad)


def test_an_older_checkpoint_without_checksum_loads_with_a_warning(written, tmp_path, caplog):
    older = tmp_path / "older.ckpt"
    older.write_bytes(written.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(older)["global_step"] == 2
    assert "no checksum file" in caplog.text


def test_a_kill_during_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    before = path.read_bytes()

    def killed(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process dies in the middle of writing

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.checksum"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    io.remove_checkpoint(path)
    assert list(tmp_path.iterdir()) == []


# -- configs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.clip_len=0"], "data.clip_len=0: must be a number >= 1"),
        (
            ["model=unet3d", "data.size=30", "model.channel_mult=[1,2,2,2]"],
            "data.size=30: UNet3D needs a multiple of 8",
        ),
        (["model=transformer_tiny", "data.size=30"], "needs a multiple of 4"),
        (["model=transformer_tiny", "model.temporal_patch_size=3"], "data.clip_len=8"),
        (["data.batch_size=0"], "data.batch_size=0"),
        (["data.num_workers=-1"], "data.num_workers=-1"),
        (["data.frame_stride=0"], "data.frame_stride=0"),
        (["sampler.steps=5000"], r"sampler.steps=5000: must be in \[1, 1000\]"),
        (["callbacks.sample_videos.guidance_scale=-1"], "guidance_scale=-1: must be >= 0"),
        (["diffusion=flow", "sampler=ddim"], "but diffusion=flow is rectified flow"),
        (["sampler=euler"], "but diffusion=ddpm is DDPM: use sampler=ddim"),
        (["data=folder", "data.root=/tmp", "data.split_files.train=/x.txt"], "is set alone"),
        (["optimizer.lr=-1"], r"optimizer.lr=-1: must be a number > 0 \(the peak learning"),
        (["optimizer.betas=[0.9,1.5]"], r"optimizer.betas=\[0.9, 1.5\]: must be two numbers"),
        (["lr_scheduler.min_lr_ratio=2"], "lr_scheduler.min_lr_ratio=2: must be a number >= 0"),
        (["trainer.precision=bogus"], "trainer.precision=bogus: use one of 64-true, 32-true"),
        (["callbacks.ema.decay=1.5"], r"callbacks.ema.decay=1.5: must be a number >= 0 and <= 1"),
        (["callbacks.sample_videos.fps=0"], r"callbacks.sample_videos.fps=0: must be > 0"),
        (["callbacks.sample_videos.upscale=0"], "callbacks.sample_videos.upscale=0: must be >= 1"),
    ],
)
def test_bad_values_fail_before_any_work_in_one_line(tmp_path, overrides, message):
    with pytest.raises(UserError, match=message) as caught:
        run(compose_run(tmp_path / "run", *overrides))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "data").exists()  # nothing rendered


def test_an_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a writable folder"):
        run(compose_run(tmp_path / "file" / "run"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["guidance_scale=-1"], "guidance_scale=-1: must be >= 0"),
        (["num_samples=0"], "num_samples=0"),
        (["batch_size=0"], "batch_size=0"),
        (["sampler.steps=0"], "sampler.steps=0"),
    ],
)
def test_bad_sampling_values_are_one_line(conditional_ckpt, tmp_path, overrides, message):
    cfg = compose_config("sample", f"ckpt_path={conditional_ckpt}", f"out_dir={tmp_path}",
                         *overrides)  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        sample(cfg)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["+data.clip_length=3"], "vdm: error: data.clip_length is not a data option: use one of"),
        (["callbacks.nonfinite.mode=often"], "vdm: error: callbacks.nonfinite.mode='often': use"),
        (["+trainer.max_step=3"], "vdm: error: trainer: Trainer.__init__() got an unexpected"),
        (["+callbacks.ema.decy=0.9"], "vdm: error: callbacks.ema: EMA.__init__() got an unexpe"),
    ],
)
def test_a_value_or_key_a_constructor_refuses_is_one_line_naming_it(
    tmp_path, capsys, overrides, line
):
    """Refused while Hydra instantiates (wrapped in its InstantiationException): one line."""
    cfg = compose_run(tmp_path, *overrides)
    with pytest.raises(SystemExit) as caught, user_errors_in_one_line():
        run(cfg)
    assert caught.value.code == 1
    (printed,) = capsys.readouterr().err.strip().splitlines()
    assert printed.startswith(line)


def test_a_bug_keeps_its_traceback_in_the_terminal_and_in_the_log(tmp_path, capsys):
    """Only vdm's own errors for a user's input are one line: a ValueError from deep inside a
    library is a bug, printed with its traceback (and written to the log file)."""
    log_file = tmp_path / "train.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    try:
        with pytest.raises(SystemExit) as caught, user_errors_in_one_line():
            torch.nn.functional.interpolate(torch.zeros(1, 1, 4), size=(2, 2))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "interpolate" in err
    assert err.strip().splitlines()[-1].startswith("vdm: error: unexpected ValueError, a bug")
    assert "Traceback (most recent call last)" in log_file.read_text()
    with pytest.raises(SystemExit), user_errors_in_one_line():  # a user's error: one line
        raise ConfigError("data.size=0: must be a number >= 1 (frame height and width in pixels).")
    assert capsys.readouterr().err.strip().splitlines() == [
        "vdm: error: data.size=0: must be a number >= 1 (frame height and width in pixels)."
    ]


# -- runs that train nothing -------------------------------------------------------------------


def test_too_few_training_clips_for_one_batch_is_refused_before_training(tmp_path):
    from conftest import frame_index_video

    from vdm.files.video import write_mp4

    root = tmp_path / "videos"
    for split, count in (("train", 3), ("val", 1)):
        for i in range(count):
            write_mp4(root / split / f"{i}.mp4", frame_index_video(12, 32, 32), fps=8,
                      lossless=True)  # fmt: skip
    folder = ["data=folder", f"data.root={root}", "data.num_workers=0", "data.size=32",
              "data.clip_len=8", "data.frame_stride=1", "data.num_classes=0",
              "model=unet3d_tiny", "~logger", "trainer.max_steps=1", "trainer.val_check_interval=1",
              "trainer.limit_val_batches=1", "sampler.steps=2"]  # fmt: skip
    with pytest.raises(UserError, match=r"3 training videos .* no full batch of data.batch_size"
                       r"=4 .*lower data.batch_size to at most 3") as caught:  # fmt: skip
        run(compose_run(tmp_path / "run", *folder, "data.batch_size=4", fast=False))
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()
    run(compose_run(tmp_path / "ok", *folder, "data.batch_size=3", fast=False))


def test_a_run_that_returns_before_max_steps_is_not_a_success(tmp_path):
    """Lightning returns from fit without training when it has no batches to train on."""
    with pytest.raises(UserError, match=r"ended at step 0 of trainer.max_steps=4 without"):
        run(compose_run(tmp_path, "+trainer.limit_train_batches=0"))


def test_a_second_run_in_a_folder_a_live_run_holds_is_refused(tmp_path):
    """The lock of a live run (another process) keeps a second run out of its folder; once that
    run is gone the folder is taken over, and a finished run leaves no lock behind."""
    import json
    import socket
    import subprocess

    from vdm.files.run_lock import LOCK_NAME

    other = subprocess.Popen(["sleep", "60"])
    lock = tmp_path / LOCK_NAME
    tmp_path.mkdir(exist_ok=True)
    lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "started": "x"}))
    try:
        with pytest.raises(UserError, match=r"is in use by another run \(pid") as caught:
            run(compose_run(tmp_path, "trainer.max_steps=1", "trainer.val_check_interval=1"))
        assert "\n" not in str(caught.value) and not (tmp_path / "checkpoints").exists()
    finally:
        other.kill()
        other.wait()
    run(compose_run(tmp_path, "trainer.max_steps=1", "trainer.val_check_interval=1"))
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and not lock.exists()
