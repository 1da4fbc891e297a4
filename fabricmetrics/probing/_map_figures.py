"""Figures of embedding maps: one probing's panels, and successive probings side by side.

A probing's maps are stored as a :class:`Record` (its 2-D points per source, the labels per task,
and a small ``meta`` dict) in an ``.npz`` file, so that the summary is redrawn without the model.
Drawing uses a figure factory: a bare Agg :class:`~matplotlib.figure.Figure` while training (no
``pyplot`` state), a ``pyplot`` figure for notebooks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fabricmetrics.exceptions import warn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "FILE_PREFIX",
    "METHOD_NAMES",
    "PANEL",
    "SUMMARY_PANEL",
    "Record",
    "draw_records",
    "label_text",
    "new_figure",
    "read_records",
    "rgb",
    "select",
]

FILE_PREFIX = "embedding_map_"
PANEL = 3.0  # inches per panel of one probing's figure
SUMMARY_PANEL = 2.3  # inches per panel of the summary
DPI = 110
_MAX_CATEGORIES = 20  # more distinct labels are drawn with a colour bar
_WRAP = 5  # probings per row when the summary has one panel per probing


# --------------------------------------------------------------------------------------------------
# Records: one probing's 2-D points, as drawn and as stored


@dataclass
class Record:
    """One probing's maps: ``meta`` (run, epoch, step, method, sources, axes, tasks), points, labels."""

    meta: dict[str, Any]
    coords: dict[str, np.ndarray]  # source → (n, 2)
    labels: np.ndarray  # (n, tasks)


def read_records(folder: Path) -> list[Record]:
    """The probings stored in ``folder``, in the order they ran (unreadable files are skipped)."""
    records = []
    for file in folder.glob(f"{FILE_PREFIX}*.npz"):
        try:
            with np.load(file, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                coords = {s: data[f"coords_{i}"] for i, s in enumerate(meta["sources"])}
                records.append(Record(meta, coords, data["labels"]))
        except (OSError, ValueError, KeyError) as err:
            warn(f"Embedding maps: skipped {file} ({type(err).__name__}: {err}).")
    return sorted(records, key=lambda r: (r.meta["run"], r.meta["epoch"] or 0))


def select(records: list[Record], max_columns: int) -> list[Record]:
    """At most ``max_columns`` records: the first, the last and evenly spaced ones between."""
    if len(records) <= max_columns:
        return records
    keep = np.unique(np.linspace(0, len(records) - 1, max_columns).round().astype(int))
    return [records[i] for i in keep]


# --------------------------------------------------------------------------------------------------
# Drawing


METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE"}


def new_figure(**kwargs: Any) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def draw_records(
    records: list[Record], make: Callable[..., Figure], *, title: str | None, panel: float = SUMMARY_PANEL
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
                drawn[-1].scatter([], [], s=25, color=colour(k), label=label_text(v, True))
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
        method = METHOD_NAMES.get(last.meta["method"], last.meta["method"])
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


def label_text(value: float, categorical: bool) -> str:
    return str(int(value)) if categorical and float(value).is_integer() else f"{value:.6g}"


def rgb(figure: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
