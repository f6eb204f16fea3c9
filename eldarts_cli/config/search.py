"""The search recipe (paper section 3.2 gives the CIFAR-10 settings; README lists the choices it leaves open)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..data.datasets import DATASETS
from ..models.ops import OPS
from ..models.spaces import SEARCH_SPACES
from ..core.validation import SEED_RANGE
from .base import RecipePath, RunName, StrictModel
from .sections import MAX_EPOCHS, DataConfig, OptimConfig, RuntimeConfig


class SearchSpaceConfig(StrictModel):
    """Candidate ops on every edge (paper 2.2.1): 'ess', 'darts', 'nb201' or a list of registered ops;
    ``cell``: DARTS' cell or NAS-Bench-201's (default: the named space's, else darts)."""

    ops: list[str] = Field(default_factory=lambda: ["skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3"])
    cell: Literal["darts", "nb201"] = Field("darts", description="darts: normal + reduction cells, top-2 edges per "
                                            "node; nb201: NAS-Bench-201's cell, every edge kept")

    @model_validator(mode="before")
    @classmethod
    def _preset_cell(cls, data: Any) -> Any:
        if isinstance(data, dict) and "cell" not in data and isinstance(data.get("ops"), str):
            if data["ops"] in SEARCH_SPACES:
                data = {**data, "cell": SEARCH_SPACES.get(data["ops"]).cell}
        return data

    @field_validator("ops", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        if isinstance(value, str):
            if "," in value and value not in SEARCH_SPACES:  # (a list written as text: "unknown search space 'a,b'")
                raise ValueError(f"{value!r} is no search space's name; a list of ops is written in brackets: "
                                 f"[{', '.join(part.strip() for part in value.split(','))}]")
            return list(SEARCH_SPACES.get(value).ops)
        return value

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: list[str]) -> list[str]:
        ops = [OPS.canonical(op) for op in ops]
        if len(set(ops)) != len(ops):
            raise ValueError("an op is listed twice")
        if all(op == "none" for op in ops):
            raise ValueError("the space needs at least one op other than 'none'")
        if len(ops) < 2:  # one op's softmax is 1 whatever its weight: no op to choose, no gradient
            raise ValueError("a search space needs at least two ops to choose among")
        return ops


class SupernetConfig(StrictModel):
    channels: int = Field(16, gt=0, description="initial channels C")
    layers: int = Field(8, ge=3, description="cells; darts: reductions at 1/3 and 2/3; nb201: three stages of "
                        "layers/3 cells joined by residual reduction blocks")
    # (bounded: the edges grow as nodes squared, and 200 nodes took a dry run 4 minutes and 8 GB before its answer)
    nodes: int = Field(4, ge=1, le=32, description="intermediate nodes per cell (DARTS: 4; at most 32)")
    multiplier: int = Field(4, ge=1, description="nodes concatenated into the cell output")
    stem_multiplier: int = Field(3, ge=1)
    implementation: Literal["fused", "reference"] = Field(
        "fused",
        description="fused: each op once for all edges leaving a state (fast); reference: one module per op per "
        "edge, as the public DARTS/PC-DARTS code (the same function; for checking and benchmarking; NCHW unless "
        "runtime.channels_last is set)",
    )

    @model_validator(mode="after")
    def _multiplier(self) -> "SupernetConfig":
        if self.multiplier > self.nodes:
            raise ValueError(f"multiplier ({self.multiplier}) cannot exceed nodes ({self.nodes})")
        return self


class PartialChannelConfig(StrictModel):
    """Partial channel connections (paper 2.2.2, PC-DARTS): 1/K of the channels go through the ops."""

    ratio: int = Field(4, ge=1, description="K; 1 = full channels (DARTS)")
    sampling: Literal["fixed", "random"] = Field(
        "fixed", description="fixed: the first C/K channels (PC-DARTS; every shipped recipe); random: a new "
        "random C/K channels for every mini-batch (one reading of the paper's Algorithm 1), one draw per cell "
        "shared by its edges; measured to keep the supernet from learning (README: Choices where the paper is "
        "silent)"
    )


def sampling_warning(recipe: "SearchRecipe") -> Optional[str]:
    """The warning a search with ``partial_channels.sampling: random`` gets (measured: its supernet hardly learns);
    ``None`` for any other recipe. ``eldarts search`` and ``eldarts ablate`` print it."""
    if recipe.partial_channels.sampling != "random":
        return None
    return ("partial_channels.sampling=random hands the ops other channels at every step, and measured, the "
            "supernet then hardly learns (on the quickstart, measured with the code of 2026-11-29, ed52cca: 28.8% "
            "validation accuracy after 10 epochs against 92.6% with fixed) and its cell collapses to "
            "parameter-free ops. Every shipped recipe uses fixed (PC-DARTS' rule); "
            "see README, 'Choices where the paper is silent'.")


def nb201_ops_warning(recipe: "SearchRecipe") -> Optional[str]:
    """The warning a NAS-Bench-201 cell searched over ops the benchmark lacks gets (its result cannot be looked up,
    as ``eldarts evaluate`` says of the arch string later); ``None`` otherwise."""
    from ..models.spaces import NB201_SPACE

    if recipe.search_space.cell != "nb201":
        return None
    other = [op for op in recipe.search_space.ops if op not in NB201_SPACE]
    if not other:
        return None
    return (f"search_space.ops {', '.join(other)} {'is' if len(other) == 1 else 'are'} not among NAS-Bench-201's "
            f"({', '.join(NB201_SPACE)}): the cell this search finds is not in the benchmark, which holds no accuracy "
            "to compare it with")


class EdgeCoefficientConfig(StrictModel):
    """DCSS (paper 2.3, eq. 3-5): learnable per-edge coefficients, softmax over a node's inputs."""

    enabled: bool = True
    init: Literal["uniform", "normal"] = Field("uniform", description="uniform: U(low, high) (EL-DARTS); normal: std * N(0,1) (PC-DARTS)")
    low: float = Field(0.4, gt=0, lt=1)
    high: float = Field(0.6, gt=0, lt=1)
    std: float = Field(1e-3, gt=0)

    @model_validator(mode="after")
    def _range(self) -> "EdgeCoefficientConfig":
        if self.init == "uniform" and not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class EntropyConfig(StrictModel):
    """Temperature-annealed entropy regularisation (paper 2.4, eq. 6-9)."""

    enabled: bool = True
    weight: float = Field(1e-3, ge=0, description="lambda")
    # (at least 1e-3: alpha / T at T=1e-45 overflows float32, and the term was NaN, written so in metrics.csv)
    t_init: float = Field(5.0, ge=1e-3)
    decay: float = Field(0.95, gt=0, le=1, description="beta in T(t) = max(T_min, T_init * beta^t)")
    t_min: float = Field(0.5, ge=1e-3, description="at least 1e-3: alpha / T must stay finite in float32")

    @model_validator(mode="after")
    def _anneals(self) -> "EntropyConfig":
        if self.t_min > self.t_init:  # T = max(T_min, ...) would stay at T_min: no annealing at all
            raise ValueError(f"entropy.t_min ({self.t_min:g}) is above entropy.t_init ({self.t_init:g}): T(t) = "
                             f"max(T_min, T_init * beta^t) would stay at t_min, never annealed; give t_min <= t_init")
        return self


class ArchOptimConfig(StrictModel):
    """Adam on architecture weights and edge coefficients."""

    lr: float = Field(6e-4, gt=0)
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.5, 0.999), description="Adam's (beta1, beta2), each in [0, 1)"
    )
    weight_decay: float = Field(1e-3, ge=0)
    edge_lr: Optional[float] = Field(None, gt=0, description="lr of the DCSS coefficients (default: lr)")

    @field_validator("betas", mode="before")
    @classmethod
    def _two_betas(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)) and len(value) != 2:  # ("[betas -> 1] Field required" for one number)
            raise ValueError(f"takes two numbers, Adam's (beta1, beta2), such as [0.5, 0.999]; got {len(value)}")
        return value


