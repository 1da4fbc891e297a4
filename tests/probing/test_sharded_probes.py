"""Sharded probes on 2 CPU ranks (gloo) equal the single-process probes on the concatenated data."""

from __future__ import annotations

import pickle
import socket
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from fabricmetrics.distributed import TorchCollectives
from fabricmetrics.probing import KNNProbe, LinearProbe, RidgeProbe

WORLD = 2
# Uneven shards: rank 1 holds fewer bank rows than k (its candidates are padded) and no queries.
BANK_SPLIT, QUERY_SPLIT = (292, 8), (80, 0)
KNN = {"k": 10, "temperature": 0.1}
LINEAR = {"C": 0.5, "dtype": "float64", "tol": 1e-8, "max_iter": 500}


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 380)
    X = (rng.normal(size=(4, 12))[y] + rng.normal(size=(380, 12))).astype(np.float32) * 3.0 + 1.0
    target = X @ rng.normal(size=12) + rng.normal(size=380)
    return {"X": X[:300], "y": y[:300], "target": target[:300], "Xq": X[300:], "yq": y[300:]}


def _shard(array: np.ndarray, split: tuple[int, ...], rank: int) -> np.ndarray:
    start = sum(split[:rank])
    return array[start : start + split[rank]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, port: int, out: str) -> None:
    """Both scenarios in one spawn (starting processes is most of the cost): results, then errors."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        results = _sharded_results(rank)
        results["errors"] = _sharded_errors(rank)
        Path(out, f"rank{rank}.pkl").write_bytes(pickle.dumps(results))
        dist.barrier()  # leave together: no rank tears the group down under another
    finally:
        dist.destroy_process_group()


def _sharded_results(rank: int) -> dict[str, Any]:
    d = _data()
    X, y, target = (_shard(d[key], BANK_SPLIT, rank) for key in ("X", "y", "target"))
    Xq, yq = (_shard(d[key], QUERY_SPLIT, rank) for key in ("Xq", "yq"))
    # A budget of ~2 query rows per round forces many rounds; rank 1 sits out most of them.
    knn = KNNProbe(**KNN, sharded=True, memory_budget_mb=0.005).fit(X, y)
    knn_euclidean = KNNProbe(k=10, temperature=None, metric="euclidean", sharded=True).fit(X, y)
    linear = LinearProbe(**LINEAR, sharded=True).fit(X, y)
    linear32 = LinearProbe(sharded=True).fit(X, y)
    ridge = RidgeProbe(alpha=2.0, sharded=True).fit(X, target, collectives=TorchCollectives())
    return {
        "knn_proba": knn.predict_proba(Xq),
        "knn_pred": knn.predict(Xq),
        "knn_score": knn.score(Xq, yq),
        "knn_euclidean_proba": knn_euclidean.predict_proba(Xq),
        "linear_coef": linear.coef_,
        "linear_intercept": linear.intercept_,
        "linear_score": linear.score(Xq, yq),
        "linear32_coef": linear32.coef_,
        "ridge_coef": ridge.coef_,
        "ridge_score": ridge.score(X, target),
        **_far_from_the_origin(X, y, target, Xq),
    }


OFFSET = 1000.0  # float32 embeddings sharing a large offset: every product must run on centred rows


def _far_from_the_origin(X: np.ndarray, y: np.ndarray, target: np.ndarray, Xq: np.ndarray) -> dict[str, Any]:
    """float32 sharded probes on ``OFFSET + X``, compared with float64 scikit-learn on the same values."""
    Xo, Xqo, to = X + np.float32(OFFSET), Xq + np.float32(OFFSET), (target + 10 * OFFSET).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float32 may stop at its precision
        linear = LinearProbe(tol=1e-5, max_iter=300, sharded=True).fit(Xo, y)
    return {
        "far_knn_cosine_proba": KNNProbe(k=10, temperature=None, sharded=True).fit(Xo, y).predict_proba(Xqo),
        "far_knn_euclidean_proba": KNNProbe(k=10, temperature=None, metric="euclidean", sharded=True)
        .fit(Xo, y)
        .predict_proba(Xqo),
        "far_linear_coef": linear.coef_,
        "far_linear_proba": linear.predict_proba(Xqo),
        "far_ridge_pred": RidgeProbe(alpha=2.0, sharded=True).fit(Xo, to).predict(Xqo),
    }


def _sharded_errors(rank: int) -> list[str]:
    d = _data()
    X, y = _shard(d["X"], BANK_SPLIT, rank), _shard(d["y"], BANK_SPLIT, rank)
    errors: list[str] = []
    bad_shape = X[:, 0] if rank == 1 else X  # rank 1 passes a 1-D array
    bad_values = np.where(np.arange(len(X))[:, None] == 0, np.nan, X) if rank == 0 else X
    for probe, features in ((LinearProbe(sharded=True), bad_shape), (KNNProbe(sharded=True), bad_values)):
        try:
            probe.fit(features, y)
        except Exception as err:
            errors.append(f"{type(err).__name__}: {err}")
    knn = KNNProbe(k=5, sharded=True).fit(X, y)  # the ranks are still in step
    try:
        knn.predict(X[:, :3])
    except Exception as err:
        errors.append(f"{type(err).__name__}: {err}")
    errors.append(f"score {knn.score(X, y):.3f}")
    return errors


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of 2 gloo ranks computed (one spawn, a fresh port)."""
    out = tmp_path_factory.mktemp("sharded")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return [pickle.loads(Path(out, f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_sharded_probes_equal_single_process(ranks: list[dict[str, Any]]) -> None:
    d = _data()
    knn = KNNProbe(**KNN).fit(d["X"], d["y"])
    np.testing.assert_array_equal(ranks[0]["knn_pred"], knn.predict(d["Xq"]))
    np.testing.assert_allclose(ranks[0]["knn_proba"], knn.predict_proba(d["Xq"]), atol=1e-6)
    assert ranks[1]["knn_pred"].shape == (0,) and ranks[1]["knn_proba"].shape == (0, 4)
    assert ranks[0]["knn_score"] == ranks[1]["knn_score"] == knn.score(d["Xq"], d["yq"])
    euclidean = KNNProbe(k=10, temperature=None, metric="euclidean").fit(d["X"], d["y"])
    np.testing.assert_allclose(ranks[0]["knn_euclidean_proba"], euclidean.predict_proba(d["Xq"]), atol=1e-6)

    linear = LinearProbe(**LINEAR).fit(d["X"], d["y"])
    for r in range(WORLD):  # every rank ran the same optimisation
        np.testing.assert_array_equal(ranks[r]["linear_coef"], ranks[0]["linear_coef"])
        np.testing.assert_array_equal(ranks[r]["linear32_coef"], ranks[0]["linear32_coef"])
        assert ranks[r]["linear_score"] == pytest.approx(linear.score(d["Xq"], d["yq"]))
    np.testing.assert_allclose(ranks[0]["linear_coef"], linear.coef_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ranks[0]["linear_intercept"], linear.intercept_, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float32 may stop at its precision, as on the ranks
        linear32 = LinearProbe().fit(d["X"], d["y"])
    np.testing.assert_allclose(ranks[0]["linear32_coef"], linear32.coef_, rtol=1e-3, atol=1e-3)

    ridge = RidgeProbe(alpha=2.0).fit(d["X"], d["target"])
    np.testing.assert_allclose(ranks[1]["ridge_coef"], ridge.coef_, rtol=1e-4, atol=1e-5)
    assert ranks[1]["ridge_score"] == pytest.approx(ridge.score(d["X"], d["target"]), abs=1e-6)


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_sharded_float32_probes_far_from_the_origin_match_scikit_learn(ranks: list[dict[str, Any]]) -> None:
    d = _data()
    X, Xq = (d["X"] + np.float32(OFFSET)).astype(np.float64), (d["Xq"] + np.float32(OFFSET)).astype(np.float64)
    for metric in ("cosine", "euclidean"):
        ref = KNeighborsClassifier(10, metric=metric, algorithm="brute").fit(X, d["y"])
        np.testing.assert_allclose(ranks[0][f"far_knn_{metric}_proba"], ref.predict_proba(Xq), atol=1e-6)
    scaler = StandardScaler().fit(X)
    logistic = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(scaler.transform(X), d["y"])
    for r in range(WORLD):
        np.testing.assert_array_equal(ranks[r]["far_linear_coef"], ranks[0]["far_linear_coef"])
    np.testing.assert_allclose(ranks[0]["far_linear_proba"], logistic.predict_proba(scaler.transform(Xq)), atol=5e-3)
    np.testing.assert_allclose(ranks[0]["far_linear_coef"] * scaler.scale_, logistic.coef_, rtol=1e-2, atol=1e-2)
    ridge = Ridge(alpha=2.0).fit(scaler.transform(X), (d["target"] + 10 * OFFSET).astype(np.float32).astype(np.float64))
    # Residuals have a standard deviation of about 1: predictions agree to float32 accuracy of targets near 1e4.
    np.testing.assert_allclose(ranks[0]["far_ridge_pred"], ridge.predict(scaler.transform(Xq)), rtol=0, atol=5e-3)


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_a_bad_shard_raises_on_every_rank(ranks: list[dict[str, Any]]) -> None:
    errors = [r["errors"] for r in ranks]
    assert errors[1][0].startswith("InputError: LinearProbe.fit expects X of shape (n_samples, n_features)")
    assert errors[0][0].startswith("DistributedError:")
    assert "rank 1" in errors[0][0].lower() and "LinearProbe.fit" in errors[0][0] and "shard" in errors[0][0]
    for rank_errors in errors:
        assert rank_errors[1] == "InputError: KNNProbe.fit: 1 rows of the features contain NaN or infinity."
        assert rank_errors[2] == (
            "InputError: KNNProbe.predict: X has 3 features, but the probe was fitted on 12 features."
        )
    assert errors[0][3] == errors[1][3]


def test_sharded_without_a_process_group_is_the_single_process_probe() -> None:
    d = _data()
    for make in (lambda **kw: KNNProbe(**KNN, **kw), lambda **kw: LinearProbe(**LINEAR, **kw)):
        alone, sharded = make().fit(d["X"], d["y"]), make(sharded=True).fit(d["X"], d["y"])
        np.testing.assert_array_equal(sharded.predict_proba(d["Xq"]), alone.predict_proba(d["Xq"]))
        assert sharded.score(d["Xq"], d["yq"]) == alone.score(d["Xq"], d["yq"])
