"""Embedding maps of ProbingScheduler(maps=...): subsample, projections, figures, files, TensorBoard, 2 ranks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from threadpoolctl import threadpool_limits
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fabricmetrics.cli import main as cli_main
from fabricmetrics.exceptions import ConfigurationError, LogDirectoryError
from fabricmetrics.loggers import CSVLogger, TensorBoardLogger
from fabricmetrics.probing import EmbeddingMaps, KNNProbe, ProbingScheduler
from fabricmetrics.probing.maps import plot_embedding_maps, project_2d, read_records, subsample_indices
from tests._distributed import run_on_ranks

N_TRAIN, N_TEST = 150, 90


def digits(n_train: int = N_TRAIN, n_test: int = N_TEST, ink: bool = False) -> tuple[TensorDataset, TensorDataset]:
    """Digits as 64 features; targets: the label, or (label, ink) with ``ink``."""
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x[: n_train + n_test] / 16.0, dtype=torch.float32)
    label = torch.as_tensor(y[: n_train + n_test])
    target = torch.stack([label.float(), x.mean(1)], 1) if ink else label
    return TensorDataset(x[:n_train], target[:n_train]), TensorDataset(x[n_train:], target[n_train:])


def encoder() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 6))


def scheduler(maps: object = True, *, ink: bool = False, **kwargs: object) -> ProbingScheduler:
    train, test = digits(ink=ink)
    kwargs.setdefault("probe", [LogisticRegression(max_iter=300), Ridge()] if ink else LogisticRegression(max_iter=300))
    return ProbingScheduler(
        encoder(), DataLoader(train, batch_size=64), DataLoader(test, batch_size=64), maps=maps, **kwargs
    )


def record(folder: Path, index: int = -1) -> dict:
    """The stored points of one probing (the last by default)."""
    rec = read_records(folder)[index]
    return {"meta": rec.meta, "coords": rec.coords, "labels": rec.labels}


def npz(folder: Path, stem: str) -> dict[str, np.ndarray]:
    with np.load(folder / f"{stem}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def same_up_to_sign(a: np.ndarray, b: np.ndarray) -> None:
    for j in range(a.shape[1]):
        sign = np.sign(a[:, j] @ b[:, j]) or 1.0
        np.testing.assert_allclose(a[:, j], sign * b[:, j], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# subsample and projections


def test_subsample_is_seeded_sorted_and_bounded() -> None:
    a = subsample_indices(1000, 50, random_state=3)
    assert a.tolist() == subsample_indices(1000, 50, random_state=3).tolist()
    assert a.tolist() != subsample_indices(1000, 50, random_state=4).tolist()
    assert len(a) == len(np.unique(a)) == 50 and (np.diff(a) > 0).all() and a.max() < 1000
    assert subsample_indices(30, 50, random_state=0).tolist() == list(range(30))


def test_pca_matches_numpy_svd() -> None:
    x = np.random.default_rng(0).normal(size=(80, 7)) * np.arange(1, 8) + 5.0
    coords, names = project_2d(x, "pca")
    centred = x - x.mean(0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    same_up_to_sign(coords, (u[:, :2] * s[:2]).astype(np.float32))
    share = s**2 / (s**2).sum()
    assert names == [f"PC1 ({100 * share[0]:.0f} %)", f"PC2 ({100 * share[1]:.0f} %)"]


def test_projection_of_degenerate_embeddings() -> None:
    collapsed, names = project_2d(np.ones((20, 4)), "pca")
    assert collapsed.shape == (20, 2) and not collapsed.any() and names == ["PC1", "PC2"]
    line, _ = project_2d(np.arange(10.0)[:, None], "tsne")  # one feature: PCA's single axis, zeros beside
    np.testing.assert_allclose(np.abs(line[:, 0]), np.abs(np.arange(10.0) - 4.5))
    assert not line[:, 1].any()


def test_tsne_is_seeded() -> None:
    x = np.random.default_rng(0).normal(size=(30, 5))
    a, names = project_2d(x, "tsne", random_state=1)
    b, _ = project_2d(x, "tsne", random_state=1)
    assert a.shape == (30, 2) and names == ["t-SNE 1", "t-SNE 2"]
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# through the scheduler


def test_maps_do_not_change_the_scores_and_are_deterministic(tmp_path: Path) -> None:
    plain = scheduler(None).run()
    first = scheduler(EmbeddingMaps(out=tmp_path / "a", max_points=40)).run()
    again = scheduler(EmbeddingMaps(out=tmp_path / "b", max_points=40))
    assert first == plain
    assert again.maybe_run(1) == plain and again.maybe_run(2) == plain
    a, b1, b2 = (
        npz(tmp_path / "a", "embedding_map_probing001"),
        *(npz(tmp_path / "b", f"embedding_map_epoch00{e}") for e in (1, 2)),
    )
    assert a["index"].tolist() == b1["index"].tolist() == b2["index"].tolist()  # same points every probing
    assert a["index"].tolist() == subsample_indices(N_TEST, 40, random_state=0).tolist()
    np.testing.assert_array_equal(a["coords_0"], b2["coords_0"])
    # the reference: PCA of the encoder's output on the same test samples
    _, test = digits()
    with torch.no_grad():
        z = encoder()(test.tensors[0][a["index"]]).numpy()
    same_up_to_sign(a["coords_0"], PCA(2, svd_solver="full").fit_transform(z))
    np.testing.assert_array_equal(a["labels"][:, 0], test.tensors[1][a["index"]].numpy())
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "embedding_map_epoch001.npz",
        "embedding_map_epoch001.png",
        "embedding_map_epoch002.npz",
        "embedding_map_epoch002.png",
        "embedding_maps.png",
    ]


def test_multitask_layer_maps(tmp_path: Path) -> None:
    s = scheduler(EmbeddingMaps(out=tmp_path), ink=True, layers=["0", "2"], prefix="p")
    tb = TensorBoardLogger(tmp_path / "tb", name="run", version=0)
    s.run(step=5, loggers=[tb])
    rec = record(tmp_path)
    for layer in ("0", "2"):  # the projector: one embedding per layer, both tasks as metadata columns
        assert f'tensor_name: "p/{layer}:00005"' in (Path(tb.log_dir) / "projector_config.pbtxt").read_text()
    (metadata,) = Path(tb.log_dir).glob("00005/*0/metadata.tsv")
    rows = [line.split("\t") for line in metadata.read_text().splitlines()]
    assert rows[0] == ["task0", "task1"] and len(rows) == N_TEST + 1
    assert rows[1] == [str(int(rec["labels"][0, 0])), f"{rec['labels'][0, 1]:.6g}"]
    assert rec["meta"]["sources"] == ["0", "2"]
    assert rec["meta"]["tasks"] == [
        {"name": "task0", "column": 0, "categorical": True},
        {"name": "task1", "column": 1, "categorical": False},
    ]
    _, test = digits(ink=True)
    np.testing.assert_allclose(rec["labels"], test.tensors[1].numpy().astype(np.float64), rtol=1e-6)
    with torch.no_grad():
        hidden = encoder()[0](test.tensors[0]).numpy()
    same_up_to_sign(rec["coords"]["0"], PCA(2, svd_solver="full").fit_transform(hidden))
    fig = plot_embedding_maps(tmp_path)  # one probing: rows = layers, columns = tasks
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [ax.get_title() for ax in panels] == ["0 · task0", "0 · task1", "2 · task0", "2 · task1"]
    assert len(colorbars) == 2 and all(ax.get_ylabel() == "task1" for ax in colorbars)  # the regression task
    assert [t.get_text() for t in panels[0].get_legend().get_texts()] == [str(d) for d in range(10)]
    plt.close(fig)


def test_regression_target_gets_a_colour_bar(tmp_path: Path) -> None:
    train, test = digits()
    ink = [TensorDataset(ds.tensors[0], ds.tensors[0].mean(1)) for ds in (train, test)]
    s = ProbingScheduler(
        encoder(), DataLoader(ink[0]), DataLoader(ink[1]), probe=Ridge(), maps=EmbeddingMaps(out=tmp_path)
    )
    s.run()
    rec = record(tmp_path)
    assert rec["meta"]["tasks"] == [{"name": "target", "column": 0, "categorical": False}]
    np.testing.assert_allclose(rec["labels"][:, 0], ink[1].tensors[1].numpy(), rtol=1e-6)
    fig = plot_embedding_maps(tmp_path)
    (bar,) = (ax for ax in fig.axes if ax.get_label() == "<colorbar>")
    assert bar.get_ylim() == pytest.approx((rec["labels"].min(), rec["labels"].max()))
    plt.close(fig)


@pytest.mark.filterwarnings("ignore:Probing. the embeddings")
def test_nan_embeddings_are_skipped_with_a_warning(tmp_path: Path) -> None:
    enc = encoder()
    with torch.no_grad():
        enc[2].weight[0, 0] = float("nan")  # the output is NaN, the first layer is not
    train, test = digits()
    s = ProbingScheduler(
        enc,
        DataLoader(train, batch_size=64),
        DataLoader(test, batch_size=64),
        probe=LogisticRegression(max_iter=300),
        layers=["0", "2"],
        maps=EmbeddingMaps(out=tmp_path),
    )
    with pytest.warns(RuntimeWarning, match=r"Embedding maps: the embeddings of layer `2` hold NaN or inf; no map"):
        results = s.run()
    assert np.isnan(results["2/LogisticRegression/accuracy"]) and results["0/LogisticRegression/accuracy"] > 0.5
    assert record(tmp_path)["meta"]["sources"] == ["0"]
    only_nan = scheduler(EmbeddingMaps(out=tmp_path / "none"))
    with torch.no_grad():
        only_nan.encoder[2].bias.fill_(float("inf"))
    with pytest.warns(RuntimeWarning, match="the encoder output hold NaN or inf; no map"):
        only_nan.run()
    assert not (tmp_path / "none").exists()


def test_tensorboard_image_and_projector(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb, csv = TensorBoardLogger(tmp_path, name="run", version=0), CSVLogger(tmp_path, name="run", version=0)
    s = scheduler(EmbeddingMaps(max_points=50), prefix="probe")
    s.maybe_run(1, step=7, loggers=[csv, tb])  # the CSV logger takes no image: skipped, no warning
    s.maybe_run(2, step=14, loggers=[csv, tb])
    tb.finalize("success")
    log_dir = Path(tb.log_dir)
    maps = log_dir / "embedding_maps_probe"  # in the first logger's log_dir (the CSV logger's: the same folder)
    assert (maps / "embedding_map_epoch002.png").is_file() and (maps / "embedding_maps.png").is_file()
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("probe/embedding_map")] == [7, 14]
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert 'tensor_name: "probe/output:00007"' in config and 'tensor_name: "probe/output:00014"' in config
    entry = config[config.index('tensor_name: "probe/output:00014"') :]
    paths = dict(re.findall(r'(metadata_path|tensor_path): "([^"]+)"', entry)[:2])
    tensors = np.loadtxt(log_dir / paths["tensor_path"], delimiter="\t")
    labels = (log_dir / paths["metadata_path"]).read_text().split()
    index = subsample_indices(N_TEST, 50, random_state=0)
    _, test = digits()
    with torch.no_grad():
        np.testing.assert_allclose(tensors, encoder()(test.tensors[0][index]).numpy(), rtol=1e-4, atol=1e-5)
    assert labels == [str(int(v)) for v in test.tensors[1][index]]


def test_a_failing_logger_and_no_folder_only_warn(tmp_path: Path) -> None:
    class Broken:
        log_dir = str(tmp_path / "broken")

        @property
        def experiment(self) -> object:
            class Writer:
                def add_image(self, *args: object, **kwargs: object) -> None:
                    raise OSError("disk full")

            return Writer()

    plain = scheduler(None).run()
    s = scheduler(True)
    with pytest.warns(RuntimeWarning, match=r"Broken failed to take the map \(OSError: disk full\)"):
        assert s.run(loggers=[Broken()]) == plain
    assert (tmp_path / "broken" / "embedding_maps" / "embedding_map_probing001.png").is_file()
    with pytest.warns(RuntimeWarning, match="no folder to write them to.*HINT: give the tracker"):
        assert scheduler(True).run() == plain


def test_summary_shows_first_last_and_evenly_spaced_probings(tmp_path: Path) -> None:
    s = scheduler(EmbeddingMaps(out=tmp_path, max_points=20, max_columns=3), layers=["2"])
    for epoch in range(1, 6):
        s.maybe_run(epoch)
    fig = plot_embedding_maps(tmp_path, tmp_path / "copy.png", max_columns=3)
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["epoch 1", "epoch 3", "epoch 5"]
    assert (tmp_path / "copy.png").is_file()
    plt.close(fig)
    with pytest.raises(LogDirectoryError, match=r"No embedding maps.*HINT: probe with ProbingScheduler"):
        plot_embedding_maps(tmp_path / "nothing")


def test_fabricmetrics_plot_draws_the_summary_of_each_scheduler(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = CSVLogger(tmp_path, name="run", version=0)
    csv.log_metrics({"acc/val": 0.5}, step=1)
    csv.finalize("success")
    for prefix in (None, "layers"):  # two schedulers keep their maps apart
        scheduler(True, prefix=prefix).maybe_run(1, loggers=[csv])
    version = tmp_path / "run" / "version_0"
    assert sorted(p.name for p in version.glob("embedding_maps*")) == ["embedding_maps", "embedding_maps_layers"]
    assert cli_main(["plot", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    for suffix in ("", "_layers"):  # next to metrics.png
        assert (tmp_path / "run" / f"embedding_maps{suffix}.png").is_file()
        assert (
            f"{version / f'embedding_maps{suffix}'}; wrote {tmp_path / 'run' / f'embedding_maps{suffix}.png'}"
            in printed
        )
    with pytest.raises(LogDirectoryError, match=r"several schedulers: \['embedding_maps', 'embedding_maps_layers'\]"):
        plot_embedding_maps(version)


def test_maps_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="method must be 'pca' or 'tsne', got 'umap'"):
        scheduler("umap")
    with pytest.raises(ConfigurationError, match="max_points must be an int >= 2"):
        EmbeddingMaps(max_points=1)
    with pytest.raises(ConfigurationError, match=r"maps must be True, 'pca', 'tsne' or an EmbeddingMaps.*HINT"):
        scheduler(3)
    with pytest.raises(ConfigurationError, match=r"every probe is sharded.*HINT: add a probe with sharded=False"):
        scheduler(True, probe=KNNProbe(k=3, sharded=True))
    assert scheduler(None).maps is None and scheduler(False).maps is None
    assert scheduler("tsne").maps.method == "tsne"


def test_cross_validated_probing_maps_the_train_embeddings(tmp_path: Path) -> None:
    train, _ = digits()
    s = ProbingScheduler(
        encoder(), DataLoader(train, batch_size=64), None, probe=LogisticRegression(max_iter=300), cv=3, maps=True
    )
    s.run(loggers=[CSVLogger(tmp_path, name="run", version=0)])
    rec = record(tmp_path / "run" / "version_0" / "embedding_maps")
    np.testing.assert_array_equal(rec["labels"][:, 0], train.tensors[1].numpy())
    with torch.no_grad():
        z = encoder()(train.tensors[0]).numpy()
    same_up_to_sign(rec["coords"][""], PCA(2, svd_solver="full").fit_transform(z))


def test_tsne_maps_through_the_scheduler(tmp_path: Path) -> None:
    s = scheduler(EmbeddingMaps("tsne", out=tmp_path, max_points=30))
    s.run()
    rec = record(tmp_path)
    assert rec["meta"]["method"] == "tsne" and rec["coords"][""].shape == (30, 2)
    assert json.loads(json.dumps(rec["meta"]))["axes"][""] == ["t-SNE 1", "t-SNE 2"]


# --------------------------------------------------------------------------------------------------
# 2 ranks


def _two_rank_worker(rank: int, world: int, out: str) -> dict[str, float]:
    torch.set_num_threads(1)  # two processes on two cores: no competing thread pools
    threadpool_limits(1)
    train, test = digits(N_TRAIN + 1, N_TEST + 1)  # odd sizes: rank 1 gets a padding duplicate

    def loader(ds: TensorDataset) -> DataLoader:
        return DataLoader(
            ds, batch_size=32, sampler=DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
        )

    maps = EmbeddingMaps(out=Path(out) / f"rank{rank}", max_points=40)
    with_maps = ProbingScheduler(
        encoder(), loader(train), loader(test), probe=LogisticRegression(max_iter=300), maps=maps
    )
    return with_maps.maybe_run(1)


@pytest.mark.distributed
@pytest.mark.timeout(180)
def test_two_ranks_only_rank0_writes_and_scores_are_unchanged(tmp_path: Path) -> None:
    rank0, rank1 = run_on_ranks(_two_rank_worker, tmp_path, str(tmp_path))
    train, test = digits(N_TRAIN + 1, N_TEST + 1)
    plain = ProbingScheduler(
        encoder(),
        DataLoader(train, batch_size=32),
        DataLoader(test, batch_size=32),
        probe=LogisticRegression(max_iter=300),
    ).run()  # one process, no maps
    assert rank0 == rank1 == plain
    assert not (tmp_path / "rank1").exists()
    single = npz(tmp_path / "rank0", "embedding_map_epoch001")
    assert single["index"].tolist() == subsample_indices(N_TEST + 1, 40, random_state=0).tolist()
    np.testing.assert_array_equal(single["labels"][:, 0], test.tensors[1][single["index"]].numpy())  # padding dropped
    with torch.no_grad():
        z = encoder()(test.tensors[0][single["index"]]).numpy()
    same_up_to_sign(single["coords_0"], PCA(2, svd_solver="full").fit_transform(z))


# --------------------------------------------------------------------------------------------------
# through the tracker


def test_tracker_hands_its_step_and_loggers_to_the_maps(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fabricmetrics import MetricsTracker

    tb = TensorBoardLogger(tmp_path, name="run", version=0)
    tracker = MetricsTracker(
        {"loss": lambda loss: loss}, loggers=[tb, CSVLogger(tmp_path, name="run", version=0)], probes=[scheduler(True)]
    )
    with tracker:
        for _ in range(2):
            with tracker.epoch("train"):
                for _ in range(3):
                    tracker.step("train", {"loss": torch.tensor(1.0)}, batch_size=1)
    events = EventAccumulator(tb.log_dir, size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("embedding_map")] == [3, 6]  # tracker.global_step at each probing
    maps = Path(tb.log_dir) / "embedding_maps"
    assert sorted(p.name for p in maps.glob("*.png")) == [
        "embedding_map_epoch001.png",
        "embedding_map_epoch002.png",
        "embedding_maps.png",
    ]
