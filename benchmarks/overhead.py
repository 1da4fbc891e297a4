"""What the tracker costs in a training loop, measured side by side (interleaved) in one run.

Part 1: four multiclass torchmetrics (accuracy, F1, precision, recall; batch 256, 10 classes, 200
steps plus the epoch's compute) updated by hand in a bare loop vs driven by ``MetricsTracker`` with
the default ``"train"`` schedule (step values every 50 steps). The tracker's shared update (metrics
whose update provably produces the same state are updated once) is measured on and off.

Part 2: one epoch of a small MLP on ``sklearn.datasets.load_digits`` (batch 256) without metrics,
with a hand-written ``MetricCollection.update`` loop, and with the tracker (default schedule).

Usage: ``python benchmarks/overhead.py [--repeats 15]``. Prints median times and median ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from sklearn.datasets import load_digits
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from fabricmetrics import MetricsTracker


def four_metrics() -> dict[str, torch.nn.Module]:
    return {
        "acc": MulticlassAccuracy(num_classes=10),
        "f1": MulticlassF1Score(num_classes=10),
        "precision": MulticlassPrecision(num_classes=10),
        "recall": MulticlassRecall(num_classes=10),
    }


def interleave(variants: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Run every variant once per round, rounds repeated; returns the times of each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def report(title: str, times: dict[str, list[float]], baseline: str) -> None:
    print(f"\n{title}")
    print(f"{'variant':<46} {'median':>10} {'ratio to ' + baseline:>22}")
    for name, ts in times.items():
        ratios = [t / b for t, b in zip(ts, times[baseline], strict=True)]
        print(f"{name:<46} {statistics.median(ts) * 1e3:>8.1f}ms {statistics.median(ratios):>22.3f}")


def part1(repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(256, 10, generator=g), torch.randint(0, 10, (256,), generator=g)) for _ in range(200)]
    bare_metrics = list(four_metrics().values())
    shared = MetricsTracker(four_metrics())
    unshared = MetricsTracker(four_metrics())
    unshared._signatures = {}  # benchmark only: turn the shared update off to see the tracker's own cost

    def bare() -> None:
        for preds, target in batches:
            for m in bare_metrics:
                m.update(preds, target)
        for m in bare_metrics:
            m.compute()
            m.reset()

    def tracked(tracker: MetricsTracker) -> Callable[[], None]:
        def run() -> None:
            with tracker.epoch("train"):
                for preds, target in batches:
                    tracker.step("train", {"preds": preds, "target": target})

        return run

    times = interleave(
        {
            "bare loop, 4 x update()": bare,
            "tracker (default schedule)": tracked(shared),
            "tracker, shared update off": tracked(unshared),
        },
        repeats,
    )
    report("Part 1: 4 torchmetrics, batch 256, 10 classes, 200 steps + compute", times, "bare loop, 4 x update()")


def part2(repeats: int) -> None:
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]

    def make_model() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def train_step(model: nn.Module, opt: torch.optim.Optimizer, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = model(xb)
        loss = nn.functional.cross_entropy(logits, yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return logits.detach()

    def no_metrics() -> Callable[[], None]:
        model, opt = make_model()

        def run() -> None:
            for xb, yb in batches:
                train_step(model, opt, xb, yb)

        return run

    def collection() -> Callable[[], None]:
        model, opt = make_model()
        metrics = MetricCollection(four_metrics())

        def run() -> None:
            for xb, yb in batches:
                metrics.update(train_step(model, opt, xb, yb), yb)
            metrics.compute()
            metrics.reset()

        return run

    def tracked() -> Callable[[], None]:
        model, opt = make_model()
        tracker = MetricsTracker(four_metrics())

        def run() -> None:
            with tracker.epoch("train"):
                for xb, yb in batches:
                    tracker.step("train", {"preds": train_step(model, opt, xb, yb), "target": yb})

        return run

    times = interleave(
        {
            "no metrics": no_metrics(),
            "MetricCollection.update loop": collection(),
            "tracker (default schedule)": tracked(),
        },
        repeats,
    )
    report(f"Part 2: MLP epoch on load_digits ({len(x)} samples, batch 256, {len(batches)} steps)", times, "no metrics")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    part1(args.repeats)
    part2(args.repeats * 4)


if __name__ == "__main__":
    main()
