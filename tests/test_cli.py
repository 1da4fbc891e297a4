"""The `fabricmetrics` command: `plot`, exit codes and error messages."""

from __future__ import annotations

import importlib.metadata
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from fabricmetrics import MetricsTracker
from fabricmetrics.cli import main
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def run(tmp_path):
    """A real run logged to TensorBoard and CSV under tmp_path/runs/demo/version_0."""
    loggers = [TensorBoardLogger(tmp_path / "runs", name="demo"), CSVLogger(tmp_path / "runs", name="demo")]
    tracker = MetricsTracker({"acc": accuracy_score}, loggers=loggers)
    y = np.array([0, 1, 1, 0])
    with tracker:
        for epoch in range(3):
            with tracker.epoch("train"):
                for _ in range(3):
                    tracker.step("train", {"y_true": y, "y_pred": np.roll(y, epoch)})
            with tracker.epoch("val"):
                tracker.step("val", {"y_true": y, "y_pred": y})
    return tmp_path / "runs" / "demo" / "version_0"


def test_plot_writes_run_dir_metrics_png_and_says_where(run, capsys):
    assert main(["plot", str(run)]) == 0
    assert (run / "metrics.png").read_bytes()[:8] == PNG
    captured = capsys.readouterr()
    assert captured.out == f"Read {run / 'metrics.csv'}; wrote {run / 'metrics.png'}\n"
    assert captured.err == ""


def test_plot_output_keys_and_title(run, tmp_path, capsys):
    output = tmp_path / "figs" / "acc.png"
    assert main(["plot", str(run), "-o", str(output), "--keys", "acc/val", "acc/train*", "--title", "demo"]) == 0
    assert output.read_bytes()[:8] == PNG
    assert not (run / "metrics.png").exists()
    assert capsys.readouterr().out.endswith(f"wrote {output}\n")


def test_plot_of_a_root_draws_the_latest_version_and_says_so(run, capsys):
    root = run.parent.parent
    assert main(["plot", str(root)]) == 0
    assert (root / "metrics.png").is_file()
    assert capsys.readouterr().out == f"Read {run / 'metrics.csv'}; wrote {root / 'metrics.png'}\n"
    logger = CSVLogger(root, name="demo", version=1)
    logger.log_metrics({"acc/val": 1.0}, step=1)
    logger.finalize("success")
    assert main(["plot", str(root)]) == 0
    assert "version_1/metrics.csv (the latest of 2 versions in" in capsys.readouterr().out


def test_plot_of_a_csv_file_writes_next_to_it(run):
    assert main(["plot", str(run / "metrics.csv"), "--keys", "acc/val"]) == 0
    assert (run / "metrics.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["plot", "{tmp}/missing"], r"fabricmetrics plot: error: .*missing does not exist\. HINT: pass a run's log"),
        (["plot", "{tmp}"], r"fabricmetrics plot: error: No metrics\.csv or TensorBoard event file .* HINT: "),
        (["plot", "{run}", "--keys", "nope"], r"fabricmetrics plot: error: No logged key matches \['nope'\]; the"),
    ],
)
def test_errors_are_one_line_on_stderr_with_exit_code_2(args, message, run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    argv = [a.format(tmp=empty, run=run) for a in args]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert re.match(message, captured.err), captured.err


def test_unwritable_output_is_an_error_not_a_traceback(run, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["plot", str(run), "-o", str(blocker / "out.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fabricmetrics plot: error: ") and err.count("\n") == 1


def test_usage_errors_and_help(capsys):
    assert main([]) == 2
    assert "the following arguments are required: COMMAND" in capsys.readouterr().err
    assert main(["plot"]) == 2
    assert "the following arguments are required: RUN_DIR" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "plot" in capsys.readouterr().out
    assert main(["plot", "--help"]) == 0
    assert "--keys" in capsys.readouterr().out


def test_version_and_defaults_in_help(capsys):
    from fabricmetrics import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fabricmetrics {__version__}\n"
    assert main(["demo", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: runs/demo)" in text and "(default: 10)" in text
    assert main(["plot", "--help"]) == 0
    assert "(default: None)" not in capsys.readouterr().out


def several_runs(root):
    for name, hits in (("baseline", 1), ("wider", 3)):
        tracker = MetricsTracker({"acc": accuracy_score}, loggers=[CSVLogger(root, name=name, version=0)])
        with tracker:
            for _ in range(2):
                with tracker.epoch("train"):
                    tracker.step("train", {"y_true": np.ones(4), "y_pred": np.arange(4) < hits})
                with tracker.epoch("val"):
                    tracker.step("val", {"y_true": np.ones(4), "y_pred": np.arange(4) < hits})


def test_plot_of_a_folder_of_several_runs_draws_them_together(tmp_path, capsys):
    several_runs(tmp_path / "runs")
    assert main(["plot", str(tmp_path / "runs"), "--title", "two runs"]) == 0
    output = tmp_path / "runs" / "metrics.png"
    assert output.read_bytes()[:8] == PNG
    assert capsys.readouterr().out == f"Read 2 runs under {tmp_path / 'runs'} (baseline, wider); wrote {output}\n"
    import matplotlib.pyplot as plt

    from fabricmetrics.cli import _runs_under

    assert list(_runs_under(tmp_path / "runs")) == ["baseline", "wider"]
    assert _runs_under(tmp_path / "runs" / "baseline") == {}  # one run: drawn alone
    logger = CSVLogger(tmp_path / "runs", name="baseline", version=1)
    logger.log_metrics({"acc/val": 1.0}, step=1)
    logger.finalize("success")
    assert list(_runs_under(tmp_path / "runs")) == ["baseline/version_0", "baseline/version_1", "wider/version_0"]
    plt.close("all")


def test_console_script_entry_point():
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "fabricmetrics"]
    assert entry.value == "fabricmetrics.cli:main"


def test_demo_writes_logs_and_plots(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"])
    printed = capsys.readouterr().out
    assert code == 0
    for part in ("supervised", "ssl"):
        assert (tmp_path / "demo" / f"{part}.png").stat().st_size > 10_000
        assert (tmp_path / "demo" / part / "version_0" / "metrics.csv").exists()
    assert re.search(r"linear-probe accuracy 0\.\d{3}", printed)
    assert re.search(r"train epoch 1 done  23/23 .*acc 0\.\d", printed)  # the loader's length is the total
    assert "pip install tensorboard  &&  tensorboard --logdir" in printed
    for where in (tmp_path / "demo" / "supervised.png", tmp_path / "demo" / "ssl" / "version_0"):
        assert f"  {where}\n" in printed
    assert f"fabricmetrics plot {tmp_path / 'demo'}\n" in printed
    assert main(["plot", str(tmp_path / "demo")]) == 0  # the command it prints works: both parts in one figure
    assert capsys.readouterr().out.startswith(
        f"Read 2 runs under {tmp_path / 'demo'} (ssl, supervised); wrote {tmp_path / 'demo' / 'metrics.png'}\n"
    )


def test_demo_rejects_zero_epochs(capsys):
    assert main(["demo", "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err
