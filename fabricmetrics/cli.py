"""The ``fabricmetrics`` command.

``fabricmetrics demo [--out DIR]`` trains a small model on scikit-learn's digits with tracking and
probing, and writes logs and plots under DIR; ``fabricmetrics plot RUN_DIR [-o FILE.png] [--keys K ...]``
draws the curves of a logged run (its ``metrics.csv``, else its TensorBoard event files) into a PNG.

Each subcommand is one ``_add_<name>(subcommands)`` function that declares its arguments and sets
``run=`` to the function that carries it out (``args → exit code``); :data:`_SUBCOMMANDS` lists them.
Errors that come from the user's input (a missing folder, no logs, an unknown key) end the command
with a one-line message on standard error and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fabricmetrics.exceptions import FabricMetricsError

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fabricmetrics",
        description="Metrics, probing and logging for custom PyTorch and Lightning Fabric loops.",
    )
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in _SUBCOMMANDS:
        add(subcommands)
    return parser


# --------------------------------------------------------------------------------------------------
# fabricmetrics plot


def _add_plot(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "plot",
        help="draw the curves of a logged run into a PNG",
        description=(
            "Draw the curves of a run logged by a CSVLogger or TensorBoardLogger: one panel per metric "
            "(acc/train, acc/val and acc/train_step share the panel 'acc'), the global step on the x axis."
        ),
    )
    parser.add_argument(
        "run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="the run's log folder (ROOT/NAME/version_N), a folder above it (the latest version is drawn), "
        "or a metrics.csv file",
    )
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE.png", help="where to write the PNG (default: RUN_DIR/metrics.png)"
    )
    parser.add_argument(
        "--keys", nargs="+", metavar="K", help="keys or glob patterns to draw, e.g. 'acc/*' '*/val' (default: all)"
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

    history = History.from_run(args.run_dir)
    folder = args.run_dir.parent if args.run_dir.is_file() else args.run_dir
    output = args.output if args.output is not None else folder / "metrics.png"
    figure = history.plot(args.keys, title=args.title, path=output)
    plt.close(figure)
    print(f"Read {history.source}; wrote {output}")
    return 0


# --------------------------------------------------------------------------------------------------
# fabricmetrics demo


def _add_demo(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="train a small model on scikit-learn's digits with tracking and probing",
        description=(
            "Train a small CNN on scikit-learn's digits (accuracy, F1, precision, recall), then a "
            "SimCLR-style encoder (alignment, uniformity, contrastive accuracy, and a linear probe every "
            "epoch). Writes TensorBoard and CSV logs and PNGs of the curves under --out. Offline, CPU, "
            "well under a minute."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), metavar="DIR", help="output folder")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each part (default: 10)")
    parser.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    if args.epochs < 1:
        print("fabricmetrics demo: error: --epochs must be at least 1", file=sys.stderr)
        return _USAGE_ERROR
    _draw_into_files()
    from fabricmetrics.demo import main as demo_main

    return demo_main(args.out, epochs=args.epochs)


_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_plot, _add_demo)
