"""
A plain PyTorch loop, no Fabric
===============================

Regression on scikit-learn's diabetes data with an MLP, in a single process and without Lightning
Fabric: the tracker needs no launcher. It shows metrics of three kinds side by side (a torchmetrics
object, scikit-learn's ``r2_score`` computed exactly on the whole validation set, and
fabricmetrics' weighted ``pearson_r``), a value of your own logged with ``tracker.log``, and a
checkpoint that carries the tracker's state.

Run it with ``python examples/plain_pytorch.py`` (``--epochs N``, ``--out DIR``).

What ``python examples/plain_pytorch.py`` prints::

    epoch 1: mse/val=0.988, r2/val=0.092, pearson/val=0.679
    epoch 10: mse/val=0.455, r2/val=0.582, pearson/val=0.766
    epoch 20: mse/val=0.447, r2/val=0.589, pearson/val=0.771
    epoch 30: mse/val=0.445, r2/val=0.591, pearson/val=0.772
    epoch 40: mse/val=0.444, r2/val=0.592, pearson/val=0.773
    logs in runs/plain_pytorch/diabetes/version_0; checkpoint with the tracker's state: runs/plain_pytorch/last.pt
"""

from __future__ import annotations

import argparse
import os

import torch
from sklearn.datasets import load_diabetes
from sklearn.metrics import r2_score
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import MeanSquaredError

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.loggers import CSVLogger
from fabricmetrics.metrics import pearson_r


def main() -> None:
    quick = os.environ.get("FABRICMETRICS_EXAMPLE_QUICK") == "1"  # tiny settings for CI
    parser = argparse.ArgumentParser(description="fabricmetrics in a plain PyTorch loop")
    parser.add_argument("--epochs", type=int, default=3 if quick else 40)
    parser.add_argument("--out", default=os.environ.get("FABRICMETRICS_EXAMPLE_OUT", "runs/plain_pytorch"))
    args = parser.parse_args()
    out = args.out
    torch.manual_seed(0)
    x, y = load_diabetes(return_X_y=True, scaled=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor((y - y.mean()) / y.std(), dtype=torch.float32)
    perm = torch.randperm(len(x))
    train = TensorDataset(x[perm[:350]], y[perm[:350]])
    val = TensorDataset(x[perm[350:]], y[perm[350:]])

    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    tracker = MetricsTracker(
        {"mse": MeanSquaredError(), "r2": r2_score, "pearson": pearson_r},
        needs={"r2": ["target", "preds"], "pearson": ["target", "preds"]},  # scikit-learn order: y_true, y_pred
        loggers=[CSVLogger(out, name="diabetes")],
        schedule={"train": Schedule(every_n_steps=None, per_step=True)},
    )
    with tracker:
        for epoch in range(1, args.epochs + 1):
            model.train()
            with tracker.epoch("train"):
                for xb, yb in DataLoader(train, batch_size=32, shuffle=True):
                    pred = model(xb).squeeze(1)
                    loss = nn.functional.mse_loss(pred, yb)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    tracker.step("train", {"preds": pred.detach(), "target": yb})
            tracker.log({"lr": scheduler.get_last_lr()[0]})
            scheduler.step()
            model.eval()
            with torch.no_grad(), tracker.epoch("val") as result:
                for xb, yb in DataLoader(val, batch_size=64):
                    tracker.step("val", {"preds": model(xb).squeeze(1), "target": yb})
            if epoch == 1 or epoch % 10 == 0 or epoch == args.epochs:
                print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.3f}" for k, v in result.results.items()))
    checkpoint = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "tracker": tracker.state_dict()}
    torch.save(checkpoint, os.path.join(out, "last.pt"))
    print(f"logs in {tracker.loggers[0].log_dir}; checkpoint with the tracker's state: {os.path.join(out, 'last.pt')}")


if __name__ == "__main__":
    main()
