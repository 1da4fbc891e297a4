"""The torchmetrics private state that ``fabricmetrics._tm`` reads and writes, checked on real metrics.

These tests fail, naming the attribute and the torchmetrics version, when a torchmetrics release
renames or reshapes what the adapter relies on: the states' defaults and reductions, the update
count, the cached value of ``compute``, the sync flags, and the switches of the automatic sync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest
import torch
import torchmetrics
from torchmetrics import CatMetric, Metric, SumMetric
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.regression import MeanSquaredError

from fabricmetrics import _tm
from tests.test_bounds import MirrorCollectives

VERSION = f"torchmetrics {torchmetrics.__version__}"


def batches(kind: str, seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    if kind == "classes":
        return [(torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (4, 6, 3)]
    if kind == "pairs":
        return [(torch.randn(n, generator=g), torch.randn(n, generator=g)) for n in (4, 6, 3)]
    return [(torch.randn(n, generator=g),) for n in (4, 6, 3)]


METRICS: list[tuple[Callable[[], Metric], str]] = [
    (lambda: MulticlassAccuracy(3), "classes"),
    (SumMetric, "values"),
    (MeanSquaredError, "pairs"),
    (CatMetric, "values"),
]
IDS = ["MulticlassAccuracy", "SumMetric", "MeanSquaredError", "CatMetric"]


def fed(make: Callable[[], Metric], kind: str, seed: int = 0) -> Metric:
    metric = make()
    for batch in batches(kind, seed):
        metric.update(*batch)
    return metric


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double()))


@pytest.mark.parametrize(("make", "kind"), METRICS, ids=IDS)
def test_the_private_attributes_exist_with_their_types(make, kind):
    metric = make()
    expected = {
        "_defaults": Mapping,
        "_reductions": Mapping,
        "_update_count": int,
        "_is_synced": bool,
        "_to_sync": bool,
        "sync_on_compute": bool,
    }
    for attr, kind_of in expected.items():
        assert hasattr(metric, attr), f"{VERSION}: Metric.{attr} is gone; update fabricmetrics/_tm.py"
        value = getattr(metric, attr)
        assert isinstance(value, kind_of), f"{VERSION}: Metric.{attr} is a {type(value).__name__}, not a {kind_of}"
    assert hasattr(metric, "_computed") and metric._computed is None, f"{VERSION}: Metric._computed changed"
    assert callable(metric.distributed_available_fn), f"{VERSION}: Metric.distributed_available_fn is not callable"


@pytest.mark.parametrize(("make", "kind"), METRICS, ids=IDS)
def test_defaults_and_reductions_describe_every_state(make, kind):
    metric = make()
    states = metric.metric_state
    assert list(_tm.defaults(metric)) == list(states), f"{VERSION}: Metric._defaults no longer lists the states"
    assert set(_tm.reductions(metric)) == set(states), f"{VERSION}: Metric._reductions no longer lists the states"
    for name, default in _tm.defaults(metric).items():
        assert isinstance(default, (torch.Tensor, list)), f"{VERSION}: default of state {name} is {type(default)}"
    for name, reduction in _tm.reductions(metric).items():
        assert reduction is None or callable(reduction), f"{VERSION}: reduction of state {name} is {reduction!r}"
    # the defaults are what reset() restores
    metric = fed(make, kind)
    metric.reset()
    for name, default in _tm.defaults(metric).items():
        value = metric.metric_state[name]
        assert (value == [] and default == []) if isinstance(default, list) else same(value, default), name


@pytest.mark.parametrize(("make", "kind"), METRICS, ids=IDS)
def test_update_count_counts_updates_and_forwards(make, kind):
    metric = make()
    data = batches(kind, 1)
    metric.update(*data[0])
    metric(*data[1])
    assert metric._update_count == 2 == _tm.update_count(metric), f"{VERSION}: Metric._update_count changed meaning"
    metric.reset()
    assert _tm.update_count(metric) == 0


@pytest.mark.parametrize(("make", "kind"), METRICS, ids=IDS)
def test_set_state_then_compute_equals_the_source_metric(make, kind):
    source = fed(make, kind, seed=2)
    target = fed(make, kind, seed=3)
    target.compute()  # a cached value that set_state must drop
    assert target._computed is not None, f"{VERSION}: Metric._computed no longer caches compute()"
    _tm.set_state(target, _tm.state(source), _tm.update_count(source))
    assert target._computed is None
    assert _tm.update_count(target) == _tm.update_count(source)
    assert same(target.compute(), source.compute())
    # and the target keeps accumulating from there, as the source does
    extra = batches(kind, 4)[0]
    source.update(*extra)
    target.update(*extra)
    assert same(target.compute(), source.compute())


@pytest.mark.parametrize(("make", "kind"), METRICS, ids=IDS)
def test_is_synced_follows_sync_and_unsync(make, kind):
    metric = fed(make, kind)
    _tm.detach_auto_sync(metric, lambda: False)  # as the tracker's clones: compute() does not sync again
    local = fed(make, kind).compute()
    assert _tm.is_synced(metric) is False
    metric.sync(
        dist_sync_fn=MirrorCollectives().torchmetrics_sync_fn, should_sync=True, distributed_available=lambda: True
    )
    assert _tm.is_synced(metric) is True, f"{VERSION}: Metric._is_synced is not set by sync()"
    metric.unsync()
    assert _tm.is_synced(metric) is False, f"{VERSION}: Metric._is_synced is not cleared by unsync()"
    assert same(metric.compute(), local)  # the local state is back
    metric.sync(
        dist_sync_fn=MirrorCollectives().torchmetrics_sync_fn, should_sync=True, distributed_available=lambda: True
    )
    _tm.set_state(metric, _tm.state(metric), _tm.update_count(metric))  # drop the cached local value
    if kind == "values":  # the mirrored rank's data is in (a sum doubles, a cat repeats; means stay)
        assert not same(metric.compute(), local)


@pytest.mark.parametrize(("make", "kind"), METRICS, ids=IDS)
def test_detach_auto_sync_keeps_compute_and_forward_local(make, kind):
    metric = fed(make, kind)
    _tm.detach_auto_sync(metric, lambda: False)
    assert metric._to_sync is False and metric.sync_on_compute is False
    assert metric.distributed_available_fn() is False
    before = metric.compute()
    metric(*batches(kind, 5)[0])  # forward still works
    assert metric.update_count == 4
    if kind == "values":
        assert not same(metric.compute(), before)
