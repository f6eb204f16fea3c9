"""The EL-DARTS search loop (paper Algorithm 1, section 3.2).

Per step, bilevel optimisation (first order by default; ``search.order:
second`` uses DARTS' unrolled approximation instead of step 1):

1. architecture step on a batch of the architecture half: loss
   ``L_val + lambda * sum_e H(softmax(alpha_e / T))`` (eq. 9), plus the
   hardware cost term with a ``cost:`` section (``engines/cost.py``),
   gradients for ``alpha`` and the DCSS edge coefficients only (no weight
   gradients);
2. weight step on a batch of the weight half: ``L_train`` with the
   architecture detached (no architecture gradients), SGD with clipping.

Architecture steps start after ``search.warmup_epochs`` (PC-DARTS' warm-up).
``T(t) = max(T_min, T_init * beta^t)`` with ``t`` the epoch (eq. 8).
With ``partial_channels.sampling: random`` each of the two steps draws new
partial channels first (Algorithm 1), from a generator seeded by
``(seed, epoch, step)``.

At the end the genotype is derived (``derive.method``: magnitude, or
perturbation in ``engines/derive.py``) and its margins measured
(``models/decisiveness.py``); a search in the ``nb201`` space runs the same
loop on :class:`~eldarts_cli.models.nb201_search.NB201Supernet`.

An atomic checkpoint is written after every epoch; each epoch's data order
and augmentation depend only on ``(seed, epoch)``, so a resumed search ends
with the same genotype as one never interrupted (on CPU).

Under ``torchrun`` the search is data-parallel (first order only):
``data.batch_size`` is the global batch and each rank reads its slice of
every global batch of both halves (``data.loaders``). Weights, architecture
weights and edge coefficients live in one module wrapped in PyTorch's
``DistributedDataParallel``, which averages the *weight* gradients of the
weight step; the architecture parameters are excluded from DDP's reducer,
because the architecture step computes only their gradients
(``backward(inputs=...)``) and DDP's reducer would wait for weight gradients
that never come. The architecture step therefore runs on the module itself
and averages its few gradients in one all-reduce. Neither step computes the
other's gradients. At each epoch end the ranks' architectures are compared
bit for bit, BatchNorm statistics are averaged, and rank 0 alone derives the
genotype and writes files; the checkpoint keeps every rank's random state.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..config.base import (dump_recipe, edited_recipe_hint, recipe_differences, recipe_to_dict,
                           resume_recipe as _resume_recipe)
from ..config.search import DIVERGENCE_FIXES, RESUMABLE_CHANGES, SearchRecipe
from ..core.device import autocast, device_name, grad_scaler, planning_device, resolve_device, resolve_precision
from ..core.errors import (CheckpointError, DataError, DistributedError, RecipeError, ResourceError,
                           StorageError, refused_here)
from ..core import allocator
from ..core.threads import ThreadGovernor
from ..data.datasets import (
    DATASETS, ImageSet, expected_shape, load_images, split_indices, split_point, tree_train_images,
    warn_limit_above,
)
from ..data.loaders import TensorLoader, check_augmentation, check_data
from ..models.cells import reduction_layers
from ..models.decisiveness import Margins, supernet_margins
from ..models.genotypes import AnyGenotype, save_genotype
from ..models.nb201_search import NB201ReferenceSupernet, NB201Supernet
from ..models.reference import ReferenceSupernet
from ..models.ops import set_recompute
from ..models.sizes import Footprint, recompute_share
from ..models.spaces import ESS_SPACE
from ..models.supernet import Supernet, channel_generator
from ..runs.checkpoint import check_same_input, load_checkpoint, loads_into, save_checkpoint
from ..runs.files import AlphaEpoch, DeriveResult, SearchCost, SearchEpoch, SearchSummary, check_summary
from ..runs.folders import MetricsLogger, clear_divergence, divergence_changes, divergence_noted, prepare_run_dir
from .cost import CostObjective
from .derive import PerturbationSelector
from .distributed import (Distributed, check_global_batches, check_world_size, data_parallel, get_rng_state,
                          set_rng_state)
from .finite import check_finite, field_defaults, loss_is_finite, settings_and_defaults, storage_context
from .graphs import adam_capturable, check_graphs_device, step_graph
from .objectives import edge_entropy, entropy_regulariser, temperature, timm_cosine
from .resources import check_network_fits


def cosine_schedule(optimizer: torch.optim.Optimizer, recipe: SearchRecipe):
    """timm's cosine schedule, stepped per epoch: ``lr_min + (lr - lr_min) * (1 + cos(pi * t / epochs)) / 2``."""
    return timm_cosine(optimizer, recipe.search.epochs, recipe.optim.lr_min)


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------


def build_supernet(recipe: SearchRecipe, in_channels: int, num_classes: int, *,
                   layers: Optional[int] = None, channels: Optional[int] = None) -> Supernet | NB201Supernet:
    """The recipe's supernet; ``layers``/``channels`` build it at another size (resource estimates)."""
    net, ec = recipe.network, recipe.edge_coefficients
    edge_init = ("uniform", ec.low, ec.high) if ec.init == "uniform" else ("normal", 0.0, ec.std)
    reference = net.implementation == "reference"
    if recipe.search_space.cell == "nb201":
        return (NB201ReferenceSupernet if reference else NB201Supernet)(
            ops=recipe.search_space.ops, num_classes=num_classes, in_channels=in_channels,
            channels=channels or net.channels, layers=layers or net.layers, nodes=net.nodes,
            partial_channels=recipe.partial_channels.ratio,
            edge_coefficients=ec.enabled, edge_init=edge_init,
        )
    cls = ReferenceSupernet if reference else Supernet
    return cls(
        ops=recipe.search_space.ops,
        num_classes=num_classes,
        in_channels=in_channels,
        channels=channels or net.channels,
        layers=layers or net.layers,
        nodes=net.nodes,
        multiplier=net.multiplier,
        stem_multiplier=net.stem_multiplier,
        partial_channels=recipe.partial_channels.ratio,
        edge_coefficients=ec.enabled,
        edge_init=edge_init,
    )


