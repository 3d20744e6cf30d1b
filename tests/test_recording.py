import numpy as np
import pytest

from napari_neurt import Recording


def make_labels():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:7] = 7
    labels[10:14, 20:24] = 2
    return labels


def test_from_labels_orders_ids_and_computes_centroids():
    rec = Recording.from_labels(np.zeros((2, 5)), make_labels(), frame_rate=30)
    np.testing.assert_array_equal(rec.neuron_ids, [2, 7])
    np.testing.assert_allclose(rec.centroids, [[11.5, 21.5], [3.5, 4.5]])
    assert rec.traces.dtype == np.float32
    assert rec.duration_s == pytest.approx(5 / 30)


def test_select_keeps_labels_consistent():
    rec = Recording.from_labels(np.arange(10).reshape(2, 5), make_labels(), frame_rate=10)
    one = rec.select(np.array([False, True]))
    np.testing.assert_array_equal(one.neuron_ids, [7])
    np.testing.assert_array_equal(np.unique(one.labels), [0, 7])
    np.testing.assert_array_equal(one.traces, [[5, 6, 7, 8, 9]])
    assert rec.n_neurons == 2, "select must not change the original"


def test_select_picks_the_per_neuron_metadata_with_the_neurons():
    from scipy import sparse

    rec = Recording.from_labels(np.arange(10).reshape(2, 5), make_labels(), frame_rate=10)
    rec.metadata.update(
        iscell=np.array([0.9, 0.1]),
        neuropil=np.array([[1.0] * 5, [2.0] * 5]),
        footprints=sparse.csc_matrix(np.array([[1.0, 0.0], [0.0, 3.0], [0.0, 4.0]])),
        drift=np.zeros(5),  # per frame: left alone
        trace_kind="F",
    )
    swapped = rec.select([1, 0])
    np.testing.assert_array_equal(swapped.metadata["iscell"], [0.1, 0.9])
    np.testing.assert_array_equal(swapped.metadata["neuropil"][:, 0], [2.0, 1.0])
    np.testing.assert_array_equal(swapped.metadata["footprints"].toarray()[:, 0], [0, 3, 4])
    assert swapped.metadata["drift"].shape == (5,) and swapped.metadata["trace_kind"] == "F"
    np.testing.assert_array_equal(rec.metadata["iscell"], [0.9, 0.1])  # the original as it was


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(traces=np.zeros(5)), "2-D"),
        (dict(neuron_ids=[1]), "neuron_ids"),
        (dict(neuron_ids=[1, 1]), "unique"),
        (dict(centroids=np.zeros((3, 2))), "centroids"),
        (dict(frame_rate=0), "frame_rate"),
        (dict(pixel_size_um=-1), "pixel_size_um"),
        (dict(labels=np.zeros((4, 4), float)), "integer"),
    ],
)
def test_invalid_fields_are_refused(kwargs, message):
    fields = dict(traces=np.zeros((2, 5)), neuron_ids=[1, 2], centroids=np.zeros((2, 2)), frame_rate=30)
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Recording(**fields)


def test_select_refuses_a_mask_of_another_length_and_fractional_indices():
    # a mask of another recording's length picked its first neurons without a word
    rec = Recording.from_labels(np.arange(10).reshape(2, 5), make_labels(), frame_rate=10)
    with pytest.raises(ValueError, match="one entry per neuron"):
        rec.select(np.array([True]))
    with pytest.raises(ValueError, match="integer"):
        rec.select([0.7])
    assert rec.select([]).n_neurons == 0
