"""napari-neurt: NEuRT, a transformer for calcium-imaging activity, in napari and in Python.

The core (`recording`, `io`, `extraction`, `simulate`, `model`) never imports Qt or napari;
`napari_neurt.plugin` holds the napari side. Heavy modules are imported on first use so that
``import napari_neurt`` stays fast.
"""

from importlib import import_module

from .progress import Cancelled, Progress, run_steps
from .recording import Recording

__version__ = "0.1.0.dev0"

# public name -> module that defines it, imported on first access
_LAZY = {
    "extract_traces": "napari_neurt.extraction",
    "delta_f_over_f": "napari_neurt.extraction",
    "read_suite2p": "napari_neurt.io",
    "read_caiman": "napari_neurt.io",
    "read_nwb": "napari_neurt.io",
    "read_movie": "napari_neurt.io",
    "read_labels": "napari_neurt.io",
    "read_imagej_rois": "napari_neurt.io",
    "read_recording": "napari_neurt.io",
    "simulate": None,  # submodule
    "load_model": "napari_neurt.model",
    "neighborhood_tokens": "napari_neurt.model",
    "pretrain": "napari_neurt.training",
    "finetune": "napari_neurt.training",
}

__all__ = ["Cancelled", "Progress", "Recording", "run_steps", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'napari_neurt' has no attribute {name!r}")
    module = _LAZY[name]
    value = import_module(f"napari_neurt.{name}") if module is None else getattr(import_module(module), name)
    globals()[name] = value
    return value
