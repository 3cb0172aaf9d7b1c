"""CIFAR-10 loading: every supported format ends as uint8 NCHW tensors, held once in memory.

Formats (folders or archives read in memory, never extracted to disk):
- the "python version": cifar-10-batches-py/ (data_batch_1..5, test_batch) or its .tar.gz;
- image folders: train/<class>/*.jpg|png and test/<class>/*.jpg|png, or a .tar/.zip of them;
- a Kaggle-style unlabeled pickle (dict with b'data' and b'ids'), for load_images;
- no path: torchvision's download into the cache folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import lzma
import os
import tarfile
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision.transforms.v2.functional import to_dtype

from training.artifacts import CACHE_ROOT
from training.safe_pickle import DataError, UnsafePickleError, load_pickle, loads_pickle

try:  # 3x faster than PIL; deprecated since torchvision 0.29 in favour of TorchCodec
    from torchvision.io import ImageReadMode, decode_image
except ImportError:
    decode_image = None

__all__ = [
    "CLASSES",
    "DEFAULT_CACHE",
    "DEFAULT_VAL_SIZE",
    "TooFewTrainingImages",
    "CifarData",
    "DataError",
    "DataSplits",
    "ImageSet",
    "UnsafePickleError",
    "load_cifar10",
    "load_images",
    "make_splits",
    "split_train_val",
    "subset_stratified",
]

CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
DEFAULT_CACHE = CACHE_ROOT  # torchvision downloads CIFAR-10 here

BATCH_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".zip")
FORMATS = (
    "the CIFAR-10 python version: a cifar-10-batches-py folder (data_batch_1..5, test_batch), "
    "a folder containing it, or cifar-10-python.tar.gz; "
    "an image folder: train/<class>/*.jpg|png and test/<class>/*.jpg|png with the class names "
    f"{', '.join(CLASSES)} (or a folder containing one), "
    f"or a {', '.join(ARCHIVE_SUFFIXES)} archive of it"
)
DEFAULT_VAL_SIZE = 5000  # training images held out for validation (stratified, seeded)
_DECODE_THREADS = min(8, os.cpu_count() or 1)
_DECODE_CHUNK = 1024

Split = Literal["train", "test"]
Kind = Literal["batches", "images"]  # the python version's pickles, or class folders of images


@dataclass(frozen=True)
class ImageSet:
    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor | None  # int64 (N,), 0..9; None when unlabeled
    ids: torch.Tensor  # int64 (N,): the Kaggle ids for unlabeled files, else 0..N-1

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.dtype != torch.uint8 or tuple(self.images.shape[1:]) != (3, 32, 32):
            raise ValueError(
                f"images must be uint8 (N, 3, 32, 32), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        for name, t in (("labels", self.labels), ("ids", self.ids)):
            if t is not None and (t.dtype != torch.int64 or tuple(t.shape) != (n,)):
                raise ValueError(f"{name} must be int64 ({n},), got {t.dtype} {tuple(t.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index: torch.Tensor) -> ImageSet:
        labels = None if self.labels is None else self.labels[index]
        return ImageSet(self.images[index], labels, self.ids[index])

    def to(self, device: torch.device | str) -> ImageSet:
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSet(self.images.to(device), labels, self.ids.to(device))


@dataclass(frozen=True)
class CifarData:
    train: ImageSet  # the 50,000 training images (or fewer)
    test: ImageSet  # the 10,000 test images
    source: str  # where it was read from, for artifacts


@dataclass(frozen=True)
class DataSplits:
    train: ImageSet  # what the optimizer sees
    val: ImageSet | None = None  # selection metric, evaluated every epoch
    test: ImageSet | None = None  # evaluated once, at the end, for reporting only


@dataclass(frozen=True)
class SubsetSizes:
    train: int
    val: int
    test: int


class TooFewTrainingImages(DataError):
    """The training images cannot give the validation split and leave some to train on: each
    command says which of its options fixes it."""


def subset_sizes(subset: int | None, val_size: int, test_size: int) -> SubsetSizes | None:
    """A subset of N images: train on N, validate on N/4 (at most val_size), test on N."""
    if subset is None:
        return None
    return SubsetSizes(train=subset, val=min(val_size, subset // 4), test=min(test_size, subset))


def make_splits(
    data: CifarData,
    val_size: int,
    subset: int | None = None,
    seed: int = 0,
    subset_test: bool = True,
) -> DataSplits:
    """Carve the seeded, stratified validation split out of the training images; with
    `subset`, keep a stratified subset of each split (see `subset_sizes`), or of the training
    and validation splits only when `subset_test` is False."""
    # A subset larger than the training images is all of them (its validation share too).
    sizes = subset_sizes(
        None if subset is None else min(subset, len(data.train)), val_size, len(data.test)
    )
    held_out = val_size if sizes is None else sizes.val
    if held_out >= len(data.train):
        raise TooFewTrainingImages(
            f"{data.source} has {len(data.train):,} training images: too few to hold out "
            f"{held_out:,} for validation and train on the rest"
        )
    train_set, val_set = split_train_val(data.train, held_out, seed=seed)
    test_set = data.test
    if sizes is not None:
        train_set = subset_stratified(train_set, min(sizes.train, len(train_set)), seed)
        if subset_test:
            test_set = subset_stratified(test_set, sizes.test, seed)
    return DataSplits(train=train_set, val=val_set, test=test_set)


def fingerprint(data: CifarData) -> str:
    """A short hash of every image and label, to tell whether two runs read the same data
    (the path alone does not: the same folder may be refilled)."""
    digest = hashlib.blake2b(digest_size=12)
    for part in (data.train, data.test):
        digest.update(part.images.numpy().tobytes())
        if part.labels is not None:
            digest.update(part.labels.numpy().tobytes())
    return digest.hexdigest()


def load_cifar10(path: str | Path | None, cache_dir: Path = DEFAULT_CACHE) -> CifarData:
    """Read CIFAR-10 from a folder or archive in any supported format, or download it if None."""
    if path is None:
        return _download(cache_dir)
    tree = _open(Path(path).expanduser())
    kind, root = _detect(tree)
    return CifarData(
        train=_read_split(tree, kind, root, "train"),
        test=_read_split(tree, kind, root, "test"),
        source=str(tree.path),
    )


def load_images(path: str | Path) -> ImageSet:
    """Images to predict on: a Kaggle-style unlabeled pickle, or a dataset's test split."""
    path = Path(path).expanduser()
    if path.is_dir() or path.name.lower().endswith(ARCHIVE_SUFFIXES):
        tree = _open(path)
        kind, root = _detect(tree)
        return _read_split(tree, kind, root, "test")
    obj = load_pickle(path)
    keys = {_key(k) for k in obj} if isinstance(obj, dict) else set()
    if "labels" in keys and "ids" not in keys:  # a single python-version batch, e.g. test_batch
        return _read_batches([(obj, str(path))])
    return _read_unlabeled(obj, str(path))


