"""Loader tests on tiny data built in tmp_path: every format, every error, the splits."""

from __future__ import annotations

import os
import pickle
import re
import struct
import tarfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import training.data as data_module
from training.data import (
    CLASSES,
    DataError,
    ImageSet,
    UnsafePickleError,
    load_cifar10,
    load_images,
    split_train_val,
    subset_stratified,
)
from training.safe_pickle import load_pickle

PER_CLASS = {"train": 3, "test": 2}


def random_split(split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 NCHW images, PER_CLASS[split] per class, labels in class order."""
    labels = np.repeat(np.arange(len(CLASSES)), PER_CLASS[split])
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 3, 32, 32), np.uint8)
    return images, labels


@pytest.fixture
def cifar() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": random_split("train", 1), "test": random_split("test", 2)}


def dump(path: Path, obj: object, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def write_batches(folder: Path, cifar: dict, protocol: int = pickle.DEFAULT_PROTOCOL) -> Path:
    """The python version: data_batch_1..5 split the training images, test_batch the rest."""
    images, labels = cifar["train"]
    for i, index in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = {b"data": images[index].reshape(-1, 3072), b"labels": labels[index].tolist()}
        dump(folder / f"data_batch_{i}", {b"batch_label": b"training batch", **batch}, protocol)
    images, labels = cifar["test"]
    test_batch = {b"data": images.reshape(-1, 3072), b"labels": labels.tolist()}
    dump(folder / "test_batch", test_batch, protocol)
    dump(folder / "batches.meta", {b"label_names": [c.encode() for c in CLASSES]}, protocol)
    return folder


def write_image_folder(root: Path, cifar: dict, ext: str = ".png") -> Path:
    for split, (images, labels) in cifar.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            path = root / split / CLASSES[label] / f"{i:04d}{ext}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.transpose(1, 2, 0)).save(path)
    return root


def archive(folder: Path, out: Path) -> Path:
    """Pack folder (as its own top-level folder) into a tar or zip chosen by out's suffix."""
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w") as z:
            for path in sorted(folder.rglob("*")):
                z.write(path, path.relative_to(folder.parent).as_posix())
    else:
        mode = {".tar": "w", ".gz": "w:gz", ".tgz": "w:gz", ".xz": "w:xz"}[out.suffix]
        with tarfile.open(out, mode) as t:
            t.add(folder, arcname=folder.name)
    return out


def assert_matches(loaded: ImageSet, images: np.ndarray, labels: np.ndarray) -> None:
    assert loaded.images.dtype == torch.uint8 and loaded.images.shape == (len(labels), 3, 32, 32)
    assert torch.equal(loaded.images, torch.from_numpy(images))
    assert loaded.labels is not None and loaded.labels.dtype == torch.int64
    assert torch.equal(loaded.labels, torch.from_numpy(labels).long())
    assert torch.equal(loaded.ids, torch.arange(len(labels)))


def assert_cifar(data, cifar: dict) -> None:
    assert_matches(data.train, *cifar["train"])
    assert_matches(data.test, *cifar["test"])


# --- formats --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 5])
def test_batches_folder_itself_or_its_parent(tmp_path: Path, cifar: dict, protocol: int) -> None:
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar, protocol)
    assert_cifar(load_cifar10(folder), cifar)
    data = load_cifar10(str(tmp_path))
    assert_cifar(data, cifar)
    assert data.source == str(tmp_path)


