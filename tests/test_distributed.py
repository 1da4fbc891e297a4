"""MetricsTracker on 2 CPU ranks (gloo): exact values, padding removal, uneven data, no hangs."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from sklearn.metrics import f1_score
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import ConfigurationError, DistributedError, MetricError
from tests._distributed import load_rank_results, run_on_ranks, save_rank_result
from tests.conftest import free_port

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(180)]

N, C = 21, 3


def dataset() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, C, generator=g, dtype=torch.float64)
    target = torch.randint(0, C, (N,), generator=g)
    index = torch.arange(N)
    return TensorDataset(logits, target, index)


def make_tracker(schedule=None, **kwargs) -> MetricsTracker:
    return MetricsTracker(
        {
            "acc": MulticlassAccuracy(C, average="micro"),
            "f1": MulticlassF1Score(C),  # macro
            "sk_f1": functools.partial(f1_score, average="macro"),
            "mean_logit": lambda preds: preds.mean(),  # linear: its weighted mean is the global mean
            "n": lambda index: torch.tensor(float(len(index))),  # per-step only: counts samples
        },
        needs={"sk_f1": ["target", lambda o: o["preds"].argmax(1)], "n": ["index"]},
        schedule=schedule or {"val": Schedule(per_step=False), "train": Schedule(every_n_steps=None, per_step=True)},
        **kwargs,
    )


def reference(indices) -> dict[str, float]:
    logits, target, _ = dataset().tensors
    logits, target = logits[indices], target[indices]
    pred = logits.argmax(1)
    return {
        "acc": float((pred == target).double().mean()),
        "f1": f1_score(target, pred, average="macro"),
        "sk_f1": f1_score(target, pred, average="macro"),
        "mean_logit": float(logits.mean()),
    }


def feed(tracker, stage, batches, **epoch_kwargs):
    with tracker.epoch(stage, **epoch_kwargs) as epoch:
        for logits, target, index in batches:
            tracker.step(stage, {"preds": logits, "target": target, "index": index})
    return epoch


# --------------------------------------------------------------------------------------------------
# workers (module level: they are pickled for spawn)


def sampler_worker(rank, world):
    ds = dataset()
    out = {}
    for shuffle in (False, True):
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=shuffle, seed=3)
        loader = DataLoader(ds, batch_size=4, sampler=sampler)
        for stage in ("val", "train"):
            epoch = feed(make_tracker(), stage, loader, num_samples=len(ds))
            out[shuffle, stage] = (epoch.results, epoch.samples)
    return out


def ssl_tracker() -> MetricsTracker:
    from fabricmetrics.metrics import Alignment, ContrastiveAccuracy, EffectiveRank, Uniformity

    return MetricsTracker(
        {
            "align": Alignment(),
            "unif": Uniformity(chunk_size=7),
            "cacc": ContrastiveAccuracy(topk=2),
            "rank": EffectiveRank(num_features=C),
            "rank_lazy": EffectiveRank(),  # d agreed at sync: works with a rank that saw nothing
        },
        needs={"unif": ["z1"], "rank": ["z1"], "rank_lazy": ["z1"]},
    )


def ssl_outputs(indices):
    logits = dataset().tensors[0][indices]
    return {"z1": logits, "z2": logits + 0.3 * torch.cos(logits * 7)}


def uneven_worker(rank, world):
    ds = dataset()
    out = {}
    for split in (13, N):  # SSL metric classes (cat and sum states), incl. a rank without samples
        tracker = ssl_tracker()
        mine = list(range(split)) if rank == 0 else list(range(split, N))
        with tracker.epoch("val") as epoch:
            for i in range(0, len(mine), 5):
                tracker.step("val", ssl_outputs(mine[i : i + 5]))
        out[split, "ssl"] = epoch.results
    for split in (13, N):  # uneven batch counts; a rank with no batches at all
        mine = range(split) if rank == 0 else range(split, N)
        batches = [ds[list(mine)[i : i + 5]] for i in range(0, len(mine), 5)]
        for stage in ("val", "train"):
            epoch = feed(make_tracker(), stage, batches)
            out[split, stage] = (epoch.results, epoch.samples)
    return out


def recording_worker(rank, world):
    """Record every collective this rank makes; ranks get very different data."""
    calls = []
    originals = {name: getattr(dist, name) for name in ("all_gather", "all_reduce", "broadcast", "barrier")}

    def recorder(name):
        def wrapped(*args, **kwargs):
            tensor = args[1] if name == "all_gather" else args[0] if args else None
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else None
            calls.append((name, shape, str(getattr(tensor, "dtype", None))))
            return originals[name](*args, **kwargs)

        return wrapped

    syncs = []
    original_sync = Metric._sync_dist

    def counting_sync(self, *args, **kwargs):
        syncs.append(type(self).__name__)
        return original_sync(self, *args, **kwargs)

    for name in originals:
        setattr(dist, name, recorder(name))
    Metric._sync_dist = counting_sync
    try:
        ds = dataset()
        mine = range(17) if rank == 0 else range(17, N)
        tracker = make_tracker()
        for stage in ("val", "train", "val"):
            feed(tracker, stage, [ds[list(mine)[i : i + 3]] for i in range(0, len(mine), 3)])
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
        Metric._sync_dist = original_sync
    return calls, syncs


def failing_worker(rank, world):
    return failing_metric_worker(rank, world), failing_block_worker(rank, world), mismatch_worker(rank, world)


def mismatch_worker(rank, world):
    """Ranks returning different dtypes for one argument: every rank raises the same error."""
    tracker = MetricsTracker({"m": lambda z: z.sum()})
    dtype = torch.float32 if rank == 0 else torch.float64
    try:
        with tracker.epoch("val"):
            tracker.step("val", {"z": torch.ones(3, 2, dtype=dtype)})
    except Exception as err:
        return type(err).__name__, str(err)
    return None


def failing_metric_worker(rank, world):
    def fragile(preds):
        if dist.get_rank() == 1:
            raise ValueError("cannot compute on this rank")
        return preds.mean()

    tracker = MetricsTracker({"fragile": fragile, "acc": MulticlassAccuracy(C)})
    ds = dataset()
    try:
        feed(tracker, "val", [ds[rank::2]])
    except Exception as err:
        return type(err).__name__, str(err), dict(tracker.history)
    return None


def failing_block_worker(rank, world):
    tracker = MetricsTracker({"acc": MulticlassAccuracy(C)})
    ds = dataset()
    outcome = []
    try:
        with tracker.epoch("val"):
            tracker.step("val", {"preds": ds[rank::2][0], "target": ds[rank::2][1]})
            if rank == 1:
                raise RuntimeError("corrupt batch on rank 1")
    except Exception as err:
        outcome.append((type(err).__name__, str(err)))
    # the next epoch works on both ranks
    with tracker.epoch("val") as epoch:
        tracker.step("val", {"preds": ds[rank::2][0], "target": ds[rank::2][1]})
    outcome.append(epoch.results)
    return outcome


def silent_rank_worker(rank, world):
    """Only rank 0 steps: metrics sharing one update still sync alike. Then per-step keys that differ."""
    from torchmetrics.classification import MulticlassPrecision

    ds = dataset()
    out = {}
    shared = MetricsTracker(
        {"acc": MulticlassAccuracy(C), "f1": MulticlassF1Score(C), "prec": MulticlassPrecision(C)}
    )  # macro averages: one update serves all three
    with shared.epoch("val") as epoch:
        if rank == 0:
            logits, target, _ = ds[:]
            shared.step("val", {"preds": logits, "target": target})
    out["shared"] = epoch.results

    def per_class(preds, target):  # names depend on the classes this rank's batch has
        return {str(int(c)): (preds[target == c] == c).double().mean() for c in target.unique()}

    per_step = MetricsTracker({"pc": per_class}, schedule={"val": Schedule(per_step=True)})
    labels = torch.arange(6) % (2 if rank == 0 else 3)
    try:
        with per_step.epoch("val"):
            per_step.step("val", {"preds": labels, "target": labels})
        out["keys"] = None
    except MetricError as err:
        out["keys"] = str(err)
    with per_step.epoch("val") as epoch:  # the group still works
        labels = torch.arange(6) % 3
        per_step.step("val", {"preds": labels, "target": labels})
    out["after"] = epoch.results
    return out


def mid_epoch_resume_worker(rank, world):
    """A checkpoint inside an epoch: each rank's own state resumes exactly; rank 0's state on rank 1 is refused."""
    import io

    ds = dataset()
    mine = [ds[i : i + 3] for i in range(rank * 9, rank * 9 + 9, 3)] + ([ds[18:21]] if rank == 0 else [])
    uninterrupted = feed(make_tracker(), "val", mine).results
    first = make_tracker()
    try:
        with first.epoch("val"):
            for i, (logits, target, index) in enumerate(mine):
                first.step("val", {"preds": logits, "target": target, "index": index})
                if i == 1:
                    buffer = io.BytesIO()
                    torch.save(first.state_dict(), buffer)
                    raise KeyboardInterrupt  # killed mid-epoch (no collective call)
    except KeyboardInterrupt:
        pass
    own = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    resumed = make_tracker()
    resumed.load_state_dict(own)
    resumed_results = feed(resumed, "val", mine[2:]).results
    shared = [own]
    dist.broadcast_object_list(shared, src=0)  # what every rank loads from a file saved on rank 0
    try:
        make_tracker().load_state_dict(shared[0])
        refused = None
    except ConfigurationError as err:
        refused = str(err)
    return uninterrupted, resumed_results, refused


# --------------------------------------------------------------------------------------------------
# tests


def assert_matches_reference(results, stage, indices):
    expected = reference(indices)
    for key, value in expected.items():
        if stage == "train" and key == "sk_f1":
            continue  # per-step on train: a weighted mean of batch F1s, not the epoch's F1
        assert results[f"{key}/{stage}"] == pytest.approx(value, abs=1e-6), (key, stage)


def test_distributed_sampler_padding_is_removed(tmp_path):
    # 21 samples on 2 ranks: the sampler repeats one sample; every metric must see exactly the 21.
    out = run_on_ranks(sampler_worker, tmp_path)
    for shuffle in (False, True):
        for stage in ("val", "train"):
            results, samples = out[0][shuffle, stage]
            assert results == out[1][shuffle, stage][0]  # same results on every rank
            assert_matches_reference(results, stage, list(range(N)))
            assert samples + out[1][shuffle, stage][1] == N
        # per-step weights are the batch sizes after padding removal: rank 0 4,4,3; rank 1 4,4,2
        n_train = out[0][shuffle, "train"][0]["n/train"]
        assert n_train == pytest.approx(sum(b * b for b in (4, 4, 3, 4, 4, 2)) / N)


def test_uneven_ranks_equal_one_process(tmp_path):
    out = run_on_ranks(uneven_worker, tmp_path)
    single = ssl_tracker()
    with single.epoch("val") as expected:
        single.step("val", ssl_outputs(list(range(N))))
    for split in (13, N):
        assert out[0][split, "ssl"] == out[1][split, "ssl"]
        for key, value in expected.results.items():
            assert out[0][split, "ssl"][key] == pytest.approx(value, rel=1e-9), (split, key)
    for split in (13, N):
        for stage in ("val", "train"):
            results, samples = out[0][split, stage]
            assert results == out[1][split, stage][0]  # same results on every rank
            assert_matches_reference(results, stage, list(range(N)))
            assert samples + out[1][split, stage][1] == N


def test_collective_calls_are_identical_on_every_rank(tmp_path):
    (calls0, syncs0), (calls1, syncs1) = run_on_ranks(recording_worker, tmp_path)
    assert calls0 == calls1
    assert len(calls0) > 0
    # torchmetrics states are synchronised once per compute: `f1` shares `acc`'s update? no (micro vs
    # macro), so two syncs per computed epoch, three epochs
    assert syncs0 == syncs1 == ["MulticlassAccuracy", "MulticlassF1Score"] * 3


def test_failures_on_one_rank_reach_every_rank(tmp_path):
    metric_out, block_out, mismatch_out = zip(*run_on_ranks(failing_worker, tmp_path), strict=True)
    # a metric that raises while computing on rank 1 only
    out = metric_out
    assert out[1][0] == "MetricError" and "Metric `fragile` failed on rank 1" in out[1][1]
    assert out[0][0] == "DistributedError" and "Metric `fragile` failed on rank 1" in out[0][1]
    assert "cannot compute on this rank" in out[0][1]
    assert out[0][2] == {} == out[1][2]  # nothing logged
    assert issubclass(DistributedError, RuntimeError) and issubclass(MetricError, RuntimeError)
    # user code that raises inside the epoch block on rank 1 only
    out = block_out
    assert out[1][0] == ("RuntimeError", "corrupt batch on rank 1")
    assert out[0][0][0] == "DistributedError"
    assert (
        "Rank 1 failed inside `with tracker.epoch('val')` (epoch 1): RuntimeError: corrupt batch on rank 1"
        in out[0][0][1]
    )
    assert out[0][1] == out[1][1] and not math.isnan(out[0][1]["acc/val"])
    assert np.isfinite(list(out[0][1].values())).all()
    # values of different dtypes on the two ranks: one clear error on both, no hang
    assert mismatch_out[0] == mismatch_out[1]
    assert mismatch_out[0][0] == "OutputsError" and "differently shaped or typed values" in mismatch_out[0][1]


def fabric_worker(fabric, out_dir):
    ds = dataset()
    loader = fabric.setup_dataloaders(DataLoader(ds, batch_size=4, shuffle=True))
    schedule = {"val": Schedule(), "train": Schedule(every_n_steps=1, per_step=True)}
    tracker = make_tracker(fabric=fabric, schedule=schedule)
    results, step_checks = {}, []
    with tracker:
        for stage in ("val", "train"):
            with tracker.epoch(stage, num_samples=len(ds)) as epoch:
                for logits, target, index in loader:
                    logged = tracker.step(stage, {"preds": logits, "target": target, "index": index})
                    if logged:  # step values are this rank's batch, padding removed
                        step_checks.append((logged["mean_logit/train_step"], logits))
            results[stage] = epoch.results
    save_rank_result(out_dir, fabric.global_rank, (results, step_checks, dict(tracker.history)))
    fabric.barrier()  # leave together, and tear the group down before the interpreter does
    dist.destroy_process_group()


def test_fabric_ddp_spawn_equals_one_process(tmp_path, monkeypatch):
    from lightning_fabric import Fabric

    from fabricmetrics.loggers import CSVLogger

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    logger = CSVLogger(tmp_path, name="run", version=0)
    fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp_spawn", loggers=[logger])
    fabric.launch(fabric_worker, str(tmp_path))
    (results0, checks0, history0), (results1, checks1, history1) = load_rank_results(tmp_path, 2)
    assert results0 == results1  # .results are the same on every rank
    for stage in ("val", "train"):
        assert_matches_reference(results0[stage], stage, list(range(N)))
    # step-level values are rank-local: each rank's own batch; rank 1's last batch holds the padding
    assert [len(c) for c in (checks0, checks1)] == [3, 3]
    for value, logits in checks0:
        assert value == pytest.approx(float(logits.mean()))
    *_, (last_value, last_logits) = checks1
    assert last_value == pytest.approx(float(last_logits[:2].mean()))
    # logging and history on rank 0 only; the CSV holds exactly rank 0's history
    assert history1 == {} and len(history0["mean_logit/train_step"]) == 3
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        assert len(f.readlines()) == 1 + 3 + 2  # header, 3 step rows, val row, train row


def test_a_rank_without_steps_and_per_step_keys_that_differ(tmp_path):
    from sklearn.metrics import precision_score

    out = run_on_ranks(silent_rank_worker, tmp_path)
    logits, target, _ = dataset().tensors
    pred = logits.argmax(1)
    expected = {
        "acc/val": float(np.mean([(pred[target == c] == c).double().mean() for c in range(C)])),  # macro recall
        "f1/val": f1_score(target, pred, average="macro"),
        "prec/val": precision_score(target, pred, average="macro"),
    }
    for rank in range(2):
        assert out[rank]["shared"] == pytest.approx(expected, abs=1e-6)
        assert "Metric `pc` of stage `val` returned values named differently on different ranks" in out[rank]["keys"]
        assert "['pc_0', 'pc_1']" in out[rank]["keys"] and "['pc_0', 'pc_1', 'pc_2']" in out[rank]["keys"]
        assert out[rank]["after"] == {"pc_0/val": 1.0, "pc_1/val": 1.0, "pc_2/val": 1.0}
    assert out[0]["keys"] == out[1]["keys"]


def test_an_epoch_in_progress_resumes_from_each_ranks_own_state(tmp_path):
    out = run_on_ranks(mid_epoch_resume_worker, tmp_path)
    for rank in range(2):
        uninterrupted, resumed, _ = out[rank]
        assert resumed == pytest.approx(uninterrupted, abs=1e-12)
    assert_matches_reference(out[0][0], "val", list(range(N)))
    assert out[0][2] is None  # rank 0 loads its own state
    assert out[1][2] is not None and "that rank 0 of 2 saw, and this is rank 1 of 2" in out[1][2]
