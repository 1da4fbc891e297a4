import functools

import pytest
from sklearn.metrics import accuracy_score, f1_score
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from fabricmetrics.exceptions import ConfigurationError, NeedsError
from fabricmetrics.needs import ArgPlan, parse_needs, resolve_plan


def plan(metric, needs=None, keys=("preds", "target"), name="m"):
    spec = parse_needs(needs if needs is None else {name: needs}, {name: metric})[name]
    return resolve_plan(name, spec, list(keys))


def test_inference_uses_required_parameters_only():
    # f1_score has many parameters with defaults; only y_true and y_pred are needed.
    assert plan(f1_score, keys=["y_true", "y_pred", "average"]).keywords == (("y_true", "y_true"), ("y_pred", "y_pred"))
    assert plan(MeanMetric(), keys=["value"]).keywords == (("value", "value"),)


def test_torchmetrics_infer_from_update_signature():
    assert plan(MulticlassAccuracy(num_classes=3)).keywords == (("preds", "preds"), ("target", "target"))


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["logits", "labels"], (("y_true", "labels"), ("y_pred", "logits"))),
        (["y_pred", "targets"], (("y_true", "targets"), ("y_pred", "y_pred"))),
        (["preds", "target"], (("y_true", "target"), ("y_pred", "preds"))),
    ],
)
def test_aliases_resolve(keys, expected):
    assert plan(accuracy_score, keys=keys).keywords == expected


def test_exact_key_wins_over_aliases():
    # `preds` exists, so `logits` and `y_pred` are not considered and there is no ambiguity.
    p = plan(MulticlassAccuracy(num_classes=3), keys=["logits", "y_pred", "preds", "target", "labels"])
    assert p.keywords == (("preds", "preds"), ("target", "target"))


def test_missing_key_error_names_metric_argument_keys_and_hint():
    with pytest.raises(NeedsError) as info:
        plan(MulticlassAccuracy(num_classes=3), keys=["logits", "y"], name="acc")
    assert str(info.value) == (
        "Metric `acc` needs argument `target`, but the outputs have keys ['logits', 'y']. "
        "HINT: pass needs={'acc': {'preds': 'logits', 'target': 'y'}}"
    )
    assert isinstance(info.value, KeyError)


def test_ambiguous_aliases_are_an_error():
    with pytest.raises(NeedsError, match=r"Metric `acc` needs argument `target`, and the outputs have several keys"):
        plan(MulticlassAccuracy(num_classes=3), keys=["preds", "labels", "targets"], name="acc")


def test_missing_key_hint_falls_back_to_placeholder_when_unclear():
    with pytest.raises(
        NeedsError, match=r"HINT: pass needs=\{'m': \{'preds': '<output key>', 'target': '<output key>'\}\}"
    ):
        plan(MulticlassAccuracy(num_classes=3), keys=["a", "b", "c"])


def test_positional_list():
    p = plan(accuracy_score, ["labels", "logits"], keys=["labels", "logits"])
    assert p == ArgPlan(positional=("labels", "logits"))


def test_keyword_dict_with_callable():
    fn = lambda out: out["logits"].argmax(-1)  # noqa: E731
    p = plan(accuracy_score, {"y_true": "labels", "y_pred": fn}, keys=["labels", "logits"])
    assert p.keywords == (("y_true", "labels"), ("y_pred", fn))


def test_common_list_applies_to_every_metric():
    specs = parse_needs(["a", "b"], {"x": accuracy_score, "y": f1_score})
    assert specs["x"].positional == specs["y"].positional == ("a", "b")


def test_common_keyword_dict_applies_to_every_metric():
    specs = parse_needs({"y_true": "t", "y_pred": "p"}, {"x": accuracy_score, "y": f1_score})
    assert specs["x"].keywords == specs["y"].keywords == (("y_true", "t"), ("y_pred", "p"))


def test_per_metric_overrides_leave_the_others_inferred():
    specs = parse_needs({"x": ["a", "b"]}, {"x": accuracy_score, "y": f1_score})
    assert specs["x"].kind == "positional"
    assert specs["y"].kind == "infer"


def test_unknown_metric_names_are_an_error():
    with pytest.raises(ConfigurationError, match=r"per-metric entries for \['acc1'\].*the metrics are \['acc'\]"):
        parse_needs({"acc1": ["p", "t"]}, {"acc": accuracy_score})


def test_mixing_per_metric_and_keyword_entries_is_an_error():
    with pytest.raises(ConfigurationError, match="mixes per-metric entries"):
        parse_needs({"acc": ["p", "t"], "y_true": "t"}, {"acc": accuracy_score})


def test_variadic_signature_needs_explicit_needs():
    def metric(*args, **kwargs):
        return 0.0

    with pytest.raises(ConfigurationError, match=r"Metric `metric` takes \*args-style arguments.*HINT: pass needs="):
        parse_needs(None, {"metric": metric})
    with pytest.raises(ConfigurationError, match="takes \\*args-style"):
        parse_needs(None, {"c": MetricCollection([MulticlassAccuracy(num_classes=3)])})
    # Explicit needs make it fine.
    assert parse_needs({"metric": ["a"]}, {"metric": metric})["metric"].positional == ("a",)


def test_entries_must_fit_the_signature():
    with pytest.raises(ConfigurationError, match=r"does not fit its signature .*unexpected keyword argument 'preds'"):
        parse_needs({"acc": {"y_true": "t", "y_pred": "p", "preds": "p"}}, {"acc": accuracy_score})
    with pytest.raises(ConfigurationError, match="does not fit its signature"):
        parse_needs({"acc": ["a", "b", "c"]}, {"acc": accuracy_score})
    with pytest.raises(ConfigurationError, match=r"does not fit its signature .*missing a required argument"):
        parse_needs({"acc": ["a"]}, {"acc": accuracy_score})


def test_bad_types_are_errors():
    with pytest.raises(ConfigurationError, match="must be None, a list, or a dict"):
        parse_needs("preds", {"acc": accuracy_score})
    with pytest.raises(ConfigurationError, match=r"must be an output key \(str\) or a callable.*functools.partial"):
        parse_needs({"acc": {"y_true": "t", "y_pred": 3}}, {"acc": accuracy_score})
    with pytest.raises(ConfigurationError, match="keys of a keyword entry are parameter names"):
        parse_needs({"acc": {1: "t"}}, {"acc": accuracy_score})


def test_explicit_key_missing_from_outputs():
    with pytest.raises(NeedsError, match=r"Metric `m`: the needs entry for its argument `y_true` is the key 'lbl'"):
        plan(accuracy_score, {"y_true": "lbl", "y_pred": "p"}, keys=["p", "labels"])


def test_partial_constants_are_not_needed():
    metric = functools.partial(f1_score, average="macro")
    assert plan(metric, keys=["y_true", "y_pred"]).keywords == (("y_true", "y_true"), ("y_pred", "y_pred"))


def test_positional_only_parameters_are_passed_positionally():
    def metric(a, /, b):
        return 0.0

    p = plan(metric, keys=["a", "b"])
    assert p.positional == ("a",) and p.keywords == (("b", "b"),)


def test_unreadable_signature_needs_explicit_needs():
    with pytest.raises(ConfigurationError, match="Cannot read the signature"):
        parse_needs(None, {"m": _NoSignature()})


class _NoSignature:
    __signature__ = "not a signature"

    def __call__(self, *args):
        return 0.0
