"""The CUDA paths, run where there is a GPU; skipped without one (CI has none).

    python -m pytest tests/test_gpu.py -v     # on a machine with a CUDA GPU; DDP needs two

The rest of the suite runs the same code on the CPU in float32. These check what only a GPU
shows: bf16 autocast in inference (against the CPU's float32), in pretraining and in
fine-tuning; the recording head's statistics kept in full precision under autocast; a
numbered GPU used alone; and DDP over NCCL, one process per GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_neurt import load_model, simulate
from napari_neurt.model import span_mask
from napari_neurt.model.neurt import NeurtConfig
from napari_neurt.model.tokens import head_statistics
from napari_neurt.training import FinetuneConfig, PretrainConfig, finetune, pretrain
from napari_neurt.training.finetune import LabelledRecording

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (CI has none): run `python -m pytest tests/test_gpu.py` on one",
)
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")

SMALL = NeurtConfig(seq_len=64, n_embd=32, n_head=2, n_layer=2, n_ff=64, interpolate=True)


@pytest.fixture(scope="module")
def recording():
    return next(simulate.training_recordings(1, seed=11, n_neurons=(80, 80), n_frames=(600, 600)))


def test_the_default_model_gives_on_the_gpu_what_it_gives_on_the_cpu(recording):
    cpu, gpu = load_model("default", device="cpu"), load_model("default", device="cuda")
    assert gpu.bf16 and not cpu.bf16  # bf16 autocast on CUDA by default
    tokens = cpu.tokens_for(recording)
    own = tokens.tokens[..., 0]
    hide = span_mask(*own.shape, ratio=0.15, max_span=10, seed=0)
    truth = own[hide]

    def r2(estimate):
        return 1 - np.sum((estimate - truth) ** 2) / np.sum((truth - truth.mean()) ** 2)

    on_cpu = cpu.reconstruct(tokens, hide)[..., 0][hide]
    on_gpu = gpu.reconstruct(tokens, hide)[..., 0][hide]
    assert np.abs(on_gpu - on_cpu).mean() < 0.01  # bf16 keeps about three digits
    assert abs(r2(on_gpu) - r2(on_cpu)) < 0.01

    on_cpu, on_gpu = cpu.classify(tokens), gpu.classify(tokens)
    assert abs(on_gpu.recording_probability - on_cpu.recording_probability) < 0.03
    assert np.corrcoef(on_gpu.neuron_attention, on_cpu.neuron_attention)[0, 1] > 0.99


def test_the_recording_head_standardises_the_statistics_in_full_precision_under_autocast(
    recording,
):
    # under autocast the encoder's embeddings arrive in bf16; the raw statistics (event rates,
    # correlations) must not be rounded to bf16 with them before they are standardised
    model = load_model("default", device="cuda")
    assert model.bf16 and model.config.neuron_stats and model.config.stats_spread
    tokens = model.tokens_for(recording)
    n_embd = model.config.n_embd
    embedding = torch.randn(tokens.tokens.shape[0], n_embd).bfloat16()
    _, summary = model.recording_terms(embedding, tokens)  # mean neuron, then the spread
    head = model.module.recording_head
    statistics = torch.from_numpy(head_statistics(tokens, model.config.neuron_stats)).double()
    standardised = (statistics - head.stats_shift.cpu().double()) / head.stats_scale.cpu().double()
    expected = torch.cat([standardised.mean(0), standardised.std(0, correction=0)])
    torch.testing.assert_close(summary[n_embd:].cpu().double(), expected, atol=1e-4, rtol=1e-4)


def test_pretraining_in_bf16_learns_and_saves_float32_weights(tmp_path, recording):
    config = PretrainConfig(steps=60, batch_size=16, lr=3e-3, save_every=0, device="cuda")
    assert config.bf16
    result = pretrain([recording], tmp_path, config, model=SMALL)
    losses = np.array([loss for _, loss in result.history])
    assert np.isfinite(losses).all() and losses[-10:].mean() < losses[:10].mean()
    saved = load_model(tmp_path, device="cpu")
    assert all(p.dtype == torch.float32 for p in saved.module.parameters())


@two_gpus
def test_pretraining_on_the_second_gpu_leaves_the_first_alone(tmp_path):
    # pinned batches go to the current device: before it was set, GPU 0 got a context too
    script = textwrap.dedent(
        f"""
        import ctypes, sys
        from napari_neurt import simulate
        from napari_neurt.model.neurt import NeurtConfig
        from napari_neurt.training import PretrainConfig, pretrain
        recording = next(simulate.training_recordings(1, seed=11, n_neurons=(80, 80),
                                                      n_frames=(600, 600)))
        config = PretrainConfig(steps=5, batch_size=8, save_every=0, device="cuda:1")
        pretrain([recording], sys.argv[1], config, model=NeurtConfig(**{SMALL.to_dict()!r}))
        driver = ctypes.CDLL("libcuda.so.1")

        def has_context(ordinal):  # the driver's primary context, which PyTorch uses
            device, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
            assert driver.cuDeviceGet(ctypes.byref(device), ordinal) == 0
            assert driver.cuDevicePrimaryCtxGetState(
                device, ctypes.byref(flags), ctypes.byref(active)) == 0
            return active.value

        print(has_context(0), has_context(1))
        """
    )
    environment = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=300, check=False, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-2:] == ["0", "1"]


def test_finetuning_in_bf16_trains_the_heads(tmp_path):
    animals = simulate.cohort(3, seed=5, n_neurons=60, n_frames=400)
    items = [LabelledRecording(a.recording, a.animal, a.group) for a in animals]
    config = FinetuneConfig(steps=40, bag_size=16, eval_every=20, device="cuda")
    result = finetune(items, tmp_path, config, base=replace(SMALL, n_classes=2),
                      class_names=("wild type", "AD-like"))
    assert result.model.bf16 and result.report is not None
    head = result.model.module.recording_head.score.weight
    assert torch.isfinite(head).all() and head.abs().sum() > 0


@two_gpus
def test_ddp_over_nccl_keeps_the_replicas_identical(tmp_path, recording):
    np.savez(tmp_path / "rec.npz", traces=recording.traces, centroids=recording.centroids)
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(
        f"""
        import os, sys
        import numpy as np, torch
        from napari_neurt.model.neurt import NeurtConfig
        from napari_neurt.training import PretrainConfig, pretrain
        config = PretrainConfig(steps=6, batch_size=8, save_every=3, device="cuda")
        result = pretrain([sys.argv[2]], sys.argv[1], config,
                          model=NeurtConfig(**{SMALL.to_dict()!r}),
                          read_options=dict(frame_rate=10.0))
        weights = torch.cat([p.detach().reshape(-1).cpu() for p in result.network.parameters()])
        np.save(os.path.join(sys.argv[1], f"rank{{os.environ['RANK']}}.npy"), weights.numpy())
        """
    ))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "run"),
         str(tmp_path / "rec.npz")],
        capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "run" / "rank0.npy"),
                                  np.load(tmp_path / "run" / "rank1.npy"))
