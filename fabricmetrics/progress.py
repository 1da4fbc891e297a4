"""Live progress display of a training loop, on rank 0.

:class:`ProgressDisplay` shows, for each stage, the epoch, the steps done (of the total when it is
given, e.g. ``tracker.epoch("train", total=len(loader))``), the elapsed time, the speed and the
latest values. On a terminal it is a ``rich`` live table of the epochs in progress, redrawn at most
every ``refresh_s`` seconds, above which each finished epoch leaves one summary line (the table is
cleared when the display closes, so no epoch is shown twice); elsewhere (a log file, a batch job, a
notebook) it prints one plain line per stage every ``line_every_s`` seconds and one at the end of
each epoch. :meth:`ProgressDisplay.results` adds a line for values computed between epochs (probe
scores). On other ranks it does nothing. The tracker feeds it when built with ``progress=True``; it
can also be driven by hand.

A step costs a dictionary lookup and a clock read unless a redraw is due: the values it receives
are already Python floats (nothing here touches a device), and they are formatted only when drawn.
"""

from __future__ import annotations

import atexit
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from rich.console import Console
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["ProgressDisplay"]

_RATE_WINDOW_S = 1.0  # the speed shown is measured over at least this long


@dataclass
class _Stage:
    """What is shown for one stage."""

    name: str
    epoch: int | None
    total: int | None
    start: float
    steps: int = 0
    values: Mapping[str, float] = field(default_factory=dict)
    end: float | None = None
    due: float = 0.0  # next plain line (lines mode)
    rate: str | None = None  # the speed shown, updated at most once per _RATE_WINDOW_S
    ref: tuple[float, int] = (0.0, 0)  # (time, steps) the current speed is measured from

    def title(self) -> str:
        return self.name if self.epoch is None else f"{self.name} epoch {self.epoch}"

    def count(self) -> str:
        return f"{self.steps}/{self.total if self.total is not None else '?'}"

    def speed(self, now: float) -> str:
        """Steps per second: over the whole epoch once it ended, else over the last second or more."""
        if self.end is not None:
            return _rate(self.steps, self.end - self.start)
        ref_time, ref_steps = self.ref
        if now - ref_time >= _RATE_WINDOW_S:
            self.rate = _rate(self.steps - ref_steps, now - ref_time)
            self.ref = (now, self.steps)
        return _rate(self.steps, now - self.start) if self.rate is None else self.rate

    def shown_values(self, limit: int) -> str:
        """``name value`` pairs, without the ``/{stage}`` or ``/{stage}_step`` suffix the row already says."""
        suffixes = (f"/{self.name}_step", f"/{self.name}")
        parts = []
        for key, value in list(self.values.items())[:limit]:
            name = next((key[: -len(s)] for s in suffixes if key.endswith(s)), key)
            parts.append(f"{name} {value:.4g}")
        if len(self.values) > limit:
            parts.append("…")
        return "  ".join(parts)


