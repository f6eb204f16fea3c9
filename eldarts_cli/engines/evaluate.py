"""Train a discovered cell from scratch and measure it (paper sections 3.2-3.3, Tables 1-2).

Recipe flow: ``EvalRecipe`` (``config.evaluate``) -> ``build_eval_network``
and ``data.loaders.training_loaders`` -> :class:`Evaluation`, which trains
with SGD (drop path increased linearly, auxiliary loss, gradient clipping,
timm's per-epoch cosine or step schedule with optional warm-up, label
smoothing, optional EMA of the weights) and leaves a run folder:

``recipe.yaml`` (resolved), ``genotype.json``, ``metrics.jsonl``/``metrics.csv``
(one :class:`~eldarts_cli.runs.files.EvalEpoch` per epoch), ``checkpoint.pt``
(atomic, each epoch; ``--resume``), ``weights.pt``, ``model.onnx`` and
``results.json`` (:class:`~eldarts_cli.runs.files.EvalResults`).

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) it trains with
DistributedDataParallel: gloo on CPU, nccl on CUDA; ``data.batch_size`` is
the global batch, split over the processes; only rank 0 writes files.
Sizes (params, MACs) follow the conventions of :mod:`eldarts_cli.models.sizes`.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config.base import dump_recipe, edited_recipe_hint, recipe_differences, recipe_to_dict
from ..config.evaluate import DIVERGENCE_FIXES, RESUMABLE_CHANGES, EvalRecipe
from ..core.device import resolve_precision as _resolve_precision, autocast, device_name, grad_scaler
from ..core.device import planning_device, resolve_device
from ..core import allocator
from ..core.threads import ThreadGovernor
from ..core.errors import CheckpointError, DataError, RecipeError, StorageError, refused_here
from ..core.io import write_json
from ..data.datasets import (DATASETS, InputShape, class_folders, expected_shape, find_split,
                             refuse_empty_class_folders)
from ..data.loaders import check_augmentation, check_data, check_same_classes, training_loaders, training_steps_at_most
from ..models.genotypes import AnyGenotype
from ..models.network import build_network
from ..models.sizes import MACS_CONVENTION, Footprint, InputTooSmall, count_params_macs, estimate_footprint
from ..runs.checkpoint import check_same_input, load_checkpoint, loads_into, save_checkpoint
from ..runs.files import EvalEpoch, EvalResults, SearchOrigin, SearchSummary
from ..runs.folders import (MetricsLogger, check_run_dir, clear_divergence, divergence_changes, divergence_noted,
                            prepare_run_dir, recipe_dataset)
from ..runs.published import MOBILE_MACS_LIMIT_M, is_table2_setting
from ..runs.tables import cell_cost_days, search_differences, search_facts
from .distributed import Distributed, check_global_batches, check_world_size, get_rng_state, set_rng_state
from .graphs import check_graphs_device, step_graph
from .export import export_onnx, save_weights
from .finite import check_finite, field_defaults, loss_is_finite, settings_and_defaults, storage_context
from .resources import check_network_fits

Report = Callable[[dict], None]

#: Settings far above their defaults that a resume cannot change, named by a divergence as its likelier cause (as
#: ``engines.search.SEARCH_FIXED_KNOBS``; a field whose default is 0, label smoothing, has no "far above").
EVAL_FIXED_KNOBS = ("optim.weight_decay", "network.auxiliary_weight")


# ---------------------------------------------------------------------------
# Building and sizing
# ---------------------------------------------------------------------------


def expected_input(recipe: EvalRecipe) -> InputShape:
    """The network's input without loading the data (an ImageFolder tree's classes are counted)."""
    return expected_shape(recipe.data, recipe.network.num_classes)


def build_eval_network(recipe: EvalRecipe, genotype: AnyGenotype, shape: InputShape, *,
                       layers: Optional[int] = None, channels: Optional[int] = None) -> nn.Module:
    """The recipe's network; ``layers``/``channels`` build it at another size (resource estimates)."""
    net = recipe.network
    return build_network(
        net.kind,
        genotype=genotype,
        num_classes=shape.num_classes,
        channels=channels or net.channels,
        layers=layers or net.layers,
        auxiliary=net.auxiliary,
        in_channels=shape.channels,
    )


