"""
Probing a representation while it trains, in a plain PyTorch loop
=================================================================

This example watches **what an encoder learns while it trains without labels** by *probing* it:
between epochs, a standard scikit-learn model (here a logistic regression) is fitted on the
encoder's embeddings of a labelled set and scored on a held-out set. The probe's score says how
much of a concept (the digit's class, a subject's age or sex) the representation holds, linearly.

Probes were introduced by Alain & Bengio [1]_ to look inside the layers of a network, and are the
standard way to evaluate self-supervised encoders (SimCLR, Barlow Twins, DINO): linear and
k-nearest-neighbour probes on the output representation.

It reproduces nidl's *model probing* gallery example without a Lightning ``Trainer``: a plain
PyTorch loop, :class:`~fabricmetrics.MetricsTracker` for the metrics and
:class:`~fabricmetrics.ProbingScheduler` for the probes, on data that ships with scikit-learn (so
it runs offline, in about a minute on two CPU cores).

.. [1] Guillaume Alain and Yoshua Bengio, *Understanding intermediate layers using linear
       classifier probes*, ICLR 2017 Workshop.
"""

# %%
# Setup
# -----
# ``FABRICMETRICS_EXAMPLE_QUICK=1`` shrinks everything (the CI smoke test);
# ``FABRICMETRICS_EXAMPLE_OUT`` is where the logs and figures go.

import math
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # draw to files; sphinx-gallery collects the figures itself

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import train_test_split
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabricmetrics import MetricsTracker, ProbingScheduler, Schedule
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger
from fabricmetrics.metrics import alignment_score, uniformity_score
from fabricmetrics.probing import EmbeddingMaps, plot_embedding_maps

QUICK = os.environ.get("FABRICMETRICS_EXAMPLE_QUICK") == "1"
OUT = Path(os.environ.get("FABRICMETRICS_EXAMPLE_OUT", "runs/plot_model_probing"))
EPOCHS = 2 if QUICK else 25
BATCH_SIZE = 128
# Models this small run fastest on one thread, and then other jobs on a shared machine do not slow
# them down (several BLAS/OpenMP thread pools competing for few cores spin and wait).
torch.set_num_threads(1)
threadpool_limits(1)
torch.manual_seed(0)
start = time.perf_counter()

# %%
# Self-supervised learning on handwritten digits
# ----------------------------------------------
# ``load_digits`` holds 1797 grey 8×8 images of the digits 0–9. The encoder never sees a label:
# it learns by contrast (SimCLR), pulling together two randomly augmented *views* of each image
# and pushing apart the views of different images. The labels only serve the probe.

images, labels = load_digits(return_X_y=True)
images = torch.tensor(images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
labels = torch.tensor(labels)
train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.33, stratify=labels, random_state=0)
if QUICK:
    train_idx, test_idx = train_idx[:300], test_idx[:150]

# Labelled loaders for the probe, and an unlabelled one for training.
train_xy = DataLoader(TensorDataset(images[train_idx], labels[train_idx]), batch_size=256)
test_xy = DataLoader(TensorDataset(images[test_idx], labels[test_idx]), batch_size=256)
train_ssl = DataLoader(TensorDataset(images[train_idx]), batch_size=BATCH_SIZE, shuffle=True, drop_last=True)

# %%
# Augmentations suited to tiny images: a small random affine transform (shift, rotation, scale),
# random masking of pixels, and Gaussian noise — applied to a whole batch at once.


def augment(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    angle = (torch.rand(n) - 0.5) * math.radians(30)
    scale = 1.0 + (torch.rand(n) - 0.5) * 0.2
    shift = (torch.rand(n, 2) - 0.5) * 0.5  # up to ±1 pixel (the image spans [-1, 1])
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = scale * torch.cos(angle), -scale * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = scale * torch.sin(angle), scale * torch.cos(angle)
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)
    x = x * (torch.rand_like(x) > 0.2)  # mask 20 % of the pixels
    return x + 0.1 * torch.randn_like(x)