class ProgressDisplay:
    """Per-stage progress of a training loop: a live table on a terminal, plain lines elsewhere.

    Args:
        is_main: whether this process shows anything (rank 0); other ranks stay silent.
        console: the ``rich`` console to draw on; defaults to standard output. A terminal gets the
            live table, anything else (a file, a pipe, a notebook) gets plain lines.
        refresh_s: the live table is redrawn at most this often (seconds).
        line_every_s: in plain mode, at most one line per stage this often (seconds), plus one
            line at the end of each epoch.
        max_values: how many of the latest values a row shows.

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> out = io.StringIO()
        >>> display = ProgressDisplay(console=Console(file=out))  # not a terminal: plain lines
        >>> display.epoch_started("train", 1, total=2)
        >>> display.step("train", {"loss/train_step": 0.5})
        >>> display.step("train")
        >>> display.epoch_ended("train", {"acc/train": 0.75})
        >>> display.close()
        >>> import re
        >>> print(re.sub(r"  [0-9.]+ (it/s|s/it)", "", out.getvalue()), end="")  # the speed varies
        train epoch 1 done  2/2  0:00:00  acc 0.75
    """

    def __init__(
        self,
        is_main: bool = True,
        *,
        console: Console | None = None,
        refresh_s: float = 0.2,
        line_every_s: float = 30.0,
        max_values: int = 6,
    ) -> None:
        """Store the settings; nothing is drawn and no terminal is queried before the first epoch or step."""
        self._console = console
        self._mode: Literal["rich", "lines", "off"] | None = None if is_main else "off"
        self.refresh_s = float(refresh_s)
        self.line_every_s = float(line_every_s)
        self.max_values = int(max_values)
        self._stages: dict[str, _Stage] = {}
        self._live: Live | None = None
        self._due = 0.0  # next redraw (rich mode)

    @property
    def mode(self) -> Literal["rich", "lines", "off"]:
        """``"rich"`` (live table), ``"lines"`` (plain lines) or ``"off"`` (not the main process)."""
        if self._mode is None:
            if self._console is None:
                self._console = Console()
            terminal = self._console.is_terminal and not self._console.is_dumb_terminal
            self._mode = "rich" if terminal else "lines"
        return self._mode

    def epoch_started(self, stage: str, epoch: int | None, total: int | None = None) -> None:
        """An epoch of ``stage`` begins.

        Args:
            stage: the stage (``"train"``, ``"val"``, …).
            epoch: its number (1 for the first), shown next to the stage; ``None`` shows none.
            total: the number of steps the epoch will have (``len(loader)``), if known.
        """
        if self.mode == "off":
            return
        now = time.monotonic()
        self._stages[stage] = _Stage(stage, epoch, total, start=now, due=now + self.line_every_s, ref=(now, 0))
        if self._mode == "rich":
            self._redraw(now)

    def step(self, stage: str, values: Mapping[str, float] | None = None) -> None:
        """One step of ``stage`` was done.

        Args:
            stage: the stage.
            values: the values logged at this step (floats), if any; the latest ones stay shown.
        """
        if self._mode == "off":
            return
        state = self._stages.get(stage)
        if state is None:  # a step outside any epoch block
            if self.mode == "off":
                return
            self.epoch_started(stage, None)
            state = self._stages[stage]
        state.steps += 1
        if values:
            state.values = values
        now = time.monotonic()
        if self._mode == "rich":
            if now >= self._due:
                self._redraw(now)
        elif now >= state.due:
            state.due = now + self.line_every_s
            self._line(state, now)

    def epoch_ended(self, stage: str, results: Mapping[str, float]) -> None:
        """The epoch of ``stage`` ended with ``results`` (the epoch-level values, shown in its row).

        Args:
            stage: the stage.
            results: what the epoch computed (may be empty).
        """
        if self.mode == "off":
            return
        state = self._stages.get(stage)
        if state is None:
            return
        now = time.monotonic()
        state.end = now
        if state.total is None:
            state.total = state.steps
        if results:
            state.values = dict(results)
        if self._mode == "rich":
            self._redraw(now)
        self._line(state, now)  # kept in the scrollback above the live table

    def results(self, title: str, values: Mapping[str, float]) -> None:
        """Show values computed outside a stage's steps, such as probe scores after a train epoch.

        They get one line of their own (above the live table on a terminal), shown at once.

        Args:
            title: what the values are, e.g. ``"probe after train epoch 3"``.
            values: key → float (nothing is shown when empty).
        """
        if not values or self.mode == "off":
            return
        shown = [f"{key} {value:.4g}" for key, value in list(values.items())[: self.max_values]]
        if len(values) > self.max_values:
            shown.append("…")
        self._print("  ".join([title, *shown]))

    def close(self) -> None:
        """Stop the live display (safe to call more than once).

        The live table is cleared: finished epochs already left their summary line above it, and an
        epoch still in progress (an interrupted run) leaves one now.
        """
        if self._live is not None:
            now = time.monotonic()
            self._live.update(Text(""), refresh=True)
            self._live.stop()
            self._live = None
            atexit.unregister(self.close)
            for state in self._stages.values():
                if state.end is None:
                    self._line(state, now)

    def __enter__(self) -> ProgressDisplay:
        """Use as a context manager that closes the display."""
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close the display."""
        self.close()

    # ----------------------------------------------------------------------------------------------
    def _redraw(self, now: float) -> None:
        self._due = now + self.refresh_s
        table = Table.grid(padding=(0, 2))
        for column in ("stage", "bar", "count", "time", "speed", "values"):
            table.add_column(column, no_wrap=True, overflow="ellipsis" if column == "values" else "fold")
        for state in self._stages.values():
            if state.end is not None:  # its summary line is above the table
                continue
            table.add_row(
                Text(state.title(), style="bold"),
                ProgressBar(total=state.total, completed=state.steps, width=28, pulse=state.total is None),
                state.count(),
                _clock(now - state.start),
                state.speed(now),
                Text(state.shown_values(self.max_values), style="dim"),
            )
        if self._live is None:
            assert self._console is not None
            self._live = Live(table, console=self._console, auto_refresh=False, transient=True)
            self._live.start(refresh=True)
            atexit.register(self.close)  # give the terminal its cursor back even without close()
        else:
            self._live.update(table, refresh=True)

    def _line(self, state: _Stage, now: float) -> None:
        assert self._console is not None
        end = now if state.end is None else state.end
        title = state.title() if state.end is None else f"{state.title()} done"
        parts = [title, state.count(), _clock(end - state.start), state.speed(now)]
        parts.append(state.shown_values(self.max_values))
        self._print("  ".join(part for part in parts if part))

    def _print(self, line: str) -> None:
        assert self._console is not None
        if self._live is not None:
            self._console.print(Text(line), soft_wrap=True)  # above the live table
        else:
            print(line, file=self._console.file, flush=True)


def _rate(steps: int, seconds: float) -> str:
    if steps <= 0 or seconds <= 0:
        return ""
    per_second = steps / seconds
    return f"{per_second:.1f} it/s" if per_second >= 1 else f"{1 / per_second:.1f} s/it"


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