def published_table(recipe: EvalRecipe, shape: InputShape) -> Optional[str]:
    """Which published table this run compares with: 'imagenet' (Table 2), 'cifar10' (Table 1), 'nb201'
    (NAS-Bench-201 on CIFAR-10) or None."""
    if recipe.network.kind == "imagenet":  # Table 2: ImageNet-1k at 224x224 (the mobile setting)
        return "imagenet" if is_table2_setting(recipe.network.kind, shape.num_classes, shape.size) else None
    if recipe.network.kind == "nb201":
        is_cifar10 = recipe.data.dataset == "cifar10" or (
            recipe.data.dataset == "imagefolder" and shape.size == 32 and shape.num_classes == 10)
        return "nb201" if is_cifar10 else None
    if recipe.data.dataset == "cifar10" or (
        recipe.data.dataset == "imagefolder" and shape.size == 32 and shape.num_classes == 10
    ):
        return "cifar10"
    return None


def _mobile_limit(recipe: EvalRecipe, shape: InputShape, macs_m: float) -> dict[str, Any]:
    """The mobile setting's MAC limit, for an ImageNet network on ImageNet's 1,000 classes at 224x224 (elsewhere the
    limit means nothing)."""
    if not is_table2_setting(recipe.network.kind, shape.num_classes, shape.size):
        return {}
    return {"mobile_limit_m": MOBILE_MACS_LIMIT_M, "exceeds_mobile_limit": macs_m > MOBILE_MACS_LIMIT_M}


#: Above this many classes the size estimate builds its small copies with 2 and 3 classes and extrapolates
#: (a network's parameters and activations are affine in its class count): the copies' classifiers alone
#: could fill the memory (``network.num_classes=100000000`` asked for 307 GB at its first copy).
MANY_CLASSES = 1000


def check_eval_network_fits(recipe: EvalRecipe, genotype: AnyGenotype, shape: InputShape,
                            device: Optional[torch.device], *, batch: int, amp: bool = False,
                            dry_run: bool = False, copies: int = 0,
                            estimate: Optional[tuple[Footprint, Optional[str]]] = None,
                            ) -> tuple[Footprint, Optional[str]]:
    """Refuse a network too large for ``device`` or images too small for it, before building it
    (``engines.resources``). Returns the estimate, (footprint, the setting to lower first), which a later
    check of the same network may pass as ``estimate`` (not made again)."""
    def builder(classes: int):
        at = dataclasses.replace(shape, num_classes=classes)
        return lambda layers, channels: build_eval_network(recipe, genotype, at, layers=layers, channels=channels)

    sizes = dict(layers=recipe.network.layers, channels=recipe.network.channels, channel_multiple=4,
                 input_size=(shape.channels, shape.size))
    checks = dict(batch=batch, device=device, what=f"{recipe.network.kind} network", amp=amp, dry_run=dry_run,
                  copies=copies)
    footprint, lower_first = estimate or (None, None)
    if estimate is None and shape.num_classes > MANY_CLASSES:
        try:
            two, three = (estimate_footprint(builder(k), **sizes) for k in (2, 3))
        except InputTooSmall:  # refused with the images' size (the copies' class count does not matter)
            return check_network_fits(builder(2), **sizes, **checks), None
        extra = shape.num_classes - 2
        per_class = three.params - two.params
        footprint = Footprint(two.params + extra * per_class,
                              two.activations_per_image + extra * (three.activations_per_image
                                                                   - two.activations_per_image),
                              two.modules, exact=False)
        if 2 * extra * per_class > footprint.params:  # the classifier holds most of the network
            lower_first = f"network.num_classes ({shape.num_classes})"
    footprint = check_network_fits(builder(shape.num_classes), **sizes, **checks, footprint=footprint,
                                   lower_first=lower_first)
    return footprint, lower_first


def check_training_steps(recipe: EvalRecipe, steps: int) -> None:
    """Refuse a training set that makes no step: it trained nothing and reported the untrained network."""
    if steps == 0:
        raise RecipeError(
            f"the training images make no step at data.batch_size={recipe.data.batch_size}: fewer than a batch, or "
            f"one image per process, which BatchNorm cannot train on; raise data.limit"
            + (f" (now {recipe.data.limit})" if recipe.data.limit else "")
        )


def check_eval_data(recipe: EvalRecipe) -> None:
    """What a training run's start refuses about its data, checked without loading it (``--dry-run``): a
    ``data.limit`` that makes no step; missing data, a warning (a dry run may size a run for the machine that
    holds the data)."""
    check_data(recipe.data, planning=True)
    steps = training_steps_at_most(recipe.data, recipe.data.batch_size)
    if steps is not None:
        check_training_steps(recipe, steps)
    data, spec = recipe.data, DATASETS.get(recipe.data.dataset)
    root = Path(data.root).expanduser() if data.root is not None else None
    tree = spec.from_tree and root is not None and root.is_dir()
    if tree:  # a folder's class folders, as the run compares them (an archive's are read only by the run)
        try:
            train, test = (find_split(root, split, nested=not spec.streamed) for split in ("train", "test"))
        except DataError:
            train = test = None  # (check_data said what is missing)
        if train is not None and test is not None:
            check_same_classes(class_folders(train), class_folders(test), data.root)
            refuse_empty_class_folders(test, class_folders(test))  # (the training split's: expected_shape)
    if not spec.from_tree or data.image_size or tree:  # the size is known without decoding an archive
        check_augmentation(data, expected_input(recipe).size)


