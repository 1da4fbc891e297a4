"""The ``fabricmetrics`` command.

``fabricmetrics demo [--out DIR]`` trains a small model on scikit-learn's digits with tracking and
probing, and writes logs and plots under DIR; ``fabricmetrics plot RUN_DIR [-o FILE.png] [--keys K ...]``
draws the curves of a logged run (its ``metrics.csv``, else its TensorBoard event files) into a PNG,
or the runs of a folder that holds several together, one colour per run (``fabricmetrics plot
runs/demo``). ``fabricmetrics --version`` prints the version.

Each subcommand is one ``_add_<name>(subcommands)`` function that declares its arguments and sets
``run=`` to the function that carries it out (``args → exit code``); :data:`_SUBCOMMANDS` lists them.
Errors that come from the user's input (a missing folder, no logs, an unknown key) end the command
with a one-line message on standard error and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fabricmetrics import __version__
from fabricmetrics.exceptions import FabricMetricsError, LogDirectoryError

__all__ = ["main"]

_USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fabricmetrics`` command.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit code: 0 on success, 2 on a usage error or a failure caused by the input.

    Example:
        >>> main(["plot", "/no/such/run"])  # the message goes to standard error
        2
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or argparse's own usage errors (already printed)
        return exit_.code if isinstance(exit_.code, int) else _USAGE_ERROR
    try:
        code: int = args.run(args)
    except (FabricMetricsError, OSError) as err:
        print(f"fabricmetrics {args.command}: error: {err}", file=sys.stderr)
        return _USAGE_ERROR
    return code


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none (``None``)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabricmetrics",
        description="Metrics, probing and logging for custom PyTorch and Lightning Fabric loops.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subcommands)
    return parser


# --------------------------------------------------------------------------------------------------
# fabricmetrics plot


def _add_plot(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "plot",
        help="draw the curves of a logged run, or of several runs together, into a PNG",
        description=(
            "Draw the curves of a run logged by a CSVLogger or TensorBoardLogger: one panel per metric "
            "(acc/train, acc/val and acc/train_step share the panel 'acc'), the global step on the x axis and "
            "the epoch above it, the best and the last values marked. A folder holding several runs "
            "(e.g. the demo's runs/demo) draws them together, one colour per run."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="the run's log folder (ROOT/NAME/version_N), a folder above it (one run: its latest version is "
        "drawn; several runs: all of them, together), a metrics.csv file, or an MLflow store's mlflow.db (all "
        "its runs, together; needs the [mlflow] extra)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE.png", help="where to write the PNG (default: RUN_DIR/metrics.png)"
    )
    parser.add_argument(
        "--keys",
        nargs="+",
        metavar="K",
        help="keys or glob patterns to draw, e.g. 'acc/*' '*/val' (default: all, and only the main score of "
        "each probe)",
    )
    parser.add_argument("--title", help="a title above the panels")
    parser.set_defaults(run=_plot)


def _draw_into_files() -> None:
    """A command draws into files, never on a screen (unless pyplot was set up already)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")


def _plot(args: argparse.Namespace) -> int:
    _draw_into_files()
    import matplotlib.pyplot as plt

    from fabricmetrics.history import History

    folder = args.run_dir.parent if args.run_dir.is_file() else args.run_dir
    output = args.output if args.output is not None else folder / "metrics.png"
    if args.run_dir.suffix == ".db":  # an MLflow store: every run in it
        return _plot_mlflow(args, output)
    runs = _runs_under(args.run_dir)
    if len(runs) > 1:
        from fabricmetrics.plotting import plot_runs

        histories = {name: History.from_run(run) for name, run in runs.items()}
        plt.close(plot_runs(histories, args.keys, title=args.title, path=output))
        print(f"Read {len(runs)} runs under {args.run_dir} ({', '.join(runs)}); wrote {output}")
        for name, run in runs.items():
            _plot_embedding_maps(run, output.parent / f"{name.replace('/', '_')}_embedding_maps.png")
        return 0
    history = History.from_run(args.run_dir)
    figure = history.plot(args.keys, title=args.title, path=output)
    plt.close(figure)
    print(f"Read {history.source}; wrote {output}")
    default = args.output is None
    _plot_embedding_maps(
        args.run_dir,
        output.parent / "embedding_maps.png" if default else output.with_name(f"{output.stem}_embedding_maps.png"),
    )
    return 0


