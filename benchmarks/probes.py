"""Fast torch probes against scikit-learn: fit + predict time and accuracy, side by side (issue 8).

Synthetic embeddings with a fixed seed, 10 classes, 80/20 split, in two regimes:

* ``easy``: isotropic Gaussian classes, well separated (about 0.99 linear accuracy);
* ``realistic``: a 16-d class structure (Gaussian classes in 16 latent dimensions) embedded in D
  dimensions by a random linear map, plus isotropic noise (about 0.9 linear accuracy), where
  scikit-learn's L-BFGS needs 100+ iterations.

Compared, in one run and interleaved (each figure is the best of ``--repeats`` runs):
``LinearProbe()`` vs ``LogisticRegression(max_iter=200)``, and ``KNNProbe(k=20)`` (cosine, DINO's
weighted votes) and ``KNNProbe(k=20, metric="euclidean", temperature=None)`` (scikit-learn's rule)
vs ``KNeighborsClassifier(n_neighbors=20)``. Next to each probe, its floor measured in the same run:

* kNN: the bare ``X_test @ X_train.T`` + ``topk`` over query chunks of the probe's own size, into
  one reused buffer (normalised inputs given);
* linear: one pass ``X @ W.T`` + ``G.T @ X`` over the training embeddings, times the number of such
  passes the probe made (``n_evals_``).

Every timed call starts after a pause of ``PAUSE_S``, so that the thread pool of the previous
contender (OpenBLAS's for scikit-learn, OpenMP's for torch) has stopped spinning: without it, the
call that follows scikit-learn runs up to 3x slower on 2 cores, whichever library it is.

The Euclidean and cosine ``KNNProbe`` do the same matrix product; the table gives the median over
rounds of their per-round time ratio, which a busy machine disturbs less than the times themselves.
The probes are timed on non-centred embeddings too (``--offset``, added to every feature), where
they must give the same results (they compute on centred rows).

Usage::

    python benchmarks/probes.py            # N in {10k, 50k}, D in {64, 512}, 3 repeats
    python benchmarks/probes.py --quick    # a small smoke run
    python benchmarks/probes.py --regimes realistic --sizes 50000x512
    python benchmarks/probes.py --sizes 50000x512 --regimes realistic --probes-only --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier

from fabricmetrics.probing import KNNProbe, LinearProbe

N_CLASSES, LATENT_DIM, K = 10, 16, 20
PAUSE_S = 0.5


def make_embeddings(regime: str, n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Float32 embeddings and integer labels of one regime."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    if regime == "easy":
        means = rng.normal(size=(N_CLASSES, d)) * (4.3 / np.sqrt(d))
        return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y
    means = rng.normal(size=(N_CLASSES, LATENT_DIM))
    latent = means[y] + rng.normal(size=(n, LATENT_DIM))
    mixing = rng.normal(size=(LATENT_DIM, d)) / np.sqrt(LATENT_DIM)
    return (latent @ mixing + rng.normal(size=(n, d))).astype(np.float32), y


def best_time(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Smallest wall time of ``repeats`` back-to-back calls after a pause, and the last result."""
    best, result = float("inf"), None
    time.sleep(PAUSE_S)
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def knn_floor(train: torch.Tensor, test: torch.Tensor, block: torch.Tensor) -> None:
    """The work no exact kNN can skip: every similarity, and a top-k per query."""
    for start in range(0, test.shape[0], block.shape[0]):
        queries = test[start : start + block.shape[0]]
        torch.mm(queries, train.t(), out=block[: queries.shape[0]]).topk(K, dim=1)


