"""Loaders: batches on the training device, the same batches after a resume.

* :class:`TensorLoader` batches an in-memory uint8 :class:`ImageSet`: it moves
  the images to the device once and makes each batch with a few tensor ops
  (zero-padded random crop, horizontal flip, normalisation, cutout), so the
  loop is not bound by per-image Python work.
* :class:`StreamLoader` reads a streamed dataset (ImageNet) image by image
  with DataLoader workers and timm's transforms.

Each epoch's order and augmentation come from a generator seeded by
``(seed, epoch)`` (``DistributedSampler(seed, epoch)`` for streams): a run
resumed at an epoch boundary sees the same batches. Under torchrun each rank
reads an equal shard; a :class:`TensorLoader` shards each *global* batch, so
the ranks of an N-process run together see exactly the batches (images and
augmentation) of a one-process run at the same global batch size.
"""

from __future__ import annotations

import tarfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Protocol

import torch
import torch.nn.functional as F

from ..core.errors import DataError, refused_here
from ..core.threads import available_cores
from .datasets import (
    DATASETS, DataSource, ImageSet, InputShape, check_num_classes, class_folders, default_root, expected_shape,
    find_split, limited, load_images, loose_images, not_found, open_rgb, refuse_empty_class_folders, visible_image,
    warn_limit_above, warn_loose,
)