def python2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as the original files hold it: numpy 1.x on Python 2, str keys, str pixel data."""
    raw = data.tobytes()
    # {'data': _reconstruct(ndarray, (0,), 'b') with state (1, shape, dtype('u1'), False, raw),
    #  'labels': [...]}, opcode by opcode
    return (
        b"\x80\x02}(U\x04data"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01J" + struct.pack("<i", len(data)) + b"M\x00\x0c\x86"  # shape (N, 3072)
        b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89T" + struct.pack("<i", len(raw)) + raw + b"tb"
        b"U\x06labels](" + bytes(x for label in labels for x in (ord("K"), label)) + b"eu."
    )


def test_python_version_written_by_python_2(tmp_path: Path, cifar: dict) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    images, labels = cifar["train"]
    for i, index in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        batch = python2_pickle(images[index].reshape(-1, 3072), labels[index].tolist())
        (folder / f"data_batch_{i}").write_bytes(batch)
    images, labels = cifar["test"]
    (folder / "test_batch").write_bytes(python2_pickle(images.reshape(-1, 3072), labels.tolist()))
    assert_cifar(load_cifar10(folder), cifar)


def test_python_version_tar_gz(tmp_path: Path, cifar: dict) -> None:
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    assert_cifar(load_cifar10(archive(folder, tmp_path / "cifar-10-python.tar.gz")), cifar)


def test_png_folder_itself_or_one_level_down(tmp_path: Path, cifar: dict) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    assert_cifar(load_cifar10(folder), cifar)
    assert_cifar(load_cifar10(tmp_path), cifar)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.xz", ".zip"])
def test_png_archives(tmp_path: Path, cifar: dict, suffix: str) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    path = archive(folder, tmp_path / f"cifar10{suffix}")
    assert_cifar(load_cifar10(path), cifar)
    assert_matches(load_images(path), *cifar["test"])


def test_jpeg_folder_and_archive(tmp_path: Path) -> None:
    # smooth images, so that JPEG's loss stays small and the comparison means something
    x, y = np.meshgrid(np.linspace(0, 200, 32), np.linspace(0, 200, 32))
    smooth = np.stack([x, y, np.full_like(x, 128)])
    cifar = {}
    for split, n in PER_CLASS.items():
        labels = np.repeat(np.arange(len(CLASSES)), n)
        shift = np.arange(len(labels))[:, None, None, None] * 2
        cifar[split] = (np.clip(smooth[None] + shift, 0, 255).astype(np.uint8), labels)
    folder = write_image_folder(tmp_path / "jpg", cifar, ext=".jpg")
    for path in (folder, archive(folder, tmp_path / "jpg.tar.xz")):
        data = load_cifar10(path)
        for split in ("train", "test"):
            images, labels = cifar[split]
            loaded = getattr(data, split)
            assert loaded.images.dtype == torch.uint8
            assert loaded.images.shape == (len(labels), 3, 32, 32)
            assert torch.equal(loaded.labels, torch.from_numpy(labels))
            error = (loaded.images.float() - torch.from_numpy(images).float()).abs()
            assert error.mean() < 3 and error.max() < 40


def test_grayscale_and_rgba_become_rgb(tmp_path: Path, cifar: dict) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    gray = np.random.default_rng(3).integers(0, 256, (32, 32), np.uint8)
    rgba = np.random.default_rng(4).integers(0, 256, (32, 32, 4), np.uint8)
    Image.fromarray(gray, "L").save(folder / "train" / "airplane" / "0000.png")
    Image.fromarray(rgba, "RGBA").save(folder / "train" / "airplane" / "0001.png")
    images = load_cifar10(folder).train.images
    assert torch.equal(images[0], torch.from_numpy(gray).expand(3, 32, 32))
    assert torch.equal(images[1], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))


def unlabeled(images: np.ndarray, layout: str, ids: np.ndarray) -> dict:
    data = images.transpose(0, 2, 3, 1) if layout == "hwc" else images.reshape(len(images), -1)
    return {b"data": np.ascontiguousarray(data), b"ids": ids}


def test_unlabeled_layouts_decode_to_the_same_images(tmp_path: Path) -> None:
    images, _ = random_split("test", 5)
    ids = np.random.default_rng(6).permutation(1000)[: len(images)]
    loaded = {}
    for layout in ("hwc", "planar"):
        loaded[layout] = load_images(
            dump(tmp_path / f"{layout}.pkl", unlabeled(images, layout, ids))
        )
        assert loaded[layout].labels is None
        assert loaded[layout].images.dtype == torch.uint8
        assert torch.equal(loaded[layout].images, torch.from_numpy(images))
        assert torch.equal(loaded[layout].ids, torch.from_numpy(ids).long())
    assert torch.equal(loaded["hwc"].images, loaded["planar"].images)


def test_unlabeled_ids_from_a_list_must_be_unique(tmp_path: Path) -> None:
    images, _ = random_split("test", 5)
    path = dump(tmp_path / "u.pkl", {b"data": images.reshape(len(images), -1), b"ids": [7, 3] * 10})
    with pytest.raises(DataError, match=r"u\.pkl.*id (3|7) appears 10 times"):
        load_images(path)
    ids = list(range(100, 100 + len(images)))
    path = dump(tmp_path / "v.pkl", {b"data": images.reshape(len(images), -1), b"ids": ids})
    assert load_images(path).ids.tolist() == ids


def test_load_images_on_a_dataset_gives_its_test_split(tmp_path: Path, cifar: dict) -> None:
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    assert_matches(load_images(folder), *cifar["test"])
    assert_matches(load_images(folder / "test_batch"), *cifar["test"])


def test_load_pickle_keeps_bytes_keys(tmp_path: Path) -> None:
    obj = {
        b"data": np.arange(6, dtype=np.uint8).reshape(2, 3),
        b"names": [b"a", "b"],
        b"ids": np.arange(2, dtype=np.int64),
        b"n": (1, 2.5),
    }
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        loaded = load_pickle(dump(tmp_path / f"p{protocol}", obj, protocol))
        assert loaded.keys() == obj.keys()
        assert np.array_equal(loaded[b"data"], obj[b"data"])
        assert np.array_equal(loaded[b"ids"], obj[b"ids"])
        assert loaded[b"names"] == [b"a", "b"] and loaded[b"n"] == (1, 2.5)


def test_image_set_subset_and_to() -> None:
    images = torch.arange(4 * 3 * 32 * 32).reshape(4, 3, 32, 32).to(torch.uint8)
    data = ImageSet(images, torch.tensor([0, 1, 2, 3]), torch.tensor([10, 11, 12, 13]))
    part = data.subset(torch.tensor([3, 1]))
    assert len(part) == 2 and part.ids.tolist() == [13, 11] and part.labels.tolist() == [3, 1]
    assert torch.equal(part.images[0], images[3])
    moved = data.to("cpu")
    assert torch.equal(moved.images, images) and moved.labels is not None
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(images.float(), None, torch.arange(4))


# --- malicious and broken files -------------------------------------------------------------


class Payload:
    """Pickles as a call of `function(*args)`, which a plain pickle.load would run."""

    def __init__(self, function: object, *args: object) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def payloads(marker: Path) -> list[Payload]:
    write = f"open({str(marker)!r}, 'w').write('pwned')"
    return [
        Payload(os.system, f"touch {marker}"),
        Payload(eval, write),
        Payload(exec, write),
        Payload(getattr, int, "bit_length"),
        Payload(__import__, "subprocess"),
    ]


@pytest.mark.parametrize("which", range(5))
def test_malicious_pickle_is_refused_and_not_run(tmp_path: Path, which: int) -> None:
    marker = tmp_path / "pwned"
    payload = payloads(marker)[which]
    images, _ = random_split("test", 0)
    path = dump(tmp_path / "evil.pkl", {b"data": images.reshape(20, -1), b"ids": payload})
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*refused") as error:
        load_images(path)
    assert payload.function.__name__ in str(error.value)
    assert not marker.exists()
    pickle.loads(path.read_bytes())  # the same file, unpickled the unsafe way, does run it
    assert marker.exists() or which >= 3


def test_malicious_batch_in_a_dataset_is_refused(tmp_path: Path, cifar: dict) -> None:
    marker = tmp_path / "pwned"
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    dump(folder / "data_batch_3", {b"data": Payload(os.system, f"touch {marker}"), b"labels": []})
    with pytest.raises(DataError, match=r"data_batch_3.*refused.*system"):
        load_cifar10(archive(folder, tmp_path / "evil.tar.gz"))
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz", ".zip"])
def test_truncated_archive(tmp_path: Path, cifar: dict, suffix: str) -> None:
    path = archive(write_image_folder(tmp_path / "cifar10", cifar), tmp_path / f"cifar10{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=rf"cifar10{re.escape(suffix)}.*truncated or corrupt"):
        load_cifar10(path)


def test_truncated_pickles(tmp_path: Path, cifar: dict) -> None:
    images, _ = random_split("test", 0)
    path = dump(tmp_path / "nolabel.pkl", unlabeled(images, "hwc", np.arange(20)))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"nolabel\.pkl.*truncated or corrupt"):
        load_images(path)
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    (folder / "test_batch").write_bytes((folder / "test_batch").read_bytes()[:500])
    with pytest.raises(DataError, match=r"test_batch.*truncated or corrupt"):
        load_cifar10(folder)


def test_wrong_shapes(tmp_path: Path) -> None:
    images, labels = random_split("test", 0)
    path = dump(tmp_path / "u.pkl", {b"data": images[:, 0], b"ids": np.arange(20)})
    with pytest.raises(DataError, match=r"u\.pkl.*shape \(20, 32, 32\).*\(N, 32, 32, 3\)"):
        load_images(path)
    batch = {b"data": images.reshape(20, -1)[:, :3000], b"labels": labels.tolist()}
    with pytest.raises(DataError, match=r"b\.pkl.*shape \(20, 3000\).*\(N, 3072\)"):
        load_images(dump(tmp_path / "b.pkl", batch))


def test_wrong_keys_and_dtype(tmp_path: Path) -> None:
    images, _ = random_split("test", 0)
    path = dump(tmp_path / "u.pkl", {b"images": images, b"ids": np.arange(20)})
    with pytest.raises(DataError, match=r"u\.pkl.*missing.*b'data'.*found \[b'images', b'ids'\]"):
        load_images(path)
    path = dump(tmp_path / "f.pkl", unlabeled(images.astype(np.float32), "hwc", np.arange(20)))
    with pytest.raises(DataError, match=r"f\.pkl.*dtype float32.*uint8"):
        load_images(path)
    with pytest.raises(DataError, match=r"l\.pkl.*expected a pickled dict"):
        load_images(dump(tmp_path / "l.pkl", [1, 2, 3]))


def test_bad_labels(tmp_path: Path, cifar: dict) -> None:
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    images, labels = cifar["test"]
    bad = labels.copy()
    bad[7] = 10
    dump(folder / "test_batch", {b"data": images.reshape(20, -1), b"labels": bad.tolist()})
    with pytest.raises(DataError, match=r"test_batch.*label 10 at index 7.*0\.\.9"):
        load_cifar10(folder)
    dump(folder / "test_batch", {b"data": images.reshape(20, -1), b"labels": labels[:-1].tolist()})
    with pytest.raises(DataError, match=r"test_batch.*19 labels for 20 images"):
        load_cifar10(folder)


def test_missing_batch_file(tmp_path: Path, cifar: dict) -> None:
    folder = write_batches(tmp_path / "cifar-10-batches-py", cifar)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*lacks data_batch_4"):
        load_cifar10(folder)


def test_image_folder_errors(tmp_path: Path, cifar: dict) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    for path in (folder / "test" / "truck").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=r"test/truck.*empty"):
        load_cifar10(folder)
    (folder / "test" / "truck").rmdir()
    with pytest.raises(DataError, match=r"cifar10/test.*truck missing"):
        load_cifar10(folder)
    (folder / "test" / "spaceship").mkdir()
    with pytest.raises(DataError, match=r"spaceship.*not a CIFAR-10 class"):
        load_cifar10(folder)


@pytest.mark.parametrize("name", ["notes.txt", "broken.jpg"])
def test_non_image_files(tmp_path: Path, cifar: dict, name: str) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    (folder / "train" / "cat" / name).write_text("not an image")
    for path in (folder, archive(folder, tmp_path / "cifar10.zip")):
        with pytest.raises(DataError, match=rf"train/cat/{name}"):
            load_cifar10(path)


def test_hidden_files_are_ignored(tmp_path: Path, cifar: dict) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    (folder / "train" / "cat" / ".DS_Store").write_text("finder junk")
    assert_cifar(load_cifar10(archive(folder, tmp_path / "cifar10.tar")), cifar)


def test_image_not_32x32(tmp_path: Path, cifar: dict) -> None:
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    Image.new("RGB", (64, 48)).save(folder / "test" / "dog" / "0011.png")
    with pytest.raises(DataError, match=r"test/dog/0011\.png.*64x48, expected 32x32"):
        load_cifar10(folder)


def test_missing_path_and_unknown_formats(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere.*does not exist"):
        load_cifar10(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"nowhere\.pkl.*does not exist"):
        load_images(tmp_path / "nowhere.pkl")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: unknown dataset format.*data_batch_1"):
        load_cifar10(tmp_path / "empty")
    (tmp_path / "data.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"data\.bin: unknown dataset format.*\.zip"):
        load_cifar10(tmp_path / "data.bin")


def test_offline_download_points_to_data_flag(tmp_path: Path, monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise RuntimeError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"offline.*--data PATH"):
        load_cifar10(None, cache_dir=tmp_path)


def test_download_is_converted_to_nchw(tmp_path: Path, monkeypatch) -> None:
    class FakeCIFAR10:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            n = 6 if train else 4
            self.data = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), np.uint8)
            self.targets = list(range(n))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = load_cifar10(None, cache_dir=tmp_path)
    fake = FakeCIFAR10(str(tmp_path), train=True, download=True)
    assert torch.equal(data.train.images, torch.from_numpy(fake.data).permute(0, 3, 1, 2))
    assert data.train.labels.tolist() == fake.targets and len(data.test) == 4


# --- splits ---------------------------------------------------------------------------------


def labeled(counts: list[int]) -> ImageSet:
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    images = torch.zeros((len(labels), 3, 32, 32), dtype=torch.uint8)
    return ImageSet(images, labels, torch.arange(len(labels)))


def test_split_is_stratified_exact_and_disjoint() -> None:
    data = labeled([100] * 10)
    train, val = split_train_val(data, val_size=50, seed=0)
    assert len(val) == 50 and len(train) == 950
    assert torch.bincount(val.labels, minlength=10).tolist() == [5] * 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [95] * 10
    ids = torch.cat([train.ids, val.ids]).sort().values
    assert torch.equal(ids, data.ids)  # disjoint, and together they cover the input
    assert torch.equal(data.labels[val.ids], val.labels)


def test_split_rounds_unequal_classes_to_the_exact_size() -> None:
    counts = [13, 7, 50, 1, 29, 0, 11, 40, 9, 20]
    data = labeled(counts)
    _, val = split_train_val(data, val_size=37, seed=3)
    assert len(val) == 37
    share = torch.tensor(counts) * 37 / sum(counts)
    per_class = torch.bincount(val.labels, minlength=10)
    assert ((per_class == share.floor()) | (per_class == share.ceil())).all()


def test_split_depends_on_the_seed_only() -> None:
    data = labeled([30] * 10)
    first = split_train_val(data, val_size=40, seed=1)[1].ids
    assert torch.equal(first, split_train_val(data, val_size=40, seed=1)[1].ids)
    assert not torch.equal(first, split_train_val(data, val_size=40, seed=2)[1].ids)


def test_split_sizes_at_the_edges() -> None:
    data = labeled([10] * 10)
    train, val = split_train_val(data, val_size=0)
    assert len(val) == 0 and torch.equal(train.ids, data.ids)
    with pytest.raises(DataError, match="val_size=100"):
        split_train_val(data, val_size=100)


def test_subset_stratified() -> None:
    data = labeled([50] * 10)
    subset = subset_stratified(data, 200, seed=0)
    assert len(subset) == 200
    assert torch.bincount(subset.labels).tolist() == [20] * 10
    assert len(subset.ids.unique()) == 200
    assert torch.equal(subset.ids, subset_stratified(data, 200, seed=0).ids)
    assert subset_stratified(data, 10_000, seed=0) is data


def test_pil_decoder_when_torchvision_has_none(tmp_path: Path, cifar: dict, monkeypatch) -> None:
    monkeypatch.setattr(data_module, "decode_image", None)
    folder = write_image_folder(tmp_path / "cifar10", cifar)
    assert_cifar(load_cifar10(folder), cifar)
    (folder / "test" / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"test/cat/broken\.png.*could not decode"):
        load_cifar10(folder)


# --- files that try to exhaust memory or time -------------------------------------------------


def _nested_shared(depth: int) -> list:
    """[[x, x], [x, x]]... with every level the same two references: a few bytes per level
    pickled, 2**depth elements for anything that walks it."""
    inner: list = [0]
    for _ in range(depth):
        inner = [inner, inner]
    return inner


N_HUGE = 1_000_000  # images a crafted file claims (3 GB of pixels)
BOMBS = {
    # 43 bytes calling list(bytes(50_000_000)): ~400 MB if the constructors were allowed
    "list-of-bytes": b"\x80\x02cbuiltins\nlist\ncbuiltins\nbytes\nJ"
    + struct.pack("<i", 50_000_000)
    + b"\x85R\x85R.",
    # numpy.ndarray((N, 3072), uint8) called directly: allocates whatever it is asked
    "ndarray-call": b"\x80\x02cnumpy\nndarray\nJ"
    + struct.pack("<i", N_HUGE)
    + b"M\x00\x0c\x86cnumpy\ndtype\nX\x02\x00\x00\x00u1\x85R\x86R.",
    # numpy's own reconstruction, claiming a huge shape for three bytes of data
    "short-data": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b"
    b"\x87R(K\x01J" + struct.pack("<i", N_HUGE) + b"M\x00\x0c\x86cnumpy\ndtype\nX\x02\x00\x00\x00u1"
    b"K\x00K\x01\x87R(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89C\x03"
    b"abctb.",
    # an object array, which could hold anything the file builds
    "object-dtype": b"\x80\x02cnumpy\ndtype\nX\x02\x00\x00\x00O8\x85R.",
    # b'data' and b'ids' as nested lists sharing references: np.asarray would take days
    "nested-data": pickle.dumps({b"data": _nested_shared(40), b"ids": [1]}, protocol=4),
    "nested-ids": pickle.dumps(
        {b"data": np.zeros((2, 3072), np.uint8), b"ids": [_nested_shared(40), 1]}, protocol=4
    ),
}


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_a_file_cannot_make_the_loader_allocate_or_compute_much_more_than_itself(
    tmp_path: Path, bomb: str
) -> None:
    path = tmp_path / f"{bomb}.pkl"
    path.write_bytes(BOMBS[bomb])
    assert path.stat().st_size < 10_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(DataError) as error:
            load_images(path)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"{bomb}.pkl" in str(error.value)  # the message names the file
    # Refusing takes milliseconds; a loader that built one would allocate gigabytes (the peak
    # below) or compute for hours (the nested lists: 2**40 elements). 30 s bounds only that,
    # with room for a loaded machine.
    assert seconds < 30, f"refusing took {seconds:.2f} s"
    assert peak < 20 * 2**20, f"refusing allocated {peak / 2**20:.0f} MiB"


def test_an_unlabeled_file_without_images_is_refused_clearly(tmp_path: Path) -> None:
    path = dump(tmp_path / "empty.pkl", {b"data": np.zeros((0, 3072), np.uint8), b"ids": []})
    with pytest.raises(DataError, match=r"empty\.pkl.*holds no images"):
        load_images(path)
