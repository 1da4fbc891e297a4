"""Brute-force NumPy references for the metrics tests: the formulas written the obvious way."""

from __future__ import annotations

import numpy as np

__all__ = [
    "ref_alignment",
    "ref_contrastive_accuracy",
    "ref_effective_rank",
    "ref_normalize",
    "ref_uniformity",
    "rotation",
]


def ref_normalize(z: np.ndarray, normalize: bool) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if not normalize:
        return z
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def ref_alignment(z1: np.ndarray, z2: np.ndarray, normalize: bool = True, alpha: float = 2) -> float:
    distances = np.linalg.norm(ref_normalize(z1, normalize) - ref_normalize(z2, normalize), axis=1)
    return float(np.mean(distances**alpha))


def ref_uniformity(z: np.ndarray, normalize: bool = True, t: float = 2) -> float:
    z = ref_normalize(z, normalize)
    n = z.shape[0]
    sq_dist = ((z[:, None, :] - z[None, :, :]) ** 2).sum(axis=-1)  # direct differences, no Gram trick
    off_diagonal = ~np.eye(n, dtype=bool)
    return float(np.log(np.mean(np.exp(-t * sq_dist[off_diagonal]))))


def ref_contrastive_accuracy(z1: np.ndarray, z2: np.ndarray, normalize: bool = True, topk: int = 1) -> float:
    sim = ref_normalize(z1, normalize) @ ref_normalize(z2, normalize).T

    def hits(s: np.ndarray) -> int:
        return sum(int(np.sum(s[i] > s[i, i]) < topk) for i in range(s.shape[0]))

    return (hits(sim) + hits(sim.T)) / (2 * sim.shape[0])


def ref_effective_rank(z: np.ndarray, eps: float = 1e-7) -> float:
    s = np.linalg.svd(np.asarray(z, dtype=np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return float(np.exp(-np.sum(p * np.log(p))))


def rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal ``d x d`` matrix."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))