class TensorLoader:
    """Batches of normalised, augmented float images from an in-memory uint8 tensor. ``split_images``: the images
    of its split before ``data.limit``; ``class_names``: its classes, in label order."""

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
        flip: bool = True,
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
        self.split_images, self.class_names = data.meta.get("split_images", len(data)), list(data.classes)
        self.batch_size = batch_size
        self.device = device
        self.shuffle, self.augment, self.flip, self.drop_last = shuffle, augment, flip, drop_last
        self.crop_padding, self.cutout = crop_padding, cutout
        self.seed = seed
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    @property
    def normalisation(self) -> dict[str, list[float]]:
        """What the network's input is: pixels scaled to [0, 1], minus ``mean``, over ``std`` (per channel)."""
        return {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    @property
    def samples(self) -> int:
        """Images all ranks together see per epoch (training: a multiple of the world size)."""
        n = len(self.images)
        return n - n % self.world_size if self.shuffle else n

    def __len__(self) -> int:
        n, batch = self.samples, self.batch_size * self.world_size
        return n // batch if self.drop_last or self._lone_last(n % batch) else -(-n // batch)

    def _lone_last(self, images: int) -> bool:
        """A last training batch that would give each rank one image (``data.limit`` 1, or 65 at batch 64): left
        out, as BatchNorm cannot normalise one image in training (the auxiliary head's 1x1 maps: "Expected more
        than 1 value per channel when training", a traceback at the epoch's last step)."""
        return self.shuffle and 0 < images <= self.world_size

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's part of each global batch (``batch_size`` x world size images) of the epoch.

        The global batches, their order and their augmentation depend only on
        ``(seed, epoch)`` and the global batch size, not on the world size:
        every rank draws the random numbers of the whole global batch and keeps
        its slice. Shuffled (training) loaders drop the last ``n % world`` images
        so that every rank takes the same number of steps.
        """
        g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(len(self.images), generator=g) if self.shuffle else torch.arange(len(self.images))
        order = order[: self.samples]
        batch = self.batch_size * self.world_size
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            if len(idx) < batch and (self.drop_last or self._lone_last(len(idx))):
                break
            yield self._batch(idx, g)

    def _batch(self, idx: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(idx)  # the global batch; this rank keeps rows [lo, hi)
        lo, hi = n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size
        dev_idx = idx[lo:hi].to(self.device, non_blocking=True)
        x = self.images.index_select(0, dev_idx).float().div_(255)
        y = self.labels.index_select(0, dev_idx)
        _, _, h, w = x.shape
        if self.augment:
            p = self.crop_padding
            if p:
                offsets = torch.randint(0, 2 * p + 1, (2, n), generator=g)[:, lo:hi].to(self.device, non_blocking=True)
                x = _random_crop(x, offsets, p)
            flip = torch.rand(n, generator=g)[lo:hi] < 0.5  # (drawn either way: the other draws stay the same)
            if self.flip:
                x = torch.where(flip.to(self.device, non_blocking=True).view(-1, 1, 1, 1), x.flip(3), x)
        x = (x - self.mean) / self.std
        if self.augment and self.cutout:
            centres = (torch.rand(2, n, generator=g)[:, lo:hi] * torch.tensor([[h], [w]])).long().to(self.device)
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


# ---------------------------------------------------------------------------
# Streamed ImageFolder trees (ImageNet)
# ---------------------------------------------------------------------------


class StreamLoader:
    """An ImageFolder split read by DataLoader workers with timm's transforms (ImageNet). ``split_images`` and
    ``class_names`` as :class:`TensorLoader`'s, set by who made it.

    Each epoch's order comes from ``DistributedSampler(seed, epoch)``, so it
    is the same after a resume; test batches are sharded ``rank::world``.
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, seed: int, num_workers: int,
                 device: torch.device, channels_last: bool, rank: int = 0, world_size: int = 1,
                 normalisation: Optional[dict] = None, skip_bad: bool = False):
        self.dataset, self.batch_size, self.train = _Checked(dataset), batch_size, train
        self.skip_bad = skip_bad
        self.normalisation = normalisation  # as TensorLoader's (timm's transforms: its ImageNet mean and std)
        self.seed, self.num_workers, self.device = seed, num_workers, device
        self.channels_last, self.rank, self.world_size = channels_last, rank, world_size

    def _sampler(self, epoch: int):
        from torch.utils.data import DistributedSampler

        if self.train:
            sampler = DistributedSampler(
                self.dataset, self.world_size, self.rank, shuffle=True, seed=self.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            return sampler
        return range(self.rank, len(self.dataset), self.world_size)

    def __len__(self) -> int:
        n = len(self._sampler(0))
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def _loader(self, epoch: int, pin_memory: bool):
        from torch.utils.data import DataLoader

        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._sampler(epoch),
            num_workers=self.num_workers,
            pin_memory=pin_memory,
            drop_last=self.train,
            persistent_workers=False,
            collate_fn=_collate_checked,
        )

    def _refuse(self, bad: "_Bad") -> DataError:
        return DataError(f"{bad.path} cannot be decoded ({bad.reason}); fix or remove it, or set "
                         "data.skip_bad_images: true to leave such files out")

    def check_decodes(self) -> None:
        """Read this process's share of the split once, without a network: a file that cannot be decoded is refused
        before training (a test split is first read at the end of the first epoch, which was lost with it)."""
        if self.skip_bad:
            return
        for _, _, bad in self._loader(0, pin_memory=False):
            if bad:
                raise self._refuse(bad[0])

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = self._loader(epoch, pin_memory=self.device.type == "cuda")
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.num_workers == 0 and self.train:  # the transforms run in this process (workers seed their own)
            _seed_host_generators(self.seed, epoch, self.rank)
        skipped: list[_Bad] = []
        for x, y, bad in loader:
            if bad and not self.skip_bad:
                raise self._refuse(bad[0])
            skipped += bad
            if x is not None:
                yield (x.to(self.device, non_blocking=True, memory_format=memory_format),
                       y.to(self.device, non_blocking=True))
        if skipped:
            warnings.warn(f"{len(skipped)} image file{'s' if len(skipped) > 1 else ''} of this epoch could not be "
                          f"decoded and {'were' if len(skipped) > 1 else 'was'} left out (data.skip_bad_images): "
                          f"{', '.join(b.path for b in skipped[:3])}{' ...' if len(skipped) > 3 else ''}")


