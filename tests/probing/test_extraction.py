"""One pass over a loader: eval mode and inference mode while embedding, modes restored, hooks, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from fabricmetrics.exceptions import ConfigurationError
from fabricmetrics.probing.extraction import (
    ShardLayout,
    default_batch_fn,
    extract_embeddings,
    shard_layout,
)

N, D = 23, 6


class Spy(nn.Module):
    """Records the train flag and inference mode of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        return x


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, 8)
        self.drop = nn.Dropout(0.5)
        self.spy = Spy()
        self.fc2 = nn.Linear(8, 3)
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail:
            raise RuntimeError("encoder exploded")
        return self.fc2(self.spy(self.drop(torch.relu(self.fc1(x)))))


@pytest.fixture
def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, D, generator=g), torch.randint(0, 3, (N,), generator=g))


@pytest.fixture
def encoder() -> Encoder:
    torch.manual_seed(0)
    return Encoder()


def reference(encoder: Encoder, x: torch.Tensor) -> dict[str, np.ndarray]:
    """The eval-mode forward by hand."""
    with torch.no_grad():
        h1 = torch.relu(encoder.fc1(x))  # dropout is the identity in eval mode
        return {"": encoder.fc2(h1).numpy(), "fc1": encoder.fc1(x).numpy(), "drop": h1.numpy()}


def test_embeddings_are_the_eval_forward_and_train_mode_is_restored(encoder, data):
    encoder.train()
    emb = extract_embeddings(encoder, DataLoader(data, batch_size=5), layers=["fc1", "drop"])
    ref = reference(encoder, data.tensors[0])
    assert set(emb.features) == {"", "fc1", "drop"}
    for source, array in emb.features.items():
        assert isinstance(array, np.ndarray) and array.dtype == np.float32 and array.shape == ref[source].shape
        np.testing.assert_allclose(array, ref[source], rtol=1e-5, atol=1e-6)  # dropout was off
    assert emb.targets.tolist() == data.tensors[1].tolist() and emb.positions.tolist() == list(range(N))
    assert encoder.spy.calls == [(False, True)] * 5  # eval mode, inference mode, every batch
    assert all(m.training for m in encoder.modules())
    assert not any(m._forward_hooks for m in encoder.modules())


def test_each_module_keeps_its_own_mode_also_when_the_encoder_raises(encoder, data):
    encoder.train()
    encoder.drop.eval()  # e.g. frozen on purpose by the user
    encoder.fail = True
    with pytest.raises(RuntimeError, match="encoder exploded"):
        extract_embeddings(encoder, DataLoader(data, batch_size=5), layers=["fc1"])
    assert encoder.training and encoder.fc1.training and not encoder.drop.training
    assert not any(m._forward_hooks for m in encoder.modules())
    encoder.eval()
    encoder.fail = False
    extract_embeddings(encoder, DataLoader(data, batch_size=5))
    assert not any(m.training for m in encoder.modules())