def describe(recipe: EvalRecipe, genotype: AnyGenotype) -> dict[str, Any]:
    """What ``--dry-run`` prints: the network's size at the recipe's input size, no training.

    The network is built (on the CPU) only once its estimated size passes the
    ``--dry-run`` check of ``engines.resources``.
    """
    shape = expected_input(recipe)
    device = planning_device(recipe.runtime.device)  # another machine's device: the CPU, with a warning
    if not recipe.runtime.device.startswith("cuda"):  # (a CUDA device named is planning_device's warning)
        with refused_here(planning=True):
            check_graphs_device(recipe.runtime.cuda_graphs, device, "evaluation", resolve_precision(recipe, device)[0])
    # three copies: the network, count_params_macs' copy and thop's
    estimate = check_eval_network_fits(recipe, genotype, shape, device, batch=recipe.data.batch_size,
                                       dry_run=True, copies=3)
    footprint = estimate[0]
    precision = resolve_precision(recipe, device)[0]
    amp = precision != "none"  # activations kept at 2 bytes under autocast
    with refused_here(planning=True):  # the run's own check, at its batch on this device (a warning here)
        check_eval_network_fits(recipe, genotype, shape, device, batch=recipe.data.batch_size, amp=amp,
                                estimate=estimate)
    model = build_eval_network(recipe, genotype, shape)
    sizes = count_params_macs(model, (shape.channels, shape.size, shape.size))
    return {
        # an unnamed NAS-Bench-201 cell by its arch string (it read "genotype")
        "genotype": genotype.name or getattr(genotype, "arch", None) or "genotype",
        "network": recipe.network.kind,
        "channels": recipe.network.channels,
        "layers": recipe.network.layers,
        "input_size": [shape.channels, shape.size, shape.size],
        "num_classes": shape.num_classes,
        **{k: round(v, 4) for k, v in sizes.items()},
        "macs_convention": MACS_CONVENTION,
        "table": published_table(recipe, shape),
        **_mobile_limit(recipe, shape, sizes["macs_m"]),
        "estimated_training_memory_bytes": footprint.training_bytes(recipe.data.batch_size,
                                                                    activation_bytes=2 if amp else 4),
        "estimated_training_amp": precision,
        "recipe": recipe_to_dict(recipe),
    }


# ---------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------


def resolve_precision(recipe: EvalRecipe, device: torch.device) -> tuple[str, bool]:
    """(amp, channels_last) of an evaluation recipe on ``device`` (``core.device.resolve_precision``)."""
    return _resolve_precision(recipe.runtime.amp, recipe.runtime.channels_last, device, search=False)


def make_optimizer(recipe: EvalRecipe, model: nn.Module) -> torch.optim.Optimizer:
    o = recipe.optim
    return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov, foreach=True)


def make_scheduler(recipe: EvalRecipe, optimizer: torch.optim.Optimizer):
    from timm.scheduler import PolyLRScheduler, StepLRScheduler

    from .objectives import quiet_timm, timm_cosine

    s = recipe.schedule
    # after the warm-up (a prefix: timm's schedule then starts), over the epochs left, so that it ends at lr_min
    # (a cosine over all the epochs was cut off by the warm-up's: 65% of the peak lr in the last epoch)
    after = max(1, recipe.train.epochs - s.warmup_epochs)
    if s.kind == "cosine":
        return timm_cosine(optimizer, after, recipe.optim.lr_min,
                           warmup_t=s.warmup_epochs, warmup_lr_init=s.warmup_lr, warmup_prefix=True)
    if s.kind == "linear":  # down a straight line that ends at lr_min after the last epoch
        return quiet_timm(PolyLRScheduler, optimizer, t_initial=after, power=1.0,
                          lr_min=recipe.optim.lr_min, warmup_t=s.warmup_epochs, warmup_lr_init=s.warmup_lr,
                          warmup_prefix=True)
    return StepLRScheduler(
        optimizer, decay_t=s.decay_epochs, decay_rate=s.decay_rate,
        warmup_t=s.warmup_epochs, warmup_lr_init=s.warmup_lr, warmup_prefix=True,
    )


