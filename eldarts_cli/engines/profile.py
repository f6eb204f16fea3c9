"""Per-operator latency, MACs and parameters, and a search space chosen from them.

Paper section 2.2.1 and Figure 1: EL-DARTS measured every DARTS operator on
its target device (a GTX 1080 Ti) and kept the cheap ones. ``profile_ops``
repeats that measurement on any device, ``select_space`` turns budgets into a
list of ops, and ``emit_space_yaml`` writes it as a ``search_space`` snippet
that a search recipe can ``include:``.

What is measured, for each op as built for the evaluation network
(``spec.build(channels, stride, affine=True)``) on an input of shape
``(batch, channels, resolution, resolution)``, in the memory format and
precision eldarts trains an evaluation network in on the device by default
(``default_precision``: channels_last, under bfloat16 autocast where the device
computes bf16 natively, float16 on a CUDA GPU without it, else float32;
``dtype`` picks another), as cost tables are timed. Layouts rank ops
differently: in float32 at 64 x 16 x 32x32 on one CPU thread, average pooling
took 6.5 ms NCHW against 1.5 NHWC, ``sep_conv_3x3`` 4.2 against 1.4, max
pooling 3.1 against 2.1.

* forward latency in ms for the whole batch: eval mode under
  ``torch.inference_mode()``, i.e. deployment cost. Optionally forward +
  backward in train mode (training cost). Each timing is ``warmup`` untimed
  calls, then ``repeats`` timed calls; we keep the median, quartiles, min and
  max. On CUDA each call is timed with CUDA events and synchronised; on CPU
  with ``time.perf_counter`` (the thread count is recorded, as it changes
  results a lot).
* MACs per image (batch 1) as counted by thop: convolutions, BatchNorm,
  average pooling and linear layers; max pooling, ReLU and identity count 0.
* parameters: every element of ``module.parameters()``.

Relative cost is latency divided by ``skip_connect``'s. The ``none`` op is
measured (it is one of the eight) but has no relative cost and never enters
an emitted space unless asked: it is how DARTS spells "no edge", not an op a
network runs.
"""

from __future__ import annotations

import datetime as _dt
import io
import math
import os
import json
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Sequence

import torch
from pydantic import Field, ValidationError, field_validator, model_validator
from torch import nn

from ..core.device import (
    autocast, cpu_instructions, cpu_model, device_name, package_version, resolve_device, resolve_precision,
)
from ..core.threads import MAX_THREADS, available_cores
from ..core.errors import EldartsError
from ..core.io import atomic_write_bytes, atomic_write_text, quiet_matplotlib_config
from ..core.validation import StrictModel, format_validation_error
from ..models.ops import OPS
from ..models.sizes import thop_macs

#: ``progress(op, done, total)``: called before each op is measured, with the
#: number of ops already done, and once more with ``done == total`` (op ``""``).
ProgressCallback = Callable[[str, int, int], None]

REFERENCE_OP = "skip_connect"
FORMAT = "eldarts-op-profile"
FORMAT_VERSION = 1
#: Dtypes ops are timed in (profiles and cost tables) and the autocast setting (``core.device.autocast``) of each.
DTYPES = {"float32": "none", "bfloat16": "bf16", "float16": "fp16"}
AMP_DTYPES = {amp: dtype for dtype, amp in DTYPES.items()}


class ProfileError(EldartsError):
    """Bad profiling arguments, an op that cannot run at the given size, or a bad profile file."""