def check_supernet_fits(recipe: SearchRecipe, in_channels: int, num_classes: int, size: int,
                        device: Optional[torch.device], dry_run: bool = False, copies: int = 0,
                        recompute: bool = False, headroom: float = 1.0,
                        footprint: Optional[Footprint] = None) -> Footprint:
    """Refuse a supernet too large for ``device`` or images too small for it, before building it
    (``engines.resources``); ``recompute``: with its op blocks recomputing their activations;
    ``footprint``: the estimate of an earlier call, reused. ``device=None`` only estimates."""
    def build(layers: int, channels: int) -> nn.Module:
        return build_supernet(recipe, in_channels, num_classes, layers=layers, channels=channels)

    shape = dict(layers=recipe.network.layers, channels=recipe.network.channels,
                 channel_multiple=2 * recipe.partial_channels.ratio)
    share = recompute_share(build, in_channels, size, **shape) if recompute else 1.0
    return check_network_fits(
        build, **shape, input_size=(in_channels, size), batch=recipe.data.batch_size, device=device,
        # activations at 2 bytes where the search runs autocast on a GPU (amp auto: fp32 for a search)
        what="supernet", amp=device is not None and device.type == "cuda"
        and resolve_precision(recipe.runtime.amp, None, device, search=True)[0] != "none",
        dry_run=dry_run, copies=copies, activation_scale=share, headroom=headroom, footprint=footprint,
        other_setting="partial_channels.ratio=1, without the bypass pooled 2x2, may run on it"
        if recipe.partial_channels.ratio > 1 and recipe.search_space.cell != "nb201" else None,
    )


#: A search step's measured peak memory over the estimate ``check_supernet_fits`` makes (the activations
#: autograd keeps, plus weights, gradients and optimiser state): 1.30-1.77x for the EL-DARTS and PC-DARTS
#: supernets and their references at batch 256 on the CPU (peak RSS of the process, with ``runtime.allocator:
#: auto`` keeping freed memory; bench/results-search-cpu.md, "Peak memory against the estimate").
#: ``runtime.recompute: auto`` keeps every activation only where this much room is left.
PEAK_OVER_ESTIMATE = 1.9


def plan_recompute(recipe: SearchRecipe, in_channels: int, num_classes: int, size: int,
                   device: torch.device, footprint: Optional[Footprint] = None) -> bool:
    """Whether the search recomputes activations (``runtime.recompute``): ``auto`` turns it on only for
    a supernet that would not fit in ``device``'s memory otherwise (with ``PEAK_OVER_ESTIMATE`` of room).
    :class:`ResourceError` if it cannot fit either way. The supernet is estimated once (or ``footprint``
    reused) for all the checks."""
    args = (recipe, in_channels, num_classes, size)
    footprint = footprint or check_supernet_fits(*args, None)
    mode = recipe.runtime.recompute
    if mode != "auto":
        check_supernet_fits(*args, device, recompute=mode, footprint=footprint)
        return mode
    try:
        check_supernet_fits(*args, device, headroom=PEAK_OVER_ESTIMATE, footprint=footprint)
        return False
    except ResourceError as whole:
        try:
            check_supernet_fits(*args, device, recompute=True, footprint=footprint)
        except ResourceError as recomputing:
            raise recomputing from whole
        return True


def supernet_summary(recipe: SearchRecipe) -> dict[str, Any]:
    """Sizes of the supernet a recipe builds (for ``--dry-run``), without loading any data.

    The counts come from ``check_supernet_fits``'s estimate (measured below 25
    cells of width 65, extrapolated above), checked as ``--dry-run`` checks
    (``engines.resources``); the supernet is built at full size only to price a
    ``cost:`` section (its initial architecture weights), once it passed that check.
    """
    shape = expected_shape(recipe.data)
    device = planning_device(recipe.runtime.device)  # another machine's device: the CPU, with a warning
    if not recipe.runtime.device.startswith("cuda"):  # (a CUDA device named is planning_device's warning)
        with refused_here(planning=True):
            check_graphs_device(recipe.runtime.cuda_graphs, device, "search")
    footprint = check_supernet_fits(recipe, shape.channels, shape.num_classes, shape.size, device, dry_run=True,
                                    copies=1 if recipe.cost is not None else 0)
    planned = None  # what a run on the device would do about runtime.recompute; None: it would be refused there,
    with refused_here(planning=True):  # which the plan says as other refusals of the run's start (a warning)
        planned = plan_recompute(recipe, shape.channels, shape.num_classes, shape.size, device, footprint)
    torch.manual_seed(recipe.seed)
    cost = None
    if recipe.cost is not None:  # prices the evaluation network now: a bad table fails here, not mid-run
        model = build_supernet(recipe, shape.channels, shape.num_classes)  # the search's initial alphas
        cost = CostObjective(recipe, model, resolve_device(recipe.runtime.device)).describe()
    else:
        model = build_supernet(recipe, shape.channels, shape.num_classes, layers=3,
                               channels=2 * recipe.partial_channels.ratio)
    arch = sum(p.numel() for p in model.arch_parameters())
    weights = footprint.params - arch
    # NAS-Bench-201's network reduces in residual blocks between its three stages, not in searched cells
    reductions = set() if recipe.search_space.cell == "nb201" else set(reduction_layers(recipe.network.layers))
    return {
        "cost": cost,
        "weight_params": weights,
        "weight_params_m": round(weights / 1e6, 4),
        "arch_params": arch,
        "ops": list(model.ops),
        "cell": recipe.search_space.cell,
        "edges_per_cell": model.alpha_normal.shape[0],
        "cells": recipe.network.layers,
        "reduction_cells": sorted(reductions),
        "input": {"channels": shape.channels, "size": shape.size, "num_classes": shape.num_classes},
        "estimated_training_memory_bytes": footprint.training_bytes(recipe.data.batch_size),
        "device": str(device),
        "recompute": planned,
    }


@dataclass
class SearchData:
    train: TensorLoader
    arch: TensorLoader
    val: TensorLoader
    in_channels: int
    num_classes: int
    images: int
    size: int
    split_images: int = 0  # the training split's images before data.limit (a resume compares it)
    class_names: tuple[str, ...] = ()


