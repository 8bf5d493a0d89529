"""ProgressLog: the line's format, when lines come (fake clock and trainer), and a run through
the command line whose output is a pipe."""

import logging
import sys
from types import SimpleNamespace

import pytest
import torch
from test_cli import train

from vdm.training.progress import ProgressLog, progress_line

LOGGER = "vdm.training.progress"


def test_the_line_format():
    assert progress_line(12, 1600, 0.21344, 2.41) == (
        "step 12/1600 (1%) loss 0.2134 2.41 it/s ETA 0:10:59"  # 1588 / 2.41 = 658.9 s
    )
    assert progress_line(50, 1600, None, 2.0) == "step 50/1600 (3%) loss - 2.00 it/s ETA 0:12:55"
    assert (
        progress_line(1000, 1000, 1.5, 0.01)
        == "step 1000/1000 (100%) loss 1.5000 0.01 it/s ETA 0:00:00"
    )
    assert progress_line(10, 100000, 0.1, 1.0).endswith("ETA 27:46:30")  # hours are not wrapped


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_trainer(max_steps: int = 1600, rank_zero: bool = True) -> SimpleNamespace:
    return SimpleNamespace(
        global_step=0,
        max_steps=max_steps,
        is_global_zero=rank_zero,
        sanity_checking=False,
        callback_metrics={},
    )


def simulate(
    callback: ProgressLog, trainer, steps: int, seconds_per_step: float, validate_at=()
) -> None:
    """``steps`` optimizer steps of ``seconds_per_step``, loss = 1 / step, and 100 s of
    validation after each step in ``validate_at``."""
    callback.on_train_start(trainer, None)
    for i in range(steps):
        callback.on_train_batch_start(trainer, None, None, i)
        callback.clock.now += seconds_per_step
        trainer.global_step += 1
        trainer.callback_metrics["train/loss"] = torch.tensor(1.0 / trainer.global_step)
        callback.on_train_batch_end(trainer, None, None, None, i)
        if trainer.global_step in validate_at:
            callback.on_validation_start(trainer, None)
            callback.clock.now += 100.0
            trainer.callback_metrics.update({"val/loss": torch.tensor(0.04321), "val/psnr": 28.5})
            callback.on_validation_end(trainer, None)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_a_line_every_n_steps_with_rate_and_eta(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    callback = ProgressLog(every_n_steps=50, every_seconds=60, clock=FakeClock())
    simulate(callback, fake_trainer(), steps=120, seconds_per_step=0.5)
    assert lines(caplog) == [
        "step 50/1600 (3%) loss 0.0200 2.00 it/s ETA 0:12:55",  # 1550 steps at 2 it/s
        "step 100/1600 (6%) loss 0.0100 2.00 it/s ETA 0:12:30",
    ]


def test_slow_steps_get_a_line_every_n_seconds(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    callback = ProgressLog(every_n_steps=50, every_seconds=60, clock=FakeClock())
    simulate(callback, fake_trainer(max_steps=100), steps=13, seconds_per_step=25.0)
    # 60 s pass after 3 steps (75 s): a line, then every third step.
    assert lines(caplog) == [
        "step 3/100 (3%) loss 0.3333 0.04 it/s ETA 0:40:25",  # 97 steps at 25 s
        "step 6/100 (6%) loss 0.1667 0.04 it/s ETA 0:39:10",
        "step 9/100 (9%) loss 0.1111 0.04 it/s ETA 0:37:55",
        "step 12/100 (12%) loss 0.0833 0.04 it/s ETA 0:36:40",
    ]


def test_validation_time_is_left_out_of_the_rate_and_has_its_own_lines(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    callback = ProgressLog(every_n_steps=4, every_seconds=600, clock=FakeClock())
    simulate(callback, fake_trainer(max_steps=10), steps=10, seconds_per_step=1.0, validate_at=(2,))
    assert lines(caplog) == [
        "validating at step 2",
        "validated at step 2 in 100.0 s: val/loss 0.04321, val/psnr 28.5",
        "step 4/10 (40%) loss 0.2500 1.00 it/s ETA 0:00:06",
        "step 8/10 (80%) loss 0.1250 1.00 it/s ETA 0:00:02",
        "step 10/10 (100%) loss 0.1000 1.00 it/s ETA 0:00:00",  # the last step, always
    ]


def test_accumulated_batches_are_not_steps(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    callback = ProgressLog(every_n_steps=1, every_seconds=600, clock=FakeClock())
    trainer = fake_trainer(max_steps=10)
    callback.on_train_start(trainer, None)
    for i in range(4):  # two batches per optimizer step
        callback.clock.now += 1.0
        trainer.global_step += i % 2
        callback.on_train_batch_end(trainer, None, None, None, i)
    assert lines(caplog) == [
        "step 1/10 (10%) loss - 0.50 it/s ETA 0:00:18",
        "step 2/10 (20%) loss - 0.50 it/s ETA 0:00:16",
    ]


class Terminal:
    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("on_terminal", [False, True])
def test_a_terminal_gets_lines_only_when_asked(caplog, monkeypatch, on_terminal):
    caplog.set_level(logging.INFO, logger=LOGGER)
    monkeypatch.setattr(sys, "stdout", Terminal())
    callback = ProgressLog(every_n_steps=2, on_terminal=on_terminal, clock=FakeClock())
    simulate(callback, fake_trainer(max_steps=4), steps=4, seconds_per_step=1.0, validate_at=(2,))
    assert len(lines(caplog)) == (4 if on_terminal else 0)  # 2 steps, 2 of validation


def test_other_ranks_stay_silent(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    callback = ProgressLog(every_n_steps=1, clock=FakeClock())
    simulate(callback, fake_trainer(max_steps=4, rank_zero=False), 4, 1.0, validate_at=(2,))
    assert lines(caplog) == []


def test_bad_cadences_are_refused():
    with pytest.raises(ValueError, match="callbacks.progress_log.every_n_steps=0"):
        ProgressLog(every_n_steps=0)
    with pytest.raises(ValueError, match="callbacks.progress_log.every_seconds=0"):
        ProgressLog(every_seconds=0)


@pytest.mark.slow
def test_a_run_writes_progress_lines_to_a_pipe_and_to_train_log(tmp_path):
    run_dir = tmp_path / "run"
    result = train(
        tmp_path,
        "debug=fast",
        "trainer.max_steps=6",
        "callbacks.progress_log.every_n_steps=2",
        f"hydra.run.dir={run_dir}",
    )
    log_file = (run_dir / "train.log").read_text()
    for step in (2, 4, 6):
        assert f"step {step}/6 (" in result.stdout
        assert f"step {step}/6 (" in log_file
        assert f"validated at step {step} in " in result.stdout
