"""The NEuRT network itself (small configs): both attention paths, heads, config checks, devices."""

from __future__ import annotations

import math

import pytest
import torch

from napari_neurt.device import resolve_device
from napari_neurt.model.neurt import Neurt, NeurtConfig, interpolate_hidden

SMALL = dict(seq_len=32, n_features=5, n_embd=16, n_head=2, n_layer=2, n_ff=32)


def small_network(seed: int = 0, **overrides) -> Neurt:
    torch.manual_seed(seed)
    network = Neurt(NeurtConfig(**{**SMALL, **overrides})).eval()
    with torch.no_grad():  # larger than the init scale, so that attention is far from uniform
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
    return network


def test_sdpa_and_exact_paths_agree():
    network = small_network(n_classes=2)
    tokens = torch.rand(6, 32, 5)
    with torch.inference_mode():
        fast_outputs, no_maps = network.encode(tokens)
        exact_outputs, maps = network.encode(tokens, exact=True)
        fast_logits, fast_weights, _ = network.classify_windows(tokens)
        exact_logits, exact_weights, _ = network.classify_windows(tokens, exact=True)
    assert no_maps is None and len(maps) == 2
    for fast, exact in zip(fast_outputs, exact_outputs, strict=True):
        torch.testing.assert_close(fast, exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(network(tokens), network(tokens, exact=True), atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_logits, exact_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_weights, exact_weights, atol=1e-5, rtol=0)
    # the maps are softmax rows and far from uniform (so the comparison above means something)
    assert maps[0].shape == (6, 2, 32, 32)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(6, 2, 32))
    assert maps[0].max() > 5 / 32


def test_exact_maps_are_the_attention_used():
    """The maps the exact path returns are what weighs the values: one block, by hand."""
    network = small_network()
    tokens = torch.rand(2, 32, 5)
    with torch.inference_mode():
        x = network.ln_embed(network.embed(tokens) + network.pos.weight[:32])
        _, maps = network.encode(tokens, exact=True)
        attention = network.blocks[0].attn
        v = attention.qkv(x)[..., 32:].view(2, 32, 2, 8).transpose(1, 2)
        by_hand = attention.proj((maps[0] @ v).transpose(1, 2).reshape(2, 32, 16))
        ours, _ = attention(x)
    torch.testing.assert_close(ours, by_hand, atol=1e-5, rtol=0)


def test_short_windows_use_the_first_positions():
    network = small_network()
    tokens = torch.rand(3, 20, 5)
    with torch.inference_mode():
        assert network(tokens).shape == (3, 20, 5)
        with pytest.raises(ValueError, match="seq_len=32"):
            network(torch.rand(1, 33, 5))


