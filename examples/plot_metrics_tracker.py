"""
Metrics during training, in your own loop
=========================================

This is nidl's ``MetricsCallback`` gallery example without a Lightning ``Trainer`` and without
downloads: scikit-learn's 8×8 digits stand in for MNIST. First a small CNN is trained with
cross-entropy while accuracy, F1, precision and recall are tracked; then a SimCLR-style encoder is
trained with a contrastive loss while alignment, uniformity and contrastive accuracy are tracked.
The curves come from the tracker's history in one call, instead of re-reading TensorBoard event
files.
"""

# %%
# Setup
# -----
# ``fabricmetrics.demo`` holds the small building blocks this example shares with the
# ``fabricmetrics demo`` command: the digits as 1×8×8 images, a small CNN, two random
# augmentations of a batch, and SimCLR's InfoNCE loss.

import os

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score, MulticlassPrecision, MulticlassRecall

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.demo import DigitsCNN, digits_datasets, info_nce, two_views
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger
from fabricmetrics.metrics import alignment_score, contrastive_accuracy_score, uniformity_score

QUICK = os.environ.get("FABRICMETRICS_EXAMPLE_QUICK") == "1"  # tiny settings for CI
OUT = os.environ.get("FABRICMETRICS_EXAMPLE_OUT", "runs/plot_metrics_tracker")
EPOCHS = 1 if QUICK else 8
torch.manual_seed(0)

train_ds, val_ds = digits_datasets()
train_loader = DataLoader(train_ds, batch_size=64, shuffle=True)
val_loader = DataLoader(val_ds, batch_size=128)
print(f"{len(train_ds)} training and {len(val_ds)} validation digits")

# %%
# Classification metrics in supervised learning
# ---------------------------------------------
# The metrics are torchmetrics objects. Each stage gets its own copy, so training and validation
# counts never mix. Accuracy is the share of correct predictions (``average="micro"``;
# torchmetrics' default, ``"macro"``, would be the mean of the per-class recalls); F1, precision
# and recall are macro averages, and share one update per step because their state is provably
# the same. The training step returns a dict, and the tracker finds ``preds``
# and ``target`` in it by name. Step-level values are logged every 5 steps, epoch-level values at
# every epoch end, all at the number of training steps so far.

model = DigitsCNN()
optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
tracker = MetricsTracker(
    {
        "acc1": MulticlassAccuracy(num_classes=10, average="micro"),
        "f1": MulticlassF1Score(num_classes=10, average="macro"),
        "precision": MulticlassPrecision(num_classes=10, average="macro"),
        "recall": MulticlassRecall(num_classes=10, average="macro"),
    },
    loggers=[TensorBoardLogger(OUT, name="supervised"), CSVLogger(OUT, name="supervised")],
    schedule={"train": Schedule(every_n_steps=5)},
)

with tracker:
    for epoch in range(1, EPOCHS + 1):
        model.train()
        with tracker.epoch("train", total=len(train_loader)):
            for x, y in train_loader:
                logits = model(x)
                loss = F.cross_entropy(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                tracker.step("train", {"loss": loss.detach(), "preds": logits.detach(), "target": y})
        model.eval()
        with torch.no_grad(), tracker.epoch("val") as val:
            for x, y in val_loader:
                tracker.step("val", {"preds": model(x), "target": y})
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.results.items()))

# %%
# The history holds every logged value as ``(step, value)`` pairs; one call draws them, one panel
# per metric with its train, validation and step-level curves together.

fig = tracker.history.plot(title="Supervised metrics during training", path=os.path.join(OUT, "supervised.png"))

# %%
# Self-supervised metrics during contrastive learning
# ---------------------------------------------------
# The SSL metrics take two batches of embeddings. Uniformity is not an average over batches, so
# on the validation set it is computed exactly, once, on the whole epoch (the default for stages
# other than ``"train"``); on the training set the per-batch values are averaged, weighted by batch
# size, as the model changes while they are measured anyway. ``needs`` says where each metric's
# arguments come from: uniformity takes both views stacked.

encoder = DigitsCNN(out_features=32)
optimizer = torch.optim.Adam(encoder.parameters(), lr=2e-3)
views = torch.Generator().manual_seed(1)
ssl_loader = DataLoader(train_ds, batch_size=128, shuffle=True, drop_last=True)
ssl_tracker = MetricsTracker(
    {"alignment": alignment_score, "uniformity": uniformity_score, "contrastive_acc": contrastive_accuracy_score},
    needs={
        "alignment": ["z1", "z2"],
        "uniformity": {"z": lambda out: torch.cat((out["z1"], out["z2"]))},
        "contrastive_acc": ["z1", "z2"],
    },
    loggers=[TensorBoardLogger(OUT, name="ssl"), CSVLogger(OUT, name="ssl")],
    schedule={"train": Schedule(every_n_steps=5, per_step=True)},
)

with ssl_tracker:
    for epoch in range(1, EPOCHS + 1):
        encoder.train()
        with ssl_tracker.epoch("train", total=len(ssl_loader)):
            for x, _ in ssl_loader:
                z1, z2 = (encoder(v) for v in two_views(x, views))
                loss = info_nce(z1, z2)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                ssl_tracker.step("train", {"z1": z1.detach(), "z2": z2.detach()})
        encoder.eval()
        with torch.no_grad(), ssl_tracker.epoch("val") as val:
            for x, _ in val_loader:
                z1, z2 = (encoder(v) for v in two_views(x, views))
                ssl_tracker.step("val", {"z1": z1, "z2": z2})
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in val.results.items()))

# %%
# Alignment falls (the two views of a digit move together), uniformity falls (the embeddings
# spread over the sphere), and the contrastive accuracy rises.

fig = ssl_tracker.history.plot(
    keys=["*/val", "*/train"], title="Self-supervised metrics during training", path=os.path.join(OUT, "ssl.png")
)
print(f"logs in {OUT}/supervised and {OUT}/ssl; figures in {OUT}: supervised.png, ssl.png")