def split_train_val(
    train: ImageSet, val_size: int = 5000, seed: int = 0
) -> tuple[ImageSet, ImageSet]:
    """Seeded split stratified by class: each class gives its share of exactly val_size images."""
    if not 0 <= val_size < len(train):
        raise DataError(
            f"val_size={val_size} must be in [0, {len(train)}) for a training set of "
            f"{len(train)} images; pass a smaller validation size"
        )
    val_index, train_index = _stratified_pick(train, val_size, seed)
    return train.subset(train_index), train.subset(val_index)


def subset_stratified(data: ImageSet, n: int, seed: int) -> ImageSet:
    """n images drawn with a seed, stratified by class (all of them if n >= len(data))."""
    if n <= 0:
        raise DataError(f"subset size {n} must be positive")
    if n >= len(data):
        return data
    return data.subset(_stratified_pick(data, n, seed)[0])


def _stratified_pick(data: ImageSet, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices of n images stratified by class, and of the rest."""
    if data.labels is None:
        raise DataError("a stratified split needs labels, and these images are unlabeled")
    labels = data.labels.cpu()
    counts = torch.bincount(labels)
    share = counts.double() * n / len(labels)
    quota = share.floor().long()
    # hand the images left over by rounding down to the classes with the largest remainders
    extra = n - int(quota.sum())
    quota[torch.argsort(share - quota, descending=True, stable=True)[:extra]] += 1
    generator = torch.Generator().manual_seed(seed)
    picked, rest = [], []
    for c, q in enumerate(quota.tolist()):
        index = torch.nonzero(labels == c).flatten()
        index = index[torch.randperm(len(index), generator=generator)]
        picked.append(index[:q])
        rest.append(index[q:])
    return torch.cat(picked).sort().values, torch.cat(rest).sort().values


# --- folders and archives -------------------------------------------------------------------


class _Folder:
    """Files under a folder on disk, by POSIX path relative to it ("" is the folder itself)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def where(self, name: str) -> str:
        return str(self.path / name)

    def is_file(self, name: str) -> bool:
        return (self.path / name).is_file()

    def is_dir(self, name: str) -> bool:
        return (self.path / name).is_dir()

    def listdir(self, name: str) -> dict[str, bool]:
        """Entries of a folder, sorted by name, each True if it is a folder itself."""
        try:
            with os.scandir(self.path / name) as entries:
                found = {e.name: e.is_dir() for e in entries if not _hidden(e.name)}
        except OSError as e:
            raise DataError(
                f"{self.where(name)} could not be listed ({e}); check permissions"
            ) from e
        return dict(sorted(found.items()))

    def read(self, name: str) -> bytes:
        try:
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read()
        except OSError as e:
            raise DataError(f"{self.where(name)} could not be read ({e}); check permissions") from e


class _Archive:
    """The files of a tar or zip archive, read into memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files: dict[str, bytes] = {}
        try:
            with path.open("rb") as f:
                if path.name.lower().endswith(".zip"):
                    with zipfile.ZipFile(f) as archive:
                        for info in archive.infolist():
                            if not info.is_dir():
                                self._add(info.filename, archive.read(info))
                else:
                    with tarfile.open(fileobj=f, mode="r|*") as archive:
                        for member in archive:
                            if member.isfile():
                                self._add(member.name, archive.extractfile(member).read())
        except PermissionError as e:
            raise DataError(f"{path} could not be read ({e}); check its permissions") from e
        except (
            tarfile.TarError,
            zipfile.BadZipFile,
            EOFError,
            OSError,
            lzma.LZMAError,
            zlib.error,
        ) as e:
            raise DataError(
                f"{path}: not a readable archive ({type(e).__name__}: {e}); the file is truncated "
                "or corrupt, download or create it again"
            ) from e
        self.children: dict[str, set[str]] = {}
        for name in self.files:
            parts = name.split("/")
            for i, part in enumerate(parts):
                self.children.setdefault("/".join(parts[:i]), set()).add(part)

    def _add(self, name: str, data: bytes) -> None:
        parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
        if parts and not any(_hidden(p) or p in ("..", "__MACOSX") for p in parts):
            self.files["/".join(parts)] = data

    def where(self, name: str) -> str:
        return f"{self.path} (member {name})" if name else str(self.path)

    def is_file(self, name: str) -> bool:
        return name in self.files

    def is_dir(self, name: str) -> bool:
        return name in self.children

    def listdir(self, name: str) -> dict[str, bool]:
        """Entries of a folder, sorted by name, each True if it is a folder itself."""
        return {c: _join(name, c) in self.children for c in sorted(self.children.get(name, ()))}

    def read(self, name: str) -> bytes:
        return self.files[name]


_Tree = _Folder | _Archive


def _hidden(name: str) -> bool:
    return name.startswith(".")  # .DS_Store, ._AppleDouble files, editor droppings


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def _open(path: Path) -> _Tree:
    if not path.exists():
        raise DataError(f"{path} does not exist; pass --data PATH to one of: {FORMATS}")
    if path.is_dir():
        return _Folder(path)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return _Archive(path)
    raise DataError(f"{path}: unknown dataset format; supported: {FORMATS}")


def _detect(tree: _Tree) -> tuple[Kind, str]:
    """The format, and the folder inside tree that holds it ("" for the top)."""
    batches = [b for files in BATCH_FILES.values() for b in files]
    for root in ["", *(d for d, is_dir in tree.listdir("").items() if is_dir)]:
        present = [b for b in batches if tree.is_file(_join(root, b))]
        if present:
            missing = [b for b in batches if b not in present]
            if missing:
                raise DataError(
                    f"{tree.where(root)}: CIFAR-10 python folder lacks {', '.join(missing)}; "
                    "download cifar-10-python.tar.gz again"
                )
            return "batches", root
        has_train, has_test = (tree.is_dir(_join(root, s)) for s in ("train", "test"))
        if has_train and has_test:
            return "images", root
        if has_train or has_test:
            raise DataError(
                f"{tree.where(root)}: image folder has {'train' if has_train else 'test'}/ but no "
                f"{'test' if has_train else 'train'}/; it needs both, each with one folder per class"
            )
    raise DataError(f"{tree.where('')}: unknown dataset format; supported: {FORMATS}")


def _read_split(tree: _Tree, kind: Kind, root: str, split: Split) -> ImageSet:
    if kind == "batches":
        wheres = [(_join(root, b), tree.where(_join(root, b))) for b in BATCH_FILES[split]]
        return _read_batches([(loads_pickle(tree.read(n), w), w) for n, w in wheres])
    return _read_image_folder(tree, _join(root, split))


# --- python-version and Kaggle pickles ------------------------------------------------------


def _key(key: Any) -> str:
    return key.decode("latin-1") if isinstance(key, bytes) else str(key)


def _fields(obj: Any, where: str, expected: tuple[str, ...]) -> dict[str, Any]:
    """The pickled dict's values by str key, checking the expected keys are there."""
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: expected a pickled dict with keys {[k.encode() for k in expected]}, found a "
            f"{type(obj).__name__}; point to a CIFAR-10 python batch or a Kaggle-style pickle"
        )
    fields = {_key(k): v for k, v in obj.items()}
    missing = [k for k in expected if k not in fields]
    if missing:
        raise DataError(
            f"{where}: missing key(s) {[k.encode() for k in missing]}; expected keys "
            f"{[k.encode() for k in expected]}, found {list(obj)}; re-export the file with them"
        )
    return fields