class DeriveConfig(StrictModel):
    """How the genotype is read off the trained supernet, and when its margins count as small."""

    method: Literal["magnitude", "perturbation"] = Field(
        "magnitude", description="magnitude: the largest architecture weights (DARTS, paper 2.1); perturbation: "
        "the op whose removal costs the supernet the most validation accuracy (Wang et al., ICLR 2021)"
    )
    both: bool = Field(False, description="derive with both methods and write genotype-magnitude.json and "
                       "genotype-perturbation.json (genotype.json is the method's)")
    finetune_epochs: int = Field(0, ge=0, description="perturbation: epochs of weight training between two "
                                 "decisions (Wang et al.: 5; steps per epoch capped by search.max_steps)")
    finetune_lr: Optional[float] = Field(None, gt=0, description="perturbation: SGD lr of that training "
                                         "(default: optim.lr / 10, as Wang et al.)")
    val_batches: Optional[int] = Field(None, gt=0, description="perturbation: validation batches per "
                                       "evaluation (default: search.val_batches, else the whole architecture half)")
    margin_threshold: float = Field(0.05, ge=0, lt=1, description="median margins below this (softmax weight "
                                    "units) make the search warn that its genotype is not decided")


class SearchLoopConfig(StrictModel):
    epochs: int = Field(50, gt=0, le=MAX_EPOCHS)
    warmup_epochs: Optional[int] = Field(None, ge=0, description="epochs of weight training before architecture updates (default: warmup_fraction of epochs)")
    warmup_fraction: float = Field(0.3, ge=0, lt=1, description="warm-up share of epochs when warmup_epochs is not set (PC-DARTS: 15 of 50)")
    order: Literal["first", "second"] = Field(
        "first", description="bilevel approximation: first (current weights) or second (DARTS' unrolled step)"
    )
    hessian_epsilon: float = Field(0.01, gt=0, description="second order: finite-difference step r = epsilon / |grad| (DARTS: 0.01)")
    train_portion: float = Field(0.5, gt=0, lt=1, description="share of the training set for weights; the rest updates the architecture")
    val_batches: Optional[int] = Field(None, gt=0, description="cap on batches of the per-epoch validation pass")
    max_steps: Optional[int] = Field(None, gt=0, description="cap on steps per epoch (smoke runs)")

    @property
    def warmup(self) -> int:
        """Epochs before the first architecture step."""
        if self.warmup_epochs is not None:
            return self.warmup_epochs
        return int(self.warmup_fraction * self.epochs)


