"""A restricted unpickler for data files: numeric numpy arrays and plain containers, nothing
else, and nothing much larger than the file.

A pickle can name any importable callable and have the unpickler call it (os.system, eval, ...),
so every global a file asks for is checked against a short allow-list before anything runs.
The allow-list holds only what numpy writes for arrays, wrapped so that no call can allocate
more than the file holds; what the loaders then accept is checked before anything is
converted (training.data).
"""

from __future__ import annotations

import codecs
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

try:
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray


class DataError(ValueError):
    """A data file or folder is missing, corrupt or malformed; the message says which and the fix."""


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list; nothing in it was run."""


_NUMERIC_KINDS = "biuf"  # booleans, signed and unsigned integers, floats: no objects


class _Refused(Exception):
    """Raised inside the unpickler by an allowed global asked to do what numpy never does."""


class _ArrayClass:
    """Stands in for numpy.ndarray inside a pickle: numpy's own reconstruction names the class
    as an argument, but a pickle that *calls* it (ndarray((N, 3072), uint8)) would allocate
    any size it asks for; this token refuses to be called."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _Refused(
            f"it calls numpy.ndarray{args!r:.60} directly, which would allocate any size it asks "
            "for; numpy never writes arrays that way"
        )


_ARRAY_CLASS = _ArrayClass()


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
    """numpy's ndarray reconstruction, limited to what numpy itself writes: an empty array
    whose data then comes, size-checked by ndarray.__setstate__, from the file's own bytes."""
    if cls is not _ARRAY_CLASS or tuple(shape) != (0,):
        raise _Refused("an array reconstruction that numpy does not write")
    return np.ndarray((0,), np.uint8)


def _numeric_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None:
        raise _Refused(f"dtype {spec!r}: only plain numeric arrays are allowed")
    return dtype


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 path: the array is a view of bytes already in the file."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise _Refused("only plain numeric arrays are allowed")
    return np.frombuffer(buffer, dtype).reshape(shape, order=order)


def _scalar(dtype: Any, data: Any) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise _Refused("only numeric scalars are allowed")
    return _multiarray.scalar(dtype, data)


def _latin1(text: Any, encoding: Any = "latin1") -> bytes:
    """How Python 3 writes bytes at protocol 2: the bytes as a latin-1 str (same length)."""
    if not isinstance(text, str) or encoding != "latin1":
        raise _Refused("only latin-1 encoded bytes are allowed")
    return codecs.encode(text, "latin1")


# Everything a pickle may name: what numpy writes for numeric arrays and scalars, and how
# Python 3 writes bytes at protocol 2. No constructor of the standard library: dicts, lists,
# tuples, strings, bytes and ints come from the pickle's own opcodes, so everything a file
# builds is at most a small multiple of its size (bytes(50_000_000) or list(...) cannot be
# called), and no global may run code.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1,
}
for _core in ("core", "_core"):  # numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.*
    _ALLOWED[(f"numpy.{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"numpy.{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"numpy.{_core}.numeric", "_frombuffer")] = _frombuffer


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, where: str) -> None:
        super().__init__(file, encoding="bytes")  # CIFAR's Python 2 pickles: str keys load as bytes
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.where}: refused to unpickle {module}.{name}; only numeric numpy arrays "
                "and plain containers (dict, list, ...) are allowed, and nothing in the file was "
                "run. Load data files only from a trusted source, or re-save it as a dict of "
                "numpy arrays."
            ) from None


def loads_pickle(data: bytes, where: str) -> Any:
    """Unpickle bytes through the allow-list; `where` names the file in error messages."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), where).load()
    except UnsafePickleError:
        raise
    except _Refused as e:
        raise UnsafePickleError(f"{where}: refused to unpickle it: {e}; nothing was run") from None
    except Exception as e:  # a corrupt stream can fail in many ways: EOFError, KeyError, ...
        raise DataError(
            f"{where}: not a readable pickle ({type(e).__name__}: {e}); the file is truncated or "
            "corrupt, download or export it again"
        ) from e


def load_pickle(path: Path) -> Any:
    """Unpickle a file through the allow-list (numpy arrays and plain containers only)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist; check the path") from None
    except OSError as e:
        raise DataError(
            f"{path} could not be read ({e}); check the path and its permissions"
        ) from e
    return loads_pickle(data, str(path))
