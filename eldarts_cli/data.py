"""Datasets held in memory as uint8 tensors, augmented on tensors (on the GPU when there is one).

Small image datasets (CIFAR, MNIST-likes, SVHN, scikit-learn digits, an
ImageFolder tree of small images) are decoded once into a ``(N, C, H, W)``
uint8 tensor. ``TensorLoader`` moves it to the device once and makes each
batch with a few tensor ops (zero-padded random crop, horizontal flip,
normalisation, cutout), so the loop is not bound by per-image Python work.
Each epoch's order and augmentation come from a generator seeded by
``(seed, epoch)``: a run resumed at an epoch boundary sees the same batches.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F

from .errors import DataError
from .recipe import DataConfig
from .registry import Registry

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


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


Loader = Callable[[DataConfig, str], ImageSet]
DATASETS: Registry[Loader] = Registry("dataset")


def cache_dir() -> Path:
    return Path(os.environ.get("ELDARTS_CACHE", Path.home() / ".cache" / "eldarts"))


def default_root(cfg: DataConfig) -> Path:
    return Path(cfg.root) if cfg.root is not None else Path("data") / cfg.dataset


# ---------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------


@DATASETS.register("digits")
def _digits(cfg: DataConfig, split: str) -> ImageSet:
    """scikit-learn's handwritten digits: 1,797 real 8x8 images, shipped with the package (offline).

    Split: a fixed shuffle (seed 0), 80% train / 20% test.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().mul_(255.0 / 16.0).round_().to(torch.uint8)[:, None]
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(images))
    idx = order[:cut] if split == "train" else order[cut:]
    return ImageSet(images[idx], labels[idx], [str(i) for i in range(10)], "digits")


@DATASETS.register("fake")
def _fake(cfg: DataConfig, split: str) -> ImageSet:
    """Random images (3x32x32 unless data.image_size), 10 classes: for benchmarks and smoke tests."""
    n = (cfg.limit if split == "train" else cfg.test_limit) or (512 if split == "train" else 128)
    size = cfg.image_size or 32
    g = torch.Generator().manual_seed(0 if split == "train" else 1)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet(images, labels, [str(i) for i in range(10)], "fake")


def _torchvision(name: str, cls_name: str, how: str):
    def load(cfg: DataConfig, split: str) -> ImageSet:
        import torchvision.datasets as tvd

        root = default_root(cfg)
        cls = getattr(tvd, cls_name)
        kwargs = {"split": split} if cls_name == "SVHN" else {"train": split == "train"}
        try:
            ds = cls(str(root), download=cfg.download, **kwargs)
        except RuntimeError as error:
            hint = (
                f"set data.download=true to fetch it into {root} (needs internet), or point data.root "
                f"to a folder that holds it"
            )
            if name.startswith("cifar"):
                hint += ", or use dataset: imagefolder with data.root set to a JPEG tree or .tar.gz archive"
            raise DataError(f"{name} not found in {root} ({error}); {hint}") from None
        data = torch.as_tensor(ds.data)
        if data.dim() == 3:  # MNIST-likes: (N, H, W)
            data = data[:, None]
        elif data.shape[-1] == 3:  # CIFAR: (N, H, W, C)
            data = data.permute(0, 3, 1, 2)
        labels = torch.as_tensor(ds.labels if cls_name == "SVHN" else ds.targets).long()
        classes = list(getattr(ds, "classes", [str(i) for i in range(int(labels.max()) + 1)]))
        return ImageSet(data.contiguous(), labels, classes, name)

    load.__doc__ = f"torchvision's {cls_name} ({how})."
    DATASETS.register(name, load)


_torchvision("cifar10", "CIFAR10", "32x32 RGB, 10 classes")
_torchvision("cifar100", "CIFAR100", "32x32 RGB, 100 classes")
_torchvision("mnist", "MNIST", "28x28 grey, 10 classes")
_torchvision("fashion_mnist", "FashionMNIST", "28x28 grey, 10 classes")
_torchvision("svhn", "SVHN", "32x32 RGB, 10 classes")


