"""Plots of a :class:`~fabricmetrics.history.History`: one panel per group of keys.

A key's group is the part before its last ``/`` and its curve label the part after it, so the
tracker's ``acc/train``, ``acc/val`` and ``acc/train_step`` share the panel ``acc``, a probe's
``LogisticRegression/accuracy`` and ``LogisticRegression/f1_macro`` share ``LogisticRegression``,
and ``encoder.fc1/LogisticRegression/accuracy`` goes to ``encoder.fc1/LogisticRegression``. The x
axis is the global step. A label keeps one colour in every panel (``train`` and ``train_step``
share it); step-level curves (``*_step``) are thin and light, behind the epoch-level curves, which
have markers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from fabricmetrics.exceptions import HistoryKeyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["group_of", "plot_history", "select_keys"]

_MAX_COLUMNS = 4
_PANEL_SIZE = (4.2, 3.1)  # inches per panel
_DPI = 120
_STEP_SUFFIX = "_step"
_STAGES = ("train", "val", "validation", "test")


def group_of(key: str) -> tuple[str, str]:
    """The panel a key is drawn in and its curve label: the key split at its last ``/``.

    Args:
        key: a logged key.

    Returns:
        ``(group, label)``; a key without ``/`` is its own group and label.

    Example:
        >>> group_of("acc/train_step"), group_of("encoder.fc1/LogisticRegression/accuracy"), group_of("lr")
        (('acc', 'train_step'), ('encoder.fc1/LogisticRegression', 'accuracy'), ('lr', 'lr'))
    """
    group, _, label = key.rpartition("/")
    return (group, label) if group else (key, key)


def select_keys(available: Sequence[str], keys: Sequence[str] | str | None = None) -> list[str]:
    """The keys of ``available`` that ``keys`` names: exact keys or glob patterns, in the order given.

    Args:
        available: the logged keys.
        keys: exact keys or ``fnmatch`` patterns (``"acc/*"``, ``"*/val"``); every key when ``None``.

    Returns:
        The selected keys, each once.

    Raises:
        HistoryKeyError: a key or pattern matches nothing, or nothing is available.

    Example:
        >>> select_keys(["acc/train", "acc/val", "loss/train"], ["*/train", "acc/val"])
        ['acc/train', 'loss/train', 'acc/val']
    """
    if not available:
        raise HistoryKeyError("Nothing to plot: no key was logged.")
    if keys is None:
        return list(available)
    if isinstance(keys, str):
        keys = [keys]
    selected: dict[str, None] = {}
    unknown = []
    for pattern in keys:
        matches = [pattern] if pattern in available else [key for key in available if fnmatchcase(key, pattern)]
        if not matches:
            unknown.append(pattern)
        selected.update(dict.fromkeys(matches))
    if unknown or not selected:
        raise HistoryKeyError(
            f"No logged key matches {unknown or list(keys)}; the logged keys are {list(available)}. "
            "HINT: pass exact keys or glob patterns such as 'acc/*' or '*/val'."
        )
    return list(selected)


def plot_history(
    history: Mapping[str, Sequence[tuple[int, float]]],
    keys: Sequence[str] | str | None = None,
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Draw ``history`` (key → ``[(step, value)]``), one panel per group; see the module docstring.

    The figure is made with ``pyplot`` (which picks the non-interactive Agg backend by itself where
    there is no display), so notebooks and sphinx-gallery show it; nothing calls ``plt.show``.

    Args:
        history: a :class:`~fabricmetrics.history.History` or any mapping of the same shape.
        keys: exact keys or glob patterns; every key when ``None``.
        title: a title above the panels.
        path: where to save the figure (PNG at 120 dpi unless the suffix names another format
            matplotlib writes, e.g. ``.svg``); parent folders are created.

    Returns:
        The figure; close it with ``plt.close(fig)`` when drawing many.

    Raises:
        HistoryKeyError: a key or pattern matches nothing, or nothing was logged.

    Example:
        >>> fig = plot_history({"loss/train_step": [(1, 0.9), (2, 0.7)], "loss/val": [(2, 0.8)]})
        >>> [(ax.get_title(), ax.get_xlabel()) for ax in fig.axes]
        [('loss', 'step')]
        >>> import matplotlib.pyplot as plt
        >>> plt.close(fig)
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    selected = select_keys(list(history), keys)
    panels: dict[str, list[str]] = {}
    for key in selected:
        panels.setdefault(group_of(key)[0], []).append(key)
    colours = _colours(selected)

    ncols = min(_MAX_COLUMNS, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width, height = (6.4, 4.0) if len(panels) == 1 else (_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows)
    fig = plt.figure(figsize=(width, height + (0.4 if title else 0.0)), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (group, group_keys) in zip(axes, panels.items(), strict=False):
        _draw_panel(ax, group, group_keys, history, colours)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    for ax in axes[len(panels) :]:
        ax.remove()  # no empty panels in the last row
    if title:
        fig.suptitle(title, fontsize="x-large")
    if path is not None:
        _save(fig, Path(path))
    return fig


def _colours(keys: Sequence[str]) -> dict[str, str]:
    """One colour per curve label (``train_step`` gets ``train``'s), the same in every panel.

    The usual stages come first (``train`` blue, ``val`` orange), then the labels found in more panels.
    """
    panels: dict[str, set[str]] = {}
    for key in keys:
        group, label = group_of(key)
        panels.setdefault(_stage_label(label), set()).add(group)
    ranks = {label: -i for i, label in enumerate(reversed(_STAGES))}
    labels = sorted(panels, key=lambda label: (ranks.get(label, 0), -len(panels[label])))  # stable sort
    return {label: f"C{i % 10}" for i, label in enumerate(labels)}


def _stage_label(label: str) -> str:
    return label[: -len(_STEP_SUFFIX)] if label.endswith(_STEP_SUFFIX) else label


def _draw_panel(
    ax: Axes,
    group: str,
    keys: Sequence[str],
    history: Mapping[str, Sequence[tuple[int, float]]],
    colours: Mapping[str, str],
) -> None:
    only_steps = all(group_of(key)[1].endswith(_STEP_SUFFIX) for key in keys)
    for key in keys:
        label = group_of(key)[1]
        points = history[key]
        steps, values = [s for s, _ in points], [v for _, v in points]
        colour = colours[_stage_label(label)]
        if label.endswith(_STEP_SUFFIX) and not only_steps:
            ax.plot(steps, values, color=colour, linewidth=0.9, alpha=0.4, zorder=1, label=label)
        elif label.endswith(_STEP_SUFFIX):
            ax.plot(steps, values, color=colour, linewidth=1.2, alpha=0.9, zorder=2, label=label)
        else:
            size = 4.0 if len(points) <= 40 else 2.0
            ax.plot(steps, values, color=colour, linewidth=1.8, marker="o", markersize=size, zorder=3, label=label)
    ax.set_title(group, fontsize="large")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    if len(keys) > 1 or group_of(keys[0])[1] != group:  # a lone key without "/" is named by the title
        ax.legend(fontsize="small", framealpha=0.8)


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lstrip(".").lower()
    fmt = suffix if suffix in fig.canvas.get_supported_filetypes() else "png"
    fig.savefig(path, dpi=_DPI, format=fmt)