class CostConfig(StrictModel):
    """Hardware-aware search: a budget on the derived evaluation network's cost, in the architecture loss.

    ``E`` is the expected cost of the network the search would derive
    (``models/cost.py``), in ``ms`` (latency, per forward of the cost table's
    batch), ``M MACs`` (thop, per image) or ``M params``; ``T`` is ``target``.
    Forms (``engines/objectives.py``): ``hinge`` ``weight * max(0, E/T - 1)``;
    ``absolute`` ``weight * |E/T - 1|`` (TF-NAS); ``linear`` ``weight * E/T``;
    ``log_ratio`` multiplies the cross-entropy by ``1 + weight * ((log E / log T)^beta - 1)``,
    which at ``weight: 1`` is ProxylessNAS' and FBNet's ``CE * (log E / log T)^beta``.
    """

    metric: Literal["latency", "macs", "params"] = Field(description="latency (needs table), macs or params")
    network: RecipePath = Field(description="evaluation recipe whose network is priced (its channels, cells, input size)")
    table: Optional[RecipePath] = Field(None, description="latency: a cost table written by eldarts profile-ops --table")
    target: float = Field(gt=0, description="budget of the evaluation network: ms, M MACs or M params")
    form: Literal["hinge", "absolute", "linear", "log_ratio"] = "hinge"
    weight: float = Field(1.0, ge=0, description="weight of the cost term (0: computed and logged, not applied)")
    beta: float = Field(0.6, gt=0, description="log_ratio exponent (ProxylessNAS, FBNet: 0.6)")
    start_epoch: Optional[int] = Field(None, ge=0, description="first epoch with the cost term (default: the first architecture epoch)")
    allow_foreign_table: bool = Field(False, description="accept a table measured on another device or in another dtype")

    @field_validator("network", "table")
    @classmethod
    def _home(cls, value: Optional[Path]) -> Optional[Path]:
        return None if value is None else value.expanduser()  # ~/ev.yaml, as data.root takes it

    @field_validator("target", "weight", "beta")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "CostConfig":
        if self.metric == "latency" and self.table is None:
            raise ValueError("metric latency needs a table: write one with "
                             "eldarts profile-ops --table TABLE.json --network EVAL_RECIPE, then set cost.table")
        if self.metric != "latency" and self.table is not None:
            raise ValueError(f"a table is for metric latency; {self.metric} is computed (remove cost.table)")
        if self.form == "log_ratio" and self.target <= 1:
            raise ValueError(f"form log_ratio divides by log(target), which needs target > 1 "
                             f"(given {self.target:g}); use another form, or a target above 1 in its unit")
        return self


