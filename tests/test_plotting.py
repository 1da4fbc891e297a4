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
from fabricmetrics.plotting import group_of, lower_is_better, plot_history, plot_runs, select_keys


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
def curves(ax) -> dict:
    """The labelled curves of a panel, by the first word of their legend label."""
    return {line.get_label().split()[0]: line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_one_panel_per_group_in_logging_order(history):
    fig = history.plot()
    assert [ax.get_title() for ax in fig.axes] == [
        "acc",
        "loss (lower is better)",
        "LogisticRegression",
        "encoder.fc1/LogisticRegression",
        "lr",
    ]
    assert [list(curves(ax)) for ax in fig.axes] == [
        ["train", "train_step", "val"],
        ["train", "train_step", "val"],
        ["accuracy"],  # a probe panel shows its main score by default
        ["accuracy"],
        ["lr"],
    ]
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)


def test_panels_follow_the_first_step_logged_not_the_alphabet():
    h = {"zeta/train": [(1, 1.0), (2, 2.0)], "alpha/train": [(2, 1.0)], "mid/val": [(1, 0.5)]}
    assert [ax.get_title() for ax in plot_history(h).axes] == ["zeta", "mid", "alpha"]


def test_curves_hold_the_logged_points(history):
    acc = curves(history.plot().axes[0])
    assert list(acc["val"].get_xdata()) == [10, 20, 30]
    assert list(acc["val"].get_ydata()) == pytest.approx([0.65, 0.75, 0.85])
    assert list(acc["train_step"].get_xdata()) == list(range(2, 31, 2))


def test_step_curves_are_thin_and_light_behind_epoch_curves_of_the_same_colour(history):
    acc = curves(history.plot().axes[0])
    step, train, val = acc["train_step"], acc["train"], acc["val"]
    assert step.get_linewidth() < train.get_linewidth()
    assert step.get_alpha() < 1 and train.get_alpha() in (None, 1)
    assert step.get_zorder() < train.get_zorder()
    assert step.get_marker() in ("None", None, "") and train.get_marker() == "o" and val.get_marker() == "o"
    assert step.get_color() == train.get_color() != val.get_color()


def test_a_label_keeps_its_colour_and_legend_place_in_every_panel(history):
    fig = history.plot()
    acc, loss = curves(fig.axes[0]), curves(fig.axes[1])
    assert acc["train"].get_color() == loss["train"].get_color() == "C0"
    assert acc["val"].get_color() == loss["val"].get_color() == "C1"
    h = {"a/val": [(1, 1.0)], "a/train": [(1, 1.0)], "b/train_step": [(1, 1.0)], "b/train": [(1, 1.0)]}
    h["b/val"] = [(1, 1.0)]
    legends = [[t.get_text().split()[0] for t in ax.get_legend().get_texts()] for ax in plot_history(h).axes]
    assert legends == [["train", "val"], ["train", "train_step", "val"]]


def test_best_and_last_values_are_marked_and_written_in_the_legend():
    h = {"acc/val": [(1, 0.5), (2, 0.9), (3, 0.75)], "loss/val": [(1, 2.0), (2, 1.0), (3, 1.5)]}
    acc, loss = plot_history(h).axes
    assert curves(acc)["val"].get_label() == "val  best 0.9, last 0.75"
    assert curves(loss)["val"].get_label() == "val  best 1, last 1.5"  # lower is better
    markers = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in acc.get_lines()}
    assert markers["_best"] == ([2], [0.9]) and markers["_last"] == ([3], [0.75])
    best = next(line for line in loss.get_lines() if line.get_label() == "_best")
    assert (list(best.get_xdata()), best.get_marker()) == ([2], "*")
    h = {"acc/val": [(1, 0.5), (2, float("nan")), (3, 0.75)]}
    assert curves(plot_history(h).axes[0])["val"].get_label() == "val  last 0.75 (best)"


def test_lower_is_better_names():
    lower = ["loss/train", "loss_1/val", "alignment/val", "uniformity/train", "Ridge/MAE", "age/MedAE", "x/RMSE"]
    higher = ["acc/val", "age/R2", "LogisticRegression/accuracy", "contrastive_acc/val", "lr", "glossary/val"]
    assert all(lower_is_better(k) for k in [*lower, "task0/MSE"])
    assert not any(lower_is_better(k) for k in higher)


def test_a_panel_mixing_directions_marks_each_curve():
    h = {"Ridge/R2": [(1, 0.1), (2, 0.3)], "Ridge/MAE": [(1, 50.0), (2, 40.0)]}
    (ax,) = plot_history(h, ["Ridge/*"]).axes
    assert ax.get_title() == "Ridge"
    assert sorted(curves(ax)) == ["MAE", "R2"]
    assert "(lower is better)" in curves(ax)["MAE"].get_label() and "lower" not in curves(ax)["R2"].get_label()


def test_chosen_probe_scores_get_distinct_styles(history):
    (ax,) = history.plot(["LogisticRegression/*"]).axes
    acc, f1 = curves(ax)["accuracy"], curves(ax)["f1_macro"]
    assert (acc.get_linestyle(), acc.get_marker()) != (f1.get_linestyle(), f1.get_marker())
    assert acc.get_color() != f1.get_color()


def test_hidden_probe_scores_are_named_below_the_figure(history):
    note = history.plot()._supxlabel.get_text()
    assert "1 more scores are logged" in note and "'LogisticRegression/*'" in note
    assert "more scores" not in plot_history({"acc/val": [(1, 1.0)]})._supxlabel.get_text()


