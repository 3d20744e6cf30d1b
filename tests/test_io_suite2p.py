"""suite2p folders, and the restricted unpickler that reads their stat.npy / ops.npy."""

from __future__ import annotations

import builtins
import datetime
import os
import pickle
import shutil
from pathlib import PurePosixPath

import numpy as np
import pytest
from numpy.lib import format as npy_format

from napari_neurt.io import UnsafePickleError, load_pickled_npy, read_suite2p

# -- restricted unpickler --------------------------------------------------------------------------


class _Payload:
    """Pickles as a call to `function(*arguments)`, run by whoever unpickles it."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def _write_object_npy(path, pickled_object, protocol=3) -> None:
    """A .npy file whose header announces a 1-element object array, followed by any pickle."""
    with open(path, "wb") as file:
        npy_format.write_array_header_1_0(
            file, {"descr": "|O", "fortran_order": False, "shape": (1,)}
        )
        pickle.dump(pickled_object, file, protocol=protocol)


MALICIOUS = {
    "os.system": lambda marker: _Payload(os.system, f"touch {marker}"),
    "builtins.exec": lambda marker: _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    "builtins.eval": lambda marker: _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
def test_malicious_stat_npy_is_refused_and_its_code_never_runs(tmp_path, kind):
    # The payload works: unrestricted loading really runs it.
    proof = tmp_path / "proof"
    _write_object_npy(tmp_path / "proof.npy", np.array([MALICIOUS[kind](proof)], dtype=object))
    np.load(tmp_path / "proof.npy", allow_pickle=True)
    assert proof.exists()

    marker = tmp_path / "marker"
    _write_object_npy(tmp_path / "stat.npy", np.array([MALICIOUS[kind](marker)], dtype=object))
    forbidden = "posix.system" if kind == "os.system" else kind
    with pytest.raises(
        UnsafePickleError, match=rf"stat\.npy tries to load '{forbidden}'; only numpy"
    ):
        load_pickled_npy(tmp_path / "stat.npy")
    assert not marker.exists()


def test_malicious_stat_npy_in_a_suite2p_folder(tmp_path):
    marker = tmp_path / "marker"
    _write_suite2p_folder(tmp_path, *_synthetic_rois())
    _write_object_npy(
        tmp_path / "stat.npy", np.array([MALICIOUS["os.system"](marker)], dtype=object)
    )
    with pytest.raises(UnsafePickleError, match="posix.system"):
        read_suite2p(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name, attribute, value",
    [
        ("pathlib", "PurePath", "suffix", ".tif"),  # every path would report this suffix
        ("numpy._core.numeric", "_frombuffer", "__defaults__", ("F",)),
        ("_codecs", "encode", "__defaults__", ("utf-16",)),
        ("numpy", "ndarray", "shape", (1,)),  # a C type: refuses attributes itself
    ],
)
def test_a_pickle_cannot_change_the_globals_it_may_use(tmp_path, module, name, attribute, value):
    """BUILD sets attributes on whatever it is applied to, a looked-up global included."""
    from napari_neurt.io._safe_pickle import _ALLOWED

    shared = _ALLOWED[(module, name)]
    before = getattr(shared, attribute, None)
    state = pickle.dumps((None, {attribute: value}), protocol=2)[2:-1]  # without PROTO, STOP
    with open(tmp_path / "stat.npy", "wb") as file:
        npy_format.write_array_header_1_0(
            file, {"descr": "|O", "fortran_order": False, "shape": (0,)}
        )
        file.write(b"\x80\x02" + f"c{module}\n{name}\n".encode() + state + b"b0")
        file.write(pickle.dumps(np.empty(0, dtype=object), protocol=2)[2:])
    try:
        load_pickled_npy(tmp_path / "stat.npy")
    except ValueError:  # refused as damaged: as good
        pass
    try:
        assert getattr(shared, attribute, None) == before
    finally:  # never leave a poisoned global to the tests that follow
        if getattr(shared, attribute, None) != before:
            setattr(shared, attribute, before) if before is not None else delattr(shared, attribute)


class _ForgedDtype:
    """Pickles as numpy writes a dtype: ``np.dtype(spec, False, True)``, then BUILD `state`."""

    def __init__(self, spec, state):
        self.spec, self.state = spec, state

    def __reduce__(self):
        return np.dtype, (self.spec, False, True), self.state


class _ForgedArray:
    """Pickles as numpy writes an array of `dtype` whose data are the raw bytes `data`."""

    def __init__(self, dtype, data):
        self.dtype, self.data = dtype, data

    def __reduce__(self):
        reconstruct = np.empty(0).__reduce__()[0]
        return reconstruct, (np.ndarray, (0,), b"b"), (1, (1,), self.dtype, False, self.data)


@pytest.mark.parametrize(
    "spec, state",
    [
        # an object field, with flags that say there is none: its 8 bytes become a pointer
        ("V8", (3, "|", None, ("a",), {"a": (np.dtype(object), 0)}, 8, 1, 0)),
        ("O8", (3, "|", None, None, None, -1, -1, 0)),  # the object dtype, flags cleared
        ("V8", (3, "|", None, ("a",), {"a": (np.dtype("f8"), 4096)}, 8, 1, 0)),  # past the item
    ],
)
def test_a_pickled_dtype_state_cannot_forge_pointers_or_reach_outside_an_array(
    tmp_path, spec, state
):
    forged = _ForgedArray(_ForgedDtype(spec, state), bytes(8))
    _write_object_npy(tmp_path / "stat.npy", forged, protocol=2)
    with pytest.raises(UnsafePickleError, match="state numpy would not write"):
        load_pickled_npy(tmp_path / "stat.npy")


_MILLION = b"J" + (10**6).to_bytes(4, "little")  # BININT 1000000


@pytest.mark.parametrize(
    "payload",
    [
        b"c__builtin__\nlist\nc__builtin__\nrange\n" + _MILLION + b"\x85R\x85R",  # list(range(n))
        b"c__builtin__\nbytes\n" + _MILLION + b"\x85R",  # bytes(n)
        b"c__builtin__\nbytes\n" + _MILLION + b"\x85\x81",  # NEWOBJ: bytes.__new__(bytes, n)
        b"c__builtin__\nstr\n](K\x01e\x85R",  # str([1]): repr of what may share parts
        b"cnumpy\ndtype\n](X\x01\x00\x00\x00aX\x02\x00\x00\x00f8\x86e\x85R",  # dtype([...])
        b"cnumpy\nndarray\n" + _MILLION + b"\x85\x85R",  # np.ndarray((n,))
        b"cnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + _MILLION
        + b"\x85X\x02\x00\x00\x00f8\x87R",  # _reconstruct(ndarray, (n,), "f8")
    ],
    ids=["range", "bytes", "newobj", "str", "dtype-list", "ndarray", "reconstruct"],
)
def test_calls_that_build_more_than_the_file_holds_are_refused(tmp_path, payload):
    """Each of these makes from a few bytes what a larger n (or deeper sharing) makes gigabytes
    of, or minutes of work: a 710-byte numpy.dtype([...]) of shared parts took 45 s and 2.7 GB."""
    with open(tmp_path / "stat.npy", "wb") as file:
        npy_format.write_array_header_1_0(
            file, {"descr": "|O", "fortran_order": False, "shape": (1,)}
        )
        file.write(b"\x80\x02" + payload + b".")
    with pytest.raises(UnsafePickleError):
        load_pickled_npy(tmp_path / "stat.npy")


def test_plain_data_round_trips_through_the_restricted_unpickler(tmp_path):
    ops = {
        "fs": 30.0,
        "nframes": np.int64(500),
        "meanImg": np.arange(12, dtype=np.float32).reshape(3, 4),
        "block_size": (128, 128),
        "filelist": ["a.tif", "b.tif"],
        "flags": {True, False},
        "date_proc": datetime.datetime(2021, 7, 26, 17, 6, 43),
        "save_path0": PurePosixPath("/data/suite2p"),
        "complex": 1 + 2j,
        "none": None,
        "bytes": b"\x00\x01",
        "masks": np.array([b"a"], dtype="S1"),
        "records": np.zeros(2, dtype=[("x", "<i4"), ("y", "<f8")]),
        "aligned": np.ones(2, dtype=np.dtype([(("T", "x"), "<i2"), ("y", "<f8")], align=True)),
        "times": np.array(["2021-07-26T17:06"], dtype="M8[ns]"),
        "grid": np.zeros(2, dtype=[("xy", "<f4", (2,))]),
    }
    np.save(tmp_path / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    loaded = load_pickled_npy(tmp_path / "ops.npy").item()
    assert loaded.keys() == ops.keys()
    for key, value in ops.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(loaded[key], value)
            assert loaded[key].dtype == value.dtype
        else:
            assert loaded[key] == value, key


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol_numpy_writes(tmp_path, protocol):
    data = np.array([{"lam": np.linspace(0, 1, 7, dtype=np.float32), "med": [3, 4]}], dtype=object)
    _write_object_npy(tmp_path / "stat.npy", data, protocol=protocol)
    [roi] = load_pickled_npy(tmp_path / "stat.npy")
    np.testing.assert_array_equal(roi["lam"], data[0]["lam"])
    assert roi["med"] == [3, 4]


def test_numeric_npy_and_damaged_pickles(tmp_path):
    np.save(tmp_path / "F.npy", np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(load_pickled_npy(tmp_path / "F.npy"), np.eye(3))
    np.save(tmp_path / "stat.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    data = (tmp_path / "stat.npy").read_bytes()
    (tmp_path / "stat.npy").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="damaged pickle"):
        load_pickled_npy(tmp_path / "stat.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="not a valid .npy"):
        load_pickled_npy(tmp_path / "junk.npy")


# -- synthetic suite2p folder: overlap rules -------------------------------------------------------


def _synthetic_rois():
    """Three 4x4 ROIs on a 10 x 12 plane. ROI 0 and 1 share pixels (1's weight larger there on the
    left column, equal on the right column); ROI 2 is not a cell and overlaps ROI 1."""

    def square(y, x, weight):
        yy, xx = np.mgrid[y : y + 4, x : x + 4]
        return {"ypix": yy.ravel(), "xpix": xx.ravel(), "lam": np.full(16, weight, np.float32)}

    rois = [square(1, 1, 1.0), square(3, 3, 1.0), square(5, 5, 5.0)]
    # In the shared 2x2 block, column x=3 is equal (tie), column x=4 is heavier for ROI 1.
    heavier = (rois[1]["xpix"] == 4) & (rois[1]["ypix"] <= 4)
    rois[1]["lam"][heavier] = 2.0
    for roi in rois:
        roi["med"] = [int(np.median(roi["ypix"])), int(np.median(roi["xpix"]))]
        roi["overlap"] = np.zeros(16, bool)
    iscell = np.array([[1, 0.9], [1, 0.8], [0, 0.1]])
    return rois, iscell


def _write_suite2p_folder(folder, rois, iscell, n_frames=50):
    rng = np.random.default_rng(1)
    n = len(rois)
    np.save(folder / "F.npy", rng.random((n, n_frames), dtype=np.float32))
    np.save(folder / "Fneu.npy", rng.random((n, n_frames), dtype=np.float32))
    np.save(folder / "spks.npy", rng.random((n, n_frames), dtype=np.float32))
    np.save(folder / "iscell.npy", iscell)
    np.save(folder / "stat.npy", np.array(rois, dtype=object), allow_pickle=True)
    ops = {"fs": 15.0, "Ly": 10, "Lx": 12, "meanImg": rng.random((10, 12)), "neucoeff": 0.7}
    np.save(folder / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)


def test_overlap_goes_to_the_larger_weight_and_ties_to_the_lower_index(tmp_path):
    rois, iscell = _synthetic_rois()
    _write_suite2p_folder(tmp_path, rois, iscell)
    everything = read_suite2p(tmp_path, cells_only=False)
    labels = everything.labels
    assert labels[3, 3] == 1 and labels[4, 3] == 1  # tie: lower index keeps it
    assert labels[3, 4] == 2 and labels[4, 4] == 2  # ROI 1 is heavier there
    assert labels[5, 5] == 3 and labels[6, 6] == 3  # ROI 2 (lam 5) beats ROI 1 (lam 1)
    cells = read_suite2p(tmp_path, cells_only=True)
    assert list(cells.neuron_ids) == [1, 2]
    assert (
        cells.labels[5, 5] == 2 and 3 not in cells.labels
    )  # a non-cell takes no pixel from a cell


def test_synthetic_folder_metadata(tmp_path):
    rois, iscell = _synthetic_rois()
    _write_suite2p_folder(tmp_path, rois, iscell)
    recording = read_suite2p(tmp_path)
    assert recording.frame_rate == 15.0
    np.testing.assert_array_equal(recording.metadata["iscell"], [0.9, 0.8])
    np.testing.assert_array_equal(
        recording.metadata["neuropil"], np.load(tmp_path / "Fneu.npy")[:2]
    )
    np.testing.assert_array_equal(recording.metadata["spikes"], np.load(tmp_path / "spks.npy")[:2])
    np.testing.assert_array_equal(recording.centroids, [[2, 2], [4, 4]])


def test_frame_rate_missing_from_ops_or_given(tmp_path):
    rois, iscell = _synthetic_rois()
    _write_suite2p_folder(tmp_path, rois, iscell)
    ops = load_pickled_npy(tmp_path / "ops.npy").item()
    ops["fs"] = 0
    np.save(tmp_path / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="no valid frame rate 'fs' .*pass frame_rate="):
        read_suite2p(tmp_path)
    recording = read_suite2p(tmp_path, frame_rate=7.5)
    assert recording.frame_rate == 7.5 and recording.metadata["frame_rate_from"] == "argument"
    ops.update(neucoeff=np.array([0.7]), Ly=np.array([ops["Ly"]]), Lx=np.array([ops["Lx"]]))
    for fs, expected in ((np.array([15.0]), 15.0), (np.float32(12.5), 12.5), ("fast", None),
                         (np.array([15.0, 30.0]), None), (float("nan"), None)):
        ops["fs"] = fs  # one value in an array, as MATLAB-minded tools save it, is read
        np.save(tmp_path / "ops.npy", np.array(ops, dtype=object), allow_pickle=True)
        if expected is None:
            with pytest.raises(ValueError, match="no valid frame rate"):
                read_suite2p(tmp_path)
        else:
            assert read_suite2p(tmp_path).frame_rate == expected



def test_a_suite2p_1x_folder_without_ops_npy_is_read_from_its_split_files(tmp_path):
    # suite2p 1.x writes db.npy, settings.npy (fs at the top, the neuropil coefficient in its
    # "extraction" section) and reg_outputs.npy (meanImg); ops.npy only with save_ops_orig
    rois, iscell = _synthetic_rois()
    _write_suite2p_folder(tmp_path, rois, iscell)
    ops = load_pickled_npy(tmp_path / "ops.npy").item()
    (tmp_path / "ops.npy").unlink()
    parts = {
        "db": {"nplanes": 1, "Ly": 10, "Lx": 12},
        "settings": {"fs": 9.5, "tau": 1.0, "extraction": {"neuropil_coefficient": 0.5}},
        "reg_outputs": {"meanImg": ops["meanImg"], "yoff": np.zeros(50)},
    }
    for name, part in parts.items():
        np.save(tmp_path / f"{name}.npy", np.array(part, dtype=object), allow_pickle=True)
    recording = read_suite2p(tmp_path)
    assert recording.frame_rate == 9.5
    assert recording.metadata["frame_rate_from"] == "settings.fs"
    assert recording.metadata["neucoeff"] == 0.5
    np.testing.assert_allclose(recording.mean_image, ops["meanImg"].astype(np.float32))
    for name in parts:
        (tmp_path / f"{name}.npy").unlink()
    with pytest.raises(FileNotFoundError, match="no ops.npy.*settings.npy"):
        read_suite2p(tmp_path)

def test_folder_without_f_npy_says_what_a_plane_folder_holds(tmp_path):
    rois, iscell = _synthetic_rois()
    _write_suite2p_folder(tmp_path, rois, iscell)
    (tmp_path / "F.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"no F\.npy; a suite2p plane folder .* stat\.npy"):
        read_suite2p(tmp_path)
    with pytest.raises(FileNotFoundError, match="suite2p folder not found"):
        read_suite2p(tmp_path / "absent")


def test_inconsistent_folder_is_refused(tmp_path):
    rois, iscell = _synthetic_rois()
    _write_suite2p_folder(tmp_path, rois, iscell)
    np.save(tmp_path / "F.npy", np.zeros((2, 50), np.float32))
    with pytest.raises(ValueError, match="one dict per ROI of F.npy"):
        read_suite2p(tmp_path)


def test_no_cells(tmp_path):
    rois, iscell = _synthetic_rois()
    iscell[:, 0] = 0
    _write_suite2p_folder(tmp_path, rois, iscell)
    with pytest.raises(ValueError, match="none of its 3 ROIs as a cell; .*cells_only=False"):
        read_suite2p(tmp_path)
    assert read_suite2p(tmp_path, cells_only=False).n_neurons == 3


# -- the real fissa suite2p output -----------------------------------------------------------------


@pytest.fixture(scope="module")
def suite2p_folder(test_data):
    return test_data / "fissa_suite2p_outputs"


@pytest.mark.parametrize("cells_only", [True, False])
def test_real_suite2p_traces_and_labels(suite2p_folder, cells_only):
    recording = read_suite2p(suite2p_folder, cells_only=cells_only)
    F = np.load(suite2p_folder / "F.npy")
    iscell = np.load(suite2p_folder / "iscell.npy")
    stat = load_pickled_npy(suite2p_folder / "stat.npy")
    expected_rows = np.flatnonzero(iscell[:, 0] == 1) if cells_only else np.arange(23)
    assert recording.n_neurons == (21 if cells_only else 23)
    np.testing.assert_array_equal(recording.metadata["suite2p_index"], expected_rows)
    np.testing.assert_array_equal(recording.neuron_ids, expected_rows + 1)
    np.testing.assert_array_equal(recording.traces, F[expected_rows])  # exactly F.npy's rows
    # Every kept ROI keeps some pixels in this data set: one label per ROI.
    assert set(np.unique(recording.labels)) == {0, *recording.neuron_ids}

    labelled_elsewhere = 0
    for neuron_id in recording.neuron_ids:
        roi = stat[neuron_id - 1]
        own = np.zeros(recording.labels.shape, bool)
        own[roi["ypix"], roi["xpix"]] = True
        overlap = np.zeros_like(own)
        overlap[roi["ypix"][roi["overlap"]], roi["xpix"][roi["overlap"]]] = True
        labelled = recording.labels == neuron_id
        assert not (labelled & ~own).any()  # a label never reaches outside its ROI
        lost = own & ~labelled
        assert not (lost & ~overlap).any()  # only pixels suite2p marks as overlapping are lost
        labelled_elsewhere += lost.sum()
    assert labelled_elsewhere > 0  # this data set does have overlaps


def test_real_suite2p_metadata(suite2p_folder):
    recording = read_suite2p(suite2p_folder)
    ops = load_pickled_npy(suite2p_folder / "ops.npy").item()
    rows = recording.metadata["suite2p_index"]
    assert recording.frame_rate == 1.0 and recording.metadata["frame_rate_from"] == "ops.fs"
    assert recording.labels.shape == (176, 156)
    np.testing.assert_allclose(recording.mean_image, ops["meanImg"], rtol=1e-6)
    np.testing.assert_array_equal(
        recording.metadata["neuropil"], np.load(suite2p_folder / "Fneu.npy")[rows]
    )
    np.testing.assert_array_equal(
        recording.metadata["iscell"], np.load(suite2p_folder / "iscell.npy")[rows, 1]
    )
    assert recording.metadata["trace_kind"] == "F"
    stat = load_pickled_npy(suite2p_folder / "stat.npy")
    np.testing.assert_array_equal(recording.centroids, [stat[i]["med"] for i in rows])


def test_real_folder_copy_without_iscell(suite2p_folder, tmp_path):
    for name in ("F.npy", "stat.npy", "ops.npy"):
        shutil.copy(suite2p_folder / name, tmp_path / name)
    with pytest.raises(FileNotFoundError, match="no iscell.npy.*cells_only=False"):
        read_suite2p(tmp_path)
    assert read_suite2p(tmp_path, cells_only=False).n_neurons == 23


def test_read_recording_takes_suite2p_s_own_folder_of_one_plane(tmp_path):
    from napari_neurt.io import read_recording

    for plane in ("plane0", "plane1"):
        (tmp_path / "suite2p" / plane).mkdir(parents=True)
    _write_suite2p_folder(tmp_path / "suite2p" / "plane0", *_synthetic_rois())
    recording = read_recording(tmp_path / "suite2p")
    assert recording.n_neurons == read_suite2p(tmp_path / "suite2p" / "plane0").n_neurons
    _write_suite2p_folder(tmp_path / "suite2p" / "plane1", *_synthetic_rois())
    with pytest.raises(ValueError, match="holds 2 suite2p planes .*pass its folder"):
        read_recording(tmp_path / "suite2p")
