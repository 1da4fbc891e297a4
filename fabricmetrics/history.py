"""In-memory record of everything logged; reading it back from a run's logs; plots of it.

A :class:`History` is filled by the tracker while a run trains, or read back afterwards from the
run's log folder with :meth:`History.from_run` (``metrics.csv``, else TensorBoard event files) or
:meth:`History.from_csv`. :meth:`History.plot` draws it (see :mod:`fabricmetrics.plotting`).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabricmetrics.exceptions import HistoryKeyError, LogDirectoryError, warn

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["History"]

_CSV_NAME = "metrics.csv"
_EVENTS_PREFIX = "events.out.tfevents."
_VERSION = re.compile(r"version_(\d+)")


class History(Mapping[str, list[tuple[int, float]]]):
    """Everything a tracker logged: for each key, the ``(step, value)`` pairs in logging order.

    Keys are the logged names (``"acc/val"``, ``"loss/train_step"``,
    ``"LogisticRegression/accuracy"``); steps are the tracker's global step at logging time.

    Example:
        >>> h = History()
        >>> h.record({"acc/val": 0.5}, step=10)
        >>> h.record({"acc/val": 0.75, "acc/train": 0.8}, step=20)
        >>> h["acc/val"]
        [(10, 0.5), (20, 0.75)]
        >>> h.last("acc/val"), sorted(h)
        (0.75, ['acc/train', 'acc/val'])
    """

    def __init__(self) -> None:
        """Start empty."""
        self._data: dict[str, list[tuple[int, float]]] = {}
        #: Where :meth:`from_run` / :meth:`from_csv` read the values (``None`` when filled in memory).
        self.source: str | None = None

    def __getitem__(self, key: str) -> list[tuple[int, float]]:
        """The ``(step, value)`` pairs of ``key``."""
        try:
            return self._data[key]
        except KeyError:
            raise HistoryKeyError(f"Nothing was logged under {key!r}; logged keys: {sorted(self._data)}") from None

    def __iter__(self) -> Iterator[str]:
        """The keys, in the order they were first logged."""
        return iter(self._data)

    def __len__(self) -> int:
        """Number of keys."""
        return len(self._data)

    def __repr__(self) -> str:
        """Keys and number of points."""
        inner = ", ".join(f"{k!r}: {len(v)} points" for k, v in self._data.items())
        return f"History({{{inner}}})"

    def record(self, values: Mapping[str, float], step: int) -> None:
        """Append ``values`` logged at ``step``.

        Args:
            values: key → value.
            step: the global step.
        """
        for key, value in values.items():
            self._data.setdefault(key, []).append((int(step), float(value)))

    def last(self, key: str, default: float = math.nan) -> float:
        """The latest value of ``key`` (``default`` if nothing was logged under it).

        Args:
            key: a logged key.
            default: returned when ``key`` has no values.

        Returns:
            The last logged value.
        """
        points = self._data.get(key)
        return points[-1][1] if points else default

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """The steps and the values of ``key``, as two lists (ready to plot).

        Args:
            key: a logged key.

        Returns:
            ``(steps, values)``.
        """
        points = self[key]
        return [s for s, _ in points], [v for _, v in points]

    def plot(
        self,
        keys: Sequence[str] | None = None,
        *,
        title: str | None = None,
        path: str | os.PathLike | None = None,
    ) -> Figure:
        """Draw the curves: one panel per group of keys, the global step on the x axis.

        A key's panel is the part before its last ``/`` and its curve is labelled by the last part:
        ``acc/train``, ``acc/val`` and ``acc/train_step`` share the panel ``acc``;
        ``LogisticRegression/accuracy`` and ``LogisticRegression/f1_macro`` share
        ``LogisticRegression``. Panels come in the order the run first logged them; epochs are
        numbered on a second axis above the steps (where ``*/train`` values were logged); the best
        and the last epoch-level values are marked and written in the legend, and a loss or an
        error says "lower is better". Step-level curves (``*_step``) are drawn thin and light
        behind the epoch-level ones, in the colour of their stage; probe panels show their main
        score unless ``keys`` are given. See :mod:`fabricmetrics.plotting`, and
        :func:`fabricmetrics.plotting.plot_runs` to compare runs.

        Args:
            keys: the keys to draw, exact or as glob patterns (``"acc/*"``, ``"*/val"``); all of
                them when ``None``.
            title: a title above the panels.
            path: where to save the figure as a PNG (parent folders are created).

        Returns:
            The matplotlib figure (made with ``pyplot``, so notebooks and sphinx-gallery show it;
            ``plt.close(fig)`` it when drawing many).

        Raises:
            HistoryKeyError: a key or pattern matches nothing logged, or nothing was logged.

        Example:
            >>> h = History()
            >>> for step in (10, 20, 30):
            ...     h.record({"acc/train_step": 0.5 + step / 100}, step=step)
            >>> h.record({"acc/train": 0.7, "acc/val": 0.65, "loss/train": 0.9}, step=30)
            >>> fig = h.plot(title="demo")
            >>> [ax.get_title() for ax in fig.axes]
            ['acc', 'loss (lower is better)']
            >>> [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
            ['train  last 0.7 (best)', 'train_step', 'val  last 0.65 (best)']
            >>> import matplotlib.pyplot as plt
            >>> plt.close(fig)
        """
        from fabricmetrics.plotting import plot_history  # matplotlib is imported only when plotting

        return plot_history(self, keys, title=title, path=path)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> History:
        """Read a ``metrics.csv`` written by Fabric's or fabricmetrics' ``CSVLogger``.

        The file has a ``step`` column and one column per key; an empty cell means the row did not
        log that key.

        Args:
            path: the CSV file, the version folder holding it (``ROOT/NAME/version_N``), or a folder
                above version folders (the latest ``version_N`` is read; :attr:`source` says so).

        Returns:
            A history whose :attr:`source` describes what was read.

        Raises:
            LogDirectoryError: the path does not exist, holds no ``metrics.csv``, or the file has no
                ``step`` column or a value that is not a number.

        Example:
            >>> import tempfile
            >>> from fabricmetrics.loggers import CSVLogger
            >>> logger = CSVLogger(tempfile.mkdtemp(), name="run")
            >>> logger.log_metrics({"acc/val": 0.5}, step=10)
            >>> logger.log_metrics({"acc/val": 0.75, "loss/train": 0.25}, step=20)
            >>> logger.finalize("success")
            >>> History.from_csv(logger.root_dir)["acc/val"]
            [(10, 0.5), (20, 0.75)]
        """
        where, note = _log_location(path)
        file = where if where.is_file() else where / _CSV_NAME
        if not file.is_file():
            raise LogDirectoryError(
                f"No {_CSV_NAME} in {where}. HINT: History.from_run also reads TensorBoard event files."
            )
        history = cls()
        history._data = _read_csv(file)
        history.source = f"{file}{note}"
        return history

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike) -> History:
        """Read a run's logs: ``metrics.csv``, else (or for keys it lacks) TensorBoard event files.

        Each key comes from one source only: the CSV when it has the key, else the event files
        (read with ``tensorboard``'s ``EventAccumulator`` when that package is installed), so
        nothing is counted twice when both loggers wrote the same values.

        Args:
            run_dir: a version folder (``ROOT/NAME/version_N``), a folder above version folders
                (the latest ``version_N`` is read; :attr:`source` says so), or a log file.

        Returns:
            A history whose :attr:`source` describes what was read.

        Raises:
            LogDirectoryError: the path does not exist, holds no logs, holds several runs, or
                holds only event files and ``tensorboard`` is not installed.

        Example:
            >>> import tempfile
            >>> from fabricmetrics.loggers import CSVLogger
            >>> logger = CSVLogger(tempfile.mkdtemp(), name="run")
            >>> logger.log_metrics({"acc/val": 0.5}, step=10)
            >>> logger.finalize("success")
            >>> History.from_run(logger.log_dir)["acc/val"]
            [(10, 0.5)]
        """
        where, note = _log_location(run_dir)
        csv_file: Path | None = where / _CSV_NAME
        events_at: Path | None = where
        if where.is_file():
            if where.suffix == ".csv":
                csv_file, events_at = where, None
            elif where.name.startswith(_EVENTS_PREFIX):
                csv_file = None
            else:
                raise LogDirectoryError(
                    f"{where} is neither a {_CSV_NAME} nor a TensorBoard event file ({_EVENTS_PREFIX}*). "
                    "HINT: pass the run's log folder."
                )
        history = cls()
        sources = []
        if csv_file is not None and csv_file.is_file():
            history._data = _read_csv(csv_file)
            sources.append(str(csv_file))
        if events_at is not None:
            events = _read_events(events_at, required=not sources)
            extra = {key: points for key, points in events.items() if key not in history._data}
            history._data.update(extra)
            if not sources:
                sources.append(f"TensorBoard events in {events_at}")
            elif extra:
                sources.append(f"{len(extra)} key{'s' * (len(extra) > 1)} from TensorBoard events in {events_at}")
        history.source = " + ".join(sources) + note
        return history

    def state_dict(self) -> dict[str, list[list[float]]]:
        """Plain lists, loadable with ``torch.load(..., weights_only=True)``."""
        return {key: [[step, value] for step, value in points] for key, points in self._data.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the record with :meth:`state_dict`'s."""
        self._data = {key: [(int(s), float(v)) for s, v in points] for key, points in state.items()}


# --------------------------------------------------------------------------------------------------
# Reading a run's logs


def _log_location(path: str | os.PathLike) -> tuple[Path, str]:
    """The log file or folder to read under ``path``, and a note when a latest version was picked."""
    root = Path(path)
    if not root.exists():
        raise LogDirectoryError(
            f"{root} does not exist. HINT: pass a run's log folder (ROOT/NAME/version_N), a folder above it, "
            f"or its {_CSV_NAME}."
        )
    if root.is_file() or _has_logs(root):
        return root, ""
    found: list[Path] = []
    level = [root]
    for _ in range(2):  # ROOT/NAME/version_N given as ROOT/NAME or as ROOT
        level = sorted(child for folder in level for child in folder.iterdir() if child.is_dir())
        found = [folder for folder in level if _has_logs(folder)]
        if found:
            break
    if not found:
        raise LogDirectoryError(
            f"No {_CSV_NAME} or TensorBoard event file ({_EVENTS_PREFIX}*) in {root} or in the two folder levels "
            "below it. HINT: pass the folder your CSVLogger / TensorBoardLogger wrote (ROOT/NAME/version_N)."
        )
    if len(found) == 1:
        return found[0], ""
    versions = [(int(m.group(1)), folder) for folder in found if (m := _VERSION.fullmatch(folder.name))]
    if len(versions) == len(found) and len({folder.parent for folder in found}) == 1:
        latest = max(versions)[1]
        return latest, f" (the latest of {len(found)} versions in {latest.parent})"
    raise LogDirectoryError(
        f"{root} holds the logs of several runs: {[str(folder) for folder in found]}. HINT: pass one of them."
    )


def _has_logs(folder: Path) -> bool:
    if (folder / _CSV_NAME).is_file():
        return True
    return any(name.startswith(_EVENTS_PREFIX) for name in os.listdir(folder))


def split_complete_lines(data: bytes) -> tuple[bytes, bytes]:
    r"""``data`` cut after its last line end: the complete lines, and an incomplete last line (``b""`` if none).

    A CSV writer ends every row with a line end, so a file that a killed process or a full disk
    left behind ends with the part of a row that was being written; the rest of the file is whole.

    Example:
        >>> split_complete_lines(b"step,a\r\n1,0.5\r\n2,0.2")
        (b'step,a\r\n1,0.5\r\n', b'2,0.2')
    """
    if not data or data.endswith((b"\n", b"\r")):
        return data, b""
    cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
    return data[:cut], data[cut:]


def _read_csv(file: Path) -> dict[str, list[tuple[int, float]]]:
    """``key → [(step, value)]`` from a Fabric-style CSV (a ``step`` column, empty or missing cells skipped).

    The complete rows of a torn file are kept: an incomplete last line (no line end: the writer
    was stopped while writing it) and rows with more cells than the header (a torn row that a
    later write continued) are skipped, with one warning that names them.
    """
    complete, torn = split_complete_lines(file.read_bytes())
    try:
        reader = csv.DictReader(io.StringIO(complete.decode("utf-8"), newline=""))
        data, damaged, kept = _csv_points(file, reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise LogDirectoryError(f"{file} is not a CSV file ({err}).") from err
    skipped = []
    if torn:
        tail = torn.decode("utf-8", errors="replace")
        skipped.append(f"its incomplete last line {tail[:60]!r}{'…' * (len(tail) > 60)} (cut off while being written)")
    if damaged:
        skipped.append(f"{len(damaged)} damaged row(s) with more cells than the header (lines {damaged[:5]})")
    if skipped:
        warn(f"{file} is torn: read its {kept} complete row(s), skipped {' and '.join(skipped)}.")
    return data


def _csv_points(file: Path, reader: csv.DictReader) -> tuple[dict[str, list[tuple[int, float]]], list[int], int]:
    """The points of each column, the lines of rows with more cells than the header (skipped), the rows read."""
    columns = list(reader.fieldnames or [])
    if "step" not in columns:
        raise LogDirectoryError(
            f"{file} has no `step` column (columns: {columns}). HINT: read a metrics.csv written by Fabric's or "
            "fabricmetrics' CSVLogger."
        )
    data: dict[str, list[tuple[int, float]]] = {key: [] for key in columns if key != "step"}
    damaged: list[int] = []
    kept = 0
    for row in reader:
        if None in row:  # more cells than columns: the rest of a torn row joined by the next write
            damaged.append(reader.line_num)
            continue
        try:
            step = int(float(row["step"]))
            points = [(key, float(cell)) for key, cell in row.items() if key in data and cell]
        except (TypeError, ValueError) as err:
            raise LogDirectoryError(
                f"{file}, line {reader.line_num}: {err}; expected numbers. HINT: a metrics.csv holds numbers only; "
                "remove that row or log numbers."
            ) from err
        for key, value in points:
            data[key].append((step, value))
        kept += 1
    return {key: points for key, points in data.items() if points}, damaged, kept


def _read_events(where: Path, *, required: bool) -> dict[str, list[tuple[int, float]]]:
    """The scalars of TensorBoard event files (a folder or one file); ``{}`` if none can be read."""
    folder = where.parent if where.is_file() else where
    if not where.is_file() and not any(name.startswith(_EVENTS_PREFIX) for name in os.listdir(folder)):
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        if not required:
            return {}
        raise LogDirectoryError(
            f"{folder} holds TensorBoard event files but no {_CSV_NAME}, and the `tensorboard` package that reads "
            "them is not installed. HINT: pip install tensorboard, or also log with fabricmetrics.loggers.CSVLogger."
        ) from err
    accumulator = EventAccumulator(str(where), size_guidance={"scalars": 0})  # 0 = keep every point
    accumulator.Reload()
    return {
        tag: [(int(event.step), float(event.value)) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
