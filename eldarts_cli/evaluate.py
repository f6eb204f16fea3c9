"""Train a discovered cell from scratch and measure it (paper sections 3.2-3.3, Tables 1-2).

Recipe flow: ``EvalRecipe`` (YAML, strict) -> ``build_eval_network`` and the
data loaders -> ``run_evaluation``, which trains with SGD (drop path
increased linearly, auxiliary loss, gradient clipping, timm's per-epoch
cosine or step schedule with optional warm-up, label smoothing, optional
EMA of the weights) and leaves a run folder:

``recipe.yaml`` (resolved), ``metrics.jsonl``/``metrics.csv`` (one row per
epoch), ``checkpoint.pt`` (atomic, each epoch; ``--resume``),
``weights.pt``, ``model.onnx`` and ``results.json``.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it trains with
DistributedDataParallel: gloo on CPU, nccl on CUDA; ``data.batch_size`` is
the global batch, split over the processes; only rank 0 writes files.

Model size: ``params_m`` counts parameters without the auxiliary head, as
papers do. ``macs_m`` is thop's count at the recipe's input size, batch 1,
eval mode, without the auxiliary head: thop counts multiply-adds of convs
and linear layers *and* of BatchNorm, pooling and element-wise additions, so
it is larger than a conv+FC-only count (``macs_conv_fc_m``, also reported),
and neither is exactly the figure papers print (DARTS_V2 at 224x224:
published 574M).
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .device import autocast, device_name, grad_scaler, resolve_device
from .errors import CheckpointError, DataError, RecipeError, RunFolderError
from .genotypes import Genotype
from .network import NETWORKS, EvalNetwork, build_network, count_parameters
from .published import MOBILE_MACS_LIMIT_M
from .recipe import DataConfig, OptimConfig, RuntimeConfig, StrictModel, dump_recipe, recipe_differences, recipe_to_dict
from .registry import suggest
from .runs import MetricsLogger, holds_run, prepare_run_dir, write_json

#: Datasets read image by image from an ImageFolder tree with timm's transforms (not held in memory).
STREAMED_DATASETS = ("imagenet",)

MACS_CONVENTION = (
    "thop 'MACs' at batch 1, eval mode, auxiliary head excluded: multiply-adds of conv and linear layers "
    "plus thop's counts for BatchNorm, pooling and additions; macs_conv_fc_m counts conv and linear only"
)

Report = Callable[[dict], None]


# ---------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------


class EvalDataConfig(DataConfig):
    """Data for training from scratch; defaults are the paper's CIFAR-10 settings (section 3.2)."""

    batch_size: int = Field(96, gt=0, description="global batch, split over DDP processes")
    cutout: int = Field(16, ge=0, description="cutout square side in pixels (0 = off)")
    # timm transforms of the streamed (ImageFolder) datasets, e.g. imagenet
    color_jitter: Optional[float] = Field(0.4, ge=0, description="imagenet: timm color jitter")
    auto_augment: Optional[str] = Field(None, description="imagenet: timm auto-augment policy, e.g. rand-m9-mstd0.5")
    interpolation: str = Field("bilinear", description="imagenet: resize interpolation")
    crop_pct: float = Field(0.875, gt=0, le=1, description="imagenet: center-crop share at test time")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        from .data import DATASETS

        if name not in DATASETS and name not in STREAMED_DATASETS:
            known = DATASETS.names() + list(STREAMED_DATASETS)
            raise ValueError(f"unknown dataset '{name}'{suggest(name, known)}; known: {', '.join(known)}")
        return name


class EvalNetworkConfig(StrictModel):
    """The network trained from scratch: cifar (section 3.2) or imagenet (section 3.3, mobile setting)."""

    kind: str = Field("cifar", description="registered network (eldarts_cli.network.NETWORKS)")
    channels: int = Field(36, gt=0, description="initial channels C")
    layers: int = Field(20, ge=3, description="cells; reductions at 1/3 and 2/3")
    auxiliary: bool = Field(True, description="auxiliary head after the cell at 2/3 of the depth")
    auxiliary_weight: float = Field(0.4, ge=0)
    drop_path: float = Field(0.2, ge=0, lt=1, description="drop-path probability, raised linearly from 0 to this")
    num_classes: Optional[int] = Field(None, gt=1, description="default: the dataset's")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in NETWORKS:
            raise ValueError(f"unknown network '{kind}'{suggest(kind, NETWORKS.names())}; known: {', '.join(NETWORKS)}")
        return kind