def _uint8(value: Any, where: str) -> np.ndarray:
    """b'data' as it must already be: a numpy uint8 array (nothing else is converted, so a
    file cannot make the loader build or walk a structure much larger than itself)."""
    if not isinstance(value, np.ndarray):
        raise DataError(
            f"{where}: b'data' is a {type(value).__name__}, expected a numpy uint8 array of "
            "images; re-export it with np.asarray(images, dtype=np.uint8)"
        )
    if value.dtype != np.uint8:
        raise DataError(
            f"{where}: b'data' has dtype {value.dtype}, expected uint8 pixel values 0..255; "
            "re-export it with array.astype(np.uint8)"
        )
    return value


def _integers(value: Any, n: int, where: str, key: str) -> np.ndarray:
    """A 1-D integer array, or a flat list of ints (the python version's labels), of length
    n. A list is checked element by element before numpy sees it: numpy would walk nested
    lists that share references for exponential time."""
    if isinstance(value, list):
        if not all(type(x) is int for x in value):
            kinds = sorted({type(x).__name__ for x in value if type(x) is not int})
            raise DataError(
                f"{where}: b'{key}' must be a flat list of ints, found {', '.join(kinds)} "
                "items; re-export the file"
            )
        value = np.array(value, dtype=np.int64) if value else np.zeros(0, np.int64)
    if not isinstance(value, np.ndarray):
        raise DataError(
            f"{where}: b'{key}' is a {type(value).__name__}, expected a 1-D integer array; "
            "re-export the file"
        )
    array = value
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(
            f"{where}: b'{key}' must be a 1-D list or array of integers, found "
            f"{array.dtype} with shape {array.shape}; re-export the file"
        )
    if len(array) != n:
        raise DataError(
            f"{where}: {len(array)} {key} for {n} images; the counts must match, the file is "
            "malformed, export it again"
        )
    return array.astype(np.int64)


