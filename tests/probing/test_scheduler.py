"""ProbingScheduler in one process: every key and value against scikit-learn fitted by hand on the same embeddings."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    explained_variance_score,
    f1_score,
    get_scorer,
    make_scorer,
    max_error,
    mean_absolute_error,
    mean_squared_error,
    median_absolute_error,
    precision_score,
    r2_score,
    recall_score,
)
from sklearn.model_selection import KFold, cross_validate
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fabricmetrics import MetricsTracker
from fabricmetrics.exceptions import ConfigurationError, MetricError
from fabricmetrics.probing import KNNProbe, LinearProbe
from fabricmetrics.probing.extraction import extract_embeddings
from fabricmetrics.probing.scheduler import ProbingScheduler

CLS = ["accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "precision_macro", "recall_macro"]
REG = ["MAE", "MedAE", "RMSE", "MSE", "R2", "PCC", "EVar"]


def classification_reference(y_true, y_pred) -> dict[str, float]:
    return {
        "accuracy": accuracy_score(y_true, y_pred),
        "balanced_accuracy": balanced_accuracy_score(y_true, y_pred),
        "f1_weighted": f1_score(y_true, y_pred, average="weighted"),
        "f1_macro": f1_score(y_true, y_pred, average="macro"),
        "precision_macro": precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall_macro": recall_score(y_true, y_pred, average="macro"),
    }


def regression_reference(y_true, y_pred) -> dict[str, float]:
    return {
        "MAE": mean_absolute_error(y_true, y_pred),
        "MedAE": median_absolute_error(y_true, y_pred),
        "RMSE": math.sqrt(mean_squared_error(y_true, y_pred)),
        "MSE": mean_squared_error(y_true, y_pred),
        "R2": r2_score(y_true, y_pred),
        "PCC": pearsonr(y_true, y_pred)[0],
        "EVar": explained_variance_score(y_true, y_pred),
    }


class Encoder(nn.Module):
    def __init__(self, d_in: int, d_out: int = 16) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.drop = nn.Dropout(0.5)  # active in train mode: embeddings would be random
        self.fc2 = nn.Linear(32, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def loader(x: np.ndarray, y: np.ndarray, batch_size: int = 64, shuffle: bool = False) -> DataLoader:
    return DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=batch_size, shuffle=shuffle)


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    torch.manual_seed(0)
    encoder = Encoder(64).train()
    return encoder, loader(x[:400], y[:400]), loader(x[400:600], y[400:600])


@pytest.fixture(scope="module")
def diabetes():
    data = load_diabetes(scaled=False)
    x = data.data[:, 2:]  # everything but age and sex
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = data.data[:, :2].astype(np.float32)  # age (years), sex (1 or 2)
    torch.manual_seed(0)
    return Encoder(8).train(), loader(x[:300], y[:300]), loader(x[300:], y[300:])


def embed(encoder, data_loader, **kwargs):
    emb = extract_embeddings(encoder, data_loader, **kwargs)
    return emb.features, emb.targets.numpy()


def test_one_classifier_every_key_and_value(digits):
    encoder, train, test = digits
    probe = LogisticRegression(max_iter=300)
    scheduler = ProbingScheduler(encoder, train, test, probe=probe)
    assert scheduler.keys == [f"LogisticRegression/{m}" for m in CLS]
    results = scheduler.run()
    assert list(results) == scheduler.keys
    (Xtr, ytr), (Xte, yte) = embed(encoder, train), embed(encoder, test)
    pred = LogisticRegression(max_iter=300).fit(Xtr[""], ytr).predict(Xte[""])
    expected = classification_reference(yte, pred)
    assert results == {f"LogisticRegression/{m}": pytest.approx(v, abs=1e-12) for m, v in expected.items()}
    assert all(isinstance(v, float) for v in results.values())
    assert not hasattr(probe, "coef_")  # a clone was fitted, not the user's estimator
    assert encoder.training and encoder.drop.training  # train mode restored
    assert scheduler.run() == results  # a fresh clone every time: same data, same result


def test_multitask_diabetes_list_and_dict(diabetes):
    encoder, train, test = diabetes
    scheduler = ProbingScheduler(encoder, train, test, probe=[Ridge(), LogisticRegression(max_iter=500)])
    assert scheduler.keys == [f"task0/{m}" for m in REG] + [f"task1/{m}" for m in CLS]
    results = scheduler.run()
    (Xtr, ytr), (Xte, yte) = embed(encoder, train), embed(encoder, test)
    age = Ridge().fit(Xtr[""], ytr[:, 0].astype(np.float64)).predict(Xte[""])
    sex = LogisticRegression(max_iter=500).fit(Xtr[""], ytr[:, 1].astype(int)).predict(Xte[""])
    expected = {f"task0/{m}": v for m, v in regression_reference(yte[:, 0].astype(np.float64), age).items()}
    expected.update({f"task1/{m}": v for m, v in classification_reference(yte[:, 1].astype(int), sex).items()})
    assert list(results) == list(expected)
    assert results == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0.0 < results["task0/PCC"] < 1.0 and results["task1/accuracy"] > 0.5

    named = ProbingScheduler(encoder, train, test, probe={"age": Ridge(), "sex": LogisticRegression(max_iter=500)})
    renamed = {k.replace("task0", "age").replace("task1", "sex"): v for k, v in results.items()}
    assert named.keys == list(renamed) and named.run() == renamed


def test_several_probes_of_one_target_column(digits):
    encoder, train, test = digits
    scheduler = ProbingScheduler(
        encoder, train, test, probe={"logreg": LogisticRegression(max_iter=300), "knn": KNNProbe(k=10)}
    )
    assert scheduler.keys == [f"{name}/{m}" for name in ("logreg", "knn") for m in CLS]
    results = scheduler.run()
    (Xtr, ytr), (Xte, yte) = embed(encoder, train), embed(encoder, test)
    for name, est in (("logreg", LogisticRegression(max_iter=300)), ("knn", KNNProbe(k=10))):
        pred = est.fit(Xtr[""], ytr).predict(Xte[""])
        for m, v in classification_reference(yte, pred).items():
            assert results[f"{name}/{m}"] == pytest.approx(v, abs=1e-12)


def test_layers_and_prefix(digits):
    encoder, train, test = digits
    scheduler = ProbingScheduler(
        encoder, train, test, probe=LogisticRegression(max_iter=300), layers=["fc1", "fc2"], prefix="probe"
    )
    assert scheduler.keys == [f"probe/{layer}/LogisticRegression/{m}" for layer in ("fc1", "fc2") for m in CLS]
    results = scheduler.run()
    assert list(results) == scheduler.keys
    (Xtr, ytr), (Xte, yte) = embed(encoder, train, layers=["fc1", "fc2"]), embed(encoder, test, layers=["fc1", "fc2"])
    for layer in ("fc1", "fc2"):
        pred = LogisticRegression(max_iter=300).fit(Xtr[layer], ytr).predict(Xte[layer])
        for m, v in classification_reference(yte, pred).items():
            assert results[f"probe/{layer}/LogisticRegression/{m}"] == pytest.approx(v, abs=1e-12)
    # fc2's output is the encoder's output: the same scores as probing without layers
    plain = ProbingScheduler(encoder, train, test, probe=LogisticRegression(max_iter=300)).run()
    assert [results[f"probe/fc2/{k}"] for k in plain] == list(plain.values())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")  # the hand-made reference
def test_cross_validation_mean_and_std_against_cross_validate(digits):
    encoder, train, _ = digits
    scheduler = ProbingScheduler(encoder, train, None, probe=LogisticRegression(max_iter=300), cv=3)
    assert scheduler.keys == [f"LogisticRegression/{m}{s}" for m in CLS for s in ("", "_std")]
    results = scheduler.run()
    assert list(results) == scheduler.keys
    X, y = embed(encoder, train)
    folds = cross_validate(LogisticRegression(max_iter=300), X[""], y, cv=3, scoring=CLS)
    for m in CLS:
        assert results[f"LogisticRegression/{m}"] == pytest.approx(folds[f"test_{m}"].mean(), abs=1e-12)
        assert results[f"LogisticRegression/{m}_std"] == pytest.approx(folds[f"test_{m}"].std(), abs=1e-12)

    splits = list(KFold(4, shuffle=True, random_state=0).split(X[""]))
    regression = ProbingScheduler(
        encoder,
        train,
        None,
        probe={"digit": Ridge()},
        cv=iter(splits),
        scoring={"r2": "r2", "max": make_scorer(max_error)},
    )
    assert regression.keys == ["digit/r2", "digit/r2_std", "digit/max", "digit/max_std"]
    folds = cross_validate(
        Ridge(), X[""], y.astype(float), cv=splits, scoring={"r2": "r2", "max": make_scorer(max_error)}
    )
    for _ in range(2):  # the generator of splits is kept as a list: the second probing has folds too
        results = regression.run()
        assert results == pytest.approx(
            {
                f"digit/{m}{s}": getattr(np, f)(folds[f"test_{m}"])
                for m in ("r2", "max")
                for s, f in (("", "mean"), ("_std", "std"))
            }
        )


def test_scoring_override_on_a_test_loader(digits):
    encoder, train, test = digits
    scheduler = ProbingScheduler(
        encoder, train, test, probe=LogisticRegression(max_iter=300), scoring=["accuracy", "neg_log_loss"]
    )
    assert scheduler.keys == ["LogisticRegression/accuracy", "LogisticRegression/neg_log_loss"]
    results = scheduler.run()
    (Xtr, ytr), (Xte, yte) = embed(encoder, train), embed(encoder, test)
    fitted = LogisticRegression(max_iter=300).fit(Xtr[""], ytr)
    assert results == {
        "LogisticRegression/accuracy": pytest.approx(get_scorer("accuracy")(fitted, Xte[""], yte), abs=1e-12),
        "LogisticRegression/neg_log_loss": pytest.approx(get_scorer("neg_log_loss")(fitted, Xte[""], yte), abs=1e-12),
    }


def test_max_samples_is_a_seeded_subsample(digits):
    encoder, train, test = digits
    scheduler = ProbingScheduler(encoder, train, test, probe=Ridge(), max_samples=150, random_state=3)
    results = scheduler.run()
    rng = [np.random.default_rng([3, i]) for i in range(2)]
    keep = [np.sort(r.choice(n, 150, replace=False)) for r, n in zip(rng, (400, 200), strict=True)]
    (Xtr, ytr), (Xte, yte) = embed(encoder, train, keep=keep[0]), embed(encoder, test, keep=keep[1])
    assert len(ytr) == len(yte) == 150
    pred = Ridge().fit(Xtr[""], ytr.astype(float)).predict(Xte[""])
    expected = {f"Ridge/{m}": v for m, v in regression_reference(yte.astype(float), pred).items()}
    assert results == pytest.approx(expected, rel=1e-9)
    assert scheduler.run() == results  # the same samples every time


def test_batch_and_embedding_hooks(digits):
    encoder, train, test = digits

    def as_dicts(data_loader):
        return [{"pixels": x, "digit": y} for x, y in data_loader]

    scheduler = ProbingScheduler(
        encoder,
        as_dicts(train),
        as_dicts(test),
        probe=LogisticRegression(max_iter=300),
        batch_fn=lambda batch: (batch["pixels"], batch["digit"]),
        embed_fn=lambda x: torch.relu(encoder.fc1(x)),  # e.g. encoder.forward_features
    )
    probed_fc1 = ProbingScheduler(encoder, train, test, probe=LogisticRegression(max_iter=300), layers=["fc1"])
    relu_scores = scheduler.run()
    (Xtr, ytr), (Xte, yte) = embed(encoder, train, layers=["fc1"]), embed(encoder, test, layers=["fc1"])
    pred = LogisticRegression(max_iter=300).fit(np.maximum(Xtr["fc1"], 0), ytr).predict(np.maximum(Xte["fc1"], 0))
    assert relu_scores["LogisticRegression/accuracy"] == pytest.approx(accuracy_score(yte, pred), abs=1e-12)
    assert set(probed_fc1.run()) == {f"fc1/LogisticRegression/{m}" for m in CLS}


def test_a_sharded_probe_in_one_process(digits):
    encoder, train, test = digits
    results = ProbingScheduler(encoder, train, test, probe=LinearProbe(sharded=True)).run()
    (Xtr, ytr), (Xte, yte) = embed(encoder, train), embed(encoder, test)
    pred = LinearProbe().fit(Xtr[""], ytr).predict(Xte[""])
    assert results == pytest.approx({f"LinearProbe/{m}": v for m, v in classification_reference(yte, pred).items()})


class NaNRows(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * torch.where(h[:, :1] > h[:, :1].median(), torch.nan, 1.0)  # NaN rows for half the samples


class Poisoned(nn.Module):
    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(16, 4)
        self.poison = NaNRows()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.poison(self.head(self.encoder(x)))


def test_nan_embeddings_give_nan_scores_and_one_warning(digits):
    encoder, train, test = digits
    model = Poisoned(encoder)
    scheduler = ProbingScheduler(
        model, train, test, probe=[LogisticRegression(max_iter=300)], layers=["encoder.fc2", "head", "poison"]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = scheduler.run()
    nan_warnings = [w for w in caught if "NaN or inf" in str(w.message)]
    assert len(nan_warnings) == 1 and nan_warnings[0].category is RuntimeWarning
    assert "layer `poison`" in str(nan_warnings[0].message) and "head" not in str(nan_warnings[0].message)
    assert all(math.isnan(results[f"poison/task0/{m}"]) for m in CLS)
    assert all(math.isfinite(results[f"{layer}/task0/{m}"]) for layer in ("encoder.fc2", "head") for m in CLS)
    assert scheduler.runs == 1

    output = ProbingScheduler(model, train, None, probe=Ridge(), cv=2)
    with pytest.warns(RuntimeWarning, match="the embeddings of the encoder output hold NaN or inf") as record:
        results = output.run()
    assert len(record) == 1 and list(results) == output.keys and all(math.isnan(v) for v in results.values())


def test_targets_that_do_not_fit_the_probes_are_clear_errors(digits, diabetes):
    encoder, train, test = diabetes
    with pytest.raises(ConfigurationError, match=r"is a classifier, but the targets have 2 columns"):
        ProbingScheduler(encoder, train, test, probe=LogisticRegression()).run()
    with pytest.raises(ConfigurationError, match=r"3 probes need targets with 3 columns .* shape \(n, 2\)"):
        ProbingScheduler(encoder, train, test, probe=[Ridge(), Ridge(), Ridge()]).run()
    data = load_diabetes(scaled=False)
    x, bmi_sex = data.data[:, 4:].astype(np.float32), data.data[:, 2:0:-1].astype(np.float32)  # bmi (kg/m²), sex
    encoder = Encoder(6).train()
    with pytest.raises(
        ConfigurationError,
        match=r"`task0` \(LogisticRegression\) is a classifier, but target column 0 of the train loader holds "
        r"non-integer values such as 32\.1: regression targets\. HINT: use a regressor",
    ):
        ProbingScheduler(encoder, loader(x, bmi_sex), loader(x, bmi_sex), probe=[LogisticRegression(), Ridge()]).run()
    assert encoder.training and encoder.drop.training  # train mode restored after a failed probing


def test_configuration_errors(digits):
    encoder, train, test = digits
    probe = LogisticRegression()
    with pytest.raises(ConfigurationError, match=r"nothing to be scored on\. HINT"):
        ProbingScheduler(encoder, train, None, probe=probe)
    with pytest.raises(ConfigurationError, match="HINT: pass test_loader=None with cv="):
        ProbingScheduler(encoder, train, test, probe=probe, cv=3)
    with pytest.raises(ConfigurationError, match="number of folds >= 2"):
        ProbingScheduler(encoder, train, None, probe=probe, cv=1)
    with pytest.raises(ConfigurationError, match=r"no submodule 'fc3'. Its submodules are: \[fc1, drop, fc2\]"):
        ProbingScheduler(encoder, train, test, probe=probe, layers=["fc3"])
    with pytest.raises(ConfigurationError, match="layers must be a non-empty list"):
        ProbingScheduler(encoder, train, test, probe=probe, layers="fc1")
    with pytest.raises(ConfigurationError, match="every_n_epochs must be a positive int, got 0"):
        ProbingScheduler(encoder, train, test, probe=probe, every_n_epochs=0)
    with pytest.raises(ConfigurationError, match=r"HINT: probe=LogisticRegression\(\)"):
        ProbingScheduler(encoder, train, test, probe=LogisticRegression)
    with pytest.raises(ConfigurationError, match="takes neither cv= nor scoring="):
        ProbingScheduler(encoder, train, None, probe=LinearProbe(sharded=True), cv=3)
    with pytest.raises(ConfigurationError, match="'no_such_scorer' is not a valid scoring value"):
        ProbingScheduler(encoder, train, test, probe=probe, scoring="no_such_scorer")
    with pytest.raises(ConfigurationError, match=r"encoder must be a torch\.nn\.Module"):
        ProbingScheduler(lambda x: x, train, test, probe=probe)
    with pytest.raises(ConfigurationError, match="prefix must be a non-empty string"):
        ProbingScheduler(encoder, train, test, probe=probe, prefix="")


class Failing(ClassifierMixin, BaseEstimator):
    def fit(self, X, y):
        raise ValueError("probe exploded")


def test_a_failing_probe_raises_its_error_and_the_next_probing_still_runs(digits):
    encoder, train, test = digits
    scheduler = ProbingScheduler(encoder, train, test, probe={"bad": Failing()})
    with pytest.raises(MetricError, match=r"Probe `bad` \(Failing\(\)\) failed: ValueError: probe exploded") as info:
        scheduler.run()
    assert isinstance(info.value.__cause__, ValueError)
    assert scheduler.runs == 0 and encoder.training


def test_schedule_with_the_tracker_and_state(digits):
    encoder, train, test = digits
    scheduler = ProbingScheduler(encoder, train, test, probe=LogisticRegression(max_iter=300), every_n_epochs=2)
    tracker = MetricsTracker({"loss": lambda loss: loss.mean()}, probes=[scheduler])
    assert [scheduler.maybe_run(e) for e in (1, 3)] == [{}, {}]
    for _ in range(5):
        with tracker.epoch("train"):
            for _ in range(3):
                tracker.step("train", {"loss": torch.rand(4)})
    assert scheduler.runs == 2 and scheduler.state_dict() == {"runs": 2}
    steps = [step for step, _ in tracker.history["LogisticRegression/accuracy"]]
    assert steps == [6, 12]  # probed after train epochs 2 and 4, at the tracker's global step
    assert set(scheduler.keys) <= set(tracker.history)
    assert (
        tracker.history["LogisticRegression/accuracy"][-1][1] == scheduler.last_results["LogisticRegression/accuracy"]
    )
    restored = ProbingScheduler(encoder, train, test, probe=LogisticRegression(), every_n_epochs=2)
    restored.load_state_dict(torch.load(_saved(scheduler.state_dict()), weights_only=True))
    assert restored.runs == 2


def _saved(state):
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer
