"""Coalesced updates: the inputs of several steps buffered on their device, one ``update()`` for all.

A torchmetrics ``update()`` on a batch of 256 rows costs tens of microseconds of Python, argument
checks and small kernel launches, whatever the arithmetic; run once on K batches at a time it costs
about the same. A :class:`Coalescer` copies each step's inputs into preallocated buffers (at most
``max_steps`` batches or ``max_bytes``, whichever is smaller) and calls ``update()`` once on the rows
gathered so far when the buffer is full or when a value is needed (:meth:`Coalescer.flush`).

This is exact only when ``update`` on the rows of several batches produces the same state as one
``update`` per batch, bit for bit. Two things must hold, and :func:`eligible` checks both:

1. **The states add up exactly.** Every state is a tensor whose declared reduction is a sum and
   whose default is an integer tensor: integer sums do not depend on their order or grouping, while
   float sums do (``(a + b) + c`` is not ``a + (b + c)`` in floating point).
2. **The update is row-additive**: the contribution of a batch is the sum of the contributions of its
   rows. The declared states cannot tell this: a metric that counts its ``update`` calls in an
   integer sum state has integer sums and is not row-additive. So eligibility also needs an update
   whose code is known to be row-additive: the update of one of the torchmetrics classes listed in
   ``_row_additive()`` (stat scores, confusion matrices, exact match: argmax or top-k per row,
   bincounts, sums), unchanged (a subclass that overrides ``update`` or an ``_update*`` method is not
   eligible).

The argument checks of these updates (``validate_args``) only raise: a step that one update per step
would refuse is refused by the coalesced update too, reported when its buffer is flushed. Their
count of distinct labels runs over all the buffered rows, so labels out of range spread over several
steps may be refused together where one update per step let each through; valid labels never are.

Some formats decide per call: a binary or multilabel metric applies a sigmoid to float ``preds`` when
*any* value of the call lies outside [0, 1], so a batch of probabilities buffered with a batch of
logits would be squashed twice. Such updates are coalesced only for steps whose ``preds`` are labels
(integer or boolean); steps with float ``preds`` go straight to ``update()``. Multiclass formats are
row-separable (``argmax``/``top_k`` along the class dimension of each row) and take any inputs.

No step copies anything to the host: the buffer positions are Python integers, the copies stay on
the device, and the flush calls the metric's own ``update``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_sum

from fabricmetrics import _tm
from fabricmetrics.exceptions import MetricError

__all__ = ["Coalescer", "eligible"]

_Rule = Callable[[Sequence[Any], Mapping[str, Any]], bool]
_Layout = tuple[tuple[torch.dtype, tuple[int, ...], torch.device], ...]


def _any_inputs(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """A row-separable format (multiclass): every step may be buffered."""
    return True


def _label_preds(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
    """A format that decides per call for float ``preds`` (sigmoid if any value is outside [0, 1])."""
    preds = args[0] if args else kwargs.get("preds")
    return isinstance(preds, torch.Tensor) and not preds.is_floating_point()


@functools.cache
def _row_additive() -> tuple[tuple[type[Metric], _Rule], ...]:
    """The torchmetrics classes whose ``update`` is row-additive, with the steps each may buffer."""
    from torchmetrics.classification import (
        BinaryConfusionMatrix,
        BinaryStatScores,
        MulticlassConfusionMatrix,
        MulticlassExactMatch,
        MulticlassStatScores,
        MultilabelConfusionMatrix,
        MultilabelExactMatch,
        MultilabelStatScores,
    )

    return (
        (MulticlassStatScores, _any_inputs),  # accuracy, F1, F-beta, precision, recall, specificity, …
        (MulticlassConfusionMatrix, _any_inputs),  # confusion matrix, Jaccard, Matthews, Cohen's kappa
        (MulticlassExactMatch, _any_inputs),
        (BinaryStatScores, _label_preds),
        (BinaryConfusionMatrix, _label_preds),
        (MultilabelStatScores, _label_preds),
        (MultilabelConfusionMatrix, _label_preds),
        (MultilabelExactMatch, _label_preds),
    )


def _update_methods(cls: type) -> dict[str, Any]:
    return {n: getattr(cls, n) for n in dir(cls) if n == "update" or n.startswith("_update")}


def _rule(metric: Metric) -> _Rule | None:
    """The input rule of ``metric``'s update if that update is a known row-additive one, unchanged."""
    cls = type(metric)
    methods = _update_methods(cls)
    for owner, rule in _row_additive():
        if isinstance(metric, owner) and methods == _update_methods(owner):
            return rule
    return None


