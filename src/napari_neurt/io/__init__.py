"""Readers: calcium-imaging files in, numpy arrays and `napari_neurt.Recording` out.

No function here imports Qt or napari. Pickled files (suite2p's ``stat.npy``/``ops.npy``) are read
through a restricted unpickler that only admits data; ``.npy``/``.npz`` files are loaded with
``allow_pickle=False``.
"""

from ._common import ReaderError
from ._safe_pickle import UnsafePickleError, load_pickled_npy
from .caiman import read_caiman
from .labels import read_imagej_rois, read_labels
from .nwb import read_nwb
from .recording_io import read_recording
from .suite2p import read_suite2p
from .tiff import read_movie

__all__ = [
    "ReaderError",
    "UnsafePickleError",
    "load_pickled_npy",
    "read_caiman",
    "read_imagej_rois",
    "read_labels",
    "read_movie",
    "read_nwb",
    "read_recording",
    "read_suite2p",
]
