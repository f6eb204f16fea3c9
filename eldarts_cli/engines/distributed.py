"""This process's place in a ``torchrun`` launch: PyTorch's own process group (gloo on CPU, nccl on CUDA).

:class:`Distributed` is the one helper ``eldarts evaluate`` and ``eldarts
search`` use under torchrun: it joins the process group, reduces tensors,
runs a step on rank 0 and hands its result (or its error) to every rank, and
decides which rank reports a failure, so that an error is shown once
whichever rank raised it. Without torchrun it is rank 0 of 1 and every
method is a no-op.
"""

from __future__ import annotations

import os
import time
import pickle
import shlex
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch

from ..core.errors import CheckpointError

T = TypeVar("T")

#: The store key counting failed ranks (per torchrun restart): the first rank to add to it reports the error.
_FAILURES = "eldarts/failures/{restart}"
#: Set by rank 0 as it reaches the end of a command (``Distributed.close``).
_DONE = "eldarts/done/{restart}"
#: Where rank 0 runs (``HOST PID``): a rank stopped by torchrun tells whether rank 0 is gone (killed without a word).
_MAIN = "eldarts/main/{restart}"


@dataclass
class Distributed:
    """Rank and world size from torchrun's environment (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    store: Any = field(default=None, repr=False)
    _calls: int = field(default=0, repr=False)

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

    def connect(self) -> None:
        """Reach torchrun's key-value store (before the process group exists), so that even an error
        raised while reading the recipe is reported by one rank only."""
        if not self.enabled or self.store is not None:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            return
        store, _, _ = next(dist.rendezvous("env://"))
        self.store = store
        if self.is_main:
            try:
                store.set(self._key(_MAIN), f"{socket.gethostname()} {os.getpid()}")
            except Exception:  # noqa: BLE001 - only main_gone() reads it, and then says nothing
                pass

    @staticmethod
    def _key(template: str) -> str:
        return template.format(restart=os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))

    def main_gone(self) -> bool:
        """Whether rank 0 of the launch has ended while this rank goes on (SIGKILLed, out of memory: it said
        nothing, and torchrun stops the other ranks): its process, where it ran on this machine, is gone or a
        zombie. Unknown (False) on another machine or where torchrun's store cannot be reached."""
        if not self.enabled or self.is_main or self.store is None:
            return False
        try:
            if not self.store.check([self._key(_MAIN)]):
                return False
            host, pid = self.store.get(self._key(_MAIN)).decode().split()
        except Exception:  # noqa: BLE001
            return False
        return host == socket.gethostname() and not _alive(int(pid))

    def setup(self, device: torch.device) -> torch.device:
        """Join the process group (gloo on CPU, nccl on CUDA); each process takes its local GPU."""
        if not self.enabled:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            self.connect()
            dist.init_process_group(
                "nccl" if device.type == "cuda" else "gloo", store=self.store, rank=self.rank,
                world_size=self.world_size,
            )
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

    def average_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Average ``params``' gradients over the ranks in one all-reduce (the few architecture
        parameters, which DDP leaves alone: see ``engines.search``)."""
        if not self.enabled:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.sum(flat).div_(self.world_size)
        for p, part in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = part.view_as(p)

    def average_buffers(self, module: torch.nn.Module) -> None:
        """Average floating-point buffers (BatchNorm running statistics) over the ranks, so that every
        rank validates, and rank 0 checkpoints, the same model."""
        if not self.enabled:
            return
        buffers = [b for b in module.buffers() if b.is_floating_point()]
        if buffers:
            flat = torch.cat([b.reshape(-1) for b in buffers])
            self.sum(flat).div_(self.world_size)
            for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
                b.copy_(part.view_as(b))

    def gather(self, obj: Any) -> Optional[list]:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere); ``[obj]`` without torchrun."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of ``tensor`` (same shape on every rank), on every rank."""
        if not self.enabled:
            return [tensor]
        import torch.distributed as dist

        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor.contiguous())
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and return its result on every rank; if it raises, every rank
        raises the same error (creating or reading the run folder, loading a checkpoint).

        Before the process group exists (the device, hence the backend, may come from the run folder)
        the result travels through torchrun's store; afterwards by a broadcast.
        """
        if not self.enabled:
            return fn()
        import torch.distributed as dist

        payload: Any = None
        if self.is_main:
            try:
                payload = ("ok", fn())
            except Exception as error:  # noqa: BLE001 - handed to every rank, raised there
                payload = ("error", _picklable(error))
        if dist.is_initialized():
            box = [payload]
            dist.broadcast_object_list(box, src=0)
            payload = box[0]
        else:
            self.connect()
            self._calls += 1
            key = f"eldarts/on_main/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{self._calls}"
            if self.is_main:
                self.store.set(key, pickle.dumps(payload))
            else:
                payload = pickle.loads(self.store.get(key))
        kind, value = payload
        if kind == "error":
            raise value
        return value

    def first_to_fail(self) -> bool:
        """True on the first rank that fails (it reports the error), False on the others.

        Asked of torchrun's store, which outlives the workers; where it cannot
        be reached the rank reports its error too (shown twice rather than never).
        """
        if not self.enabled or self.store is None:
            return True
        try:
            return self.store.add(self._key(_FAILURES), 1) == 1
        except Exception:  # noqa: BLE001 - the store's host is gone: say it rather than lose it
            return True

    def wait_for_main(self) -> None:
        """Wait, without a deadline, until rank 0 reaches the end too: it works alone after the last collective
        (perturbation selection, the figures), for longer than the process group's timeout (gloo's 30 min,
        NCCL's 10), and the waiting ranks' barrier timed out with a traceback, stopping the run before its end.
        If rank 0 fails instead, torchrun stops the waiting ranks."""
        if self.store is None:
            return
        key = self._key(_DONE)
        try:
            if self.is_main:
                self.store.set(key, "1")
                return
            while not self.store.check([key]):
                time.sleep(0.5)
        except Exception:  # noqa: BLE001 - the store's host is gone: the barrier says what happened
            return

    def close(self, wait: bool = True) -> None:
        """Leave the process group; ``wait=False`` after an error, when peers may never reach a barrier. With
        ``wait`` (this rank's work done), a peer gone before the last barrier (killed after its last epoch) is a
        warning on rank 0: the run's files are complete (an evaluation ended in "another process ended ... continue
        with --resume", and was not drawn)."""
        if self.owns_group:
            import torch.distributed as dist

            try:
                if wait:  # every rank leaves together: a rank tearing gloo down alone aborts its peer
                    self.wait_for_main()
                    dist.barrier()
            except RuntimeError as error:
                if not lost_a_peer(error):
                    raise
                if self.is_main:
                    import warnings

                    warnings.warn("another process of this torchrun launch ended before leaving it (stopped or "
                                  "killed), after this run's last collective step: its files are complete")
            finally:
                dist.destroy_process_group()
                self.owns_group = False


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed and not yet reaped, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] not in (["Z"], ["X"])


