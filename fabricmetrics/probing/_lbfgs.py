"""Full-batch L-BFGS for smooth objectives whose gradient is written by hand.

A small, deterministic minimiser: the objective returns its value and gradient itself (no
autograd), the line search needs one host read per evaluation, and every decision depends only on
the values the objective returns — so ranks that see the same all-reduced values take exactly the
same steps. Reference: Nocedal & Wright, *Numerical Optimization*, algorithms 7.4 (two-loop
recursion) and 3.5 (line search for the Wolfe conditions, here with the weak curvature condition).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["LbfgsResult", "Objective", "minimize_lbfgs"]

Objective = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""``x -> (value, gradient, stop_measure)``: 0-d value, gradient shaped like ``x``, and the 0-d
quantity compared with ``tol`` (e.g. the largest absolute gradient entry in the model's own
coordinates)."""

_C1, _C2 = 1e-4, 0.9  # sufficient decrease and (weak) curvature constants
_MAX_LINESEARCH = 25


@dataclass
class LbfgsResult:
    """Outcome of :func:`minimize_lbfgs`."""

    x: torch.Tensor
    fun: float
    n_iter: int
    n_evals: int
    converged: bool
    message: str


def minimize_lbfgs(
    objective: Objective,
    x0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    history_size: int = 10,
    ftol: float = 0.0,
) -> LbfgsResult:
    """Minimise ``objective`` from ``x0`` with L-BFGS and a Wolfe line search.

    Every line search tries the unit step first, the first one included: the objective should be
    expressed in coordinates where a unit gradient step is of the right order (preconditioned);
    the line search expands or shrinks it otherwise.

    Args:
        objective: see :data:`Objective`.
        x0: starting point (not modified).
        max_iter: most iterations (line searches).
        tol: stop when the objective's ``stop_measure`` is at most ``tol``.
        history_size: number of curvature pairs kept.
        ftol: also stop when an iteration lowers the value by less than ``ftol * max(|f|, 1)``.

    Returns:
        The last accepted point and how the run ended.
    """
    n_evals = 0

    def evaluate(x: torch.Tensor, d: torch.Tensor) -> tuple[float, float, float, torch.Tensor]:
        nonlocal n_evals
        n_evals += 1
        f, g, stop = objective(x)
        f_val, gd, stop_val = torch.stack([f, torch.dot(g, d), stop]).tolist()
        return f_val, gd, stop_val, g

    x = x0.detach().clone()
    f, _, stop, g = evaluate(x, torch.zeros_like(x))
    s_hist: deque[torch.Tensor] = deque(maxlen=history_size)
    y_hist: deque[torch.Tensor] = deque(maxlen=history_size)
    rho_hist: deque[torch.Tensor] = deque(maxlen=history_size)
    if not math.isfinite(f):
        return LbfgsResult(x, f, 0, n_evals, False, "the objective is not finite at the start")
    if stop <= tol:
        return LbfgsResult(x, f, 0, n_evals, True, "gradient below tol at the start")
    for n_iter in range(1, max_iter + 1):
        d = _two_loop(g, s_hist, y_hist, rho_hist)
        gtd = torch.dot(g, d).item()
        if not gtd < 0:  # lost descent (numerical trouble): restart from steepest descent
            for hist in (s_hist, y_hist, rho_hist):
                hist.clear()
            d = -g
            gtd = -torch.dot(g, g).item()
        found = _line_search(evaluate, x, d, f, gtd, 1.0)  # the unit step: objectives are scaled for it
        if found is None:
            return LbfgsResult(x, f, n_iter, n_evals, False, "the line search found no lower value")
        t, f_new, stop, g_new = found
        s, y = d * t, g_new - g
        sy = torch.dot(s, y)
        if sy.item() > 1e-10 * torch.dot(y, y).item():
            s_hist.append(s)
            y_hist.append(y)
            rho_hist.append(1.0 / sy)
        x, g, f_old, f = x + s, g_new, f, f_new
        if stop <= tol:
            return LbfgsResult(x, f, n_iter, n_evals, True, "gradient below tol")
        if f_old - f <= ftol * max(abs(f), 1.0):
            return LbfgsResult(x, f, n_iter, n_evals, True, "relative decrease below ftol")
    return LbfgsResult(x, f, max_iter, n_evals, False, f"reached max_iter={max_iter}")


def _two_loop(
    g: torch.Tensor, s_hist: deque[torch.Tensor], y_hist: deque[torch.Tensor], rho_hist: deque[torch.Tensor]
) -> torch.Tensor:
    """The L-BFGS direction ``-H g`` with ``H0 = (s'y / y'y) I`` from the latest pair."""
    q = g.neg()
    alphas = []
    for s, y, rho in zip(reversed(s_hist), reversed(y_hist), reversed(rho_hist), strict=True):
        a = rho * torch.dot(s, q)
        q.sub_(y * a)
        alphas.append(a)
    if s_hist:
        q.mul_(1.0 / (rho_hist[-1] * torch.dot(y_hist[-1], y_hist[-1])))
    for s, y, rho, a in zip(s_hist, y_hist, rho_hist, reversed(alphas), strict=True):
        b = rho * torch.dot(y, q)
        q.add_(s * (a - b))
    return q


def _line_search(
    evaluate: Callable[[torch.Tensor, torch.Tensor], tuple[float, float, float, torch.Tensor]],
    x: torch.Tensor,
    d: torch.Tensor,
    f0: float,
    gtd0: float,
    t: float,
) -> tuple[float, float, float, torch.Tensor] | None:
    """Find a step meeting the sufficient-decrease and weak curvature conditions.

    Brackets the step (expanding while it is too short), then narrows the bracket by safeguarded
    cubic interpolation. Returns ``(step, value, stop_measure, gradient)``, or ``None`` when no
    step lowers the value (the objective's precision is reached).
    """
    lo, f_lo, gd_lo = 0.0, f0, gtd0
    hi, f_hi, gd_hi = math.inf, math.nan, math.nan
    best: tuple[float, float, float, torch.Tensor] | None = None
    for _ in range(_MAX_LINESEARCH):
        f_t, gd_t, stop_t, g_t = evaluate(x + t * d, d)
        if not math.isfinite(f_t) or f_t > f0 + _C1 * t * gtd0 or (f_t >= f_lo and lo > 0):
            hi, f_hi, gd_hi = t, f_t, gd_t
        elif gd_t < _C2 * gtd0:
            lo, f_lo, gd_lo = t, f_t, gd_t
            best = (t, f_t, stop_t, g_t)
        else:
            return t, f_t, stop_t, g_t
        if math.isinf(hi):
            t *= 4.0
        else:
            width = hi - lo
            t = _cubic_min(lo, f_lo, gd_lo, hi, f_hi, gd_hi)
            t = min(max(t, lo + 0.1 * width), hi - 0.1 * width)
            if width <= 1e-12 * max(hi, 1.0):
                break
    return best  # a step that lowered the value, or None


def _cubic_min(a: float, fa: float, ga: float, b: float, fb: float, gb: float) -> float:
    """Minimiser of the cubic matching values and slopes at ``a`` and ``b`` (bisection if none)."""
    if not (math.isfinite(fb) and math.isfinite(gb)):
        return 0.5 * (a + b)
    d1 = ga + gb - 3.0 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if disc < 0:
        return 0.5 * (a + b)
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = gb - ga + 2.0 * d2
    if denom == 0:
        return 0.5 * (a + b)
    return b - (b - a) * (gb + d2 - d1) / denom
