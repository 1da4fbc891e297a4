"""``fabricmetrics demo``: a small supervised run and a small self-supervised run on scikit-learn's digits.

The building blocks (data, augmentations, model, contrastive loss) are public so that the examples
reuse them; :func:`run_demo` is what the command runs:

1. a small CNN trained with cross-entropy, tracking accuracy, F1, precision and recall (train every
   few steps and per epoch, validation per epoch);
2. a SimCLR-style encoder trained with InfoNCE on two augmented views of each digit, tracking
   alignment, uniformity and contrastive accuracy, with a logistic-regression probe of the
   encoder's embedding after every epoch and a t-SNE map of it (the digits' clusters forming).

Everything runs offline on one CPU core: about 25 s (of CPU time, so longer when other jobs share
the cores). Logs (TensorBoard + CSV) and PNGs of the curves are written under the output directory.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from fabricmetrics.loggers import CSVLogger, Logger, TensorBoardLogger
from fabricmetrics.metrics import alignment_score, contrastive_accuracy_score, uniformity_score
from fabricmetrics.probing import ProbingScheduler
from fabricmetrics.schedule import Schedule
from fabricmetrics.tracker import MetricsTracker

__all__ = ["DemoResult", "DigitsCNN", "digits_datasets", "info_nce", "run_demo", "two_views"]

LoggerKind = Literal["tensorboard", "csv", "mlflow"]


def digits_datasets(val_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's 1797 handwritten digits as 1×8×8 images in [0, 1], split into train and validation.

    Args:
        val_fraction: share of the samples held out.
        seed: seed of the split.

    Returns:
        ``(train, val)`` datasets of ``(image, label)``.

    Example:
        >>> train, val = digits_datasets()
        >>> len(train), len(val), tuple(train[0][0].shape)
        (1438, 359, (1, 8, 8))
    """
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = round(val_fraction * len(x))
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsCNN(nn.Module):
    """A small CNN for 8×8 digits: two 3×3 convolutions, a pooling, an embedding layer, a head.

    Args:
        out_features: size of the output (10 classes, or the projection size for SimCLR).
        embed_dim: size of the embedding before the head (what probes see in ``embed``).

    Example:
        >>> DigitsCNN()(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(self, out_features: int = 10, embed_dim: int = 64) -> None:
        """Build the layers."""
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, embed_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(embed_dim, out_features)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The embedding (input of the head)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (or projections)."""
        return self.head(self.features(x))


