"""ProgressDisplay: plain lines off a terminal, a rich live table on one, silence off rank 0, throttling."""

from __future__ import annotations

import io
import re
import sys

import pytest
from rich.console import Console

from fabricmetrics import progress as progress_module
from fabricmetrics.progress import ProgressDisplay

SPEED = re.compile(r"  [0-9.]+ (it/s|s/it)")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=160, color_system=None), out


def run_epoch(display: ProgressDisplay, stage: str, epoch: int, steps: int, total: int | None, results=None) -> None:
    display.epoch_started(stage, epoch, total)
    for i in range(steps):
        display.step(stage, {f"loss/{stage}_step": 1.0 / (i + 1)} if i % 2 == 0 else None)
    display.epoch_ended(stage, results or {})


# ---------------------------------------------------------------------------------------------- plain lines
def test_plain_lines_on_a_non_terminal_stdout(capsys, clock):
    display = ProgressDisplay(line_every_s=10)
    display.epoch_started("train", 1, total=4)
    for _ in range(4):
        clock.now += 4  # a line is due after 10 s, then 10 s after that line
        display.step("train", {"loss/train_step": 0.5, "acc/train_step": 0.25})
    clock.now += 1
    display.epoch_ended("train", {"acc/train": 0.75, "loss/train": 0.125})
    display.close()
    assert display.mode == "lines"
    assert capsys.readouterr().out.splitlines() == [
        "train epoch 1  3/4  0:00:12  4.0 s/it  loss 0.5  acc 0.25",
        "train epoch 1 done  4/4  0:00:17  4.2 s/it  acc 0.75  loss 0.125",
    ]


def test_at_most_one_line_per_stage_per_period(capsys, clock):
    display = ProgressDisplay(line_every_s=60)
    for epoch in (1, 2):
        display.epoch_started("train", epoch, total=100)
        for i in range(100):
            clock.now += 1
            display.step("train", {"loss/train_step": float(i)})
            if i == 50:
                run_epoch(display, "val", epoch, steps=5, total=None, results={"acc/val": 0.5})
        display.epoch_ended("train", {"acc/train": 0.9})
    lines = capsys.readouterr().out.splitlines()
    assert [SPEED.sub("", line) for line in lines] == [
        "val epoch 1 done  5/5  0:00:00  acc 0.5",
        "train epoch 1  60/100  0:01:00  loss 59",
        "train epoch 1 done  100/100  0:01:40  acc 0.9",
        "val epoch 2 done  5/5  0:00:00  acc 0.5",
        "train epoch 2  60/100  0:01:00  loss 59",
        "train epoch 2 done  100/100  0:01:40  acc 0.9",
    ]


def test_plain_lines_go_to_the_given_console_file():
    out = io.StringIO()
    display = ProgressDisplay(console=Console(file=out))
    run_epoch(display, "val", 3, steps=2, total=None, results={"acc/val": 0.5})
    assert SPEED.sub("", out.getvalue()) == "val epoch 3 done  2/2  0:00:00  acc 0.5\n"


def test_values_lose_the_stage_suffix_and_are_capped():
    out = io.StringIO()
    display = ProgressDisplay(console=Console(file=out), max_values=2)
    display.epoch_started("train", 1)
    display.epoch_ended("train", {"acc/train": 0.5, "LogisticRegression/accuracy": 0.25, "f1/train": 1.0})
    assert out.getvalue().rstrip().endswith("acc 0.5  LogisticRegression/accuracy 0.25  …")


def test_steps_outside_an_epoch_are_shown_without_epoch_number(capsys):
    display = ProgressDisplay(line_every_s=0)
    display.step("train", {"loss/train_step": 2.0})
    assert SPEED.sub("", capsys.readouterr().out) == "train  1/?  0:00:00  loss 2\n"
    display.epoch_ended("other", {"x": 1.0})  # never started: ignored
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------------------------------------- other ranks
def test_silent_when_not_the_main_process(capsys):
    console, out = terminal()
    for display in (ProgressDisplay(is_main=False), ProgressDisplay(False, console=console, line_every_s=0)):
        run_epoch(display, "train", 1, steps=5, total=5, results={"acc/train": 1.0})
        display.step("val")
        display.close()
        assert display.mode == "off"
    assert capsys.readouterr() == ("", "")
    assert out.getvalue() == ""