#: What gloo and NCCL say when a peer process of the launch is gone (killed, or stopped by a signal of its own).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "remote process exited",
              "NCCL communicator was aborted")


def lost_a_peer(error: BaseException) -> bool:
    """Whether ``error`` is a collective's failure because another process of the launch ended."""
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_GONE)


def data_parallel(module: torch.nn.Module, device: torch.device, broadcast_buffers: bool = True) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` on ``device``, without DDP's stride warning for weights whose layout is
    ambiguous.

    A weight with a size-1 dimension (a depthwise ``(C, 1, k, k)`` or pointwise ``(O, I, 1, 1)`` kernel) is
    both contiguous and channels_last: the two stride tuples describe the same memory. The fused supernet's
    separable blocks hand back such weights' gradients with the contiguous strides while the channels_last
    weights (and DDP's bucket views, built from them) have the other tuple; DDP then warns once per process
    ("Grad strides do not match bucket view strides ... may impair performance"). Nothing is impaired: without
    ``gradient_as_bucket_view`` DDP copies every gradient into its bucket anyway, here in the same memory order.
    """
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [device.index] if device.type == "cuda" else None
    with warnings.catch_warnings():  # 2.x renames the option; the old name keeps the old meaning
        warnings.simplefilter("ignore", FutureWarning)
        return DistributedDataParallel(module, device_ids=ids, broadcast_buffers=broadcast_buffers)


def _picklable(error: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - an error type that cannot travel: keep its words
        return RuntimeError(f"{type(error).__name__}: {error}")


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process (without initialising anything)."""
    return os.environ.get("RANK", "0") == "0"


def get_rng_state(device: torch.device) -> dict:
    """This process's random state (CPU, and the device's on CUDA), as a checkpoint keeps it (one per rank)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_world_size(checkpoint: dict, world_size: int, run_dir: Path, kind: str) -> None:
    """A run (``kind``: "search", "evaluation") resumes on as many processes as it ran on: each rank's BatchNorm
    batch statistics and random state depend on it, so another count would not continue the same run (an
    evaluation's resume on one process had gone on, silently, and ended elsewhere). The command named resumes
    it from its own files. A checkpoint that does not say (an evaluation's, before this check) is not refused."""
    if kind == "evaluation" and "world_size" not in checkpoint:
        return
    ran_on = int(checkpoint.get("world_size", 1))
    if ran_on == world_size:
        return
    run_dir = Path(run_dir)
    files = ([run_dir / "recipe.yaml"] if kind == "search"
             else [run_dir / "genotype.json", run_dir / "recipe.yaml"])
    command = shlex.join(["eldarts", "search" if kind == "search" else "evaluate", *map(str, files),
                          "--resume", str(run_dir)])
    how = (command.replace("eldarts", f"torchrun --nproc_per_node {ran_on} -m eldarts_cli", 1) if ran_on > 1
           else f"{command} (without torchrun)")
    verb = "searched" if kind == "search" else "trained"
    raise CheckpointError(f"{run_dir} was {verb} by {ran_on} process(es) and cannot continue on {world_size}: "
                          f"resume it with {how}")


def check_global_batches(data: Any, world_size: int) -> None:
    """``data.batch_size`` and ``data.eval_batch_size`` are global batches, a search's and an evaluation's alike:
    each must divide over the processes. Asked by the run at its start and by its dry run under torchrun (which
    had accepted what the run refuses)."""
    from ..core.errors import RecipeError

    batches = [("batch_size", data.batch_size), ("eval_batch_size", data.eval_batch_size or data.batch_size)]
    for key, batch in batches:
        if batch % world_size:
            raise RecipeError(f"data.{key}={batch} is the global batch: it must divide over the {world_size} processes")
    if world_size > 1 and data.batch_size // world_size < 2:  # (as batch_size=1 is refused in one process)
        raise RecipeError(f"data.batch_size={data.batch_size} over {world_size} processes leaves each one image a "
                          f"step, and BatchNorm normalises each process's batch, which needs at least 2: give "
                          f"data.batch_size {2 * world_size} or more")