# %%
# The encoder is a small convolutional network with a 32-d output; SimCLR trains it through a
# projection head, and the probe looks at the encoder's output. The InfoNCE (NT-Xent) loss
# treats the other view of each image as the positive among the ``2 × batch`` views.


class Encoder(nn.Module):
    """Two convolutions and two linear layers: 8×8 image → ``latent_size`` embedding."""

    def __init__(self, latent_size: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 128)
        self.fc2 = nn.Linear(128, latent_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of images."""
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(-torch.inf)  # a view is not its own positive
    n = z1.shape[0]
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(similarity, positives)


encoder = Encoder()
head = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
optimizer = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-3, weight_decay=1e-4)

# %%
# Probing every epoch
# -------------------
# The :class:`~fabricmetrics.ProbingScheduler` embeds both labelled loaders with the encoder (in
# eval mode, without autograd), fits a fresh ``LogisticRegression`` on the train embeddings and
# scores it on the test embeddings: ``accuracy``, ``balanced_accuracy``, ``f1_weighted``,
# ``f1_macro``, ``precision_macro`` and ``recall_macro``, logged as ``LogisticRegression/<metric>``.
# Given to the tracker, it runs at the end of every train epoch and logs at the tracker's
# global step, next to the training metrics (the loss, and the alignment and uniformity of the
# two views' embeddings).

probe = ProbingScheduler(
    encoder,
    train_xy,
    test_xy,
    probe=LogisticRegression(max_iter=1000),
    every_n_epochs=1,
    maps=EmbeddingMaps("tsne", max_points=300),  # a map of the test embeddings at each probing
)
tracker = MetricsTracker(
    {"loss": lambda loss: loss, "alignment": alignment_score, "uniformity": uniformity_score},
    needs={"uniformity": ["z1"]},
    loggers=[CSVLogger(OUT, name="digits"), TensorBoardLogger(OUT, name="digits")],
    schedule={"train": Schedule(every_n_steps=None, every_n_epochs=1, per_step=True)},
    probes=[probe],
)

with tracker:
    # the untrained encoder, as a baseline (its map is epoch 0)
    tracker.log(probe.run(epoch=0, step=0, loggers=tracker.loggers), step=0)
    for epoch in range(1, EPOCHS + 1):
        with tracker.epoch("train", total=len(train_ssl)):
            for (x,) in train_ssl:
                z1, z2 = encoder(augment(x)), encoder(augment(x))
                loss = info_nce(head(z1), head(z2))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                tracker.step("train", {"loss": loss.detach(), "z1": z1.detach(), "z2": z2.detach()}, batch_size=len(x))
        print(f"epoch {epoch}: probe accuracy {tracker.history.last('LogisticRegression/accuracy'):.3f}")

# %%
# The probe's scores rise as the encoder trains, from about 0.6 accuracy for the untrained encoder
# to nearly 0.9 after 25 epochs: without seeing a label, the representation makes the digits more
# and more linearly separable.

fig = tracker.history.plot(
    keys=["LogisticRegression/accuracy", "LogisticRegression/f1_macro", "*/train"],
    title=f"Logistic-regression probe during SimCLR training (batch size {BATCH_SIZE})",
    path=OUT / "digits_probe.png",
)
plt.show()
accuracy = [value for _, value in tracker.history["LogisticRegression/accuracy"]]
print(f"probe accuracy: {accuracy[0]:.3f} untrained → {accuracy[-1]:.3f} after {EPOCHS} epochs")

# %%
# Maps of the embedding space
# ---------------------------
# With ``maps=``, every probing also draws a 2-D map (here t-SNE; PCA by default) of a seeded
# subsample of the test embeddings, coloured by the digit: a PNG per probing in the run's
# ``embedding_maps`` folder, the same figure in TensorBoard's *Images* tab, and the subsample in
# TensorBoard's *Projector*. :func:`~fabricmetrics.probing.plot_embedding_maps` puts the probings
# side by side (``fabricmetrics plot`` draws it too): the digits' clusters form as the encoder trains.

fig = plot_embedding_maps(tracker.loggers[0].log_dir, OUT / "digits_embedding_maps.png")
plt.show()

# %%
# Multitask probing: age and sex from other measurements
# ------------------------------------------------------
# One scheduler can probe several targets at once, a regression and a classification alike: with
# a dict of probes, the ``i``-th probe is fitted on target column ``i`` and logged as
# ``<name>/<metric>`` (regressors get ``MAE``, ``MedAE``, ``RMSE``, ``MSE``, ``R2``, ``PCC`` and
# ``EVar``); a list of probes is logged as ``task{i}/<metric>``.
#
# nidl shows this on brain volumes (OpenBHB); here, on scikit-learn's diabetes data: the encoder
# is trained by contrast on eight measurements (body-mass index, blood pressure and six blood
# serum values) and probed for the two it never sees, **age** (``Ridge``) and **sex**
# (``LogisticRegression``). Augmentations for tabular data: random masking and Gaussian noise.

diabetes = load_diabetes(scaled=False)
features = torch.tensor(diabetes.data[:, 2:], dtype=torch.float32)
features = (features - features.mean(0)) / features.std(0)
targets = torch.tensor(diabetes.data[:, :2], dtype=torch.float32)  # age (years), sex (1 or 2)
train_idx, test_idx = train_test_split(np.arange(len(targets)), test_size=0.3, random_state=0)

train_xy = DataLoader(TensorDataset(features[train_idx], targets[train_idx]), batch_size=128)
test_xy = DataLoader(TensorDataset(features[test_idx], targets[test_idx]), batch_size=128)
train_ssl = DataLoader(TensorDataset(features[train_idx]), batch_size=64, shuffle=True, drop_last=True)


def augment_tabular(x: torch.Tensor) -> torch.Tensor:
    return x * (torch.rand_like(x) > 0.3) + 0.3 * torch.randn_like(x)


tab_encoder = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 16))
tab_head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16))
optimizer = torch.optim.Adam([*tab_encoder.parameters(), *tab_head.parameters()], lr=1e-3)
multitask = ProbingScheduler(  # target columns: 0 = age, 1 = sex
    tab_encoder, train_xy, test_xy, probe={"age": Ridge(), "sex": LogisticRegression(max_iter=1000)}
)
tracker = MetricsTracker(
    {"loss": lambda loss: loss},
    loggers=[CSVLogger(OUT, name="diabetes")],
    schedule={"train": Schedule(every_n_steps=None, every_n_epochs=1, per_step=True)},
    probes=[multitask],
)
with tracker:
    tracker.log(multitask.run(), step=0)
    for _epoch in range(1, 2 * EPOCHS + 1):
        with tracker.epoch("train", total=len(train_ssl)):
            for (x,) in train_ssl:
                loss = info_nce(tab_head(tab_encoder(augment_tabular(x))), tab_head(tab_encoder(augment_tabular(x))))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                tracker.step("train", {"loss": loss.detach()}, batch_size=len(x))

fig = tracker.history.plot(
    keys=["age/R2", "age/PCC", "sex/accuracy", "sex/balanced_accuracy"],
    title="Multitask probing: age (Ridge) and sex (LogisticRegression)",
    path=OUT / "diabetes_probe.png",
)
plt.show()

# %%
# These measurements say little about age (a Pearson correlation near 0.3 from the start, which
# contrastive training does not improve) and more about sex, which the probe decodes a little
# better after a few epochs than from the untrained encoder. Probing makes such differences
# visible while the encoder trains, one key per task and metric.

# %%
# Where to go from here
# ---------------------
# ``layers=["conv2", "fc1", "fc2"]`` probes intermediate layers in the same pass (Alain & Bengio's
# original use), ``cv=5`` cross-validates on one loader instead of using a test loader, and
# under Fabric or ``torchrun`` the same code probes sharded loaders across ranks. See
# ``docs/probing.md``.
print(f"done in {time.perf_counter() - start:.1f} s")
print(f"logs in {OUT / 'digits'} and {OUT / 'diabetes'}; figures in {OUT}: digits_probe.png, diabetes_probe.png")
print(f"embedding maps in {OUT / 'digits_embedding_maps.png'} and {OUT / 'digits'}/version_*/embedding_maps")
