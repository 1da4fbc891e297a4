"""Resolving each metric's arguments from a step's outputs.

A ``needs`` argument says, for every metric, where its arguments come from (the meaning of nidl's
``MetricsCallback(needs=...)``):

* ``None``: inferred from the metric's **required** parameters (``update`` for torchmetrics); a
  parameter takes the output key of the same name, else the single present alias
  (``preds``/``y_pred``/``logits``, ``target``/``targets``/``y_true``/``labels``);
* a list: positional arguments, the same for every metric;
* a dict of ``str``/callable: keyword arguments, the same for every metric;
* a dict keyed by metric name whose values are lists or dicts: per-metric overrides (metrics not
  named keep the inference).

A string picks ``outputs[key]``; a callable receives the whole outputs mapping. The structure is
checked when the tracker is built; output keys are resolved once per stage, on its first step.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

import torch
from torchmetrics import Metric, MetricCollection

from fabricmetrics.exceptions import ConfigurationError, NeedsError

__all__ = [
    "ALIASES",
    "ArgPlan",
    "NeedsSpec",
    "Source",
    "describe_source",
    "missing_key_error",
    "name_metrics",
    "parse_needs",
    "resolve_plan",
]

Source: TypeAlias = "str | Callable[[Mapping[str, Any]], Any]"
"""Where one argument comes from: an output key, or a function of the whole outputs mapping."""

_ALIAS_GROUPS: tuple[tuple[str, ...], ...] = (
    ("preds", "y_pred", "logits"),
    ("target", "targets", "y_true", "labels"),
)
ALIASES: dict[str, tuple[str, ...]] = {name: group for group in _ALIAS_GROUPS for name in group}
"""For each parameter name, the output keys that may stand for it (itself included)."""


@dataclass(frozen=True)
class ArgPlan:
    """How one metric's arguments are taken from a step's outputs.

    Attributes:
        positional: sources of the positional arguments, in order.
        keywords: ``(parameter, source)`` pairs of the keyword arguments.
    """

    positional: tuple[Source, ...] = ()
    keywords: tuple[tuple[str, Source], ...] = ()

    @property
    def sources(self) -> tuple[Source, ...]:
        """Every source, positional first."""
        return self.positional + tuple(src for _, src in self.keywords)


@dataclass(frozen=True)
class NeedsSpec:
    """The unresolved ``needs`` of one metric, checked against its signature.

    Attributes:
        kind: ``"infer"`` (from required parameters), ``"positional"`` or ``"keywords"``.
        positional: sources for ``kind="positional"``.
        keywords: ``(parameter, source)`` pairs for ``kind="keywords"``.
        required: required parameter names, with ``True`` for positional-only ones (``"infer"``).
    """

    kind: Literal["infer", "positional", "keywords"]
    positional: tuple[Source, ...] = ()
    keywords: tuple[tuple[str, Source], ...] = ()
    required: tuple[tuple[str, bool], ...] = ()


def describe_source(source: Source) -> str:
    """A short readable name of a source for messages.

    Args:
        source: an output key or a callable.

    Returns:
        ``'key'`` quoted for keys, the callable's name otherwise.

    Example:
        >>> describe_source("logits"), describe_source(len)
        ("'logits'", 'len')
    """
    if isinstance(source, str):
        return repr(source)
    return getattr(source, "__name__", type(source).__name__)


def parse_needs(needs: Any, metrics: Mapping[str, Any]) -> dict[str, NeedsSpec]:
    """Check a ``needs`` argument and split it per metric.

    Args:
        needs: ``None``, a list, a dict of keyword sources, or a dict of per-metric overrides.
        metrics: the named metrics (torchmetrics objects or callables).

    Returns:
        One :class:`NeedsSpec` per metric name.

    Raises:
        ConfigurationError: the structure is invalid, names an unknown metric, or does not fit a
            metric's signature (including ``*args``/``**kwargs`` signatures left to inference).

    Example:
        >>> from sklearn.metrics import accuracy_score
        >>> parse_needs(None, {"acc": accuracy_score})["acc"].required
        (('y_true', False), ('y_pred', False))
    """
    common: Any = None
    per_metric: Mapping[str, Any] = {}
    if needs is None:
        pass
    elif isinstance(needs, Mapping) and needs and all(_is_container(v) for v in needs.values()):
        unknown = sorted(str(k) for k in needs if k not in metrics)
        if unknown:
            raise ConfigurationError(
                f"`needs` has per-metric entries for {unknown}, which are not metric names; the metrics "
                f"are {sorted(metrics)}. HINT: key per-metric needs by the names of the `metrics` dict."
            )
        per_metric = needs
    elif isinstance(needs, Mapping) and any(_is_container(v) for v in needs.values()):
        raise ConfigurationError(
            "`needs` mixes per-metric entries (lists/dicts) with keyword sources (str/callable). HINT: either "
            "give one dict of keyword sources for all metrics, e.g. {'preds': 'logits', 'target': 'y'}, or "
            "key every entry by metric name, e.g. {'acc': {'preds': 'logits', 'target': 'y'}}."
        )
    elif isinstance(needs, (Mapping, list, tuple)):
        common = needs
    else:
        raise ConfigurationError(
            f"`needs` must be None, a list, or a dict, got {type(needs).__name__}. "
            "HINT: needs=['logits', 'labels'] (positional) or needs={'preds': 'logits'} (keywords)."
        )
    return {name: _spec(name, metric, per_metric.get(name, common)) for name, metric in metrics.items()}


def resolve_plan(name: str, spec: NeedsSpec, keys: Collection[str]) -> ArgPlan:
    """Resolve a metric's sources against the keys of a step's outputs.

    Args:
        name: the metric's name (for messages).
        spec: its checked ``needs``.
        keys: the keys of the first step's outputs.

    Returns:
        The argument plan used for every later step of the stage.

    Raises:
        NeedsError: a key is missing, or several alias keys could stand for one argument.

    Example:
        >>> spec = NeedsSpec("infer", required=(("preds", False), ("target", False)))
        >>> resolve_plan("acc", spec, ["logits", "target", "loss"]).keywords
        (('preds', 'logits'), ('target', 'target'))
    """
    if spec.kind == "infer":
        resolved: dict[str, str | None] = {}
        problems: list[tuple[str, list[str]]] = []
        for param, _ in spec.required:
            if param in keys:
                resolved[param] = param
                continue
            candidates = [k for k in ALIASES.get(param, ()) if k in keys]
            resolved[param] = candidates[0] if len(candidates) == 1 else None
            if len(candidates) != 1:
                problems.append((param, candidates))
        if problems:
            param, candidates = problems[0]
            if candidates:
                what = f"and the outputs have several keys it could mean: {candidates} (keys present: {sorted(keys)})"
            else:
                what = f"but the outputs have keys {sorted(keys)}{_did_you_mean(param, keys)}"
            raise NeedsError(
                f"Metric `{name}` needs argument `{param}`, {what}. HINT: pass "
                f"needs={{{name!r}: {_hint(resolved, param, candidates, keys)}}}"
            )
        positional = tuple(resolved[p] for p, pos_only in spec.required if pos_only)
        keywords = tuple((p, resolved[p]) for p, pos_only in spec.required if not pos_only)
        return ArgPlan(positional=positional, keywords=keywords)  # type: ignore[arg-type]
    labelled = [(f"positional argument {i}", s) for i, s in enumerate(spec.positional)]
    labelled += [(f"argument `{p}`", s) for p, s in spec.keywords]
    for label, source in labelled:
        if isinstance(source, str) and source not in keys:
            raise NeedsError(
                f"Metric `{name}`: the needs entry for its {label} is the key {source!r}, but the outputs have "
                f"keys {sorted(keys)}. HINT: return {source!r} from your step, or point the entry at one of "
                "those keys (or a callable of the outputs)."
            )
    return ArgPlan(positional=spec.positional, keywords=spec.keywords)


def missing_key_error(name: str, source: str, keys: Collection[str]) -> NeedsError:
    """The error for a key that the first step had and a later step lacks.

    Args:
        name: the metric's name.
        source: the missing key.
        keys: the keys present at this step.

    Returns:
        A :class:`NeedsError` to raise.
    """
    return NeedsError(
        f"Metric `{name}` needs the output key {source!r}, which earlier steps had but this step's outputs lack "
        f"(keys {sorted(keys)}). HINT: return the same keys from every step of a stage."
    )


def _is_container(value: Any) -> bool:
    return isinstance(value, (Mapping, list, tuple))


def _spec(name: str, metric: Any, entry: Any) -> NeedsSpec:
    signature = _signature(metric)
    if entry is None:
        if signature is None:
            raise ConfigurationError(
                f"Cannot read the signature of metric `{name}` to infer its arguments. HINT: pass "
                f"needs={{{name!r}: ['<output key>', ...]}}."
            )
        variadic = [p.name for p in signature.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if variadic:
            raise ConfigurationError(
                f"Metric `{name}` takes *{variadic[0]}-style arguments, so which outputs it needs cannot be "
                f"inferred. HINT: pass needs={{{name!r}: ['preds', 'target']}} (positional) or "
                f"needs={{{name!r}: {{'preds': 'logits'}}}} (keywords)."
            )
        required = tuple(
            (p.name, p.kind == p.POSITIONAL_ONLY) for p in signature.parameters.values() if p.default is p.empty
        )
        return NeedsSpec("infer", required=required)
    if isinstance(entry, Mapping):
        keywords = tuple((_check_param(name, k), _check_source(name, k, v)) for k, v in entry.items())
        _check_bind(name, signature, 0, [k for k, _ in keywords])
        return NeedsSpec("keywords", keywords=keywords)
    if isinstance(entry, Sequence) and not isinstance(entry, str):
        positional = tuple(_check_source(name, i, v) for i, v in enumerate(entry))
        _check_bind(name, signature, len(positional), [])
        return NeedsSpec("positional", positional=positional)
    raise ConfigurationError(f"`needs` for metric `{name}` must be a list or a dict, got {type(entry).__name__}.")


def _signature(metric: Any) -> inspect.Signature | None:
    target = metric.update if _is_torchmetric(metric) else metric
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def _is_torchmetric(metric: Any) -> bool:
    return isinstance(metric, (Metric, MetricCollection))


def _check_param(name: str, param: Any) -> str:
    if not isinstance(param, str) or not param.isidentifier():
        raise ConfigurationError(
            f"`needs` for metric `{name}` has key {param!r}; keys of a keyword entry are parameter names."
        )
    return param


def _check_source(name: str, where: Any, source: Any) -> Source:
    if isinstance(source, str) or callable(source):
        return source
    raise ConfigurationError(
        f"`needs` for metric `{name}` ({where!r}) must be an output key (str) or a callable of the outputs, "
        f"got {type(source).__name__}. HINT: constants belong in the metric, e.g. "
        "functools.partial(f1_score, average='macro')."
    )


def _check_bind(name: str, signature: inspect.Signature | None, n_positional: int, keywords: list[str]) -> None:
    if signature is None:
        return
    try:
        signature.bind(*([None] * n_positional), **dict.fromkeys(keywords))
    except TypeError as err:
        params = ", ".join(str(p) for p in signature.parameters.values())
        raise ConfigurationError(f"`needs` for metric `{name}` does not fit its signature ({params}): {err}.") from err


def _did_you_mean(param: str, keys: Collection[str]) -> str:
    """``: did you mean `preds`? (accepted: …)`` for an output key that looks like a typo of an accepted one."""
    accepted = ALIASES.get(param, (param,))
    close = {
        match: key
        for key in keys
        for match in difflib.get_close_matches(key, accepted, n=1, cutoff=0.7)
        if key not in accepted
    }
    if not close:
        return ""
    match, typo = next(iter(close.items()))
    return f" — did you mean `{match}` instead of `{typo}`? (accepted: {', '.join(accepted)})"


def _hint(resolved: Mapping[str, str | None], param: str, candidates: list[str], keys: Collection[str]) -> str:
    filled = dict(resolved)
    if candidates:
        filled[param] = candidates[0]
    missing = [p for p, v in filled.items() if v is None]
    used = {v for v in filled.values() if v is not None}
    unused = [k for k in keys if k not in used and k not in ALIASES]  # an alias key belongs to another argument
    guesses = unused if len(unused) == len(missing) else ["<output key>"] * len(missing)
    filled.update(zip(missing, guesses, strict=True))
    return repr(filled)


def name_metrics(metrics: Any) -> dict[str, Any]:
    """Name the metrics: dict keys, else ``__name__`` / class name with ``_1``, ``_2`` on clashes.

    Args:
        metrics: a dict name → metric, a list, one metric, or a ``MetricCollection``.

    Returns:
        Name → metric, in order.

    Raises:
        ConfigurationError: a name is empty, a metric is a class instead of an instance, a metric is
            neither a torchmetrics metric nor a callable,
            or a ``MetricCollection`` sits inside a dict or list.

    Example:
        >>> from sklearn.metrics import accuracy_score
        >>> list(name_metrics([accuracy_score, accuracy_score, lambda x: x]))
        ['accuracy_score', 'accuracy_score_1', 'lambda']
    """
    if isinstance(metrics, MetricCollection):
        metrics = dict(metrics.items(keep_base=False, copy_state=False))
    if isinstance(metrics, Mapping):
        named = dict(metrics)
        for name in named:
            if not isinstance(name, str) or not name:
                raise ConfigurationError(f"Metric names must be non-empty strings, got {name!r}.")
    else:
        items = list(metrics) if isinstance(metrics, (list, tuple)) else [metrics]
        named = {}
        for metric in items:
            base = _base_name(metric)
            name, i = base, 0
            while name in named:
                i += 1
                name = f"{base}_{i}"
            named[name] = metric
    if not named:
        raise ConfigurationError("MetricsTracker needs at least one metric.")
    for name, metric in named.items():
        if isinstance(metric, MetricCollection):
            raise ConfigurationError(
                f"Metric `{name}` is a MetricCollection inside a dict or list. HINT: pass its metrics directly, "
                "e.g. MetricsTracker(dict(collection.items())), or pass the collection itself as `metrics`."
            )
        if isinstance(metric, type) and issubclass(metric, torch.nn.Module):
            raise ConfigurationError(
                f"Metric `{name}` is the class {metric.__name__}, not a metric object. HINT: construct it, "
                f"e.g. {metric.__name__}(num_classes=10)."
            )
        if not isinstance(metric, Metric) and not callable(metric):
            raise ConfigurationError(
                f"Metric `{name}` is a {type(metric).__name__}, which is neither a torchmetrics.Metric nor a callable."
            )
    return named


def _base_name(metric: Any) -> str:
    fn = metric
    while isinstance(fn, functools.partial):
        fn = fn.func
    if isinstance(fn, Metric) or not hasattr(fn, "__name__"):
        return type(fn).__name__
    name = str(fn.__name__)
    return "lambda" if name == "<lambda>" else name
