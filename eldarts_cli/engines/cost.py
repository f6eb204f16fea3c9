"""Hardware-aware search: cost tables, the cost objective of a search, predicted against measured cost.

* ``eldarts profile-ops --table OUT.json --network EVAL_RECIPE`` calls
  :func:`profile_network`: every op at every (channels, resolution, stride)
  the evaluation network uses, and every fixed part of it (stem, the cells'
  input preprocessings, node sums and concatenation, pooling, classifier),
  timed as ``engines/profile.py`` times ops (warm-up, then median and
  quartiles of timed calls; CUDA events on GPU), in eval mode under
  ``inference_mode`` and the evaluation recipe's precision. The file
  (:class:`CostTable`) records device, dtype, memory format, batch, threads
  and torch version.
* A search with a ``cost:`` section builds a :class:`CostObjective`: the
  cost model of ``models/cost.py`` for the recipe's search space and
  evaluation network (MACs and parameters counted, latency from the table,
  checked to cover every op and size and to come from this device and
  dtype), the term it adds to the architecture loss
  (``engines/objectives.py``), the per-epoch figures, and at the end the
  derived network's predicted cost beside its measured one (thop for MACs,
  a parameter count, a timed forward on the table's device for latency).
"""

from __future__ import annotations

import hashlib
import math
import os
import shlex
from pathlib import Path
from typing import Literal, Optional, Sequence

import torch
from pydantic import Field, ValidationError, model_validator

from ..config.base import load_recipe
from ..config.evaluate import EvalRecipe
from ..config.search import SearchRecipe
from ..core.device import autocast, cpu_label, cpu_model, resolve_device
from ..core.errors import RecipeError
from ..core.threads import MAX_THREADS
from ..core.io import atomic_write_text, read_json
from ..core.validation import StrictModel, format_validation_error
from ..models.cost import (
    UNITS, CostError, CostModel, FixedPart, NetworkLayout, OpSite, build_layout_network, build_op, trace_layout,
)
from ..models.genotypes import Genotype
from ..models.ops import OPS
from ..models.spaces import SEARCH_SPACES
from ..models.sizes import count_parameters, count_params_macs
from ..runs.files import HardwareCost
from .evaluate import expected_input, resolve_precision
from .objectives import cost_penalty, cost_term
from .profile import (
    AMP_DTYPES, DTYPES, Environment, ProgressCallback, Timing, _environment, _load_average, _time_calls, check_dtype,
)

TABLE_FORMAT = "eldarts-cost-table"


# ---------------------------------------------------------------------------
# The table file
# ---------------------------------------------------------------------------


class OpEntry(StrictModel):
    op: str
    channels: int = Field(gt=0)
    resolution: int = Field(gt=0)
    stride: Literal[1, 2]
    forward: Timing

    @property
    def site(self) -> OpSite:
        return OpSite(self.channels, self.resolution, self.stride)


class FixedEntry(StrictModel):
    name: str
    kind: Literal["module", "glue"]
    input_shape: list[int]
    forward: Timing


class TableNetwork(StrictModel):
    """The evaluation network the table was measured for (``NetworkLayout.signature``)."""

    recipe: Optional[str] = None
    kind: str
    channels: int
    layers: int
    nodes: int
    multiplier: int
    input: list[int]
    num_classes: int


class TableSettings(StrictModel):
    batch: int = Field(gt=0)
    dtype: Literal["float32", "bfloat16", "float16"]
    channels_last: bool
    repeats: int = Field(gt=0)
    warmup: int = Field(ge=0)
    forward_mode: str = "eval, inference_mode"


