"""TIFF movies: lazy reading, shape checks, damaged files, several files joined along time."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_neurt.io import ReaderError, read_movie
from napari_neurt.io.tiff import ConcatenatedMovie, TiffMovie


@pytest.fixture
def movie() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, size=(30, 20, 16), dtype=np.uint16)


def test_uncompressed_tiff_is_memory_mapped(tmp_path, movie):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie)
    result = read_movie(path)
    assert isinstance(result, np.memmap)
    assert result.shape == movie.shape and result.dtype == movie.dtype
    np.testing.assert_array_equal(result[5:9], movie[5:9])


@pytest.mark.parametrize("options", [{"imagej": True}, {"ome": True}, {"bigtiff": True}])
def test_imagej_ome_and_bigtiff_movies(tmp_path, movie, options):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, **options)
    np.testing.assert_array_equal(np.asarray(read_movie(path)), movie)


def test_compressed_tiff_is_read_lazily_through_zarr(tmp_path, movie):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, compression="zlib")
    result = read_movie(path)
    assert isinstance(result, TiffMovie)
    assert (result.shape, result.dtype, result.ndim, len(result)) == (
        movie.shape,
        movie.dtype,
        3,
        30,
    )
    chunk = result[3:7]
    assert type(chunk) is np.ndarray
    np.testing.assert_array_equal(chunk, movie[3:7])
    np.testing.assert_array_equal(result[-1, 2:5, ::3], movie[-1, 2:5, ::3])
    np.testing.assert_array_equal(np.asarray(result), movie)


def test_singleton_channel_axis_is_dropped(tmp_path, movie):
    path = tmp_path / "movie.ome.tif"
    tifffile.imwrite(path, movie[:, None], ome=True, metadata={"axes": "TCYX"})
    result = read_movie(path)
    assert result.shape == movie.shape
    np.testing.assert_array_equal(result[2], movie[2])


def test_single_frame_is_refused_with_a_clear_message(tmp_path, movie):
    path = tmp_path / "frame.tif"
    tifffile.imwrite(path, movie[0])
    with pytest.raises(ValueError, match=r"single 2-D frame .*\(frames, height, width\)"):
        read_movie(path)


def test_hyperstack_and_rgb_are_refused(tmp_path, movie):
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([movie, movie], axis=1), imagej=True)
    with pytest.raises(ValueError, match="4-D"):
        read_movie(tmp_path / "stack.tif")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((4, 8, 8, 3), np.uint8), photometric="rgb")
    with pytest.raises(ValueError, match="colour"):
        read_movie(tmp_path / "rgb.tif")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here.tif"):
        read_movie(tmp_path / "nothing_here.tif")


def test_a_file_that_is_not_a_tiff(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ReaderError, match="not a valid TIFF"):
        read_movie(path)


def _image_data_end(path) -> int:
    with tifffile.TiffFile(path) as tif:
        return max(
            o + c
            for page in tif.pages
            for o, c in zip(page.dataoffsets, page.databytecounts, strict=True)
        )


WRITERS = pytest.mark.parametrize(
    "options", [{}, {"imagej": True}, {"compression": "zlib"}, {"ome": True}], ids=str
)


@WRITERS
@pytest.mark.parametrize("kept", [0.3, 0.6, 0.99])
def test_tiff_cut_inside_its_image_data_is_refused(tmp_path, movie, options, kept):
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, movie, **options)
    path = tmp_path / "cut.tif"
    path.write_bytes(whole.read_bytes()[: int(_image_data_end(whole) * kept)])
    with pytest.raises(ReaderError, match="truncated|corrupt|damaged"):
        read_movie(path)


@pytest.mark.parametrize("options", [{}, {"imagej": True}, {"ome": True}], ids=str)
def test_tiff_cut_after_its_image_data_is_refused_or_complete(tmp_path, movie, options):
    """Losing only trailing tags must not shorten the movie: refuse it, or return every frame."""
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, movie, **options)
    data = whole.read_bytes()
    end = _image_data_end(whole)
    assert end < len(data), "these writers put tags after the image data"
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: (end + len(data)) // 2])
    try:
        result = read_movie(path)
    except ReaderError:
        return
    np.testing.assert_array_equal(np.asarray(result), movie)


def test_folder_and_list_of_trials_are_joined_along_time(tmp_path, movie):
    folder = tmp_path / "trials"
    folder.mkdir()
    parts = [movie[:10], movie[10:13], movie[13:]]
    # Natural order: trial2 before trial10; one trial compressed to mix memmap and zarr reads.
    for name, part, compression in zip(
        ["trial1", "trial2", "trial10"], parts, [None, "zlib", None], strict=True
    ):
        tifffile.imwrite(
            folder / f"{name}.tif", part, compression=compression, photometric="minisblack"
        )
    (folder / "notes.txt").write_text("not a movie")

    joined = read_movie(folder)
    assert isinstance(joined, ConcatenatedMovie)
    assert joined.shape == movie.shape and joined.dtype == movie.dtype
    for key in [
        slice(None), slice(8, 15), slice(None, None, 4), slice(None, None, -3), slice(25, 5, -2),
        12, -1, 0, (slice(9, 14), 3), (slice(2, 29, 5), slice(1, 4), 2), np.array([29, 0, 11, 10]),
        (Ellipsis, 2), slice(40, 50),
    ]:  # fmt: skip
        np.testing.assert_array_equal(joined[key], movie[key], err_msg=f"key {key!r}")
    np.testing.assert_array_equal(np.asarray(joined), movie)

    same = read_movie([folder / "trial1.tif", folder / "trial2.tif", folder / "trial10.tif"])
    np.testing.assert_array_equal(same[:], movie)
    # a chunk of a memory-mapped trial is a copy: its pages are let go as the movie streams
    mapped = joined.movies[0]
    assert isinstance(mapped, np.memmap)
    assert not np.shares_memory(joined[2:6], mapped)


def test_trials_of_different_frame_shapes_are_refused(tmp_path, movie):
    tifffile.imwrite(tmp_path / "a.tif", movie)
    tifffile.imwrite(tmp_path / "b.tif", movie[:, :10])
    with pytest.raises(ValueError, match=r"b\.tif.*field of view"):
        read_movie([tmp_path / "a.tif", tmp_path / "b.tif"])


def test_folder_without_tiffs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .tif"):
        read_movie(tmp_path)


def test_real_movies(test_data):
    scattered = read_movie(test_data / "sima_example" / "example.tif")  # pages not contiguous
    assert scattered.shape == (20, 128, 256) and scattered.dtype == np.uint16
    np.testing.assert_array_equal(
        scattered[7], tifffile.imread(test_data / "sima_example" / "example.tif", key=7)
    )
    mouse = read_movie(test_data / "thunder_mouse_2p" / "mouse_500x64x64_int16.tif")
    assert isinstance(mouse, np.memmap) and mouse.shape == (500, 64, 64) and mouse.dtype == np.int16
    trials = read_movie(test_data / "fissa_test_crop" / "images")
    assert trials.shape == (87, 21, 14)


SCANIMAGE = {
    "SI.hRoiManager.scanFrameRate": 30.0,
    "SI.hChannels.channelSave": 1,
    "SI.hStackManager.framesPerSlice": "Inf",
    "SI.hStackManager.enable": "false",
    "SI.hStackManager.numSlices": 121,  # left over from a z-stack: stacks are off
    "SI.hStackManager.actualNumSlices": 1,
}


def test_scanimage_movie(tmp_path, movie, scanimage_tiff):
    path = scanimage_tiff(tmp_path / "si.tif", movie, SCANIMAGE)
    np.testing.assert_array_equal(np.asarray(read_movie(path)), movie)


@pytest.mark.parametrize(
    "settings, what",
    [
        # fast z: one frame per plane, the planes of each volume in turn; tifffile sees a z-stack
        ({"SI.hStackManager.enable": "true", "SI.hStackManager.actualNumSlices": 3,
          "SI.hStackManager.framesPerSlice": 1}, "3 planes"),
        # ScanImage 2016-2019 name no actualNumSlices
        ({"SI.hStackManager.enable": None, "SI.hStackManager.actualNumSlices": None,
          "SI.hFastZ.enable": "true", "SI.hStackManager.numSlices": 5,
          "SI.hStackManager.framesPerSlice": 1}, "5 planes"),
        # 2 channels in an acquisition stopped mid-frame: tifffile cannot split them
        ({"SI.hChannels.channelSave": "[1;2]"}, "2 channels"),
    ],
)
def test_scanimage_planes_or_channels_in_turn_are_refused(
    tmp_path, movie, scanimage_tiff, settings, what
):
    frame_data = {key: value for key, value in {**SCANIMAGE, **settings}.items() if value}
    path = scanimage_tiff(tmp_path / "si.tif", movie[:29], frame_data)
    with pytest.raises(ValueError, match=f"ScanImage .*{what}"):
        read_movie(path)
