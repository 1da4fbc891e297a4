"""
Exact metrics under ``torchrun`` without Fabric
===============================================

The same job as ``fabric_ddp.py`` in plain PyTorch: ``torchrun`` starts the processes, the script
initialises ``torch.distributed`` itself, shards the data with a ``DistributedSampler`` and wraps
the model in ``DistributedDataParallel``. The tracker needs no ``fabric``: it finds the initialised
process group when an epoch ends. Run it with::

    torchrun --nproc-per-node 2 examples/torchrun_ddp.py

(``python -m torch.distributed.run`` is the same command; ``--epochs N``, ``--out DIR``.) Run as
plain ``python``, it uses one process.

What ``torchrun --nproc-per-node 2 examples/torchrun_ddp.py`` prints (on a CPU; ``torchrun``'s notice about
``OMP_NUM_THREADS`` left out)::

    epoch 1: acc/val=0.7577, f1_macro/val=0.7085, loss/val=1.2073
    epoch 2: acc/val=0.8719, f1_macro/val=0.8696, loss/val=0.4012
    epoch 3: acc/val=0.8914, f1_macro/val=0.8835, loss/val=0.2951
    logs in runs/torchrun_ddp/digits/version_0
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from sklearn.metrics import f1_score
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger


def main() -> None:
    parser = argparse.ArgumentParser(description="fabricmetrics under torchrun (CPU, gloo)")
    quick = os.environ.get("FABRICMETRICS_EXAMPLE_QUICK") == "1"  # tiny settings for CI
    parser.add_argument("--epochs", type=int, default=1 if quick else 3)
    parser.add_argument("--out", default=os.environ.get("FABRICMETRICS_EXAMPLE_OUT", "runs/torchrun_ddp"))
    args = parser.parse_args()

    distributed = "RANK" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train_ds, val_ds = TensorDataset(x[perm[359:]], y[perm[359:]]), TensorDataset(x[perm[:359]], y[perm[:359]])
    train_sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, shuffle=True, seed=0)
    val_sampler = DistributedSampler(val_ds, num_replicas=world, rank=rank, shuffle=False)
    train_loader = DataLoader(train_ds, batch_size=64, sampler=train_sampler)
    val_loader = DataLoader(val_ds, batch_size=64, sampler=val_sampler)

    torch.manual_seed(0)
    model: nn.Module = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    if distributed:
        model = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)

    tracker = MetricsTracker(
        {
            "acc": MulticlassAccuracy(num_classes=10, average="micro"),
            "f1_macro": partial(f1_score, average="macro", zero_division=0),
            "loss": lambda loss: loss.mean(),
        },
        needs={"f1_macro": ["target", lambda out: out["preds"].argmax(1)]},
        loggers=[TensorBoardLogger(args.out, name="digits"), CSVLogger(args.out, name="digits")],
        schedule={"train": Schedule(every_n_steps=10, per_step=True)},
    )
    with tracker:
        for epoch in range(1, args.epochs + 1):
            train_sampler.set_epoch(epoch)
            model.train()
            with tracker.epoch("train", num_samples=len(train_ds)):
                for xb, yb in train_loader:
                    logits = model(xb)
                    loss = nn.functional.cross_entropy(logits, yb)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    tracker.step("train", {"preds": logits.detach(), "target": yb, "loss": loss.detach()})
            model.eval()
            with torch.no_grad(), tracker.epoch("val", num_samples=len(val_ds)) as val:
                for xb, yb in val_loader:
                    logits = model(xb)
                    loss = nn.functional.cross_entropy(logits, yb, reduction="none")
                    tracker.step("val", {"preds": logits, "target": yb, "loss": loss})
            if rank == 0:
                print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4f}" for k, v in val.results.items()), flush=True)
    if rank == 0:
        print(f"logs in {tracker.loggers[0].log_dir}", flush=True)
    if distributed:
        dist.barrier()  # leave together: no rank tears the group down under another
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
