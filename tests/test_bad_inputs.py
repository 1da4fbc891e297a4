"""Bad input never escapes as a bare error from inside torch or scikit-learn.

Property-based: random metrics, ``needs`` forms, schedules and step outputs. Whatever fails must fail
with a project error (a ``FabricMetricsError``) whose message names the metric concerned.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, f1_score, mean_squared_error
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics import MetricsTracker, Schedule
from fabricmetrics.exceptions import ConfigurationError, FabricMetricsError, StageError

KEYS = ["preds", "target", "y_true", "y_pred", "z", "value", "logits", "labels"]


def pair_mean(preds, target):
    return (torch.as_tensor(preds, dtype=torch.float64) - torch.as_tensor(target, dtype=torch.float64)).mean()


def first_row(z):
    return z[0]


def variadic(*args):
    return 0.0


METRICS = {
    "accuracy_score": lambda: accuracy_score,
    "f1_macro": lambda: functools.partial(f1_score, average="macro"),
    "mse": lambda: mean_squared_error,
    "tm_acc": lambda: MulticlassAccuracy(num_classes=3),
    "tm_mean": lambda: MeanMetric(),
    "pair_mean": lambda: pair_mean,
    "first_row": lambda: first_row,
    "variadic": lambda: variadic,
}


@st.composite
def values(draw, n: int):
    kind = draw(
        st.sampled_from(
            [
                "labels",
                "labels",
                "logits",
                "logits",
                "float1d",
                "scalar",
                "numpy",
                "float",
                "str",
                "none",
                "empty",
                "mismatched",
                "float2d",
            ]
        )
    )
    if kind == "labels":
        return torch.randint(0, 3, (n,))
    if kind == "logits":
        return torch.randn(n, 3)
    if kind == "float1d":
        return torch.randn(n)
    if kind == "float2d":
        return torch.randn(n, draw(st.integers(1, 4)))
    if kind == "mismatched":
        return torch.randn(n + 1)
    if kind == "scalar":
        return torch.tensor(draw(st.floats(-3, 3)))
    if kind == "numpy":
        return np.arange(n) % 3
    if kind == "float":
        return draw(st.floats(-3, 3))
    if kind == "str":
        return "macro"
    if kind == "empty":
        return torch.zeros(0)
    return None


@st.composite
def needs_for(draw, names):
    form = draw(st.sampled_from(["none", "none", "none", "list", "keywords", "per_metric"]))
    keys = st.sampled_from(KEYS)
    if form == "none":
        return None
    if form == "list":
        return draw(st.lists(keys, min_size=1, max_size=3))
    if form == "keywords":
        params = st.sampled_from(["preds", "target", "y_true", "y_pred", "z", "value"])
        return draw(st.dictionaries(params, keys, min_size=1, max_size=3))
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
    return {name: draw(st.lists(keys, min_size=1, max_size=3)) for name in chosen}


@st.composite
def scenarios(draw):
    names = draw(st.lists(st.sampled_from(sorted(METRICS)), min_size=1, max_size=3, unique=True))
    needs = draw(needs_for(names))
    per_step = draw(st.booleans())
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 5))
        steps.append(draw(st.fixed_dictionaries({}, optional={key: values(n) for key in KEYS})))
    return names, needs, per_step, steps


_SHOW = False


def assert_names_a_metric(err: BaseException, names: list[str]) -> None:
    assert isinstance(err, FabricMetricsError), f"{type(err).__name__} escaped: {err}"
    assert any(f"`{name}`" in str(err) for name in names) or isinstance(err, StageError), str(err)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_every_failure_is_a_project_error_naming_the_metric(scenario):
    names, needs, per_step, steps = scenario
    metrics = {name: METRICS[name]() for name in names}
    try:
        tracker = MetricsTracker(metrics, needs=needs, schedule={"val": Schedule(every_n_steps=1, per_step=per_step)})
    except ConfigurationError as err:
        event("configuration error")
        assert_names_a_metric(err, names)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with tracker.epoch("val"):
                for outputs in steps:
                    tracker.step("val", outputs)
        except Exception as err:
            event(f"step or epoch error: {type(err).__name__}")
            if _SHOW:
                print(type(err).__name__, str(err)[:300])
            assert_names_a_metric(err, names)
            return
    event("ran")
    for key, points in tracker.history.items():
        assert all(isinstance(v, float) for _, v in points), key


@st.composite
def resolvable_scenarios(draw):
    """Every key present (so resolution works, except ambiguities), values of random kinds."""
    names = draw(st.lists(st.sampled_from(sorted(set(METRICS) - {"variadic"})), min_size=1, max_size=4, unique=True))
    per_step = draw(st.booleans())
    steps = []
    for _ in range(draw(st.integers(1, 3))):
        n = draw(st.integers(1, 5))
        steps.append({key: draw(values(n)) for key in ("preds", "target", "z", "value")})
    return names, per_step, steps


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resolvable_scenarios())
def test_odd_values_fail_as_project_errors_naming_the_metric(scenario):
    names, per_step, steps = scenario
    tracker = MetricsTracker(
        {n: METRICS[n]() for n in names}, schedule={"val": Schedule(every_n_steps=1, per_step=per_step)}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with tracker.epoch("val") as epoch:
                for outputs in steps:
                    tracker.step("val", outputs)
        except Exception as err:
            event(f"error: {type(err).__name__}")
            assert_names_a_metric(err, names)
            return
    event("ran")
    assert all(isinstance(v, float) for v in epoch.results.values())
