"""Lightning-style callback hooks, so a tracker also works as ``Fabric(callbacks=[tracker])``.

``fabric.call("on_train_batch_end", outputs=out)`` calls the method of that name on every callback
with the arguments given. The hooks map Lightning's names onto the tracker's stages:
``train`` → ``"train"``, ``validation`` → ``"val"``, ``test`` → ``"test"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabricmetrics.exceptions import OutputsTypeError

__all__ = ["CallbackHooks"]


def _outputs(hook: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Mapping[str, Any]:
    if "outputs" in kwargs:
        outputs: Mapping[str, Any] = kwargs["outputs"]
        return outputs
    for arg in args:
        if isinstance(arg, Mapping):
            return arg
    raise OutputsTypeError(
        f"{hook} needs the step's outputs. HINT: fabric.call({hook!r}, outputs={{'preds': ..., 'target': ...}})."
    )


class CallbackHooks:
    """Hook methods mixed into :class:`~fabricmetrics.MetricsTracker`.

    Batch hooks take the outputs as ``outputs=`` (or the first mapping among the positional
    arguments) and an optional ``batch_size=``; epoch-start hooks take optional ``num_samples=``
    and ``total=`` (steps, for the progress display). Other arguments (``batch``, ``batch_idx``, a
    module, …) are ignored.

    Example:
        >>> from lightning_fabric import Fabric
        >>> from sklearn.metrics import accuracy_score
        >>> import torch
        >>> from fabricmetrics import MetricsTracker
        >>> tracker = MetricsTracker({"acc": accuracy_score})
        >>> fabric = Fabric(accelerator="cpu", devices=1, callbacks=[tracker])
        >>> fabric.call("on_validation_epoch_start")
        >>> outputs = {"y_true": torch.tensor([1, 0]), "y_pred": torch.tensor([1, 1])}
        >>> fabric.call("on_validation_batch_end", outputs=outputs)
        >>> fabric.call("on_validation_epoch_end")
        >>> tracker.history["acc/val"]
        [(0, 0.5)]
    """

    def _begin_epoch(self, stage: str, num_samples: int | None, total: int | None = None) -> Any:
        raise NotImplementedError

    def _end_epoch(self, stage: str, error: BaseException | None) -> None:
        raise NotImplementedError

    def step(self, stage: str, outputs: Mapping[str, Any], *, batch_size: int | None = None) -> dict[str, float]:
        """Implemented by the tracker."""
        raise NotImplementedError

    def _hook_batch(self, stage: str, hook: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.step(stage, _outputs(hook, args, kwargs), batch_size=kwargs.get("batch_size"))

    def on_train_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        """Open a ``"train"`` epoch (``num_samples=`` as in ``epoch()``)."""
        self._begin_epoch("train", kwargs.get("num_samples"), kwargs.get("total"))

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """``step("train", outputs)``."""
        self._hook_batch("train", "on_train_batch_end", args, kwargs)

    def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Close the ``"train"`` epoch: compute, log, probe."""
        self._end_epoch("train", None)

    def on_validation_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        """Open a ``"val"`` epoch."""
        self._begin_epoch("val", kwargs.get("num_samples"), kwargs.get("total"))

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """``step("val", outputs)``."""
        self._hook_batch("val", "on_validation_batch_end", args, kwargs)

    def on_validation_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Close the ``"val"`` epoch."""
        self._end_epoch("val", None)

    def on_test_epoch_start(self, *args: Any, **kwargs: Any) -> None:
        """Open a ``"test"`` epoch."""
        self._begin_epoch("test", kwargs.get("num_samples"), kwargs.get("total"))

    def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
        """``step("test", outputs)``."""
        self._hook_batch("test", "on_test_batch_end", args, kwargs)

    def on_test_epoch_end(self, *args: Any, **kwargs: Any) -> None:
        """Close the ``"test"`` epoch."""
        self._end_epoch("test", None)
