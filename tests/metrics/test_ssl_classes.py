"""Metric classes fed in batches equal the functional metrics on the concatenation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _metrics_reference import ref_effective_rank
from torchmetrics import MetricCollection

from fabricmetrics.exceptions import InputError
from fabricmetrics.metrics import (
    Alignment,
    ContrastiveAccuracy,
    EffectiveRank,
    Uniformity,
    alignment_score,
    contrastive_accuracy_score,
    effective_rank,
    uniformity_score,
)

SPLITS = [7, 1, 12, 20]  # uneven batches, one of a single sample


def views(n: int = 40, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=g, dtype=dtype)
    return z1, z1 + 0.9 * torch.randn(n, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("normalize", "alpha"), [(True, 2), (False, 1)])
def test_alignment_batches_equal_functional(dtype: torch.dtype, normalize: bool, alpha: float) -> None:
    z1, z2 = views(dtype=dtype)
    metric = Alignment(normalize=normalize, alpha=alpha)
    for b1, b2 in zip(z1.split(SPLITS), z2.split(SPLITS), strict=True):
        metric.update(b1, b2)
    assert metric.sum_terms.dtype == torch.float64
    assert int(metric.num_pairs) == 40
    rel = 1e-12 if dtype == torch.float64 else 1e-6
    expected = float(alignment_score(z1, z2, normalize, alpha))
    assert float(metric.compute()) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("normalize", "t"), [(True, 2), (False, 0.5)])
def test_uniformity_batches_equal_functional(dtype: torch.dtype, normalize: bool, t: float) -> None:
    z1, _ = views(dtype=dtype)
    metric = Uniformity(normalize=normalize, t=t, chunk_size=3)
    for batch in z1.split(SPLITS):
        metric.update(batch)
    value = metric.compute()
    assert value.dtype == dtype
    assert float(value) == pytest.approx(
        float(uniformity_score(z1, normalize, t)), rel=1e-12 if dtype == torch.float64 else 1e-5
    )
    # Not the mean of per-batch values: every pair across batches counts.
    per_batch = np.mean([float(uniformity_score(b, normalize, t)) for b in z1.split(20)])
    assert float(value) != pytest.approx(per_batch, rel=1e-3)


@pytest.mark.parametrize("topk", [1, 5])
@pytest.mark.parametrize("normalize", [True, False])
def test_contrastive_accuracy_batches_equal_functional(topk: int, normalize: bool) -> None:
    z1, z2 = views()
    metric = ContrastiveAccuracy(normalize=normalize, topk=topk, memory_budget_bytes=1)
    for b1, b2 in zip(z1.split(SPLITS), z2.split(SPLITS), strict=True):
        metric.update(b1, b2)
    expected = float(contrastive_accuracy_score(z1, z2, normalize, topk))
    assert 0.0 < expected < 1.0
    assert float(metric.compute()) == expected


def test_effective_rank_batches_equal_functional() -> None:
    z1, _ = views(n=60, d=8)
    z1 = z1 @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.3, 0.1, 0.05], dtype=torch.float64))
    metric = EffectiveRank()
    for batch in z1.split([*SPLITS, 20]):
        metric.update(batch)
    assert metric.gram.shape == (8, 8)
    assert metric.gram.dtype == torch.float64
    assert float(metric.compute()) == pytest.approx(float(effective_rank(z1)), rel=1e-10)
    assert float(metric.compute()) == pytest.approx(ref_effective_rank(z1.numpy()), rel=1e-10)


def test_effective_rank_with_fewer_samples_than_features() -> None:
    z1, _ = views(n=5, d=16)
    metric = EffectiveRank()
    metric.update(z1[:2])
    metric.update(z1[2:])
    assert float(metric.compute()) == pytest.approx(float(effective_rank(z1)), rel=1e-10)


def test_effective_rank_of_collapsed_embeddings_is_close_to_the_svd() -> None:
    z1, _ = views(n=200, d=16)
    collapsed = z1[:, :2] @ torch.randn(2, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    metric = EffectiveRank()
    metric.update(collapsed)
    # 14 zero singular values are resolved to ~1e-8 relative through the Gram matrix (documented).
    assert float(metric.compute()) == pytest.approx(float(effective_rank(collapsed)), abs=1e-4)
    assert float(metric.compute()) < 2.01


def test_float32_inputs_and_numpy_batches() -> None:
    z1, z2 = views(dtype=torch.float32)
    metrics = [Alignment(), Uniformity(), ContrastiveAccuracy(topk=5), EffectiveRank()]
    for b1, b2 in zip(z1.split(SPLITS), z2.split(SPLITS), strict=True):
        metrics[0].update(b1.numpy(), b2.numpy())
        metrics[1].update(b1.numpy())
        metrics[2].update(b1.numpy(), b2.numpy())
        metrics[3].update(b1.numpy())
    assert float(metrics[0].compute()) == pytest.approx(float(alignment_score(z1, z2)), rel=1e-6)
    assert float(metrics[1].compute()) == pytest.approx(float(uniformity_score(z1)), rel=1e-6)
    assert float(metrics[2].compute()) == float(contrastive_accuracy_score(z1, z2, topk=5))
    assert float(metrics[3].compute()) == pytest.approx(float(effective_rank(z1.double())), rel=1e-6)


def test_forward_gives_the_batch_value_and_accumulates() -> None:
    z1, z2 = views()
    metric = Uniformity()
    first = metric(z1[:20])
    assert float(first) == pytest.approx(float(uniformity_score(z1[:20])), rel=1e-12)
    metric(z1[20:])
    assert float(metric.compute()) == pytest.approx(float(uniformity_score(z1)), rel=1e-12)
    alignment = Alignment()
    assert float(alignment(z1[:20], z2[:20])) == pytest.approx(float(alignment_score(z1[:20], z2[:20])), rel=1e-12)


def test_reset_and_clone_keep_states_apart() -> None:
    z1, z2 = views()
    train = ContrastiveAccuracy()
    val = train.clone()
    train.update(z1[:10], z2[:10])
    val.update(z1, z2)
    assert float(val.compute()) == float(contrastive_accuracy_score(z1, z2))
    assert float(train.compute()) == float(contrastive_accuracy_score(z1[:10], z2[:10]))
    rank = EffectiveRank()
    rank.update(z1)
    rank.reset()
    rank.update(z1[:, :3])  # another width is fine after reset
    assert float(rank.compute()) == pytest.approx(float(effective_rank(z1[:, :3])), rel=1e-10)


def test_metric_collection_routes_arguments_by_name() -> None:
    z1, z2 = views()
    collection = MetricCollection(
        {
            "alignment": Alignment(),
            "uniformity": Uniformity(),
            "accuracy": ContrastiveAccuracy(),
            "rank": EffectiveRank(),
        }
    )
    collection.update(z1=z1, z2=z2, z=torch.cat([z1, z2]))
    values = collection.compute()
    assert float(values["alignment"]) == pytest.approx(float(alignment_score(z1, z2)), rel=1e-12)
    assert float(values["uniformity"]) == pytest.approx(float(uniformity_score(torch.cat([z1, z2]))), rel=1e-12)
    assert float(values["accuracy"]) == float(contrastive_accuracy_score(z1, z2))
    assert float(values["rank"]) == pytest.approx(float(effective_rank(torch.cat([z1, z2]))), rel=1e-10)


def test_class_validation() -> None:
    z1, z2 = views()
    with pytest.raises(InputError, match="same shape"):
        Alignment().update(z1, z2[:-1])
    with pytest.raises(InputError, match="`z` must be 2-D"):
        Uniformity().update(z1[0])
    for metric in (Uniformity(), EffectiveRank()):
        metric.update(z1)
        with pytest.raises(InputError, match=r"update\(\) got 3 features, but earlier batches had 6. HINT: call reset"):
            metric.update(z1[:, :3])
    accuracy = ContrastiveAccuracy()
    accuracy.update(z1, z2)
    with pytest.raises(InputError, match=r"ContrastiveAccuracy.update\(\) got 2 features"):
        accuracy.update(z1[:, :2], z2[:, :2])
    with pytest.raises(InputError, match="`topk` must be a positive int, got 0"):
        ContrastiveAccuracy(topk=0)
    with pytest.raises(InputError, match="`t` must be a finite number > 0"):
        Uniformity(t=-1)
    with pytest.raises(InputError, match="`alpha` must be a finite number > 0"):
        Alignment(alpha=0)
    with pytest.raises(InputError, match="`eps` must be a finite number > 0"):
        EffectiveRank(eps=0.0)
    with pytest.raises(InputError, match="`chunk_size` must be a positive int"):
        Uniformity(chunk_size=0)


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")
def test_compute_before_update() -> None:
    for metric in (Uniformity(), ContrastiveAccuracy(), EffectiveRank()):
        with pytest.raises(InputError, match=r"\.compute\(\) has no samples: update\(\) was never called"):
            metric.compute()
    assert torch.isnan(Alignment().compute())
    single = Uniformity()
    single.update(torch.ones(1, 3))
    with pytest.raises(InputError, match=r"`z` needs at least 2 sample\(s\), got 1"):
        single.compute()
