"""What a ProbingScheduler probes: named probes with their target column and scorer, and argument checks.

Keys are decided here: one estimator is named after its class, a list gives ``task{i}`` (column
``i``), a dict gives its names (columns in dict order). With a single target column, every probe of
a list or dict is fitted on it (e.g. a linear and a kNN probe of the same labels).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import is_classifier
from torch import nn

from fabricmetrics._validate import check_int
from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.probing.report import ProbeKind, ProbeScorer, Scoring

__all__ = ["Probe", "check_cv", "check_layers", "check_targets", "parse_probes", "positive_int", "target_column"]


@dataclass(frozen=True)
class Probe:
    """One estimator of a scheduler, with the key part it logs under and the targets it gets."""

    name: str  # the key part: class name, task{i}, or the dict key
    estimator: Any
    column: int | None  # target column, None: the whole target
    sharded: bool
    scorer: ProbeScorer


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1, else a :class:`ConfigurationError` naming ``name``."""
    return check_int(value, name, minimum=1)


def check_layers(encoder: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """The layer names, each a submodule of ``encoder`` (``[]`` for None: probe the output)."""
    if layers is None:
        return []
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ConfigurationError(
            f"layers must be a non-empty list of module names, got {layers!r}. "
            "HINT: layers=['fc1', 'fc2'], or layers=None to probe the encoder's output."
        )
    names = list(layers)
    if len(set(names)) != len(names):
        raise ConfigurationError(f"layers must not repeat a name, got {names}.")
    for name in names:
        try:
            if not isinstance(name, str) or not name:
                raise AttributeError(name)
            encoder.get_submodule(name)
        except AttributeError:
            known = [n for n, _ in encoder.named_modules() if n]
            shown = ", ".join(known[:20]) + (", …" if len(known) > 20 else "")
            raise ConfigurationError(
                f"layers: the encoder has no submodule {name!r}. Its submodules are: [{shown}]. "
                "HINT: use the names of encoder.named_modules()."
            ) from None
    return names


def check_cv(cv: Any, test_loader: Any) -> Any:
    """``cv`` if it fits ``test_loader`` (exactly one of them is given); iterables of splits become lists."""
    if cv is None:
        if test_loader is None:
            raise ConfigurationError(
                "test_loader is None and cv is None: the probes would have nothing to be scored on. "
                "HINT: pass a test loader, or cv=5 to cross-validate on the train loader's embeddings."
            )
        return None
    if isinstance(cv, bool) or (isinstance(cv, int) and cv < 2):
        raise ConfigurationError(f"cv must be a number of folds >= 2, a CV splitter, or a list of splits; got {cv!r}.")
    if test_loader is not None:
        raise ConfigurationError(
            "cv= cross-validates on the train loader's embeddings, so the test loader would be embedded for nothing. "
            "HINT: pass test_loader=None with cv=, or drop cv= to score on the test loader."
        )
    if isinstance(cv, int) or hasattr(cv, "split"):
        return cv
    if not isinstance(cv, Iterable):
        raise ConfigurationError(f"cv must be a number of folds, a CV splitter, or a list of splits; got {cv!r}.")
    return list(cv)  # a generator of splits would be used up by the first probing


def parse_probes(probe: Any, scoring: Scoring | None, cv: Any) -> list[Probe]:
    """One estimator, a list or a dict of estimators → named :class:`Probe` objects, in column order."""
    if isinstance(probe, Mapping):
        items: list[tuple[str, Any, int | None]] = [(name, est, i) for i, (name, est) in enumerate(probe.items())]
        bad = [name for name, _, _ in items if not isinstance(name, str) or not name]
        if bad:
            raise ConfigurationError(f"The names of a dict of probes must be non-empty strings, got {bad!r}.")
    elif isinstance(probe, Sequence) and not isinstance(probe, str):
        items = [(f"task{i}", est, i) for i, est in enumerate(probe)]
    else:
        items = [(type(probe).__name__, probe, None)]
    if not items:
        raise ConfigurationError("probe is empty. HINT: probe=LogisticRegression(max_iter=200).")
    probes = []
    for name, est, column in items:
        if isinstance(est, type) or not (hasattr(est, "fit") and hasattr(est, "get_params")):
            hint = f"{est.__name__}()" if isinstance(est, type) else "LogisticRegression(max_iter=200)"
            raise ConfigurationError(
                f"Probe `{name}` must be a scikit-learn estimator instance (with fit and get_params), got {est!r}. "
                f"HINT: probe={hint}."
            )
        sharded = bool(est.get_params().get("sharded", False))
        if sharded and (cv is not None or scoring is not None):
            raise ConfigurationError(
                f"Probe `{name}` is sharded (fitted across ranks): it is scored with the default metric sets on the "
                "test loader, so it takes neither cv= nor scoring=. HINT: use sharded=False for those."
            )
        kind: ProbeKind = "classification" if is_classifier(est) else "regression"
        probes.append(Probe(name, est, column, sharded, ProbeScorer(kind, scoring)))
    return probes


def target_column(targets: np.ndarray, p: Probe) -> np.ndarray:
    """The targets of probe ``p``: its column (the only one, if one), as int64 labels or float64 values."""
    y = targets if p.column is None or targets.ndim == 1 or targets.shape[1] == 1 else targets[:, p.column]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    return y.astype(np.int64) if p.scorer.kind == "classification" else y.astype(np.float64)


def check_targets(probes: list[Probe], loader: str, summary: dict[str, Any]) -> None:
    """Targets vs probes: number of columns, classes for classifiers, finite values (every rank alike)."""
    shape = summary["target_shape"]
    n_columns = shape[0] if shape else 1
    if probes[0].column is not None and n_columns > 1 and len(probes) != n_columns:
        raise ConfigurationError(
            f"{_count(len(probes), 'probe')} need targets with {_count(len(probes), 'column')} (one per probe), "
            f"but the {loader} loader's targets have shape {_shape(shape)}. "
            "HINT: give one probe per target column, in column order."
        )
    for p in probes:
        classifier = p.scorer.kind == "classification"
        if classifier and p.column is None and n_columns > 1:
            raise ConfigurationError(
                f"Probe {p.name} is a classifier, but the targets have {n_columns} columns. "
                "HINT: pass a list with one probe per column, e.g. probe=[Ridge(), LogisticRegression()]."
            )
        for c in range(n_columns) if p.column is None or n_columns == 1 else [p.column]:
            where = f"target column {c} of the {loader} loader"
            if not summary["target_finite"][c]:
                raise ConfigurationError(f"Probe `{p.name}`: {where} holds NaN or inf. HINT: clean the targets.")
            if classifier and summary["target_example"][c] is not None:
                raise ConfigurationError(
                    f"Probe `{p.name}` ({type(p.estimator).__name__}) is a classifier, but {where} holds "
                    f"non-integer values such as {summary['target_example'][c]:.6g}: regression targets. "
                    "HINT: use a regressor for this column (e.g. Ridge()), or give integer class labels."
                )


def _shape(trailing: tuple[int, ...]) -> str:
    return "(n,)" if not trailing else "(n, " + ", ".join(map(str, trailing)) + ")"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