def _seed_host_generators(seed: int, epoch: int, rank: int) -> None:
    """Seed Python's and NumPy's global generators from ``(seed, epoch, rank)``: timm's random-resized crop, flips,
    AutoAugment and random erasing draw from them, not from torch's generator (which a checkpoint keeps), so an
    epoch read in this process (``data.num_workers: 0``) was augmented otherwise on every run and after a resume.
    DataLoader workers seed both from torch's generator."""
    import hashlib
    import random

    digest = hashlib.sha256(f"eldarts/{seed}/{epoch}/{rank}".encode()).digest()
    random.seed(int.from_bytes(digest[:8], "little"))
    try:
        import numpy as np
    except ImportError:  # (timm needs it; without it nothing here draws from it)
        return
    np.random.seed(int.from_bytes(digest[8:12], "little"))


@dataclass
class _Bad:
    """An image file a DataLoader worker could not decode: handed to the main process in the batch (an exception
    raised in a worker came back as a page of two tracebacks)."""

    path: str
    reason: str


class _Checked(torch.utils.data.Dataset):
    """``dataset`` (an ImageFolder, or a Subset of one) whose undecodable files come back as :class:`_Bad`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            return self.dataset[index]
        except (OSError, ValueError, SyntaxError) as error:  # PIL: truncated, not an image, a broken header
            base, i = self.dataset, index
            while isinstance(base, torch.utils.data.Subset):
                base, i = base.dataset, base.indices[i]
            path = base.samples[i][0] if hasattr(base, "samples") else f"image {index}"
            return _Bad(str(path), str(error) or type(error).__name__)


def _collate_checked(items: list):
    """``(x, y, bad)``: the batch of the images that decoded (``None`` where none did) and the :class:`_Bad` ones."""
    from torch.utils.data import default_collate

    bad = [item for item in items if isinstance(item, _Bad)]
    good = [item for item in items if not isinstance(item, _Bad)]
    x, y = default_collate(good) if good else (None, None)
    return x, y, bad


class TrainingData(Protocol):
    """What :func:`training_loaders` reads of an evaluation recipe's ``data`` section."""

    dataset: str
    root: Optional[Path]
    limit: Optional[int]
    test_limit: Optional[int]
    augment: bool
    flip: Optional[bool]
    flips: bool  # (the property of the data section: data.flip, or the dataset's default)
    crop_padding: int
    cutout: int
    num_workers: int
    color_jitter: Optional[float]
    auto_augment: Optional[str]
    interpolation: str
    crop_pct: float


