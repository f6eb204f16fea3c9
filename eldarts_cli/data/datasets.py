"""The dataset registry: every dataset a recipe can name, with its shape, and how to load it.

Small image datasets (CIFAR, MNIST-likes, SVHN, scikit-learn digits, an
ImageFolder tree of small images) are decoded once into a ``(N, C, H, W)``
uint8 :class:`ImageSet` held in memory (``loaders.TensorLoader`` batches
it). ``imagenet`` is *streamed*: read image by image from an ImageFolder tree
with timm's transforms (``loaders.StreamLoader``).

Each :class:`DatasetSpec` carries the shape (channels, image size, classes)
so a network can be sized (``--dry-run``) without reading any image.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import torch
import torch.nn.functional as F

from ..core.device import package_version
from ..core.errors import DataError, EldartsError
from ..core.io import atomic_write_bytes
from ..core.registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's


def is_image_name(name: str) -> bool:
    """An image file a tree's class folder holds, as torchvision's ImageFolder takes them (by extension), except
    hidden files (``.DS_Store``; ``._x.jpg``, the resource forks macOS's tar adds), which are never images."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def open_rgb(source):
    """A PIL image of ``source`` (a path or a file object) as 8-bit RGB. 16-bit greyscale (a PNG's ``I;16``, or
    ``I``) is scaled to 8 bits: Pillow's own conversion clips it at 255, all white; one whose values all lie in
    0..255 (8-bit data in a 16-bit file) is taken as it is. Floating-point images (``F``,
    e.g. a TIFF) have no fixed range: refused by name."""
    import numpy as np
    from PIL import Image

    with Image.open(source) as im:
        if im.mode == "F":
            raise ValueError("a floating-point image (mode F): save it as 8- or 16-bit")
        if im.mode.startswith("I"):  # I;16, I;16B, I (16-bit greyscale PNGs; 32-bit integers clipped to 16)
            values = np.asarray(im).astype(np.float64).clip(0, 65535)
            if values.max() > 255:  # (8-bit values saved in a 16-bit file stay as they are)
                values = values / 257.0
            return Image.fromarray(values.round().astype(np.uint8), mode="L").convert("RGB")
        if im.mode == "P" and "transparency" in im.info:  # the same colours, without Pillow's warning that named
            return im.convert("RGBA").convert("RGB")     # no file ("Palette images with Transparency ...")
        return im.convert("RGB")


def limited(n: int, limit: Optional[int]) -> Optional[torch.Tensor]:
    """The indices ``data.limit`` (``data.test_limit``) keeps of ``n`` images, sorted; ``None`` for all: a fixed random
    subset (seed 0), since the first ``limit`` files of a sorted ImageFolder tree are the first classes alone."""
    if not limit or limit >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].sort().values


@dataclass
class ImageSet:
    """Images as a uint8 ``(N, C, H, W)`` tensor with int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(f"{self.name}: images must be a uint8 (N, C, H, W) tensor")
        if len(self.images) != len(self.labels):
            raise DataError(f"{self.name}: {len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> int:
        return self.images.shape[-1]

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[indices], self.labels[indices], self.classes, self.name, self.meta)

    def stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std in [0, 1] units (computed on at most 10k images)."""
        sample = self.images[:10000].float().div_(255)
        return sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()


class DataSource(Protocol):
    """What a dataset loader reads of a recipe's ``data`` section (``config.sections.DataConfig``)."""

    dataset: str
    root: Optional[Path]
    download: bool
    image_size: Optional[int]
    limit: Optional[int]
    test_limit: Optional[int]
    skip_bad_images: bool