def two_views(x: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random augmentations of a batch of 8×8 digits: pixel dropout, contrast, noise.

    Args:
        x: images of shape ``(N, 1, 8, 8)`` in [0, 1].
        generator: source of randomness.

    Returns:
        Two augmented batches of the same shape.

    Example:
        >>> a, b = two_views(torch.ones(4, 1, 8, 8), torch.Generator().manual_seed(0))
        >>> a.shape == b.shape == (4, 1, 8, 8), bool((a != b).any())
        (True, True)
    """
    return _augment(x, generator), _augment(x, generator)


def _augment(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    keep = (torch.rand(x.shape, generator=generator) > 0.2).to(x.dtype)  # drop 20% of the pixels
    scale = 0.7 + 0.6 * torch.rand(x.shape[0], 1, 1, 1, generator=generator)  # contrast
    return (x * keep * scale + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1.5)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's NT-Xent loss: each view must pick its partner among the 2N − 1 other views.

    Args:
        z1: projections of the first views, ``(N, D)``.
        z2: projections of the second views, ``(N, D)``.
        temperature: softmax temperature.

    Returns:
        The mean loss.

    Example:
        >>> z = torch.eye(4)
        >>> bool(info_nce(z, z) < info_nce(z, z.flip(0)))
        True
    """
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = z1.shape[0]
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


@dataclass
class DemoResult:
    """Where the demo wrote its outputs, and its final values.

    Attributes:
        out: the output directory.
        pngs: the plots.
        log_dirs: the TensorBoard/CSV version folders.
        final: the last value of each logged key, per part.
    """

    out: Path
    pngs: list[Path]
    log_dirs: list[Path]
    final: dict[str, dict[str, float]]


def run_demo(
    out: str | os.PathLike[str] = "runs/demo",
    *,
    epochs: int = 10,
    progress: bool = True,
    loggers: Sequence[LoggerKind] = ("tensorboard", "csv"),
) -> DemoResult:
    """Run both parts of the demo and write logs and plots under ``out``.

    Args:
        out: output directory (created).
        epochs: epochs of each part (10 take about 25 s on an idle CPU core; 1 for a smoke test).
        progress: show the live progress display.
        loggers: where to log: TensorBoard and CSV files under ``out/<part>/version_0``, and/or an
            MLflow database ``out/mlflow.db`` (one run per part; needs ``fabricmetrics[mlflow]``).

    Returns:
        Where everything was written, and the final values.
    """
    out = Path(out)
    torch.manual_seed(0)
    train_ds, val_ds = digits_datasets()
    # Models this small run fastest on one thread; several thread pools (torch, BLAS, OpenMP) on a few
    # shared cores spin and wait, which took the demo from 25 s to 120 s of CPU time on a loaded machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            supervised = _supervised(out, train_ds, val_ds, epochs, progress, loggers)
            ssl = _self_supervised(out, train_ds, val_ds, epochs, progress, loggers)
    finally:
        torch.set_num_threads(threads)
    pngs = [out / "supervised.png", out / "ssl.png"]
    supervised.history.plot(title="Supervised CNN on digits", path=pngs[0])
    ssl.history.plot(title="SimCLR-style encoder on digits: SSL metrics and linear probe", path=pngs[1])
    maps = Path(ssl.loggers[0].log_dir or out) / "embedding_maps" / "embedding_maps.png"  # drawn by the probing
    pngs += [maps] if maps.is_file() else []
    log_dirs = [Path(lg.log_dir) for lg in (*supervised.loggers, *ssl.loggers) if lg.log_dir and lg.root_dir]
    final = {
        "supervised": {k: supervised.history.last(k) for k in supervised.history},
        "ssl": {k: ssl.history.last(k) for k in ssl.history},
    }
    return DemoResult(out=out, pngs=pngs, log_dirs=sorted(set(log_dirs)), final=final)


def _loggers(out: Path, name: str, kinds: Sequence[LoggerKind]) -> list[Logger]:
    loggers: list[Logger] = []
    if "tensorboard" in kinds:
        loggers.append(TensorBoardLogger(out, name=name, version=0))
    if "csv" in kinds:
        loggers.append(CSVLogger(out, name=name, version=0))
    if "mlflow" in kinds:
        from fabricmetrics.loggers import MLFlowLogger

        loggers.append(MLFlowLogger("fabricmetrics-demo", tracking_uri=mlflow_uri(out), run_name=name))
    return loggers


def mlflow_uri(out: str | os.PathLike[str]) -> str:
    """The MLflow tracking URI of the demo's database under ``out``: ``sqlite:///<out>/mlflow.db``."""
    return f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


def _supervised(
    out: Path, train_ds: TensorDataset, val_ds: TensorDataset, epochs: int, progress: bool, kinds: Sequence[LoggerKind]
) -> MetricsTracker:
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)
    val_loader = DataLoader(val_ds, batch_size=128)
    tracker = MetricsTracker(
        {
            "acc": MulticlassAccuracy(num_classes=10, average="micro"),  # the share of correct predictions
            "f1": MulticlassF1Score(num_classes=10, average="macro"),
            "precision": MulticlassPrecision(num_classes=10, average="macro"),
            "recall": MulticlassRecall(num_classes=10, average="macro"),
            "loss": lambda loss: loss.mean(),
        },
        loggers=_loggers(out, "supervised", kinds),
        schedule={"train": Schedule(every_n_steps=5, per_step=True)},
        progress=progress,
    )
    with tracker:
        for _ in range(epochs):
            model.train()
            with tracker.epoch("train", total=len(train_loader)):
                for x, y in train_loader:
                    logits = model(x)
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    tracker.step("train", {"preds": logits.detach(), "target": y, "loss": loss.detach()})
            model.eval()
            with torch.no_grad(), tracker.epoch("val", total=len(val_loader)):
                for x, y in val_loader:
                    logits = model(x)
                    tracker.step(
                        "val", {"preds": logits, "target": y, "loss": F.cross_entropy(logits, y, reduction="none")}
                    )
    return tracker


