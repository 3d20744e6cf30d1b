"""The benchmarks measure what they say they measure (their figures are not asserted here)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_extraction_kept_movie_gets_labels_of_the_rois_asked_for(tmp_path):
    extraction = benchmark("extraction")
    extraction.make_inputs(tmp_path, 4, 64, 5)
    _, labels = extraction.make_inputs(tmp_path, 4, 64, 2)  # the kept movie, other --rois
    assert len(np.unique(np.load(labels))) - 1 == 2
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    _, again = extraction.make_inputs(fresh, 4, 64, 2)
    assert np.array_equal(np.load(labels), np.load(again))


def test_quality_says_what_it_leaves_out_and_stops_when_nothing_is_left(monkeypatch, tmp_path):
    quality = benchmark("quality")
    monkeypatch.delenv("NEURT_TEST_DATA", raising=False)
    monkeypatch.delenv("NEURT_WEIGHTS_DIR", raising=False)
    with pytest.raises(SystemExit, match="no recording to reconstruct"):
        quality.main(["--skip", "classify", "--sim-recordings", "0"])
    monkeypatch.setenv("NEURT_TEST_DATA", str(tmp_path / "missing"))
    with pytest.raises(SystemExit, match="NEURT_TEST_DATA=.* is not a folder"):
        quality.main(["--skip", "classify", "--sim-recordings", "0"])
    monkeypatch.setenv("NEURT_TEST_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match="suite2p folder not found"):
        quality.main(["--skip", "classify", "--sim-recordings", "0"])


def test_tuning_stops_with_a_message_on_a_wrong_data_folder(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # tuning.py imports quality.py
    tuning = benchmark("tuning")
    monkeypatch.setenv("NEURT_TEST_DATA", str(tmp_path))
    with pytest.raises(SystemExit, match="thunder_mouse_2p"):
        tuning.main(["default"])


def test_quality_draws_hide_other_steps_and_report_each_method_over_them():
    quality = benchmark("quality")
    from napari_neurt import simulate
    from napari_neurt.model import load_model
    from napari_neurt.model.tokens import neighborhood_tokens

    rec = next(simulate.training_recordings(1, seed=5, n_neurons=(12, 12), n_frames=(300, 300)))
    tokens = neighborhood_tokens(rec.traces, rec.centroids, None).tokens
    first, second = (quality.hide_mask(12, 300, "published", quality.HIDE_SEED + 100 * k)
                     for k in (1, 2))
    main = quality.hide_mask(12, 300, "published", quality.HIDE_SEED)
    assert not np.array_equal(first, main) and not np.array_equal(first, second)
    table = quality.draws_table([("sim", tokens)], load_model("default", device="cpu"), 2)
    assert set(table) == {("sim", regime) for regime in quality.REGIMES}
    for cell in table.values():
        assert set(cell) == set(quality.DRAW_METHODS)
        assert all(len(values) == 2 and np.all(np.isfinite(values)) for values in cell.values())
    text = quality.format_draws(table, 2)
    assert text.count("| sim |") == 3 and "/2" in text


def test_quality_calibrates_every_candidate_not_only_the_default():
    quality = benchmark("quality")
    from napari_neurt import simulate
    from napari_neurt.model import load_model
    from napari_neurt.model.tokens import neighborhood_tokens

    rec = next(simulate.training_recordings(1, seed=5, n_neurons=(10, 10), n_frames=(300, 300)))
    tokens = neighborhood_tokens(rec.traces, rec.centroids, None).tokens
    model = load_model("default", device="cpu")
    rows = quality.reconstruction_table([("sim", tokens)], {"default": model, "candidate": model},
                                        0, set())
    assert rows["candidate, calibrated"] == rows["default, calibrated"]  # the same weights
    assert len(rows["candidate, calibrated"]) == len(quality.REGIMES)
