"""Read pickled ``.npy`` files (suite2p's ``stat.npy`` and ``ops.npy``) without running their code.

``np.load(..., allow_pickle=True)`` executes whatever a pickle asks for, so a crafted ``stat.npy``
could run any command on the machine of whoever opens it. Here the ``.npy`` header is parsed with
numpy's own functions and the pickled payload is read by an unpickler that resolves only an
explicit allow-list of globals: numpy's array and scalar reconstruction, dtypes, plain Python
containers and scalars, dates and paths. Anything else is refused before it is imported, let alone
called. A dtype's pickled state is checked before it is applied, as it sets flags and field offsets
that numpy trusts when it copies an array's bytes.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import io
import os
import pathlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["UnsafePickleError", "load_pickled_npy"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """A pickle asked for a global outside the allow-list; nothing of it was executed."""


def _numpy_internals() -> dict[str, Any]:
    """numpy's pickle helpers, taken from numpy itself so they match the installed version."""
    try:
        from numpy._core.numeric import _frombuffer  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.numeric import _frombuffer
    return {
        "_reconstruct": np.empty(0).__reduce__()[0],
        "scalar": np.float64(0).__reduce__()[0],
        "_frombuffer": _frombuffer,
    }


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Stands in for ``_codecs.encode``, which protocol-2 pickles use to rebuild bytes."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise UnsafePickleError(
            f"refusing the pickled codec call _codecs.encode(..., {encoding!r})"
        )
    return text.encode("latin1")


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    """Stands in for ``numpy.dtype``, which numpy's pickles call with a type string ("f8", "V12"),
    the rest coming in the dtype's state. A list or tuple is refused: numpy parses a nested one
    anew for each reference to a shared part, so a few hundred bytes took minutes and gigabytes."""
    if not isinstance(spec, str):
        raise UnsafePickleError(f"refusing the pickled call numpy.dtype(<{type(spec).__name__}>)")
    return np.dtype(spec, bool(align), bool(copy))


def _empty_array(reconstruct: Any) -> Any:
    """Stands in for numpy's ``_reconstruct``, which its pickles call for an empty array (shape
    (0,)) that the array's state then fills. Any other shape would be memory the file does not
    hold, reserved at its say."""

    def empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if not isinstance(shape, tuple) or shape != (0,):
            raise UnsafePickleError(
                "refusing a pickled _reconstruct of anything but an empty array"
            )
        return reconstruct(subtype, shape, dtype)

    return empty_array


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): _dtype,
    }
    internals = _numpy_internals()
    # Files written with numpy 1.x name numpy.core, with numpy 2.x numpy._core.
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _empty_array(internals["_reconstruct"])
        allowed[(f"{package}.multiarray", "scalar")] = internals["scalar"]
        allowed[(f"{package}.numeric", "_frombuffer")] = internals["_frombuffer"]
    # numpy >= 2 may pickle a dtype through its class in numpy.dtypes (e.g. StringDType).
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            candidate = getattr(dtypes, name)
            if isinstance(candidate, type) and issubclass(candidate, np.dtype):
                allowed[("numpy.dtypes", name)] = candidate
    # not range: list(range(10**9)) is 36 GB from a few bytes
    plain_builtins = (
        "bool", "int", "float", "complex", "str", "bytes", "bytearray",
        "list", "tuple", "dict", "set", "frozenset", "slice",
    )  # fmt: skip
    for name in plain_builtins:
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = getattr(builtins, name)  # Python 2 pickles
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _latin1_bytes
    for name in ("date", "time", "datetime", "timedelta", "timezone"):
        allowed[("datetime", name)] = getattr(datetime, name)
    # Paths are data here: concrete paths become pure ones, which never touch the file system
    # (and a WindowsPath pickled on Windows still loads on Linux).
    for module in ("pathlib", "pathlib._local"):
        for name, pure in (
            ("PurePath", pathlib.PurePath),
            ("PurePosixPath", pathlib.PurePosixPath),
            ("PureWindowsPath", pathlib.PureWindowsPath),
            ("Path", pathlib.PurePath),
            ("PosixPath", pathlib.PurePosixPath),
            ("WindowsPath", pathlib.PureWindowsPath),
        ):
            allowed[(module, name)] = pure
    return allowed


_ALLOWED = _allowed_globals()
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: a type whose attributes cannot be set


def _fresh(target: Any) -> Any:
    """`target`, or a new callable that calls it where it is a Python function or class.

    A pickle's BUILD opcode sets attributes on whatever it is applied to, the globals it looked
    up included: on a shared class (``pathlib.PurePath``) or function (numpy's ``_frombuffer``)
    it would change them for the whole session. A throwaway callable per lookup keeps that
    inside the load. Builtins, numpy's C functions and C types refuse attributes already."""
    if isinstance(target, type) and target.__flags__ & _IMMUTABLE_TYPE:
        return target
    if not isinstance(target, type) and not hasattr(target, "__dict__"):
        return target

    def call(*args: Any, **kwargs: Any) -> Any:
        return target(*args, **kwargs)

    return call