class CostTable(StrictModel):
    """Forward latency (ms per batch) of every op at every site, and of every fixed part, of one network."""

    format: Literal["eldarts-cost-table"] = TABLE_FORMAT
    version: Literal[1] = 1
    environment: Environment
    settings: TableSettings
    network: TableNetwork
    ops: list[OpEntry]
    fixed: list[FixedEntry]

    @model_validator(mode="after")
    def _once_each(self) -> "CostTable":
        """An entry listed twice (a hand-edited or merged table) was read silently, the later value winning."""
        seen: set = set()
        for key, what in ([((e.op, e.site), f"op {e.op} at {e.site.describe()}") for e in self.ops]
                          + [((e.name, tuple(e.input_shape)), f"{e.name} on input {list(e.input_shape)}")
                             for e in self.fixed]):
            if key in seen:
                raise ValueError(f"it lists {what} twice; keep one entry each (or measure the table again)")
            seen.add(key)
        return self

    def op_names(self) -> list[str]:
        return list(dict.fromkeys(entry.op for entry in self.ops))

    def op_costs(self) -> dict[tuple[str, OpSite], float]:
        return {(entry.op, entry.site): entry.forward.median_ms for entry in self.ops}

    def fixed_costs(self) -> dict[tuple[str, tuple[int, ...]], float]:
        return {(entry.name, tuple(entry.input_shape)): entry.forward.median_ms for entry in self.fixed}

    def describe(self) -> str:
        env, s = self.environment, self.settings
        return (f"{env.label}, {s.dtype}, batch {s.batch}, threads {env.threads}, torch {env.torch_version}, "
                f"measured {env.measured_at}")


def save_table(table: CostTable, path: Path | str) -> None:
    atomic_write_text(Path(path), table.model_dump_json(indent=2) + "\n")


def load_table(path: Path | str, field: str = "cost.table", network: Optional[Path] = None) -> CostTable:
    """``network``: the evaluation recipe the table is for (``cost.network``), named in the command that measures
    a missing table (a placeholder, EVAL_RECIPE, could not be pasted)."""
    path = Path(path)
    if not path.exists():
        raise CostError(f"{field} {path} does not exist" + _relative_note(path) + "; measure it with: "
                        + shlex.join(["eldarts", "profile-ops", "--table", str(path), "--network",
                                      str(network) if network is not None else "EVAL_RECIPE"]))
    try:
        data = read_json(path)
    except (ValueError, UnicodeDecodeError) as error:
        raise CostError(f"{field} {path} is not valid JSON ({error})") from None
    except OSError as error:
        raise CostError(f"{field} {path}: cannot read ({error.strerror})") from None
    if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
        raise CostError(f"{field} {path} is not an eldarts cost table (write one with eldarts profile-ops --table)")
    try:
        return CostTable.model_validate(data)
    except ValidationError as error:
        problems = format_validation_error(error, CostTable, str(path))
        raise CostError(f"{field} {path} is not a valid cost table: {problems.replace(f'{path}: ', '')}") from None


def check_table_output(path: Path, force: bool = False) -> None:
    """``--table`` may replace a cost table with ``--force`` (as ``--out``, ``--plot``, ``--emit-space``), never a
    file eldarts did not write."""
    path = Path(path)
    if path.is_dir():
        raise CostError(f"--table {path} is a folder; give a file name such as {path / 'cost-table.json'}")
    if path.exists():
        try:
            load_table(path, "--table")
        except CostError:
            raise CostError(f"--table {path} exists and is not an eldarts cost table; it is left alone "
                            "(choose another file name)") from None
        if not force:
            raise CostError(f"--table {path} exists (a cost table measured before); eldarts does not overwrite it "
                            "unless you add --force")


# ---------------------------------------------------------------------------
# Devices and precision
# ---------------------------------------------------------------------------