class EvalOptimConfig(OptimConfig):
    """SGD on the weights (section 3.2: lr 0.025, momentum 0.9, weight decay 3e-4, gradients clipped at 5)."""

    lr: float = Field(0.025, gt=0)


class ScheduleConfig(StrictModel):
    """Per-epoch learning rate by timm's schedulers: optional linear warm-up, then cosine or step decay."""

    kind: Literal["cosine", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: float = Field(0.0, ge=0, description="lr at the start of the warm-up")
    decay_epochs: float = Field(1.0, gt=0, description="step: epochs between decays")
    decay_rate: float = Field(0.97, gt=0, le=1, description="step: lr multiplier at each decay")


class TrainConfig(StrictModel):
    epochs: int = Field(600, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ema: bool = Field(False, description="also keep (and test) an exponential moving average of the weights")
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    eval_every: int = Field(1, gt=0, description="test every N epochs (and always after the last)")
    max_steps: Optional[int] = Field(None, gt=0, description="cap on steps per epoch (smoke runs)")
    onnx: bool = Field(True, description="export the trained network to model.onnx")


class EvalRuntimeConfig(RuntimeConfig):
    """``auto``: bf16 autocast (fp16 without bf16 support) and channels_last on CUDA; on CPU, what bench/ measured faster."""

    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: Optional[bool] = Field(None, description="default: on CUDA and on CPU (measured faster)")


class EvalRecipe(StrictModel):
    """Training a genotype from scratch; the defaults are the paper's CIFAR-10 settings (section 3.2)."""

    name: str = "eval-cifar10"
    seed: int = 0
    data: EvalDataConfig = EvalDataConfig()
    network: EvalNetworkConfig = EvalNetworkConfig()
    optim: EvalOptimConfig = EvalOptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    runtime: EvalRuntimeConfig = EvalRuntimeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "EvalRecipe":
        if self.schedule.warmup_epochs >= self.train.epochs and self.train.epochs > 1:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be below train.epochs ({self.train.epochs})"
            )
        if self.data.dataset in STREAMED_DATASETS and self.data.root is None:
            raise ValueError(f"dataset {self.data.dataset} needs data.root: an ImageFolder tree with train/ and val/")
        return self


#: Fields that may differ between a run and its ``--resume`` (they do not change the result).
RESUMABLE_CHANGES = ("runtime.", "data.num_workers", "data.root", "data.download", "data.eval_batch_size")


# ---------------------------------------------------------------------------
# Shapes, sizes
# ---------------------------------------------------------------------------

#: (channels, image size, classes) of datasets with a fixed shape, for --dry-run without the data.
DATASET_SHAPES = {
    "cifar10": (3, 32, 10),
    "cifar100": (3, 32, 100),
    "svhn": (3, 32, 10),
    "mnist": (1, 28, 10),
    "fashion_mnist": (1, 28, 10),
    "digits": (1, 8, 10),
    "fake": (3, 32, 10),
    "imagenet": (3, 224, 1000),
}


@dataclass(frozen=True)
class InputShape:
    channels: int
    size: int
    num_classes: int


def expected_input(recipe: EvalRecipe) -> InputShape:
    """The network's input without loading the data (``imagefolder``: classes counted from the tree)."""
    data = recipe.data
    channels, size, classes = DATASET_SHAPES.get(data.dataset, (3, 32, 10))
    if data.dataset == "imagefolder" and data.root is not None and Path(data.root).is_dir():
        for split in ("train", "val", "test"):
            folder = Path(data.root) / split
            if folder.is_dir():
                classes = sum(1 for p in folder.iterdir() if p.is_dir()) or classes
                break
    return InputShape(channels, data.image_size or size, recipe.network.num_classes or classes)


def build_eval_network(recipe: EvalRecipe, genotype: Genotype, shape: InputShape) -> EvalNetwork:
    net = recipe.network
    return build_network(
        net.kind,
        genotype=genotype,
        num_classes=shape.num_classes,
        channels=net.channels,
        layers=net.layers,
        auxiliary=net.auxiliary,
        in_channels=shape.channels,
    )


def _conv_fc_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of convolutions and linear layers only, for one image."""
    total = 0

    def conv(module: nn.Conv2d, _, out):
        nonlocal total
        total += out[0].numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)

    def linear(module: nn.Linear, _, out):
        nonlocal total
        total += out[0].numel() * module.in_features

    hooks = [
        m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def count_params_macs(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Parameters (M, auxiliary head excluded) and MACs (M, thop and conv+FC) for one ``(C, H, W)`` image."""
    from thop import profile

    net = copy.deepcopy(getattr(model, "module", model)).cpu().float().eval()
    net = net.to(memory_format=torch.contiguous_format)
    if getattr(net, "auxiliary_head", None) is not None:
        net.auxiliary_head = None
    x = torch.zeros(1, *input_size)
    conv_fc = _conv_fc_macs(net, x)
    macs, _ = profile(net, inputs=(x,), verbose=False)
    return {
        "params_m": count_parameters(model) / 1e6,
        "params_with_aux_m": count_parameters(model, include_auxiliary=True) / 1e6,
        "macs_m": float(macs) / 1e6,
        "macs_conv_fc_m": conv_fc / 1e6,
    }


def describe(recipe: EvalRecipe, genotype: Genotype) -> dict[str, Any]:
    """What ``--dry-run`` prints: the network's size at the recipe's input size, no training."""
    shape = expected_input(recipe)
    model = build_eval_network(recipe, genotype, shape)
    sizes = count_params_macs(model, (shape.channels, shape.size, shape.size))
    info: dict[str, Any] = {
        "genotype": genotype.name or "genotype",
        "network": recipe.network.kind,
        "channels": recipe.network.channels,
        "layers": recipe.network.layers,
        "input_size": [shape.channels, shape.size, shape.size],
        "num_classes": shape.num_classes,
        **{k: round(v, 3) for k, v in sizes.items()},
        "macs_convention": MACS_CONVENTION,
        "table": published_table(recipe, shape),
    }
    if recipe.network.kind == "imagenet":
        info["mobile_limit_m"] = MOBILE_MACS_LIMIT_M
        info["exceeds_mobile_limit"] = sizes["macs_m"] > MOBILE_MACS_LIMIT_M
    info["recipe"] = recipe_to_dict(recipe)
    return info


def published_table(recipe: EvalRecipe, shape: InputShape) -> Optional[str]:
    """Which of the paper's tables this run compares with: 'imagenet' (Table 2), 'cifar10' (Table 1) or None."""
    if recipe.network.kind == "imagenet":
        return "imagenet"
    if recipe.data.dataset == "cifar10" or (
        recipe.data.dataset == "imagefolder" and shape.size == 32 and shape.num_classes == 10
    ):
        return "cifar10"
    return None


# ---------------------------------------------------------------------------
# Distributed data parallel
# ---------------------------------------------------------------------------


@dataclass
class Distributed:
    """This process's place in a torchrun launch (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Distributed":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on CPU, nccl on CUDA); each process takes its local GPU."""
        if not self.enabled:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True
        return device

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def close(self, wait: bool = True) -> None:
        """Leave the process group; ``wait=False`` after an error, when peers may never reach a barrier."""
        if self.owns_group:
            import torch.distributed as dist

            try:
                if wait:  # every rank leaves together: a rank tearing gloo down alone aborts its peer
                    dist.barrier()
            finally:
                dist.destroy_process_group()
                self.owns_group = False


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


class StreamLoader:
    """An ImageFolder split read by DataLoader workers with timm's transforms (ImageNet).

    Each epoch's order comes from ``DistributedSampler(seed, epoch)``, so it
    is the same after a resume; test batches are sharded ``rank::world``.
    """

    def __init__(self, dataset, batch_size: int, *, train: bool, seed: int, num_workers: int,
                 device: torch.device, channels_last: bool, dist: Distributed):
        self.dataset, self.batch_size, self.train = dataset, batch_size, train
        self.seed, self.num_workers, self.device = seed, num_workers, device
        self.channels_last, self.dist = channels_last, dist

    def _sampler(self, epoch: int):
        from torch.utils.data import DistributedSampler

        if self.train:
            sampler = DistributedSampler(
                self.dataset, self.dist.world_size, self.dist.rank, shuffle=True, seed=self.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
            return sampler
        return range(self.dist.rank, len(self.dataset), self.dist.world_size)

    def __len__(self) -> int:
        n = len(self._sampler(0))
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self._sampler(epoch),
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=self.train,
            persistent_workers=False,
        )
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in loader:
            yield x.to(self.device, non_blocking=True, memory_format=memory_format), y.to(self.device, non_blocking=True)


def _stream_split(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("val", "validation", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"{root} has no {' or '.join(names)} folder: an ImageNet root needs train/<class>/*.JPEG and val/<class>/*.JPEG"
    )


def _stream_loaders(recipe: EvalRecipe, shape: InputShape, device, channels_last, dist, per_rank_batch, eval_batch):
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    data = recipe.data
    root = Path(data.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {root} does not exist or is not a folder (an ImageFolder tree with train/ and val/)")
    common = dict(input_size=(3, shape.size, shape.size), interpolation=data.interpolation)
    train_tf = create_transform(
        **common, is_training=True, color_jitter=data.color_jitter, auto_augment=data.auto_augment
    )
    test_tf = create_transform(**common, is_training=False, crop_pct=data.crop_pct)
    try:
        train_set = ImageFolder(str(_stream_split(root, "train")), transform=train_tf)
        test_set = ImageFolder(str(_stream_split(root, "test")), transform=test_tf)
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"cannot read the ImageFolder tree in {root}: {error}") from None
    if data.limit:
        train_set = torch.utils.data.Subset(train_set, range(min(data.limit, len(train_set))))
    if data.test_limit:
        test_set = torch.utils.data.Subset(test_set, range(min(data.test_limit, len(test_set))))
    num_classes = len(getattr(train_set, "classes", None) or train_set.dataset.classes)
    kw = dict(seed=recipe.seed, num_workers=data.num_workers, device=device, channels_last=channels_last, dist=dist)
    return (
        StreamLoader(train_set, per_rank_batch, train=True, **kw),
        StreamLoader(test_set, eval_batch, train=False, **kw),
        InputShape(3, shape.size, recipe.network.num_classes or num_classes),
    )


def _tensor_loaders(recipe: EvalRecipe, device, channels_last, dist, per_rank_batch, eval_batch):
    from .data import TensorLoader, load_images

    data = recipe.data
    train = load_images(data, "train")
    test = load_images(data, "test")
    mean, std = train.stats()
    train_loader = TensorLoader(
        train, per_rank_batch, mean=mean, std=std, device=device, shuffle=True, augment=data.augment,
        crop_padding=data.crop_padding, cutout=data.cutout, seed=recipe.seed, channels_last=channels_last,
        rank=dist.rank, world_size=dist.world_size,
    )
    if dist.enabled:  # every test image once, over all ranks
        test = test.subset(torch.arange(dist.rank, len(test), dist.world_size))
    test_loader = TensorLoader(
        test, eval_batch, mean=mean, std=std, device=device, shuffle=False, channels_last=channels_last
    )
    shape = InputShape(train.channels, train.size, recipe.network.num_classes or train.num_classes)
    return train_loader, test_loader, shape


def build_loaders(recipe: EvalRecipe, device: torch.device, channels_last: bool, dist: Distributed):
    """(train loader, test loader, input shape); ``data.batch_size`` is split over the ranks."""
    batch = recipe.data.batch_size
    if batch % dist.world_size:
        raise RecipeError(
            f"data.batch_size={batch} is the global batch: it must divide over the {dist.world_size} processes"
        )
    per_rank = batch // dist.world_size
    eval_batch = recipe.data.eval_batch_size or per_rank
    if recipe.data.dataset in STREAMED_DATASETS:
        return _stream_loaders(recipe, expected_input(recipe), device, channels_last, dist, per_rank, eval_batch)
    return _tensor_loaders(recipe, device, channels_last, dist, per_rank, eval_batch)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def resolve_precision(recipe: EvalRecipe, device: torch.device) -> tuple[str, bool]:
    """(amp, channels_last) with ``auto`` resolved for the device."""
    amp = recipe.runtime.amp
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "none"  # fp32 numerics on CPU; bf16 autocast is an opt-in (bench/results-eval-cpu.md)
    channels_last = recipe.runtime.channels_last
    if channels_last is None:
        # CUDA: tensor-core layout. CPU: oneDNN's depthwise convolutions are faster in channels_last
        # (1.4x-1.6x for DARTS_V2 in bench/results-eval-cpu.md).
        channels_last = True
    return amp, channels_last


def make_scheduler(recipe: EvalRecipe, optimizer: torch.optim.Optimizer):
    from timm.scheduler import CosineLRScheduler, StepLRScheduler

    s = recipe.schedule
    if s.kind == "cosine":
        return CosineLRScheduler(
            optimizer, t_initial=recipe.train.epochs, lr_min=recipe.optim.lr_min,
            warmup_t=s.warmup_epochs, warmup_lr_init=s.warmup_lr, warmup_prefix=True,
        )
    return StepLRScheduler(
        optimizer, decay_t=s.decay_epochs, decay_rate=s.decay_rate,
        warmup_t=s.warmup_epochs, warmup_lr_init=s.warmup_lr, warmup_prefix=True,
    )


def genotype_cells(genotype: Genotype) -> dict:
    """The architecture alone (the name does not matter when comparing runs)."""
    return genotype.model_dump(mode="json", exclude={"name"})


def _check_resume(state: dict, recipe: EvalRecipe, genotype: Genotype, out: Path) -> None:
    if state.get("kind") != "evaluate":
        raise CheckpointError(f"{out}/checkpoint.pt is not from an evaluation run (kind: {state.get('kind')!r})")
    if state["genotype"] != genotype_cells(genotype):
        theirs = state.get("genotype_name") or "another genotype"
        raise CheckpointError(
            f"{out} was trained with {theirs}, not with {genotype.name or 'the genotype given'}: the cells differ; "
            f"resume with the same GENOTYPE, or start a new run with another --out"
        )
    changes = recipe_differences(state["recipe"], recipe_to_dict(recipe), RESUMABLE_CHANGES)
    if changes:
        raise CheckpointError(
            f"the recipe differs from the one {out} was trained with ({'; '.join(changes)}); "
            "resume with the same recipe and --set overrides"
        )


def _accuracy_counts(logits: torch.Tensor, target: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    top = logits.topk(k, dim=1).indices
    hits = top.eq(target.view(-1, 1))
    return hits[:, 0].sum(), hits.any(dim=1).sum()


@torch.no_grad()
def score_test_set(model: nn.Module, loader, device, amp: str, dist: Distributed, num_classes: int) -> dict[str, float]:
    """Test loss, top-1 and top-5 accuracy (%) over the whole test set (summed over ranks)."""
    model.eval()
    k = min(5, num_classes)
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, top-1 hits, top-5 hits
    images = 0
    for x, y in loader.epoch(0):
        with autocast(device, amp):
            logits = model(x).float()
        top1, top5 = _accuracy_counts(logits, y, k)
        sums += torch.stack([F.cross_entropy(logits, y, reduction="sum"), top1, top5]).double()
        images += len(y)
    totals = torch.cat([sums, torch.tensor([float(images)], dtype=torch.float64, device=device)])
    loss, top1, top5, n = dist.sum(totals).tolist()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n}


class TrainStep:
    """One SGD step: forward (autocast), loss with the auxiliary term, backward, clip, update.

    Shared by the training loop and ``bench/bench_eval.py``; nothing in it
    waits for the device (no ``.item()``).
    """

    def __init__(self, model: nn.Module, optimizer, scaler, *, device: torch.device, amp: str,
                 grad_clip: Optional[float], label_smoothing: float = 0.0, auxiliary_weight: float = 0.4):
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.device, self.amp, self.grad_clip = device, amp, grad_clip
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.auxiliary_weight = auxiliary_weight
        self.params = list(model.parameters())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp):
            output = self.model(x)
            logits, aux_logits = output if isinstance(output, tuple) else (output, None)
            loss = self.criterion(logits, y)
            if aux_logits is not None:
                loss = loss + self.auxiliary_weight * self.criterion(aux_logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()


def make_optimizer(recipe: EvalRecipe, model: nn.Module) -> torch.optim.Optimizer:
    o = recipe.optim
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, foreach=True)


def run_evaluation(
    recipe: EvalRecipe,
    genotype: Genotype,
    out: Path,
    *,
    resume: bool = False,
    report: Optional[Report] = None,
    stop_after_epochs: Optional[int] = None,
) -> dict[str, Any]:
    """Train ``genotype`` from scratch as ``recipe`` says; return (and on rank 0 write) results.

    ``stop_after_epochs`` ends this process after that many epochs (a
    pre-emption, for tests); the run folder can then be ``--resume``d.
    """
    dist = Distributed.from_env()
    device = dist.setup(resolve_device(recipe.runtime.device))
    try:
        results = _train(recipe, genotype, Path(out), device, dist, resume, report or (lambda event: None), stop_after_epochs)
    except BaseException:
        dist.close(wait=False)
        raise
    dist.close()
    return results


def _train(recipe, genotype, out, device, dist, resume, report, stop_after_epochs):
    started = time.perf_counter()
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    amp, channels_last = resolve_precision(recipe, device)

    # Everything that can fail is checked before anything is written.
    state = None
    if resume:
        if not (out / "checkpoint.pt").exists():
            prepare_run_dir(out, resume=True)  # raises the run-folder message
        state = load_checkpoint(out / "checkpoint.pt")
        _check_resume(state, recipe, genotype, out)
    elif holds_run(out):
        raise RunFolderError(f"{out} already holds a run; resume it with --resume {out}, or choose another --out")
    train_loader, test_loader, shape = build_loaders(recipe, device, channels_last, dist)

    torch.manual_seed(recipe.seed)  # the same initial weights on every rank
    model = build_eval_network(recipe, genotype, shape)
    sizes = count_params_macs(model, (shape.channels, shape.size, shape.size))
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = make_optimizer(recipe, model)
    scaler = grad_scaler(device, amp)
    ema = None
    if recipe.train.ema:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.train.ema_decay)
    start_epoch, wall_time = 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.module.load_state_dict(state["ema"])
        start_epoch, wall_time = state["epoch"], state["wall_time_s"]
        torch.set_rng_state(state["rng_cpu"])
        if device.type == "cuda" and state.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(state["rng_cuda"], device)
    else:
        torch.manual_seed(recipe.seed + dist.rank)  # drop-path masks differ between ranks
    scheduler = make_scheduler(recipe, optimizer)
    train_model: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    dist.barrier()  # every rank passed the checks: rank 0 may write now
    logger = None
    if dist.is_main:
        prepare_run_dir(out, resume)
        dump_recipe(recipe, out / "recipe.yaml")
        write_json(out / "genotype.json", genotype.model_dump(mode="json", exclude_none=True))
        logger = MetricsLogger(out, start_epoch=start_epoch + 1)

    epochs = recipe.train.epochs
    report({
        "event": "start", "epochs": epochs, "start_epoch": start_epoch, "device": device_name(device),
        "world_size": dist.world_size, "amp": amp, "channels_last": channels_last,
        "steps_per_epoch": min(len(train_loader), recipe.train.max_steps or len(train_loader)), **sizes,
    })
    step = TrainStep(
        train_model, optimizer, scaler, device=device, amp=amp, grad_clip=recipe.optim.grad_clip,
        label_smoothing=recipe.train.label_smoothing, auxiliary_weight=recipe.network.auxiliary_weight,
    )
    last_test: dict[str, float] = {}
    last_ema: dict[str, float] = {}
    end = epochs if stop_after_epochs is None else min(epochs, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end):
        epoch_start = time.perf_counter()
        scheduler.step(epoch)
        lr = optimizer.param_groups[0]["lr"]
        model.drop_path_prob = recipe.network.drop_path * epoch / epochs
        train_model.train()
        sums = torch.zeros(2, device=device)  # loss * n, top-1 hits
        steps = seen = 0
        for x, y in train_loader.epoch(epoch):
            if recipe.train.max_steps and steps >= recipe.train.max_steps:
                break
            loss, logits = step(x, y)
            if ema is not None:
                ema.update(model)
            with torch.no_grad():  # kept on the device: no synchronisation per step
                top1, _ = _accuracy_counts(logits, y, 1)
                sums += torch.stack([loss.float() * len(y), top1.float()])
            steps += 1
            seen += len(y)
            if steps % recipe.runtime.log_every == 0:
                report({"event": "step", "epoch": epoch + 1, "step": steps, "loss": float(loss)})
        totals = torch.cat([sums.double(), torch.tensor([float(seen)], dtype=torch.float64, device=device)])
        train_loss, train_top1, seen = dist.sum(totals).tolist()
        seen = max(seen, 1.0)
        train_time = time.perf_counter() - epoch_start
        row: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "drop_path": model.drop_path_prob,
            "train_loss": train_loss / seen, "train_top1": 100 * train_top1 / seen,
            "images_per_s": seen / train_time,
        }
        if (epoch + 1) % recipe.train.eval_every == 0 or epoch + 1 == epochs:
            last_test = score_test_set(model, test_loader, device, amp, dist, shape.num_classes)
            row.update({f"test_{key}": value for key, value in last_test.items()})
            if ema is not None:
                last_ema = score_test_set(ema.module, test_loader, device, amp, dist, shape.num_classes)
                row.update({f"ema_test_{key}": value for key, value in last_ema.items()})
        row["epoch_time_s"] = time.perf_counter() - epoch_start
        wall_time += row["epoch_time_s"]
        if dist.is_main:
            logger.log(row)
            save_checkpoint(
                {
                    "kind": "evaluate", "epoch": epoch + 1, "recipe": recipe_to_dict(recipe),
                    "genotype": genotype_cells(genotype), "genotype_name": genotype.name,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "ema": ema.module.state_dict() if ema is not None else None,
                    "rng_cpu": torch.get_rng_state(),
                    "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
                    "wall_time_s": wall_time, "last_test": last_test,
                },
                out / "checkpoint.pt",
            )
        report({"event": "epoch", **row})
    if end < epochs:
        report({"event": "stopped", "epoch": end})
        return {"completed": False, "epochs_done": end, "epochs": epochs}

    if not last_test and state is not None:  # resumed a run whose last epoch was already done
        last_test = state.get("last_test") or {}
    results = {
        "completed": True,
        "name": recipe.name,
        "genotype": genotype.name or "genotype",
        "genotype_cells": genotype_cells(genotype),
        "dataset": recipe.data.dataset,
        "network": recipe.network.kind,
        "channels": recipe.network.channels,
        "layers": recipe.network.layers,
        "input_size": [shape.channels, shape.size, shape.size],
        "num_classes": shape.num_classes,
        "test_top1_error": round(100 - last_test["top1"], 4) if last_test else None,
        "test_top5_error": round(100 - last_test["top5"], 4) if last_test else None,  # top-k, k = min(5, classes)
        **{key: round(value, 4) for key, value in sizes.items()},
        "macs_convention": MACS_CONVENTION,
        "epochs": epochs,
        "wall_time_s": round(wall_time, 2),
        "device": device_name(device),
        "world_size": dist.world_size,
        "amp": amp,
        "channels_last": channels_last,
        "table": published_table(recipe, shape),
    }
    if last_ema:
        results["ema_test_top1_error"] = round(100 - last_ema["top1"], 4)
        results["ema_test_top5_error"] = round(100 - last_ema["top5"], 4)
    if recipe.network.kind == "imagenet":
        results["mobile_limit_m"] = MOBILE_MACS_LIMIT_M
        results["exceeds_mobile_limit"] = sizes["macs_m"] > MOBILE_MACS_LIMIT_M
    if dist.is_main:
        save_weights(model, ema, recipe, genotype, shape, out / "weights.pt")
        results["weights"] = "weights.pt"
        if recipe.train.onnx:
            results["onnx"] = export_onnx(model, shape, out / "model.onnx")
        results["run_time_s"] = round(time.perf_counter() - started, 2)
        write_json(out / "results.json", results)
    report({"event": "done", **results})
    return results


