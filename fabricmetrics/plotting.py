"""Plots of a :class:`~fabricmetrics.history.History`, or of several runs together: one panel per group of keys.

A key's group is the part before its last ``/`` and its curve label the part after it, so the
tracker's ``acc/train``, ``acc/val`` and ``acc/train_step`` share the panel ``acc``, a probe's
``LogisticRegression/accuracy`` and ``LogisticRegression/f1_macro`` share ``LogisticRegression``,
and ``encoder.fc1/LogisticRegression/accuracy`` goes to ``encoder.fc1/LogisticRegression``.

What a reader finds in every figure:

- panels in the order the run first logged them, in a grid without blank cells (a shorter last
  row has wider panels);
- the global step on the x axis and, where epoch-level train values (``*/train``) were logged, the
  epoch on a second axis above it (an epoch is marked where it ended);
- a star on the best epoch-level value and a ring on the last one, both written in the legend;
  metrics where lower is better (loss, alignment, uniformity, MAE, MSE, RMSE, MedAE: see
  :func:`lower_is_better`) say so in their title;
- the same legend order everywhere (``train``, ``train_step``, ``val``, ``test``, then the rest);
- step-level curves (``*_step``) thin and light, behind the epoch-level curves;
- probe panels with their main score only (``accuracy`` for a classifier, ``R2`` for a
  regressor) unless keys are chosen, because the six or seven scores of a probe move together
  and hide each other; chosen scores get distinct line styles.

One run (:func:`plot_history`): a label keeps one colour in every panel (``train`` blue, ``val``
orange; ``train_step`` shares ``train``'s). Several runs (:func:`plot_runs`): one colour per run,
and the stage is told by the line style (``train`` solid, ``val`` dashed, ``test`` dotted).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from fabricmetrics.exceptions import HistoryKeyError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["group_of", "lower_is_better", "plot_history", "plot_runs", "select_keys"]

_History = Mapping[str, Sequence[tuple[int, float]]]

_MAX_COLUMNS = 4
_PANEL_SIZE = (4.2, 3.1)  # inches per panel
_ONE_PANEL_SIZE = (6.4, 4.0)
_DPI = 120
_STEP_SUFFIX = "_step"
_STAGES = ("train", "val", "validation", "test")
_LOWER_IS_BETTER = frozenset({"loss", "alignment", "uniformity", "mae", "mse", "rmse", "medae"})
_CLASSIFIER_SCORES = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "precision_macro", "recall_macro")
_REGRESSOR_SCORES = ("R2", "PCC", "EVar", "MAE", "MedAE", "RMSE", "MSE")
_MAIN_SCORES = ("accuracy", "R2")
_STAGE_STYLES = {"train": ("-", "o"), "val": ("--", "s"), "validation": ("--", "s"), "test": (":", "^")}
_OTHER_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P"))
_MAX_EPOCH_TICKS = 12


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


def lower_is_better(key: str) -> bool:
    """Whether lower values of ``key`` are better: a word of the key is a loss or an error.

    The words are the parts of the key split at ``/``, ``_``, ``.`` and ``-``, compared without
    case: ``loss``, ``alignment``, ``uniformity``, ``MAE``, ``MSE``, ``RMSE`` and ``MedAE``.

    Args:
        key: a logged key.

    Returns:
        ``True`` for a loss or an error, ``False`` otherwise (higher is better, or unknown).

    Example:
        >>> [lower_is_better(k) for k in ("loss/train", "Ridge/MAE", "val_loss", "acc/val", "age/R2")]
        [True, True, True, False, False]
    """
    return any(word.lower() in _LOWER_IS_BETTER for word in re.split(r"[/_.\-]", key))


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
    history: _History,
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
        keys: exact keys or glob patterns; every key when ``None`` (probe panels then show their
            main score only).
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
        [('loss (lower is better)', 'step')]
        >>> import matplotlib.pyplot as plt
        >>> plt.close(fig)
    """
    return _plot({"": history}, keys, title, path, by_run=False)