def device_key(device: torch.device, instructions: bool = True) -> str:
    """The hardware a device is: ``cpu: <model> (<instructions>)`` or ``cuda: <name>`` (indices and thread
    counts left out). A CPU's model name alone can hide two CPUs (one cloud's "AMD EPYC" is AVX2-only on one
    host, AVX512-BF16 on another, measured 2x apart), so the vector instructions are part of it;
    ``instructions=False``: the model alone, to compare with tables written before eldarts recorded them."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        return f"cpu: {cpu_label()}" if instructions else f"cpu: {cpu_model()}"
    return device.type


def table_key(env: Environment) -> str:
    kind = env.device.split(":")[0]
    if kind == "cpu":
        return f"cpu: {env.cpu_model}" + (f" ({env.cpu_instructions})" if env.cpu_instructions else "")
    if kind == "cuda":
        return f"cuda: {env.device_name}"
    return kind


def key_here(env: Environment, device: torch.device) -> str:
    """``device``'s key in the form ``env``'s table has (with the CPU's instructions where the table names them)."""
    return device_key(device, instructions=bool(env.cpu_instructions))


def table_device_here(table: CostTable) -> Optional[torch.device]:
    """The device of this machine the table was measured on, or ``None``."""
    key = table_key(table.environment)
    if key == key_here(table.environment, torch.device("cpu")):
        return torch.device("cpu")
    if key.startswith("cuda") and torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            device = torch.device("cuda", index)
            if device_key(device) == key:
                return device
    return None


def evaluation_dtype(recipe: EvalRecipe, device: torch.device) -> tuple[str, bool]:
    """(dtype, channels_last) the evaluation recipe runs its network in on ``device``."""
    amp, channels_last = resolve_precision(recipe, device)
    return AMP_DTYPES[amp], channels_last


# ---------------------------------------------------------------------------
# Measuring a table
# ---------------------------------------------------------------------------


def _relative_note(path: Path) -> str:
    """Where a relative path was looked for: the current folder, not the recipe's (unlike ``include:``)."""
    return "" if path.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"


def load_evaluation_recipe(path: Path | str, field: str = "cost.network") -> EvalRecipe:
    path = Path(path)
    if not path.is_file():
        # (the example it gave, recipes/eval-quick.yaml, was often the very relative path that was not found)
        instead = ("run from the folder it is relative to, or give its absolute path" if not path.is_absolute()
                   else "give an evaluation recipe such as recipes/eval-quick.yaml")
        raise CostError(f"{field} {path} does not exist" + _relative_note(path) + f"; {instead}")
    try:
        recipe = load_recipe(path, EvalRecipe, role=f"{field} takes the evaluation recipe of the network to price, "
                                                     "such as recipes/eval-cifar10.yaml")
    except RecipeError as error:
        raise CostError(f"{field} {path} is not a valid evaluation recipe: {error}") from None
    if recipe.network.kind == "nb201":  # (it failed on an inner probe cell: "probe is a DARTS cell")
        raise CostError(f"{field} {path} trains a NAS-Bench-201 network (network.kind: nb201); cost sections and "
                        "cost tables price DARTS cells only: give a cifar or imagenet evaluation recipe")
    return recipe


def evaluation_layout(recipe: EvalRecipe, nodes: int, multiplier: int) -> tuple[NetworkLayout, torch.nn.Module]:
    shape = expected_input(recipe)
    net = recipe.network
    return trace_layout(net.kind, channels=net.channels, layers=net.layers, nodes=nodes, multiplier=multiplier,
                        input_shape=(shape.channels, shape.size, shape.size), num_classes=shape.num_classes)


class _Glue(torch.nn.Module):
    """A cell's node sums and output concatenation: ``nodes`` additions of two edge outputs, then a concat."""

    def __init__(self, nodes: int, multiplier: int):
        super().__init__()
        self.nodes, self.multiplier = nodes, multiplier

    def forward(self, edges: list[torch.Tensor]) -> torch.Tensor:
        states = [edges[2 * j] + edges[2 * j + 1] for j in range(self.nodes)]
        return torch.cat(states[-self.multiplier :], dim=1)


def profile_network(
    recipe: EvalRecipe,
    *,
    recipe_path: Optional[str] = None,
    ops: Optional[Sequence[str]] = None,
    nodes: int = 4,
    multiplier: int = 4,
    device: torch.device | str = "auto",
    batch: int = 1,
    dtype: Optional[str] = None,
    repeats: int = 50,
    warmup: int = 10,
    threads: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
) -> CostTable:
    """Time every op in ``ops`` (default: every registered op but ``none``; a search space's name such as
    ``ess`` gives its ops) at every site of the network.

    ``dtype`` defaults to the evaluation recipe's precision on ``device``
    (its ``runtime.amp``: float32 on CPU, bfloat16 on CUDA by default), and so
    does the memory format (``runtime.channels_last``).
    """
    if ops is not None and len(ops) == 1 and ops[0] in SEARCH_SPACES:
        ops = SEARCH_SPACES.get(ops[0]).ops
    names = [OPS.canonical(op) for op in ops] if ops is not None else OPS.names()
    names = [op for op in dict.fromkeys(names) if not OPS.get(op).zero]
    if not names:
        raise CostError("no ops to measure ('none' costs nothing and is never measured)")
    for label, value in (("batch", batch), ("repeats", repeats), ("nodes", nodes), ("multiplier", multiplier)):
        if value < 1:
            raise CostError(f"{label} must be a positive integer, got {value}")
    if warmup < 0:
        raise CostError(f"warmup must be 0 or more, got {warmup}")
    if multiplier > nodes:
        raise CostError(f"multiplier ({multiplier}) cannot exceed nodes ({nodes})")
    device = resolve_device(device) if isinstance(device, str) else device
    default_dtype, channels_last = evaluation_dtype(recipe, device)
    dtype = check_dtype(dtype or default_dtype, device)
    layout, probe = evaluation_layout(recipe, nodes, multiplier)
    # Every op must build at every site before anything is timed.
    modules = {(op, site): build_op(op, site) for op in names for site in layout.sites()}
    previous = torch.get_num_threads()
    if threads is not None:
        if not 1 <= threads <= MAX_THREADS:
            raise CostError(f"--threads must be an integer from 1 to {MAX_THREADS}, got {threads}")
        torch.set_num_threads(threads)
    try:
        load = _load_average()
        timer = _Timer(device, DTYPES[dtype], channels_last, batch, repeats, warmup)
        total = len(modules) + len(layout.fixed)
        entries, fixed = [], []
        for done, ((op, site), module) in enumerate(modules.items()):
            if progress is not None:
                progress(f"{op} C={site.channels} {site.resolution}px s{site.stride}", done, total)
            timing = timer.module(module, (site.channels, site.resolution, site.resolution))
            entries.append(OpEntry(op=op, channels=site.channels, resolution=site.resolution, stride=site.stride,
                                   forward=timing))
        for done, part in enumerate(layout.fixed, start=len(modules)):
            if progress is not None:
                progress(part.name, done, total)
            fixed.append(FixedEntry(name=part.name, kind=part.kind, input_shape=list(part.input_shape),
                                    forward=timer.fixed(part, probe, nodes, multiplier)))
        if progress is not None:
            progress("", total, total)
        environment = _environment(device, load)
    finally:
        torch.set_num_threads(previous)
    return CostTable(
        environment=environment,
        settings=TableSettings(batch=batch, dtype=dtype, channels_last=channels_last, repeats=repeats, warmup=warmup),
        network=TableNetwork(recipe=recipe_path, **layout.signature()),
        ops=entries,
        fixed=fixed,
    )


class _Timer:
    """Times modules on random inputs of one batch size, under the table's precision and memory format."""

    def __init__(self, device: torch.device, amp: str, channels_last: bool, batch: int, repeats: int, warmup: int):
        self.device, self.amp, self.batch = device, amp, batch
        self.repeats, self.warmup = repeats, warmup
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator().manual_seed(0)

    def input(self, shape: Sequence[int]) -> torch.Tensor:
        x = torch.randn(self.batch, *shape, generator=self.generator).to(self.device)
        return x.contiguous(memory_format=self.format) if x.dim() == 4 else x

    def time(self, module: torch.nn.Module, args: tuple) -> Timing:
        module = module.to(self.device).eval()
        if self.format is torch.channels_last:
            module = module.to(memory_format=torch.channels_last)

        def forward():
            with torch.inference_mode(), autocast(self.device, self.amp):
                return module(*args)

        try:
            return _time_calls(forward, self.device, self.repeats, self.warmup)
        except (torch.cuda.OutOfMemoryError, MemoryError):
            raise CostError(f"out of memory on {self.device} at batch {self.batch}: lower --batch") from None

    def module(self, module: torch.nn.Module, shape: Sequence[int]) -> Timing:
        return self.time(module, (self.input(shape),))

    def fixed(self, part: FixedPart, probe: torch.nn.Module, nodes: int, multiplier: int) -> Timing:
        if part.kind == "glue":
            edges = [self.input(part.input_shape) for _ in range(2 * nodes)]
            return self.time(_Glue(nodes, multiplier), (edges,))
        return self.module(probe.get_submodule(part.name), part.input_shape)


# ---------------------------------------------------------------------------
# Checking a table against a search
# ---------------------------------------------------------------------------


def check_table(table: CostTable, path: Path, layout: NetworkLayout, ops: Sequence[str], *, device: torch.device,
                dtype: str, allow_foreign: bool, network_recipe: Path) -> None:
    """Refuse a table that does not price this search, with one message saying what to measure."""
    # the table exists: measuring it again into the same file replaces it, which profile-ops does with --force only
    remeasure = shlex.join(["eldarts", "profile-ops", "--table", str(path), "--network", str(network_recipe), "--force"])
    wanted = layout.signature()
    given = table.network.model_dump(exclude={"recipe"})
    if given != wanted:
        diffs = [f"{key} {given[key]} (table) vs {wanted[key]}" for key in wanted if given[key] != wanted[key]]
        raise CostError(f"cost.table {path} was measured for another network: {'; '.join(diffs)} "
                        f"(cost.network {network_recipe}: {layout.describe()}); measure it with: {remeasure}"
                        + (f" --nodes {layout.nodes} --multiplier {layout.multiplier}"
                           if (layout.nodes, layout.multiplier) != (4, 4) else ""))
    costs = table.op_costs()
    needed = [op for op in ops if not OPS.get(op).zero]
    missing_ops = [op for op in needed if op not in table.op_names()]
    if missing_ops:
        raise CostError(f"cost.table {path} has no entries for {', '.join(missing_ops)} (it has: "
                        f"{', '.join(table.op_names())}); measure the search space's ops: "
                        f"{remeasure} --ops {','.join(needed)}")
    missing = [f"{op} at {site.describe()}" for op in needed for site in layout.sites() if (op, site) not in costs]
    fixed = table.fixed_costs()
    missing += [f"{part.name} ({'x'.join(map(str, part.input_shape))})" for part in layout.fixed
                if (part.name, part.input_shape) not in fixed]
    if missing:
        raise CostError(f"cost.table {path} lacks {len(missing)} size(s) this network uses: "
                        f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}; measure it with: {remeasure}")
    if allow_foreign:
        return
    here = key_here(table.environment, device)
    if table_key(table.environment) != here:
        raise CostError(f"cost.table {path} was measured on {table_key(table.environment)}, but this search runs "
                        f"on {here}; measure a table here ({remeasure}) or accept it with "
                        "--set cost.allow_foreign_table=true")
    if table.settings.dtype != dtype:
        raise CostError(f"cost.table {path} was measured in {table.settings.dtype}, but the evaluation recipe "
                        f"runs the network in {dtype} on {device.type}; measure a table in {dtype} "
                        f"({remeasure} --dtype {dtype}) or accept it with --set cost.allow_foreign_table=true")


# ---------------------------------------------------------------------------
# The objective of a search
# ---------------------------------------------------------------------------


class CostObjective:
    """The cost model of one search, bound to its supernet: loss term, per-epoch figures, final report."""

    def __init__(self, recipe: SearchRecipe, supernet: torch.nn.Module, device: torch.device):
        cfg = recipe.cost
        assert cfg is not None
        self.cfg = cfg
        self.supernet = supernet
        self.start = cfg.start_epoch if cfg.start_epoch is not None else recipe.search.warmup
        self.derive_method = recipe.derive.method
        self.evaluation = load_evaluation_recipe(cfg.network)
        self.table: Optional[CostTable] = None
        self.foreign = False
        # Pricing builds modules; the search's random stream must not notice.
        with torch.random.fork_rng(devices=[]):
            self.layout, probe = evaluation_layout(self.evaluation, recipe.network.nodes, recipe.network.multiplier)
            ops = recipe.search_space.ops
            if cfg.metric == "latency":
                self.table = load_table(cfg.table, network=cfg.network)
                dtype, _ = evaluation_dtype(self.evaluation, device)
                check_table(self.table, cfg.table, self.layout, ops, device=device, dtype=dtype,
                            allow_foreign=cfg.allow_foreign_table, network_recipe=cfg.network)
                self.foreign = (table_key(self.table.environment) != key_here(self.table.environment, device)
                                or self.table.settings.dtype != dtype)
                fixed = self.table.fixed_costs()
                op_costs = self.table.op_costs()
                self.model = CostModel.from_costs(
                    "latency", self.layout, ops, lambda op, site: op_costs[(op, site)],
                    sum(fixed[(part.name, part.input_shape)] for part in self.layout.fixed))
            else:
                self.model = CostModel.counted(cfg.metric, self.layout, probe, ops)
        self.model = self.model.to(device)
        self._final: Optional[tuple[Genotype, HardwareCost]] = None
        if cfg.form == "log_ratio" and cfg.weight > 0:
            self._check_log_ratio()

    def _check_log_ratio(self) -> None:
        """``log_ratio`` multiplies the cross-entropy by ``1 + w * ((log E / log T)^beta - 1)``, ``E`` below 1
        counted as 1: where every derivable network costs at most 1 in the unit the term is constant (no cost
        gradient), and with a weight above 1 the multiplier can fall to 0 or below, where the architecture step
        maximises the cross-entropy. Both ran silently (a target of 2 M MACs on 0.24-0.83 M MACs networks:
        the loss was -CE for the whole search); refused, naming what to change."""
        cfg, unit = self.cfg, self.unit
        low, high = self.bounds()
        shown = f"{low:.4g} to {high:.4g} {unit}"
        if high <= 1:
            raise RecipeError(
                f"cost.form=log_ratio takes the log of the cost in {unit}, and the networks this space can derive "
                f"cost {shown}: at most 1, whose log counts as 0, so the term would give the search no cost "
                f"gradient; use cost.form=hinge (or absolute, linear), which divide by the target instead")
        ratio = (math.log(max(low, 1.0)) / math.log(cfg.target)) ** cfg.beta
        multiplier = 1 + cfg.weight * (ratio - 1)
        if multiplier <= 0:
            most = 1 / (1 - ratio)
            raise RecipeError(
                f"cost.form=log_ratio with cost.weight={cfg.weight:g}: at the cheapest network this space can derive "
                f"({low:.4g} {unit}; derivable {shown}) the architecture loss would be the cross-entropy x "
                f"{multiplier:.2f}, which the search would maximise; give cost.weight below {most:.3g} (1 is FBNet's "
                f"and ProxylessNAS' form), or cost.form=hinge")

    @property
    def unit(self) -> str:
        return UNITS[self.cfg.metric]

    def applies(self, epoch: int) -> bool:
        """Whether the term is added this epoch (a weight of 0 never adds it: the search is the one without)."""
        return self.cfg.weight > 0 and epoch >= self.start

    def expected(self) -> torch.Tensor:
        """``E`` in the target's unit, with gradients to the architecture weights."""
        return self.model.expected_of(self.supernet) / self.model.scale

    def term(self, cross_entropy: torch.Tensor) -> torch.Tensor:
        return cost_term(cross_entropy, self.expected(), self.cfg)

    @torch.no_grad()
    def epoch_fields(self, genotype: Genotype) -> dict:
        """The ``cost_*`` fields of a ``SearchEpoch`` row."""
        expected = self.expected()
        return {
            "cost_metric": self.cfg.metric,
            "cost_target": self.cfg.target,
            "cost_expected": float(expected),
            "cost_derived": self.model.report(self.model.of_genotype(genotype)),
            "cost_penalty": float(cost_penalty(expected, self.cfg)),
        }

    def bounds(self) -> tuple[float, float]:
        low, high = self.model.bounds()
        return self.model.report(low), self.model.report(high)

    def advice(self) -> list[str]:
        """What keeps the cost term from its aim, as warnings: at the start of a search and in its dry run (which
        alone said the first; a run went on to "over" at its end)."""
        from ..runs.tables import fmt_hardware

        low, high = self.bounds()
        target, notes = self.cfg.target, []
        if target < low:
            notes.append(f"the target ({fmt_hardware(target, self.unit)}) is below the cheapest network this space "
                         f"can derive ({fmt_hardware(low, self.unit)}): no derived cell can meet it")
        elif self.cfg.form == "hinge" and self.cfg.weight > 0 and target >= high:
            notes.append(f"the target ({fmt_hardware(target, self.unit)}) is at or above the dearest network this "
                         f"space can derive ({fmt_hardware(high, self.unit)}): the hinge term is always 0, and the "
                         "search runs as it would without a cost section")
        if self.derive_method == "perturbation":
            notes.append("derive.method perturbation chooses the cell by validation accuracy alone, not by cost: "
                         "the saved cell may miss the target (the magnitude rule's, which the cost term steers, is "
                         "written too with derive.both: true)")
        return notes

    def prices(self) -> Optional[str]:
        """A latency search's op and fixed costs as its table gave them (a digest), to tell on a resume whether
        ``cost.table`` still prices the ops as it did; ``None`` for counted metrics (fixed by the network)."""
        if self.table is None:
            return None
        digest = hashlib.sha256(repr((self.model.ops, self.model.fixed)).encode())
        for costs in (self.model.normal, self.model.reduce):
            digest.update(costs.detach().cpu().numpy().tobytes())
        return digest.hexdigest()

    def describe(self) -> dict:
        """What ``--dry-run`` shows."""
        low, high = self.bounds()
        with torch.no_grad():
            expected = float(self.expected())
        return {"metric": self.cfg.metric, "unit": self.unit, "target": self.cfg.target, "form": self.cfg.form,
                "weight": self.cfg.weight, "network": self.layout.describe(), "expected_now": expected,
                "cheapest": low, "dearest": high, "advice": self.advice(),
                "table": None if self.table is None else f"{self.cfg.table} ({self.table.describe()})"}

    def final(self, genotype: Genotype) -> HardwareCost:
        """Predicted against measured cost of the derived network (measured once per genotype)."""
        if self._final is not None and self._final[0] == genotype:
            return self._final[1]
        predicted = self.model.report(self.model.of_genotype(genotype))
        with torch.no_grad():
            expected = float(self.expected())
        measured, spread, how, note = self._measure(genotype)
        error = None if measured is None or measured == 0 else 100.0 * (predicted - measured) / measured
        report = HardwareCost(
            metric=self.cfg.metric, unit=self.unit, target=self.cfg.target, form=self.cfg.form,
            weight=self.cfg.weight, network=str(self.cfg.network), layout=self.layout.describe(),
            expected=expected, predicted=predicted, measured=measured, measured_iqr=spread, measured_by=how,
            error_percent=error, within_target=(measured if measured is not None else predicted) <= self.cfg.target,
            table=None if self.cfg.table is None else str(self.cfg.table),
            table_device=None if self.table is None else self.table.describe(),
            foreign_table=self.foreign, note=note,
        )
        self._final = (genotype, report)
        return report

    def _network(self, genotype: Genotype) -> torch.nn.Module:
        c, h, _ = self.layout.input_shape
        with torch.random.fork_rng(devices=[]):
            return build_layout_network(self.layout.kind, genotype, channels=self.layout.channels,
                                        layers=self.layout.layers, in_channels=c, num_classes=self.layout.num_classes)

    def _measure(self, genotype: Genotype) -> tuple[Optional[float], Optional[float], str, Optional[str]]:
        network = self._network(genotype)
        if self.cfg.metric == "params":
            return count_parameters(network) / 1e6, None, "parameter count (auxiliary head excluded)", None
        if self.cfg.metric == "macs":
            macs = count_params_macs(network, self.layout.input_shape)["macs_m"]
            return macs, None, "thop (batch 1, eval mode, auxiliary head excluded)", None
        return measure_latency(network, self.layout.input_shape, self.table)


def measure_latency(network: torch.nn.Module, input_shape: Sequence[int], table: CostTable
                    ) -> tuple[Optional[float], Optional[float], str, Optional[str]]:
    """A timed forward of the whole network on the table's device, batch, dtype, memory format and threads."""
    device = table_device_here(table)
    settings, env = table.settings, table.environment
    how = (f"timed forward on {env.label}: batch {settings.batch}, {settings.dtype}, median of {settings.repeats} "
           f"after {settings.warmup} warm-up")
    if device is None:  # what would measure it, said as such: no figure stands beside it
        return None, None, f"not measured here; would be a {how}", \
            f"the table's device ({table_key(env)}) is not on this machine"
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(env.threads)
        how += f", {env.threads} thread{'s' if env.threads > 1 else ''}"
    try:
        timer = _Timer(device, DTYPES[settings.dtype], settings.channels_last, settings.batch, settings.repeats,
                       settings.warmup)
        timing = timer.module(network, input_shape)
    finally:
        torch.set_num_threads(previous)
    load = _load_average()
    note = None
    if device.type == "cpu" and load is not None and load > (os.cpu_count() or 1):
        note = f"load average {load:.1f} on {os.cpu_count()} cores while measuring: timings are inflated"
    return timing.median_ms, timing.iqr_ms, how, note