# ---------------------------------------------------------------------------------------------- rich
def test_rich_live_table_on_a_terminal():
    console, out = terminal()
    stdout = sys.stdout
    with ProgressDisplay(console=console, refresh_s=0) as display:
        assert display.mode == "rich"
        display.epoch_started("train", 2, total=3)
        display.step("train", {"loss/train_step": 0.5})
        run_epoch(display, "val", 2, steps=4, total=None, results={"acc/val": 0.75})
        display.step("train")
        display.step("train")
        display.epoch_ended("train", {"acc/train": 0.875})
    assert sys.stdout is stdout  # the live display's redirection is undone
    text = out.getvalue()
    assert "train epoch 2" in text and "val epoch 2" in text
    assert "1/3" in text and "3/3" in text and "4/?" in text and "4/4" in text
    assert "loss 0.5" in text and "acc 0.875" in text and "it/s" in text
    assert "━" in text  # the bar
    assert re.search(r"train epoch 2 done  3/3  0:00:00  [0-9.]+ it/s  acc 0.875", text)  # summary line kept
    display.close()  # closing twice is fine


def test_rich_redraws_are_throttled(clock):
    console, out = terminal()
    display = ProgressDisplay(console=console, refresh_s=0.5)
    display.epoch_started("train", 1, total=1000)
    drawn = len(out.getvalue())
    for _ in range(999):
        display.step("train", {"loss/train_step": 0.5})
    assert len(out.getvalue()) == drawn  # no time passed: nothing redrawn
    clock.now += 0.6
    display.step("train")
    assert len(out.getvalue()) > drawn and "1000/1000" in out.getvalue()
    display.close()


def test_the_tracker_feeds_the_display_on_rank_zero(capsys):
    import numpy as np
    from sklearn.metrics import accuracy_score

    from fabricmetrics import MetricsTracker

    tracker = MetricsTracker({"acc": accuracy_score}, progress=True)
    out = {"y_true": np.array([1, 0]), "y_pred": np.array([1, 1])}
    with tracker, tracker.epoch("val", total=3):
        for _ in range(3):
            tracker.step("val", out)
    printed = capsys.readouterr().out
    assert "val epoch 1" in printed and "acc 0.5" in printed


def test_rich_shows_each_finished_epoch_once():
    console, out = terminal()
    with ProgressDisplay(console=console, refresh_s=0) as display:
        for epoch in (1, 2):
            run_epoch(display, "train", epoch, steps=3, total=3, results={"acc/train": 0.5 + epoch / 10})
    text = out.getvalue()
    # each epoch leaves one summary line; the live table is cleared at the end, so the last epoch is not repeated
    assert len(re.findall(r"train epoch 2 done", text)) == 1
    assert text.count("acc 0.7") == 1


def test_an_interrupted_epoch_leaves_its_line_when_the_display_closes():
    console, out = terminal()
    display = ProgressDisplay(console=console, refresh_s=0)
    display.epoch_started("train", 1, total=10)
    display.step("train", {"loss/train_step": 0.25})
    display.close()
    assert re.search(r"train epoch 1  1/10  0:00:00  .*loss 0.25", out.getvalue())


def test_results_get_a_line_of_their_own(capsys):
    display = ProgressDisplay(max_values=2)
    display.results("probe after train epoch 1", {"LogisticRegression/accuracy": 0.875, "a": 1.0, "b": 2.0})
    display.results("nothing", {})
    assert capsys.readouterr().out == "probe after train epoch 1  LogisticRegression/accuracy 0.875  a 1  …\n"
    silent = ProgressDisplay(is_main=False)
    silent.results("probe", {"x": 1.0})
    assert capsys.readouterr().out == ""