def test_recording_head_is_gated_attention_over_neurons():
    network = small_network(n_classes=2, mil_hidden=8)
    neurons = torch.randn(7, 16)
    with torch.inference_mode():
        logits, weights = network.classify_recording(neurons)
        order = torch.randperm(7)
        logits_permuted, weights_permuted = network.classify_recording(neurons[order])
        batched_logits, batched_weights = network.classify_recording(
            torch.stack([neurons, neurons[order]])
        )
    assert logits.shape == (2,) and weights.shape == (7,)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    torch.testing.assert_close(
        weights_permuted, weights[order]
    )  # one weight per neuron, follows it
    torch.testing.assert_close(logits_permuted, logits, atol=1e-6, rtol=0)  # order does not matter
    torch.testing.assert_close(batched_logits[1], logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched_weights[0], weights)
    # gated: a neuron whose gate is closed gets the weight of a zero score
    head = network.recording_head
    with torch.no_grad():
        score = head.score(
            torch.tanh(head.value(neurons)) * torch.sigmoid(head.gate(neurons))
        ).squeeze(-1)
    torch.testing.assert_close(weights, score.softmax(0))
    # the decision reads the attended neurons and the mean neuron
    attended = weights @ neurons
    expected = head.head(torch.cat([attended, neurons.mean(0)]))
    torch.testing.assert_close(logits, expected.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_evidence_head_pools_signed_evidence_by_log_mean_exp(n_classes):
    network = small_network(n_classes=n_classes, mil_hidden=8, recording_pooling="evidence")
    head = network.recording_head
    neurons = torch.randn(7, 16)
    with torch.inference_mode():
        logits, weights = network.classify_recording(neurons)
        order = torch.randperm(7)
        logits_permuted, weights_permuted = network.classify_recording(neurons[order])
        batched, batched_weights = network.classify_recording(torch.stack([neurons, neurons]))
    with torch.no_grad():
        evidence = head.score(torch.tanh(head.value(neurons)) * torch.sigmoid(head.gate(neurons)))
        pooled = torch.logsumexp(evidence, 0) - math.log(7)
        expected = torch.cat([torch.zeros(1), pooled + head.head(neurons.mean(0))])
    assert evidence.shape == (7, n_classes - 1)  # one score per class against class 0
    torch.testing.assert_close(logits, expected, atol=1e-6, rtol=0)
    strongest = int(logits[1:].argmax()) + 1
    # the weights are the gradient of that class's pooled evidence: the share of each neuron
    torch.testing.assert_close(weights, evidence[:, strongest - 1].softmax(0))
    torch.testing.assert_close(logits_permuted, logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights_permuted, weights[order])
    torch.testing.assert_close(batched[1], logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(batched_weights[0], weights)
    # signed: more evidence in any neuron never lowers its class's logit
    target = neurons.clone().requires_grad_(True)
    with torch.enable_grad():
        z = head.score(torch.tanh(head.value(target)) * torch.sigmoid(head.gate(target)))
        pooled = torch.logsumexp(z, 0)[strongest - 1]
        (gradient,) = torch.autograd.grad(pooled, z)
    assert (gradient[:, strongest - 1] > 0).all()
    torch.testing.assert_close(gradient[:, strongest - 1], weights)


def test_recording_pooling_is_checked():
    with pytest.raises(ValueError, match="recording_pooling must be one of"):
        NeurtConfig(**SMALL, n_classes=2, mil_hidden=4, recording_pooling="max")


def test_recording_head_reads_standardised_activity_statistics():
    network = small_network(n_classes=2, mil_hidden=8, neuron_stats=3)
    head = network.recording_head
    with torch.no_grad():
        head.stats_shift.copy_(torch.tensor([1.0, 0.1, 0.2]))
        head.stats_scale.copy_(torch.tensor([2.0, 0.5, 0.5]))
    neurons, statistics = torch.randn(7, 16), torch.randn(7, 3)
    with torch.inference_mode():
        logits, weights = network.classify_recording(neurons, statistics)
        shifted, _ = network.classify_recording(neurons, statistics + 1.0)
    # the head sees the embedding followed by the standardised statistics, nothing else
    z = torch.cat([neurons, (statistics - head.stats_shift) / head.stats_scale], dim=1)
    with torch.no_grad():
        score = head.score(torch.tanh(head.value(z)) * torch.sigmoid(head.gate(z))).squeeze(-1)
    torch.testing.assert_close(weights, score.softmax(0))
    expected = head.head(torch.cat([weights @ z, z.mean(0)]))
    torch.testing.assert_close(logits, expected.detach(), atol=1e-6, rtol=0)
    assert not torch.allclose(logits, shifted)
    assert {"recording_head.stats_shift", "recording_head.stats_scale"} <= set(
        network.state_dict()
    )  # saved with the weights
    with pytest.raises(ValueError, match="activity statistics"):
        network.classify_recording(neurons)
    with pytest.raises(ValueError, match="recording head"):
        NeurtConfig(**{**SMALL, "n_classes": 2, "neuron_stats": 3})


def test_statistics_are_standardised_in_full_precision_under_bf16_embeddings():
    # Under CUDA autocast the embeddings arrive in bf16; the raw statistics (here about 50, one
    # bf16 step 0.25 = 2.5 of their s.d.) must not be rounded to bf16 before standardising.
    network = small_network(n_classes=2, mil_hidden=8, neuron_stats=2,
                            recording_pooling="evidence", stats_spread=True)
    head = network.recording_head
    with torch.no_grad():
        head.stats_shift.fill_(50.0)
        head.stats_scale.fill_(0.1)
    neurons = torch.randn(6, 16)
    statistics = 50.0 + 0.1 * torch.randn(6, 2)
    with torch.no_grad():
        _, exact = head.terms(neurons, statistics)
        _, from_bf16 = head.terms(neurons.bfloat16(), statistics)
    spread = slice(16, None)  # mean neuron's statistics, then their spread
    torch.testing.assert_close(from_bf16[spread], exact[spread], atol=1e-5, rtol=1e-5)


def test_evidence_head_can_read_the_spread_of_the_statistics_over_neurons():
    network = small_network(n_classes=2, mil_hidden=8, neuron_stats=2,
                            recording_pooling="evidence", stats_spread=True)
    head = network.recording_head
    assert head.head.in_features == 16 + 2 + 2  # mean neuron, then the statistics' spread
    neurons, statistics = torch.randn(6, 16), torch.randn(6, 2)
    with torch.inference_mode():
        logits, weights = network.classify_recording(neurons, statistics)
    z = torch.cat([neurons, statistics], dim=1)  # stats_shift 0, stats_scale 1
    with torch.no_grad():
        evidence = head.score(torch.tanh(head.value(z)) * torch.sigmoid(head.gate(z)))
        spread = statistics.std(dim=0, correction=0)
        term = head.head(torch.cat([z.mean(0), spread]))
        expected = torch.logsumexp(evidence, 0) - math.log(6) + term
    torch.testing.assert_close(logits[1:], expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(weights, evidence[:, 0].softmax(0))
    # same neurons and mean statistics, more spread: only the recording term moves
    with torch.no_grad():
        head.score.weight.zero_()
        head.head.weight.zero_()
        head.head.weight[0, -2:] = 1.0
    even = torch.zeros(6, 2)
    uneven = torch.tensor([[1.0, -1.0]] * 3 + [[-1.0, 1.0]] * 3)
    with torch.inference_mode():
        low, _ = network.classify_recording(neurons, even)
        high, _ = network.classify_recording(neurons, uneven)
    torch.testing.assert_close(high[1] - low[1], torch.tensor(2.0))
    with pytest.raises(ValueError, match="stats_spread"):
        NeurtConfig(**SMALL, n_classes=2, mil_hidden=4, neuron_stats=2, stats_spread=True)


def test_heads_absent_unless_configured():
    plain = small_network()
    assert plain.time_pool is None and plain.recording_head is None
    with pytest.raises(ValueError, match="no classifier"):
        plain.classify_windows(torch.rand(1, 32, 5))
    with pytest.raises(ValueError, match="no recording head"):
        plain.classify_recording(torch.rand(3, 16))


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(n_embd=15), "multiple of n_head"),
        (dict(mil_hidden=4), "needs classes"),
        (dict(n_layer=0), "n_layer"),
    ],
)
def test_config_is_checked(bad, message):
    with pytest.raises(ValueError, match=message):
        NeurtConfig(**{**SMALL, **bad})
    with pytest.raises(ValueError, match="unknown NeurtConfig field"):
        NeurtConfig.from_dict({**SMALL, "emb_norm": False})


