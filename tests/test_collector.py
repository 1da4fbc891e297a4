"""Unit tests of exact mode's collector: add, layout, count, gather over ranks, and its state."""

from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
import pytest
import torch

from fabricmetrics._collect import Collector, layout_of
from fabricmetrics.distributed import LocalCollectives
from fabricmetrics.exceptions import OutputsError
from tests.test_bounds import MirrorCollectives


def label(i: int = 0) -> str:
    return f"Metric `m` (argument {i}, 'x')"


def collect(collector: Collector, index: int, chunks: list) -> None:
    for step, chunk in enumerate(chunks):
        collector.add(index, chunk, lambda: label(index), f"step {step + 1}", "val")


def round_trip(collector: Collector) -> Collector:
    """Save with torch.save, load with weights_only=True (what a checkpoint goes through)."""
    buffer = io.BytesIO()
    torch.save(collector.state_dict(), buffer)
    buffer.seek(0)
    restored = Collector(compute_on_cpu=False)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    return restored


def test_tensors_are_concatenated_in_step_order():
    collector = Collector(compute_on_cpu=False)
    g = torch.Generator().manual_seed(0)
    chunks = [torch.randn(n, 3, generator=g) for n in (4, 1, 6)]
    collect(collector, 2, chunks)
    assert collector.layout(2) == ("torch", (3,), "torch.float32")
    assert collector.count(2) == 11
    assert collector.layout(5) is None and collector.count(5) == 0
    gathered = collector.gather(LocalCollectives(), 2, collector.layout(2), [11])
    assert torch.equal(gathered, torch.cat(chunks))
    # over two ranks (the other holding the same rows): rank order, rank 0 first
    assert torch.equal(collector.gather(MirrorCollectives(), 2, collector.layout(2), [11, 11]), torch.cat(chunks * 2))


def test_collected_tensors_are_detached_and_copied_to_the_cpu_on_request():
    collector = Collector(compute_on_cpu=True)
    x = torch.ones(3, requires_grad=True)
    collect(collector, 0, [x * 2])
    assert not collector.chunks[0][0].requires_grad
    assert collector.chunks[0][0].device.type == "cpu"


def test_lists_become_arrays_also_of_strings():
    collector = Collector(compute_on_cpu=False)
    collect(collector, 0, [[0, 1, 2], (1, 1)])
    collect(collector, 1, [["cat", "dog", "bird"], ["hippopotamus", "ox"]])  # strings of any width
    assert collector.layout(0) == ("numpy", (), str(np.asarray([0]).dtype))
    assert collector.layout(1) == ("numpy", (), "U")
    assert collector.gather(LocalCollectives(), 0, collector.layout(0), [5]).tolist() == [0, 1, 2, 1, 1]
    words = collector.gather(LocalCollectives(), 1, collector.layout(1), [5])
    assert words.tolist() == ["cat", "dog", "bird", "hippopotamus", "ox"]


def test_numpy_numbers_and_strings_are_gathered_over_ranks():
    collector = Collector(compute_on_cpu=False)
    collect(collector, 0, [np.array([1.5, 2.5]), np.array([3.5])])
    collect(collector, 1, [np.array(["a", "b"]), np.array(["cc"])])  # strings of two widths
    gathered = collector.gather(MirrorCollectives(), 0, collector.layout(0), [3, 3])
    assert isinstance(gathered, np.ndarray) and gathered.tolist() == [1.5, 2.5, 3.5] * 2
    words = collector.gather(MirrorCollectives(), 1, collector.layout(1), [3, 3])
    assert isinstance(words, np.ndarray) and words.tolist() == ["a", "b", "cc"] * 2


