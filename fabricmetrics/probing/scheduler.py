"""ProbingScheduler: fit scikit-learn probes on an encoder's embeddings between train epochs.

One probing embeds the train loader (and the test loader) in a single pass each
(:func:`~fabricmetrics.probing.extraction.extract_embeddings`), fits a fresh clone of every probe
on the train embeddings of every probed source (the output, or each hooked layer), scores it on the
test embeddings or by cross-validation (:mod:`fabricmetrics.probing.report`), and returns one
``dict[str, float]``. :class:`~fabricmetrics.MetricsTracker` calls :meth:`ProbingScheduler.maybe_run`
at the end of each train epoch and logs the dict at ``tracker.global_step``.

Across ranks, every rank embeds its shard; the shards are gathered with padding removed and put
back in the sampler's order, the probes are fitted once on rank 0, and rank 0's outcome (results
or error) is sent to every rank. Probes built with ``sharded=True`` are instead fitted by every
rank on its own shard, and only their predictions are gathered.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from sklearn.base import clone
from torch import nn

from fabricmetrics.distributed import Collectives, resolve_collectives, share_status
from fabricmetrics.exceptions import ConfigurationError, FabricMetricsError, MetricError
from fabricmetrics.probing._shards import (
    ProbeData,
    gather_to_main,
    local_part,
    merge_summaries,
    subsample_plan,
    summarize,
)
from fabricmetrics.probing._spec import check_cv, check_layers, check_targets, parse_probes, positive_int, target_column
from fabricmetrics.probing.extraction import (
    BatchFn,
    Embeddings,
    EmbedFn,
    ShardLayout,
    default_batch_fn,
    extract_embeddings,
    shard_layout,
)
from fabricmetrics.probing.maps import EmbeddingMaps, map_tasks
from fabricmetrics.probing.report import Scoring, cv_metric_names, cv_scores, holdout_scores

if TYPE_CHECKING:
    from lightning_fabric import Fabric

__all__ = ["ProbingScheduler"]


class ProbingScheduler:
    """Probe an encoder's representation with scikit-learn estimators every few train epochs.

    Args:
        encoder: the module to probe (the bare module, e.g. ``model.encoder``, not a DDP wrapper).
        train_loader: yields ``(x, y)`` batches the probes are fitted on; sharded across ranks by
            Fabric's ``setup_dataloaders`` or a ``DistributedSampler``, or the same on every rank.
        test_loader: yields the batches the probes are scored on; ``None`` with ``cv``.
        probe: one estimator (keys ``"{EstimatorClass}/{metric}"``), a list of estimators, one per
            target column (``"task{i}/{metric}"``), or a dict name → estimator, columns in dict order
            (``"{name}/{metric}"``); with a single target column, every estimator is fitted on it.
            A fresh :func:`~sklearn.base.clone` is fitted every time; classifiers
            (:func:`~sklearn.base.is_classifier`) and regressors get their own metric sets.
        every_n_epochs: probe after the n-th, 2n-th, … completed train epoch.
        layers: names of submodules of ``encoder`` (as in ``named_modules()``) whose outputs are
            probed instead of the encoder's output, all in the same pass; keys get ``"{layer}/"``.
        prefix: put ``"{prefix}/"`` in front of every key.
        scoring: replaces the default metric sets (see :class:`~fabricmetrics.probing.report.ProbeScorer`).
        cv: cross-validate on the train loader's embeddings instead of scoring on a test loader
            (anything :func:`~sklearn.model_selection.cross_validate` takes); logs each metric's mean
            as ``"{metric}"`` and its standard deviation over folds as ``"{metric}_std"``.
        max_samples: use at most this many samples of each loader, a subsample drawn with
            ``random_state`` (the same positions every time) and dropped while embedding.
        random_state: seed of that subsample.
        batch_fn: splits a batch into ``(inputs, targets)``; default: ``(x, y)`` pairs.
        embed_fn: inputs → ``(batch, ...)`` embeddings, e.g. ``encoder.forward_features``; default:
            ``encoder(x)``.
        maps: after each probing, draw 2-D maps of the scored embeddings on rank 0 (PNG files, a
            TensorBoard image and projector; see :class:`~fabricmetrics.probing.EmbeddingMaps`):
            ``True`` (PCA), ``"pca"``, ``"tsne"``, or an ``EmbeddingMaps``; off by default.
        fabric: a launched ``Fabric`` whose collectives :meth:`run` uses by default.

    Raises:
        ConfigurationError: an argument is invalid (see the messages).

    Example:
        >>> import torch
        >>> from sklearn.linear_model import LogisticRegression
        >>> from torch import nn
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> _ = torch.manual_seed(0)
        >>> y = torch.arange(60) % 2
        >>> x = torch.randn(60, 5) + 3.0 * y[:, None]
        >>> loader = lambda s: DataLoader(TensorDataset(x[s], y[s]), batch_size=16)
        >>> scheduler = ProbingScheduler(
        ...     nn.Linear(5, 3), loader(slice(0, 40)), loader(slice(40, 60)), probe=LogisticRegression()
        ... )
        >>> scheduler.keys[:2]
        ['LogisticRegression/accuracy', 'LogisticRegression/balanced_accuracy']
        >>> results = scheduler.run()
        >>> list(results) == scheduler.keys, results["LogisticRegression/accuracy"]
        (True, 0.95)
    """

    def __init__(
        self,
        encoder: nn.Module,
        train_loader: Iterable[Any],
        test_loader: Iterable[Any] | None = None,
        *,
        probe: Any,
        every_n_epochs: int = 1,
        layers: Sequence[str] | None = None,
        prefix: str | None = None,
        scoring: Scoring | None = None,
        cv: Any = None,
        max_samples: int | None = None,
        random_state: int = 0,
        batch_fn: BatchFn | None = None,
        embed_fn: EmbedFn | None = None,
        maps: bool | str | EmbeddingMaps | None = None,
        fabric: Fabric | None = None,
    ) -> None:
        if not isinstance(encoder, nn.Module):
            raise ConfigurationError(
                f"encoder must be a torch.nn.Module, got {type(encoder).__name__}. "
                "HINT: pass the module and use embed_fn= for a custom embedding function."
            )
        self.encoder, self.train_loader, self.test_loader = encoder, train_loader, test_loader
        self.every_n_epochs = positive_int("every_n_epochs", every_n_epochs)
        self.max_samples = None if max_samples is None else positive_int("max_samples", max_samples)
        self.random_state = int(random_state)
        self.layers = check_layers(encoder, layers)
        if prefix is not None and (not isinstance(prefix, str) or not prefix):
            raise ConfigurationError(f"prefix must be a non-empty string or None, got {prefix!r}.")
        self.prefix = prefix
        self.cv = check_cv(cv, test_loader)
        self.probes = parse_probes(probe, scoring, cv)
        self.maps = EmbeddingMaps.coerce(maps)
        if self.maps is not None and all(p.sharded for p in self.probes):
            raise ConfigurationError(
                "maps= draws the embeddings gathered on rank 0, but every probe is sharded (fitted where the "
                "embeddings live, never gathered). HINT: add a probe with sharded=False, or drop maps=."
            )
        self.batch_fn: BatchFn = batch_fn or default_batch_fn
        self.embed_fn = embed_fn
        self.fabric = fabric
        self.last_results: dict[str, float] = {}
        self._runs = 0
        self._sources = list(self.layers) if self.layers else [""]
        self._keys = [
            self._key(source, p.name, metric)
            for source in self._sources
            for p in self.probes
            for metric in (cv_metric_names(p.scorer.names) if cv is not None else p.scorer.names)
        ]

    def __repr__(self) -> str:
        """The probes, the schedule and the number of runs so far."""
        names = ", ".join(f"{p.name}={type(p.estimator).__name__}" for p in self.probes)
        return f"ProbingScheduler(probes=[{names}], every_n_epochs={self.every_n_epochs}, runs={self._runs})"

    @property
    def keys(self) -> list[str]:
        """The keys every :meth:`run` returns, in order (known from construction on)."""
        return list(self._keys)

    @property
    def runs(self) -> int:
        """How many probings have completed."""
        return self._runs

    def maybe_run(
        self,
        epoch: int,
        collectives: Collectives | None = None,
        *,
        step: int | None = None,
        loggers: Sequence[Any] | None = None,
    ) -> dict[str, float]:
        """Probe if ``epoch`` (the number of completed train epochs) is a multiple of ``every_n_epochs``.

        A collective call: every rank must make it. The tracker makes it at the end of each train epoch.

        Args:
            epoch: completed train epochs so far (1 after the first).
            collectives: how ranks communicate (the tracker's); default ``resolve_collectives(fabric)``.
            step: the tracker's global step (where the maps go in TensorBoard).
            loggers: the tracker's loggers (where the maps go); default: the ``fabric``'s.

        Returns:
            :meth:`run`'s results, or ``{}`` when this epoch is not scheduled.
        """
        if epoch <= 0 or epoch % self.every_n_epochs:
            return {}
        return self.run(collectives, epoch=epoch, step=step, loggers=loggers)

    def run(
        self,
        collectives: Collectives | None = None,
        *,
        epoch: int | None = None,
        step: int | None = None,
        loggers: Sequence[Any] | None = None,
    ) -> dict[str, float]:
        """Probe now: embed, fit every probe, score. A collective call: every rank must make it.

        Args:
            collectives: how ranks communicate; default ``resolve_collectives(fabric)``.
            epoch: completed train epochs, if known (only names the map files of ``maps=``).
            step: the global step of the maps in TensorBoard (default: the probing's number).
            loggers: where the maps go (``maps=``); default: the ``fabric``'s loggers.

        Returns:
            Key → float, in the order of :attr:`keys`, the same on every rank. Probes of a source
            whose embeddings hold NaN or inf score NaN, with one ``RuntimeWarning``.

        Raises:
            ConfigurationError: a batch, the embeddings or the targets do not fit the probes (the
                same error on every rank).
            MetricError: a probe's estimator failed while fitting or scoring (rank 0; the others get a
                :class:`~fabricmetrics.exceptions.DistributedError` naming it).
            DistributedError: another rank failed (rank 0 raises its own error).
        """
        coll = resolve_collectives(self.fabric) if collectives is None else collectives
        local, summaries = self._embed(coll)
        merged = {name: merge_summaries(name, [s[name] for s in summaries]) for name in local}
        for name, summary in merged.items():
            check_targets(self.probes, name, summary)
        finite = {s: all(m["finite"][s] for m in merged.values()) for s in self._sources}
        wanted = [s for s in self._sources if finite[s]] if any(not p.sharded for p in self.probes) else []
        data = {name: gather_to_main(layout, emb, merged[name], wanted, coll) for name, (layout, emb) in local.items()}
        predictions = self._fit_sharded(local, merged, data, finite, coll)
        error: Exception | None = None
        results: dict[str, float] | None = None
        if coll.is_main:
            try:
                results = self._score(data, predictions, finite)
            except Exception as err:
                error = err
        outcomes = share_status(coll, results, error, where=f"while probing (after {self._runs} successful probings)")
        results = outcomes[0]
        bad = [s for s, ok in finite.items() if not ok]
        if bad and coll.is_main:
            what = ", ".join("the encoder output" if s == "" else f"layer `{s}`" for s in bad)
            warnings.warn(
                f"Probing: the embeddings of {what} hold NaN or inf; their probe scores are NaN at this probing "
                "(training goes on).",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.maps is not None and coll.is_main:
            self._draw_maps(data, finite, epoch, step, loggers)
        self._runs += 1
        self.last_results = dict(results)
        return dict(results)

    def state_dict(self) -> dict[str, Any]:
        """Plain counters (loads with ``torch.load(..., weights_only=True)``)."""
        return {"runs": self._runs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self._runs = int(state.get("runs", 0))

    # ----------------------------------------------------------------------------------------------
    def _key(self, source: str, probe: str, metric: str) -> str:
        return "/".join(part for part in (self.prefix, source, probe, metric) if part)

    def _loaders(self) -> list[tuple[str, Iterable[Any]]]:
        out = [("train", self.train_loader)]
        return out if self.test_loader is None else [*out, ("test", self.test_loader)]

    def _embed(self, coll: Collectives) -> tuple[dict[str, tuple[ShardLayout, Embeddings]], list[dict[str, Any]]]:
        """Embed every loader on this rank, then exchange statuses so that a failure reaches every rank."""
        local: dict[str, tuple[ShardLayout, Embeddings]] = {}
        error: Exception | None = None
        try:
            for index, (name, loader) in enumerate(self._loaders()):
                layout = shard_layout(loader, coll.world_size, coll.rank)
                keep, limit = subsample_plan(self.max_samples, [self.random_state, index], layout, coll)
                emb = extract_embeddings(
                    self.encoder,
                    loader,
                    layers=self.layers,
                    include_output=not self.layers,
                    batch_fn=self.batch_fn,
                    embed_fn=self.embed_fn,
                    layout=layout,
                    keep=keep,
                    limit=limit,
                )
                local[name] = (layout, emb)
            summary = {name: summarize(emb) for name, (_, emb) in local.items()}
        except Exception as err:
            error, summary = err, None
        summaries = share_status(coll, summary, error, where="while embedding the probing data")
        return local, summaries

    def _draw_maps(
        self,
        data: dict[str, ProbeData | None],
        finite: dict[str, bool],
        epoch: int | None,
        step: int | None,
        loggers: Sequence[Any] | None,
    ) -> None:
        """Rank 0: the maps of the scored embeddings (test, or train with ``cv``); a failure only warns."""
        assert self.maps is not None
        scored = data.get("test") or data["train"]
        assert scored is not None
        if loggers is None:
            loggers = list(self.fabric.loggers) if self.fabric is not None else []
        n_columns = 1 if scored.targets.ndim == 1 else int(np.prod(scored.targets.shape[1:]))
        try:
            self.maps.write(
                {s: scored.features[s] if finite[s] else None for s in self._sources},
                scored.targets,
                map_tasks(self.probes, n_columns),
                run=self._runs + 1,
                epoch=epoch,
                step=step,
                loggers=loggers,
                prefix=self.prefix,
                split="test" if self.test_loader is not None else "train",
            )
        except Exception as err:
            warnings.warn(
                f"Embedding maps failed at this probing ({type(err).__name__}: {err}); the probe scores are "
                "unaffected and training goes on.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _fit_sharded(
        self,
        local: dict[str, tuple[ShardLayout, Embeddings]],
        merged: dict[str, dict[str, Any]],
        data: dict[str, ProbeData | None],
        finite: dict[str, bool],
        coll: Collectives,
    ) -> dict[tuple[str, str], np.ndarray]:
        """Fit ``sharded=True`` probes on every rank's shard; rank 0 gets their test predictions, in order."""
        predictions: dict[tuple[str, str], np.ndarray] = {}
        if not any(p.sharded for p in self.probes):
            return predictions
        (train_layout, train), (test_layout, test) = local["train"], local["test"]
        for source in self._sources:
            for p in self.probes:
                if not p.sharded or not finite[source]:
                    continue
                X, y = local_part(train_layout, train, merged["train"], source, coll)
                X_test, _ = local_part(test_layout, test, merged["test"], source, coll)
                fitted = clone(p.estimator).fit(X, target_column(y, p), collectives=coll)
                mine = np.asarray(fitted.predict(X_test, collectives=coll))
                if coll.world_size > 1 and test_layout.kind != "whole":
                    mine = coll.all_gather_cat(torch.from_numpy(mine)).numpy()
                test_data = data["test"]
                if test_data is not None:  # rank 0
                    predictions[(source, p.name)] = mine[test_data.order]
        return predictions

    def _score(
        self,
        data: dict[str, ProbeData | None],
        predictions: dict[tuple[str, str], np.ndarray],
        finite: dict[str, bool],
    ) -> dict[str, float]:
        """Fit and score every probe on rank 0; keys in the order of :attr:`keys`."""
        train, test = data["train"], data.get("test")
        assert train is not None
        results: dict[str, float] = {}
        for source in self._sources:
            for p in self.probes:
                y = target_column(train.targets, p)
                if not finite[source]:
                    names = cv_metric_names(p.scorer.names) if self.cv is not None else p.scorer.names
                    scores = dict.fromkeys(names, float("nan"))
                elif p.sharded:
                    assert test is not None
                    scores = p.scorer.from_predictions(target_column(test.targets, p), predictions[(source, p.name)])
                elif self.cv is not None:
                    scores = _probe_call(
                        p, source, cv_scores, p.estimator, p.scorer, train.features[source], y, self.cv
                    )
                else:
                    assert test is not None
                    scores = _probe_call(
                        p,
                        source,
                        holdout_scores,
                        p.estimator,
                        p.scorer,
                        train.features[source],
                        y,
                        test.features[source],
                        target_column(test.targets, p),
                    )
                results.update({self._key(source, p.name, metric): value for metric, value in scores.items()})
        return results


def _probe_call(probe: Any, source: str, fn: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """Fit and score one probe; an error inside the estimator becomes a :class:`MetricError` naming the probe."""
    try:
        return fn(*args)
    except FabricMetricsError:
        raise
    except Exception as err:
        where = f" on layer `{source}`" if source else ""
        raise MetricError(
            f"Probe `{probe.name}` ({probe.estimator!r}) failed{where}: {type(err).__name__}: {err}. HINT: check the "
            "estimator's settings against the probing data (e.g. n_neighbors at most the number of train samples, "
            "enough samples of every class for cv=), or set max_samples= / another estimator."
        ) from err