Loader = Callable[[DataSource, str], ImageSet]


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a recipe can name.

    ``from_tree``: an ImageFolder tree whose class folders give the number of
    classes (``classes`` is then the value used before the tree can be read).
    ``streamed``: read image by image with timm's transforms rather than held
    in memory (``load`` is then ``None``). ``reads_root``: the images are files
    under ``data.root`` (or ./data/<name>), which may be missing. ``missing``:
    the files ``load`` reads that a folder lacks, by name, unread (torchvision's
    datasets; their checksums are checked on loading). ``mirror_safe``: a mirror
    image is an image of the same class (not for digits: a horizontal flip is
    then no augmentation by default, ``data.flip``).
    """

    name: str
    channels: int
    size: int
    classes: int
    load: Optional[Loader] = None
    from_tree: bool = False
    streamed: bool = False
    reads_root: bool = False
    description: str = ""
    missing: Optional[Callable[[Path], list[str]]] = None
    mirror_safe: bool = True
    train_images: Optional[int] = None  # the training split's size where it is fixed (a dry run checks batches on it)
    made_to_limit: bool = False  # images made, not read: data.limit images (train_images without one)

    def train_size(self, cfg: DataSource) -> Optional[int]:
        """Training images a run of ``cfg`` would load (``data.limit`` applied), where known without loading."""
        if self.made_to_limit:
            return cfg.limit or self.train_images
        if self.train_images is None:
            return cfg.limit
        return min(self.train_images, cfg.limit) if cfg.limit else self.train_images


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(name: str, channels: int, size: int, classes: int, **kwargs) -> Callable[[Loader], Loader]:
    def add(load: Loader) -> Loader:
        DATASETS.register(name, DatasetSpec(name, channels, size, classes, load=load,
                                            description=(load.__doc__ or "").strip().splitlines()[0], **kwargs))
        return load

    return add


#: What a decoded tree or archive in the cache holds; raised when reading changes what an archive gives (2: images
#: in folders inside a class folder, .pgm/.tif files, hard links; 16-bit greyscale scaled), so that a cache made
#: by an earlier eldarts (keyed by the archive's path, size and time) is not served for the same archive.
DECODED_FORMAT = 2


def cache_dir() -> Path:
    """``$ELDARTS_CACHE`` (``~`` expanded; empty is unset: it wrote into the current folder), else ~/.cache/eldarts."""
    given = os.environ.get("ELDARTS_CACHE", "").strip()
    return Path(given).expanduser() if given else Path.home() / ".cache" / "eldarts"


def default_root(cfg: DataSource) -> Path:
    return Path(cfg.root).expanduser() if cfg.root is not None else Path("data") / cfg.dataset


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


@register_dataset("digits", channels=1, size=8, classes=10, mirror_safe=False, train_images=1437)
def _digits(cfg: DataSource, split: str) -> ImageSet:
    """scikit-learn's handwritten digits: 1,797 real 8x8 images, shipped with the package (offline).

    Split: a fixed shuffle (seed 0), 80% train / 20% test. Cached once decoded: importing scikit-learn takes
    seconds (3.1 s of a tiny search's start-up on 2 cores), the cache file milliseconds.
    """
    sklearn = package_version("scikit-learn") or "missing"  # missing: the import below says so
    cached = cache_dir() / "decoded" / f"digits-{split}-{sklearn}.pt"
    ds = _read_decoded(cached, "digits")
    if ds is not None:
        return ds
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul_(255.0 / 16.0).round_().to(torch.uint8)[:, None]
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(images))
    idx = order[:cut] if split == "train" else order[cut:]
    ds = ImageSet(images[idx], labels[idx], [str(i) for i in range(10)], "digits")
    _write_decoded(cached, ds)
    return ds


def _read_decoded(cached: Path, name: str) -> Optional[ImageSet]:
    """A dataset :func:`_write_decoded` cached, or None (no cache, or a bad one: it is rebuilt)."""
    if not cached.exists():
        return None
    try:  # weights_only: a cache file replaced by someone else cannot run code
        blob = torch.load(cached, weights_only=True)
        return ImageSet(blob["images"], blob["labels"], list(blob["classes"]), name)
    except Exception:
        return None


def _write_decoded(cached: Path, ds: ImageSet) -> None:
    try:
        buffer = io.BytesIO()
        torch.save({"images": ds.images, "labels": ds.labels, "classes": ds.classes}, buffer)
        atomic_write_bytes(cached, buffer.getvalue())
    except EldartsError as error:  # the cache only saves time: go on without it
        warnings.warn(f"decoded images not cached ({error})", stacklevel=3)


FAKE_IMAGES = {"train": 512, "test": 128}  # without data.limit / data.test_limit


@register_dataset("fake", channels=3, size=32, classes=10, train_images=FAKE_IMAGES["train"], made_to_limit=True)
def _fake(cfg: DataSource, split: str) -> ImageSet:
    """Random images (3x32x32 unless data.image_size), 10 classes: for benchmarks and smoke tests."""
    n = (cfg.limit if split == "train" else cfg.test_limit) or FAKE_IMAGES[split]
    size = cfg.image_size or 32
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet(images, labels, [str(i) for i in range(10)], "fake")


def _torchvision(name: str, cls_name: str, shape: tuple[int, int, int], how: str, train_images: int,
                 mirror_safe: bool = True):
    def load(cfg: DataSource, split: str) -> ImageSet:
        import torchvision.datasets as tvd

        root = default_root(cfg)
        cls = getattr(tvd, cls_name)
        kwargs = {"split": split} if cls_name == "SVHN" else {"train": split == "train"}
        try:
            ds = cls(str(root), download=cfg.download, **kwargs)
        except RuntimeError as error:
            raise not_found(name, root, str(error)) from None
        except OSError as error:  # (urllib's URLError too) it said "cannot use: <urlopen error ...>", nothing more
            if not cfg.download:
                raise
            reason = getattr(error, "reason", None) or error.strerror or error
            raise DataError(f"cannot download {name} into {root} (data.download: true): {reason}; on a machine "
                            f"without internet, put the dataset's files in {root} and set data.download: false") from None
        data = torch.as_tensor(ds.data)
        if data.dim() == 3:  # MNIST-likes: (N, H, W)
            data = data[:, None]
        elif data.shape[-1] == 3:  # CIFAR: (N, H, W, C)
            data = data.permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.labels if cls_name == "SVHN" else ds.targets).long()
        classes = list(getattr(ds, "classes", [str(i) for i in range(int(labels.max()) + 1)]))
        return ImageSet(data.contiguous(), labels, classes, name)

    def missing(root: Path) -> list[str]:
        import torchvision.datasets as tvd

        return torchvision_missing_files(getattr(tvd, cls_name), root)

    load.__doc__ = f"torchvision's {cls_name} ({how})."
    register_dataset(name, *shape, reads_root=True, missing=missing, mirror_safe=mirror_safe,
                     train_images=train_images)(load)


def not_found(name: str, root: Path, reason: str) -> DataError:
    """The error of a torchvision dataset missing from ``root``, with what to do."""
    hint = (f"set data.download=true to fetch it into {root} (needs internet), or point data.root to a folder that "
            "holds it")
    if name.startswith("cifar"):
        hint += ", or use dataset: imagefolder with data.root set to a JPEG tree or .tar.gz archive"
    return DataError(f"{name} not found in {root} ({reason}); {hint}")


def torchvision_missing_files(cls: type, root: Path) -> list[str]:
    """The files, under ``root``, that torchvision's dataset class ``cls`` reads for its train and test splits and
    ``root`` lacks, by name (unread: torchvision checks their checksums when it loads them)."""
    if hasattr(cls, "train_list"):  # CIFAR-10/100: <base_folder>/<batch files and the classes' file>
        names = [f"{cls.base_folder}/{name}" for name, _ in cls.train_list + cls.test_list]
        names.append(f"{cls.base_folder}/{cls.meta['filename']}")
    elif hasattr(cls, "split_list"):  # SVHN: <split>_32x32.mat in the root
        names = [cls.split_list[split][1] for split in ("train", "test")]
    else:  # MNIST-likes: the unpacked raw files, or the processed files of older versions
        names = [f"{cls.__name__}/raw/{Path(url).stem}" for url, _ in cls.resources]
        processed = [f"{cls.__name__}/processed/{name}" for name in (cls.training_file, cls.test_file)]
        if all((root / name).is_file() for name in processed):
            return []
    return [name for name in names if not (root / name).is_file()]


_torchvision("cifar10", "CIFAR10", (3, 32, 10), "32x32 RGB, 10 classes", 50_000)
_torchvision("cifar100", "CIFAR100", (3, 32, 100), "32x32 RGB, 100 classes", 50_000)
_torchvision("mnist", "MNIST", (1, 28, 10), "28x28 grey, 10 classes", 60_000, mirror_safe=False)
_torchvision("fashion_mnist", "FashionMNIST", (1, 28, 10), "28x28 grey, 10 classes", 60_000)
_torchvision("svhn", "SVHN", (3, 32, 10), "32x32 RGB, 10 classes", 73_257, mirror_safe=False)
DATASETS.register("imagenet", DatasetSpec(
    "imagenet", 3, 224, 1000, from_tree=True, streamed=True, reads_root=True,
    description="ImageNet as an ImageFolder tree (train/, val/), streamed with timm's transforms",
))


def _archive_error(archive: Path, error: BaseException) -> DataError:
    if isinstance(error, EOFError):
        reason = "the archive ends early (truncated download?)"
    elif isinstance(error, tarfile.ReadError) and "could not be opened" in str(error):
        reason = "it is not a .tar, .tar.gz, .tar.bz2 or .tar.xz archive"
    elif isinstance(error, OSError) and not isinstance(error, tarfile.TarError) and error.strerror:
        reason = error.strerror
    else:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return DataError(f"cannot read {archive}: {reason}")


def _archive_split(archive: Path, split: str, peek: bool = False) -> tuple[str, list[str], list[tuple[str, int, bytes]]]:
    """The ``split`` folder of an ImageFolder tree in a .tar(.gz) archive, read in one pass without extracting it
    (writing 60,000 small files took 12-80 s on one machine, reading them from the archive 4 s): the folder's
    path in the archive, its class names (sorted) and ``(member name, label, bytes)`` of its images, in the order a
    tree's files sort. The folder is chosen as :func:`find_split` chooses it in the extracted tree. ``peek``: the
    bytes of the first image of each split folder only (the others empty), for sizing without decoding."""
    names = SPLIT_FOLDERS[split]
    found: dict[tuple[str, str], dict[str, list[tuple[str, bytes]]]] = {}  # (prefix, split name) -> class -> files
    left_out: dict[tuple[str, str], list[str]] = {}  # files in class folders that are not images eldarts reads
    loose: dict[tuple[str, str], list[str]] = {}  # images in a split folder itself
    ended: list[tarfile.HeaderError] = []  # why the archive's walk stopped (tarfile stops at a bad header silently)

    class Recorded(tarfile.TarInfo):
        @classmethod
        def frombuf(cls, buf, encoding, errors):
            try:
                return super().frombuf(buf, encoding, errors)
            except tarfile.HeaderError as error:
                ended.append(error)
                raise

    try:
        with tarfile.open(archive, tarinfo=Recorded) as tar:
            for member in tar:
                parts = [part for part in member.name.split("/") if part not in ("", ".")]
                # the split folder at the top or one folder down; the class folder below it; images at any depth
                at = next((i for i in (0, 1) if len(parts) > i + 1 and parts[i] in names), None)
                if at is None:
                    continue
                where = ("/".join(parts[:at]), parts[at])
                if member.isdir() and len(parts) == at + 2 and not parts[-1].startswith("."):  # a class folder
                    found.setdefault(where, {}).setdefault(parts[-1], [])
                elif len(parts) == at + 2 and not member.isdir() and is_image_name(parts[-1]):
                    loose.setdefault(where, []).append(member.name)  # in the split folder, no class's
                elif len(parts) >= at + 3 and not member.isdir() and not any(p.startswith(".") for p in parts[at + 1:]):
                    try:
                        file = tar.extractfile(member) if is_image_name(parts[-1]) else None  # (links: their target)
                    except KeyError:  # a link to a member the archive lacks
                        file = None
                    if file is None:  # not an image name, a link to a folder or to nothing, a device
                        left_out.setdefault(where, []).append(member.name)
                        continue
                    classes = found.setdefault(where, {})
                    data = b"" if peek and any(classes.values()) else file.read()
                    classes.setdefault(parts[at + 1], []).append(("/".join(parts[at + 2:]), data))
            if ended and not isinstance(ended[-1], tarfile.EOFHeaderError):  # not the end-of-archive block
                why = ended[-1]
                raise EOFError if isinstance(why, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)) else \
                    tarfile.ReadError(f"it is damaged: a bad header at byte {tar.offset} ({why}); the images "
                                      "after it cannot be read")
            while tar.fileobj.read(1 << 20):  # to its end: a .gz's checksum is checked there
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise _archive_error(archive, error) from None
    prefixes = [""] + sorted({prefix for prefix, _ in found if prefix})
    chosen = next(((prefix, name) for prefix in prefixes for name in names if (prefix, name) in found), None)
    if chosen is None:
        raise DataError(
            f"{archive} has no {' or '.join(repr(n) for n in names[:2])} folder: an ImageFolder archive needs "
            f"train/<class>/*.jpg and test/<class>/*.jpg (or val/), at its top or one folder down"
        )
    inside, classes = "/".join(filter(None, chosen)), found[chosen]
    warn_left_out(f"{archive}:{inside}", left_out.get(chosen, []))
    warn_loose(f"{archive}:{inside}", loose.get(chosen, []))
    order = sorted(classes)
    images = [(f"{inside}/{name}/{file}", label, data)
              for label, name in enumerate(order) for file, data in sorted(classes[name])]
    return inside, order, images


SPLIT_FOLDERS = {"train": ("train",), "test": ("test", "val", "valid", "validation")}


def find_split(root: Path, split: str, *, nested: bool = True) -> Path:
    """The ``train`` or test (``test``/``val``/...) folder of an ImageFolder tree at ``root``
    (or, with ``nested``, one level below it, as archives often hold)."""
    names = SPLIT_FOLDERS[split]
    candidates = [root] + ([p for p in sorted(root.iterdir()) if p.is_dir()] if nested else [])
    for candidate in candidates:
        for name in names:
            if (candidate / name).is_dir():
                return candidate / name
    raise DataError(
        f"{root} has no {' or '.join(repr(n) for n in names[:2])} folder: an ImageFolder root needs "
        f"train/<class>/*.jpg and test/<class>/*.jpg (or val/)"
    )


def class_folders(folder: Path) -> list[str]:
    """A split folder's class folders, sorted; hidden ones (``.ipynb_checkpoints``) are no class (one was a class
    of its own, without a word), as hidden files are no image."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def visible_image(split: Path) -> Callable[[str], bool]:
    """``is_valid_file`` for torchvision's ImageFolder over ``split``: an image name (:func:`is_image_name`) in no
    hidden folder below ``split`` (torchvision passes the whole path, so a hidden ``._x.jpg`` passed too)."""
    prefix = os.path.join(str(split), "")  # (strings: a Path per file cost 4 us more, 5 s on ImageNet's 1.3 M)

    def valid(path: str) -> bool:
        inside = path[len(prefix):] if path.startswith(prefix) else path
        return is_image_name(os.path.basename(inside)) and f"{os.sep}." not in f"{os.sep}{inside}"

    return valid