def _stream_loaders(data: TrainingData, shape: InputShape, batch: int, eval_batch: int, **common):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
    from torchvision.datasets import ImageFolder

    class _VisibleImageFolder(ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = class_folders(Path(directory))  # (hidden folders are no class)
            return classes, {name: index for index, name in enumerate(classes)}

    root = _stream_root(data)
    size = dict(input_size=(3, shape.size, shape.size), interpolation=data.interpolation,
                mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
    train_tf = create_transform(**size, is_training=True, color_jitter=data.color_jitter,
                                auto_augment=data.auto_augment, hflip=0.0 if data.flip is False else 0.5)
    test_tf = create_transform(**size, is_training=False, crop_pct=data.crop_pct)
    train_dir, test_dir = (find_split(root, split, nested=False) for split in ("train", "test"))
    for folder in (train_dir, test_dir):  # (torchvision's words: "Found no valid file for the classes x")
        refuse_empty_class_folders(folder, class_folders(folder))
        warn_loose(str(folder), loose_images(folder))
    try:  # (open_rgb: 16-bit greyscale scaled, not clipped white; no hidden ._x.jpg or hidden folders)
        train_set, test_set = (_VisibleImageFolder(str(folder), transform=transform, loader=open_rgb,
                                                   is_valid_file=visible_image(folder))
                               for folder, transform in ((train_dir, train_tf), (test_dir, test_tf)))
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"cannot read the ImageFolder tree in {root}: {error}") from None
    check_same_classes(train_set.classes, test_set.classes, root)
    classes, names, totals = len(train_set.classes), list(train_set.classes), (len(train_set), len(test_set))
    warn_limit_above(data.limit, len(train_set), "train")
    warn_limit_above(data.test_limit, len(test_set), "test")
    # a fixed random subset, as the in-memory path takes (the first files are the first classes alone)
    if (kept := limited(len(train_set), data.limit)) is not None:
        train_set = torch.utils.data.Subset(train_set, kept.tolist())
    if (kept := limited(len(test_set), data.test_limit)) is not None:
        test_set = torch.utils.data.Subset(test_set, kept.tolist())
    common["num_workers"] = loader_workers(data.num_workers)
    common["skip_bad"] = bool(getattr(data, "skip_bad_images", False))
    common["normalisation"] = {"mean": [float(m) for m in IMAGENET_DEFAULT_MEAN],
                               "std": [float(s) for s in IMAGENET_DEFAULT_STD]}
    loaders = StreamLoader(train_set, batch, train=True, **common), StreamLoader(test_set, eval_batch, train=False,
                                                                                 **common)
    for loader, total in zip(loaders, totals):
        loader.split_images, loader.class_names = total, names
    return (*loaders, InputShape(3, shape.size, classes))


def loader_workers(asked: int) -> int:
    """``data.num_workers``, at most one per CPU this process may use (what PyTorch's DataLoader suggests; more
    made it print its long warning once per loader), with one warning line when lowered."""
    cpus = len(available_cores())
    if asked > cpus:
        warnings.warn(f"data.num_workers={asked} is more than the {cpus} CPUs this process may use: "
                      f"{cpus} loader workers", stacklevel=3)
        return cpus
    return asked


def _stream_root(data: DataSource) -> Path:
    root = Path(data.root).expanduser()
    if root.is_file():
        raise DataError(f"data.root {root} is a file: dataset {data.dataset} is streamed from an extracted ImageFolder "
                        "tree (train/ and val/); extract it, or use dataset: imagefolder, which reads a .tar.gz of "
                        "small images into memory")
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder (an ImageFolder tree with train/ and val/)")
    return root


def check_data(data: DataSource, *, planning: bool = False, splits: tuple[str, ...] = ("train", "test")) -> None:
    """What loading ``data`` refuses at once, checked without reading an image (``--dry-run``; a run checks it in
    full by loading): a missing ``data.root`` (or ./data/<dataset>) or an empty one, with the loader's own error
    (it fails before reading anything there), an ImageFolder tree without its train or test folder, and a folder
    without the files of a torchvision dataset (by name). Files of the right names but wrong contents, and
    archives, are only known to be wrong once read. ``planning`` (a dry run, which
    may size a run for another machine, as ``core.device.planning_device``): a warning instead of the error.
    ``splits``: the ones the run reads (a search reads the training split alone)."""
    with refused_here(planning):
        _check_data(data, splits)


def _check_data(data: DataSource, splits: tuple[str, ...]) -> None:
    spec = DATASETS.get(data.dataset)
    if not spec.reads_root:
        return
    if spec.streamed:
        root = _stream_root(data)
        for split in splits:
            find_split(root, split, nested=False)
        return
    root = default_root(data).expanduser()
    if data.download and not spec.from_tree:
        return  # torchvision fetches it into root
    if not root.exists() or (root.is_file() and not spec.from_tree) or (root.is_dir() and not any(root.iterdir())):
        spec.load(data, "train")  # raises at once, with the message a run gets
    elif spec.from_tree and root.is_file() and not tarfile.is_tarfile(root):  # what reading it would say, unread
        raise DataError(f"cannot read {root}: it is not a .tar, .tar.gz, .tar.bz2 or .tar.xz archive")
    elif spec.from_tree and root.is_dir():
        for split in splits:
            find_split(root, split)
    elif spec.missing is not None and root.is_dir():
        missing = spec.missing(root)  # what loading would refuse, named without reading a file
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise not_found(data.dataset, root, f"no {shown}")


def training_steps_at_most(data: DataSource, batch: int) -> Optional[int]:
    """An epoch's training steps on one process as ``data.limit`` bounds them, without loading (``None``: no limit;
    the dataset may hold fewer images): a streamed loader leaves out a last partial batch, an in-memory one a last
    batch of one image (:meth:`TensorLoader._lone_last`)."""
    if data.limit is None:
        return None
    if DATASETS.get(data.dataset).streamed:
        return data.limit // batch
    return -(-data.limit // batch) - (data.limit % batch == 1)


def check_augmentation(data, size: int) -> None:
    """Refuse a ``data.cutout`` hole as wide as the ``size`` x ``size`` images or wider: it blanks most or all of
    every training image (DARTS' 16 on 8x8 digits trained at chance, silently); and a ``data.crop_padding`` as
    wide: its random crops miss the image, wholly or mostly (100 on 8x8: 99.5% blank crops, silently)."""
    padding = getattr(data, "crop_padding", 0)
    if data.augment and padding and padding >= size:
        raise DataError(f"data.crop_padding={padding} is not smaller than the {size}x{size} training images: its "
                        f"random crops would miss most of the image, or all of it; set data.crop_padding below "
                        f"{size} (DARTS: 4 on 32x32) or 0")
    if data.augment and data.cutout and data.cutout >= size:
        raise DataError(f"data.cutout={data.cutout} is not smaller than the {size}x{size} training images: its hole "
                        f"would blank most or all of every image; set data.cutout below {size} (DARTS: 16 on 32x32) "
                        "or 0")


def _tensor_loaders(data: TrainingData, batch: int, eval_batch: int, *, seed, device, channels_last, rank, world_size):
    train = load_images(data, "train")
    test = load_images(data, "test")
    check_same_classes(train.classes, test.classes, data.root or data.dataset)
    if test.size != train.size:  # the test error would be measured on another input than the one trained and saved
        raise DataError(f"{data.root or data.dataset}: the test images are {test.size}x{test.size}, the training "
                        f"images {train.size}x{train.size}; set data.image_size to resize both")
    check_augmentation(data, train.size)
    mean, std = train.stats()
    train_loader = TensorLoader(
        train, batch, mean=mean, std=std, device=device, shuffle=True, augment=data.augment, flip=data.flips,
        crop_padding=data.crop_padding, cutout=data.cutout, seed=seed, channels_last=channels_last,
        rank=rank, world_size=world_size,
    )
    if world_size > 1:  # every test image once, over all ranks
        test = test.subset(torch.arange(rank, len(test), world_size))
    test_loader = TensorLoader(test, eval_batch, mean=mean, std=std, device=device, shuffle=False,
                               channels_last=channels_last)
    return train_loader, test_loader, InputShape(train.channels, train.size, train.num_classes)


def check_same_classes(train: list[str], test: list[str], where: object) -> None:
    """Labels are class indices in sorted folder order: the test split must have the training split's classes,
    or class ``c`` of the test set would be scored as another class."""
    if list(train) == list(test):
        return
    only_train = [c for c in train if c not in test]
    only_test = [c for c in test if c not in train]
    parts = ([f"only in train: {', '.join(only_train[:5])}"] if only_train else []) + (
        [f"only in the test split: {', '.join(only_test[:5])}"] if only_test else [])
    raise DataError(
        f"{where}: the training and test splits have different class folders ({'; '.join(parts) or 'in another order'}); "
        "labels are class indices, so they must list the same classes"
    )


def training_loaders(data: TrainingData, *, batch: int, eval_batch: int, seed: int, device: torch.device,
                     channels_last: bool, rank: int = 0, world_size: int = 1, num_classes: Optional[int] = None):
    """(train loader, test loader, input shape) for training a network from scratch.

    ``batch`` is this rank's share of the global batch; ``num_classes``
    overrides the dataset's class count (the network's head).
    """
    common = dict(seed=seed, device=device, channels_last=channels_last, rank=rank, world_size=world_size)
    if DATASETS.get(data.dataset).streamed:
        train, test, shape = _stream_loaders(data, expected_shape(data), batch, eval_batch, **common)
    else:
        train, test, shape = _tensor_loaders(data, batch, eval_batch, **common)
    check_num_classes(num_classes, shape.num_classes, data.dataset)
    return train, test, InputShape(shape.channels, shape.size, num_classes or shape.num_classes)