class SearchRuntimeConfig(RuntimeConfig):
    """How a search uses the hardware (``RuntimeConfig``) and its memory."""

    recompute: Literal["auto", True, False] = Field(
        "auto", description="recompute each op block's activations in the backward pass instead of keeping them: "
        "the same search in about half the memory, one more forward of the op blocks per step; auto: only when "
        "the supernet would not fit in the device's memory otherwise")


class SearchDataConfig(DataConfig):
    """A search's data: the paper's batch of 256 (section 3.2, "increase the search phase batch size to 256")."""

    batch_size: int = Field(256, gt=0, description="global batch of each half, split over DDP processes")


class SearchRecipe(StrictModel):
    """A whole search run (paper section 3.2 for the CIFAR-10 settings)."""

    recipe_kind: ClassVar[str] = "search"

    name: RunName = "search"
    seed: int = Field(2, **SEED_RANGE)
    data: SearchDataConfig = SearchDataConfig()
    search_space: SearchSpaceConfig = SearchSpaceConfig()
    network: SupernetConfig = SupernetConfig()
    partial_channels: PartialChannelConfig = PartialChannelConfig()
    edge_coefficients: EdgeCoefficientConfig = EdgeCoefficientConfig()
    entropy: EntropyConfig = EntropyConfig()
    optim: OptimConfig = OptimConfig()
    arch_optim: ArchOptimConfig = ArchOptimConfig()
    search: SearchLoopConfig = SearchLoopConfig()
    derive: DeriveConfig = DeriveConfig()
    runtime: SearchRuntimeConfig = SearchRuntimeConfig()
    cost: Optional[CostConfig] = Field(None, description="hardware-aware search (off by default)")

    @model_validator(mode="before")
    @classmethod
    def _nb201_network(cls, data: Any) -> Any:
        """An nb201 search gets NAS-Bench-201's network (C=16, 3 x 5 cells, 3 nodes, output = last node)
        for every network field the recipe leaves out."""
        if not isinstance(data, dict):
            return data
        space = data.get("search_space")
        if isinstance(space, dict):
            space = SearchSpaceConfig._preset_cell(space)
            cell = space.get("cell", "darts")
        else:
            cell = getattr(space, "cell", "darts")
        network = data.get("network", {})
        if cell == "nb201" and isinstance(network, dict):
            data = {**data, "network": {**NB201_NETWORK, **network}}
        return data

    @model_validator(mode="after")
    def _nb201(self) -> "SearchRecipe":
        net = self.network
        if self.search_space.cell == "nb201":
            problems = []
            if net.layers % 3:
                problems.append(f"network.layers={net.layers} must be a multiple of 3 (three stages of cells)")
            if net.nodes != NB201_NETWORK["nodes"]:
                problems.append(f"network.nodes={net.nodes} must be {NB201_NETWORK['nodes']} (NAS-Bench-201's cell: "
                                f"its table holds no cell of another size, so the result could not be looked up)")
            if net.multiplier != 1:
                problems.append(f"network.multiplier={net.multiplier} must be 1 (the cell's output is its last node)")
            if net.stem_multiplier != 1:
                problems.append(f"network.stem_multiplier={net.stem_multiplier} must be 1 (the stem has C channels)")
            if self.cost is not None:
                problems.append("the cost section (hardware-aware search) prices DARTS' cells only; remove it")
            if problems:
                raise ValueError("search_space.cell=nb201: " + "; ".join(problems))
        if self.partial_channels.sampling == "random" and self.partial_channels.ratio == 1:
            raise ValueError("partial_channels.sampling=random needs partial_channels.ratio > 1 "
                             "(with K=1 every channel goes through the ops)")
        return self

    @model_validator(mode="after")
    def _batch(self) -> "SearchRecipe":
        if self.data.batch_size < 2:  # (BatchNorm of the last cells' 1x1 maps: a traceback in the first step)
            raise ValueError("data.batch_size=1: the supernet normalises each batch (BatchNorm), which needs at "
                             "least 2 images; give data.batch_size 2 or more")
        return self

    @model_validator(mode="after")
    def _graphs(self) -> "SearchRecipe":
        """What ``runtime.cuda_graphs`` cannot record in a search (besides ``RuntimeConfig._graphs``): steps whose
        host work changes from one batch to the next."""
        if not self.runtime.cuda_graphs:
            return self
        problems = [what for what, on in (
            ("search.order: second (its step reads the gradient's norm on the host)", self.search.order == "second"),
            ("partial_channels.sampling: random (a new channel mask each batch)",
             self.partial_channels.sampling == "random"),
            ("a cost section (its term is computed on the host)", self.cost is not None),
        ) if on]
        if problems:
            raise ValueError("runtime.cuda_graphs cannot record a step with " + "; ".join(problems))
        return self

    @model_validator(mode="after")
    def _divisible(self) -> "SearchRecipe":
        if DATASETS.get(self.data.dataset).streamed:
            raise ValueError(
                f"data.dataset {self.data.dataset} is streamed from disk and cannot be searched on; "
                "use dataset: imagefolder with data.image_size to search on a small in-memory copy"
            )
        k, c = self.partial_channels.ratio, self.network.channels
        if c % k:
            # the ratios that divide c (up to 64: no search uses more), and the nearest channel counts k divides
            # (the list was all of c's divisors, which took minutes to build for c near 1e12)
            ratios = [d for d in range(1, min(c, 64) + 1) if c % d == 0]
            lower, upper = c - c % k, c - c % k + k
            counts = f"{lower} or {upper}" if lower else f"{upper}"
            raise ValueError(
                f"partial_channels.ratio={k} does not divide network.channels={c}; use a ratio of "
                f"{', '.join(map(str, ratios))} or network.channels={counts}"
            )
        darts_cell = self.search_space.cell == "darts"
        if darts_cell and "skip_connect" in self.search_space.ops and (2 * c // k) % 2:
            raise ValueError(f"skip_connect on reduction edges needs an even number of searched channels (2 x "
                             f"network.channels / partial_channels.ratio = {2 * c // k})")
        if self.search.warmup_epochs is not None and self.search.warmup >= self.search.epochs:
            raise ValueError(
                f"search.warmup_epochs ({self.search.warmup_epochs}) leaves no epoch for architecture "
                f"updates in search.epochs ({self.search.epochs})"
            )
        if self.cost is not None and self.cost.start_epoch is not None and self.cost.start_epoch >= self.search.epochs:
            raise ValueError(
                f"cost.start_epoch ({self.cost.start_epoch}) is not below search.epochs ({self.search.epochs}): "
                "the cost term would never apply"
            )
        return self


#: NAS-Bench-201's search network (``search_space.cell: nb201``): C=16, N=5 cells in each of 3 stages.
NB201_NETWORK = {"channels": 16, "layers": 15, "nodes": 3, "multiplier": 1, "stem_multiplier": 1}

#: Fields that may change on ``--resume`` to continue a run that diverged: learning rates and clipping
#: (the optimiser state and the schedule's position are kept; the schedule restarts from the new lr).
DIVERGENCE_FIXES = ("optim.lr", "optim.lr_min", "optim.grad_clip", "arch_optim.lr", "arch_optim.edge_lr", "cost.weight")
#: Recipe fields that may change when a search is resumed: how it runs, and the divergence fixes.
RESUMABLE_CHANGES = ("runtime.",) + DIVERGENCE_FIXES + (
    "derive.finetune_lr",  # perturbation's fix
    # paths, read from the current folder (a resume from another, a moved dataset): cost.network's network and
    # cost.table's prices are compared on resume
    "data.root", "data.download", "cost.network", "cost.table",
)