class Timing(StrictModel):
    """Milliseconds per call over ``repeats`` timed calls."""

    median_ms: float = Field(ge=0)
    q1_ms: float = Field(ge=0)
    q3_ms: float = Field(ge=0)
    min_ms: float = Field(ge=0)
    max_ms: float = Field(ge=0)
    repeats: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> "Timing":
        """A hand-edited file's first quartile above its median read as a negative IQR. The quartiles' interpolation
        can put one an ulp past an equal sample: that is no damage."""
        order = [("min_ms", self.min_ms), ("q1_ms", self.q1_ms), ("median_ms", self.median_ms),
                 ("q3_ms", self.q3_ms), ("max_ms", self.max_ms)]
        for (low, below), (high, above) in zip(order, order[1:]):
            if below > above and not math.isclose(below, above, rel_tol=1e-9):
                raise ValueError(f"{low} {below:g} is above {high} {above:g}: a timing goes "
                                 "min_ms <= q1_ms <= median_ms <= q3_ms <= max_ms")
        return self

    @property
    def iqr_ms(self) -> float:
        return self.q3_ms - self.q1_ms

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "Timing":
        values = sorted(samples_ms)
        if len(values) > 1:
            q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
        else:
            q1 = median = q3 = values[0]
        return cls(
            median_ms=median, q1_ms=q1, q3_ms=q3, min_ms=values[0], max_ms=values[-1], repeats=len(values)
        )


class OpProfile(StrictModel):
    name: str
    forward: Timing
    forward_backward: Optional[Timing] = None
    macs: int = Field(ge=0, description="multiply-accumulates per image (batch 1), thop")
    params: int = Field(ge=0)
    output_shape: list[int]
    zero: bool = Field(False, description="the 'none' op: no edge, no meaningful cost")

    @property
    def macs_m(self) -> float:
        return self.macs / 1e6

    @property
    def params_k(self) -> float:
        return self.params / 1e3


class ProfileSettings(StrictModel):
    channels: int = Field(gt=0)
    resolution: int = Field(gt=0)
    batch: int = Field(gt=0)
    stride: Literal[1, 2]
    repeats: int = Field(gt=0)
    warmup: int = Field(ge=0)
    backward: bool
    affine: bool = True
    forward_mode: str = "eval, inference_mode"
    # files written before eldarts recorded these were all timed in float32 on NCHW input
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="autocast dtype of the calls")
    channels_last: bool = Field(False, description="input and op in the NHWC memory format")


class Environment(StrictModel):
    device: str
    device_name: str
    torch_version: str
    cpu_model: Optional[str] = None
    cpu_instructions: Optional[str] = Field(
        None, description="vector instructions of PyTorch's CPU kernels (AVX2, AVX512, +BF16: native bf16); "
        "absent in files written before eldarts recorded it")
    threads: int = Field(gt=0)
    load_average: Optional[float] = Field(None, description="1-minute load average before measuring (Unix)")
    cuda_version: Optional[str] = None
    cudnn_version: Optional[int] = None
    cudnn_benchmark: Optional[bool] = None
    python_version: str
    platform: str
    mac_counter: str
    measured_at: str

    @property
    def label(self) -> str:
        """``cpu (Intel ...)`` or ``cuda:0 (NVIDIA ...)``, for titles."""
        name = (self.cpu_model or self.device_name) if self.device == "cpu" else self.device_name
        if self.device == "cpu" and self.cpu_model and self.cpu_instructions:
            name += f", {self.cpu_instructions}"
        return f"{self.device} ({name})"