def plot_runs(
    runs: Mapping[str, _History],
    keys: Sequence[str] | str | None = None,
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Draw several runs together: one colour per run, the stage told by the line style.

    A panel holds the curves of every run that logged its keys, so runs of the same experiment
    are compared curve by curve and runs of different experiments sit side by side.

    Args:
        runs: run name → history (a :class:`~fabricmetrics.history.History` or a mapping of the
            same shape), in the order of the colours.
        keys: exact keys or glob patterns, matched against the keys of all runs; every key when
            ``None``.
        title: a title above the panels.
        path: where to save the figure, as in :func:`plot_history`.

    Returns:
        The figure.

    Raises:
        HistoryKeyError: a key or pattern matches nothing in any run, or nothing was logged.

    Example:
        >>> a = {"acc/val": [(10, 0.5), (20, 0.75)]}
        >>> b = {"acc/val": [(10, 0.625), (20, 0.5)]}
        >>> fig = plot_runs({"lr=0.1": a, "lr=0.01": b})
        >>> [line.get_label() for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]
        ['lr=0.1 val  last 0.75 (best)', 'lr=0.01 val  best 0.625, last 0.5']
        >>> import matplotlib.pyplot as plt
        >>> plt.close(fig)
    """
    if not runs:
        raise HistoryKeyError("Nothing to plot: no run was given.")
    return _plot(dict(runs), keys, title, path, by_run=True)


# --------------------------------------------------------------------------------------------------
def _plot(
    runs: dict[str, _History],
    keys: Sequence[str] | str | None,
    title: str | None,
    path: str | os.PathLike | None,
    *,
    by_run: bool,
) -> Figure:
    import matplotlib.pyplot as plt

    available = list(dict.fromkeys(key for history in runs.values() for key in history))
    selected = select_keys(available, keys)
    hidden: list[str] = []
    if keys is None:
        selected, hidden = _main_probe_scores(selected)
    panels = _panels(runs, selected, ordered=keys is None)
    single = not by_run
    colours = _colours(selected) if single else {run: f"C{i % 10}" for i, run in enumerate(runs)}

    nrows, ncols = _grid(len(panels))
    width, height = _ONE_PANEL_SIZE if len(panels) == 1 else (_PANEL_SIZE[0] * ncols, _PANEL_SIZE[1] * nrows)
    notes = _notes(hidden)
    extra = (0.4 if title else 0.0) + 0.25 * len(notes)
    fig = plt.figure(figsize=(width, height + extra), layout="constrained")
    for ax, (group, group_keys) in zip(_axes(fig, len(panels), nrows, ncols), panels.items(), strict=True):
        _draw_panel(ax, group, group_keys, runs, colours, single)
    if title:
        fig.suptitle(title, fontsize="x-large")
    if notes:
        fig.supxlabel("\n".join(notes), fontsize="small", color="0.35")
    if path is not None:
        _save(fig, Path(path))
    return fig


def _main_probe_scores(keys: list[str]) -> tuple[list[str], list[str]]:
    """Keep only the main score of each probe panel (a group whose labels are all probe scores)."""
    labels: dict[str, list[str]] = {}
    for key in keys:
        group, label = group_of(key)
        labels.setdefault(group, []).append(label)
    hidden: list[str] = []
    for group, names in labels.items():
        if len(set(names)) < 2 or not set(names) <= {*_CLASSIFIER_SCORES, *_REGRESSOR_SCORES}:
            continue
        keep = [name for name in _MAIN_SCORES if name in names] or names[:1]
        hidden += [f"{group}/{name}" for name in names if name not in keep]
    return [key for key in keys if key not in hidden], hidden


def _notes(hidden: Sequence[str]) -> list[str]:
    notes = ["★ best value   ○ last value   (epoch-level curves)"]
    if hidden:
        groups = list(dict.fromkeys(group_of(key)[0] for key in hidden))
        patterns = " ".join(f"'{group}/*'" for group in groups[:3]) + (" …" if len(groups) > 3 else "")
        notes.append(
            f"Probe panels show their main score (accuracy, R2); {len(hidden)} more scores are logged: "
            f"keys=[{patterns.replace(' ', ', ')}] or fabricmetrics plot --keys {patterns}"
        )
    return notes


def _panels(runs: Mapping[str, _History], keys: Sequence[str], *, ordered: bool) -> dict[str, list[str]]:
    """Group → keys; groups in the order the runs first logged them (when ``ordered``), else as given."""
    first: dict[str, tuple[float, int]] = {}
    for position, key in enumerate(keys):
        steps = [history[key][0][0] for history in runs.values() if key in history and len(history[key])]
        here = (min(steps) if steps else math.inf, position)
        group = group_of(key)[0]
        first[group] = min(first.get(group, here), here)
    groups = sorted(first, key=first.__getitem__) if ordered else list(dict.fromkeys(group_of(k)[0] for k in keys))
    panels: dict[str, list[str]] = {group: [] for group in groups}
    for key in keys:
        panels[group_of(key)[0]].append(key)
    for group, group_keys in panels.items():
        panels[group] = sorted(group_keys, key=lambda key: _label_rank(group_of(key)[1], group_keys, key))
    return panels


def _label_rank(label: str, keys: Sequence[str], key: str) -> tuple[int, int, int]:
    """The legend order: the usual stages (epoch-level before step-level), then other labels as logged."""
    stage = _stage_label(label)
    if stage in _STAGES:
        return (0, _STAGES.index(stage), int(label.endswith(_STEP_SUFFIX)))
    return (1, list(keys).index(key), 0)


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns: at most four columns, as few rows as possible, then as few empty cells."""
    if n <= _MAX_COLUMNS:
        return 1, max(n, 1)
    ncols = min((3, 4), key=lambda c: (math.ceil(n / c), math.ceil(n / c) * c - n))
    return math.ceil(n / ncols), ncols


def _axes(fig: Figure, n: int, nrows: int, ncols: int) -> list[Axes]:
    """``n`` axes filling the grid: the panels of a shorter last row are wider, no cell stays blank."""
    last = n - (nrows - 1) * ncols
    width = math.lcm(ncols, last)
    spec = fig.add_gridspec(nrows, width)
    axes = []
    for i in range(n):
        row, col = divmod(i, ncols)
        span = width // (last if row == nrows - 1 else ncols)
        axes.append(fig.add_subplot(spec[row, col * span : (col + 1) * span]))
    return axes


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


def _epoch_ends(history: _History) -> list[int]:
    """The steps at which train epochs ended: where epoch-level train values (``*/train``) were logged."""
    return sorted({step for key, points in history.items() if key.endswith("/train") for step, _ in points})


def _draw_panel(
    ax: Axes,
    group: str,
    keys: Sequence[str],
    runs: Mapping[str, _History],
    colours: Mapping[str, str],
    single: bool,
) -> None:
    only_steps = all(group_of(key)[1].endswith(_STEP_SUFFIX) for key in keys)
    others = [label for label in (group_of(key)[1] for key in keys) if _stage_label(label) not in _STAGES]
    lower = {key: lower_is_better(key) for key in keys}
    mixed = len(set(lower.values())) > 1  # then each curve says its direction, else the title does
    ends: list[list[int]] = []
    for run, history in runs.items():
        drawn = [key for key in keys if key in history and len(history[key])]
        for key in drawn:
            label = group_of(key)[1]
            name = (label if single else f"{run} {label}") + (" (lower is better)" if mixed and lower[key] else "")
            colour = colours[_stage_label(label)] if single else colours[run]
            if label.endswith(_STEP_SUFFIX):
                _draw_step_curve(ax, history[key], name, colour, faint=not only_steps)
            else:
                _draw_curve(ax, history[key], name, colour, _style(label, others, single), lower=lower[key])
        if drawn:
            ends.append(_epoch_ends(history))
    ax.set_title(f"{group} (lower is better)" if all(lower.values()) else group, fontsize="large")
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    _epoch_axis(ax, ends)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    if len(keys) > 1 or not single or group_of(keys[0])[1] != group:  # a lone key without "/" is named by the title
        ax.legend(fontsize="small", framealpha=0.8)


def _draw_step_curve(ax: Axes, points: Sequence[tuple[int, float]], name: str, colour: str, *, faint: bool) -> None:
    """A step-level curve: thin, and light behind the epoch-level curves when there are some."""
    width, alpha, zorder = (0.9, 0.4, 1) if faint else (1.2, 0.9, 2)
    ax.plot([s for s, _ in points], [v for _, v in points], color=colour, linewidth=width, alpha=alpha, zorder=zorder,
            label=name)  # fmt: skip


def _draw_curve(
    ax: Axes, points: Sequence[tuple[int, float]], name: str, colour: str, style: tuple[object, str], *, lower: bool
) -> None:
    """An epoch-level curve with markers, a star on its best value and a ring on its last, both in the legend."""
    steps, values = [s for s, _ in points], [v for _, v in points]
    best = _best(values, lower)
    if best is not None:
        last_is_best = best == len(values) - 1 or values[best] == values[-1]
        name += (
            f"  last {values[-1]:.3g} (best)" if last_is_best else f"  best {values[best]:.3g}, last {values[-1]:.3g}"
        )
    size = 4.0 if len(steps) <= 40 else 2.0
    line, marker = style
    ax.plot(
        steps, values, color=colour, linestyle=line, linewidth=1.8, marker=marker, markersize=size, zorder=3, label=name
    )
    if best is not None:
        ax.plot([steps[-1]], [values[-1]], linestyle="none", marker="o", markersize=10, markerfacecolor="none",
                markeredgecolor=colour, markeredgewidth=1.5, zorder=4, label="_last")  # fmt: skip
        ax.plot([steps[best]], [values[best]], linestyle="none", marker="*", markersize=13, color=colour,
                markeredgecolor="black", markeredgewidth=0.6, zorder=5, label="_best")  # fmt: skip


def _style(label: str, others: Sequence[str], single: bool) -> tuple[object, str]:
    """Line style and marker: by stage with several runs, by label for scores that are not stages."""
    stage = _stage_label(label)
    if stage in _STAGES:
        return _STAGE_STYLES[stage] if not single else ("-", "o")
    return _OTHER_STYLES[others.index(label) % len(_OTHER_STYLES)] if len(others) > 1 else ("-", "o")


def _best(values: Sequence[float], lower: bool) -> int | None:
    """Index of the best finite value (the first one on ties), ``None`` if there is none."""
    finite = [(v, i) for i, v in enumerate(values) if math.isfinite(v)]
    if not finite:
        return None
    return (min(finite) if lower else min(finite, key=lambda vi: (-vi[0], vi[1])))[1]


def _epoch_axis(ax: Axes, ends: Sequence[Sequence[int]]) -> None:
    """Epoch numbers on a second x axis above the steps, when the panel's runs agree on where epochs end."""
    if not ends or not ends[0] or any(list(e) != list(ends[0]) for e in ends):
        return
    every = math.ceil(len(ends[0]) / _MAX_EPOCH_TICKS)
    shown = [(epoch, step) for epoch, step in enumerate(ends[0], start=1) if epoch % every == 0 or epoch == 1]
    top = ax.secondary_xaxis("top")
    top.set_xticks([step for _, step in shown], [str(epoch) for epoch, _ in shown])
    top.tick_params(labelsize="small", length=3)
    top.set_xlabel("epoch", fontsize="small")


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lstrip(".").lower()
    fmt = suffix if suffix in fig.canvas.get_supported_filetypes() else "png"
    fig.savefig(path, dpi=_DPI, format=fmt)
