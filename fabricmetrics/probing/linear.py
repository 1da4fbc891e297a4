"""Linear probes in torch: multinomial logistic regression (L-BFGS) and ridge regression (closed form).

Both are scikit-learn estimators that compute on the device of the features they are given and
return NumPy. :class:`LinearProbe` minimises scikit-learn's ``LogisticRegression`` objective on
standardised features (``StandardScaler`` + ``LogisticRegression(C=C)``), written for speed: the
loss and gradient are two matrix products by hand (no autograd), the scaling is folded into the
weights, and L-BFGS runs in coordinates whitened by the features' covariance, which takes it to the
optimum in a few dozen passes over the data.

Every product runs on **centred** features. Real embeddings are not centred (post-ReLU features have
large positive means), and in float32 a product such as ``X.T @ (y - y_mean)`` or ``X @ w`` on
features of mean 1000 loses the digits that the centred answer needs (issue: ridge R² 0.90 where
float64 gets 0.97). The fit centres one copy of the features; prediction centres chunk by chunk.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from fabricmetrics.distributed import Collectives
from fabricmetrics.exceptions import ConfigurationError, InputError
from fabricmetrics.probing._lbfgs import minimize_lbfgs
from fabricmetrics.probing._torch_utils import (
    DTypeName,
    accuracy,
    as_features,
    centered_covariance,
    check_n_features,
    feature_scaling,
    pick_collectives,
    prepare_fit,
    r2,
    to_numpy,
)

__all__ = ["LinearProbe", "RidgeProbe"]

_PRECONDITION_ROWS_PER_FEATURE = 16  # rows of the covariance subsample, per feature (at least 4096)
_ROWS_PER_CHUNK = 4096  # rows centred at once by predictions and by RidgeProbe's products


class _LinearModel(BaseEstimator):
    """Prediction ``(X - mean_) @ coef_.T + centred bias``: ``X @ coef_.T + intercept_``, computed stably.

    The tensors stay on the device of the last call. The centring is done chunk by chunk, so a
    prediction holds at most ``_ROWS_PER_CHUNK`` centred rows besides its output.
    """

    dtype: DTypeName
    sharded: bool
    n_features_in_: int
    _weight: torch.Tensor
    _bias: torch.Tensor
    _center: torch.Tensor

    def _set_linear(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Store the weights found on standardised, centred features, folded back to raw features.

        ``bias`` is the intercept for centred features; ``intercept_`` (for raw features) is computed
        in float64 and rounded once.
        """
        self._weight, self._bias, self._center = weight / scale, bias, mean
        self.coef_ = to_numpy(self._weight)
        raw_bias = bias.double() - self._weight.double() @ mean.double()
        self.intercept_ = to_numpy(raw_bias.to(weight.dtype))
        self.mean_, self.scale_ = to_numpy(mean), to_numpy(scale)

    def _linear(self, X: Any, where: str) -> torch.Tensor:
        check_is_fitted(self)
        features = as_features(X, self.dtype, where, allow_empty=self.sharded)
        check_n_features(features, self.n_features_in_, where)
        bad = int((~torch.isfinite(features).all(dim=1)).sum())  # as scikit-learn: no prediction from NaN
        if bad:
            raise InputError(f"{where}: {bad} rows of the features contain NaN or infinity.")
        device = features.device
        weight, bias, center = self._weight.to(device), self._bias.to(device), self._center.to(device)
        out = features.new_empty(features.shape[0], weight.shape[0])
        for start in range(0, features.shape[0], _ROWS_PER_CHUNK):
            rows = features[start : start + _ROWS_PER_CHUNK]
            torch.addmm(bias, rows - center, weight.t(), out=out[start : start + _ROWS_PER_CHUNK])
        return out


