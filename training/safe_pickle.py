"""A restricted unpickler for data files: numpy arrays and plain containers, nothing else.

A pickle can name any importable callable and have the unpickler call it (os.system, eval, ...),
so every global a file asks for is checked against a short allow-list before anything runs.
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
    from numpy._core import numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


class DataError(ValueError):
    """A data file or folder is missing, corrupt or malformed; the message says which and the fix."""


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the allow-list; nothing in it was run."""


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol 2 pickles written by Python 3 store bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): codecs.encode,
}
for _core in ("core", "_core"):  # numpy 1.x writes numpy.core.*, numpy 2.x writes numpy._core.*
    _ALLOWED[(f"numpy.{_core}.multiarray", "_reconstruct")] = _multiarray._reconstruct
    _ALLOWED[(f"numpy.{_core}.multiarray", "scalar")] = _multiarray.scalar
    _ALLOWED[(f"numpy.{_core}.numeric", "_frombuffer")] = _numeric._frombuffer
for _type in (set, frozenset, bytearray, bytes, complex, dict, list, tuple, int, float, str):
    _ALLOWED[("builtins", _type.__name__)] = _type


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
                f"{self.where}: refused to unpickle {module}.{name}; only numpy arrays and plain "
                "containers (dict, list, tuple, ...) are allowed, and nothing in the file was run. "
                "Load data files only from a trusted source, or re-save it as a dict of numpy arrays."
            ) from None


def loads_pickle(data: bytes, where: str) -> Any:
    """Unpickle bytes through the allow-list; `where` names the file in error messages."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), where).load()
    except UnsafePickleError:
        raise
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