class TrainStep:
    """One SGD step: forward (autocast), loss with the auxiliary term, backward, clip, update.

    Shared by the training loop and ``bench/bench_eval.py``; nothing in it
    waits for the device (no ``.item()``).
    """

    def __init__(self, model: nn.Module, optimizer, scaler, *, device: torch.device, amp: str,
                 grad_clip: Optional[float], label_smoothing: float = 0.0, auxiliary_weight: float = 0.4,
                 autocast_cache: bool = True):
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.device, self.amp, self.grad_clip = device, amp, grad_clip
        self.autocast_cache = autocast_cache  # False for a step recorded as a CUDA graph
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.auxiliary_weight = auxiliary_weight
        self.params = list(model.parameters())

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(self.device, self.amp, cache=self.autocast_cache):
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
    images, n = int(n), max(n, 1.0)
    # with 5 classes or fewer every image is in the top 5: a 100% that measures nothing, left out
    return {"loss": loss / n, "top1": 100 * top1 / n, "top5": 100 * top5 / n if num_classes > 5 else None,
            "images": images}


def genotype_cells(genotype: AnyGenotype) -> dict:
    """The architecture alone (the name does not matter when comparing runs)."""
    return genotype.model_dump(mode="json", exclude={"name"})


def check_resumed_genotype(out: Path, genotype: AnyGenotype) -> None:
    """``--resume``: the GENOTYPE given must be the run's (its ``genotype.json``), whether the run finished,
    stopped before its first checkpoint or after (a different cell would silently become another run)."""
    from ..models.genotypes import load_genotype

    path = Path(out) / "genotype.json"
    if not path.is_file():
        return
    theirs = load_genotype(path)
    _refuse_another_genotype(out, genotype_cells(theirs), theirs.name, genotype, f" ({path})")


def _refuse_another_genotype(out: Path, cells: dict, name: Optional[str], genotype: AnyGenotype,
                             where: str = "") -> None:
    """CheckpointError unless ``cells`` (the run's, from its genotype.json or its checkpoint) are ``genotype``'s."""
    if cells != genotype_cells(genotype):
        ran, given = name or "another genotype", genotype.name or "the genotype given"
        if ran == given:  # two searches of one recipe share a name ("trained with quickstart, not with quickstart")
            ran, given = f"another {ran} cell", f"this {given} cell"
        raise CheckpointError(
            f"{out} was trained with {ran}, not with {given}: the cells differ; resume with the same "
            f"GENOTYPE{where} (its own: {Path(out) / 'genotype.json'}), or start a new run with another --out"
        )


def _check_resume(state: dict, recipe: EvalRecipe, genotype: AnyGenotype, out: Path) -> None:
    if state.get("kind") != "evaluate":
        raise CheckpointError(f"{out}/checkpoint.pt is not from an evaluation run (kind: {state.get('kind')!r})")
    _refuse_another_genotype(out, state["genotype"], state.get("genotype_name"), genotype)
    changes = recipe_differences(state["recipe"], recipe_to_dict(recipe), RESUMABLE_CHANGES)
    if changes:
        error = CheckpointError(
            f"the recipe differs from the one {out} was trained with ({'; '.join(changes)}); resume with the same "
            f"recipe (only runtime.*, {', '.join(k for k in RESUMABLE_CHANGES if k != 'runtime.')} may change)"
        )
        error.hint = edited_recipe_hint(out, state["recipe"], EvalRecipe, RESUMABLE_CHANGES)
        raise error


def resume_state(out: Path, recipe: EvalRecipe, genotype: AnyGenotype, world_size: int) -> Optional[dict]:
    """The checkpoint a resume of ``out`` continues from (None: it stopped before its first one), refused where it
    was trained with another recipe, genotype or number of processes. Asked by the resume and by its dry run
    (which had planned a resume with a --set the run refuses)."""
    path = Path(out) / "checkpoint.pt"
    if not path.exists():
        return None
    state = load_checkpoint(path, kind="evaluate")
    _check_resume(state, recipe, genotype, Path(out))
    check_world_size(state, world_size, Path(out), "evaluation")
    return state


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------