def _plot_mlflow(args: argparse.Namespace, output: Path) -> int:
    """Draw every run of an MLflow SQLite store (``fabricmetrics demo --logger mlflow`` writes OUT/mlflow.db)."""
    import matplotlib.pyplot as plt

    from fabricmetrics.loggers import read_mlflow_runs
    from fabricmetrics.plotting import plot_runs

    if not args.run_dir.is_file():
        raise LogDirectoryError(
            f"{args.run_dir} does not exist. HINT: pass the mlflow.db file the runs were logged to."
        )
    uri = f"sqlite:///{args.run_dir.resolve()}"
    histories = read_mlflow_runs(uri)
    plt.close(plot_runs(histories, args.keys, title=args.title, path=output))
    print(f"Read {len(histories)} MLflow runs from {uri} ({', '.join(histories)}); wrote {output}")
    return 0


def _plot_embedding_maps(run_dir: Path, path: Path) -> None:
    """Also draw the embedding maps over probings of a run probed with ``maps=``, if it has them.

    One PNG per ``embedding_maps*`` folder (one per scheduler prefix): ``embedding_maps_probe`` → ``path``
    with ``_probe`` after its stem.
    """
    from fabricmetrics.history import _log_location

    where, _ = _log_location(run_dir)
    base = where.parent if where.is_file() else where
    found = sorted(f for f in base.glob("embedding_maps*") if f.is_dir() and any(f.glob("embedding_map_*.npz")))
    if not found:  # checked before importing torch
        return
    import matplotlib.pyplot as plt

    from fabricmetrics.probing.maps import plot_embedding_maps

    for maps in found:
        target = path.with_name(f"{path.stem}{maps.name[len('embedding_maps') :]}{path.suffix}")
        plt.close(plot_embedding_maps(maps, target))
        print(f"Read the embedding maps in {maps}; wrote {target}")


def _runs_under(root: Path) -> dict[str, Path]:
    """The runs in a folder that holds several, by name (their path below ``root``); ``{}`` otherwise.

    A run is a folder with a ``metrics.csv`` or TensorBoard event files, at most two levels below
    ``root`` (``ROOT/NAME/version_N`` given as ``ROOT``). The versions of one name alone are one run
    (its latest version is drawn), as :meth:`History.from_run` reads it.
    """
    if not root.is_dir() or _has_logs(root):
        return {}
    level, found = [root], []
    for _ in range(2):
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
        found = [folder for folder in level if _has_logs(folder)]
        if found:
            break
    if len(found) < 2 or (len({f.parent for f in found}) == 1 and all(_VERSION.fullmatch(f.name) for f in found)):
        return {}
    names = [f.relative_to(root).as_posix() for f in found]
    short = [_VERSION_SUFFIX.sub("", name) for name in names]
    if len(set(short)) == len(short) and all(short):
        names = short
    return dict(zip(names, found, strict=True))


_VERSION = re.compile(r"version_\d+")
_VERSION_SUFFIX = re.compile(r"/?version_\d+$")


def _has_logs(folder: Path) -> bool:
    return (folder / "metrics.csv").is_file() or any(n.startswith("events.out.tfevents.") for n in os.listdir(folder))


# --------------------------------------------------------------------------------------------------
# fabricmetrics demo


def _add_demo(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="train a small model on scikit-learn's digits with tracking and probing",
        description=(
            "Train a small CNN on scikit-learn's digits (accuracy, F1, precision, recall), then a "
            "SimCLR-style encoder (alignment, uniformity, contrastive accuracy, and a linear probe and a t-SNE map "
            "of the embedding every epoch). Writes logs (TensorBoard and CSV unless --logger says otherwise) and "
            "PNGs of the curves and maps under --out, and prints where. "
            "Offline, on one CPU core: about 25 s on an idle machine (longer when other jobs share the cores)."
        ),
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="output folder")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each part")
    parser.add_argument(
        "--logger",
        dest="loggers",
        nargs="+",
        choices=["tensorboard", "csv", "mlflow"],
        default=["tensorboard", "csv"],
        help="where to log, one or several; mlflow writes DIR/mlflow.db (needs fabricmetrics[mlflow])",
    )
    parser.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        print("fabricmetrics demo: error: --epochs must be at least 1", file=sys.stderr)
        return _USAGE_ERROR
    _draw_into_files()
    from fabricmetrics.demo import main as demo_main

    return demo_main(args.out, epochs=args.epochs, loggers=args.loggers)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_plot, _add_demo)
