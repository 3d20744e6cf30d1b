"""Fine-tuning: labelled data, animal-wise splits, layer-wise learning rates, a separable cohort."""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_neurt import Recording, load_model
from napari_neurt.model.neurt import Neurt, NeurtConfig
from napari_neurt.model.tokens import ACTIVITY_STATISTICS, activity_statistics
from napari_neurt.training import (
    FinetuneConfig,
    LabelledRecording,
    finetune,
    labelled_recordings,
    layerwise_lr_groups,
    leave_one_animal_out,
    split_animals,
)
from napari_neurt.training.data import source_neighbourhood
from napari_neurt.training.finetune import (
    WHOLE_RECORDING_MIN_ANIMALS,
    auc,
    balanced_weights,
    check_cohort,
    classifier_network,
    fit_recording_term,
)

TINY = NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=2, n_ff=32)
TINY_TOKENS = [np.random.default_rng(k).random((6, 40, 5), dtype=np.float32) for k in range(2)]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_recording(kind: str, seed: int, n_neurons: int = 10, n_frames: int = 96) -> Recording:
    """ "calm": slow sines; "bursty": rare large events on a flat baseline. Trivially separable."""
    rng = np.random.default_rng(seed)
    frames = np.arange(n_frames)
    if kind in ("calm", "fast"):  # "fast": sines of a 5 times shorter period
        period = 30 if kind == "calm" else 6
        traces = np.sin(2 * np.pi * frames / period + rng.uniform(0, 6.3, (n_neurons, 1)))
    else:
        traces = (rng.random((n_neurons, n_frames)) < 0.04) * 5.0
        traces[:, 0] = 5.0  # every neuron has an event, so none is constant
    traces = traces + 0.05 * rng.standard_normal((n_neurons, n_frames))
    return Recording(
        traces=traces,
        neuron_ids=np.arange(1, n_neurons + 1),
        centroids=rng.uniform(0, 80, (n_neurons, 2)),
        frame_rate=10.0,
        source=f"{kind} {seed}",
    )


def toy_cohort(
    per_class: int = 3, recordings_per_animal: int = 1, kinds: tuple[str, ...] = ("calm", "bursty")
) -> list[LabelledRecording]:
    items = []
    for k, label in enumerate(kinds):
        for a in range(per_class):
            animal = f"{label}-{a}"
            for r in range(recordings_per_animal):
                seed = 1000 * k + 10 * a + r
                items.append(LabelledRecording(toy_recording(label, seed), animal, label))
    return items


def write_manifest(folder, rows, header=("path", "animal", "label")):
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def save_npz(path, recording):
    np.savez(path, traces=recording.traces, centroids=recording.centroids, frame_rate=10.0)


def fast(**overrides) -> FinetuneConfig:
    values = {
        "steps": 40,
        "bags_per_step": 4,
        "bag_size": 6,
        "lr": 3e-3,
        "head_lr": 1e-2,
        "mil_hidden": 8,
        "eval_every": 10,
        "patience": 3,
        "validation_bags": 4,
        "device": "cpu",
    }
    return FinetuneConfig(**{**values, **overrides})


def test_manifest_and_class_folders(tmp_path):
    save_npz(tmp_path / "a.npz", toy_recording("calm", 0))
    manifest = write_manifest(tmp_path, [["a.npz", "m1", "calm"], [tmp_path / "a.npz", "m2", "x"]])
    items = labelled_recordings(manifest)
    assert [(i.animal, i.label) for i in items] == [("m1", "calm"), ("m2", "x")]
    assert items[0].source == tmp_path / "a.npz"

    root = tmp_path / "classes"
    (root / "wt" / "mouse1").mkdir(parents=True)
    (root / "ad").mkdir(parents=True)
    save_npz(root / "wt" / "mouse1" / "day1.npz", toy_recording("calm", 1))
    save_npz(root / "wt" / "mouse1" / "day2.npz", toy_recording("calm", 2))
    save_npz(root / "ad" / "mouse2.npz", toy_recording("bursty", 3))
    save_npz(root / "ad" / "mouse1.npz", toy_recording("bursty", 4))  # another animal
    (root / ".ipynb_checkpoints").mkdir()  # hidden folders are no class
    save_npz(root / ".ipynb_checkpoints" / "x.npz", toy_recording("calm", 5))
    items = labelled_recordings(root)
    assert sorted((i.animal, i.label, i.source.name) for i in items) == [
        ("ad/mouse1", "ad", "mouse1.npz"),
        ("ad/mouse2", "ad", "mouse2.npz"),
        ("wt/mouse1", "wt", "day1.npz"),
        ("wt/mouse1", "wt", "day2.npz"),
    ]


