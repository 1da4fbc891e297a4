"""Collectives.gather_cat_to_main: rank 0 gets every rank's rows, in rounds of bounded size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist

from fabricmetrics.distributed import LocalCollectives, TorchCollectives
from tests._distributed import run_on_ranks

# (name, rows per rank, trailing shape, dtype, budget in MiB)
CASES = [
    ("uneven", [7, 3], (5,), torch.float32, 64.0),
    ("one row per round", [7, 3], (5,), torch.float32, 1e-6),
    ("rounds of 4 rows", [9, 2], (16,), torch.float64, 4 * 2 * 16 * 8 / 2**20),  # 2 ranks x 4 rows x 128 B
    ("empty rank", [0, 6], (2, 3), torch.int64, 1e-4),
    ("nobody has rows", [0, 0], (4,), torch.float32, 1.0),
    ("bool", [4, 5], (3,), torch.bool, 1e-5),
    ("one dimension", [5, 4], (), torch.int32, 1e-5),
]


def rows_of(rank: int, counts: list[int], trailing: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Rank ``rank``'s rows of a case (every rank can build every rank's rows)."""
    g = torch.Generator().manual_seed(100 + rank)
    values = torch.randint(-50, 50, (counts[rank], *trailing), generator=g)
    return values > 0 if dtype == torch.bool else values.to(dtype)


def permutation(n: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(n).permutation(n))


def gather_worker(rank: int, world: int) -> dict:
    coll = TorchCollectives()
    sizes: list[int] = []
    original = dist.all_gather

    def recording(out, tensor, *args, **kwargs):
        sizes.append(sum(t.numel() * t.element_size() for t in out))
        return original(out, tensor, *args, **kwargs)

    dist.all_gather = recording
    results = {}
    try:
        for name, counts, trailing, dtype, budget in CASES:
            mine = rows_of(rank, counts, trailing, dtype)
            start = len(sizes)
            plain = coll.gather_cat_to_main(mine, counts, budget_mb=budget)
            index = permutation(sum(counts)) if rank == 0 else None
            placed = coll.gather_cat_to_main(mine, counts, index=index, budget_mb=budget)
            results[name] = (plain, placed, sizes[start:])
    finally:
        dist.all_gather = original
    return results


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_gather_to_main_equals_concatenation_in_bounded_rounds(tmp_path):
    ranks = run_on_ranks(gather_worker, tmp_path)
    for name, counts, trailing, dtype, budget in CASES:
        expected = torch.cat([rows_of(r, counts, trailing, dtype) for r in range(2)])
        plain, placed, sizes = ranks[0][name]
        assert plain.dtype == dtype and plain.shape == (sum(counts), *trailing), name
        assert torch.equal(plain, expected), name
        reordered = torch.empty_like(expected)
        reordered[permutation(sum(counts))] = expected  # row j goes to row index[j]
        assert torch.equal(placed, reordered), name
        # the other rank gets nothing and made the same calls
        assert ranks[1][name][:2] == (None, None), name
        assert ranks[1][name][2] == sizes, name
        # no round moves more than the budget, unless one row per rank is already larger
        row_bytes = max(1, int(np.prod(trailing))) * expected.element_size()
        assert max(sizes, default=0) <= max(budget * 2**20, 2 * row_bytes), (name, sizes)
        rows_per_round = max(1, int(budget * 2**20) // (2 * row_bytes))
        assert len(sizes) == 2 * -(-max(counts) // rows_per_round), (name, len(sizes))


def test_one_process_returns_its_rows_placed_by_the_index():
    coll = LocalCollectives()
    rows = torch.arange(12.0).reshape(6, 2)
    assert coll.gather_cat_to_main(rows, [6]) is rows
    index = torch.tensor([5, 0, 1, 4, 2, 3])
    placed = coll.gather_cat_to_main(rows, [6], index=index, budget_mb=1e-6)
    assert torch.equal(placed[index], rows)


def test_counts_that_do_not_fit_are_an_error():
    with pytest.raises(ValueError, match=r"counts=\[4\] do not fit"):
        LocalCollectives().gather_cat_to_main(torch.zeros(3, 2), [4])
    with pytest.raises(ValueError, match="world size 1"):
        LocalCollectives().gather_cat_to_main(torch.zeros(3, 2), [3, 0])


def test_a_non_positive_budget_is_an_error():
    with pytest.raises(ValueError, match="budget_mb must be positive"):
        LocalCollectives().gather_cat_to_main(torch.zeros(3, 2), [3], budget_mb=0)
