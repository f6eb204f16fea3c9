"""This process's place in a ``torchrun`` launch: PyTorch's own process group (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class Distributed:
    """Rank and world size from torchrun's environment (rank 0 of 1 without one)."""

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


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a plain process (without initialising anything)."""
    return os.environ.get("RANK", "0") == "0"