def test_class_folders_skip_the_models_and_results_napari_neurt_writes_into_them(tmp_path):
    from napari_neurt.model import save_checkpoint
    from napari_neurt.model.batch import results_path

    root = tmp_path / "cohort"
    (root / "wt" / "m1").mkdir(parents=True)
    (root / "ad").mkdir()
    save_npz(root / "wt" / "m1" / "day1.npz", toy_recording("calm", 1))
    save_npz(root / "ad" / "m2.npz", toy_recording("bursty", 2))
    # the fine-tune panel's default folder, and neurt classify / reconstruct's default results
    save_checkpoint(root / "neurt-finetuned", Neurt(TINY), class_names=("ad", "wt"))
    save_checkpoint(root / "wt" / "m1" / "run", Neurt(TINY), class_names=("ad", "wt"))
    for source in (root / "wt" / "m1" / "day1.npz", root / "ad" / "m2.npz"):
        for task in ("classify", "reconstruct"):
            path = results_path(source, task)
            path.write_bytes(b"")
            path.with_suffix(".csv").write_text("neuron_ids\n")
    items = labelled_recordings(root)
    assert sorted((i.animal, i.label, i.source.name) for i in items) == [
        ("ad/m2", "ad", "m2.npz"),
        ("wt/m1", "wt", "day1.npz"),
    ]


def test_a_manifest_saved_by_a_spreadsheet_reads(tmp_path):
    save_npz(tmp_path / "a.npz", toy_recording("calm", 0))
    text = "path, animal ,label\r\na.npz,m1,calm\r\n"  # a byte-order mark, padded names
    (tmp_path / "manifest.csv").write_text(text, encoding="utf-8-sig")
    [item] = labelled_recordings(tmp_path / "manifest.csv")
    assert (item.animal, item.label) == ("m1", "calm")


def test_a_recording_given_for_the_manifest_is_refused_clearly(tmp_path):
    """`neurt finetune session.npz` (a recording, not a manifest or a class folder)."""
    save_npz(tmp_path / "a.npz", toy_recording("calm", 0))
    with pytest.raises(ValueError, match="a.npz is not a CSV manifest.*folder"):
        labelled_recordings(tmp_path / "a.npz")


def test_one_recording_under_two_animals_is_refused(tmp_path):
    save_npz(tmp_path / "a.npz", toy_recording("calm", 0))
    items = [
        LabelledRecording(tmp_path / "a.npz", "m1", "calm"),
        LabelledRecording("b.npz", "m2", "calm"),
        LabelledRecording("c.npz", "m3", "bursty"),
        LabelledRecording(tmp_path / "." / "a.npz", "m4", "bursty"),  # the same file
    ]
    with pytest.raises(ValueError, match="belong to one animal.*listed under several"):
        check_cohort(items)


def test_bad_inputs_give_clear_errors(tmp_path):
    empty = write_manifest(tmp_path, [])
    with pytest.raises(ValueError, match="lists no recordings"):
        labelled_recordings(empty)
    wrong = write_manifest(tmp_path, [["a.npz", "m1", "calm"]], header=("path", "animal", "group"))
    with pytest.raises(ValueError, match="no column 'label'.*'group'"):
        labelled_recordings(wrong)
    missing = write_manifest(tmp_path, [["nowhere.npz", "m1", "calm"]])
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        labelled_recordings(missing)
    with pytest.raises(FileNotFoundError, match="manifest"):
        labelled_recordings(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match="no labelled recordings"):
        labelled_recordings([])
    one_animal = [
        LabelledRecording("x", "m1", "calm"),
        LabelledRecording("y", "m1", "calm"),
        LabelledRecording("z", "m2", "bursty"),
        LabelledRecording("w", "m3", "bursty"),
    ]
    with pytest.raises(ValueError, match="class 'calm' has 1 animal"):
        check_cohort(one_animal)
    with pytest.raises(ValueError, match="one label"):
        check_cohort([*one_animal, LabelledRecording("v", "m1", "bursty")])
    with pytest.raises(ValueError, match="at least 2 classes"):
        check_cohort([LabelledRecording("x", "m1", "a"), LabelledRecording("y", "m2", "a")])
    with pytest.raises(ValueError, match="evaluation"):
        FinetuneConfig(evaluation="k-fold")
    with pytest.raises(ValueError, match="fewer than the 40 bags_per_step"):  # it never ended
        FinetuneConfig(bags_per_step=40, recordings_per_round=4, bags_per_recording=8)


def test_an_output_folder_that_cannot_be_made_is_refused_before_training(tmp_path):
    (tmp_path / "a file").write_text("")
    steps = []
    for out in (tmp_path / "a file", tmp_path / "a file" / "classifier"):
        with pytest.raises(ValueError, match="a file, not a folder"):
            finetune(toy_cohort(), out, fast(), base=TINY, progress=steps.append)
    assert steps == []  # nothing trained, only to fail when saving


def test_default_recipe_is_the_measured_one():
    # the quality report's recipe (chosen on tuning cohorts): encoder frozen, heads at 3e-3,
    # up to 1200 steps of 4 bags of 32 neurons; the CLI and the panel start from the same
    config = FinetuneConfig()
    assert (config.lr, config.head_lr, config.steps, config.bags_per_step, config.bag_size) == (
        0.0, 3e-3, 1200, 4, 32
    )
    # the whole-recording fit, by default only where tuning cohorts showed it helps
    assert config.whole_recording_fit is None
    assert [config.fits_whole_recordings(n) for n in (1, 4, WHOLE_RECORDING_MIN_ANIMALS - 1)] \
        == [False] * 3
    assert config.fits_whole_recordings(WHOLE_RECORDING_MIN_ANIMALS)
    assert FinetuneConfig(whole_recording_fit=True).fits_whole_recordings(1)
    assert not FinetuneConfig(whole_recording_fit=False).fits_whole_recordings(100)
    assert not FinetuneConfig(whole_recording_fit=True,
                              recording_pooling="gated").fits_whole_recordings(100)
    for name, value in (("lr", -1e-4), ("head_lr", float("nan")), ("lr", float("inf"))):
        with pytest.raises(ValueError, match=f"FinetuneConfig.{name} must be a finite"):
            FinetuneConfig(**{name: value})