def _integer_sum_states(metric: Metric) -> bool:
    """Whether every state is an integer tensor whose declared reduction is a sum."""
    defaults, reductions = _tm.defaults(metric), _tm.reductions(metric)
    if not defaults:
        return False
    for key, default in defaults.items():
        if not isinstance(default, torch.Tensor) or not isinstance(getattr(metric, key), torch.Tensor):
            return False
        if default.is_floating_point() or default.is_complex() or default.dtype == torch.bool:
            return False
        if reductions.get(key) not in (dim_zero_sum, "sum"):
            return False
    return True


def eligible(metric: Metric) -> bool:
    """Whether ``metric``'s per-step updates may be coalesced without changing its state by one bit.

    Args:
        metric: a torchmetrics metric.

    Returns:
        ``True`` when its states are integer tensors reduced by sum and its update is a known
        row-additive one (see the module's docstring).

    Example:
        >>> from torchmetrics.classification import MulticlassF1Score
        >>> from torchmetrics.regression import MeanSquaredError
        >>> eligible(MulticlassF1Score(num_classes=3)), eligible(MeanSquaredError())
        (True, False)
    """
    return _integer_sum_states(metric) and _rule(metric) is not None


class Coalescer:
    """Buffers the inputs of the steps of one or more metrics fed the same arguments; one update per flush.

    Every metric must be :func:`eligible`. :meth:`update` takes the place of ``metric.update`` on a
    step; :meth:`flush` must run before anything reads the metrics' states (a value, a sync, a
    ``state_dict``), and :meth:`discard` when the states are reset or replaced. A flush of ``k``
    buffered steps leaves each metric's state and ``update_count`` as ``k`` updates would.

    Args:
        metrics: the metrics to update.
        max_steps: the most steps buffered before a flush.
        max_bytes: the most bytes the buffers may hold (all arguments together); a step that would
            not leave room for a second one of its size is not buffered.
        name: the name of the metrics, for error messages (:meth:`join` adds others).

    Raises:
        MetricError: (from :meth:`update` and :meth:`flush`) an update of buffered steps failed; it
            names the metric and chains the metric's own error.

    Example:
        >>> from torchmetrics.classification import MulticlassAccuracy
        >>> acc = MulticlassAccuracy(num_classes=3, average="micro")
        >>> coalescer = Coalescer([acc], max_steps=4)
        >>> for preds in ([0, 1, 2], [2, 2, 2]):
        ...     coalescer.update([torch.tensor(preds), torch.tensor([0, 1, 2])], {})
        >>> coalescer.pending
        2
        >>> coalescer.flush()
        >>> acc.compute(), acc.update_count
        (tensor(0.6667), 2)
    """

    def __init__(
        self, metrics: Sequence[Metric], *, max_steps: int = 128, max_bytes: int = 16 * 2**20, name: str = "metric"
    ) -> None:
        """Bind the metrics; buffers are allocated by the first step that can be buffered."""
        self.metrics: list[Metric] = []
        self.names: list[str] = []
        self._checks: list[_Rule] = []
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._n_args = 0  # the buffers hold this many positional arguments, then these keywords:
        self._keywords: tuple[str, ...] = ()
        self._layout: _Layout = ()
        self._buffers: list[torch.Tensor] = []
        self._capacity = 0  # rows
        self._slot_rows = 0  # rows of the step that allocated the buffers; views of the buffers in such steps:
        self._slots: list[tuple[torch.Tensor, ...]] = []
        self._last: tuple[tuple[torch.Size, torch.dtype], ...] = ()  # shapes and dtypes of the last buffered step
        self._rows = 0  # rows held
        self.pending = 0  # steps held
        for metric in metrics:
            self.join(metric, name)

    def update(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Add one step's arguments to every metric: buffered when possible, else a direct update.

        A step is buffered when every argument is a tensor with at least one dimension, all with the
        same non-zero number of rows, and every metric's input rule accepts it. Buffered steps are
        flushed first when the step's layout (dtype, trailing shape, device of each argument)
        differs from the buffer's, or when it does not fit.
        """
        values = (*args, *kwargs.values())
        if not self._as_last(values, len(args), kwargs) or not all(check(args, kwargs) for check in self._checks):
            self._update_general(values, args, kwargs)
            return
        n = values[0].shape[0]
        if n == self._slot_rows and self._rows == self.pending * n:  # every step so far of the usual size
            if self.pending == len(self._slots):
                self.flush()
            targets = self._slots[self.pending]  # views made once, at allocation
        else:
            if self._rows + n > self._capacity:
                self.flush()
            targets = tuple(buffer[self._rows : self._rows + n] for buffer in self._buffers)
        for target, value in zip(targets, values, strict=True):
            target.copy_(value.detach() if value.requires_grad else value)
        self._rows += n
        self.pending += 1

    def _as_last(self, values: tuple[Any, ...], n_args: int, kwargs: Mapping[str, Any]) -> bool:
        """Whether the step's tensors have the shapes and dtypes of the last buffered step's (checked cheaply).

        The device is left out here: the buffers live on the device of the steps that allocated
        them, and a tensor of another device would only be copied there.
        """
        if len(values) != len(self._last) or n_args != self._n_args or tuple(kwargs) != self._keywords:
            return False
        for value, (shape, dtype) in zip(values, self._last, strict=True):
            if not isinstance(value, torch.Tensor) or value.shape != shape or value.dtype != dtype:
                return False
        return True

    def _update_general(self, values: tuple[Any, ...], args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        """Any step: buffered (in new buffers if its layout differs or it does not fit), or a direct update."""
        layout = self._layout_of(values)
        if layout is None or not all(check(args, kwargs) for check in self._checks):
            self._direct(args, kwargs)
            return
        n = values[0].shape[0]
        if (layout, len(args), tuple(kwargs)) != (self._layout, self._n_args, self._keywords) or n > self._capacity:
            self.flush()
            if not self._allocate(values, len(args), tuple(kwargs), layout, n):
                self._direct(args, kwargs)
                return
        self._last = tuple((v.shape, v.dtype) for v in values)
        self.update(args, kwargs)

    def flush(self) -> None:
        """Run one ``update`` of every metric on the buffered rows (nothing when none are buffered)."""
        if not self.pending:
            return
        views = [buffer[: self._rows] for buffer in self._buffers]
        steps = self.pending
        self._rows = 0
        self.pending = 0
        args = views[: self._n_args]
        kwargs = dict(zip(self._keywords, views[self._n_args :], strict=True))
        for metric, name in zip(self.metrics, self.names, strict=True):
            before = _tm.update_count(metric)
            try:
                metric.update(*args, **kwargs)
            except Exception as err:
                raise MetricError(
                    f"Metric `{name}`: the one update of its {steps} buffered step(s) raised "
                    f"{type(err).__name__}: {err} HINT: its updates are coalesced (one update for up to "
                    f"{self.max_steps} steps), so an input that it refuses is reported when its buffer is flushed, "
                    "after the step that gave it; give every step inputs that the metric accepts."
                ) from err
            _tm.set_state(metric, {}, before + steps)

    def join(self, metric: Metric, name: str) -> None:
        """Update ``metric`` too, with the same arguments (the buffered steps are flushed first).

        Args:
            metric: an eligible metric fed the same arguments as the others.
            name: its name, for error messages.

        Raises:
            ValueError: ``metric`` is not :func:`eligible`.
        """
        rule = _rule(metric)
        if rule is None or not _integer_sum_states(metric):
            raise ValueError("Coalescer: every metric must be eligible (see `eligible`).")
        self.flush()
        self.metrics.append(metric)
        self.names.append(name)
        if rule is not _any_inputs and rule not in self._checks:
            self._checks.append(rule)

    def discard(self) -> None:
        """Forget the buffered steps (the metrics were reset or their states replaced)."""
        self._rows = 0
        self.pending = 0

    def _direct(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        for metric in self.metrics:
            metric.update(*args, **kwargs)

    @staticmethod
    def _layout_of(values: tuple[Any, ...]) -> _Layout | None:
        if not values or not all(isinstance(v, torch.Tensor) and v.ndim > 0 for v in values):
            return None
        n = values[0].shape[0]
        if n == 0 or any(v.shape[0] != n for v in values):
            return None
        return tuple((v.dtype, tuple(v.shape[1:]), v.device) for v in values)

    def _allocate(
        self, values: tuple[Any, ...], n_args: int, keywords: tuple[str, ...], layout: _Layout, n: int
    ) -> bool:
        """Buffers for ``max_steps`` steps of ``n`` rows (fewer if ``max_bytes`` says so); False if under 2 steps."""
        row_bytes = sum(v[:1].numel() * v.element_size() for v in values)
        rows = min(self.max_steps * n, self.max_bytes // max(row_bytes, 1))
        if rows < 2 * n:
            self._buffers, self._layout, self._n_args, self._keywords, self._capacity, self._last = [], (), 0, (), 0, ()
            self._slot_rows, self._slots = 0, []
            return False
        self._buffers = [torch.empty((rows, *v.shape[1:]), dtype=v.dtype, device=v.device) for v in values]
        self._slot_rows = n
        self._slots = [tuple(b[i * n : (i + 1) * n] for b in self._buffers) for i in range(rows // n)]
        self._layout, self._n_args, self._keywords, self._capacity = layout, n_args, keywords, rows
        return True
