"""k-nearest-neighbour probe in torch: cosine similarity and temperature-weighted votes.

The rule of the kNN evaluation of InstDisc (Wu et al., 2018) and DINO (Caron et al., 2021): the
``k`` training embeddings most cosine-similar to a query vote for their class with weight
``exp(similarity / temperature)``; scikit-learn's rule (Euclidean distance, equal votes) is an
option. Neighbours are exact: queries are processed in chunks whose similarity block against the
bank stays under a memory budget, with one matrix product and one ``torch.topk`` per chunk.

The bank is stored **centred** (minus its mean row), which changes no neighbour and no weight but
keeps float32 exact on embeddings far from the origin: a query's similarities all move by the same
constant, and the product of centred rows has no large terms that cancel.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from fabricmetrics.distributed import Collectives
from fabricmetrics.exceptions import ConfigurationError, InputError
from fabricmetrics.metrics.functional._kernels import round_centre
from fabricmetrics.probing._torch_utils import (
    DTypeName,
    accuracy,
    pick_collectives,
    prepare_fit,
    prepare_queries,
    to_numpy,
)

__all__ = ["KNNProbe"]

_ROWS_PER_CHUNK = 4096  # bank rows normalised in float64 at once


class KNNProbe(ClassifierMixin, BaseEstimator):
    """Weighted kNN classifier on cosine similarity, exact and memory-bounded, in torch.

    ``fit`` stores the L2-normalised training embeddings (the *bank*), centred; a query's class scores are
    ``votes[c] = sum over its k most similar bank rows of class c of exp((s - s_max) / temperature)``
    (the shift by the query's top similarity ``s_max`` changes no ratio and keeps ``exp`` finite).
    ``predict_proba`` returns the votes normalised to sum to one, ``predict`` the label with the
    most votes (the first in ``classes_`` on a tie). Inputs: NumPy (computed on the CPU) or tensors
    (on their device); outputs are NumPy.

    Args:
        k: number of neighbours.
        temperature: softness of the vote weights (``> 0``); small values approach a vote by the
            nearest neighbour, large values an unweighted vote; ``None`` gives every neighbour one
            vote.
        metric: ``"cosine"`` (DINO's rule) or ``"euclidean"``: neighbours by Euclidean distance
            ``d``, weights ``exp(-(d**2 - d_min**2) / temperature)``. With ``temperature=None`` it
            is ``KNeighborsClassifier``'s rule (the same neighbours, up to exact ties, whatever the
            offset of the embeddings: distances are taken between centred rows).
        memory_budget_mb: most MiB of one ``(query chunk, bank)`` similarity block.
        dtype: computation dtype.
        sharded: the bank stays split across ranks. ``fit``, ``predict``, ``predict_proba`` and
            ``score`` are collective calls, each rank passing its own shard; each rank finds the
            top ``k`` of every rank's queries in its bank shard, the ``(queries, k)`` candidates
            are gathered and merged, which gives exactly the single-process neighbours. ``predict``
            returns the predictions of this rank's queries.

    Attributes:
        classes_: sorted labels seen in ``fit`` (the union over ranks when sharded).
        n_features_in_: number of features.
        n_samples_fit_: bank size (over all ranks).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> X = rng.normal(size=(300, 8)) + 2.0 * np.eye(3, 8)[y]
        >>> probe = KNNProbe(k=10).fit(X[:200], y[:200])
        >>> probe.predict(X[:5]).tolist(), y[:5].tolist()
        ([2, 1, 1, 0, 0], [2, 1, 1, 0, 0])
        >>> probe.predict_proba(X[:1]).round(2).tolist()
        [[0.0, 0.0, 1.0]]
    """

    def __init__(
        self,
        k: int = 20,
        temperature: float | None = 0.07,
        *,
        metric: Literal["cosine", "euclidean"] = "cosine",
        memory_budget_mb: float = 256.0,
        dtype: DTypeName = "float32",
        sharded: bool = False,
    ) -> None:
        self.k = k
        self.temperature = temperature
        self.metric = metric
        self.memory_budget_mb = memory_budget_mb
        self.dtype = dtype
        self.sharded = sharded

    def fit(self, X: Any, y: Any, *, collectives: Collectives | None = None) -> KNNProbe:
        """Store the normalised bank ``X`` and its labels ``y``.

        Args:
            X: ``(n_samples, n_features)`` array or tensor; this rank's shard when ``sharded``.
            y: ``(n_samples,)`` labels (any hashable, sortable values).
            collectives: what ranks communicate through when ``sharded`` (default: the initialised
                ``torch.distributed`` group, if any); ignored otherwise.

        Returns:
            ``self``.

        Raises:
            ConfigurationError: ``k``, ``temperature``, ``metric`` or ``memory_budget_mb`` out of range.
            InputError: bad shapes, non-finite features, fewer samples than ``k``.
        """
        if (
            not (isinstance(self.k, int) and self.k > 0)
            or not (self.temperature is None or self.temperature > 0)
            or self.metric not in ("cosine", "euclidean")
            or not self.memory_budget_mb > 0
        ):
            raise ConfigurationError(
                "KNNProbe expects a positive integer k, temperature > 0 or None, metric 'cosine' or "
                f"'euclidean' and memory_budget_mb > 0, got k={self.k!r}, temperature={self.temperature!r}, "
                f"metric={self.metric!r}, memory_budget_mb={self.memory_budget_mb!r}."
            )
        data = prepare_fit(
            X, y, dtype=self.dtype, where="KNNProbe.fit", task="classification",
            sharded=self.sharded, collectives=collectives,
        )  # fmt: skip
        assert data.classes is not None
        if data.n_total < self.k:
            raise InputError(
                f"KNNProbe.fit got {data.n_total} samples, fewer than k={self.k} neighbours. "
                "HINT: lower k or probe on more samples."
            )
        self._bank, self._bias, self._center = self._embed_bank(data.X, data.collectives, data.n_total)
        self._codes, self._largest_shard = data.target, max(data.shard_sizes)
        self.classes_ = data.classes
        self.n_features_in_ = data.X.shape[1]
        self.n_samples_fit_ = data.n_total
        return self

    def predict_proba(self, X: Any, *, collectives: Collectives | None = None) -> np.ndarray:
        """Normalised votes, ``(n_samples, n_classes)``, columns in the order of ``classes_``."""
        votes = self._votes(X, collectives, "KNNProbe.predict_proba")
        return to_numpy(votes / votes.sum(dim=1, keepdim=True))

    def predict(self, X: Any, *, collectives: Collectives | None = None) -> np.ndarray:
        """Label with the most votes for each query (this rank's queries when sharded)."""
        best = to_numpy(self._votes(X, collectives, "KNNProbe.predict").argmax(dim=1))
        return self.classes_[best]

    def score(self, X: Any, y: Any, sample_weight: Any = None, *, collectives: Collectives | None = None) -> float:
        """Accuracy on ``(X, y)``; over all ranks' shards when ``sharded``."""
        coll = pick_collectives(self.sharded, collectives)
        return accuracy(y, self.predict(X, collectives=coll), sample_weight, coll)

    def _votes(self, X: Any, collectives: Collectives | None, where: str) -> torch.Tensor:
        check_is_fitted(self)
        coll = pick_collectives(self.sharded, collectives)
        queries = self._embed_queries(prepare_queries(X, self.dtype, where, self.n_features_in_, coll), coll, where)
        bank, codes = self._bank.to(queries.device), self._codes.to(queries.device)
        bias = None if self._bias is None else self._bias.to(queries.device)
        votes = torch.zeros(queries.shape[0], len(self.classes_), dtype=queries.dtype, device=queries.device)
        budget_rows = int(self.memory_budget_mb * 2**20) // (max(self._largest_shard, 1) * queries.element_size())
        if coll.world_size == 1:
            chunk = max(1, min(budget_rows, queries.shape[0]))
            block = queries.new_empty(chunk, bank.shape[0])  # reused: no fresh pages for every chunk
            for start in range(0, queries.shape[0], chunk):
                sims, labels = _local_topk(queries[start : start + chunk], bank, bias, codes, self.k, block)
                votes[start : start + chunk] = self._vote(sims, labels, votes.shape[1])
            return votes
        # Sharded: in each round every rank contributes up to `chunk` queries; all of them are
        # matched against every bank shard, and each rank merges the candidates of its own queries.
        most = max(coll.all_gather_object(queries.shape[0]))
        chunk = max(1, min(budget_rows // coll.world_size, most))  # no block larger than the queries need
        n_rounds = math.ceil(most / chunk)
        block = queries.new_empty(chunk * coll.world_size, bank.shape[0])
        for start in range(0, n_rounds * chunk, chunk):
            blocks = coll.all_gather_list(queries[start : start + chunk])
            sims, labels = _local_topk(torch.cat(blocks), bank, bias, codes, self.k, block)
            offset, mine = sum(len(b) for b in blocks[: coll.rank]), len(blocks[coll.rank])
            cand_sims = torch.cat([s[offset : offset + mine] for s in coll.all_gather_list(sims)], dim=1)
            cand_labels = torch.cat([c[offset : offset + mine] for c in coll.all_gather_list(labels)], dim=1)
            top, where_ = cand_sims.topk(self.k, dim=1)
            votes[start : start + mine] = self._vote(top, cand_labels.gather(1, where_), votes.shape[1])
        return votes

    def _embed_bank(
        self, X: torch.Tensor, coll: Collectives, n_total: int
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The centred bank, the per-row bias of the Euclidean score (None for cosine), and the centre.

        The score of query ``q`` against bank row ``x`` is ``q' . x' + bias``, largest for the nearest
        rows, where ``c`` is the mean bank row (over every rank's shard) and ``x' = x - c``:

        * cosine: ``x`` and ``q`` L2-normalised (zero rows stay zero), ``q' = q``, no bias:
          ``q . x - q . c``, the cosine shifted by a constant of the query. The bank is normalised and
          centred in float64 and rounded once, so its centred rows keep their own relative precision.
        * Euclidean: ``q' = q - c`` and ``bias = -|x'|**2 / 2``: ``(|q'|**2 - d**2) / 2``. Centring makes
          ``|x'|`` and ``|q'|`` of the order of the spread of the data, so nothing large cancels.
          ``c`` is the mean rounded to a short number (:func:`round_centre`), so that small integer
          features stay exact and their equal distances stay ties, as scikit-learn sees them.
        """
        self._check_finite(X, coll, "KNNProbe.fit")
        if self.metric == "euclidean":
            mean = coll.all_reduce_sum(X.sum(dim=0, dtype=torch.float64)) / n_total
            squares = torch.zeros(1, dtype=torch.float64, device=X.device)
            for start in range(0, X.shape[0], _ROWS_PER_CHUNK):
                squares += (X[start : start + _ROWS_PER_CHUNK].double() - mean).square().sum()
            spread = (coll.all_reduce_sum(squares) / (n_total * X.shape[1])).sqrt()
            center = round_centre(mean, spread).to(X.dtype)  # exact data stay exact: ties stay ties
            bank = X - center
            return bank, -0.5 * torch.linalg.vecdot(bank, bank), center
        total = torch.zeros(X.shape[1], dtype=torch.float64, device=X.device)
        for start in range(0, X.shape[0], _ROWS_PER_CHUNK):
            total += _unit_rows(X[start : start + _ROWS_PER_CHUNK].double()).sum(dim=0)
        center64 = coll.all_reduce_sum(total) / n_total
        bank = torch.empty_like(X)
        for start in range(0, X.shape[0], _ROWS_PER_CHUNK):
            rows = _unit_rows(X[start : start + _ROWS_PER_CHUNK].double())
            bank[start : start + _ROWS_PER_CHUNK] = rows.sub_(center64)
        return bank, None, center64.to(X.dtype)

    def _embed_queries(self, X: torch.Tensor, coll: Collectives, where: str) -> torch.Tensor:
        """Query rows for the product with the bank (see :meth:`_embed_bank`)."""
        self._check_finite(X, coll, where)
        return _unit_rows(X) if self.metric == "cosine" else X - self._center.to(X.device)

    @staticmethod
    def _check_finite(X: torch.Tensor, coll: Collectives, where: str) -> None:
        """Raise on every rank when some rank's rows hold NaN or infinity."""
        bad = int(coll.all_reduce_sum((~torch.isfinite(X).all(dim=1)).sum().reshape(1)).item())
        if bad:
            raise InputError(f"{where}: {bad} rows of the features contain NaN or infinity.")

    def _vote(self, sims: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
        """Per-class sums of the neighbours' weights (``-inf`` padding weighs nothing)."""
        if self.temperature is None:
            weights = torch.isfinite(sims).to(sims.dtype)
        else:  # the exponent is -(d**2 - d_min**2) / T for Euclidean, (s - s_max) / T for cosine
            exponent = (sims - sims[:, :1]) * (2.0 if self.metric == "euclidean" else 1.0)
            weights = torch.exp(exponent / self.temperature)
        return sims.new_zeros(sims.shape[0], n_classes).scatter_add_(1, labels, weights)


def _unit_rows(X: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (zero rows stay zero)."""
    return X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)


def _local_topk(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bias: torch.Tensor | None,
    codes: torch.Tensor,
    k: int,
    block: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest scores ``queries @ bank.T + bias`` of each query and their class codes, sorted.

    ``block`` holds the scores (its first ``len(queries)`` rows are overwritten). A bank (shard)
    with fewer than ``k`` rows is padded with ``-inf`` scores, which weigh 0.
    """
    out = block[: queries.shape[0]]
    sims_all = torch.mm(queries, bank.t(), out=out) if bias is None else torch.addmm(bias, queries, bank.t(), out=out)
    sims, index = sims_all.topk(min(k, bank.shape[0]), dim=1)
    labels = codes[index]
    if sims.shape[1] < k:
        pad = (queries.shape[0], k - sims.shape[1])
        sims = torch.cat([sims, sims.new_full(pad, -math.inf)], dim=1)
        labels = torch.cat([labels, labels.new_zeros(pad)], dim=1)
    return sims, labels