def test_epoch_numbers_on_a_second_axis_where_train_epochs_ended(history):
    ax = history.plot().axes[0]
    (top,) = ax.child_axes
    assert list(top.get_xticks()) == [10, 20, 30]
    assert [t.get_text() for t in top.get_xticklabels()] == ["1", "2", "3"]
    assert top.get_xlabel() == "epoch"
    assert plot_history({"acc/val": [(1, 1.0)]}).axes[0].child_axes == []  # no train epochs: no epoch axis
    many = {"acc/train": [(10 * e, 0.5) for e in range(1, 101)]}
    (top,) = plot_history(many).axes[0].child_axes
    assert len(top.get_xticks()) <= 13  # thinned


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


@pytest.mark.parametrize(("n", "rows"), [(1, [1]), (4, [4]), (5, [3, 2]), (6, [3, 3]), (7, [4, 3]), (9, [3, 3, 3])])
def test_no_blank_cells_a_shorter_last_row_has_wider_panels(n, rows):
    fig = plot_history({f"m{i}/val": [(1, float(i))] for i in range(n)})
    assert len(fig.axes) == n
    tops = [round(ax.get_position().y0, 3) for ax in fig.axes]
    assert [tops.count(y) for y in dict.fromkeys(tops)] == rows
    fig.canvas.draw()
    widths = [ax.get_position().width for ax in fig.axes]
    assert widths[-1] >= widths[0] * (rows[0] / rows[-1]) * 0.9
    assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine"


def test_figure_size(history):
    width, height = history.plot().get_size_inches()
    assert 12 <= width <= 20 and 4 <= height <= 9
    h = History()
    h.record({"acc/val": 0.5}, 1)
    fig = h.plot()
    assert len(fig.axes) == 1
    assert tuple(fig.get_size_inches()) == (6.4, 4.0 + 0.25)  # and one line of notes


def test_title_is_the_figure_title(history):
    fig = history.plot(title="Supervised metrics")
    assert fig._suptitle is not None and fig._suptitle.get_text() == "Supervised metrics"
    assert history.plot()._suptitle is None


def test_keys_select_exact_keys_and_glob_patterns(history):
    fig = history.plot(["loss/val", "acc/*"])
    assert [ax.get_title() for ax in fig.axes] == ["loss (lower is better)", "acc"]
    assert list(curves(fig.axes[1])) == ["train", "train_step", "val"]
    fig = history.plot(["*/val"])
    assert [ax.get_title() for ax in fig.axes] == ["acc", "loss (lower is better)"]
    fig = history.plot("*LogisticRegression/*")  # one string is one pattern
    assert [ax.get_title() for ax in fig.axes] == ["LogisticRegression", "encoder.fc1/LogisticRegression"]
    assert list(curves(fig.axes[0])) == ["accuracy", "f1_macro"]  # chosen keys are all drawn


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
    with pytest.raises(HistoryKeyError, match="no run was given"):
        plot_runs({})


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
    assert png_size(tmp_path / "acc") == (768, 510)


def test_group_of_and_select_keys():
    assert group_of("acc/train") == ("acc", "train")
    assert group_of("encoder.fc1/LogisticRegression/accuracy") == ("encoder.fc1/LogisticRegression", "accuracy")
    assert group_of("lr") == ("lr", "lr")
    assert select_keys(["a/x", "b/x", "a/y"], ["a/y", "*/x", "a/x"]) == ["a/y", "a/x", "b/x"]
    assert select_keys(["a[1]/x"], ["a[1]/x"]) == ["a[1]/x"]  # exact keys win over glob syntax


def test_plot_history_accepts_a_plain_mapping():
    fig = plot_history({"loss/train": [(1, 1.0), (2, 0.5)]}, title="t")
    assert [ax.get_title() for ax in fig.axes] == ["loss (lower is better)"]


# ---------------------------------------------------------------------------------------------- several runs
def test_runs_drawn_together_one_colour_per_run_stages_by_line_style(history):
    other = {"acc/train": [(10, 0.5), (20, 0.6)], "acc/val": [(10, 0.4), (20, 0.5)], "ssl/train": [(5, 1.0)]}
    fig = plot_runs({"first": history, "second": other})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == ["acc", "loss (lower is better)", "ssl"]  # by the first step any run logged them
    acc_ax = fig.axes[0]
    labelled = {line.get_label().split("  ")[0]: line for line in acc_ax.get_lines()}
    assert labelled["first val"].get_color() == labelled["first train"].get_color() == "C0"
    assert labelled["second val"].get_color() == labelled["second train"].get_color() == "C1"
    assert labelled["first train"].get_linestyle() == "-" and labelled["first val"].get_linestyle() == "--"
    assert fig.axes[2].get_legend() is not None  # the run is named even for a lone curve
    assert acc_ax.child_axes == []  # the runs end their epochs at other steps: no common epoch axis
    assert len(fig.axes[1].child_axes) == 1  # only the first run logged loss: its epochs


def test_plot_history_is_plot_runs_of_one_unnamed_run(history):
    one = [line.get_label() for line in plot_runs({"run": history}).axes[0].get_lines()]
    assert one[0].startswith("run train") and history.plot().axes[0].get_lines()[0].get_label().startswith("train")


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
    with pytest.raises(LogDirectoryError, match=r"metrics.csv (is not a CSV file \(|has no `step` column)"):
        History.from_csv(tmp_path)
