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
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from fabricmetrics.exceptions import ConfigurationError, LogDirectoryError, warn
from fabricmetrics.probing._map_figures import (
    DPI,
    FILE_PREFIX,
    METHOD_NAMES,
    PANEL,
    Record,
    draw_records,
    label_text,
    new_figure,
    read_records,
    rgb,
    select,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "EmbeddingMaps",
    "MapTask",
    "find_map_folders",
    "map_tasks",
    "plot_embedding_maps",
    "project_2d",
    "read_records",
    "subsample_indices",
]

MapMethod = Literal["pca", "tsne"]
FOLDER = "embedding_maps"
SUMMARY = "embedding_maps.png"


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

    def folder(self, loggers: Sequence[Any], prefix: str | None = None) -> Path | None:
        """Where the files go; ``None`` when no folder is known.

        ``out``, else ``embedding_maps`` in the first logger's ``log_dir`` (``embedding_maps_{prefix}``
        for a scheduler with a prefix, so that two schedulers keep their maps apart).
        """
        if self.out is not None:
            return self.out
        name = FOLDER if not prefix else f"{FOLDER}_{re.sub(r'[^A-Za-z0-9._-]', '_', prefix)}"
        for logger in loggers:
            log_dir = getattr(logger, "log_dir", None)
            if log_dir:
                return Path(log_dir) / name
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
            loggers: where the image and projector go; the first ``log_dir`` holds the default folder.
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
        record = Record(meta, coords, labels)
        title = f"Embedding maps at {when}: {METHOD_NAMES[self.method]} of {len(index)} {split} points"
        figure = draw_records([record], new_figure, title=title, panel=PANEL)
        folder = self.folder(loggers, prefix)
        png = None
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{FILE_PREFIX}epoch{epoch:03d}" if epoch is not None else f"{FILE_PREFIX}probing{run:03d}"
            png = folder / f"{stem}.png"
            _atomic(png, lambda f: figure.savefig(f, dpi=DPI, format="png"))
            arrays: dict[str, Any] = {f"coords_{i}": c for i, c in enumerate(coords.values())}
            arrays.update(meta=json.dumps(meta), labels=labels, index=index)
            _atomic(folder / f"{stem}.npz", lambda f: np.savez(f, **arrays))
            summary = draw_records(select(read_records(folder), self.max_columns), new_figure, title=None)
            _atomic(folder / SUMMARY, lambda f: summary.savefig(f, dpi=DPI, format="png"))
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
        metadata = [[label_text(v, t.categorical) for v, t in zip(row, tasks, strict=True)] for row in labels]
        header = [t.name for t in tasks] if len(tasks) > 1 else None
        for logger in loggers:
            try:
                experiment: Any = getattr(logger, "experiment", None)
                if not hasattr(experiment, "add_image"):
                    continue
                if image is None:
                    image = rgb(figure)
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

    n, d = x.shape  # float64, 2-D (project_2d)
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
        run_dir: an ``embedding_maps`` folder, or a run's log folder that holds one (several, one per
            scheduler ``prefix``: pass the one to draw).
        path: where to save the PNG (parent folders are created).
        max_columns: most probings shown.

    Returns:
        The figure; close it with ``plt.close(fig)``.

    Raises:
        LogDirectoryError: no embedding maps, or several folders of them, were found there.
    """
    import matplotlib.pyplot as plt

    folders = find_map_folders(run_dir)
    if not folders:
        raise LogDirectoryError(
            f"No embedding maps ({FILE_PREFIX}*.npz) in {run_dir}. "
            "HINT: probe with ProbingScheduler(..., maps=True) and pass the run's log folder."
        )
    if len(folders) > 1:
        raise LogDirectoryError(
            f"{run_dir} holds the embedding maps of several schedulers: {[f.name for f in folders]}. "
            "HINT: pass one of these folders."
        )
    folder = folders[0]
    figure = draw_records(select(read_records(folder), max_columns), lambda **kw: plt.figure(**kw), title=None)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=DPI)
    return figure


def find_map_folders(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The folders of map files in ``run_dir``: itself if it holds some, else its ``embedding_maps*`` folders."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    if any(root.glob(f"{FILE_PREFIX}*.npz")):
        return [root]
    return sorted(f for f in root.glob(f"{FOLDER}*") if f.is_dir() and any(f.glob(f"{FILE_PREFIX}*.npz")))


def _tag(prefix: str | None, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file in the same folder, then rename: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