def save_weights(model: nn.Module, ema, recipe: EvalRecipe, genotype: Genotype, shape: InputShape, path: Path) -> None:
    """The trained network and what rebuilds it (``build_eval_network(recipe, genotype, shape)``)."""
    from .runs import atomic_write_bytes
    import io

    buffer = io.BytesIO()
    torch.save(
        {
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "ema_state_dict": {k: v.cpu() for k, v in ema.module.state_dict().items()} if ema is not None else None,
            "genotype": genotype.model_dump(mode="json", exclude_none=True),
            "network": recipe.network.model_dump(mode="json"),
            "input": {"channels": shape.channels, "size": shape.size, "num_classes": shape.num_classes},
        },
        buffer,
    )
    atomic_write_bytes(path, buffer.getvalue())


def export_onnx(model: nn.Module, shape: InputShape, path: Path) -> Optional[str]:
    """Export the network (eval mode, no auxiliary head) to ONNX; ``None`` if the exporter fails."""
    net = copy.deepcopy(model).cpu().float().eval().to(memory_format=torch.contiguous_format)
    x = torch.zeros(1, shape.channels, shape.size, shape.size)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                net, (x,), str(tmp), dynamo=False, opset_version=17,
                input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            )
        os.replace(tmp, path)
    except Exception as error:  # an exporter gap must not lose a finished training run
        tmp.unlink(missing_ok=True)
        warnings.warn(f"ONNX export failed ({type(error).__name__}: {error}); the weights are in weights.pt")
        return None
    return path.name