def _self_supervised(
    out: Path, train_ds: TensorDataset, val_ds: TensorDataset, epochs: int, progress: bool, kinds: Sequence[LoggerKind]
) -> MetricsTracker:
    model = DigitsCNN(out_features=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(1)
    ssl_loader = DataLoader(train_ds, batch_size=128, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=128)
    probe = ProbingScheduler(
        model,
        DataLoader(train_ds, batch_size=256),
        DataLoader(val_ds, batch_size=256),
        probe=LogisticRegression(max_iter=300),
        embed_fn=model.embed,
        maps="tsne",  # a t-SNE map of the embeddings after each probing, and TensorBoard's projector
    )
    tracker = MetricsTracker(
        {"alignment": alignment_score, "uniformity": uniformity_score, "contrastive_acc": contrastive_accuracy_score},
        needs={
            "uniformity": {"z": lambda out: torch.cat([out["z1"], out["z2"]])},
            "alignment": ["z1", "z2"],
            "contrastive_acc": ["z1", "z2"],
        },
        loggers=_loggers(out, "ssl", kinds),
        schedule={"train": Schedule(every_n_steps=5, per_step=True)},
        probes=[probe],
        progress=progress,
    )
    with tracker:
        for _ in range(epochs):
            model.train()
            with tracker.epoch("train", total=len(ssl_loader)):
                for x, _y in ssl_loader:
                    z1, z2 = (model(v) for v in two_views(x, generator))
                    loss = info_nce(z1, z2)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    tracker.step("train", {"z1": z1.detach(), "z2": z2.detach()})
            model.eval()
            with torch.no_grad(), tracker.epoch("val", total=len(val_loader)):
                for x, _y in val_loader:
                    z1, z2 = (model(v) for v in two_views(x, generator))
                    tracker.step("val", {"z1": z1, "z2": z2})
    return tracker


def main(out: str, epochs: int = 10, loggers: Sequence[LoggerKind] = ("tensorboard", "csv")) -> int:
    """What ``fabricmetrics demo`` runs: the demo, then what it found and where everything went.

    Args:
        out: output directory.
        epochs: epochs of each part.
        loggers: where to log (see :func:`run_demo`).

    Returns:
        The exit code (0).
    """
    start = time.perf_counter()
    result = run_demo(out, epochs=epochs, loggers=loggers)
    print(f"\nfabricmetrics demo finished in {time.perf_counter() - start:.0f} s.")
    for line in _headlines(result.final):
        print(f"  {line}")
    print("Plots:")
    for png in result.pngs:
        print(f"  {png}")
    if result.log_dirs:
        print("Logs, one folder per part (TensorBoard event files and metrics.csv):")
        for log_dir in result.log_dirs:
            print(f"  {log_dir}")
        print(f"Compare the parts in one figure:  fabricmetrics plot {result.out}")
    if "tensorboard" in loggers:
        print(f"Browse the logs in TensorBoard:  pip install tensorboard  &&  tensorboard --logdir {result.out}")
    if "mlflow" in loggers:
        print(f"Browse the MLflow runs:  mlflow ui --backend-store-uri {mlflow_uri(out)}")
    return 0


def _headlines(final: dict[str, dict[str, float]]) -> list[str]:
    """One line per part with the values worth remembering (the rest is in the logs and plots)."""
    lines = []
    sup = final.get("supervised", {})
    if "acc/val" in sup:
        loss = sup.get("loss/val", math.nan)
        lines.append(f"supervised CNN: validation accuracy {sup['acc/val']:.3f}, validation loss {loss:.3f}")
    ssl = final.get("ssl", {})
    probe = ssl.get("LogisticRegression/accuracy")
    if probe is not None:
        lines.append(
            f"SimCLR-style encoder: linear-probe accuracy {probe:.3f} on the validation digits "
            f"(contrastive accuracy {ssl.get('contrastive_acc/val', math.nan):.3f})"
        )
    return lines