class Evaluation:
    """One training run from scratch into ``out``: set up (checks first), then ``train()``.

    Everything that can fail is checked before anything is written; only
    rank 0 writes.
    """

    def __init__(self, recipe: EvalRecipe, genotype: AnyGenotype, out: Path, *, device: torch.device,
                 dist: Distributed, resume: bool, report: Report, search_run: Optional[Path] = None):
        self.started = time.perf_counter()
        self.search_run = search_run
        self.recipe, self.genotype, self.out = recipe, genotype, Path(out)
        self.device, self.dist, self.report = device, dist, report
        # CPU threads follow the load unless runtime.threads fixes them (core/threads.py)
        self.threads = ThreadGovernor(recipe.runtime.threads) if device.type == "cpu" else None
        allocator.configure(recipe.runtime.allocator, device.type)  # CPU: freed memory reused (core/allocator.py)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.amp, self.channels_last = resolve_precision(recipe, device)

        state = None
        if dist.is_main:  # (a peer rank, asking while rank 0 wrote the folder, took it for a folder of another's)
            check_run_dir(self.out, resume=resume, kind="evaluation")
        # A run stopped before its first checkpoint resumes from the start (its recipe.yaml is kept).
        if resume:
            state = resume_state(self.out, recipe, genotype, dist.world_size)
        self.state = state

        batch = recipe.data.batch_size
        check_global_batches(recipe.data, dist.world_size)
        per_rank = batch // dist.world_size
        self.train_loader, self.test_loader, self.shape = training_loaders(
            recipe.data, batch=per_rank, eval_batch=(recipe.data.eval_batch_size or batch) // dist.world_size,
            seed=recipe.seed,
            device=device, channels_last=self.channels_last, rank=dist.rank, world_size=dist.world_size,
            num_classes=recipe.network.num_classes,
        )
        check_training_steps(recipe, len(self.train_loader))
        # a streamed test split (in-memory ones were decoded on loading), read once before training, where an epoch
        # remains to train: a bad image there would stop the run after the first epoch, before its checkpoint
        if hasattr(self.test_loader, "check_decodes") and not (state and state.get("epoch", 0) >= recipe.train.epochs):
            self.report({"event": "checking", "images": len(self.test_loader.dataset)})
            self.test_loader.check_decodes()
        images = getattr(self.train_loader, "samples", None)  # (in-memory data; a streamed split's batches are whole)
        if images is not None and batch > images:  # a search refuses it; here it trains, on one step an epoch
            warnings.warn(f"data.batch_size={batch} is above the {images:,} training images: each epoch is one step "
                          f"of {images:,}, {recipe.train.epochs:,} steps in all; lower data.batch_size for more steps")
        check_eval_network_fits(recipe, genotype, self.shape, device, batch=per_rank, amp=self.amp != "none")
        torch.manual_seed(recipe.seed)  # the same initial weights on every rank
        model = build_eval_network(recipe, genotype, self.shape)
        self.sizes = count_params_macs(model, (self.shape.channels, self.shape.size, self.shape.size))
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format)
        self.optimizer = make_optimizer(recipe, self.model)
        self.scaler = grad_scaler(device, self.amp)
        self.ema = None
        if recipe.train.ema:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=recipe.train.ema_decay)
        self.start_epoch, self.wall_time = 0, 0.0
        if state is not None:
            self._check_same_input(state)
            self._restore(state)
            # optim.lr may change on resume (DIVERGENCE_FIXES): the schedule restarts from the recipe's lr,
            # not from the one the checkpoint's optimiser was built with
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] = recipe.optim.lr
        else:
            torch.manual_seed(recipe.seed + dist.rank)  # drop-path masks differ between ranks
        self.scheduler = make_scheduler(recipe, self.optimizer)
        self.train_model: nn.Module = self.model
        if dist.enabled:
            from .distributed import data_parallel

            self.train_model = data_parallel(self.model, device)
        compiled = recipe.runtime.compile
        # the network as the training step calls it: compiled (runtime.compile) or the module itself
        forward = self.train_model if compiled is False else torch.compile(
            self.train_model, mode=None if compiled is True else compiled)
        # runtime.cuda_graphs: the step recorded as one CUDA graph (engines/graphs.py)
        self.graphs = step_graph(recipe.runtime.cuda_graphs, device, "evaluation", self.amp, dist.enabled)
        self.step = TrainStep(
            forward, self.optimizer, self.scaler, device=device, amp=self.amp,
            grad_clip=recipe.optim.grad_clip, label_smoothing=recipe.train.label_smoothing,
            auxiliary_weight=recipe.network.auxiliary_weight, autocast_cache=self.graphs is None,
        )
        self.last_test: dict[str, float] = dict(state.get("last_test") or {}) if state else {}
        self.last_ema: dict[str, float] = dict(state.get("last_ema") or {}) if state else {}

        dist.barrier()  # every rank passed the checks: rank 0 may write now
        self.logger = None
        if dist.is_main:
            prepare_run_dir(self.out, resume, kind="evaluation")
            dump_recipe(recipe, self.out / "recipe.yaml")
            write_json(self.out / "genotype.json", genotype.model_dump(mode="json", exclude_none=True))
            if search_run is not None and not resume:  # the search's cost, for Table 1's row (runs/tables.py)
                # (the cost of the cell evaluated: a derive.both search's perturbation cell had the magnitude
                # cell's, without perturbation selection's time)
                facts, searched = search_facts(search_run), SearchSummary.read(search_run)
                SearchOrigin(folder=str(search_run), search_cost_days=cell_cost_days(search_run, genotype),
                             search_cost_unit=facts["search_cost_unit"], num_ops=facts["num_ops"],
                             dataset=recipe_dataset(Path(search_run)) or searched.dataset,
                             differences=search_differences(search_run), classes=searched.classes,
                             train_split_images=searched.train_split_images).write(self.out)
            self.logger = MetricsLogger(self.out, start_epoch=self.start_epoch + 1, first_epoch=1)

    def _input(self) -> dict[str, int]:
        return {"channels": self.shape.channels, "size": self.shape.size, "classes": self.shape.num_classes,
                "images": getattr(self.train_loader, "split_images", None)}

    def _check_same_input(self, state: dict) -> None:
        check_same_input(self.out, state.get("input"), self._input(), lambda: loads_into(self.model, state["model"]))

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.start_epoch, self.wall_time = state["epoch"], state["wall_time_s"]
        # the earlier invocations' time, to their last checkpoint (checkpoints before it was kept: unknown, 0)
        self.started -= state.get("run_time_s", 0.0)
        if self.threads is not None and state.get("threads_used"):  # (the label of the whole run's thread counts)
            self.threads.earlier = set(state["threads_used"])
        if state.get("rng"):  # every rank's random state, by rank (drop-path and augmentation draws differ by rank)
            set_rng_state(state["rng"][self.dist.rank], self.device)
        elif "rng_cpu" not in state:
            raise CheckpointError(f"{self.out}/checkpoint.pt is not an eldarts evaluate checkpoint: it lacks rng")
        else:  # a checkpoint of an earlier version: rank 0's state alone
            torch.set_rng_state(state["rng_cpu"])
            if self.device.type == "cuda" and state.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(state["rng_cuda"], self.device)

    # -- one epoch ------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EvalEpoch:
        recipe, device = self.recipe, self.device
        epoch_start = time.perf_counter()
        epochs = recipe.train.epochs
        self.scheduler.step(epoch)
        lr = self.optimizer.param_groups[0]["lr"]
        self.model.drop_path_prob = recipe.network.drop_path * epoch / epochs
        self.train_model.train()
        sums = torch.zeros(2, device=device)  # loss * n, top-1 hits
        steps = seen = 0
        for x, y in self.train_loader.epoch(epoch):
            if recipe.train.max_steps and steps >= recipe.train.max_steps:
                break
            if self.graphs is not None:  # the epoch's lr and drop-path rate are part of what is recorded
                loss, logits = self.graphs((lr, self.model.drop_path_prob), self.step, (x, y))
            else:
                loss, logits = self.step(x, y)
            if self.ema is not None:
                self.ema.update(self.model)
            with torch.no_grad():  # kept on the device: no synchronisation per step
                top1, _ = _accuracy_counts(logits, y, 1)
                sums += torch.stack([loss.float() * len(y), top1.float()])
            steps += 1
            seen += len(y)
            if self.threads is not None:
                self.threads.update()  # looks at the load at most every few seconds
            if steps % recipe.runtime.log_every == 0:
                # Under DDP the ranks check together at the epoch's end: one rank stopping alone would hang the others.
                if not self.dist.enabled and not loss_is_finite(sums[0]):
                    self._check_finite(epoch, {"training loss": sums[0].item() / seen}, step=steps)
                self.report({"event": "step", "epoch": epoch + 1, "step": steps, "loss": float(loss)})
        totals = torch.cat([sums.double(), torch.tensor([float(seen)], dtype=torch.float64, device=device)])
        train_loss, train_top1, seen = self.dist.sum(totals).tolist()
        seen = max(seen, 1.0)
        train_time = time.perf_counter() - epoch_start
        # one network on every rank, the one rank 0 saves: each rank's BatchNorm statistics (the network's and the
        # EMA's) had moved apart in its last steps, so the ranks tested, and the results held, another network's
        # error than weights.pt's (66.94% reported, 69.44% measured on it), and a resume's EMA differed
        self.dist.average_buffers(self.model)
        if self.ema is not None:
            self.dist.average_buffers(self.ema.module)
        row: dict[str, Any] = {
            "epoch": epoch + 1, "lr": lr, "drop_path": self.model.drop_path_prob,
            "train_loss": train_loss / seen, "train_top1": 100 * train_top1 / seen,
            "images_per_s": seen / train_time,
        }
        if (epoch + 1) % recipe.train.eval_every == 0 or epoch + 1 == epochs:
            classes = self.shape.num_classes
            self.last_test = score_test_set(self.model, self.test_loader, device, self.amp, self.dist, classes)
            row.update({f"test_{key}": value for key, value in self.last_test.items()})
            if self.ema is not None:
                self.last_ema = score_test_set(self.ema.module, self.test_loader, device, self.amp, self.dist, classes)
                row.update({f"ema_test_{key}": value for key, value in self.last_ema.items()})
        self._check_finite(epoch, {"training loss": row["train_loss"], "test loss": row.get("test_loss"),
                                   "test loss of the EMA weights": row.get("ema_test_loss")})
        row["epoch_time_s"] = time.perf_counter() - epoch_start
        self.wall_time += row["epoch_time_s"]
        return EvalEpoch(**row)

    def _check_finite(self, epoch: int, losses: dict, step: Optional[int] = None) -> None:
        """Stop with :class:`DivergenceError` before a non-finite epoch is logged or saved (``engines.finite``)."""
        states = [] if step else [("network", self.model.state_dict())] + (
            [("EMA weights", self.ema.module.state_dict())] if self.ema is not None else [])
        check_finite(
            what="training", epoch=epoch, epochs=self.recipe.train.epochs, losses=losses, states=states,
            lr=self.recipe.optim.lr, lr_min=self.recipe.optim.lr_min, fixes=DIVERGENCE_FIXES,
            typical=field_defaults(self.recipe, ("optim.lr",)),
            fixed=settings_and_defaults(self.recipe, EVAL_FIXED_KNOBS),
            warmup_lr=self.recipe.schedule.warmup_lr if self.recipe.schedule.warmup_epochs else None,
            checkpoint=self.out / "checkpoint.pt", step=step,
        )

    def _checkpoint(self, epoch: int, rng: list) -> None:
        save_checkpoint(
            {
                "kind": "evaluate", "epoch": epoch, "recipe": recipe_to_dict(self.recipe),
                "genotype": genotype_cells(self.genotype), "genotype_name": self.genotype.name,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "rng": rng, "world_size": self.dist.world_size,
                "wall_time_s": self.wall_time, "last_test": self.last_test, "last_ema": self.last_ema,
                "input": self._input(), "run_time_s": time.perf_counter() - self.started,
                "threads_used": self.threads.counts() if self.threads is not None else None,
            },
            self.out / "checkpoint.pt",
        )

    # -- the whole run ----------------------------------------------------------
    def train(self, stop_after_epochs: Optional[int] = None) -> Optional[EvalResults]:
        """Train to the last epoch (or ``stop_after_epochs`` more, a pre-emption for tests: returns None)."""
        epochs = self.recipe.train.epochs
        self.report({
            "event": "start", "epochs": epochs, "start_epoch": self.start_epoch, "device": device_name(self.device),
            "world_size": self.dist.world_size, "amp": self.amp, "channels_last": self.channels_last,
            "steps_per_epoch": min(len(self.train_loader), self.recipe.train.max_steps or len(self.train_loader)),
            **self.sizes,
        })
        end = epochs if stop_after_epochs is None else min(epochs, self.start_epoch + stop_after_epochs)
        checkpoint = self.out / "checkpoint.pt"
        diverged = self.dist.is_main and divergence_changes(self.out) is not None
        for epoch in range(self.start_epoch, end):
            # (what sends the user back to the run gives the lower learning rate too)
            with divergence_noted(self.out, self.dist.is_main):
                row = self.train_epoch(epoch)  # raises DivergenceError before anything of a non-finite epoch is written
            rng = self.dist.gather(get_rng_state(self.device))  # (every rank takes part; rank 0 gets the list)
            if self.dist.is_main:
                try:
                    self.logger.log(row)
                    self._checkpoint(epoch + 1, rng)
                    if diverged:  # an epoch saved since: its resume needs no other setting
                        clear_divergence(self.out)
                        diverged = False
                except StorageError as error:
                    raise storage_context(error, checkpoint, epoch, epochs) from None
            self.report({"event": "epoch", **row.dump()})
        if end < epochs:
            self.report({"event": "stopped", "epoch": end})
            return None
        results = self._results()
        if self.dist.is_main:
            try:
                save_weights(self.model, self.ema, self.recipe.network.model_dump(mode="json"), self.genotype,
                             self.shape, self.out / "weights.pt", normalisation=self.test_loader.normalisation,
                             classes=getattr(self.train_loader, "class_names", None))
                results.weights = "weights.pt"
                if self.recipe.train.onnx:
                    results.onnx = export_onnx(self.model, self.shape, self.out / "model.onnx")
                results.run_time_s = round(time.perf_counter() - self.started, 2)
                results.write(self.out)
            except StorageError as error:
                raise storage_context(error, checkpoint, epochs, epochs) from None
        self.report({"event": "done", **results.dump()})
        return results

    def _results(self) -> EvalResults:
        recipe, test, ema = self.recipe, self.last_test, self.last_ema
        origin = SearchOrigin.read(self.out) if SearchOrigin.exists(self.out) else None
        normalisation = self.test_loader.normalisation or {}
        return EvalResults(
            completed=True,
            name=recipe.name,
            genotype=self.genotype.name or "genotype",
            genotype_cells=genotype_cells(self.genotype),
            dataset=recipe.data.dataset,
            network=recipe.network.kind,
            channels=recipe.network.channels,
            layers=recipe.network.layers,
            input_size=[self.shape.channels, self.shape.size, self.shape.size],
            num_classes=self.shape.num_classes,
            test_top1_error=round(100 - test["top1"], 4) if test else None,
            test_top5_error=round(100 - test["top5"], 4) if test and test["top5"] is not None else None,
            **{key: round(value, 4) for key, value in self.sizes.items()},
            macs_convention=MACS_CONVENTION,
            epochs=recipe.train.epochs,
            wall_time_s=round(self.wall_time, 2),
            device=device_name(self.device, self.threads and self.threads.describe()),
            world_size=self.dist.world_size,
            amp=self.amp,
            channels_last=self.channels_last,
            table=published_table(recipe, self.shape),
            ema_test_top1_error=round(100 - ema["top1"], 4) if ema else None,
            ema_test_top5_error=round(100 - ema["top5"], 4) if ema and ema["top5"] is not None else None,
            **_mobile_limit(recipe, self.shape, self.sizes["macs_m"]),
            **({} if origin is None else dict(search_run=origin.folder, search_cost_days=origin.search_cost_days,
                                              search_cost_unit=origin.search_cost_unit, search_num_ops=origin.num_ops,
                                              search_dataset=origin.dataset,
                                              search_differences=origin.differences or None,
                                              search_classes=origin.classes,
                                              search_train_split_images=origin.train_split_images)),
            test_images=test["images"] if test else None,
            train_images=getattr(self.train_loader, "samples", None) or len(self.train_loader.dataset),
            input_mean=normalisation.get("mean"),
            input_std=normalisation.get("std"),
            train_split_images=getattr(self.train_loader, "split_images", None),
            test_split_images=getattr(self.test_loader, "split_images", None),
            classes=getattr(self.train_loader, "class_names", None) or None,
        )


