"""In-memory record of everything logged, and plots of it."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["History"]


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

    def __getitem__(self, key: str) -> list[tuple[int, float]]:
        """The ``(step, value)`` pairs of ``key``."""
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"Nothing was logged under {key!r}; logged keys: {sorted(self._data)}") from None

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

    def state_dict(self) -> dict[str, list[list[float]]]:
        """Plain lists, loadable with ``torch.load(..., weights_only=True)``."""
        return {key: [[step, value] for step, value in points] for key, points in self._data.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the record with :meth:`state_dict`'s."""
        self._data = {key: [(int(s), float(v)) for s, v in points] for key, points in state.items()}
