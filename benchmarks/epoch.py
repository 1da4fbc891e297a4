"""What metrics cost a whole training epoch, measured side by side (interleaved) in one run.

A small MLP (64 → 128 → 10, SGD) on ``sklearn.datasets.load_digits`` tiled to about 99,000 samples,
batch 256 (387 steps), four classification torchmetrics (micro accuracy, macro F1, macro precision,
macro recall; 10 classes):

- ``no metrics``: the training epoch alone;
- ``floor``: the training epoch plus a raw confusion-matrix update per step (argmax + ``bincount``
  into one integer tensor) and the four values computed from it at the end: the arithmetic that the
  metrics need, without any per-call overhead;
- ``MetricCollection.update``: a hand-written loop (compute groups on), then ``compute()``;
- ``tracker``: ``MetricsTracker`` with the default ``"train"`` schedule (step values every 50 steps);
- ``tracker, no step values``: the same with ``Schedule(every_n_steps=None)`` (epoch values only);
- ``tracker, coalescing off``: the default schedule with one ``update()`` per step and ``forward()``
  on the logged steps, as before coalesced updates (switched off for this benchmark only).

Each round runs every variant once, in an order rotated from round to round; the reported ratio is
the median over rounds of each variant's time divided by the ``no metrics`` time of the same round,
with the 10th and 90th percentiles of those ratios as the spread, and the median time the metrics add
per step. Times are this process's CPU
time by default (``--clock cpu``: steadier than elapsed time on a shared machine, and the same thing
with one thread on a CPU), elapsed time with ``--clock wall``. The machine's load average is printed
before and after.

Usage: ``python benchmarks/epoch.py [--rounds 30] [--threads 1] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

import fabricmetrics.bound as bound_module
from fabricmetrics import MetricsTracker, Schedule

NUM_CLASSES = 10
BATCH = 256
TILES = 55  # 55 × 1797 = 98,835 samples → 387 steps of 256


def four_metrics() -> dict[str, torch.nn.Module]:
    """Micro accuracy, macro F1, macro precision, macro recall."""
    return {
        "acc": MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
        "f1": MulticlassF1Score(num_classes=NUM_CLASSES, average="macro"),
        "precision": MulticlassPrecision(num_classes=NUM_CLASSES, average="macro"),
        "recall": MulticlassRecall(num_classes=NUM_CLASSES, average="macro"),
    }


def data(device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The tiled digits, split into batches already on ``device``."""
    digits = load_digits()
    x = (torch.tensor(digits.data, dtype=torch.float32) / 16.0).repeat(TILES, 1).to(device)
    y = torch.tensor(digits.target).repeat(TILES).to(device)
    return [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def make_model(device: torch.device) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES)).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    logits = model(xb)
    loss = nn.functional.cross_entropy(logits, yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return logits.detach()


def variants(batches: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> dict[str, Callable[[], None]]:
    """One closure per variant; each runs one epoch (own model, so every variant does the same work)."""

    def no_metrics() -> Callable[[], None]:
        model, opt = make_model(device)

        def run() -> None:
            for xb, yb in batches:
                train_step(model, opt, xb, yb)

        return run

    def floor() -> Callable[[], None]:
        model, opt = make_model(device)

        def run() -> None:
            confusion = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.long, device=device)
            for xb, yb in batches:
                preds = train_step(model, opt, xb, yb).argmax(dim=1)
                confusion += torch.bincount(yb * NUM_CLASSES + preds, minlength=NUM_CLASSES * NUM_CLASSES)
            cm = confusion.view(NUM_CLASSES, NUM_CLASSES).double()
            tp = cm.diagonal()
            precision, recall = tp / cm.sum(0), tp / cm.sum(1)
            f1 = 2 * precision * recall / (precision + recall)
            torch.stack([tp.sum() / cm.sum(), f1.nanmean(), precision.nanmean(), recall.nanmean()]).tolist()

        return run

    def collection() -> Callable[[], None]:
        model, opt = make_model(device)
        metrics = MetricCollection(four_metrics()).to(device)

        def run() -> None:
            for xb, yb in batches:
                metrics.update(train_step(model, opt, xb, yb), yb)
            {k: v.item() for k, v in metrics.compute().items()}
            metrics.reset()

        return run

    def tracked(schedule: dict[str, Schedule] | None = None, coalesce: bool = True) -> Callable[[], None]:
        model, opt = make_model(device)
        tracker = MetricsTracker(four_metrics(), schedule=schedule)
        if not coalesce:  # benchmark only: the stage's metrics are made with coalescing off
            saved = bound_module.eligible
            bound_module.eligible = lambda metric: False
            try:
                tracker._stage("train")
            finally:
                bound_module.eligible = saved

        def run() -> None:
            with tracker.epoch("train"):
                for xb, yb in batches:
                    tracker.step("train", {"preds": train_step(model, opt, xb, yb), "target": yb})

        return run

    return {
        "no metrics": no_metrics(),
        "floor: argmax + bincount": floor(),
        "MetricCollection.update": collection(),
        "tracker (default schedule)": tracked(),
        "tracker, no step values": tracked({"train": Schedule(every_n_steps=None)}),
        "tracker, coalescing off": tracked(coalesce=False),
    }


def timed(fn: Callable[[], None], device: torch.device, clock: Callable[[], float]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def interleave(
    runs: dict[str, Callable[[], None]], rounds: int, device: torch.device, clock: Callable[[], float]
) -> dict[str, list[float]]:
    """Every variant once per round, the order rotated each round; returns the times of each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for name in names:  # warm-up
        runs[name]()
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name], device, clock))
    return times


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(times: dict[str, list[float]], baseline: str, steps: int) -> None:
    """Median time, median ratio to ``baseline`` with its 10th/90th percentiles, and the added µs per step."""
    print(f"{'variant':<30} {'median':>10} {'ratio':>7} {'p10':>7} {'p90':>7} {'added/step':>11}")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[baseline], strict=True)]
        added = [(t - b) / steps * 1e6 for t, b in zip(ts, times[baseline], strict=True)]
        print(
            f"{name:<30} {statistics.median(ts) * 1e3:>8.1f}ms {statistics.median(ratios):>7.3f} "
            f"{quantile(ratios, 0.1):>7.3f} {quantile(ratios, 0.9):>7.3f} {statistics.median(added):>9.1f}us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="cpu: this process's CPU time (steadier on a shared machine; with one thread on a CPU device); "
        "wall: elapsed time (use it on a GPU, where the work is not this process's CPU time)",
    )
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches = data(device)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, "
        f"{sum(len(y) for _, y in batches)} samples, {len(batches)} steps of {BATCH}, load {os.getloadavg()[0]:.2f}"
    )
    times = interleave(variants(batches, device), args.rounds, device, clock)
    report(times, "no metrics", len(batches))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