class ProfileResult(StrictModel):
    """What ``profile_ops`` measured; saved as JSON by ``save_profile``."""

    format: Literal["eldarts-op-profile"] = FORMAT
    version: Literal[1] = FORMAT_VERSION
    environment: Environment
    settings: ProfileSettings
    ops: list[OpProfile] = Field(min_length=1)

    @field_validator("ops")
    @classmethod
    def _registered_once(cls, ops: list[OpProfile]) -> list[OpProfile]:
        # a hand-edited profile: an op eldarts does not know would reach --emit-space's snippet, which search
        # then refuses; one given twice would be selected on one of its two measurements
        names = [op.name for op in ops]
        for name in names:
            OPS.canonical(name)  # unknown: the registry's message, with a suggestion
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} measured twice")
        return ops

    def op(self, name: str) -> OpProfile:
        for item in self.ops:
            if item.name == name:
                return item
        raise ProfileError(f"op '{name}' is not in this profile; it has: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [item.name for item in self.ops]

    def by_latency(self) -> list[OpProfile]:
        return sorted(self.ops, key=lambda item: item.forward.median_ms)

    def relative_latency(self, name: str) -> Optional[float]:
        """Forward latency as a multiple of ``skip_connect``'s; ``None`` for ``none`` or without a reference."""
        item = self.op(name)
        if item.zero or REFERENCE_OP not in self.names():
            return None
        reference = self.op(REFERENCE_OP).forward.median_ms
        return item.forward.median_ms / reference if reference > 0 else None


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------


#: The most values an op's input may hold: 2^40 float32 values are 4 TiB (larger sizes overflowed PyTorch's
#: size arguments with a traceback; anything near it runs out of memory with eldarts' own message).
MAX_INPUT_VALUES = 2**40


def check_sizes(channels: int, resolution: int, batch: int, stride: int, repeats: int, warmup: int) -> None:
    """Raise ``ProfileError`` for sizes that make no sense, before anything is built."""
    for label, value in (("channels", channels), ("resolution", resolution), ("batch", batch), ("repeats", repeats)):
        if value < 1:
            raise ProfileError(f"--{label} must be a positive integer, got {value}")
    values = batch * channels * resolution * resolution
    if values > MAX_INPUT_VALUES:
        raise ProfileError(f"an input of --batch {batch} x --channels {channels} x --resolution {resolution}^2 is "
                           f"{values:.3g} values, past what any device holds (at most {MAX_INPUT_VALUES:.3g}); "
                           "lower them")
    if warmup < 0:
        raise ProfileError(f"--warmup must be 0 or more, got {warmup}")
    if stride not in (1, 2):
        raise ProfileError(f"--stride must be 1 (normal cell) or 2 (reduction cell), got {stride}")
    if resolution < 2 * stride:
        raise ProfileError(
            f"resolution {resolution} is too small for stride {stride}: a 3x3 op needs at least "
            f"{2 * stride}x{2 * stride} pixels"
        )


def default_precision(device: torch.device) -> tuple[str, bool]:
    """(dtype, channels_last) eldarts trains an evaluation network in on ``device`` by default (``runtime.amp:
    auto``, ``runtime.channels_last`` unset: ``core.device.resolve_precision``)."""
    amp, channels_last = resolve_precision("auto", None, device, search=False)
    return AMP_DTYPES[amp], channels_last


def check_dtype(dtype: str, device: torch.device) -> str:
    """``dtype``, or ``ProfileError`` where ops cannot be timed in it on ``device``."""
    if dtype not in DTYPES:
        raise ProfileError(f"dtype {dtype!r}: use {', '.join(DTYPES)}")
    if device.type == "cpu" and dtype == "float16":
        raise ProfileError("float16 autocast does not run on the CPU here; use float32 or bfloat16")
    return dtype


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _time_calls(call: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> Timing:
    for _ in range(warmup):
        call()
    _synchronize(device)
    samples = []
    if device.type == "cuda":
        # Events measure GPU time; synchronising every call keeps calls from
        # overlapping, so each sample is one isolated call (launches included).
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(repeats):
            start.record()
            call()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            begin = time.perf_counter()
            call()
            _synchronize(device)
            samples.append((time.perf_counter() - begin) * 1e3)
    return Timing.from_samples(samples)


def _load_average() -> Optional[float]:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def busy_cpu_warning(device: torch.device, threads: Optional[int] = None) -> Optional[str]:
    """A warning when torch's threads outnumber this process's cores or other processes keep the CPU busy, or
    ``None``.

    Timings on a busy CPU are inflated, and with several torch threads badly:
    each parallel region waits for a thread the OS has not scheduled yet. More
    threads than cores wait so on an idle CPU too.
    """
    if device.type != "cpu":
        return None
    threads = threads or torch.get_num_threads()
    usable = len(available_cores())
    if threads > usable:
        return (f"torch uses {threads} threads, more than the {usable} core{'s' if usable > 1 else ''} this process "
                f"may run on: timings will be inflated; pass --threads {usable} or fewer")
    load, cores = _load_average(), os.cpu_count()
    if load is None or not cores:
        return None
    if load + threads <= cores + 0.5:
        return None
    advice = "measure on an idle machine" + (" or pass --threads 1" if threads > 1 else "")
    return (
        f"the CPU is busy (load average {load:.1f} on {cores} cores) and torch uses {threads} "
        f"thread{'s' if threads > 1 else ''}: timings will be inflated; {advice}"
    )


def _environment(device: torch.device, load_average: Optional[float]) -> Environment:
    thop_version = package_version("thop") or "unknown"  # None: installed some other way
    cuda = device.type == "cuda"
    return Environment(
        device=str(device),
        device_name=device_name(device),
        torch_version=torch.__version__,
        cpu_model=cpu_model(),
        cpu_instructions=cpu_instructions() if device.type == "cpu" else None,
        threads=torch.get_num_threads(),
        load_average=load_average,
        cuda_version=torch.version.cuda if cuda else None,
        cudnn_version=torch.backends.cudnn.version() if cuda else None,
        cudnn_benchmark=bool(torch.backends.cudnn.benchmark) if cuda else None,
        python_version=platform.python_version(),
        platform=platform.platform(),
        mac_counter=f"thop {thop_version}",
        measured_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


def _build(name: str, channels: int, stride: int) -> nn.Module:
    spec = OPS.get(name)
    try:
        return spec.build(channels, stride, True)
    except (ValueError, RuntimeError) as error:
        raise ProfileError(f"op '{name}' cannot be built with channels={channels}, stride={stride}: {error}") from None


def profile_ops(
    ops: Optional[Sequence[str]] = None,
    *,
    channels: int = 16,
    resolution: int = 32,
    batch: int = 64,
    stride: int = 1,
    device: torch.device | str = "auto",
    repeats: int = 50,
    warmup: int = 10,
    backward: bool = False,
    threads: Optional[int] = None,
    dtype: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
) -> ProfileResult:
    """Measure every op in ``ops`` (default: all registered ops, in registry order).

    ``threads`` sets torch's CPU thread count while measuring (restored after);
    ``None`` keeps the current one. ``dtype`` (float32, bfloat16 or float16)
    defaults to the one an evaluation network trains in on ``device``, as the
    memory format always does (``default_precision``).
    """
    names = list(dict.fromkeys(ops)) if ops is not None else OPS.names()
    if not names:
        raise ProfileError("no ops to profile")
    check_sizes(channels, resolution, batch, stride, repeats, warmup)
    if threads is not None and not 1 <= threads <= MAX_THREADS:
        raise ProfileError(f"--threads must be an integer from 1 to {MAX_THREADS}, got {threads}")
    device = resolve_device(device) if isinstance(device, str) else device
    default_dtype, channels_last = default_precision(device)
    dtype = check_dtype(default_dtype if dtype is None else dtype, device)
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _profile_all(names, channels, resolution, batch, stride, device, repeats, warmup, backward, dtype,
                            channels_last, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _profile_all(names, channels, resolution, batch, stride, device, repeats, warmup, backward, dtype, channels_last,
                 progress) -> ProfileResult:
    # Build everything first: an unknown op or an impossible size fails before any timing.
    modules = {name: _build(name, channels, stride) for name in names}

    load_average = _load_average()
    name = "the input"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    try:
        generator = torch.Generator().manual_seed(0)
        inputs = torch.randn(batch, channels, resolution, resolution, generator=generator)
        example = inputs[:1].clone()  # thop's MAC count, on the CPU, of the module as built
        inputs = inputs.to(device).contiguous(memory_format=memory_format)
        results = []
        for done, name in enumerate(names):
            if progress is not None:
                progress(name, done, len(names))
            results.append(_profile_one(name, modules.pop(name), inputs, example, device, repeats, warmup, backward,
                                        DTYPES[dtype], memory_format))
    except (torch.cuda.OutOfMemoryError, MemoryError, RuntimeError) as error:
        if isinstance(error, RuntimeError) and not _is_out_of_memory(error):
            raise
        raise ProfileError(
            f"out of memory on {device} profiling {name} at batch {batch}, C={channels}, "
            f"{resolution}x{resolution}: lower --batch or --resolution"
        ) from None
    if progress is not None:
        progress("", len(names), len(names))
    return ProfileResult(
        environment=_environment(device, load_average),
        settings=ProfileSettings(
            channels=channels, resolution=resolution, batch=batch, stride=stride,
            repeats=repeats, warmup=warmup, backward=backward, dtype=dtype, channels_last=channels_last,
        ),
        ops=results,
    )


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return "out of memory" in text or "not enough memory" in text or "can't allocate memory" in text


def _profile_one(
    name: str,
    module: nn.Module,
    inputs: torch.Tensor,
    example: torch.Tensor,
    device: torch.device,
    repeats: int,
    warmup: int,
    backward: bool,
    amp: str,
    memory_format: torch.memory_format,
) -> OpProfile:
    macs = thop_macs(module, example)
    params = sum(p.numel() for p in module.parameters())
    module = module.to(device, memory_format=memory_format).eval()

    def forward():
        with torch.inference_mode(), autocast(device, amp):
            return module(inputs)

    output = forward()
    forward_timing = _time_calls(forward, device, repeats, warmup)

    forward_backward_timing = None
    if backward:
        module.train()
        leaf = inputs.detach().clone().requires_grad_(True)
        grad_output = torch.ones_like(output)  # the output's dtype and memory format: no conversion is timed

        def forward_backward():
            leaf.grad = None
            module.zero_grad(set_to_none=True)
            with autocast(device, amp):
                result = module(leaf)
            result.backward(grad_output)

        forward_backward_timing = _time_calls(forward_backward, device, repeats, warmup)

    return OpProfile(
        name=name,
        forward=forward_timing,
        forward_backward=forward_backward_timing,
        macs=macs,
        params=params,
        output_shape=list(output.shape),
        zero=OPS.get(name).zero,
    )


# ---------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------


def save_profile(result: ProfileResult, path: Path | str) -> None:
    atomic_write_text(Path(path), result.model_dump_json(indent=2) + "\n")


#: Other eldarts files with a ``format`` field, as a profile's error names them.
_FORMATS = {"eldarts-cost-table": "a cost table (eldarts profile-ops --table)"}


def _other_format(text: str) -> Optional[str]:
    """What an eldarts file of another ``format`` is (a cost table), else ``None``."""
    try:
        data = json.loads(text)
    except ValueError:
        return None
    kind = data.get("format") if isinstance(data, dict) else None
    if isinstance(kind, str) and kind != FORMAT and kind.startswith("eldarts-"):
        return _FORMATS.get(kind, f"an eldarts file of format {kind!r}")
    return None


def load_profile(path: Path | str) -> ProfileResult:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ProfileError(f"{path}: no such profile file (write one with: eldarts profile-ops --out {path})") from None
    except UnicodeDecodeError as error:
        raise ProfileError(f"{path}: not an eldarts op profile (binary data at byte {error.start}; "
                           f"profiles are JSON written by eldarts profile-ops --out)") from None
    except OSError as error:
        raise ProfileError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return ProfileResult.model_validate_json(text)
    except ValidationError as error:
        from ..runs.files import run_file_kind

        if (what := run_file_kind(path) or _other_format(text)) is not None:
            raise ProfileError(f"{path} is {what}, not an op profile: give a file eldarts profile-ops --out "
                               f"wrote") from None
        problems = format_validation_error(error, ProfileResult, str(path)).replace(f"{path}: ", "").split("; ")
        problems = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        if any(item["type"] == "json_invalid" for item in error.errors()):
            problems += "; profiles are JSON written by eldarts profile-ops --out"
        raise ProfileError(f"{path}: not an eldarts op profile: {problems}") from None


# ---------------------------------------------------------------------------
# Choosing a search space
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Budgets:
    """Upper bounds an op must all meet (``<=``) to enter the space; ``None`` = no bound.

    ``latency_ms`` bounds the forward median for the profiled batch (absolute,
    device-specific); ``latency_rel`` bounds it as a multiple of
    ``skip_connect``'s; ``macs_m`` is millions of MACs per image; ``params_k``
    is thousands of parameters.
    """

    latency_ms: Optional[float] = None
    latency_rel: Optional[float] = None
    macs_m: Optional[float] = None
    params_k: Optional[float] = None

    def __post_init__(self) -> None:
        for label, value in self._given():
            if not 0 <= value < math.inf:  # negative, NaN or no bound at all
                option = {"latency_ms": "--budget-latency", "latency_rel": "--budget-latency-rel",
                          "macs_m": "--budget-macs", "params_k": "--budget-params"}[label]
                raise ProfileError(f"{option} must be a finite number, 0 or more, got {value}")

    def _given(self) -> list[tuple[str, float]]:
        fields = (("latency_ms", self.latency_ms), ("latency_rel", self.latency_rel),
                  ("macs_m", self.macs_m), ("params_k", self.params_k))
        return [(label, value) for label, value in fields if value is not None]

    def any(self) -> bool:
        return bool(self._given())

    def describe(self) -> str:
        parts = []
        if self.latency_ms is not None:
            parts.append(f"latency <= {self.latency_ms:g} ms")
        if self.latency_rel is not None:
            parts.append(f"latency <= {self.latency_rel:g} x {REFERENCE_OP}")
        if self.macs_m is not None:
            parts.append(f"MACs <= {self.macs_m:g} M/image")
        if self.params_k is not None:
            parts.append(f"params <= {self.params_k:g} K")
        return ", ".join(parts) or "no budget"

    def allows(self, result: ProfileResult, name: str) -> bool:
        item = result.op(name)
        if self.latency_ms is not None and item.forward.median_ms > self.latency_ms:
            return False
        if self.latency_rel is not None:
            relative = result.relative_latency(name)
            if relative is None:
                if REFERENCE_OP not in result.names():
                    raise ProfileError(f"a relative latency budget needs '{REFERENCE_OP}' in the profile")
                if not item.zero:  # the reference took no time: no multiple of it bounds anything
                    raise ProfileError(
                        f"a relative latency budget needs a time for '{REFERENCE_OP}', and this profile gives it "
                        f"{result.op(REFERENCE_OP).forward.median_ms:g} ms; use --budget-latency MS instead")
                # the zero op: only the absolute bounds can judge it
            elif relative > self.latency_rel:
                return False
        if self.macs_m is not None and item.macs_m > self.macs_m:
            return False
        if self.params_k is not None and item.params_k > self.params_k:
            return False
        return True


def select_space(result: ProfileResult, budgets: Budgets, *, keep_none: bool = False) -> list[str]:
    """Ops of ``result`` (in profiled order) that meet every budget; ``none`` only with ``keep_none``."""
    if not budgets.any():
        raise ProfileError("give at least one budget (latency, relative latency, MACs or params) to select a space")
    chosen = [item.name for item in result.ops if (keep_none or not item.zero) and budgets.allows(result, item.name)]
    real = [name for name in chosen if not result.op(name).zero]
    if not real:
        cheapest = min((item for item in result.ops if not item.zero), key=lambda item: item.forward.median_ms, default=None)
        hint = (
            f"; the cheapest op is {cheapest.name} at {cheapest.forward.median_ms:.4g} ms, "
            f"{cheapest.macs_m:.4g} M MACs, {cheapest.params_k:.4g} K params"
            if cheapest
            else ""
        )
        raise ProfileError(f"no op fits the budget ({budgets.describe()}){hint}")
    # as recipes refuse one op (config.search): its softmax is 1, nothing to choose; nor is there beside 'none',
    # which derivation never picks
    if len(real) < 2:
        rest = [item for item in result.ops if item.name not in chosen and not item.zero]
        after = min(rest, key=lambda item: item.forward.median_ms, default=None)
        hint = f"; the next cheapest op is {after.name} at {after.forward.median_ms:.4g} ms" if after else ""
        raise ProfileError(f"only {real[0]} fits the budget ({budgets.describe()}), and a search space needs at "
                           f"least two ops other than none to choose among: loosen the budget{hint}")
    return chosen


def space_yaml(ops: Sequence[str], result: ProfileResult, budgets: Budgets) -> str:
    """The ``search_space`` snippet, with where it came from in comments."""
    import yaml

    env, settings = result.environment, result.settings
    lines = [
        f"# generated by eldarts profile-ops on {env.label}, threads={env.threads}, torch {env.torch_version}",
        f"# sizes: C={settings.channels}, {settings.resolution}x{settings.resolution}, batch {settings.batch}, "
        f"stride {settings.stride}, {settings.dtype}, channels_last={settings.channels_last}; measured {env.measured_at}",
        f"# budgets: {budgets.describe()}",
        "# op                 fwd ms (median)   MACs M/img   params K   kept",
    ]
    for item in result.ops:
        mark = "yes" if item.name in ops else "no"
        lines.append(
            f"#   {item.name:<16} {item.forward.median_ms:>14.4f} {item.macs_m:>12.3f} {item.params_k:>10.3f}   {mark}"
        )
    body = yaml.safe_dump({"search_space": {"ops": list(ops)}}, default_flow_style=None, sort_keys=False)
    return "\n".join(lines) + "\n" + body


def emit_space_yaml(ops: Sequence[str], path: Path | str, *, result: ProfileResult, budgets: Budgets) -> None:
    atomic_write_text(Path(path), space_yaml(ops, result, budgets))


# ---------------------------------------------------------------------------
# Figure 1
# ---------------------------------------------------------------------------

PLOT_FORMATS = ("png", "pdf", "svg")


def plot_latency(
    result: ProfileResult,
    path: Path | str,
    *,
    selected: Optional[Sequence[str]] = None,
    budget_ms: Optional[float] = None,
) -> None:
    """Bar chart of forward latency per op (paper Figure 1), quartile error bars.

    Bars follow the profiled order (the DARTS order by default), as in the
    paper. With ``selected``, the ops of an emitted space are drawn darker;
    ``budget_ms`` draws the latency budget as a dashed line.
    """
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in PLOT_FORMATS:
        raise ProfileError(f"{path}: the plot must end in .{', .'.join(PLOT_FORMATS)}")
    quiet_matplotlib_config()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = result.names()
    medians = [item.forward.median_ms for item in result.ops]
    below = [item.forward.median_ms - item.forward.q1_ms for item in result.ops]
    above = [item.forward.q3_ms - item.forward.median_ms for item in result.ops]
    if selected is None:
        colors = ["#4c72b0"] * len(names)
    else:
        colors = ["#4c72b0" if name in selected else "#c7cfdc" for name in names]

    figure = Figure(figsize=(max(6.0, 0.75 * len(names) + 1.5), 4.2), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    bars = axes.bar(names, medians, yerr=[below, above], color=colors, capsize=3, ecolor="#333333", width=0.65)
    handles = []
    if selected is not None:
        from matplotlib.patches import Patch

        handles += [Patch(color="#4c72b0", label="in emitted space"), Patch(color="#c7cfdc", label="left out")]
    if budget_ms is not None:
        handles.append(axes.axhline(budget_ms, color="#c44e52", linestyle="--", linewidth=1, label=f"budget {budget_ms:g} ms"))
    if handles:
        axes.legend(handles=handles, frameon=False, fontsize=8)
    axes.bar_label(bars, labels=[f"{value:.3g}" for value in medians], padding=2, fontsize=7)
    settings, env = result.settings, result.environment
    axes.set_title("Latency of the candidate operations (ms)", fontsize=11)
    figure.text(
        0.5, 0.005,
        f"{env.label}\nC={settings.channels}, {settings.resolution}x{settings.resolution}, "
        f"batch {settings.batch}, stride {settings.stride}, {settings.dtype}, channels_last={settings.channels_last} | "
        f"median of {settings.repeats}, bars: quartiles",
        ha="center", va="bottom", fontsize=7, color="#555555",
    )
    axes.set_ylabel("ms per forward")
    top = max(max(medians + [0.0]) + max(above + [0.0]), budget_ms or 0.0, 1e-6)
    axes.set_ylim(0, top * 1.15)
    axes.tick_params(axis="x", labelrotation=40, labelsize=8)
    for label in axes.get_xticklabels():
        label.set_horizontalalignment("right")
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    figure.tight_layout(rect=(0, 0.06, 1, 1))  # (the caption's two lines below; one line was cut at both ends)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=suffix)
    atomic_write_bytes(Path(path), buffer.getvalue())