def test_splits_keep_each_animal_on_one_side():
    items = toy_cohort(per_class=4, recordings_per_animal=2)
    split = split_animals(items, test_per_class=1, validation_per_class=1, seed=3)
    sides = [set(split.train), set(split.validation), set(split.test)]
    assert all(not (a & b) for k, a in enumerate(sides) for b in sides[k + 1 :])
    assert set().union(*sides) == {i.animal for i in items}
    labels = {i.animal: i.label for i in items}
    for side in (split.test, split.validation):
        assert sorted(labels[a] for a in side) == ["bursty", "calm"]  # stratified

    folds = leave_one_animal_out(items)
    assert sorted(f.test[0] for f in folds) == sorted({i.animal for i in items})
    for fold in folds:
        assert fold.test[0] not in fold.train + fold.validation
        assert not set(fold.train) & set(fold.validation)
    # with two animals per class, holding one out leaves none to spare for validation
    assert all(not f.validation for f in leave_one_animal_out(toy_cohort(per_class=2)))


def test_sampling_balances_classes_and_animals():
    items = toy_cohort(per_class=2)
    items += [LabelledRecording(f"extra{k}", "calm-0", "calm") for k in range(3)]
    weights = balanced_weights(items)
    per_class = {
        label: weights[[i.label == label for i in items]].sum() for label in ("calm", "bursty")
    }
    assert per_class["calm"] == pytest.approx(per_class["bursty"])
    per_animal = {a: weights[[i.animal == a for i in items]].sum() for a in ("calm-0", "calm-1")}
    assert per_animal["calm-0"] == pytest.approx(per_animal["calm-1"])


def test_bags_keep_the_tokens_of_at_most_cached_recordings(live_tokens):
    """Fine-tuning reads a recording when it is drawn and keeps `cached_recordings` of them (the
    bound docs/finetune.md states), never the whole cohort."""
    from napari_neurt.training.data import BagStream

    kinds = ("calm", "bursty")
    sources = [lambda k=k: toy_recording(kinds[k % 2], k, n_frames=40) for k in range(20)]
    stream = BagStream(
        sources,
        [k % 2 for k in range(20)],
        np.ones(20),
        window_length=32,
        bag_size=4,
        bags_per_step=2,
        recordings_per_round=2,
        bags_per_recording=1,
        cached_recordings=3,
    )
    bags = iter(stream)
    for _ in range(60):
        next(bags)
    assert live_tokens.built > 10  # recordings were read again after being dropped
    assert live_tokens.most <= 3 + 1  # the cached ones, and one read before the oldest goes


def test_a_seeded_classifier_does_not_depend_on_models_loaded_meanwhile():
    # a model loaded in another thread (a napari panel) while fine-tuning starts a fold must not
    # take draws from the seeded sequence of the fresh heads
    base = Neurt(TINY)

    def heads():
        network = classifier_network(base, 3, 8, seed=7)
        return torch.cat([p.detach().flatten() for p in network.parameters()])

    expected = heads()
    done = threading.Event()

    def load():
        while not done.is_set():
            load_model("default", device="cpu")

    loader = threading.Thread(target=load)
    loader.start()
    try:
        differing = sum(not torch.equal(heads(), expected) for _ in range(20))
    finally:
        done.set()
        loader.join()
    assert differing == 0


def test_layerwise_learning_rates_follow_the_published_rule():
    module = Neurt(
        NeurtConfig(seq_len=32, n_embd=16, n_head=2, n_layer=4, n_ff=32, n_classes=2, mil_hidden=8)
    )
    groups = layerwise_lr_groups(module, lr=1e-3, head_lr=5e-3)
    lr = {g["name"]: g["lr"] for g in groups}
    # published: blocks 3, 2, 1, 0 at lr, 0.9 lr, 0.9^2 lr, 0.9^3 lr; embedding at 0.8^3 lr
    expected = {
        "block 3": 1e-3,
        "block 2": 9e-4,
        "block 1": 8.1e-4,
        "block 0": 7.29e-4,
        "embedding": 5.12e-4,
        "heads": 5e-3,
    }
    for name, value in expected.items():
        assert lr[name] == pytest.approx(value) and lr[f"{name} (no decay)"] == pytest.approx(value)
    covered = {id(p) for g in groups for p in g["params"]}
    assert covered == {id(p) for p in module.parameters()}
    assert all(g["weight_decay"] == 0 for g in groups if "no decay" in g["name"])
    assert all(p.ndim == 1 for g in groups if "no decay" in g["name"] for p in g["params"])


