"""
Exact metrics on several processes with Lightning Fabric
========================================================

Trains a small MLP on scikit-learn's digits with two CPU processes (``Fabric(accelerator="cpu",
devices=2)``). ``fabric.setup_dataloaders`` shards the data with a ``DistributedSampler``, which pads
the validation set (360 samples are not always a multiple of the number of ranks: here it is
checked with 359). Passing ``num_samples`` to ``tracker.epoch`` (the number of samples the sampler
draws from over all ranks: here the data set's length) keeps the padding out of every metric, so
the numbers printed are exactly those of one process on the same data.

Run it with ``python examples/fabric_ddp.py`` (``--devices 1`` to compare with one process,
``--epochs N``, ``--out DIR``).

What ``python examples/fabric_ddp.py`` prints (on a CPU; Fabric's lines about starting the
processes left out)::

    [rank: 0] Seed set to 0
    [rank: 1] Seed set to 0
    epoch 1: acc/val=0.7827, f1/val=0.7554, f1_weighted/val=0.7476, loss/val=1.2134
    epoch 2: acc/val=0.8830, f1/val=0.8612, f1_weighted/val=0.8736, loss/val=0.3732
    epoch 3: acc/val=0.9331, f1/val=0.9299, f1_weighted/val=0.9339, loss/val=0.2281
    rank 0 scored 180 of the 359 validation samples
    one process, whole set: acc=0.9331, f1_weighted=0.9339 (the tracker's values above are the same)
    logs in runs/fabric_ddp/digits/version_0
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import torch
from lightning_fabric import Fabric
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger


def digits(n_val: int) -> tuple[TensorDataset, TensorDataset]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    val, train = perm[:n_val], perm[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


def run(fabric: Fabric, args: argparse.Namespace) -> None:
    train_ds, val_ds = digits(n_val=359)
    train_loader, val_loader = fabric.setup_dataloaders(
        DataLoader(train_ds, batch_size=64, shuffle=True), DataLoader(val_ds, batch_size=64)
    )
    fabric.seed_everything(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    model, optimizer = fabric.setup(model, torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9))

    tracker = MetricsTracker(
        {
            "acc": MulticlassAccuracy(num_classes=10, average="micro"),
            "f1": MulticlassF1Score(num_classes=10, average="macro"),
            "f1_weighted": partial(f1_score, average="weighted", zero_division=0),  # exact on val
            "loss": lambda loss: loss.mean(),  # train: per-batch losses averaged; val: per-sample losses
        },
        needs={"f1_weighted": ["target", partial(_argmax, key="preds")]},
        fabric=fabric,  # its collectives and its loggers
        schedule={"train": Schedule(every_n_steps=10, per_step=True)},  # val: exact (the default)
    )
    with tracker:
        for epoch in range(1, args.epochs + 1):
            model.train()
            with tracker.epoch("train", num_samples=len(train_ds)):
                for x, y in train_loader:
                    logits = model(x)
                    loss = nn.functional.cross_entropy(logits, y)
                    optimizer.zero_grad()
                    fabric.backward(loss)
                    optimizer.step()
                    tracker.step("train", {"preds": logits.detach(), "target": y, "loss": loss.detach()})
            model.eval()
            with torch.no_grad(), tracker.epoch("val", num_samples=len(val_ds)) as val:
                for x, y in val_loader:
                    logits = model(x)
                    loss = nn.functional.cross_entropy(logits, y, reduction="none")  # one per sample
                    tracker.step("val", {"preds": logits, "target": y, "loss": loss})
            fabric.print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in val.results.items()))
    # The same model scored by one process on the whole validation set, without fabricmetrics:
    with torch.no_grad():
        x, y = val_ds.tensors
        pred = model(x.to(fabric.device)).argmax(1).cpu()
    fabric.print(f"rank {fabric.global_rank} scored {val.samples} of the {len(val_ds)} validation samples")
    fabric.print(
        f"one process, whole set: acc={(pred == y).float().mean():.4f}, "
        f"f1_weighted={f1_score(y, pred, average='weighted'):.4f} (the tracker's values above are the same)"
    )
    fabric.print(f"logs in {fabric.loggers[0].log_dir}")
    if torch.distributed.is_initialized():  # leave together and close the process group cleanly
        fabric.barrier()
        torch.distributed.destroy_process_group()


def _argmax(outputs: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return outputs[key].argmax(dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="fabricmetrics with Lightning Fabric on CPU processes")
    parser.add_argument("--devices", type=int, default=2)
    quick = os.environ.get("FABRICMETRICS_EXAMPLE_QUICK") == "1"  # tiny settings for CI
    parser.add_argument("--epochs", type=int, default=1 if quick else 3)
    parser.add_argument("--out", default=os.environ.get("FABRICMETRICS_EXAMPLE_OUT", "runs/fabric_ddp"))
    args = parser.parse_args()
    loggers = [TensorBoardLogger(args.out, name="digits"), CSVLogger(args.out, name="digits")]
    fabric = Fabric(accelerator="cpu", devices=args.devices, loggers=loggers)
    fabric.launch(run, args)


if __name__ == "__main__":
    main()