def linear_pass(X: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> None:
    """One pass of what an evaluation of the linear probe must do: logits and the data gradient."""
    torch.addmm(weight[:, 0], X, weight.t())
    grad.t() @ X


class Config:
    """One (regime, N, D) configuration: its data, its contenders, and their best times so far."""

    def __init__(self, regime: str, n: int, d: int, offset: float = 0.0, probes_only: bool = False) -> None:
        self.regime, self.n, self.d = regime, n, d
        X, y = make_embeddings(regime, n, d)
        X += np.float32(offset)
        n_train = int(0.8 * n)
        self.X_train, self.y_train, self.X_test, self.y_test = X[:n_train], y[:n_train], X[n_train:], y[n_train:]
        train_t, test_t = torch.from_numpy(self.X_train), torch.from_numpy(self.X_test)
        unit_train = torch.nn.functional.normalize(train_t, dim=1)
        unit_test = torch.nn.functional.normalize(test_t, dim=1)
        self.chunk = min(int(KNNProbe().memory_budget_mb * 2**20) // (n_train * 4), len(self.X_test))
        block = torch.empty(self.chunk, n_train)
        weight, grad = torch.randn(N_CLASSES, d), torch.randn(n_train, N_CLASSES)
        self.contenders: dict[str, Callable[[], Any]] = {
            "LogisticRegression": lambda: self.fit_predict(LogisticRegression(max_iter=200)),
            "LinearProbe": lambda: self.fit_predict(LinearProbe()),
            "KNeighborsClassifier": lambda: self.fit_predict(KNeighborsClassifier(n_neighbors=K)),
            "KNNProbe": lambda: self.fit_predict(KNNProbe(k=K)),
            "KNNProbe euclidean": lambda: self.fit_predict(KNNProbe(k=K, metric="euclidean", temperature=None)),
            "knn floor": lambda: knn_floor(unit_train, unit_test, block),
            "linear pass": lambda: linear_pass(train_t, weight, grad),
        }
        if probes_only:
            for name in ("LogisticRegression", "KNeighborsClassifier"):
                del self.contenders[name]
        self.times = dict.fromkeys(self.contenders, float("inf"))
        self.rounds: dict[str, list[float]] = {name: [] for name in self.contenders}
        self.results: dict[str, Any] = {}

    def fit_predict(self, model: Any) -> tuple[Any, float]:
        """Fit on the train split, predict the test split: the timed work; returns the accuracy too."""
        model.fit(self.X_train, self.y_train)
        return model, float(np.mean(model.predict(self.X_test) == self.y_test))

    def run_once(self) -> None:
        """Time every contender once (the linear pass 5 times), keeping the best times."""
        for name, fn in self.contenders.items():
            elapsed, self.results[name] = best_time(fn, 5 if name == "linear pass" else 1)
            self.times[name] = min(self.times[name], elapsed)
            self.rounds[name].append(elapsed)

    def ratio(self, name: str, reference: str) -> float:
        """Median over rounds of ``name``'s time divided by ``reference``'s in the same round."""
        return statistics.median(a / b for a, b in zip(self.rounds[name], self.rounds[reference], strict=True))

    def rows(self) -> list[dict[str, Any]]:
        """Table rows: times, accuracies, speed-ups over scikit-learn, floors."""
        times, results = self.times, self.results
        probe, probe_acc = results["LinearProbe"]
        euclidean_ratio = self.ratio("KNNProbe euclidean", "KNNProbe")
        rows = [
            {"probe": "LinearProbe", "time": times["LinearProbe"], "acc": probe_acc,
             "floor": probe.n_evals_ * times["linear pass"],
             "note": f"{probe.n_iter_} iterations, {probe.n_evals_} passes of {1e3 * times['linear pass']:.1f} ms"},
            {"probe": "KNNProbe", "time": times["KNNProbe"], "acc": results["KNNProbe"][1],
             "floor": times["knn floor"], "note": f"cosine, T=0.07, chunks of {self.chunk} queries"},
            {"probe": "KNNProbe euclidean", "time": times["KNNProbe euclidean"],
             "acc": results["KNNProbe euclidean"][1], "floor": times["knn floor"],
             "note": f"euclidean, uniform votes; {euclidean_ratio:.2f}x the cosine probe (median of rounds)"},
        ]  # fmt: skip
        if "LogisticRegression" in results:
            lr, lr_acc = results["LogisticRegression"]
            rows[0]["speedup"] = times["LogisticRegression"] / times["LinearProbe"]
            rows.insert(0, {"probe": "LogisticRegression", "time": times["LogisticRegression"], "acc": lr_acc,
                            "note": f"{int(lr.n_iter_[0])} iterations"})  # fmt: skip
        if "KNeighborsClassifier" in results:
            for row in rows[-2:]:
                row["speedup"] = times["KNeighborsClassifier"] / row["time"]
            knc_acc = results["KNeighborsClassifier"][1]
            rows.insert(-2, {"probe": "KNeighborsClassifier", "time": times["KNeighborsClassifier"], "acc": knc_acc,
                             "note": "euclidean, uniform votes"})  # fmt: skip
        return [{"regime": self.regime, "n": self.n, "d": self.d, **row} for row in rows]


def format_row(row: dict[str, Any]) -> str:
    speedup = f"{row['speedup']:.1f}x" if "speedup" in row else ""
    floor = f"{row['floor']:.2f}" if "floor" in row else ""
    ratio = f"{row['time'] / row['floor']:.2f}" if "floor" in row else ""
    return (
        f"| {row['regime']} | {row['n'] // 1000}k | {row['d']} | {row['probe']} | {row['time']:.2f} | "
        f"{100 * row['acc']:.2f} | {speedup} | {floor} | {ratio} | {row['note']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small configuration, one repeat")
    parser.add_argument("--repeats", type=int, default=3, help="runs per contender; the best counts")
    parser.add_argument("--regimes", nargs="+", default=["easy", "realistic"], choices=["easy", "realistic"])
    parser.add_argument("--sizes", nargs="+", default=None, help="N x D pairs such as 50000x512")
    parser.add_argument("--offset", type=float, default=0.0, help="added to every feature (non-centred data)")
    parser.add_argument("--probes-only", action="store_true", help="leave scikit-learn out (probes and floors)")
    args = parser.parse_args()
    sizes = [(n, d) for n in (10_000, 50_000) for d in (64, 512)]
    if args.sizes:
        sizes = [(int(n), int(d)) for n, d in (size.split("x") for size in args.sizes)]
    if args.quick:
        sizes = [(2000, 32)]
    repeats = 1 if args.quick else args.repeats
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), numpy {np.__version__}, load average {os.getloadavg()[0]:.2f}, "
        f"offset {args.offset:g}"
    )
    configs = [Config(regime, n, d, args.offset, args.probes_only) for regime in args.regimes for n, d in sizes]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning at max_iter=200 is expected
        for _ in range(repeats):  # every configuration once per round: a disturbance does not hit one alone
            for config in configs:
                config.run_once()
    print("| regime | N | D | probe | time (s) | accuracy (%) | speed-up | floor (s) | time / floor | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        for row in config.rows():
            print(format_row(row))
    print(f"# load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