def test_mask_and_local_embeddings_of_an_interpolating_encoder_are_in_the_embedding_group():
    module = Neurt(replace(TINY, interpolate=True, local_kernel=3, n_classes=2, mil_hidden=8))
    groups = layerwise_lr_groups(module, lr=1e-3, head_lr=5e-3)
    embedding = {id(p) for g in groups if g["name"].startswith("embedding") for p in g["params"]}
    assert id(module.embed_hidden.weight) in embedding
    assert id(module.embed_local.weight) in embedding


def test_a_parameter_without_a_learning_rate_group_is_an_error():
    module = Neurt(replace(TINY, n_classes=2, mil_hidden=8))
    module.extra = torch.nn.Linear(2, 2)  # a new part nobody placed: never the heads' rate
    with pytest.raises(ValueError, match="no learning-rate group for parameter 'extra.weight'"):
        layerwise_lr_groups(module, lr=1e-3, head_lr=5e-3)


def test_frozen_encoder_stays_put_and_heads_learn(tmp_path):
    base = Neurt(replace(TINY, interpolate=True, local_kernel=3))
    result = finetune(
        toy_cohort(per_class=3), tmp_path, fast(lr=0.0, steps=10), base=base,
        class_names=("calm", "bursty"),
    )
    tuned = result.model.module.state_dict()
    for name, value in base.state_dict().items():
        assert torch.equal(tuned[name], value), name  # encoder and reconstruction head
    assert tuned["recording_head.score.weight"].abs().sum() > 0


def test_progress_reports_the_heads_learning_rate_each_step_used(tmp_path):
    # with the encoder frozen (lr 0), the rate that moves anything is the heads'
    from napari_neurt.training.engine import WarmupCosine

    reported = []
    settings = fast(lr=0.0, steps=10, eval_every=5)
    finetune(toy_cohort(per_class=3), tmp_path, settings, base=TINY,
             progress=lambda p: "loss" in p.stage and reported.append(p.lr))
    schedule = WarmupCosine(10, 1)  # ceil(warmup 0.1 x 10 steps)
    assert reported[:10] == pytest.approx([settings.head_lr * schedule(k) for k in range(10)])