def test_device_resolver():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    auto = resolve_device("auto")
    if torch.cuda.is_available():
        assert auto.type == "cuda"
    elif torch.backends.mps.is_available():
        assert auto.type == "mps"
    else:
        assert auto == torch.device("cpu")
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu-ish")


def test_interpolate_hidden_draws_lines_across_gaps():
    tokens = torch.arange(10.0).view(1, 10, 1).repeat(2, 1, 2) ** 2  # t^2 in both features
    hidden = torch.zeros(2, 10, 2, dtype=torch.bool)
    hidden[0, 2:5, 0] = True  # inside: the line from t=1 (1) to t=5 (25)
    hidden[1, :3, 1] = True  # at the start: the first visible value (t=3 -> 9)
    hidden[1, 8:, 0] = True  # at the end: the last visible value (t=7 -> 49)
    filled = interpolate_hidden(tokens, hidden)
    torch.testing.assert_close(filled[0, 1:6, 0], torch.tensor([1.0, 7.0, 13.0, 19.0, 25.0]))
    torch.testing.assert_close(filled[1, :3, 1], torch.full((3,), 9.0))
    torch.testing.assert_close(filled[1, 8:, 0], torch.full((2,), 49.0))
    torch.testing.assert_close(filled[~hidden], tokens[~hidden])  # visible entries untouched
    everything = torch.ones_like(hidden)
    assert (interpolate_hidden(tokens, everything) == 0).all()  # nothing visible: 0


