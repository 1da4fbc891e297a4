"""Embedding maps: a 2-D picture of the probed embeddings after each probing.

After a probing, :class:`EmbeddingMaps` (``ProbingScheduler(..., maps=...)``) takes a seeded
subsample of the scored embeddings (the test loader's, or the train loader's with ``cv=``), projects
each probed source (the output, or each layer) to 2-D with PCA or t-SNE, colours the points by the
targets (one panel per task of a multitask probe), and writes, on rank 0 only:

- ``embedding_map_epoch{E}.png`` and a small ``.npz`` of its 2-D points and labels, in a folder
  ``embedding_maps`` under the first logger's ``log_dir`` (or ``out=``);
- the same figure as a TensorBoard image, and the subsample's embeddings with their labels to
  TensorBoard's projector (``projector_config.pbtxt``), through the loggers that take them;
- ``embedding_maps.png``: the maps of successive probings side by side, redrawn from the ``.npz``
  files after each probing (also by ``fabricmetrics plot RUN_DIR``, see :func:`plot_embedding_maps`).

Only ``numpy``, ``scikit-learn`` and ``matplotlib`` (Agg, no ``pyplot`` while training) are used.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fabricmetrics.exceptions import ConfigurationError, LogDirectoryError, warn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "EmbeddingMaps",
    "MapTask",
    "find_map_folder",
    "map_tasks",
    "plot_embedding_maps",
    "project_2d",
    "read_records",
    "subsample_indices",
]

MapMethod = Literal["pca", "tsne"]
FOLDER = "embedding_maps"
SUMMARY = "embedding_maps.png"
_PREFIX = "embedding_map_"
_PANEL = 3.0  # inches per panel of a probing's figure
_SUMMARY_PANEL = 2.3  # inches per panel of the summary
_DPI = 110
_MAX_CATEGORIES = 20  # more distinct labels are drawn with a colour bar
_WRAP = 5  # probings per row when the summary has one panel per probing


@dataclass(frozen=True)
class MapTask:
    """One colouring of the maps: a target column, categorical (a classifier's) or continuous."""

    name: str
    column: int
    categorical: bool


class EmbeddingMaps:
    """What a :class:`~fabricmetrics.ProbingScheduler` draws after each probing (``maps=``).

    Args:
        method: ``"pca"`` (default, fast) or ``"tsne"`` (slower: seconds for 2,000 points).
        max_points: size of the subsample drawn, projected and sent to the projector (bounds the memory).
        random_state: seed of the subsample (the same positions at every probing) and of t-SNE.
        out: folder of the PNG and ``.npz`` files; default: ``embedding_maps`` in the first logger's
            ``log_dir`` (the tracker hands its loggers over).
        tensorboard: also log the figure as an image and the subsample to TensorBoard's projector
            (loggers whose ``experiment`` has ``add_image`` / ``add_embedding``; others are skipped).
        max_columns: most probings shown side by side in ``embedding_maps.png`` (the first, the last
            and evenly spaced ones between).

    Raises:
        ConfigurationError: an argument is invalid.

    Example:
        >>> EmbeddingMaps("tsne", max_points=500)
        EmbeddingMaps(method='tsne', max_points=500, random_state=0, out=None, tensorboard=True)
    """

    def __init__(
        self,
        method: MapMethod = "pca",
        *,
        max_points: int = 2000,
        random_state: int = 0,
        out: str | os.PathLike[str] | None = None,
        tensorboard: bool = True,
        max_columns: int = 10,
    ) -> None:
        """Check the options; nothing is written before the first probing."""
        if method not in ("pca", "tsne"):
            raise ConfigurationError(f"Embedding maps: method must be 'pca' or 'tsne', got {method!r}.")
        for name, value, least in (("max_points", max_points, 2), ("max_columns", max_columns, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigurationError(f"Embedding maps: {name} must be an int >= {least}, got {value!r}.")
        self.method: MapMethod = method
        self.max_points, self.max_columns = max_points, max_columns
        self.random_state = int(random_state)
        self.out = None if out is None else Path(out)
        self.tensorboard = bool(tensorboard)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        """The options."""
        return (
            f"EmbeddingMaps(method={self.method!r}, max_points={self.max_points}, random_state={self.random_state}, "
            f"out={None if self.out is None else str(self.out)!r}, tensorboard={self.tensorboard})"
        )

    @classmethod
    def coerce(cls, maps: bool | str | EmbeddingMaps | None) -> EmbeddingMaps | None:
        """``maps=`` of a scheduler: None/False (off), True (PCA), ``"pca"``/``"tsne"``, or an instance."""
        if maps is None or maps is False:
            return None
        if maps is True:
            return cls()
        if isinstance(maps, str):
            return cls(maps)  # type: ignore[arg-type]
        if isinstance(maps, cls):
            return maps
        raise ConfigurationError(
            f"maps must be True, 'pca', 'tsne' or an EmbeddingMaps, got {maps!r}. "
            "HINT: maps=True, or maps=EmbeddingMaps('tsne', max_points=1000)."
        )

    def folder(self, loggers: Sequence[Any]) -> Path | None:
        """Where the files go: ``out``, else ``embedding_maps`` in the first logger's ``log_dir``."""
        if self.out is not None:
            return self.out
        for logger in loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir:
                return Path(log_dir) / FOLDER
        return None

    def write(
        self,
        features: dict[str, np.ndarray | None],
        targets: np.ndarray,
        tasks: Sequence[MapTask],
        *,
        run: int,
        epoch: int | None = None,
        step: int | None = None,
        loggers: Sequence[Any] = (),
        prefix: str | None = None,
        split: str = "test",
    ) -> Path | None:
        """Draw one probing's maps and write them (call on rank 0 only).

        Args:
            features: source (``""`` = the encoder's output) → ``(n, d)`` embeddings in a fixed order,
                ``None`` for a source whose embeddings hold NaN or inf (skipped with a warning).
            targets: ``(n,)`` or ``(n, k)`` targets of the same samples.
            tasks: the colourings.
            run: the probing's number (1 for the first).
            epoch: completed train epochs, if known (names the files).
            step: the global step of the TensorBoard image and projector (default ``run``).
            loggers: where the image and projector go; the first ``log_dir`` is the default folder.
            prefix: put in front of the TensorBoard tags.
            split: which loader's samples these are (in the title).

        Returns:
            The PNG written, or ``None`` when nothing could be drawn or no folder is known.
        """
        bad = [s for s, x in features.items() if x is None]
        if bad:
            what = ", ".join("the encoder output" if s == "" else f"layer `{s}`" for s in bad)
            warn(f"Embedding maps: the embeddings of {what} hold NaN or inf; no map of them at this probing.")
        sources = {s: x for s, x in features.items() if x is not None}
        if not sources:
            return None
        n = len(targets)
        index = subsample_indices(n, self.max_points, self.random_state)
        columns = np.asarray(targets, dtype=np.float64).reshape(n, -1)[index]
        labels = np.stack([columns[:, t.column] for t in tasks], axis=1)
        points = {s: x[index] for s, x in sources.items()}
        coords: dict[str, np.ndarray] = {}
        axes: dict[str, list[str]] = {}
        for s, x in points.items():
            coords[s], axes[s] = project_2d(x, self.method, self.random_state)
        when = f"epoch {epoch}" if epoch is not None else f"probing {run}"
        meta = {
            "run": run,
            "epoch": epoch,
            "step": step,
            "when": when,
            "method": self.method,
            "sources": list(coords),
            "axes": axes,
            "tasks": [{"name": t.name, "column": t.column, "categorical": t.categorical} for t in tasks],
        }
        record = _Record(meta, coords, labels)
        title = f"Embedding maps at {when}: {_METHOD_NAMES[self.method]} of {len(index)} {split} points"
        figure = _draw_records([record], _new_figure, title=title, panel=_PANEL)
        folder = self.folder(loggers)
        png = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{_PREFIX}epoch{epoch:03d}" if epoch is not None else f"{_PREFIX}probing{run:03d}"
            png = folder / f"{stem}.png"
            _atomic(png, lambda f: figure.savefig(f, dpi=_DPI, format="png"))
            arrays: dict[str, Any] = {f"coords_{i}": c for i, c in enumerate(coords.values())}
            arrays.update(meta=json.dumps(meta), labels=labels, index=index)
            _atomic(folder / f"{stem}.npz", lambda f: np.savez(f, **arrays))
            summary = _draw_records(_select(read_records(folder), self.max_columns), _new_figure, title=None)
            _atomic(folder / SUMMARY, lambda f: summary.savefig(f, dpi=_DPI, format="png"))
        else:
            self._warn_once(
                "folder",
                "Embedding maps: no folder to write them to (no logger has a log_dir). "
                "HINT: give the tracker a TensorBoardLogger or CSVLogger, or pass EmbeddingMaps(out='some/folder').",
            )
        if self.tensorboard:
            self._to_tensorboard(figure, points, labels, tasks, loggers, run if step is None else step, prefix)
        return png

    # ----------------------------------------------------------------------------------------------
    def _to_tensorboard(
        self,
        figure: Figure,
        points: dict[str, np.ndarray],
        labels: np.ndarray,
        tasks: Sequence[MapTask],
        loggers: Sequence[Any],
        step: int,
        prefix: str | None,
    ) -> None:
        image: np.ndarray | None = None
        metadata = [[_label_text(v, t.categorical) for v, t in zip(row, tasks, strict=True)] for row in labels]
        header = [t.name for t in tasks] if len(tasks) > 1 else None
        for logger in loggers:
            try:
                experiment: Any = getattr(logger, "experiment", None)
                if not hasattr(experiment, "add_image"):
                    continue
                if image is None:
                    image = _rgb(figure)
                experiment.add_image(_tag(prefix, "embedding_map"), image, global_step=step, dataformats="HWC")
                if hasattr(experiment, "add_embedding"):
                    for source, x in points.items():
                        experiment.add_embedding(
                            x,
                            metadata=metadata if header else [row[0] for row in metadata],
                            metadata_header=header,
                            global_step=step,
                            tag=_tag(prefix, source or "output"),
                        )
                if hasattr(experiment, "flush"):
                    experiment.flush()
            except Exception as err:
                self._warn_once(
                    f"logger:{id(logger)}",
                    f"Embedding maps: {type(logger).__name__} failed to take the map ({type(err).__name__}: {err}); "
                    "the PNG files and the other loggers keep going.",
                )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warn(message)


def map_tasks(probes: Sequence[Any], n_columns: int) -> list[MapTask]:
    """The colourings of a scheduler's maps: each task of a multitask probe, else the first target column.

    Args:
        probes: the scheduler's probes (``name``, ``column``, ``scorer.kind``), in column order.
        n_columns: the number of target columns.
    """
    if n_columns > 1 and probes[0].column is not None:
        return [MapTask(p.name, p.column, p.scorer.kind == "classification") for p in probes]
    categorical = any(p.scorer.kind == "classification" for p in probes)
    return [MapTask("target" if n_columns == 1 else "target[:, 0]", 0, categorical)]


def subsample_indices(n: int, max_points: int, random_state: int) -> np.ndarray:
    """Sorted positions of at most ``max_points`` of ``n`` samples, the same for the same arguments.

    Example:
        >>> subsample_indices(10, 4, random_state=0).tolist(), subsample_indices(3, 4, random_state=0).tolist()
        ([2, 4, 5, 7], [0, 1, 2])
    """
    if n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(random_state).choice(n, max_points, replace=False))


def project_2d(x: np.ndarray, method: MapMethod = "pca", random_state: int = 0) -> tuple[np.ndarray, list[str]]:
    """``(n, d)`` embeddings → ``(n, 2)`` float32 coordinates and the two axis labels.

    PCA (exact SVD, so no randomness) names its axes with the share of variance they explain; t-SNE
    starts from the PCA layout (``init="pca"``) with a perplexity that fits small ``n``. Constant or
    one-dimensional embeddings give zeros on the missing axes. Both run on one thread: between two
    epochs, thread pools that spin against a training loop's other work cost far more than they
    gain on a few thousand points (t-SNE of 359 points took 68 s with 2 threads on a loaded 2-core
    machine, 4 s with one).

    Example:
        >>> x = np.array([[0.0, 0, 0], [2, 0, 0], [0, 1, 0], [2, 1, 0]])
        >>> coords, names = project_2d(x)
        >>> np.abs(coords).tolist(), names
        ([[1.0, 0.5], [1.0, 0.5], [1.0, 0.5], [1.0, 0.5]], ['PC1 (80 %)', 'PC2 (20 %)'])
    """
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # a scikit-learn dependency

    with threadpool_limits(1):
        return _project(np.asarray(x, dtype=np.float64).reshape(len(x), -1), method, random_state)


def _project(x: np.ndarray, method: MapMethod, random_state: int) -> tuple[np.ndarray, list[str]]:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, d = x.shape
    out = np.zeros((n, 2), dtype=np.float32)
    k = min(2, n, d)
    if k == 0 or not np.ptp(x, axis=0).any():
        return out, (["PC1", "PC2"] if method == "pca" else ["t-SNE 1", "t-SNE 2"])
    if method == "tsne" and n >= 4 and d >= 2:
        tsne = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", random_state=random_state)
        return tsne.fit_transform(x).astype(np.float32), ["t-SNE 1", "t-SNE 2"]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pca = PCA(k, svd_solver="full").fit(x)
        out[:, :k] = pca.transform(x)
    shares = [f" ({100 * r:.0f} %)" if np.isfinite(r) else "" for r in pca.explained_variance_ratio_]
    return out, [f"PC{i + 1}{shares[i] if i < k else ''}" for i in range(2)]


def plot_embedding_maps(
    run_dir: str | os.PathLike[str], path: str | os.PathLike[str] | None = None, *, max_columns: int = 10
) -> Figure:
    """Draw the maps of successive probings side by side from a run's ``embedding_maps`` files.

    Rows are the (source, task) panels, columns the probings: the first, the last and evenly spaced
    ones between (at most ``max_columns``). Classes keep their colour along a row; continuous targets
    share one colour scale per row. The figure is a ``pyplot`` figure (notebooks show it).

    Args:
        run_dir: the ``embedding_maps`` folder, or a run's log folder that holds one.
        path: where to save the PNG (parent folders are created).
        max_columns: most probings shown.

    Returns:
        The figure; close it with ``plt.close(fig)``.

    Raises:
        LogDirectoryError: no embedding maps were found there.
    """
    import matplotlib.pyplot as plt

    folder = find_map_folder(run_dir)
    if folder is None:
        raise LogDirectoryError(
            f"No embedding maps ({_PREFIX}*.npz) in {run_dir}. "
            "HINT: probe with ProbingScheduler(..., maps=True) and pass the run's log folder."
        )
    figure = _draw_records(_select(read_records(folder), max_columns), lambda **kw: plt.figure(**kw), title=None)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=_DPI)
    return figure


def find_map_folder(run_dir: str | os.PathLike[str]) -> Path | None:
    """``run_dir`` itself or its ``embedding_maps`` folder, whichever holds map files; else ``None``."""
    for folder in (Path(run_dir), Path(run_dir) / FOLDER):
        if folder.is_dir() and any(folder.glob(f"{_PREFIX}*.npz")):
            return folder
    return None


# --------------------------------------------------------------------------------------------------
# Records: one probing's 2-D points, as drawn and as stored


@dataclass
class _Record:
    meta: dict[str, Any]
    coords: dict[str, np.ndarray]  # source → (n, 2)
    labels: np.ndarray  # (n, tasks)


def read_records(folder: Path) -> list[Any]:
    """The probings stored in ``folder``, in the order they ran (unreadable files are skipped)."""
    records = []
    for file in folder.glob(f"{_PREFIX}*.npz"):
        try:
            with np.load(file, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                coords = {s: data[f"coords_{i}"] for i, s in enumerate(meta["sources"])}
                records.append(_Record(meta, coords, data["labels"]))
        except (OSError, ValueError, KeyError) as err:
            warn(f"Embedding maps: skipped {file} ({type(err).__name__}: {err}).")
    return sorted(records, key=lambda r: (r.meta["run"], r.meta["epoch"] or 0))


def _select(records: list[_Record], max_columns: int) -> list[_Record]:
    if len(records) <= max_columns:
        return records
    keep = np.unique(np.linspace(0, len(records) - 1, max_columns).round().astype(int))
    return [records[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# Drawing


_METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE"}


def _new_figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _draw_records(
    records: list[_Record], make: Callable[..., Figure], *, title: str | None, panel: float = _SUMMARY_PANEL
) -> Figure:
    """Draw probings' maps in one figure.

    One probing: rows = sources, columns = tasks. Several probings of one (source, task): a grid of
    probings, ``_WRAP`` per row. Otherwise: rows = (source, task), columns = probings.
    """
    last = records[-1]
    tasks, sources = last.meta["tasks"], last.meta["sources"]
    panels = [(s, t) for s in sources for t in range(len(tasks))]
    wrapped = len(records) > 1 and len(panels) == 1
    if len(records) == 1:
        shape = (len(sources), len(tasks))
    elif wrapped:
        shape = (-(-len(records) // _WRAP), min(_WRAP, len(records)))
    else:
        shape = (len(panels), len(records))
    figure = make(figsize=(panel * shape[1] + 1.6, panel * shape[0] + 0.5), layout="constrained")
    grid = figure.subplots(*shape, squeeze=False)
    for row, (source, t) in enumerate(panels):
        task, name = tasks[t], f"{source or 'output'} · {tasks[t]['name']}"
        found = [(c, r) for c, r in enumerate(records) if source in r.coords and t < r.labels.shape[1]]
        if not found:
            continue
        values = np.concatenate([r.labels[:, t] for _, r in found])
        classes = np.unique(values)
        categorical = task["categorical"] and len(classes) <= _MAX_CATEGORIES
        drawn = []
        for c, record in found:
            ax = grid[divmod(row, len(tasks))] if len(records) == 1 else grid[divmod(c, _WRAP) if wrapped else (row, c)]
            colour = _scatter(ax, record.coords[source], record.labels[:, t], classes, categorical, values)
            drawn.append(ax)
            if len(records) == 1:
                ax.set_title(name, fontsize="medium")
                ax.set_xlabel(record.meta["axes"][source][0], fontsize="small")
                ax.set_ylabel(record.meta["axes"][source][1], fontsize="small")
            else:
                ax.set_title(record.meta["when"] if row == 0 else "", fontsize="medium")
                if c == 0 and not wrapped:
                    ax.set_ylabel(name, fontsize="medium")
        if categorical:
            handles = [
                drawn[-1].scatter([], [], s=25, color=colour(k), label=_label_text(v, True))
                for k, v in enumerate(classes)
            ]
            style = {"title": task["name"], "fontsize": "x-small", "title_fontsize": "small", "frameon": False}
            if wrapped:
                figure.legend(handles=handles, loc="outside right center", **style)
            else:
                drawn[-1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), **style)
        else:
            figure.colorbar(colour, ax=list(grid.flat) if wrapped else drawn[-1], label=task["name"], shrink=0.9)
    for ax in grid.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.collections:
            ax.set_axis_off()
    if title is None:
        method = _METHOD_NAMES.get(last.meta["method"], last.meta["method"])
        what = f": {panels[0][0] or 'output'} · {tasks[0]['name']}" if wrapped else ""
        title = f"Embedding maps over probings ({method}{what})"
    figure.suptitle(title, fontsize="large")
    return figure


def _scatter(
    ax: Axes, coords: np.ndarray, labels: np.ndarray, classes: np.ndarray, categorical: bool, values: np.ndarray
) -> Any:
    """Draw one panel; returns the class → colour function (categorical) or the mappable (continuous)."""
    from matplotlib import colormaps

    size = float(np.clip(6000 / max(len(coords), 1), 2, 30))
    if categorical:
        cmap = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        codes = np.searchsorted(classes, labels)
        ax.scatter(coords[:, 0], coords[:, 1], c=cmap(codes), s=size, linewidths=0, alpha=0.8)
        return cmap
    return ax.scatter(
        coords[:, 0],
        coords[:, 1],
        c=labels,
        cmap="viridis",
        vmin=float(np.min(values)),
        vmax=float(np.max(values)),
        s=size,
        linewidths=0,
        alpha=0.8,
    )


def _label_text(value: float, categorical: bool) -> str:
    return str(int(value)) if categorical and float(value).is_integer() else f"{value:.6g}"


def _tag(prefix: str | None, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _rgb(figure: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