def class_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images of a class folder at any depth, following links, as torchvision's ImageFolder finds them
    (sorted), and the other files there (not hidden) that are left out."""
    images, others = [], []
    for where, files in _walk(folder):
        for name in files:
            if is_image_name(name):
                images.append(Path(where) / name)
            elif not name.startswith("."):
                others.append(Path(where) / name)
    return sorted(images), others


def _holds_image(folder: Path) -> bool:
    """Whether a class folder holds an image at any depth (stops at the first: an ImageNet folder is not listed)."""
    return any(is_image_name(name) for _, files in _walk(folder) for name in files)


def _walk(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """``(folder, file names)`` under ``folder`` at any depth, lazily, links followed (as torchvision's ImageFolder
    follows them), each folder once: a link to a folder above it is not walked again and again."""
    seen: set[tuple[int, int]] = set()
    for where, dirs, files in os.walk(folder, followlinks=True):
        stat = os.stat(where)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))  # (a hidden folder's files: no images)
        yield where, files


def warn_loose(folder: str, names: list) -> None:
    """Say how many images lie in a split folder itself, outside every class folder (they were left out unsaid)."""
    if names:
        warnings.warn(f"{folder}: {len(names)} image{'s' if len(names) > 1 else ''} outside the class folders left "
                      f"out (images go in {Path(folder).name}/<class>/): e.g. {names[0]}", stacklevel=3)


def loose_images(folder: Path) -> list[str]:
    """The image files directly in a split folder ``folder`` (no class's)."""
    return sorted(p.name for p in folder.iterdir() if p.is_file() and is_image_name(p.name))


def warn_left_out(folder: str, files: list) -> None:
    """Say how many files of a split's class folders are not read, and of what kinds (they were dropped unsaid)."""
    if files:
        kinds = sorted({Path(str(f)).suffix.lower() or "no extension" for f in files})
        warnings.warn(f"{folder}: {len(files)} file{'s' if len(files) > 1 else ''} in class folders left out, not "
                      f"images eldarts reads ({', '.join(kinds[:6])}{', ...' if len(kinds) > 6 else ''}; it reads "
                      f"{', '.join(IMAGE_EXTENSIONS)}): e.g. {files[0]}", stacklevel=3)


def _stamp(path: Path) -> str:
    """A file's size and time for a cache key; a file that cannot be read (a broken link) is decoded, and refused
    (or skipped) there, by name."""
    try:
        stat = path.stat()
    except OSError:
        return "unreadable"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@register_dataset("imagefolder", channels=3, size=32, classes=10, from_tree=True, reads_root=True)
def _imagefolder(cfg: DataSource, split: str) -> ImageSet:
    """An ImageFolder tree (root/train/<class>/x.jpg, root/test|val/...) or a .tar.gz of one.

    Decoded once into memory and cached (an archive is read without extracting it);
    set data.image_size when the images differ in size.
    """
    if cfg.root is None:
        raise DataError("dataset imagefolder needs data.root: a folder with train/ and test/ (or val/), or a .tar.gz")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {root} does not exist")
    skip = bool(getattr(cfg, "skip_bad_images", False))
    if root.is_file():  # an archive: keyed by its path, size and time (a replaced archive is read again)
        stat = root.stat()
        where, name = f"{root.resolve()}:{stat.st_size}:{stat.st_mtime_ns}", root.name.split(".")[0]
        listing = None
    else:  # a folder: keyed by every image's name, size and time (an edited tree is read again)
        folder = find_split(root, split)
        classes = class_folders(folder)
        listing, left_out = [], []
        for label, name in enumerate(classes):
            images, others = class_files(folder / name)
            listing += [(label, path) for path in images]
            left_out += others
        warn_left_out(str(folder), left_out)
        warn_loose(str(folder), loose_images(folder))
        stats = "|".join([*classes, *(f"{p.relative_to(folder)}:{_stamp(p)}" for _, p in listing)])
        # (surrogateescape: a name whose bytes are no UTF-8 hashes as its bytes; it was a UnicodeEncodeError)
        where = f"{folder.resolve()}:{hashlib.sha256(stats.encode(errors='surrogateescape')).hexdigest()}"
        name = folder.parent.name
    key = hashlib.sha256(f"{where}:{split}:{cfg.image_size}:{skip}:{DECODED_FORMAT}".encode(
        errors="surrogateescape")).hexdigest()[:12]
    cached = cache_dir() / "decoded" / f"{name}-{split}-{key}.pt"
    ds = _read_decoded(cached, "imagefolder")
    if ds is not None:
        return ds
    if listing is None:
        inside, classes, members = _archive_split(root, split)
        folder = f"{root}:{inside}"
        files = [(f"{root}:{member}", data) for member, _, data in members]
        labels = [label for _, label, _ in members]
    else:
        files, labels = [path for _, path in listing], [label for label, _ in listing]
    if not classes:
        raise DataError(f"{folder} holds no class folders")
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    present = set(labels)
    empty = [name for label, name in enumerate(classes) if label not in present]
    if empty:  # a class no image teaches, and a test split where one class is everything (0% error)
        raise DataError(f"{folder}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} hold"
                        f"{'' if len(empty) > 1 else 's'} no images ({', '.join(IMAGE_EXTENSIONS)}): add images or "
                        f"remove {'them' if len(empty) > 1 else 'it'}")
    images, kept = _decode_all(files, cfg.image_size, skip_bad=skip)
    ds = ImageSet(images, torch.tensor(labels)[kept], classes, "imagefolder")
    _write_decoded(cached, ds)
    return ds


def _decode_all(files: list, image_size: Optional[int], skip_bad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode ``files`` (paths, or ``(name, bytes)`` of an archive's members) to a uint8 ``(N, 3, H, W)`` tensor;
    also the indices of the files kept.

    A file that cannot be decoded (corrupt, truncated, not an image) is an
    error naming it and counting the others, unless ``skip_bad`` (then a warning with the count).
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    arrays, kept, bad = [], [], []
    first_size = None
    for i, path in enumerate(files):
        if isinstance(path, tuple):
            path, data = path[0], io.BytesIO(path[1])
        else:
            data = path
        try:
            im = open_rgb(data)
            if image_size:
                im = im.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(im)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            bad.append((path, str(error).splitlines()[0] if str(error) else type(error).__name__))
            continue
        if not image_size:
            if array.shape[0] != array.shape[1]:  # the networks and their sizes (MACs, the dry run) take squares
                raise DataError(not_square(path, array.shape[1], array.shape[0]))
            if first_size is None:
                first_size = array.shape[:2]
            elif array.shape[:2] != first_size:
                raise DataError(f"{path} is {array.shape[1]}x{array.shape[0]}, other images "
                                f"{first_size[1]}x{first_size[0]}: set data.image_size")
        arrays.append(array)
        kept.append(i)
    if bad:
        names = "; ".join(f"{path} ({why})" for path, why in bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
        if not skip_bad:
            raise DataError(
                f"{len(bad)} of {len(files)} image files cannot be decoded: {names}. Remove or replace them, "
                f"or set data.skip_bad_images=true to skip them"
            )
        warnings.warn(f"skipped {len(bad)} of {len(files)} image files that cannot be decoded: {names}", stacklevel=2)
    if not arrays:
        raise DataError(f"none of the {len(files)} image files can be decoded")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous(), torch.tensor(kept, dtype=torch.long)


def warn_limit_above(limit: Optional[int], size: int, split: str) -> None:
    """Say that ``data.limit`` (``data.test_limit`` for the test split) asks for more images than the split holds."""
    if limit and limit > size:
        key = "data.limit" if split == "train" else "data.test_limit"
        warnings.warn(f"{key}={limit} is more than the {size} images of the {split} split: all {size} are used")


def load_images(cfg: DataSource, split: str) -> ImageSet:
    """Load ``split`` ('train' or 'test') of the configured dataset, limited and resized as asked."""
    spec = DATASETS.get(cfg.dataset)
    if spec.load is None:
        raise DataError(f"dataset {cfg.dataset} is streamed from disk, not loaded into memory")
    ds = spec.load(cfg, split)
    if ds.num_classes < 2:
        raise DataError(f"{cfg.dataset} ({split}) has {ds.num_classes} class ({', '.join(ds.classes)}): "
                        f"classification needs at least 2 classes")
    limit = cfg.limit if split == "train" else cfg.test_limit
    warn_limit_above(limit, len(ds), split)
    # the split's size before data.limit: what a resume compares, and a run's "trained on 512 of 1,437 images"
    ds = ImageSet(ds.images, ds.labels, ds.classes, ds.name, {**ds.meta, "split_images": len(ds)})
    if (kept := limited(len(ds), limit)) is not None:
        ds = ds.subset(kept)
    if cfg.image_size and ds.size != cfg.image_size:
        resized = F.interpolate(ds.images.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                antialias=True, align_corners=False)
        ds = ImageSet(resized.round_().clamp_(0, 255).to(torch.uint8), ds.labels, ds.classes, ds.name, ds.meta)
    return ds


def split_point(n: int, portion: float) -> int:
    """How many of ``n`` images go to the weight-training half; ``DataError`` where a half would be empty."""
    cut = int(round(portion * n))
    if cut < 1 or cut >= n:
        raise DataError(f"cannot split {n} images with train_portion={portion}: one half would be empty")
    return cut


def split_indices(n: int, portion: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into weight-training and architecture halves (fixed shuffle by ``seed``)."""
    cut = split_point(n, portion)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:cut], order[cut:]


@dataclass(frozen=True)
class InputShape:
    channels: int
    size: int
    num_classes: int


def expected_shape(cfg: DataSource, num_classes: Optional[int] = None) -> InputShape:
    """The network input of the configured data without decoding any image.

    An ImageFolder tree's classes are counted from its folders (the spec's
    default where the tree is not a folder, e.g. an archive); ``image_size``
    overrides the dataset's size.
    """
    spec = DATASETS.get(cfg.dataset)
    classes, size = spec.classes, spec.size
    counted = not spec.from_tree  # a named dataset's classes are known; a tree's once its folders are counted
    root = Path(cfg.root).expanduser() if cfg.root is not None else None  # ("~/data": the run expands it too)
    if spec.from_tree and root is not None and root.is_dir():
        try:
            train = find_split(root, "train", nested=not spec.streamed)
        except DataError:
            train = None
        if train is not None:
            names = class_folders(train)
            if len(names) == 1 and num_classes is None:
                raise DataError(f"{train} has one class folder ({names[0]}): classification needs at least 2")
            refuse_empty_class_folders(train, names)
            classes, counted = len(names) or classes, bool(names)
            if not spec.streamed and not cfg.image_size:
                size = _first_image_size(train, names) or size  # the tree's images, not CIFAR's 32
    elif spec.from_tree and not spec.streamed and root is not None and root.is_file() and tarfile.is_tarfile(root):
        # an archive: its class folders and first image read (one pass through it, nothing decoded but that image)
        _, names, members = _archive_split(root, "train", peek=True)
        if len(names) == 1 and num_classes is None:
            raise DataError(f"{cfg.root}: its train folder has one class folder ({names[0]}): classification needs "
                            "at least 2")
        classes, counted = len(names) or classes, bool(names)
        first = next(((name, data) for name, _, data in members if data), None)
        if first is not None and not cfg.image_size:
            size = _image_bytes_size(first[1], f"{root}:{first[0]}") or size
    if counted:
        check_num_classes(num_classes, classes, cfg.dataset)
    return InputShape(spec.channels, cfg.image_size or size, num_classes or classes)


def refuse_empty_class_folders(split: Path, names: list[str]) -> None:
    """What loading a split refuses of its class folders ``names``, unread: one that holds no image."""
    empty = [name for name in names if not _holds_image(split / name)]
    if empty:
        raise DataError(f"{split}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} hold"
                        f"{'' if len(empty) > 1 else 's'} no images ({', '.join(IMAGE_EXTENSIONS)}): add "
                        f"images or remove {'them' if len(empty) > 1 else 'it'}")


def check_num_classes(num_classes: Optional[int], classes: int, dataset: str) -> None:
    """Refuse a network head (``network.num_classes``) narrower than the data's classes: their labels would index
    past the logits (cross-entropy's "Target 7 is out of bounds")."""
    if num_classes is not None and num_classes < classes:
        raise DataError(f"network.num_classes={num_classes} is fewer than the {classes} classes of {dataset}: "
                        f"give at least {classes}, or leave it out to take the dataset's")


def not_square(path, width: int, height: int) -> str:
    return (f"{path} is {width}x{height}, not square: set data.image_size to resize the images to a square "
            "(the networks, and their sizes and MACs, take square images)")


def _square_side(path, size: tuple[int, int]) -> int:
    """The side of a square image of ``size`` (width, height); a dry run's sizing refuses another, as loading does."""
    if size[0] != size[1]:
        raise DataError(not_square(path, *size))
    return size[0]


def _image_bytes_size(data: bytes, name: str) -> Optional[int]:
    """The side of an encoded image (its header only; ``name``: where it is, for an error); ``None`` if it cannot
    be read."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
    except (OSError, Image.DecompressionBombError):
        return None
    return _square_side(name, size)


def tree_train_images(cfg: DataSource) -> Optional[int]:
    """The images of an in-memory image folder's training split, counted by name without reading one (a dry run's
    check of the search's halves; the folder's size was known to the run alone); ``None`` for an archive, a
    streamed tree or a missing one."""
    spec = DATASETS.get(cfg.dataset)
    root = Path(cfg.root).expanduser() if cfg.root is not None else None
    if not spec.from_tree or spec.streamed or root is None or not root.is_dir():
        return None
    try:
        train = find_split(root, "train")
    except DataError:
        return None
    return sum(len(class_files(train / name)[0]) for name in class_folders(train))


def _first_image_size(folder: Path, classes: list[str]) -> Optional[int]:
    """The side of the first readable image of a tree (its header only), for sizing before decoding."""
    from PIL import Image

    for name in classes:
        for path in class_files(folder / name)[0]:
            try:
                with Image.open(path) as im:
                    size = im.size
            except (OSError, Image.DecompressionBombError):
                continue
            return _square_side(path, size)
    return None
