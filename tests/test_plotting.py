"""History.plot (panels, curves, PNG) and reading a run back: History.from_csv / History.from_run."""

from __future__ import annotations

import csv
import os
import struct
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import FabricMetricsError, HistoryKeyError, LogDirectoryError
from fabricmetrics.history import History
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger
from fabricmetrics.plotting import group_of, plot_history, select_keys


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def history() -> History:
    h = History()
    for epoch in range(1, 4):
        for step in range(epoch * 10 - 9, epoch * 10 + 1):
            if step % 2 == 0:
                h.record({"acc/train_step": 0.5 + step / 100, "loss/train_step": 1.0 / step}, step)
        h.record({"acc/train": 0.6 + epoch / 10, "loss/train": 1.0 / epoch}, epoch * 10)
        h.record({"acc/val": 0.55 + epoch / 10, "loss/val": 1.2 / epoch}, epoch * 10)
        h.record({"LogisticRegression/accuracy": 0.7, "LogisticRegression/f1_macro": 0.6}, epoch * 10)
        h.record({"encoder.fc1/LogisticRegression/accuracy": 0.65}, epoch * 10)
        h.record({"lr": 0.1 / epoch}, epoch * 10)
    return h


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def png_size(path) -> tuple[int, int]:
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ---------------------------------------------------------------------------------------------- plot
def test_one_panel_per_group_in_logging_order(history):
    fig = history.plot()
    assert [ax.get_title() for ax in fig.axes] == [
        "acc",
        "loss",
        "LogisticRegression",
        "encoder.fc1/LogisticRegression",
        "lr",
    ]
    labels = [[line.get_label() for line in ax.get_lines()] for ax in fig.axes]
    assert labels == [
        ["train_step", "train", "val"],
        ["train_step", "train", "val"],
        ["accuracy", "f1_macro"],
        ["accuracy"],
        ["lr"],
    ]
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)


def test_curves_hold_the_logged_points(history):
    acc = lines_by_label(history.plot().axes[0])
    assert list(acc["val"].get_xdata()) == [10, 20, 30]
    assert list(acc["val"].get_ydata()) == pytest.approx([0.65, 0.75, 0.85])
    assert list(acc["train_step"].get_xdata()) == list(range(2, 31, 2))


def test_step_curves_are_thin_and_light_behind_epoch_curves_of_the_same_colour(history):
    acc = lines_by_label(history.plot().axes[0])
    step, train, val = acc["train_step"], acc["train"], acc["val"]
    assert step.get_linewidth() < train.get_linewidth()
    assert step.get_alpha() < 1 and train.get_alpha() in (None, 1)
    assert step.get_zorder() < train.get_zorder()
    assert step.get_marker() in ("None", None, "") and train.get_marker() == "o" and val.get_marker() == "o"
    assert step.get_color() == train.get_color() != val.get_color()


def test_a_label_keeps_its_colour_in_every_panel(history):
    fig = history.plot()
    acc, loss = lines_by_label(fig.axes[0]), lines_by_label(fig.axes[1])
    assert acc["train"].get_color() == loss["train"].get_color() == "C0"
    assert acc["val"].get_color() == loss["val"].get_color() == "C1"


def test_step_only_panel_is_drawn_opaque():
    h = History()
    h.record({"loss/train_step": 1.0}, 1)
    h.record({"loss/train_step": 0.5}, 2)
    (line,) = h.plot().axes[0].get_lines()
    assert line.get_alpha() > 0.8


def test_legends_grid_and_no_legend_for_a_lone_unprefixed_key(history):
    fig = history.plot()
    assert all(ax.get_legend() is not None for ax in fig.axes[:4])
    assert fig.axes[4].get_legend() is None  # "lr": the title says it
    assert all(any(line.get_visible() for line in ax.xaxis.get_gridlines()) for ax in fig.axes)


def test_at_most_four_columns_and_no_empty_panels(history):
    fig = history.plot()
    assert len(fig.axes) == 5
    nrows, ncols = fig.axes[0].get_subplotspec().get_geometry()[:2]
    assert (nrows, ncols) == (2, 4)
    assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"
    width, height = fig.get_size_inches()
    assert 12 <= width <= 20 and 4 <= height <= 9


def test_one_panel_gets_a_readable_size():
    h = History()
    h.record({"acc/val": 0.5}, 1)
    fig = h.plot()
    assert len(fig.axes) == 1
    assert tuple(fig.get_size_inches()) == (6.4, 4.0)


def test_title_is_the_figure_title(history):
    fig = history.plot(title="Supervised metrics")
    assert fig._suptitle is not None and fig._suptitle.get_text() == "Supervised metrics"
    assert history.plot()._suptitle is None