def extract_archive(archive: Path) -> Path:
    """Extract a .tar(.gz) archive once into the cache; return the folder."""
    digest = hashlib.sha256(f"{archive.resolve()}:{archive.stat().st_size}:{archive.stat().st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "extracted" / f"{archive.name.split('.')[0]}-{digest}"
    done = target / ".complete"
    if done.exists():
        return target
    tmp = target.with_name(target.name + f".partial-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"cannot extract {archive}: {error}") from None
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return target
    os.replace(tmp, target)
    done.touch()
    return target


def _find_split_root(root: Path, split: str) -> Path:
    names = ["train"] if split == "train" else ["test", "val", "valid", "validation"]
    for candidate in [root] + [p for p in root.iterdir() if p.is_dir()]:
        for name in names:
            if (candidate / name).is_dir():
                return candidate / name
    raise DataError(
        f"{root} has no '{names[0]}' folder: an ImageFolder root needs train/<class>/*.jpg and "
        f"test/<class>/*.jpg (or val/)"
    )


@DATASETS.register("imagefolder")
def _imagefolder(cfg: DataConfig, split: str) -> ImageSet:
    """An ImageFolder tree (root/train/<class>/x.jpg, root/test|val/...) or a .tar.gz of one.

    Decoded once into memory (and cached next to the extracted archive);
    set data.image_size when the images differ in size.
    """
    if cfg.root is None:
        raise DataError("dataset imagefolder needs data.root: a folder with train/ and test/ (or val/), or a .tar.gz")
    root = Path(cfg.root).expanduser()
    if not root.exists():
        raise DataError(f"data.root {root} does not exist")
    if root.is_file():
        root = extract_archive(root)
    folder = _find_split_root(root, split)
    key = hashlib.sha256(f"{folder.resolve()}:{cfg.image_size}".encode()).hexdigest()[:12]
    cached = cache_dir() / "decoded" / f"{folder.parent.name}-{split}-{key}.pt"
    if cached.exists():
        try:
            blob = torch.load(cached, weights_only=True)
            return ImageSet(blob["images"], blob["labels"], list(blob["classes"]), "imagefolder")
        except Exception:
            pass  # a bad cache is rebuilt
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{folder} holds no class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(path)
                labels.append(label)
    if not files:
        raise DataError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    images = _decode_all(files, cfg.image_size)
    ds = ImageSet(images, torch.tensor(labels), classes, "imagefolder")
    cached.parent.mkdir(parents=True, exist_ok=True)
    from .runs import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    torch.save({"images": ds.images, "labels": ds.labels, "classes": classes}, buffer)
    atomic_write_bytes(cached, buffer.getvalue())
    return ds


def _decode_all(files: list[Path], image_size: Optional[int]) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    arrays = []
    first_size = None
    for path in files:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if image_size:
                im = im.resize((image_size, image_size), Image.BILINEAR)
            elif first_size is None:
                first_size = im.size
            elif im.size != first_size:
                raise DataError(f"{path} is {im.size}, other images {first_size}: set data.image_size")
            arrays.append(np.asarray(im))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_images(cfg: DataConfig, split: str) -> ImageSet:
    """Load ``split`` ('train' or 'test') of the configured dataset, limited and resized as asked."""
    ds = DATASETS.get(cfg.dataset)(cfg, split)
    limit = cfg.limit if split == "train" else cfg.test_limit
    if limit and limit < len(ds):
        # a fixed random subset: sorted ImageFolder trees would otherwise give one class
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:limit]
        ds = ds.subset(order.sort().values)
    if cfg.image_size and ds.size != cfg.image_size:
        resized = F.interpolate(ds.images.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear",
                                antialias=True, align_corners=False)
        ds = ImageSet(resized.round_().clamp_(0, 255).to(torch.uint8), ds.labels, ds.classes, ds.name)
    return ds


def split_indices(n: int, portion: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into weight-training and architecture halves (fixed shuffle by ``seed``)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(round(portion * n))
    if cut < 1 or cut >= n:
        raise DataError(f"cannot split {n} images with train_portion={portion}: one half would be empty")
    return order[:cut], order[cut:]


# ---------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------


class TensorLoader:
    """Batches of normalised, augmented float images from an in-memory uint8 tensor."""

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        *,
        mean: list[float],
        std: list[float],
        device: torch.device,
        shuffle: bool = True,
        augment: bool = False,
        crop_padding: int = 4,
        cutout: int = 0,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(data) == 0:
            raise DataError(f"{data.name}: no images to load")
        self.images = data.images.to(device)
        self.labels = data.labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.crop_padding, self.cutout = crop_padding, cutout
        self.seed = seed
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    @property
    def samples(self) -> int:
        """Images this rank sees per epoch."""
        return len(self.images) // self.world_size if self.world_size > 1 else len(self.images)

    def __len__(self) -> int:
        n = self.samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        n = len(self.images)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.world_size > 1:  # equal shards, as DistributedSampler
            per = n // self.world_size
            order = order[self.rank * per : (self.rank + 1) * per]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self._batch(idx, g)

    def _batch(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        dev_idx = idx.to(self.device, non_blocking=True)
        x = self.images.index_select(0, dev_idx).float().div_(255)
        y = self.labels.index_select(0, dev_idx)
        b, _, h, w = x.shape
        if self.augment:
            p = self.crop_padding
            if p:
                offsets = torch.randint(0, 2 * p + 1, (2, b), generator=g).to(self.device, non_blocking=True)
                x = _random_crop(x, offsets, p)
            flip = (torch.rand(b, generator=g) < 0.5).to(self.device, non_blocking=True)
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(3), x)
        x = (x - self.mean) / self.std
        if self.augment and self.cutout:
            centres = (torch.rand(2, b, generator=g) * torch.tensor([[h], [w]])).long().to(self.device)
            x = _cutout(x, centres, self.cutout)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def _random_crop(x: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Crop each image of ``x`` at its own offset from a zero-padded copy (RandomCrop(padding=p))."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    rows = (offsets[0].view(b, 1) + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w + 2 * padding)
    out = padded.gather(2, rows)
    cols = (offsets[1].view(b, 1) + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    return out.gather(3, cols)


def _cutout(x: torch.Tensor, centres: torch.Tensor, length: int) -> torch.Tensor:
    """Zero a ``length`` square around each centre, clipped at the border (DARTS' Cutout)."""
    b, _, h, w = x.shape
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    cy, cx = centres[0].view(b, 1, 1), centres[1].view(b, 1, 1)
    half = length // 2
    hole = (ys >= cy - half) & (ys < cy + half) & (xs >= cx - half) & (xs < cx + half)
    return x * (~hole).unsqueeze(1).to(x.dtype)


#: (channels, classes) of each dataset, for sizing a network without loading data.
DATASET_SHAPES = {
    "digits": (1, 10), "fake": (3, 10), "cifar10": (3, 10), "cifar100": (3, 100),
    "mnist": (1, 10), "fashion_mnist": (1, 10), "svhn": (3, 10),
}


def dataset_shape(cfg: DataConfig) -> tuple[int, int]:
    """(channels, classes) of the configured dataset, without decoding any image."""
    if cfg.dataset in DATASET_SHAPES:
        return DATASET_SHAPES[cfg.dataset]
    if cfg.dataset == "imagefolder" and cfg.root is not None and Path(cfg.root).is_dir():
        try:
            folder = _find_split_root(Path(cfg.root), "train")
            return 3, sum(1 for p in folder.iterdir() if p.is_dir())
        except DataError:
            pass
    return 3, 10
