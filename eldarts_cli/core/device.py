"""``--device auto|cpu|cuda[:N]``, resolved once and passed down; autocast helper."""

from __future__ import annotations

import contextlib
from typing import Optional
from typing import Optional

import torch

from .errors import EldartsError


def resolve_device(name: str = "auto") -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EldartsError(f"unknown device '{name}': use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EldartsError(f"device '{name}' asked for, but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EldartsError(
                f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) here"
            )
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise EldartsError("device 'mps' asked for, but MPS is not available here")
    elif device.type != "cpu":
        raise EldartsError(f"unsupported device '{name}': use auto, cpu, cuda or cuda:N")
    return device


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def resolve_precision(amp: str, channels_last: Optional[bool], device: torch.device, *,
                      search: bool) -> tuple[str, bool]:
    """``runtime.amp`` and ``runtime.channels_last`` with ``auto``/``None`` resolved for ``device``.

    * amp ``auto``: bf16 autocast on a CUDA device that computes in bf16. Without bf16, training from
      scratch uses fp16 (with a gradient scaler) and a search stays in fp32: architecture gradients in
      fp16 are not checked (bf16 ones are: ``tests/test_search_speed.py`` and ``bench/device-check.sh``
      compare alphas with fp32). On the CPU: fp32 (``none``); bf16 autocast measured slower for the
      search step (``bench/results-search-cpu.md``) and is an opt-in. fp16 is not used on the CPU.
    * channels_last ``None``: on (NHWC). On the CPU it measured faster for the supernet and the
      evaluation networks (``bench/``); on CUDA it is the layout tensor cores prefer.
    """
    if amp == "auto":
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else ("none" if search else "fp16")
        else:
            amp = "none"
    elif amp == "fp16" and device.type != "cuda":
        amp = "none"  # autocast has no fp16 on the CPU
    return amp, True if channels_last is None else bool(channels_last)


def autocast(device: torch.device, amp: str):
    """Autocast context for ``amp`` in {none, bf16, fp16}; a no-op for none or on CPU with fp16."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, amp: str):
    enabled = amp == "fp16" and device.type == "cuda"
    return torch.amp.GradScaler(device.type, enabled=enabled)


def device_memory(device: torch.device) -> Optional[int]:
    """Total memory in bytes of ``device`` (CUDA: the GPU's; CPU: the machine's RAM); ``None`` if unknown."""
    import os

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"