class LinearProbe(ClassifierMixin, _LinearModel):
    """Multinomial logistic regression fitted by full-batch L-BFGS in torch.

    Minimises scikit-learn's objective ``C * sum_i CE_i + ||W||**2 / 2`` (divided by ``n``) on
    standardised features, so ``LinearProbe(C=C)`` matches ``StandardScaler`` followed by
    ``LogisticRegression(C=C)``; the intercept is not penalised. With two classes scikit-learn fits
    one binomial vector ``w``; the probe keeps one row per class, ``-w / 2`` and ``w / 2``, and
    penalises them twice as much, so its decision ``logit_1 - logit_0`` is scikit-learn's at the
    same ``C``. The products run on centred features (one centred copy of ``X`` during ``fit``), so
    float32 keeps its accuracy on features far from zero. Inputs: NumPy (computed on the CPU) or
    tensors (computed on their device); outputs are NumPy.

    Args:
        C: inverse regularisation strength, as in ``LogisticRegression``.
        max_iter: most L-BFGS iterations; a :class:`~sklearn.exceptions.ConvergenceWarning` says
            when they ran out.
        tol: stop when no entry of the gradient of the mean objective exceeds ``tol`` in absolute
            value (scikit-learn's ``tol`` for ``lbfgs``).
        standardize: centre and scale features to unit variance inside the probe (``coef_`` is
            still expressed for raw features).
        precondition: run L-BFGS in coordinates whitened by the features' covariance (from a
            subsample of at most ``max(4096, 16 * n_features)`` rows). It changes the path, not
            the optimum; turn it off for very wide features (``n_features`` of several thousands),
            where its ``n_features**3`` Cholesky costs more than it saves.
        dtype: computation dtype; ``"float32"`` is fast, ``"float64"`` reaches tight tolerances.
        sharded: ``fit`` and ``score`` are collective calls, each rank passing its own shard;
            losses and gradients are summed over ranks at every evaluation, so every rank runs the
            same optimisation and ends with the same weights. ``predict`` stays local.

    Attributes:
        classes_: sorted labels seen in ``fit`` (the union over ranks when sharded).
        coef_: ``(n_classes, n_features)`` weights on raw features.
        intercept_: ``(n_classes,)`` biases.
        mean_: the standardisation's centre (zeros without ``standardize``).
        scale_: the standardisation's scale (ones without ``standardize``).
        n_features_in_: number of features.
        n_iter_: L-BFGS iterations.
        n_evals_: loss and gradient evaluations, each one pass of ``X @ W`` and one of ``G.T @ X``
            over the data.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 3, 300)
        >>> X = rng.normal(size=(300, 8)) + 2.0 * np.eye(3, 8)[y]
        >>> probe = LinearProbe(C=1.0).fit(X[:200], y[:200])
        >>> probe.predict(X[:5]).tolist(), y[:5].tolist()
        ([2, 1, 1, 0, 0], [2, 1, 1, 0, 0])
        >>> round(probe.score(X[200:], y[200:]), 2)
        0.9
    """

    def __init__(
        self,
        C: float = 1.0,
        *,
        max_iter: int = 100,
        tol: float = 1e-4,
        standardize: bool = True,
        precondition: bool = True,
        dtype: DTypeName = "float32",
        sharded: bool = False,
    ) -> None:
        self.C = C
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize
        self.precondition = precondition
        self.dtype = dtype
        self.sharded = sharded

    def fit(self, X: Any, y: Any, *, collectives: Collectives | None = None) -> LinearProbe:
        """Fit the probe on features ``X`` and labels ``y`` (any hashable, sortable labels).

        Args:
            X: ``(n_samples, n_features)`` array or tensor; this rank's shard when ``sharded``.
            y: ``(n_samples,)`` labels.
            collectives: what ranks communicate through when ``sharded`` (default: the initialised
                ``torch.distributed`` group, if any); ignored otherwise.

        Returns:
            ``self``.

        Raises:
            ConfigurationError: a parameter is out of range.
            InputError: bad shapes, non-finite features, fewer than two classes.
        """
        if not self.C > 0 or not self.tol >= 0 or not (isinstance(self.max_iter, int) and self.max_iter > 0):
            raise ConfigurationError(
                f"LinearProbe expects C > 0, tol >= 0 and a positive integer max_iter, got C={self.C!r}, "
                f"tol={self.tol!r}, max_iter={self.max_iter!r}."
            )
        data = prepare_fit(
            X, y, dtype=self.dtype, where="LinearProbe.fit", task="classification",
            sharded=self.sharded, collectives=collectives,
        )  # fmt: skip
        assert data.classes is not None
        if len(data.classes) < 2:
            raise InputError(f"LinearProbe.fit needs at least 2 classes, got {data.classes.tolist()}.")
        X_, coll, n, k, d = data.X, data.collectives, data.n_total, len(data.classes), data.X.shape[1]
        mean, scale = feature_scaling(X_, n, coll, self.standardize, "LinearProbe.fit")
        # Two classes: rows -w/2 and w/2 penalised twice cost ||w||**2 / 2, scikit-learn's binomial penalty.
        lam = (2.0 if k == 2 else 1.0) / (self.C * n)
        if self.precondition:
            cov = centered_covariance(X_, mean, scale, n, max(4096, _PRECONDITION_ROWS_PER_FEATURE * d), coll)
            basis = _whitening_basis(cov, lam).to(X_.dtype)  # W = V @ basis
        else:
            basis = torch.eye(d, dtype=X_.dtype, device=X_.device)
        X_ = X_ - mean  # every product below on centred features: no float32 cancellation
        codes = data.target[:, None]
        # Per-class counts and feature sums, once: the one-hot half of the gradient is constant.
        class_sums = torch.cat(
            [
                torch.zeros(k, d, dtype=X_.dtype, device=X_.device).index_add_(0, data.target, X_),
                torch.bincount(data.target, minlength=k).to(X_.dtype)[:, None],
            ],
            dim=1,
        )
        class_sums = coll.all_reduce_sum(class_sums)
        counts, sums = class_sums[:, d], class_sums[:, :d]
        x0 = torch.zeros(k * d + k, dtype=X_.dtype, device=X_.device)
        log_prior = torch.log(counts / n)
        x0[k * d :] = log_prior - log_prior.mean()  # the best intercept for W = 0, summing to 0

        def objective(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            weight = v[: k * d].view(k, d) @ basis
            logits = torch.addmm(v[k * d :], X_, (weight / scale).t())
            picked = logits.gather(1, codes)
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()  # in place: the logits are not needed any more
            total = probs.sum(dim=1, keepdim=True)
            loss = (total.log() + top - picked).sum()  # row by row: no cancellation between sums
            probs.div_(total)
            packed = torch.cat([loss[None], probs.sum(dim=0), (probs.t() @ X_).flatten()])
            packed = coll.all_reduce_sum(packed)
            g_bias, g_raw = (packed[1 : k + 1] - counts) / n, (packed[k + 1 :].view(k, d) - sums) / n
            g_weight = g_raw / scale + lam * weight
            value = packed[0] / n + 0.5 * lam * weight.square().sum()
            stop = torch.maximum(g_weight.abs().max(), g_bias.abs().max())
            return value, torch.cat([(g_weight @ basis.t()).flatten(), g_bias]), stop

        eps = torch.finfo(X_.dtype).eps
        result = minimize_lbfgs(objective, x0, max_iter=self.max_iter, tol=self.tol, history_size=20, ftol=8 * eps)
        if not result.converged:
            warnings.warn(
                f"LinearProbe did not converge ({result.message}; largest gradient entry above "
                f"tol={self.tol}). HINT: raise max_iter, or use dtype='float64' for tight tolerances.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.classes_ = data.classes
        self.n_features_in_ = d
        self.n_iter_, self.n_evals_ = result.n_iter, result.n_evals
        self._set_linear(result.x[: k * d].view(k, d) @ basis, result.x[k * d :], mean, scale)
        return self

    def decision_function(self, X: Any, *, collectives: Collectives | None = None) -> np.ndarray:
        """Logits ``X @ coef_.T + intercept_``, shape ``(n_samples, n_classes)`` (local)."""
        return to_numpy(self._linear(X, "LinearProbe.decision_function"))

    def predict_proba(self, X: Any, *, collectives: Collectives | None = None) -> np.ndarray:
        """Class probabilities (softmax of the logits), columns in the order of ``classes_`` (local)."""
        return to_numpy(torch.softmax(self._linear(X, "LinearProbe.predict_proba"), dim=1))

    def predict(self, X: Any, *, collectives: Collectives | None = None) -> np.ndarray:
        """Most probable label of each sample.

        Local, even when sharded: every rank holds the same weights. ``collectives`` is accepted
        (and unused) so that every probe takes the same call.
        """
        best = to_numpy(self._linear(X, "LinearProbe.predict").argmax(dim=1))
        return self.classes_[best]

    def score(self, X: Any, y: Any, sample_weight: Any = None, *, collectives: Collectives | None = None) -> float:
        """Accuracy on ``(X, y)``; over all ranks' shards when ``sharded``."""
        return accuracy(y, self.predict(X), sample_weight, pick_collectives(self.sharded, collectives))


class RidgeProbe(RegressorMixin, _LinearModel):
    """Ridge regression solved in closed form in torch, for regression targets.

    Minimises ``||y - X w - b||**2 + alpha * ||w||**2`` on standardised features (or raw ones),
    like ``StandardScaler`` followed by ``Ridge(alpha=alpha)``: one pass for the moments, one pass
    for ``Xc.T @ Xc`` and ``Xc.T @ yc`` on centred features and targets (chunk by chunk, so float32
    keeps its accuracy whatever the offset of ``X`` and ``y``), and a ``n_features``-sized solve.
    Targets may have several columns.

    Args:
        alpha: regularisation strength (>= 0), as in ``Ridge``.
        standardize: centre and scale features to unit variance (``coef_`` is for raw features).
        dtype: computation dtype of the products (the solve is in float64).
        sharded: ``fit`` and ``score`` are collective calls over the ranks' shards; the sums are
            all-reduced, so every rank solves the same system.

    Attributes:
        coef_: ``(n_features,)`` or ``(n_targets, n_features)``.
        intercept_: a scalar or ``(n_targets,)``.
        mean_: as in :class:`LinearProbe`.
        scale_: as in :class:`LinearProbe`.
        n_features_in_: number of features.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5))
        >>> y = X @ np.array([1.0, -2.0, 0.0, 0.5, 3.0]) + 1.0
        >>> probe = RidgeProbe(alpha=1e-6, standardize=False).fit(X, y)
        >>> np.round(probe.coef_, 3).tolist(), round(float(probe.intercept_), 3)
        ([1.0, -2.0, 0.0, 0.5, 3.0], 1.0)
    """

    def __init__(
        self, alpha: float = 1.0, *, standardize: bool = True, dtype: DTypeName = "float32", sharded: bool = False
    ) -> None:
        self.alpha = alpha
        self.standardize = standardize
        self.dtype = dtype
        self.sharded = sharded

    def fit(self, X: Any, y: Any, *, collectives: Collectives | None = None) -> RidgeProbe:
        """Fit on features ``X`` and targets ``y`` of shape ``(n,)`` or ``(n, n_targets)``.

        Args:
            X: ``(n_samples, n_features)`` array or tensor; this rank's shard when ``sharded``.
            y: numeric targets.
            collectives: as in :meth:`LinearProbe.fit`.

        Returns:
            ``self``.

        Raises:
            ConfigurationError: ``alpha`` is negative.
            InputError: bad shapes or non-finite values.
        """
        if not self.alpha >= 0:
            raise ConfigurationError(f"RidgeProbe expects alpha >= 0, got alpha={self.alpha!r}.")
        data = prepare_fit(
            X, y, dtype=self.dtype, where="RidgeProbe.fit", task="regression",
            sharded=self.sharded, collectives=collectives,
        )  # fmt: skip
        X_, coll, n, d = data.X, data.collectives, data.n_total, data.X.shape[1]
        target = data.target.reshape(X_.shape[0], -1)
        mean, scale = feature_scaling(X_, n, coll, self.standardize, "RidgeProbe.fit")
        y_mean = coll.all_reduce_sum(target.sum(dim=0)) / n
        # Both products on centred chunks: on uncentred X, the error of y_mean alone moves X.T @ (y - y_mean)
        # by n * mean * error. (T, rows) @ (rows, D) is the fast layout for the second.
        gram = X_.new_zeros(d, d)
        yty = X_.new_zeros(target.shape[1], d)
        for start in range(0, X_.shape[0], _ROWS_PER_CHUNK):
            rows = (X_[start : start + _ROWS_PER_CHUNK] - mean) / scale
            gram.addmm_(rows.t(), rows)
            yty.addmm_((target[start : start + _ROWS_PER_CHUNK] - y_mean).t(), rows)
        sums = coll.all_reduce_sum(torch.cat([gram, yty]).double())
        gram, xty = sums[:d], sums[d:].t()
        gram.diagonal().add_(self.alpha)
        chol, info = torch.linalg.cholesky_ex(gram)
        solution = torch.cholesky_solve(xty, chol) if info.item() == 0 else torch.linalg.pinv(gram) @ xty
        weight = solution.t().to(X_.dtype)
        self.n_features_in_ = d
        self._set_linear(weight, y_mean, mean, scale)
        if data.target.dim() == 1:
            self.coef_, self.intercept_ = self.coef_[0], self.intercept_[0]
        return self

    def predict(self, X: Any, *, collectives: Collectives | None = None) -> np.ndarray:
        """Predicted targets, shaped like the ``y`` given to ``fit`` (local, even when sharded)."""
        out = self._linear(X, "RidgeProbe.predict")
        return to_numpy(out[:, 0] if np.ndim(self.coef_) == 1 else out)

    def score(self, X: Any, y: Any, sample_weight: Any = None, *, collectives: Collectives | None = None) -> float:
        """Coefficient of determination R² (averaged over targets); over all shards when ``sharded``."""
        predicted = to_numpy(self._linear(X, "RidgeProbe.score"))
        return r2(y, predicted, sample_weight, pick_collectives(self.sharded, collectives))


def _whitening_basis(cov: torch.Tensor, lam: float) -> torch.Tensor:
    """A basis ``B`` with ``B.T @ B = (cov + lam I)^-1``.

    L-BFGS on ``V`` with ``W = V @ B`` is L-BFGS on ``W`` started from a Hessian guess shaped like
    the features' covariance instead of the identity.
    """
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    chol, info = torch.linalg.cholesky_ex(cov + max(lam, 1e-6) * eye)
    if info.item() != 0:  # numerically indefinite: fall back to the plain coordinates
        return eye
    return torch.linalg.solve_triangular(chol, eye, upper=False)
