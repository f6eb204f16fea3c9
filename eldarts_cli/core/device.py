"""``--device auto|cpu|cuda[:N]``, resolved once and passed down; autocast helper."""

from __future__ import annotations

import contextlib
import re
from typing import Optional

import torch

from .errors import EldartsError, refused_here
from .threads import thread_words


def check_device_name(name: Optional[str]) -> str:
    """``name`` stripped and lower-cased, or ValueError when it names no device eldarts runs on. The name only:
    a recipe is checked with it when read (a ``--dry-run`` may plan for another machine), and
    :func:`resolve_device` checks that this machine has the device."""
    name = "auto" if name is None else name
    normal = name.strip().lower()
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", normal):
        raise ValueError(f"unknown device '{name}': use auto, cpu, cuda, cuda:N or mps")
    return normal


def resolve_device(name: str = "auto", option: Optional[str] = None, instead: str = "--device cpu") -> torch.device:
    """The device ``name`` names, or one error line when this machine has none such. ``option``: the option that
    gave it, named first in the line (``--devices`` for ``eldarts ablate``); ``instead``: what to give to run on
    the CPU."""
    where = f"{option} {name}: " if option else ""
    try:
        name = check_device_name(name or "auto")
    except ValueError as error:
        raise EldartsError(f"{where}{error}") from None
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EldartsError(f"{where}device '{name}' asked for, but CUDA is not available here; use {instead}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EldartsError(
                f"{where}device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise EldartsError(f"{where}device 'mps' asked for, but MPS is not available here")
    return device


def planning_device(name: str = "auto") -> torch.device:
    """The device a ``--dry-run`` sizes a run for: :func:`resolve_device`'s, or, for a device this machine lacks
    (a run planned for another machine), the CPU, with a warning that a run here would be refused."""
    with refused_here(planning=True, then="; the sizes below are for the CPU"):
        return resolve_device(name)
    return torch.device("cpu")


def package_version(name: str) -> Optional[str]:
    """An installed distribution's version (``thop``, ``scikit-learn``), or None where it is not installed as one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpuinfo(text: Optional[str] = None) -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (``text``: its text); empty where there is none."""
    if text is None:
        try:
            with open("/proc/cpuinfo") as f:
                text = f.read(65536)
        except OSError:
            return {}
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            if fields:
                break  # the end of the first processor's block
            continue
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform

    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_instructions() -> str:
    """The vector instructions PyTorch's CPU kernels use here (``AVX2``, ``AVX512``, ...), with ``+BF16`` where
    the CPU also computes bf16 natively. Two CPUs of one model name can differ here (a cloud's "AMD EPYC" is
    AVX2-only on one host, AVX512-BF16 on another) and eldarts' CPU speed with them: bench results name it."""
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    return capability + ("+BF16" if cpu_has_native_bf16() else "")


def cpu_family(cpuinfo: Optional[str] = None) -> Optional[str]:
    """``family 26, model 2`` from ``/proc/cpuinfo`` (``cpuinfo``: its text), else ``None``. Cloud CPUs share a
    model name ("AMD EPYC") across generations that run eldarts at different speeds: benchmark records name the
    family and model too."""
    fields = _cpuinfo(cpuinfo)
    if "cpu family" not in fields:
        return None
    return f"family {fields['cpu family']}" + (f", model {fields['model']}" if "model" in fields else "")


def cpu_label(detail: bool = False) -> str:
    """``<model> (<instructions>)``, e.g. ``AMD EPYC (AVX2)``: the CPU as benchmarks and cost tables name it;
    ``detail``: with its family and model where the system says (``AMD EPYC (AVX512+BF16), family 26, model 2``),
    as benchmark records name it."""
    label = f"{cpu_model()} ({cpu_instructions()})"
    family = cpu_family() if detail else None
    return f"{label}, {family}" if family else label


def device_name(device: torch.device, threads: Optional[str] = None) -> str:
    """The device as run files and tables name it; on the CPU with ``threads`` (e.g. a ``ThreadGovernor``'s
    ``describe()``: what a whole run used), else torch's thread count now."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    count = torch.get_num_threads()
    return f"cpu ({cpu_model()}, {cpu_instructions()}, {threads or thread_words(count)})"


def resolve_precision(amp: str, channels_last: Optional[bool], device: torch.device, *,
                      search: bool) -> tuple[str, bool]:
    """``runtime.amp`` and ``runtime.channels_last`` with ``auto``/``None`` resolved for ``device``.

    * amp ``auto`` for training from scratch: bf16 autocast where the device computes bf16 natively (a
      CUDA GPU with bf16; a CPU with AVX512-BF16 or AMX), else fp16 with a gradient scaler on CUDA and
      fp32 on the CPU. Measured on a CPU with AVX512-BF16 (``bench/results-eval-cpu.md``): DARTS_V2
      C=36 trains 2.31x as fast as the plain fp32 reference (fp32 here: 1.64x), in 43% of its memory.
    * amp ``auto`` for a search: fp32 everywhere. Measured (``bench/results-amp-cpu.md``): a bf16
      architecture gradient is 27% (relative L2) off the fp32 one, with 9% of its signs flipped; over 12
      steps of a C=4 supernet, bf16 weight steps moved the architecture weights 28% away from an fp32
      run's, where two fp32 runs summing in another order differ by 2%. (On a C=8 supernet the fp32
      noise floor itself was 40%: the search amplifies any rounding.) ``runtime.amp: bf16`` opts in for
      the weight steps, ``runtime.arch_amp`` for the architecture step too; ``bench/device-check.sh``
      measures the same on CUDA.
    * channels_last ``None``: on (NHWC) everywhere. Measured on 2 cores with the composed separable
      kernels (``ops.composed_kernel``), each pair in one process with the two layouts alternating per
      step: EL-DARTS search step, batch 32, NHWC 0.979 / 0.887 / 0.953 s against NCHW 1.048 / 0.918 /
      0.959 s in three runs, batch 256 5.962 against 6.432 s; PC-DARTS batch 32 1.736 against 1.681 s
      (3% slower), batch 256 12.521 against 13.862 s; peak memory at batch 256, one process each, EL-DARTS
      4,362 against 4,684 MiB, PC-DARTS 5,570 against 5,895 MiB. (Before those kernels the CPU search ran
      NCHW: its grouped depthwise convolutions scaled badly across threads in NHWC, 1.30 against 1.92 s.)
      Evaluation networks train faster in NHWC (``bench/results-eval-cpu.md``).
    """
    if amp == "auto":
        if search:
            amp = "none"
        elif device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "none"
    elif amp == "fp16" and device.type != "cuda":
        amp = "none"  # autocast has no fp16 on the CPU
    if channels_last is None:
        channels_last = True
    return amp, bool(channels_last)


def compile_warning(compile: object, device: str) -> Optional[str]:
    """The warning of ``runtime.compile`` on the CPU (``device``: ``runtime.device``; ``auto`` is the CPU where CUDA
    is not available), ``None`` elsewhere or with compile off."""
    if compile is False or not (device == "cpu" or (device == "auto" and not torch.cuda.is_available())):
        return None
    graphs = "; reduce-overhead's CUDA graphs do not apply on a CPU" if compile == "reduce-overhead" else ""
    return ("runtime.compile on the CPU: inductor builds the network's kernels during the first steps, minutes for "
            "a supernet (measured: about 11 minutes for the EL-DARTS supernet at C=16, 8 cells, and its step no faster "
            "after), counted in the first epoch's time and the run's measured cost" + graphs)


def cpu_has_native_bf16() -> bool:
    """Whether the CPU has bf16 arithmetic instructions (AVX512-BF16 or AMX), from ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def autocast(device: torch.device, amp: str, cache: bool = True):
    """Autocast context for ``amp`` in {none, bf16, fp16}; a no-op for none or on CPU with fp16. ``cache=False``
    for a region recorded as a CUDA graph (PyTorch's rule: the cache's casts would outlive the recording)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def grad_scaler(device: torch.device, amp: str):
    enabled = amp == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


def device_memory(device: torch.device) -> Optional[int]:
    """Total memory in bytes of ``device`` (CUDA: the GPU's; CPU: what this process may use: the machine's
    RAM, or less where a container's cgroup or the process's address-space limit allows less); ``None`` if
    unknown."""
    import os

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    if device.type == "cpu":
        try:
            ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
        limits = [ram] + [n for n in (_cgroup_memory_limit(), _address_space_limit()) if n]
        return min(limits)
    return None


def _cgroup_memory_limit() -> Optional[int]:
    """The memory limit of this process's container (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``;
    SLURM jobs, Docker ``--memory``); ``None`` where there is none."""
    from pathlib import Path

    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:  # "max", or v1's huge number: no limit
            return int(text)
    return None


def _address_space_limit() -> Optional[int]:
    """What ``ulimit -v`` leaves this process, if set: the limit less the address space it already maps
    (PyTorch's libraries alone map a few GB)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as status:
            mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mapped = 0
    return max(soft - mapped, 1)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