def test_layer_outputs_are_flattened_per_sample_and_tuples_give_their_first_element():
    class Conv(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.rnn = nn.GRU(4, 5, batch_first=True)  # returns (output, h_n)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(self.conv(x).reshape(x.shape[0], 8, 4))
            return out[:, -1]

    torch.manual_seed(0)
    model = Conv()
    x = torch.randn(7, 1, 4, 4)
    emb = extract_embeddings(model, [(x, torch.arange(7))], layers=["conv", "rnn"])
    with torch.no_grad():
        conv = model.conv(x)
        rnn = model.rnn(conv.reshape(7, 8, 4))[0]
    np.testing.assert_allclose(emb.features["conv"], conv.reshape(7, -1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(emb.features["rnn"], rnn.reshape(7, -1).numpy(), rtol=1e-6)
    assert emb.features["conv"].shape == (7, 32) and emb.features["rnn"].shape == (7, 8 * 5)


def test_batch_and_embedding_hooks(encoder, data):
    batches = [{"image": data.tensors[0][i : i + 4], "label": data.tensors[1][i : i + 4]} for i in range(0, N, 4)]
    with pytest.raises(ConfigurationError, match=r"`\(x, y\)` pair, got a mapping with keys \['image', 'label'\]"):
        extract_embeddings(encoder, batches)
    emb = extract_embeddings(
        encoder,
        batches,
        batch_fn=lambda b: (b["image"], b["label"]),
        embed_fn=lambda x: torch.relu(encoder.fc1(x)),  # e.g. encoder.forward_features
    )
    np.testing.assert_allclose(emb.features[""], reference(encoder, data.tensors[0])["drop"], rtol=1e-5, atol=1e-6)


def test_default_batch_fn():
    assert default_batch_fn((1, 2)) == (1, 2)
    with pytest.raises(ConfigurationError, match=r"got a tuple of 3 items\. HINT: pass batch_fn="):
        default_batch_fn((1, 2, 3))


def test_unusable_targets_and_outputs_are_clear_errors(encoder, data):
    x = data.tensors[0][:4]
    with pytest.raises(ConfigurationError, match="targets must be numbers"):
        extract_embeddings(encoder, [(x, ["a", "b", "c", "d"])])
    with pytest.raises(ConfigurationError, match=r"shape \(batch,\) or \(batch, n_targets\)"):
        extract_embeddings(encoder, [(x, torch.zeros(4, 2, 2))])
    with pytest.raises(ConfigurationError, match=r"embedding function's output to be a tensor of shape \(4, ...\)"):
        extract_embeddings(encoder, [(x, torch.arange(4))], embed_fn=lambda x: (x.sum(),))

    def twice(x: torch.Tensor) -> torch.Tensor:
        return encoder.fc1(encoder.fc1.weight.new_ones(x.shape[0], D)) + encoder(x).sum()

    with pytest.raises(ConfigurationError, match="Layer `fc1` ran 2 times in one forward pass"):
        extract_embeddings(encoder, [(x, torch.arange(4))], layers=["fc1"], embed_fn=twice)
    with pytest.raises(ConfigurationError, match=r"Layer `fc1` ran 0 times .* HINT: probe a module that the forward"):
        extract_embeddings(encoder, [(x, torch.arange(4))], layers=["fc1"], embed_fn=lambda x: x)


def test_distributed_sampler_padding_is_dropped_and_positions_are_global(encoder, data):
    parts = []
    for rank in range(3):
        sampler = DistributedSampler(data, num_replicas=3, rank=rank, shuffle=False)
        loader = DataLoader(data, batch_size=4, sampler=sampler)
        layout = shard_layout(loader, 3, rank)
        assert layout == ShardLayout("distributed", N, 3, rank)
        parts.append(extract_embeddings(encoder, loader, layout=layout))
    # 23 samples on 3 ranks: 8 positions each, position 23 (rank 2's last) is padding.
    assert [len(p) for p in parts] == [8, 8, 7]
    positions = np.concatenate([p.positions for p in parts])
    assert sorted(positions.tolist()) == list(range(N))
    order = np.argsort(positions)
    features = np.concatenate([p.features[""] for p in parts])[order]
    single = extract_embeddings(encoder, DataLoader(data, batch_size=4))
    np.testing.assert_allclose(features, single.features[""], rtol=1e-6)
    assert torch.cat([p.targets for p in parts])[torch.from_numpy(order)].tolist() == single.targets.tolist()


def test_shard_layout_kinds(data):
    plain = DataLoader(data, batch_size=4, shuffle=True)
    assert shard_layout(plain, 1, 0) == ShardLayout("whole", N)
    assert shard_layout(plain, 2, 1) == ShardLayout("whole", N)  # every rank iterates everything
    subset = DataLoader(data, batch_size=4, sampler=list(range(0, N, 2)))
    assert shard_layout(subset, 2, 1) == ShardLayout("custom", None)
    assert shard_layout([(1, 2)], 1, 0) == ShardLayout("whole", None)


def test_keep_and_limit_select_samples_and_stop_early(encoder, data):
    seen = []

    def batches():
        for i in range(0, N, 4):
            seen.append(i)
            yield data.tensors[0][i : i + 4], data.tensors[1][i : i + 4]

    emb = extract_embeddings(encoder, batches(), keep=np.array([1, 2, 9]))
    assert emb.positions.tolist() == [1, 2, 9] and emb.targets.tolist() == data.tensors[1][[1, 2, 9]].tolist()
    assert seen == [0, 4, 8]  # stopped after the batch holding position 9
    emb = extract_embeddings(encoder, DataLoader(data, batch_size=4), limit=6)
    assert emb.positions.tolist() == list(range(6))