def _tensor(array: np.ndarray) -> torch.Tensor:
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def _read_batches(batches: list[tuple[Any, str]]) -> ImageSet:
    """ImageSet from unpickled python-version batches, each with the file it came from."""
    images, labels = [], []
    for batch, where in batches:
        fields = _fields(batch, where, ("data", "labels"))
        data = _uint8(fields["data"], where)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(
                f"{where}: b'data' has shape {data.shape}, expected (N, 3072) (channel-planar "
                "32x32 RGB rows); this is not a CIFAR-10 python batch"
            )
        batch_labels = _integers(fields["labels"], len(data), where, "labels")
        bad = np.flatnonzero((batch_labels < 0) | (batch_labels >= len(CLASSES)))
        if len(bad):
            raise DataError(
                f"{where}: label {batch_labels[bad[0]]} at index {bad[0]} is outside 0..9 "
                f"({len(bad)} bad labels); CIFAR-10 labels are class indices 0..9"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels)
    images_ = images[0] if len(images) == 1 else np.concatenate(images)
    labels_ = torch.from_numpy(np.concatenate(labels))
    return ImageSet(_tensor(images_), labels_, torch.arange(len(labels_)))


def _read_unlabeled(obj: Any, where: str) -> ImageSet:
    fields = _fields(obj, where, ("data", "ids"))
    data = _uint8(fields["data"], where)
    if len(data) == 0:
        raise DataError(f"{where}: b'data' holds no images; there is nothing to predict")
    if data.ndim == 4 and data.shape[1:] == (32, 32, 3):  # 2025 edition: height, width, channel
        data = data.transpose(0, 3, 1, 2)
    elif data.ndim == 2 and data.shape[1] == 3 * 32 * 32:  # 2024 edition: channel-planar rows
        data = data.reshape(-1, 3, 32, 32)
    else:
        raise DataError(
            f"{where}: b'data' has shape {data.shape}, expected (N, 32, 32, 3) (height, width, "
            "channel) or (N, 3072) (channel-planar); re-export the images in one of these layouts"
        )
    ids = _integers(fields["ids"], len(data), where, "ids")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{where}: b'ids' repeat (e.g. id {unique[counts > 1][0]} appears "
            f"{counts[counts > 1][0]} times, {int((counts > 1).sum())} repeated ids); each image "
            "needs its own id for the predictions CSV"
        )
    return ImageSet(_tensor(data), None, torch.from_numpy(ids))