def check_halves(recipe: SearchRecipe, images: int) -> None:
    """Refuse a split of ``images`` training images (``search.train_portion``) where a half holds less than a
    (global) batch: its loader, dropping the last partial batch, would have no step. Sizes only (a dry run's
    ``data.limit`` may be any number)."""
    limited = recipe.data.limit is not None and recipe.data.limit <= images  # the limit made the training set
    more = "raise data.limit" if limited else "use more training images"
    try:
        cut = split_point(images, recipe.search.train_portion)
    except DataError as error:
        raise DataError(f"{error}; {more}" + (f" (data.limit={recipe.data.limit})" if limited else "")) from None
    if min(cut, images - cut) < recipe.data.batch_size:
        portion = recipe.search.train_portion
        if portion == 0.5:
            raise RecipeError(f"data.batch_size={recipe.data.batch_size} is larger than each half of the {images} "
                              f"training images; lower it or {more}")
        raise RecipeError(
            f"data.batch_size={recipe.data.batch_size} is larger than the smaller part ({min(cut, images - cut)} "
            f"images) of the {images} training images that search.train_portion={portion:g} splits off; lower it, "
            f"bring search.train_portion nearer 0.5, or {more}")


def search_halves(recipe: SearchRecipe, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight-training and architecture halves of ``images`` training images (``search.train_portion``),
    refused as :func:`check_halves` refuses them."""
    check_halves(recipe, images)
    train_idx, arch_idx = split_indices(images, recipe.search.train_portion, recipe.seed)
    return train_idx, arch_idx


def check_launch(recipe: SearchRecipe, world_size: int) -> None:
    """What a torchrun launch of ``world_size`` processes refuses of a search recipe (its run and its dry run):
    the global batches' division (:func:`check_global_batches`) and the second-order step."""
    if world_size > 1 and recipe.search.order == "second":
        raise RecipeError(
            f"search.order: second (DARTS' unrolled step) runs in one process only, not under torchrun with "
            f"{world_size} processes; use search.order: first, or launch without torchrun"
        )
    if world_size > 1:
        check_global_batches(recipe.data, world_size)


#: Settings far above their defaults that a resume cannot change, named by a divergence as its likelier cause.
SEARCH_FIXED_KNOBS = ("entropy.weight", "optim.weight_decay", "arch_optim.weight_decay", "edge_coefficients.std")


def check_search_data(recipe: SearchRecipe, *, planning: bool = True) -> None:
    """What a search's start refuses about its data, checked without loading it (``--dry-run`` of ``search`` and
    ``ablate``): a split that leaves a half without one batch, on the training images the dataset is known to hold
    (``data.limit`` applied; for an image folder only the limit is known, the folder's size only a run can tell);
    missing data, with ``planning`` a warning (a dry run may plan a run for the
    machine that holds the data)."""
    check_data(recipe.data, planning=planning, splits=("train",))  # (a search reads no test split)
    spec = DATASETS.get(recipe.data.dataset)
    if spec.train_images is not None and not spec.made_to_limit:  # what the run says on loading: its dry run too
        warn_limit_above(recipe.data.limit, spec.train_images, "train")
    images = spec.train_size(recipe.data)
    if spec.train_images is None and not spec.made_to_limit and (tree := tree_train_images(recipe.data)):
        images = min(tree, recipe.data.limit or tree)  # (an image folder's size: counted by name, nothing read)
    if images is not None:
        check_halves(recipe, images)
    if not spec.from_tree or recipe.data.image_size:  # the images' size, known without reading them
        check_augmentation(recipe.data, recipe.data.image_size or spec.size)


def build_search_data(recipe: SearchRecipe, device: torch.device, dataset: Optional[ImageSet] = None,
                      channels_last: bool = False, rank: int = 0, world_size: int = 1) -> SearchData:
    """Both halves of the training set; ``data.batch_size`` is the global batch, split over ``world_size`` ranks."""
    cfg = recipe.data
    eval_batch = cfg.eval_batch_size or cfg.batch_size
    check_global_batches(cfg, world_size)
    ds = dataset or load_images(cfg, "train")
    check_augmentation(cfg, ds.size)
    train_idx, arch_idx = search_halves(recipe, len(ds))
    mean, std = ds.stats()
    common = dict(
        mean=mean, std=std, device=device, crop_padding=cfg.crop_padding, cutout=cfg.cutout,
        channels_last=channels_last, rank=rank, world_size=world_size,
    )
    batch = cfg.batch_size // world_size
    # Both halves are augmented, as in DARTS/PC-DARTS; validation reads the arch half plainly.
    train = TensorLoader(ds.subset(train_idx), batch, augment=cfg.augment, flip=cfg.flips, drop_last=True,
                         seed=recipe.seed, **common)
    arch = TensorLoader(ds.subset(arch_idx), batch, augment=cfg.augment, flip=cfg.flips, drop_last=True,
                        seed=recipe.seed + 1, **common)
    val = TensorLoader(ds.subset(arch_idx), eval_batch // world_size, augment=False, shuffle=False, **common)
    return SearchData(train, arch, val, ds.channels, ds.num_classes, len(ds), ds.size,
                      ds.meta.get("split_images", len(ds)), tuple(ds.classes))


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


class SearchCallbacks(Protocol):
    """``derive_decision(decision)``, called per perturbation decision, is optional."""

    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, step: int) -> None: ...
    def epoch_end(self, row: dict) -> None: ...


class _Silent:
    def epoch_start(self, epoch, epochs, steps):
        pass

    def step(self, step):
        pass

    def epoch_end(self, row):
        pass


@contextlib.contextmanager
def _frozen(params):
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def default_layout(recipe: SearchRecipe, device: torch.device) -> Optional[bool]:
    """``runtime.channels_last`` of a search when the recipe leaves it null: ``False`` (NCHW) where NHWC is known
    to fail, else ``None`` (``core.device.resolve_precision``'s default, NHWC).

    * The reference supernet runs as the public code runs, NCHW (on one CPU thread its NHWC search step corrupted
      the heap with PyTorch 2.14: glibc aborted the process; NCHW did not).
    * On CUDA, a supernet with partial channels (K > 1) and an op outside EL-DARTS' four. Measured on an H200
      (torch 2.11, CUDA 13.0; ``bench/results-search-cuda.md``): PC-DARTS' recipe (DARTS' 8 ops, K=4) in NHWC
      stopped with an illegal memory access (cuDNN: EXECUTION_FAILED in the backward pass) at batch 256, in two
      GPU runs, and ran at batches 64-160; in NCHW it ran at batch 256 (606 images/s). EL-DARTS' ops (K=4) and
      DARTS' 8 ops on all channels ran in NHWC at batch 256. The failing kernel is not known: the rule keeps
      NHWC only where it ran.
    """
    if recipe.network.implementation == "reference":
        return False
    if (device.type == "cuda" and recipe.partial_channels.ratio > 1
            and not set(recipe.search_space.ops) <= set(ESS_SPACE)):
        return False
    return None


class Searcher:
    """Runs one search into ``run_dir``; ``run()`` returns the final genotype.

    ``dist`` is this process's place in a torchrun launch (default: from the
    environment; a single process without torchrun); only its rank 0 reads
    the checkpoint, reports progress and writes files. The caller leaves the
    process group (``searcher.dist.close()``).
    """

    def __init__(self, recipe: SearchRecipe, run_dir: Path, resume: bool = False,
                 callbacks: Optional[SearchCallbacks] = None, dataset: Optional[ImageSet] = None,
                 dist: Optional[Distributed] = None):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.dist = dist = dist or Distributed.from_env()
        self.callbacks = (callbacks if dist.is_main else None) or _Silent()
        check_launch(recipe, dist.world_size)
        rt = recipe.runtime
        self.device = dist.setup(resolve_device(rt.device))
        # CPU threads follow the load unless runtime.threads fixes them (core/threads.py)
        self.threads = ThreadGovernor(rt.threads) if self.device.type == "cpu" else None
        allocator.configure(rt.allocator, self.device.type)  # CPU: freed memory reused (core/allocator.py)
        channels_last = rt.channels_last if rt.channels_last is not None else default_layout(recipe, self.device)
        self.amp, self.channels_last = resolve_precision(rt.amp, channels_last, self.device, search=True)
        # the architecture step stays in fp32 unless asked: its gradients are small differences of large sums
        self.arch_amp = self.amp if rt.arch_amp else "none"

        checkpoint = None
        # A run stopped before its first checkpoint resumes from the start (its recipe.yaml is kept).
        # Only rank 0 reads the run folder; the other ranks receive what it read.
        if resume:
            checkpoint = dist.on_main(lambda: resume_state(self.run_dir))
        if checkpoint is not None:
            check_checkpoint(checkpoint, recipe, dist.world_size, self.run_dir)

        self.data = build_search_data(recipe, self.device, dataset, channels_last=self.channels_last,
                                      rank=dist.rank, world_size=dist.world_size)
        # runtime.recompute: auto recomputes the op blocks' activations only where the supernet needs it to fit
        self.recompute = plan_recompute(recipe, self.data.in_channels, self.data.num_classes, self.data.size,
                                        self.device)
        torch.manual_seed(recipe.seed)  # the same initial weights and architecture on every rank
        self.model = build_supernet(recipe, self.data.in_channels, self.data.num_classes).to(self.device)
        set_recompute(self.model, self.recompute)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the network as the steps call it: compiled (runtime.compile) or the module itself
        self.compiled = rt.compile if rt.compile is not False else None
        self.forward = self.model if self.compiled is None else torch.compile(
            self.model, mode=None if self.compiled is True else self.compiled)
        self.weights = self.model.weight_parameters()
        self.train_model = self._data_parallel(self.model)
        # the weight step's network: DDP under torchrun (compiled around DDP when runtime.compile is on)
        if self.train_model is self.model:
            self.train_forward = self.forward
        elif self.compiled is None:
            self.train_forward = self.train_model
        else:
            self.train_forward = torch.compile(self.train_model, mode=None if self.compiled is True else self.compiled)
        self.w_opt = torch.optim.SGD(self.weights, lr=recipe.optim.lr, momentum=recipe.optim.momentum,
                                     weight_decay=recipe.optim.weight_decay, nesterov=recipe.optim.nesterov,
                                     foreach=True)
        ao = recipe.arch_optim
        groups = [{"params": self.model.alphas()}]
        if self.model.edge_parameters():
            groups.append({"params": self.model.edge_parameters(), "lr": ao.edge_lr or ao.lr})
        self.a_opt = torch.optim.Adam(groups, lr=ao.lr, betas=ao.betas, weight_decay=ao.weight_decay)
        # runtime.cuda_graphs: the step recorded as one CUDA graph (engines/graphs.py), Adam's step counters on the GPU
        self.graphs = step_graph(rt.cuda_graphs, self.device, "search", self.amp, dist.enabled)
        if self.graphs is not None:
            adam_capturable(self.a_opt, True, self.device)
        self.schedule = cosine_schedule(self.w_opt, recipe)
        self.w_scaler = grad_scaler(self.device, self.amp)
        self.a_scaler = grad_scaler(self.device, self.arch_amp)
        # hardware-aware search: the cost term of the architecture loss (None without a cost section)
        self.cost = CostObjective(recipe, self.model, self.device) if recipe.cost is not None else None
        if self.cost is not None and dist.is_main:
            for note in self.cost.advice():
                warnings.warn(note)
        self._cost_on = False
        self.start_epoch = 0
        self.elapsed = 0.0
        # never into a folder eldarts did not make (rank 0 looks; every rank gets its answer)
        dist.on_main(lambda: prepare_run_dir(self.run_dir, resume=resume, kind="search"))
        self.genotypes: dict[str, AnyGenotype] = {}
        self.final_margins: Optional[Margins] = None
        self.derive_result: Optional[DeriveResult] = None
        if checkpoint is not None:
            self._restore(checkpoint)
        if dist.is_main:  # on a resume too: a --set it may change (optim.lr after a divergence) is the run's now,
            dump_recipe(recipe, self.run_dir / "recipe.yaml")  # not lost at its next interruption and resume
        self.metrics = self.alphas = None
        if dist.is_main:
            self.metrics = MetricsLogger(self.run_dir, "metrics", self.start_epoch)
            self.alphas = MetricsLogger(self.run_dir, "alphas", self.start_epoch, csv_rows=AlphaEpoch.csv_rows)

    def _data_parallel(self, model: Supernet) -> torch.nn.Module:
        """The module the weight step runs: DDP over the weights under torchrun, else the module itself."""
        if not self.dist.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        arch = {id(p) for p in model.arch_parameters()}
        # The architecture step computes only architecture gradients; DDP's reducer, which expects a
        # gradient for every parameter it holds, would wait forever for the weights' ones. It holds the
        # weights only; the architecture gradients are averaged by hand (Distributed.average_gradients).
        names = [name for name, p in model.named_parameters() if id(p) in arch]
        # DDP (2.x) matches the parameters of the root module as ".name" when it builds its reducer,
        # and as "name" elsewhere: give both spellings.
        names += ["." + name for name in names if "." not in name]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
        # BatchNorm statistics do not affect training (batch statistics are used); they are averaged over
        # the ranks before each validation instead of synchronised at every step.
        return data_parallel(model, self.device, broadcast_buffers=False)

    # -- checkpointing ------------------------------------------------------
    def _state(self, next_epoch: int, rng: Optional[list] = None) -> dict:
        return {
            "kind": "search",
            "epoch": next_epoch,
            "elapsed": self.elapsed,
            "threads_used": self.threads.counts() if self.threads is not None else None,
            "world_size": self.dist.world_size,
            "rng": rng,  # every rank's random state, by rank
            "recipe": recipe_to_dict(self.recipe),
            "input": self._input(),  # the data's (compared on a resume, where data.root may change)
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "w_scaler": self.w_scaler.state_dict(),
            "a_scaler": self.a_scaler.state_dict(),
            # the network the cost term prices (cost.network is read again on a resume, from the current folder)
            "cost_network": None if self.cost is None else {"signature": self.cost.layout.signature(),
                                                             "describe": self.cost.layout.describe(),
                                                             "prices": self.cost.prices(),
                                                             "table": self.cost.table and self.cost.table.describe()},
        }

    def _check_same_cost_network(self, state: dict) -> None:
        """A resume prices the network the run priced: a relative cost.network read from another folder had
        priced another network from the next epoch on, silently (E jumped from 0.47 to 3.3 M MACs)."""
        before = state.get("cost_network")
        if self.cost is None or before is None:
            return
        def as_read(path: Path) -> str:
            return str(path) + ("" if Path(path).is_absolute() else f" (read from {Path.cwd()})")

        if before["signature"] != self.cost.layout.signature():
            raise CheckpointError(
                f"cannot resume {self.run_dir}: cost.network {as_read(self.recipe.cost.network)} is now "
                f"{self.cost.layout.describe()}, but this run priced {before['describe']}; resume from the folder the "
                "run was started in, or give cost.network as that recipe's absolute path with --set")
        # a table measured again (profile-ops --table --force) or edited priced the epochs after the resume with
        # other latencies than those before it, silently (E jumped from 2.96 to 26.5 ms)
        if before.get("prices") is not None and before["prices"] != self.cost.prices():
            raise CheckpointError(
                f"cannot resume {self.run_dir}: cost.table {as_read(self.recipe.cost.table)} prices the ops otherwise "
                f"than the table this run priced its epochs with ({before.get('table')}); put that table back, or "
                "start a new search with this one")

    def _input(self) -> dict[str, int]:
        return {"channels": self.data.in_channels, "size": self.data.size, "classes": self.data.num_classes,
                "images": self.data.split_images}

    def _restore(self, state: dict) -> None:
        if state.get("kind") != "search":
            raise CheckpointError(f"{self.run_dir}/checkpoint.pt is not a search checkpoint")
        self._check_same_cost_network(state)
        # data.root may change on a resume (the dataset moved), not the data: its input is compared
        check_same_input(self.run_dir, state.get("input"), self._input(),
                         lambda: loads_into(self.model, state["model"]))
        try:
            self.model.load_state_dict(state["model"])
            self.w_opt.load_state_dict(state["w_opt"])
            self.a_opt.load_state_dict(state["a_opt"])
            self.w_scaler.load_state_dict(state["w_scaler"])
            self.a_scaler.load_state_dict(state["a_scaler"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"{self.run_dir}/checkpoint.pt does not match this recipe's supernet ({error})") from None
        self.start_epoch = int(state["epoch"])
        self.elapsed = float(state["elapsed"])
        if self.threads is not None and state.get("threads_used"):  # (the label of the whole run's thread counts)
            self.threads.earlier = set(state["threads_used"])
        # arch_optim.lr and edge_lr may change on resume (DIVERGENCE_FIXES): the recipe's values, not the
        # checkpoint's. The weights' lr comes from the schedule, which was built from the recipe.
        ao = self.recipe.arch_optim
        for group, lr in zip(self.a_opt.param_groups, (ao.lr, ao.edge_lr or ao.lr)):
            group["lr"] = lr

        # the checkpoint's Adam state brings its own capturable option: this run's, for its device
        adam_capturable(self.a_opt, self.graphs is not None, self.device)
        rng = state.get("rng")
        if rng:
            set_rng_state(rng[self.dist.rank], self.device)

    # -- steps --------------------------------------------------------------
    def _arch_step(self, x, y, temp: Optional[float]) -> None:
        self.a_opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.arch_amp, cache=self.graphs is None), self._weights_frozen():
            loss = F.cross_entropy(self.forward(x), y)
        if self._cost_on:  # hardware-aware search: the cost term (engines/cost.py), architecture loss only
            loss = loss + self.cost.term(loss)
        if temp is not None:
            loss = loss + self.recipe.entropy.weight * entropy_regulariser(self.model.alphas(), temp)
        # gradients for architecture parameters only: no weight gradients are computed
        self.a_scaler.scale(loss).backward(inputs=self.model.arch_parameters())
        self.dist.average_gradients(self.model.arch_parameters())  # torchrun: the mean over the ranks
        self.a_scaler.step(self.a_opt)
        self.a_scaler.update()

    def _weights_frozen(self):
        """A compiled network builds its backward graph ahead: with the weights frozen during the
        architecture step, that graph computes no weight gradients (eager mode skips them through
        ``backward(inputs=...)`` instead)."""
        if self.compiled is None:
            return contextlib.nullcontext()
        return _frozen(self.weights)

    def search_step(self, x, y, xa, ya, temp: Optional[float], lr: float, arch_updates: bool = True,
                    epoch: int = 0, step: int = 0):
        """One step of Algorithm 1: the architecture step on ``(xa, ya)``, then the weight step on ``(x, y)``,
        each with its own partial-channel mask (``sampling: random``; drawn from ``(seed, epoch, step)``).

        Returns the weight step's loss and correct-prediction count, as device tensors (no host sync); with
        ``runtime.cuda_graphs``, tensors the next step overwrites.
        """
        if self.graphs is not None:  # the recipe allows only fixed channels and first order here
            def step(x, y, xa, ya):
                if arch_updates:
                    self._arch_step(xa, ya, temp)
                return self._weight_step(x, y)

            lrs = tuple(group["lr"] for opt in (self.w_opt, self.a_opt) for group in opt.param_groups)
            return self.graphs((temp, lrs, arch_updates), step, (x, y, xa, ya))
        if arch_updates:
            self._sample_channels(epoch, step, phase=0)
            if self.recipe.search.order == "second":
                self._arch_step_second_order(x, y, xa, ya, temp, lr)
            else:
                self._arch_step(xa, ya, temp)
        self._sample_channels(epoch, step, phase=1)
        return self._weight_step(x, y)

    def _arch_step_second_order(self, x, y, xa, ya, temp: Optional[float], lr: float) -> None:
        """DARTS' second-order approximation (Liu et al. 2019, eq. 7-8).

        ``grad_alpha L_val(w', alpha) - lr * (grad_alpha L_train(w+) - grad_alpha L_train(w-)) / 2r``
        with ``w' = w - lr * (SGD step on L_train)`` and ``w+- = w +- r * grad_w' L_val``,
        ``r = epsilon / |grad_w' L_val|`` (``search.hessian_epsilon``, DARTS: 0.01).
        """
        from torch.func import functional_call

        model = self.model
        names = [n for n, p in model.named_parameters() if any(p is w for w in self.weights)]
        arch = model.arch_parameters()
        optim = self.recipe.optim
        with autocast(self.device, self.arch_amp):
            train_loss = F.cross_entropy(model(x, detach_arch=True), y)
        grads = torch.autograd.grad(train_loss, self.weights)
        unrolled = {}
        with torch.no_grad():
            for name, w, g in zip(names, self.weights, grads):
                buf = self.w_opt.state.get(w, {}).get("momentum_buffer")
                step = g + optim.weight_decay * w
                if buf is not None:
                    step = step + optim.momentum * buf
                unrolled[name] = w - lr * step
        for t in unrolled.values():
            t.requires_grad_(True)
        with autocast(self.device, self.arch_amp):
            val_loss = F.cross_entropy(functional_call(model, unrolled, (xa,)), ya)
        if self._cost_on:  # hardware-aware search: the cost term (engines/cost.py)
            val_loss = val_loss + self.cost.term(val_loss)
        if temp is not None:
            val_loss = val_loss + self.recipe.entropy.weight * entropy_regulariser(model.alphas(), temp)
        grad_arch_and_w = torch.autograd.grad(val_loss, arch + list(unrolled.values()), allow_unused=True)
        d_arch = grad_arch_and_w[: len(arch)]
        d_w = grad_arch_and_w[len(arch) :]
        norm = torch.sqrt(sum((g.float() ** 2).sum() for g in d_w if g is not None))
        r = self.recipe.search.hessian_epsilon / (norm + 1e-12)

        def arch_grad_at(sign: float):
            with torch.no_grad():
                shifted = {n: w + sign * r * g if g is not None else w
                           for n, w, g in zip(names, self.weights, d_w)}
            with autocast(self.device, self.arch_amp):
                loss = F.cross_entropy(functional_call(model, shifted, (x,)), y)
            return torch.autograd.grad(loss, arch, allow_unused=True)

        plus, minus = arch_grad_at(1.0), arch_grad_at(-1.0)
        self.a_opt.zero_grad(set_to_none=True)
        for p, g, gp, gm in zip(arch, d_arch, plus, minus):
            g = torch.zeros_like(p) if g is None else g
            if gp is not None and gm is not None:
                g = g - lr * (gp - gm) / (2 * r)
            p.grad = g.detach().to(p.dtype)
        self.a_opt.step()

    def _weight_step(self, x, y) -> tuple[torch.Tensor, torch.Tensor]:
        self.w_opt.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp, cache=self.graphs is None):
            logits = self.train_forward(x, detach_arch=True)  # torchrun: DDP averages the weight gradients
            loss = F.cross_entropy(logits, y)
        self.w_scaler.scale(loss).backward(inputs=self.weights)
        if self.recipe.optim.grad_clip:
            self.w_scaler.unscale_(self.w_opt)
            torch.nn.utils.clip_grad_norm_(self.weights, self.recipe.optim.grad_clip)
        self.w_scaler.step(self.w_opt)
        self.w_scaler.update()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def _sample_channels(self, epoch: int, step: int, phase: int) -> None:
        """Algorithm 1's new partial-channel mask for this mini-batch (``sampling: random`` only)."""
        if self.recipe.partial_channels.sampling == "random":
            self.model.sample_channels(channel_generator(self.recipe.seed, epoch, step, phase))

    @torch.no_grad()
    def validate(self) -> tuple[float, float]:
        """Loss and accuracy on the architecture half (each rank its slice; summed over the ranks)."""
        self.dist.average_buffers(self.model)
        self.model.sample_channels(None)  # validation reads the first C/K channels: the same every epoch
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        cap = self.recipe.search.val_batches
        for i, (x, y) in enumerate(self.data.val.epoch(0)):
            if cap is not None and i >= cap:
                break
            with autocast(self.device, self.amp):
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        self.model.train()
        loss_sum, correct, seen = self._global_totals(loss_sum, correct, seen)
        return loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)

    def _global_totals(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int):
        """(loss sum, hits, images) over every rank (one all-reduce)."""
        if not self.dist.enabled:
            return loss_sum, correct, seen
        totals = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=self.device,
                                                                                 dtype=torch.float64)])
        loss_sum, correct, seen = self.dist.sum(totals).tolist()
        return torch.tensor(loss_sum), torch.tensor(correct), int(seen)

    def run_epoch(self, epoch: int) -> dict:
        recipe = self.recipe
        cfg = recipe.search
        self.schedule.step(epoch)
        lr = self.w_opt.param_groups[0]["lr"]
        arch_updates = epoch >= cfg.warmup
        self._cost_on = self.cost is not None and self.cost.applies(epoch)
        temp = temperature(epoch, recipe.entropy) if recipe.entropy.enabled else None
        steps = min(len(self.data.train), len(self.data.arch))
        if cfg.max_steps:
            steps = min(steps, cfg.max_steps)
        self.callbacks.epoch_start(epoch, cfg.epochs, steps)
        self.model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        batches = zip(self.data.train.epoch(epoch), self.data.arch.epoch(epoch))
        for step, ((x, y), (xa, ya)) in enumerate(batches):
            if step >= steps:
                break
            loss, hits = self.search_step(x, y, xa, ya, temp, lr, arch_updates, epoch=epoch, step=step)
            loss_sum += loss * len(y)
            correct += hits
            seen += len(y)
            self.callbacks.step(step + 1)
            if self.threads is not None:
                self.threads.update()  # looks at the load at most every few seconds
            if (step + 1) % recipe.runtime.log_every == 0 and not loss_is_finite(loss_sum):
                self._check_finite(epoch, lr, {"training loss": loss_sum.item() / seen}, step=step + 1)
        train_time = time.perf_counter() - start
        loss_sum, correct, seen = self._global_totals(loss_sum, correct, seen)
        train_loss = loss_sum.item() / max(seen, 1)
        val_loss, val_acc = self.validate()
        self._check_finite(epoch, lr, {"training loss": train_loss, "validation loss": val_loss})
        epoch_time = time.perf_counter() - start
        self.elapsed += epoch_time
        if not self.dist.is_main:  # the genotype is derived, and rows written, on rank 0 only
            return None
        return self._epoch_row(epoch, lr, temp, arch_updates, train_loss,
                               correct.item() / max(seen, 1), val_loss, val_acc, seen, train_time, epoch_time)

    def _check_finite(self, epoch: int, lr: float, losses: dict, step: Optional[int] = None) -> None:
        """Stop with :class:`DivergenceError` before a non-finite epoch is logged or saved (``engines.finite``)."""
        check_finite(
            what="search", epoch=epoch, epochs=self.recipe.search.epochs, losses=losses,
            states=[] if step else [("supernet", self.model.state_dict()), ("weight optimiser", self.w_opt.state_dict()),
                                    ("architecture optimiser", self.a_opt.state_dict())],
            arch_names=("alpha_normal", "alpha_reduce", "edge_normal", "edge_reduce"),
            arch_labels=("architecture optimiser",),
            arch_knobs=[] if self.recipe.cost is None else [("cost.weight", self.recipe.cost.weight)],
            typical=field_defaults(self.recipe, ("optim.lr", "arch_optim.lr", "cost.weight")),
            lr=self.recipe.optim.lr, lr_min=self.recipe.optim.lr_min, arch_lr=self.recipe.arch_optim.lr,
            fixes=DIVERGENCE_FIXES,
            fixed=settings_and_defaults(self.recipe, SEARCH_FIXED_KNOBS),
            checkpoint=self.run_dir / "checkpoint.pt", step=step,
        )

    def _epoch_row(self, epoch, lr, temp, arch_updates, train_loss, train_acc, val_loss, val_acc, seen,
                   train_time, epoch_time) -> SearchEpoch:
        model = self.model
        genotype = model.genotype()
        margins = self.margins()
        with torch.no_grad():
            ent_normal = edge_entropy(model.alpha_normal.float()).mean().item()
            ent_reduce = None if model.alpha_reduce is None else edge_entropy(model.alpha_reduce.float()).mean().item()
            reg = entropy_regulariser(model.alphas(), temp).item() if temp else None
        return SearchEpoch(
            epoch=epoch,
            lr=lr,
            temperature=temp,
            arch_updates=arch_updates,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            entropy_normal=ent_normal,
            entropy_reduce=ent_reduce,
            entropy_regulariser=reg,
            skip_normal=genotype.count("skip_connect", reduction=False),
            skip_reduce=genotype.count("skip_connect", reduction=True),
            images_per_s=seen / train_time if train_time > 0 else None,
            epoch_seconds=epoch_time,
            elapsed_seconds=self.elapsed,
            genotype=genotype.model_dump(exclude_none=True),
            **(self.cost.epoch_fields(genotype) if self.cost is not None else {}),
            edge_margin_median=margins.edge_median,
            node_margin_median=margins.node_median,
        )

    def margins(self) -> Margins:
        """Margins of the genotype the magnitude rule derives now (``models/decisiveness.py``)."""
        with torch.no_grad():
            weights = self.model.arch_weights()
        return supernet_margins(weights, self.model.ops, self.model.nodes, self.recipe.search_space.cell,
                                self.recipe.derive.margin_threshold)

    def _alpha_row(self, epoch: int) -> AlphaEpoch:
        model = self.model
        with torch.no_grad():
            op_n, op_r = model.op_weights()
            ed_n, ed_r = model.edge_weights()
        listed = lambda w: None if w is None else w.detach().cpu().tolist()  # noqa: E731
        return AlphaEpoch(
            epoch=epoch,
            ops=list(model.ops),
            alpha_normal=listed(model.alpha_normal),
            alpha_reduce=listed(model.alpha_reduce),
            weights_normal=listed(op_n),
            weights_reduce=listed(op_r),
            edge_normal=listed(ed_n),
            edge_reduce=listed(ed_r),
            cell=self.recipe.search_space.cell,
        )

    def run(self) -> Optional[AnyGenotype]:
        """Search to the last epoch; the genotype on rank 0 (None on the other ranks)."""
        epochs = self.recipe.search.epochs
        checkpoint = self.run_dir / "checkpoint.pt"
        diverged = self.dist.is_main and divergence_changes(self.run_dir) is not None
        for epoch in range(self.start_epoch, epochs):
            # (what sends the user back to the run gives the lower learning rate too)
            with divergence_noted(self.run_dir, self.dist.is_main):
                row = self.run_epoch(epoch)  # raises DivergenceError before anything of a non-finite epoch is written
            self.check_ranks_agree(epoch)
            rng = self.dist.gather(get_rng_state(self.device))
            if not self.dist.is_main:
                continue
            try:
                self.alphas.log(self._alpha_row(epoch))
                self.metrics.log(row)
                save_checkpoint(self._state(epoch + 1, rng), checkpoint)
                if diverged:  # an epoch saved since: its resume needs no other setting
                    clear_divergence(self.run_dir)
                    diverged = False
            except StorageError as error:
                raise storage_context(error, checkpoint, epoch, epochs) from None
            self.callbacks.epoch_end(row)
        if not self.dist.is_main:
            return None
        try:
            genotype = self.derive()  # perturbation selection writes its files here too
            save_genotype(genotype, self.run_dir / "genotype.json")
            self.summary(genotype).write(self.run_dir)
        except StorageError as error:
            raise storage_context(error, checkpoint, epochs, epochs) from None
        return genotype

    def check_ranks_agree(self, epoch: int) -> None:
        """Under torchrun: stop unless every rank holds the same architecture, bit for bit (and, by a
        checksum per tensor, the same network weights)."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            arch = torch.cat([p.detach().reshape(-1).double() for p in self.model.arch_parameters()])
            sums = torch.stack([w.detach().double().sum() for w in self.weights])
        every = self.dist.all_gather(torch.cat([arch, sums]).view(torch.int64))  # compared as bits
        n = len(arch)
        for what, part in (("architecture weights", slice(0, n)), ("network weights", slice(n, None))):
            differ = [rank for rank, theirs in enumerate(every) if not torch.equal(theirs[part], every[0][part])]
            if differ:
                gap = max((every[r][part].view(torch.float64) - every[0][part].view(torch.float64)).abs().max().item()
                          for r in differ)
                raise DistributedError(
                    f"after epoch {epoch + 1} the {what} of rank(s) {', '.join(map(str, differ))} differ from "
                    f"rank 0's (largest difference {gap:.3g}); the processes no longer search one architecture"
                )

    # -- the genotype -------------------------------------------------------
    def derive(self) -> AnyGenotype:
        """The genotype ``derive.method`` chooses; with perturbation (or ``derive.both``) both methods'
        genotypes are written (``genotype-magnitude.json``, ``genotype-perturbation.json``, ``derive.json``)."""
        name = self.recipe.name
        derive = self.recipe.derive
        magnitude = self.model.genotype().model_copy(update={"name": name})
        self.final_margins = self.margins()
        self.genotypes = {"magnitude": magnitude}
        if derive.method == "perturbation" or derive.both:
            report = getattr(self.callbacks, "derive_decision", None)
            selector = PerturbationSelector(self.model, self.recipe, val=self.data.val, train=self.data.train,
                                            device=self.device, amp=self.amp, report=report)
            chosen, self.derive_result = selector.run()
            self.genotypes["perturbation"] = chosen.model_copy(update={"name": name})
            self.derive_result.write(self.run_dir)
            for method, genotype in self.genotypes.items():
                save_genotype(genotype, self.run_dir / f"genotype-{method}.json")
        return self.genotypes[derive.method]

    def summary(self, genotype: AnyGenotype) -> SearchSummary:
        """The run's summary; the search cost is measured wall time x processes (device-days, as the paper's),
        plus the time perturbation selection took (rank 0 alone)."""
        world = self.dist.world_size
        derive_seconds = None if self.derive_result is None else self.derive_result.seconds
        seconds = self.elapsed * world + (derive_seconds or 0.0)
        hours = seconds / 3600
        kind = "GPU" if self.device.type == "cuda" else "CPU"
        genotypes = self.genotypes
        all_steps = min(len(self.data.train), len(self.data.arch))  # (an epoch's, without search.max_steps)
        return SearchSummary(
            finished=True,
            name=self.recipe.name,
            epochs=self.recipe.search.epochs,
            device=device_name(self.device, self.threads and self.threads.describe())
            + (f" x{world}" if world > 1 else ""),
            search_seconds=seconds,
            search_cost=SearchCost(unit=f"{kind}-days", hours=hours, days=hours / 24),
            genotype=genotype,
            skip_normal=genotype.count("skip_connect"),
            torch=torch.__version__,
            cost=self.cost.final(genotype) if self.cost is not None else None,
            cell=self.recipe.search_space.cell,
            derive_method=self.recipe.derive.method,
            genotypes=genotypes if len(genotypes) > 1 else None,
            margins=self.final_margins or self.margins(),
            derive_margin_median=None if self.derive_result is None else self.derive_result.margin_median,
            derive_seconds=derive_seconds,
            train_split_images=self.data.split_images or None, train_images=self.data.images,
            classes=list(self.data.class_names) or None,
            dataset=self.recipe.data.dataset, image_size=self.data.size, channels=self.recipe.network.channels,
            layers=self.recipe.network.layers, steps_in_epoch=all_steps,
            steps_per_epoch=min(all_steps, self.recipe.search.max_steps or all_steps),
        )


def resume_state(run_dir: Path) -> Optional[dict]:
    """The checkpoint a resumed search continues from (None: it stopped before its first one); a damaged
    ``summary.json`` stops the resume before anything is written (``runs.files.check_summary``)."""
    check_summary(run_dir)
    path = run_dir / "checkpoint.pt"
    return load_checkpoint(path, kind="search") if path.exists() else None


def check_checkpoint(checkpoint: dict, recipe: SearchRecipe, world_size: int, run_dir: Path) -> None:
    """What a resume refuses of the checkpoint it continues from: another recipe (``check_resumable``), another
    number of processes. Asked by the resume and by its dry run (which had planned a resume on another count)."""
    started = _with_defaults(checkpoint["recipe"])
    try:
        check_resumable(started, recipe)
    except RecipeError as error:
        error.hint = edited_recipe_hint(run_dir, started, SearchRecipe, RESUMABLE_CHANGES)
        raise
    check_world_size(checkpoint, world_size, run_dir, "search")


def _with_defaults(stored: dict) -> dict:
    """A checkpoint's recipe with the fields added since it was written at their defaults, so that a
    run started by an earlier eldarts still resumes (a field it lacks cannot have been set)."""
    try:
        return recipe_to_dict(SearchRecipe.model_validate(stored))
    except ValueError:
        return stored


def check_resumable(started: dict, recipe: SearchRecipe) -> None:
    """Refuse to resume a search, started with the recipe ``started`` (as a dict), with ``recipe``: only runtime
    settings and the divergence fixes may change (``RESUMABLE_CHANGES``)."""
    diffs = recipe_differences(started, recipe_to_dict(recipe), RESUMABLE_CHANGES)
    if diffs:
        raise RecipeError(
            "the recipe differs from the one the run was started with: " + "; ".join(diffs)
            + " (resume with the same recipe; only runtime.* and "
            + ", ".join(k for k in RESUMABLE_CHANGES if k != "runtime.") + " may change)"
        )


def resume_recipe(run_dir: Path, given: SearchRecipe, overrides: list[str] | None) -> tuple[SearchRecipe, list[str]]:
    """The recipe a resumed search continues with (see ``config.base.resume_recipe``)."""
    return _resume_recipe(run_dir, SearchRecipe, given, overrides, RESUMABLE_CHANGES)