def test_interpolating_model_starts_as_interpolation_and_ignores_hidden_values():
    tokens = torch.rand(3, 32, 5)
    hidden = torch.zeros(3, 32, 5, dtype=torch.bool)
    hidden[:, 10:20, 0] = True
    fresh = Neurt(NeurtConfig(**SMALL, interpolate=True)).eval()
    network = small_network(interpolate=True)
    with torch.inference_mode():
        torch.testing.assert_close(fresh(tokens, hidden), interpolate_hidden(tokens, hidden))
        out = network(tokens, hidden)
        scrambled = tokens.masked_fill(hidden, 123.0)  # what lies under the mask is never read
        torch.testing.assert_close(network(scrambled, hidden), out)
        assert not torch.allclose(network(tokens), out)  # the mask itself is an input


def test_local_convolution_sees_the_shape_around_each_step_only():
    """With `local_kernel` k, a step's embedding changes only with the fill within k // 2 steps."""
    torch.manual_seed(0)
    network = Neurt(NeurtConfig(**SMALL, interpolate=True, local_kernel=5)).eval()
    tokens = torch.rand(1, 32, 5)
    hidden = torch.zeros(1, 32, 5, dtype=torch.bool)
    bumped = tokens.clone()
    bumped[0, 20, 0] += 1.0
    with torch.inference_mode():
        embed = network.embed_local(torch.cat([tokens, hidden.float()], -1).transpose(1, 2))
        moved = network.embed_local(torch.cat([bumped, hidden.float()], -1).transpose(1, 2))
        changed = (moved - embed).abs().amax(dim=1)[0] > 0
        assert changed.nonzero().flatten().tolist() == [18, 19, 20, 21, 22]
        # a fresh model is still the interpolation (the head starts at zero), and it runs
        torch.testing.assert_close(network(tokens, hidden), tokens)


@pytest.mark.parametrize(
    "overrides",
    [
        {"local_kernel": 5},
        {"interpolate": True, "local_kernel": 4},
        {"interpolate": True, "local_kernel": -3},
    ],
)
def test_local_kernel_is_odd_and_needs_interpolation(overrides):
    with pytest.raises(ValueError, match="local_kernel"):
        NeurtConfig(**SMALL, **overrides)


def test_config_takes_numpy_scalars_and_stores_python_ones():
    # numpy's bools as well as its integers (a flag computed with numpy): in memory they
    # worked, and a checkpoint of the config is JSON
    import json

    import numpy as np

    config = NeurtConfig(
        seq_len=np.int64(16), n_embd=8, n_head=2, n_layer=1, n_ff=16, norm_eps=np.float32(1e-6),
        interpolate=np.True_, stats_spread=np.False_,
    )
    assert config.interpolate is True and config.stats_spread is False
    assert type(config.seq_len) is int and type(config.norm_eps) is float
    assert json.loads(json.dumps(config.to_dict()))["interpolate"] is True


def test_a_seeded_build_leaves_the_gpu_generators_alone(monkeypatch):
    """`own_global_rng(seed)` restores only the CPU generator (fork_rng(devices=[])), so it must
    seed only that one: torch.manual_seed also reseeds every CUDA and MPS generator, which on a
    GPU machine stayed reseeded after each seeded build (every fine-tune fold, every pretrain)."""
    from napari_neurt.model.neurt import own_global_rng

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append("cuda"))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: reseeded.append("mps"))
    config = NeurtConfig(seq_len=8, n_embd=8, n_head=2, n_layer=1, n_ff=8)
    with own_global_rng(3):
        built = Neurt(config)
    assert reseeded == []
    with torch.random.fork_rng(devices=[]):  # the same weights as a torch.manual_seed(3) build
        torch.manual_seed(3)
        expected = Neurt(config)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(built.state_dict()[name], value, rtol=0, atol=0)