# --- image folders --------------------------------------------------------------------------


def _read_image_folder(tree: _Tree, split_dir: str) -> ImageSet:
    entries = tree.listdir(split_dir)
    for entry, is_dir in entries.items():
        if entry not in CLASSES or not is_dir:
            raise DataError(
                f"{tree.where(_join(split_dir, entry))}: '{entry}' is not a CIFAR-10 class folder; "
                f"{split_dir or '.'}/ must hold only the folders {', '.join(CLASSES)}: rename or "
                "remove it"
            )
    missing = [c for c in CLASSES if c not in entries]
    if missing:
        raise DataError(
            f"{tree.where(split_dir)}: class folder(s) {', '.join(missing)} missing; it needs one "
            f"folder per class: {', '.join(CLASSES)}"
        )
    names, labels = [], []
    for label, cls in enumerate(CLASSES):
        class_dir = _join(split_dir, cls)
        entries = tree.listdir(class_dir)
        if not entries:
            raise DataError(f"{tree.where(class_dir)}: class folder is empty; add its images")
        for entry, is_dir in entries.items():
            if is_dir or not entry.lower().endswith(IMAGE_SUFFIXES):
                raise DataError(
                    f"{tree.where(_join(class_dir, entry))}: not an image file; a class folder "
                    f"holds only {', '.join(IMAGE_SUFFIXES)} files, remove it"
                )
        names += [_join(class_dir, entry) for entry in entries]
        labels += [label] * len(entries)
    images = _decode_images(tree, names)
    return ImageSet(images, torch.tensor(labels, dtype=torch.int64), torch.arange(len(names)))