def penalised_logistic_regression(x, y, l2):
    """Newton's method on standardised inputs: the optimum `fit_recording_term` must reach."""
    shift, scale = x.mean(0), x.std(0)
    z = np.c_[(x - shift) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    penalty = np.r_[np.full(x.shape[1], l2), 0.0]
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (p - y) / len(y) + penalty * w
        hessian = (z * (p * (1 - p))[:, None]).T @ z / len(y) + np.diag(penalty)
        w -= np.linalg.solve(hessian, gradient)
    return lambda xt: np.c_[(xt - shift) / scale, np.ones(len(xt))] @ w


def test_fit_recording_term_is_the_penalised_logistic_regression_folded_into_the_head():
    rng = np.random.default_rng(0)
    n_embd, n_stats = 3, 2
    pooled = rng.normal(size=(14, 1))
    summary = rng.normal(size=(14, n_embd + n_stats))
    labels = (summary[:, -1] + 0.5 * pooled[:, 0] + 0.5 * rng.normal(size=14) > 0).astype(int)
    head_weight = rng.normal(size=(1, n_embd + n_stats))
    scale, weight, bias = fit_recording_term(
        *map(torch.from_numpy, (pooled, summary, head_weight)), n_embd,
        torch.from_numpy(labels), torch.ones(14), l2=0.1,
    )
    # inputs of the regression: pooled evidence, the learnt term, the statistics
    inputs = np.c_[pooled, summary @ head_weight.T, summary[:, n_embd:]]
    oracle = penalised_logistic_regression(inputs, labels, l2=0.1)
    new_pooled, new_summary = rng.normal(size=(5, 1)), rng.normal(size=(5, n_embd + n_stats))
    head_logits = scale.numpy() * new_pooled[:, 0] + new_summary @ weight[0].numpy() + bias.item()
    expected = oracle(np.c_[new_pooled, new_summary @ head_weight.T, new_summary[:, n_embd:]])
    np.testing.assert_allclose(head_logits, expected, atol=1e-6)
    assert scale.item() > 0  # the pooled evidence argues for class 1 here

    # an input equal in every recording gets no weight, and nothing becomes NaN
    summary[:, -2] = 4.0
    _, weight, bias = fit_recording_term(
        *map(torch.from_numpy, (pooled, summary, head_weight)), n_embd,
        torch.from_numpy(labels), torch.ones(14),
    )
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    term_share = (weight[0, 0] / head_weight[0, 0]).item()  # an embedding input: the term's
    assert weight[0, -2].item() == pytest.approx(term_share * head_weight[0, -2])


def test_whole_recording_fit_changes_only_the_recording_term(tmp_path):
    items = toy_cohort(per_class=3)
    config = fast(steps=20, test_per_class=0, validation_per_class=0, lr=0.0,
                  whole_recording_fit=True)
    result = finetune(items, tmp_path / "fitted", config, base=TINY)
    fitted = result.model
    bags = finetune(
        items, tmp_path / "bags", replace(config, whole_recording_fit=False), base=TINY
    ).model
    # left to choose (the default), 3 animals per class are too few to fit on
    auto = finetune(items, tmp_path / "auto", replace(config, whole_recording_fit=None),
                    base=TINY)
    assert [fold["whole_recording_fit"] for fold in result.report.folds] == [True]
    assert [fold["whole_recording_fit"] for fold in auto.report.folds] == [False]
    for name, value in auto.model.module.state_dict().items():
        assert torch.equal(value, bags.module.state_dict()[name]), name
    refitted = {"evidence_scale", "head.weight", "head.bias"}
    before, after = bags.module.state_dict(), fitted.module.state_dict()
    for name, value in before.items():
        same = torch.equal(after[name], value)
        assert same != (name.removeprefix("recording_head.") in refitted), name
    assert before["recording_head.evidence_scale"].item() == 1.0
    # the neurons' weights are the scores' softmax: what the fit leaves alone
    tokens = fitted.tokens_for(toy_recording("bursty", 77))
    np.testing.assert_allclose(
        fitted.classify(tokens).neuron_attention, bags.classify(tokens).neuron_attention,
        atol=1e-6,
    )
    # fine-tuning from a fitted classifier learns with the evidence counted once again
    again = finetune(
        items, tmp_path / "again",
        replace(config, whole_recording_fit=False, steps=1, head_lr=0.0), base=fitted,
    ).model.module.state_dict()
    assert again["recording_head.evidence_scale"].item() == 1.0
    assert torch.equal(again["recording_head.head.weight"], after["recording_head.head.weight"])
    # a gated head has no recording term of this form: the option leaves it as trained
    stages = []
    gated = finetune(items, tmp_path / "gated", replace(config, recording_pooling="gated"),
                     base=TINY, progress=lambda p: stages.append(p.stage))
    assert not hasattr(gated.model.module.recording_head, "evidence_scale")
    assert not any("whole recordings" in stage for stage in stages)


def test_a_classifier_saved_before_the_evidence_scale_still_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    items = toy_cohort(per_class=2)
    config = fast(steps=3, test_per_class=0, validation_per_class=0, whole_recording_fit=False)
    model = finetune(items, tmp_path, config, base=TINY).model
    weights = load_file(tmp_path / "model.safetensors")
    del weights["recording_head.evidence_scale"]
    save_file(weights, tmp_path / "model.safetensors")
    document = json.loads((tmp_path / "config.json").read_text())
    del document["weights_sha256"]  # written before configs recorded their weights' digest
    (tmp_path / "config.json").write_text(json.dumps(document))
    old = load_model(tmp_path, device="cpu")
    assert old.module.recording_head.evidence_scale.item() == 1.0
    tokens = model.tokens_for(items[0].source)
    assert old.classify(tokens).recording_probability == pytest.approx(
        model.classify(tokens).recording_probability, abs=1e-6
    )


def test_auc():
    assert auc([0.1, 0.4, 0.35, 0.8], [False, False, True, True]) == pytest.approx(0.75)
    assert auc([1, 2], [True, True]) is None


def test_finetuning_separates_a_toy_cohort(tmp_path):
    seen = []
    result = finetune(
        toy_cohort(per_class=3), tmp_path, fast(whole_recording_fit=True), base=TINY,
        class_names=("calm", "bursty"), progress=seen.append,
    )
    report = result.report
    # the validation loss comes with the progress of the steps that computed it, and the
    # model kept is the one with the lowest
    validated = {p.done: p.validation_loss for p in seen if np.isfinite(p.validation_loss)}
    fold = report.folds[0]
    assert sorted(validated) == list(range(10, fold["steps"] + 1, 10))
    assert min(validated, key=validated.get) == fold["best_step"]
    assert min(validated.values()) == pytest.approx(fold["validation_loss"])
    assert all(
        f"validation {p.validation_loss:.4f}" in p.stage
        for p in seen
        if np.isfinite(p.validation_loss)
    )
    # then the recording term is fitted to the 4 whole training and validation recordings
    assert "fitting the recording term to 4 whole recordings" in seen[-1].stage
    assert len(report.animals) == 2 and report.summary["animal_accuracy"] == 1.0
    assert report.summary["recording_auc"] == 1.0
    assert all(row["neuron_accuracy"] > 0.9 for row in report.animals)
    assert {row["label"] for row in report.animals} == {"calm", "bursty"}
    fold = report.folds[0]
    assert not set(fold["test"]) & set(fold["train"] + fold["validation"])

    model = load_model(tmp_path, device="cpu")
    assert model.class_names == ("calm", "bursty")
    assert model.config.n_classes == 2 and model.config.mil_hidden == 8
    assert model.provenance["train_animals"] == list(fold["train"])
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["summary"]["animal_accuracy"] == 1.0
    with open(tmp_path / "report.csv") as file:
        assert len(list(csv.DictReader(file))) == 2


def test_leave_one_animal_out_reports_every_animal(tmp_path):
    result = finetune(
        toy_cohort(per_class=2),
        tmp_path,
        fast(steps=30, evaluation="leave-one-animal-out"),
        base=TINY,
    )
    rows = result.report.animals
    assert sorted(r["animal"] for r in rows) == ["bursty-0", "bursty-1", "calm-0", "calm-1"]
    folds = result.report.folds
    assert len(folds) == 5 and folds[-1]["saved"] and not folds[-1]["test"]
    assert result.report.summary["animal_accuracy"] >= 0.75
    assert all(r["neuron_auc"] is not None for r in rows)
    assert load_model(tmp_path, device="cpu").class_names == ("bursty", "calm")


def test_the_recording_head_reads_activity_statistics_scaled_on_the_training_animals(tmp_path):
    items = toy_cohort(per_class=2)
    config = fast(steps=10, test_per_class=0, validation_per_class=0)
    model = finetune(
        items, tmp_path / "with", replace(config, activity_statistics=True), base=TINY
    ).model
    assert model.config.neuron_stats == len(ACTIVITY_STATISTICS)
    head = model.module.recording_head
    values = np.concatenate(
        [activity_statistics(model.tokens_for(item.source)) for item in items]
    )
    np.testing.assert_allclose(head.stats_shift.numpy(), values.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(head.stats_scale.numpy(), values.std(axis=0) + 1e-6, rtol=1e-5)
    saved = load_model(tmp_path / "with", device="cpu")  # the scaling travels with the weights
    torch.testing.assert_close(saved.module.recording_head.stats_shift, head.stats_shift)
    tokens = saved.tokens_for(items[0].source)
    result = saved.classify(tokens)
    assert "activity statistics" in result.recording_rule
    assert 0.0 <= result.recording_probability <= 1.0
    logits, weights = saved.recording_decision(torch.from_numpy(result.neuron_embedding), tokens)
    with pytest.raises(ValueError, match="nearest neighbours' event rates"):
        saved.recording_decision(torch.from_numpy(result.neuron_embedding), tokens.tokens)
    assert float(logits.softmax(-1)[1]) == pytest.approx(result.recording_probability, abs=1e-6)
    np.testing.assert_allclose(weights.numpy(), result.neuron_attention, atol=1e-6)
    plain = finetune(
        items, tmp_path / "without", replace(config, activity_statistics=False), base=TINY
    ).model
    assert plain.config.neuron_stats == 0
    assert "activity statistics" not in plain.classify(tokens).recording_rule



def test_a_classifier_records_its_cohorts_frame_rate(tmp_path):
    # the head counts activity per frame: the model must warn on recordings at another rate,
    # which needs the rate of its training recordings, not that of the model it started from
    items = toy_cohort(per_class=2)  # 10 Hz
    config = fast(steps=2, test_per_class=0, validation_per_class=0, activity_statistics=True)
    finetune(items, tmp_path / "model", config, base=TINY)
    model = load_model(tmp_path / "model", device="cpu")
    assert model.frame_rate_hz == 10.0
    with pytest.warns(UserWarning, match="trained at 10 Hz"):
        model.tokens_for(replace(items[0].source, frame_rate=30.0))
    mixed = [replace(item, source=replace(item.source, frame_rate=10.0 + 20.0 * (k % 2)))
             for k, item in enumerate(items)]
    with pytest.warns(UserWarning, match="taken at 10 to 30 Hz"):
        finetune(mixed, tmp_path / "mixed", config, base=TINY)
    assert load_model(tmp_path / "mixed", device="cpu").frame_rate_hz is None

def test_bare_tokens_have_no_neighbours_for_the_statistics(tmp_path):
    items = [
        LabelledRecording(TINY_TOKENS[k % 2] + k, f"m{k}", "ab"[k % 2]) for k in range(4)
    ]
    config = fast(steps=2, test_per_class=0, validation_per_class=0)
    with pytest.raises(ValueError, match="bare tokens carry no neighbours"):
        finetune(items, tmp_path / "a", config, base=TINY)
    plain = finetune(items, tmp_path / "b", replace(config, activity_statistics=False), base=TINY)
    assert plain.model.config.neuron_stats == 0


def test_fine_tuning_three_classes_with_the_evidence_head(tmp_path):
    kinds = ("calm", "bursty", "fast")
    result = finetune(
        toy_cohort(per_class=3, kinds=kinds), tmp_path, fast(steps=20), base=TINY, class_names=kinds
    )
    assert len(result.report.animals) == 3  # one held-out animal per class, each reported
    assert {row["predicted"] for row in result.report.animals} <= set(kinds)
    model = load_model(tmp_path, device="cpu")
    assert model.config.recording_pooling == "evidence" and model.class_names == kinds
    head = model.module.recording_head
    assert head.score.out_features == 2  # evidence for "bursty" and for "fast", against "calm"
    tokens = model.tokens_for(toy_recording("fast", 99))
    outcome = model.classify(tokens)
    logits, weights = model.recording_decision(torch.from_numpy(outcome.neuron_embedding), tokens)
    assert outcome.recording_probability == pytest.approx(float(logits.softmax(-1)[1]), abs=1e-6)
    np.testing.assert_allclose(outcome.neuron_attention, weights.numpy(), atol=1e-6)
    assert outcome.neuron_attention.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_head_saved_with_three_statistics_reads_the_first_three():
    from napari_neurt.model import NeurtModel

    # classifiers saved before the fourth statistic existed keep working, and unchanged
    network = Neurt(replace(TINY, n_classes=2, mil_hidden=8, neuron_stats=3)).eval()
    model = NeurtModel(network, class_names=("a", "b"), device="cpu")
    tokens = model.tokens_for(toy_recording("bursty", 0)).tokens
    embeddings = torch.randn(len(tokens), TINY.n_embd)
    logits, weights = model.recording_decision(embeddings, tokens)
    first_three = torch.from_numpy(activity_statistics(tokens)[:, :3].copy())
    with torch.no_grad():
        expected, expected_weights = network.classify_recording(embeddings, first_three)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(weights, expected_weights)


def test_fine_tuning_builds_the_recording_head_it_is_asked_for(tmp_path):
    items = toy_cohort(per_class=2)
    config = fast(steps=5, test_per_class=0, validation_per_class=0)
    model = finetune(items, tmp_path / "default", config, base=TINY).model
    assert model.config.recording_pooling == "evidence"  # the default
    assert model.config.neuron_stats == len(ACTIVITY_STATISTICS)
    result = model.classify(model.tokens_for(items[0].source))
    assert "evidence" in result.recording_rule
    gated = finetune(
        items, tmp_path / "gated", replace(config, recording_pooling="gated"), base=TINY
    ).model
    assert gated.config.recording_pooling == "gated"
    assert load_model(tmp_path / "gated", device="cpu").config.recording_pooling == "gated"
    # starting from a gated classifier, an evidence head starts fresh: none of its weights
    # (some have the same shapes) carry over from a head that means something else
    again = finetune(
        items, tmp_path / "again", replace(config, steps=1, head_lr=0.0), base=gated
    ).model
    for name in ("value.weight", "score.weight"):
        old = gated.module.recording_head.state_dict()[name]
        new = again.module.recording_head.state_dict()[name]
        assert old.shape != new.shape or not torch.equal(old, new)
    with pytest.raises(ValueError, match="recording_pooling must be one of"):
        FinetuneConfig(recording_pooling="max")


def test_stopping_while_reading_the_statistics_trains_nothing(tmp_path):
    stages = []
    result = finetune(
        toy_cohort(per_class=2),
        tmp_path,
        fast(test_per_class=0, validation_per_class=0, activity_statistics=True),
        base=TINY,
        progress=lambda step: stages.append(step.stage),
        stop=lambda: len(stages) >= 2,  # after the second recording's statistics
    )
    assert result.stopped and stages == ["fold 1/1 (all animals) activity statistics"] * 2
    assert result.report.folds[0]["steps"] == 0


def test_bags_carry_the_statistics_of_their_own_neurons():
    from napari_neurt.training.data import BagStream

    # feature 0 of neuron i is i everywhere, and so is its one "statistic"
    tokens = [np.repeat(np.arange(12.0, dtype=np.float32)[:, None, None] + 100 * k, 40, axis=1)
              .repeat(5, axis=2) for k in range(2)]
    statistics = [t[:, 0, :1].copy() for t in tokens]
    options = dict(window_length=16, bag_size=4, bags_per_step=3, seed=1)
    stream = iter(BagStream(tokens, [0, 1], [1, 1], statistics=statistics, **options))
    for _ in range(4):
        windows, bag_statistics, labels = next(stream)
        assert bag_statistics.shape == (3, 4, 1)
        torch.testing.assert_close(bag_statistics[..., 0], windows[:, :, 0, 0])
    windows, bag_statistics, _ = next(iter(BagStream(tokens, [0, 1], [1, 1], **options)))
    assert bag_statistics.shape == (3, 4, 0)  # none given: an empty row per neuron
    with pytest.raises(ValueError, match="one array of statistics per recording"):
        BagStream(tokens, [0, 1], [1, 1], statistics=statistics[:1], **options)


DDP_FINETUNE = """
import os, sys
import numpy as np, torch
torch.set_num_threads(1)
from napari_neurt.model.neurt import NeurtConfig
from napari_neurt.training import FinetuneConfig, finetune

manifest, out = sys.argv[1], sys.argv[2]
result = finetune(manifest, out, FinetuneConfig(**{config}), base=NeurtConfig(**{network}),
                  class_names=("calm", "bursty"))
weights = torch.cat([p.detach().reshape(-1) for p in result.model.module.state_dict().values()])
rank = os.environ["RANK"]
np.save(os.path.join(out, "rank" + rank + ".npy"), weights.numpy())
open(os.path.join(out, "rank" + rank + ".report"), "w").write(str(result.report is not None))
"""


def test_ddp_finetuning_with_two_processes_keeps_replicas_identical(tmp_path, torchrun):
    rows = []
    for item in toy_cohort(per_class=3):
        path = tmp_path / f"{item.animal}.npz"
        save_npz(path, item.source)
        rows.append([path.name, item.animal, item.label])
    manifest = write_manifest(tmp_path, rows)
    # the encoder learns too (lr > 0), so that every block's gradients are averaged
    config = {"steps": 6, "bags_per_step": 2, "bag_size": 4, "lr": 3e-3, "head_lr": 1e-2,
              "mil_hidden": 8, "eval_every": 3, "patience": 5, "validation_bags": 2,
              "whole_recording_fit": True, "device": "cpu"}
    script = tmp_path / "finetune.py"
    script.write_text(DDP_FINETUNE.format(config=repr(config), network=repr(TINY.to_dict())))
    out = tmp_path / "run"
    done = torchrun(script, manifest, out)
    assert done.returncode == 0, done.stderr[-3000:]

    rank0, rank1 = np.load(out / "rank0.npy"), np.load(out / "rank1.npy")
    np.testing.assert_array_equal(rank0, rank1)  # the gradients were averaged at every step
    assert (out / "rank0.report").read_text() == "True"  # rank 0 tested, wrote model and report
    assert (out / "rank1.report").read_text() == "False"
    saved = load_model(out, device="cpu")
    flat = torch.cat([p.reshape(-1) for p in saved.module.state_dict().values()]).numpy()
    np.testing.assert_array_equal(flat, rank0)
    # the recording term was fitted (each process read half the recordings), alike on both
    assert saved.module.recording_head.evidence_scale.item() != 1.0
    # the two held-out animals were tested one on each process; rank 0 reports both, as the
    # saved model scores them
    report = json.loads((out / "report.json").read_text())
    assert sorted(row["label"] for row in report["animals"]) == ["bursty", "calm"]
    for row in report["animals"]:
        tokens = source_neighbourhood(tmp_path / f"{row['animal']}.npz", saved.token_settings)
        p_bursty = saved.classify(tokens).recording_probability
        p_true = p_bursty if row["label"] == "bursty" else 1 - p_bursty
        assert row["p_true"] == pytest.approx(p_true, abs=1e-5)
    # one process alone, same seed: rank 0's bags only, so other weights (rank 1 drew its own)
    alone = finetune(manifest, tmp_path / "alone", FinetuneConfig(**config),
                     base=TINY, class_names=("calm", "bursty")).model.module
    single = torch.cat([p.detach().reshape(-1) for p in alone.state_dict().values()]).numpy()
    assert np.abs(single - rank0).max() > 1e-6
    # the command line under torchrun: rank 0 reports, once
    done = torchrun("-m", "napari_neurt.cli", "finetune", manifest, "--out", tmp_path / "cli",
                    "--steps", 4, "--bag-size", 4, "--device", "cpu", "--classes", "calm,bursty",
                    "--base", tmp_path / "alone")  # a tiny network, as the windows are short
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("model and report ->") == 1
    assert load_model(tmp_path / "cli", device="cpu").class_names == ("calm", "bursty")


MAP_TO_MAIN = """
import os, sys
import numpy as np
from napari_neurt.training.engine import DistributedContext

context = DistributedContext.setup("cpu")
results = context.map_to_main(lambda i: np.full((i + 1, 2), 10.0 * i + context.rank), range(5))
if context.is_main:
    np.savez(os.path.join(sys.argv[1], "results.npz"), *results)
else:
    open(os.path.join(sys.argv[1], "rank1.txt"), "w").write(repr(results))
context.close()
"""


def test_map_to_main_shares_the_items_out_and_gathers_them_in_order(tmp_path, torchrun):
    from napari_neurt.training.engine import DistributedContext

    alone = DistributedContext.setup("cpu").map_to_main(lambda i: np.arange(i), [2, 3])
    assert [a.tolist() for a in alone] == [[0, 1], [0, 1, 2]] and alone[0].dtype == np.float64
    script = tmp_path / "gather.py"
    script.write_text(MAP_TO_MAIN)
    done = torchrun(script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "results.npz") as saved:
        results = [saved[f"arr_{i}"] for i in range(5)]
    assert (tmp_path / "rank1.txt").read_text() == "None"
    for i, result in enumerate(results):  # item i on rank i % 2, in its own shape
        np.testing.assert_array_equal(result, np.full((i + 1, 2), 10.0 * i + i % 2))


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_false_also_holds_for_the_report_and_the_whole_recording_fit(
    tmp_path, monkeypatch, bf16
):
    """On CUDA a NeurtModel runs under bf16 autocast; `FinetuneConfig(bf16=False)` trained in
    float32 but then classified the held-out animals (and fitted the recording term) in bf16."""
    import importlib

    from napari_neurt.model import NeurtModel

    finetune_module = importlib.import_module("napari_neurt.training.finetune")

    class OnCuda(NeurtModel):  # what NeurtModel sets on a CUDA device
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.bf16 = True

        def classify(self, *args, **kwargs):
            used.append(self.bf16)
            return super().classify(*args, **kwargs)

    used = []
    monkeypatch.setattr(finetune_module, "NeurtModel", OnCuda)
    config = fast(steps=4, eval_every=2, bf16=bf16, whole_recording_fit=True)
    result = finetune(toy_cohort(per_class=3), tmp_path / "out", config, base=TINY)
    assert used and set(used) == {bf16}  # held-out animals and the whole-recording fit
    assert result.model.bf16 is bf16