def test_keys_select_exact_keys_and_glob_patterns(history):
    fig = history.plot(["loss/val", "acc/*"])
    assert [ax.get_title() for ax in fig.axes] == ["loss", "acc"]
    assert [line.get_label() for line in fig.axes[1].get_lines()] == ["train_step", "train", "val"]
    fig = history.plot(["*/val"])
    assert [ax.get_title() for ax in fig.axes] == ["acc", "loss"]
    fig = history.plot("*LogisticRegression/*")  # one string is one pattern
    assert [ax.get_title() for ax in fig.axes] == ["LogisticRegression", "encoder.fc1/LogisticRegression"]


def test_unknown_keys_raise_a_key_error_listing_the_logged_keys(history):
    with pytest.raises(
        HistoryKeyError, match=r"No logged key matches \['nope', 'f1/\*'\]; the logged keys are \["
    ) as info:
        history.plot(["acc/val", "nope", "f1/*"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, FabricMetricsError)
    assert "'loss/train'" in str(info.value) and "HINT: pass exact keys or glob patterns" in str(info.value)


def test_empty_history_or_empty_selection_raise():
    with pytest.raises(HistoryKeyError, match="Nothing to plot: no key was logged"):
        History().plot()
    h = History()
    h.record({"acc/val": 1.0}, 1)
    with pytest.raises(HistoryKeyError, match=r"No logged key matches \[\]"):
        h.plot([])


def test_getitem_of_an_unknown_key_raises_the_project_key_error(history):
    with pytest.raises(HistoryKeyError, match="Nothing was logged under 'nope'; logged keys: ") as info:
        history["nope"]
    assert isinstance(info.value, KeyError)


def test_path_saves_a_png_and_returns_the_figure(history, tmp_path):
    path = tmp_path / "sub" / "dir" / "metrics.png"  # parents are created
    fig = history.plot(path=path)
    assert fig is not None and path.is_file()
    width, height = png_size(path)
    expected = fig.get_size_inches() * 120
    assert abs(width - expected[0]) <= 2 and abs(height - expected[1]) <= 2
    assert os.path.getsize(path) > 20_000  # curves, text: not a blank image
    fig = history.plot(["acc/*"], path=str(tmp_path / "acc"))  # no suffix: still a PNG, at that path
    assert png_size(tmp_path / "acc") == (768, 480)


def test_group_of_and_select_keys():
    assert group_of("acc/train") == ("acc", "train")
    assert group_of("encoder.fc1/LogisticRegression/accuracy") == ("encoder.fc1/LogisticRegression", "accuracy")
    assert group_of("lr") == ("lr", "lr")
    assert select_keys(["a/x", "b/x", "a/y"], ["a/y", "*/x", "a/x"]) == ["a/y", "a/x", "b/x"]
    assert select_keys(["a[1]/x"], ["a[1]/x"]) == ["a[1]/x"]  # exact keys win over glob syntax


def test_plot_history_accepts_a_plain_mapping():
    fig = plot_history({"loss/train": [(1, 1.0), (2, 0.5)]}, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["loss"]


# ---------------------------------------------------------------------------------------------- reading runs
def out(hits: int, n: int = 4) -> dict:
    return {"y_true": np.ones(n, dtype=int), "y_pred": (np.arange(n) < hits).astype(int)}


def train_run(loggers, epochs: int = 2) -> MetricsTracker:
    """A real tracker run: step-level and epoch-level train values, val values, an extra key."""
    tracker = MetricsTracker(
        {"acc": accuracy_score}, loggers=loggers, schedule={"train": Schedule(every_n_steps=2, per_step=True)}
    )
    with tracker:
        for epoch in range(epochs):
            with tracker.epoch("train"):
                for hits in (1, 2, 3, 4):
                    tracker.step("train", out(hits))
            with tracker.epoch("val"):
                tracker.step("val", out(epoch + 1))
            tracker.log({"lr": 0.1 / (epoch + 1)})
    return tracker


def test_from_csv_round_trips_a_tracker_run(tmp_path):
    logger = CSVLogger(tmp_path, name="run")
    tracker = train_run([logger])
    for where in (logger.log_dir, os.path.join(logger.log_dir, "metrics.csv"), tmp_path / "run", tmp_path):
        history = History.from_csv(where)
        assert dict(history) == dict(tracker.history)
        assert history.source == os.path.join(logger.log_dir, "metrics.csv")
    assert sorted(tracker.history) == ["acc/train", "acc/train_step", "acc/val", "lr"]


def test_from_csv_picks_the_latest_version_and_says_so(tmp_path):
    first = CSVLogger(tmp_path, name="run")
    train_run([first], epochs=1)
    second = CSVLogger(tmp_path, name="run")
    tracker = train_run([second], epochs=3)
    assert second.version == 1
    history = History.from_csv(tmp_path)
    assert dict(history) == dict(tracker.history)
    assert history.source == f"{second.log_dir}/metrics.csv (the latest of 2 versions in {tmp_path / 'run'})"


def test_version_numbers_are_compared_as_numbers(tmp_path):
    for version in (2, 10):
        logger = CSVLogger(tmp_path, name="run", version=version)
        logger.log_metrics({"v": float(version)}, step=1)
        logger.finalize("success")
    assert History.from_run(tmp_path)["v"] == [(1, 10.0)]


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_from_csv_reads_empty_cells_as_missing(tmp_path):
    write_csv(tmp_path / "metrics.csv", ["acc/val", "loss/train_step", "step"], [["", "0.5", "1"], ["0.75", "", "2"]])
    history = History.from_csv(tmp_path / "metrics.csv")
    assert dict(history) == {"acc/val": [(2, 0.75)], "loss/train_step": [(1, 0.5)]}


def test_from_csv_errors(tmp_path):
    with pytest.raises(LogDirectoryError, match=r"does not exist\. HINT: pass a run's log folder"):
        History.from_csv(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        LogDirectoryError, match=r"No metrics.csv or TensorBoard event file .* in the two folder levels"
    ):
        History.from_csv(tmp_path / "empty")
    write_csv(tmp_path / "nostep" / "metrics.csv", ["acc/val"], [["0.5"]])
    with pytest.raises(LogDirectoryError, match=r"has no `step` column \(columns: \['acc/val'\]\)"):
        History.from_csv(tmp_path / "nostep")
    write_csv(tmp_path / "bad" / "metrics.csv", ["acc/val", "step"], [["0.5", "1"], ["oops", "2"]])
    with pytest.raises(LogDirectoryError, match=r"metrics.csv, line 3: could not convert string to float: 'oops'"):
        History.from_csv(tmp_path / "bad")
    TensorBoardLogger(tmp_path / "tb", name="run").log_metrics({"a": 1.0}, step=1)
    with pytest.raises(LogDirectoryError, match=r"No metrics.csv in .*version_0\. HINT: History.from_run also reads"):
        History.from_csv(tmp_path / "tb")


def test_several_runs_under_one_folder_is_an_error(tmp_path):
    for name in ("a", "b"):
        write_csv(tmp_path / name / "version_0" / "metrics.csv", ["x", "step"], [["1", "1"]])
    with pytest.raises(LogDirectoryError, match=r"holds the logs of several runs: .*HINT: pass one of them"):
        History.from_run(tmp_path)
    assert History.from_run(tmp_path / "a")["x"] == [(1, 1.0)]


def test_from_run_reads_tensorboard_events(tmp_path):
    tb = TensorBoardLogger(tmp_path, name="run")
    tracker = train_run([tb])
    for where in (tb.log_dir, tmp_path):
        history = History.from_run(where)
        assert sorted(history) == sorted(tracker.history)
        for key, points in tracker.history.items():
            assert [s for s, _ in history[key]] == [s for s, _ in points]
            assert [v for _, v in history[key]] == pytest.approx([v for _, v in points], rel=1e-6)  # float32
    assert history.source == f"TensorBoard events in {tb.log_dir}"
    (event_file,) = [name for name in os.listdir(tb.log_dir) if name.startswith("events.out.tfevents.")]
    assert sorted(History.from_run(os.path.join(tb.log_dir, event_file))) == sorted(tracker.history)


def test_from_run_prefers_the_csv_and_takes_only_missing_keys_from_events(tmp_path):
    tb, csv_logger = TensorBoardLogger(tmp_path, name="run"), CSVLogger(tmp_path, name="run")
    tracker = train_run([tb, csv_logger])
    history = History.from_run(tmp_path)
    assert dict(history) == dict(tracker.history)  # exact: the CSV's values, not float32 ones, each once
    assert history.source == os.path.join(csv_logger.log_dir, "metrics.csv")
    tb.log_metrics({"only_tb": 0.25}, step=7)
    tb.finalize("success")
    history = History.from_run(tmp_path)
    assert history["only_tb"] == [(7, 0.25)] and history["acc/val"] == tracker.history["acc/val"]
    assert history.source.endswith(f"metrics.csv + 1 key from TensorBoard events in {tb.log_dir}")


def test_without_tensorboard_event_files_need_it_and_csv_does_not(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard.backend.event_processing.event_accumulator", None)
    tb = TensorBoardLogger(tmp_path / "tb", name="run")
    tb.log_metrics({"a": 1.0}, step=1)
    tb.finalize("success")
    with pytest.raises(LogDirectoryError, match=r"`tensorboard` package that reads them is not installed\. HINT: pip"):
        History.from_run(tmp_path / "tb")
    write_csv(tmp_path / "tb" / "run" / "version_0" / "metrics.csv", ["a", "step"], [["2.0", "1"]])
    assert History.from_run(tmp_path / "tb")["a"] == [(1, 2.0)]


def test_from_run_rejects_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(LogDirectoryError, match=r"notes.txt is neither a metrics.csv nor a TensorBoard event file"):
        History.from_run(tmp_path / "notes.txt")


def test_from_csv_of_a_binary_file_is_a_clear_error(tmp_path):
    (tmp_path / "metrics.csv").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(LogDirectoryError, match=r"metrics.csv is not a CSV file \("):
        History.from_csv(tmp_path)