def _decode_images(tree: _Tree, names: list[str]) -> torch.Tensor:
    images = torch.empty((len(names), 3, 32, 32), dtype=torch.uint8)

    def decode_chunk(start: int) -> None:
        for i in range(start, min(start + _DECODE_CHUNK, len(names))):
            images[i] = _decode(tree, names[i])

    with warnings.catch_warnings(), ThreadPoolExecutor(_DECODE_THREADS) as pool:
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        list(pool.map(decode_chunk, range(0, len(names), _DECODE_CHUNK)))
    return images


def _decode(tree: _Tree, name: str) -> torch.Tensor:
    try:
        image = _decode_rgb(tree.read(name))
    except (RuntimeError, OSError, ValueError) as e:
        raise DataError(
            f"{tree.where(name)}: could not decode the image ({e}); the file is corrupt or not a "
            "JPEG/PNG, replace or remove it"
        ) from e
    if image.shape != (3, 32, 32):
        raise DataError(
            f"{tree.where(name)}: image is {image.shape[2]}x{image.shape[1]}, expected 32x32; "
            "resize or remove it"
        )
    return image


def read_image_files(paths: list[str | Path]) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) RGB from image files (JPEG, PNG, or another format the decoder
    reads), each 32x32, as the dataset readers decode them."""
    images = torch.empty((len(paths), 3, 32, 32), dtype=torch.uint8)
    for i, path in enumerate(paths):
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"{path}: no such image file")
        images[i] = _decode(_Files(), str(path))
    return images


class _Files:
    """Files named by their path, read as a dataset tree's members (for `_decode`)."""

    def read(self, name: str) -> bytes:
        return Path(name).read_bytes()

    def where(self, name: str) -> str:
        return name


def _decode_rgb(data: bytes) -> torch.Tensor:
    """uint8 (3, H, W) RGB from JPEG or PNG bytes, whatever their color mode or bit depth."""
    if decode_image is None:
        with Image.open(io.BytesIO(data)) as image:
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    image = decode_image(
        torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
    )
    return image if image.dtype == torch.uint8 else to_dtype(image, torch.uint8, scale=True)


# --- download -------------------------------------------------------------------------------


def _download(cache_dir: Path) -> CifarData:
    before = _existing(cache_dir)
    try:
        train = torchvision.datasets.CIFAR10(root=str(cache_dir), train=True, download=True)
        test = torchvision.datasets.CIFAR10(root=str(cache_dir), train=False, download=True)
    except Exception as e:  # no network shows up as URLError, OSError, RuntimeError, ...
        _remove_new(cache_dir, before)
        raise DataError(
            f"could not download CIFAR-10 into {cache_dir} ({type(e).__name__}: {e}); this machine "
            f"looks offline. Pass --data PATH instead, a folder or archive in one of these "
            f"formats: {FORMATS}"
        ) from e
    sets = [
        ImageSet(
            images=torch.from_numpy(np.ascontiguousarray(d.data.transpose(0, 3, 1, 2))),
            labels=torch.tensor(d.targets, dtype=torch.int64),
            ids=torch.arange(len(d.targets)),
        )
        for d in (train, test)
    ]
    return CifarData(train=sets[0], test=sets[1], source=f"torchvision CIFAR10 in {cache_dir}")


def _existing(folder: Path) -> set[Path]:
    """What exists of `folder`, its files (one level: torchvision's archive) and the folders
    above it."""
    files = set(folder.iterdir()) if folder.is_dir() else set()
    return files | {p for p in (folder, *folder.parents) if p.exists()}


def _remove_new(folder: Path, before: set[Path]) -> None:
    """Undo what a failed download made: a partly written archive, and the folders it created
    (a failure leaves no empty cache folder behind)."""
    if folder.is_dir():
        for path in folder.iterdir():
            if path not in before and path.is_file():
                path.unlink(missing_ok=True)
    for path in (folder, *folder.parents):
        if path in before:
            break
        with contextlib.suppress(OSError):  # not empty: something else put files there
            path.rmdir()
