"""LinearProbe and RidgeProbe against scikit-learn, and their estimator API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score, f1_score, r2_score
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fabricmetrics.exceptions import ConfigurationError, InputError, InputTypeError
from fabricmetrics.probing import LinearProbe, RidgeProbe


def _classification(n: int = 400, d: int = 12, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping Gaussian classes on features of very different scales and offsets."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    scales = np.geomspace(0.1, 10.0, d)
    X = (rng.normal(size=(n, d)) + 1.2 * np.eye(k, d)[y]) * scales + 5.0
    return X, y


def _regression(n: int = 300, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * np.geomspace(0.5, 5.0, d) + 2.0
    return X, X @ rng.normal(size=d) + rng.normal(size=n) + 3.0


TIGHT = {"dtype": "float64", "tol": 1e-9, "max_iter": 1000}


@pytest.mark.parametrize("C", [0.01, 1.0, 10.0])
def test_raw_features_match_logistic_regression(C: float) -> None:
    X, y = _classification()
    # A second-order solver reaches the optimum; lbfgs stops 2e-5 away from it at C=10 on these raw features.
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000, solver="newton-cholesky").fit(X, y)
    probe = LinearProbe(C=C, standardize=False, **TIGHT).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X), atol=1e-5)
    np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(probe.intercept_, ref.intercept_, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precondition", [True, False])
def test_standardized_matches_scaler_pipeline(precondition: bool) -> None:
    X, y = _classification()
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)).fit(X, y)
    probe = LinearProbe(C=0.5, precondition=precondition, **TIGHT).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(X), atol=1e-6)
    np.testing.assert_allclose(probe.decision_function(X), ref.decision_function(X), atol=1e-4)
    np.testing.assert_allclose(probe.mean_, X.mean(axis=0))
    np.testing.assert_allclose(probe.scale_, X.std(axis=0))


@pytest.mark.parametrize("C", [0.05, 1.0])
@pytest.mark.parametrize("standardize", [True, False])
def test_two_classes_match_logistic_regression_at_the_same_C(C: float, standardize: bool) -> None:
    # scikit-learn fits one binomial vector w for two classes; the probe's rows are -w/2 and w/2.
    X, y = _classification(k=2)
    model = LogisticRegression(C=C, tol=1e-12, max_iter=10_000, solver="newton-cholesky")
    scaler = StandardScaler().fit(X)
    ref = model.fit(scaler.transform(X) if standardize else X, y)
    features = scaler.transform(X) if standardize else X
    probe = LinearProbe(C=C, standardize=standardize, **TIGHT).fit(X, y)
    np.testing.assert_allclose(probe.predict_proba(X), ref.predict_proba(features), atol=1e-7)
    logits = probe.decision_function(X)
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], ref.decision_function(features), rtol=1e-6, atol=1e-6)
    w = ref.coef_[0] / (scaler.scale_ if standardize else 1.0)
    np.testing.assert_allclose(probe.coef_[1] - probe.coef_[0], w, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probe.coef_[0], -probe.coef_[1], rtol=1e-6, atol=1e-9)


def test_float32_defaults_close_to_scikit_learn() -> None:
    X, y = _classification(n=2000, seed=1)
    ref = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[:1500], y[:1500])
    probe = LinearProbe().fit(X[:1500], y[:1500])
    assert abs(probe.score(X[1500:], y[1500:]) - ref.score(X[1500:], y[1500:])) <= 0.005
    np.testing.assert_allclose(probe.predict_proba(X[1500:]), ref.predict_proba(X[1500:]), atol=5e-3)
    assert probe.n_evals_ >= probe.n_iter_ > 0
    assert probe.coef_.shape == (4, 12) and probe.intercept_.shape == (4,)


def test_tensor_input_gives_numpy_and_the_same_result() -> None:
    X, y = _classification()
    from_numpy = LinearProbe().fit(X, y)
    from_torch = LinearProbe().fit(torch.from_numpy(X), torch.from_numpy(y))
    predicted = from_torch.predict(torch.from_numpy(X))
    assert isinstance(predicted, np.ndarray) and isinstance(from_torch.predict_proba(X), np.ndarray)
    np.testing.assert_array_equal(predicted, from_numpy.predict(X))
    np.testing.assert_allclose(from_torch.coef_, from_numpy.coef_, rtol=1e-5, atol=1e-6)


def test_string_labels_map_through_classes() -> None:
    X, y = _classification(k=3)
    names = np.array(["cat", "dog", "emu"])[y]
    probe = LinearProbe().fit(X, names)
    assert probe.classes_.tolist() == ["cat", "dog", "emu"]
    assert set(probe.predict(X)) <= {"cat", "dog", "emu"}
    assert probe.score(X, names) == pytest.approx(LinearProbe().fit(X, y).score(X, y))


def test_scikit_learn_api_and_metric_set() -> None:
    probe = LinearProbe(C=0.3, max_iter=50, dtype="float64")
    twin = clone(probe)
    assert twin is not probe and twin.get_params() == probe.get_params()
    assert twin.set_params(C=2.0).C == 2.0 and probe.C == 0.3
    assert is_classifier(probe) and not is_regressor(probe)
    X, y = _classification()
    assert cross_val_score(LinearProbe(), X, y, cv=3).mean() > 0.5
    predicted = probe.fit(X[:300], y[:300]).predict(X[300:])
    for metric in (balanced_accuracy_score, lambda a, b: f1_score(a, b, average="macro")):
        assert 0.0 <= metric(y[300:], predicted) <= 1.0


@pytest.mark.parametrize("method", ["predict", "predict_proba", "decision_function", "score"])
def test_not_fitted(method: str) -> None:
    X, y = _classification()
    args = (X, y) if method == "score" else (X,)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        getattr(LinearProbe(), method)(*args)


def test_convergence_warning_when_iterations_run_out() -> None:
    X, y = _classification()
    with pytest.warns(ConvergenceWarning, match="did not converge.*max_iter=2"):
        LinearProbe(max_iter=2, precondition=False).fit(X, y)


def test_constant_feature_is_harmless() -> None:
    X, y = _classification()
    X[:, 3] = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = LinearProbe().fit(X, y)
    assert probe.scale_[3] == 1.0 and probe.score(X, y) > 0.5


@pytest.mark.parametrize(
    ("X", "y", "error", "match"),
    [
        (np.zeros(10), np.zeros(10), InputError, r"expects X of shape \(n_samples, n_features\), got shape \(10,\)"),
        (np.zeros((10, 2)), np.zeros(9), InputError, r"X has 10 samples but y has shape \(9,\)"),
        (np.zeros((10, 2)), np.zeros((10, 2)), InputError, r"labels of shape \(n_samples,\).*HINT: y.ravel"),
        (np.zeros((4, 2)), np.array([0.5, 1.5, 2.5, 3.5]), InputError, "got 'continuous'.*HINT: use RidgeProbe"),
        (np.zeros((4, 2)), np.zeros(4), InputError, r"needs at least 2 classes, got \[0.0\]"),
        (np.array([["a", "b"]] * 4), np.arange(4) % 2, InputTypeError, "numeric features.*HINT"),
        (np.full((4, 2), np.nan), np.arange(4) % 2, InputError, "NaN or infinity"),
        (np.zeros((0, 2)), np.zeros(0), InputError, "at least one sample"),
    ],
)
def test_bad_inputs(X: np.ndarray, y: np.ndarray, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        LinearProbe().fit(X, y)


@pytest.mark.parametrize(
    ("params", "match"),
    [({"C": 0.0}, "C > 0.*C=0.0"), ({"max_iter": 0}, "max_iter=0"), ({"tol": -1.0}, "tol=-1.0")],
)
def test_bad_params(params: dict[str, float], match: str) -> None:
    X, y = _classification()
    with pytest.raises(ConfigurationError, match=match):
        LinearProbe(**params).fit(X, y)


def test_feature_count_and_label_count_mismatch() -> None:
    X, y = _classification()
    probe = LinearProbe().fit(X, y)
    with pytest.raises(InputError, match="X has 5 features, but the probe was fitted on 12 features"):
        probe.predict(X[:, :5])
    with pytest.raises(InputError, match=r"y has shape \(399,\), but there are 400 predictions"):
        probe.score(X, y[:-1])


def test_ridge_matches_scikit_learn() -> None:
    X, y = _regression()
    ref = Ridge(alpha=3.0).fit(X, y)
    probe = RidgeProbe(alpha=3.0, standardize=False, dtype="float64").fit(X, y)
    np.testing.assert_allclose(probe.coef_, ref.coef_, rtol=1e-10)
    assert probe.intercept_ == pytest.approx(ref.intercept_, rel=1e-10)
    assert probe.score(X, y) == pytest.approx(ref.score(X, y), rel=1e-12)
    weights = np.linspace(0.1, 2.0, len(y))
    assert probe.score(X, y, weights) == pytest.approx(r2_score(y, ref.predict(X), sample_weight=weights))


def test_ridge_standardized_multi_target_matches_pipeline() -> None:
    X, y = _regression()
    Y = np.stack([y, 2.0 - y, X[:, 0]], axis=1)
    ref = make_pipeline(StandardScaler(), Ridge(alpha=10.0)).fit(X, Y)
    probe = RidgeProbe(alpha=10.0).fit(torch.from_numpy(X).float(), torch.from_numpy(Y))
    assert probe.coef_.shape == (3, 8) and probe.intercept_.shape == (3,)
    np.testing.assert_allclose(probe.predict(X), ref.predict(X), rtol=1e-4, atol=1e-3)
    assert probe.score(X, Y) == pytest.approx(ref.score(X, Y), abs=1e-5)


def test_ridge_estimator_api() -> None:
    probe = RidgeProbe(alpha=0.5)
    assert is_regressor(probe) and clone(probe).get_params() == probe.get_params()
    with pytest.raises(NotFittedError):
        probe.predict(np.zeros((2, 3)))
    with pytest.raises(ConfigurationError, match="alpha >= 0, got alpha=-1"):
        RidgeProbe(alpha=-1).fit(*_regression())
    with pytest.raises(InputError, match="numeric targets"):
        RidgeProbe().fit(np.zeros((3, 2)), np.array(["a", "b", "c"]))
    with pytest.raises(InputError, match="the targets contain NaN or infinity"):
        RidgeProbe().fit(np.eye(3), np.array([1.0, np.nan, 0.0]))
    X, y = _regression()
    with pytest.raises(InputError, match=r"y has shape \(299,\), but the predictions have shape \(300, 1\)"):
        RidgeProbe().fit(X, y).score(X, y[:-1])


@pytest.mark.parametrize("probe", [LinearProbe(), RidgeProbe()])
def test_predictions_from_non_finite_features_are_refused(probe):
    X = np.random.default_rng(0).normal(size=(20, 3))
    probe.fit(X, np.arange(20) % 2)
    bad = X[:4].copy()
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    for method in ("predict", "decision_function") if isinstance(probe, LinearProbe) else ("predict",):
        with pytest.raises(InputError, match=r"2 rows of the features contain NaN or infinity"):
            getattr(probe, method)(bad)