def _canonical_dtype(dtype: np.dtype) -> np.dtype:
    """`dtype` built again by numpy's own constructor, which checks what a pickled state does not
    (fields inside the item, objects not overlapping) and sets the flags itself."""
    if dtype.names is not None:
        fields = [dtype.fields[name] for name in dtype.names]
        canonical = np.dtype(
            {
                "names": list(dtype.names),
                "formats": [field[0] for field in fields],
                "offsets": [field[1] for field in fields],
                "titles": [field[2] if len(field) > 2 else None for field in fields],
                "itemsize": dtype.itemsize,
            },
            align=dtype.isalignedstruct,
        )
    elif dtype.subdtype is not None:
        canonical = np.dtype(dtype.subdtype)
    else:
        canonical = np.dtype(dtype.str)
    if dtype.metadata is not None:
        canonical = np.dtype(canonical, metadata=dict(dtype.metadata))
    return canonical


def _check_dtype_state(dtype: np.dtype, state: Any, source: str) -> None:
    """Refuse a BUILD that would give `dtype` a state numpy itself never writes.

    A dtype's pickled state sets its flags, fields and sizes as given: flags that deny holding
    Python objects make numpy copy raw bytes into object slots (pointers made up by the file),
    and a field placed past the end of the item reads and writes outside the array. The state
    is tried on a scratch copy and must match numpy's own construction of the result. Python
    objects are only admitted in plain object dtypes: a structured one could be made out of a
    void dtype that an array already uses for raw bytes."""
    try:
        scratch = np.dtype(dtype.__reduce__()[1][0], False, True)
        scratch.__setstate__(state)
        canonical = _canonical_dtype(scratch)
        sound = canonical.__reduce__() == scratch.__reduce__() and not (
            canonical.hasobject and (canonical.names is not None or canonical.subdtype is not None)
        )
    except Exception:  # noqa: BLE001 - a state numpy or its constructor rejects
        sound = False
    if not sound:
        raise UnsafePickleError(
            f"{source} gives a numpy dtype a state numpy would not write; refusing to read it"
        )


class _RestrictedUnpickler(pickle._Unpickler):
    """Resolves only the globals in `_ALLOWED`; refuses everything else by name.

    The pure-Python unpickler, as the C one applies a BUILD without a way to check it first."""

    dispatch = dict(pickle._Unpickler.dispatch)  # noqa: RUF012 - the opcode table, per class

    def __init__(self, file: io.BufferedIOBase, source: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def load_build(self) -> None:
        if isinstance(self.stack[-2], np.dtype):
            _check_dtype_state(self.stack[-2], self.stack[-1], self._source)
        super().load_build()

    def load_reduce(self) -> None:
        """A call: refused where it would build more than the file holds (np.ndarray(shape),
        bytes(size), str() of a structure that shares its parts many times over)."""
        function, arguments = self.stack[-2], self.stack[-1]
        if (
            function is np.ndarray
            or (function in (bytes, bytearray) and any(isinstance(a, int) for a in arguments))
            or (function is str and not all(isinstance(a, str) for a in arguments))
        ):
            raise UnsafePickleError(
                f"{self._source} calls {getattr(function, '__name__', function)} with arguments "
                "numpy's pickles never give it; refusing to read it"
            )
        super().load_reduce()

    def load_other_call(self) -> None:
        """NEWOBJ, INST and OBJ call a class as REDUCE does; numpy arrays and plain data never
        need them."""
        raise UnsafePickleError(
            f"{self._source} creates objects through an opcode numpy's pickles do not use; "
            "refusing to read it"
        )

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.REDUCE[0]] = load_reduce
    for _opcode in (pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.INST, pickle.OBJ):
        dispatch[_opcode[0]] = load_other_call
    del _opcode

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _fresh(_ALLOWED[(module, name)])
        except KeyError:
            raise UnsafePickleError(
                f"{self._source} tries to load '{module}.{name}'; only numpy arrays and plain "
                "Python data are allowed. Nothing of the file was run. If it is a genuine suite2p "
                "output, please report this name to napari-neurt so that it can be allowed."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source} uses persistent pickle ids; refusing to read it")


def load_pickled_npy(path: str | os.PathLike) -> np.ndarray:
    """Load a ``.npy`` file, unpickling an object array only through the allow-list.

    Parameters
    ----------
    path
        A ``.npy`` file written by ``np.save`` (typically an object array of dicts).

    Returns
    -------
    numpy.ndarray
        The stored array. Use ``.item()`` on a 0-d object array (such as ``ops.npy``).

    Raises
    ------
    UnsafePickleError
        If the pickle refers to anything but numpy arrays and plain Python data.
    ValueError
        If the file is not a valid ``.npy`` file.
    """
    path = Path(path)
    with open(path, "rb") as file:
        try:
            version = npy_format.read_magic(file)
            if version == (1, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_1_0(file)
            elif version == (2, 0):
                shape, fortran_order, dtype = npy_format.read_array_header_2_0(file)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as error:
            raise ValueError(f"{path} is not a valid .npy file: {error}") from None
        if not dtype.hasobject:
            file.seek(0)
            return np.load(file, allow_pickle=False)
        try:
            # latin1 lets arrays pickled by Python 2 (old suite2p) decode their raw bytes.
            array = _RestrictedUnpickler(file, path.name, encoding="latin1").load()
        except UnsafePickleError:
            raise
        except Exception as error:  # a damaged pickle raises anything from EOFError to TypeError
            raise ValueError(
                f"{path} holds a damaged pickle ({type(error).__name__}: {error})"
            ) from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: the pickle holds a {type(array).__name__}, not a numpy array")
    if array.shape != tuple(shape):
        raise ValueError(
            f"{path}: the header says shape {shape} but the pickle holds {array.shape}"
        )
    if fortran_order and array.ndim > 1:
        array = np.asfortranarray(array)
    return array