def test_a_rank_that_collected_nothing_takes_part_with_an_empty_block_of_the_agreed_layout():
    collector = Collector(compute_on_cpu=False)
    for layout, expected in [
        (("torch", (3,), "torch.int64"), torch.empty(0, 3, dtype=torch.int64)),
        (("numpy", (2,), "float32"), np.empty((0, 2), dtype=np.float32)),
    ]:
        for index in (None, 7):  # never planned, or planned but nothing collected
            local = collector.gather(LocalCollectives(), index, layout, [0])
            assert type(local) is type(expected) and tuple(local.shape) == expected.shape
            assert local.dtype == expected.dtype
    mirrored = collector.gather(MirrorCollectives(), None, ("torch", (3,), "torch.int64"), [0, 0])
    assert tuple(mirrored.shape) == (0, 3)


def test_scalars_and_changing_layouts_are_refused_with_a_hint():
    collector = Collector(compute_on_cpu=False)
    for scalar in (torch.tensor(1.0), np.float64(2.0), 3, "text"):
        with pytest.raises(OutputsError, match=r"Metric `m` \(argument 0, 'x'\) received .* in exact mode.*HINT:"):
            collector.add(0, scalar, label, "step 1", "val")
    collect(collector, 0, [torch.zeros(2, 3)])
    changes = [torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.float64), np.zeros((2, 3), dtype=np.float32)]
    for change in changes:
        with pytest.raises(
            OutputsError, match=r"received \(.*\) on step 2 of stage `val` but .* on earlier steps.*HINT:"
        ):
            collector.add(0, change, label, "step 2", "val")
    assert collector.count(0) == 2  # nothing refused was kept


@pytest.mark.parametrize(
    "chunks",
    [
        [torch.arange(6.0).reshape(3, 2), torch.ones(1, 2)],
        [np.array([1, 2, 3], dtype=np.int16), np.array([4], dtype=np.int16)],
        [np.array(["a", "bb"]), np.array(["ccc"])],
        [["x", "yy"], ["zzz"]],
        [[0.5, 1.5], [2.5]],
        [np.array([True, False])],
        [np.array(["cat", None, 3], dtype=object)],
    ],
    ids=["torch", "int16", "numpy strings", "list of strings", "list of floats", "bool", "plain objects"],
)
def test_state_round_trip_through_a_weights_only_checkpoint(chunks):
    collector = Collector(compute_on_cpu=False)
    collect(collector, 3, chunks)
    restored = round_trip(collector)
    assert restored.layout(3) == collector.layout(3)
    assert restored.count(3) == collector.count(3)
    before = collector.gather(LocalCollectives(), 3, collector.layout(3), [collector.count(3)])
    after = restored.gather(LocalCollectives(), 3, restored.layout(3), [restored.count(3)])
    assert type(after) is type(before) and after.dtype == before.dtype
    assert after.tolist() == before.tolist()
    # the restored collector goes on collecting the same layout
    collect(restored, 3, chunks[:1])
    assert restored.count(3) == collector.count(3) + len(chunks[0])


def test_objects_that_a_weights_only_load_cannot_read_are_kept_with_a_warning():
    collector = Collector(compute_on_cpu=False)
    collect(collector, 0, [np.array([Fraction(1, 2), Fraction(3, 4)], dtype=object)])
    with pytest.warns(RuntimeWarning, match=r"cannot read; this checkpoint loads only with weights_only=False.*HINT:"):
        state = collector.state_dict()
    restored = Collector(compute_on_cpu=False)
    restored.load_state_dict(state)
    assert restored.gather(LocalCollectives(), 0, restored.layout(0), [2]).tolist() == [Fraction(1, 2), Fraction(3, 4)]


def test_reset_forgets_everything():
    collector = Collector(compute_on_cpu=False)
    collect(collector, 0, [torch.zeros(2)])
    collector.reset()
    assert collector.count(0) == 0 and collector.layout(0) is None and collector.state_dict()["chunks"] == {}


def test_layout_of():
    assert layout_of(np.array([["a", "b"]])) == ("numpy", (2,), "U")
    assert layout_of(np.array([b"x"])) == ("numpy", (), "S")
    assert layout_of(torch.zeros(0, 5, dtype=torch.bool)) == ("torch", (5,), "torch.bool")
