"""CPU threads that follow the load: as many torch threads as other processes leave cores free.

PyTorch's OpenMP threads spin while they wait for each other. On a machine
whose cores another job also uses, a parallel region then waits for a thread
the operating system has not scheduled, and a step can take several times as
long as alone (measured: ``bench/results-contention-cpu.md``). One thread per
*free* core avoids that.

:class:`ThreadGovernor` measures, from ``/proc/stat`` and ``/proc/self/stat``,
how many of this process's cores other processes kept busy since its last
look, and sets ``torch.set_num_threads`` to the rest (at least one). The
loops call :meth:`ThreadGovernor.update` every few steps; it looks at most
every ``interval`` seconds and costs two small file reads.

``runtime.threads: N`` fixes the count instead (bit-for-bit repeatable runs:
results can differ in the last bits with the thread count). Without
``/proc`` (not Linux), ``auto`` keeps torch's own choice.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Optional

import torch


#: The most CPU threads a run or a measurement may ask for: far above any one machine's cores; OpenMP crashed
#: (segmentation fault) at 100,000 and hung at 10,000 on a 2-core machine.
MAX_THREADS = 1024


def available_cores() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def thread_words(low: int, high: Optional[int] = None) -> str:
    """``1 thread``, ``2 threads``, or for a range ``1-2 threads (following the load)``."""
    high = low if high is None else high
    return f"{high} thread{'s' * (high != 1)}" if low == high else f"{low}-{high} threads (following the load)"


@dataclass
class _Sample:
    at: float
    busy: int  # jiffies the cores spent not idle, all processes
    total: int  # jiffies of the cores
    own: int  # jiffies this process spent (user + system)


def _read_sample(cores: list[int]) -> Optional[_Sample]:
    try:
        with open("/proc/stat") as stat:
            lines = stat.read().splitlines()
        with open("/proc/self/stat") as own:
            fields = own.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    wanted = {f"cpu{c}" for c in cores}
    busy = total = 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in wanted:
            values = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
            total += sum(values)
            busy += sum(values) - values[3] - values[4]
    # utime and stime are fields 14 and 15 of /proc/self/stat (1-based), i.e. 11 and 12 after the name
    return _Sample(time.monotonic(), busy, total, int(fields[11]) + int(fields[12]))


def _local_processes() -> int:
    """The processes of this machine's torchrun launch (1 without torchrun)."""
    try:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        return 1


class ThreadGovernor:
    """Keeps torch's CPU thread count at the number of cores other processes leave free."""

    def __init__(self, fixed: Optional[int] = None, interval: float = 5.0):
        self.fixed = fixed
        self.interval = interval
        self.cores = available_cores()
        # the processes of this machine's torchrun launch share its cores: each rank looked while its peers were
        # still starting, took every core, and the ranks' first epoch ran oversubscribed (18 against 500 img/s)
        self.ceiling = max(1, len(self.cores) // max(1, _local_processes()))
        self.history: list[tuple[float, int]] = []  # (seconds since start, threads) at each change
        self.used: set[int] = set()  # every count the run has worked with
        self.earlier: set[int] = set()  # those of its earlier invocations (a resumed run's checkpoint)
        self._start = time.monotonic()
        self._last: Optional[_Sample] = None
        if fixed is not None:
            torch.set_num_threads(fixed)
            self.history.append((0.0, fixed))
        else:
            self._last = _read_sample(self.cores)
            if self._last is not None:  # else no /proc: keep torch's choice
                # a first look over a short window, so that a busy machine is not oversubscribed from the start
                time.sleep(0.2)
                self.update(force=True)
        self.used.add(torch.get_num_threads())

    @property
    def threads(self) -> int:
        return torch.get_num_threads()

    def describe(self) -> str:
        """The thread counts the run used so far: ``2 threads``, ``1-2 threads (following the load)``, or, where its
        invocations ran with others (``runtime.threads`` changed on a resume), ``1-2 threads (over its resumes)``:
        the label described the last one alone."""
        every = self.used | self.earlier
        if len(every) > 1 and len(self.used) == 1:
            return f"{min(every)}-{max(every)} threads (over its resumes)"
        return thread_words(min(every), max(every))

    def counts(self) -> list[int]:
        """Every thread count of the run so far, for its checkpoint (:attr:`earlier` of its resume)."""
        return sorted(self.used | self.earlier)

    def others(self, now: _Sample) -> float:
        """Cores other processes used since the last sample (0 .. number of cores)."""
        last = self._last
        total = now.total - last.total
        if total <= 0:
            return 0.0
        per_core = total / len(self.cores)  # jiffies one core had in the interval
        return max(0.0, (now.busy - last.busy) - (now.own - last.own)) / per_core

    def update(self, force: bool = False) -> int:
        """Re-measure (at most every ``interval`` seconds) and set the thread count; returns it."""
        if self.fixed is not None or self._last is None:
            return self.threads
        if not force and time.monotonic() - self._last.at < self.interval:
            return self.threads
        now = _read_sample(self.cores)
        if now is None:
            return self.threads
        free = len(self.cores) - self.others(now)
        self._last = now
        wanted = max(1, min(self.ceiling, int(free + 0.5)))
        if wanted != self.threads:
            torch.set_num_threads(wanted)
            self.history.append((round(time.monotonic() - self._start, 1), wanted))
            self.used.add(wanted)
        return wanted