def run_evaluation(
    recipe: EvalRecipe,
    genotype: AnyGenotype,
    out: Path,
    *,
    resume: bool = False,
    report: Optional[Report] = None,
    stop_after_epochs: Optional[int] = None,
    search_run: Optional[Path] = None,
    dist: Optional[Distributed] = None,
) -> dict[str, Any]:
    """Train ``genotype`` from scratch as ``recipe`` says; return (and on rank 0 write) the results.

    ``stop_after_epochs`` ends this process after that many epochs (a
    pre-emption, for tests); the run folder can then be ``--resume``d.
    ``search_run``: the finished search the genotype came from; its cost goes into the results (Table 1's row).
    """
    dist = dist or Distributed.from_env()  # (the command's: connected to torchrun's store, for its errors)
    device = dist.setup(resolve_device(recipe.runtime.device))
    try:
        evaluation = Evaluation(recipe, genotype, Path(out), device=device, dist=dist, resume=resume,
                                report=report or (lambda event: None), search_run=search_run)
        results = evaluation.train(stop_after_epochs)
    except BaseException:
        dist.close(wait=False)
        raise
    dist.close()
    if results is None:
        epochs = recipe.train.epochs
        return {"completed": False, "epochs_done": min(epochs, evaluation.start_epoch + (stop_after_epochs or 0)),
                "epochs": epochs}
    return results.dump()
