"""Recipe sections shared by search and evaluation recipes: data, runtime, weight optimiser."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationInfo, field_validator, model_validator

from ..core.device import check_device_name
from ..core.threads import MAX_THREADS
from ..data.datasets import DATASETS
from .base import RecipePath, StrictModel

#: The largest ``data.image_size``: one 8192 x 8192 RGB image is 0.8 GB as float32, past any search or
#: training here; larger values overflowed PyTorch's resize with a traceback.
MAX_IMAGE_SIZE = 8192
#: The most epochs of a search or a training: 100x the paper's 50 and 600 would be 5,000 and 60,000; a typo
#: beyond (1e23) started a run whose cosine schedule never moved and whose eta read 1.7e21 min.
MAX_EPOCHS = 100_000


class DataConfig(StrictModel):
    """Which images, where they are, and how batches are made."""

    dataset: str = Field("cifar10", description="registered dataset name (see eldarts_cli.data.DATASETS)")
    root: Optional[RecipePath] = Field(None, description="dataset folder or archive; default ./data/<dataset>")
    download: bool = Field(False, description="let torchvision download the dataset into root")
    batch_size: int = Field(64, gt=0)
    eval_batch_size: Optional[int] = Field(None, gt=0, description="batch of the validation/test passes (memory "
                                           "and speed; no training step uses it); under torchrun, like batch_size, "
                                           "the global batch; default: batch_size")
    image_size: Optional[int] = Field(None, gt=0, le=MAX_IMAGE_SIZE, description="resize images once, in memory")
    limit: Optional[int] = Field(None, gt=0, description="use N of the training images: a fixed random subset (seed 0) of the "
                                   "whole split, not N per class")
    test_limit: Optional[int] = Field(None, gt=0, description="use N of the test images, likewise")
    augment: bool = Field(True, description="random crop (zero padding) and horizontal flip of in-memory datasets "
                                            "(streamed ImageFolder data always train with timm's transforms)")
    flip: Optional[bool] = Field(
        None, description="the horizontal flip of augment (and of timm's transforms); default (null): on, except "
        "for datasets of digits (digits, mnist, svhn), whose mirror images are not digits")
    crop_padding: int = Field(4, ge=0)
    cutout: int = Field(0, ge=0, description="cutout square side in pixels (0 = off)")
    num_workers: int = Field(4, ge=0, description="loader workers for streamed (ImageFolder) data")
    skip_bad_images: bool = Field(False, description="skip image files that cannot be decoded (default: stop and name them)")

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        return DATASETS.canonical(name)

    @model_validator(mode="after")
    def _downloadable(self) -> "DataConfig":
        if self.download and DATASETS.get(self.dataset).missing is None:  # (it was ignored without a word)
            raise ValueError(f"data.download fetches torchvision's datasets (cifar10, mnist, ...); dataset "
                             f"{self.dataset} downloads nothing: set data.download: false")
        return self

    @property
    def flips(self) -> bool:
        """Whether augmented batches are flipped horizontally (``flip``, or the dataset's default)."""
        return self.augment and (self.flip if self.flip is not None else DATASETS.get(self.dataset).mirror_safe)


class RuntimeConfig(StrictModel):
    """How a run uses the hardware. ``auto`` values are resolved per device from measurements in bench/."""

    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    amp: Literal["auto", "none", "bf16", "fp16"] = Field(
        "auto", description="autocast dtype; auto: fp32 for a search; for training, bf16 where the device "
        "computes bf16 natively (CUDA with bf16, CPUs with AVX512-BF16/AMX), else fp16 on CUDA, fp32 on CPUs")
    arch_amp: bool = Field(
        False, description="search: autocast the architecture step too (default: fp32; bf16 architecture "
        "gradients measured 27% off fp32 ones, bench/results-amp-cpu.md)")
    channels_last: Optional[bool] = Field(
        None, description="NHWC activations; default (null): on (measured faster for training and, with the "
        "composed separable kernels, for a search, on CPUs too; less memory in a search), except NCHW for "
        "network.implementation: reference and, on CUDA, a search with partial channels and ops outside "
        "EL-DARTS' four (NHWC failed there on an H200, bench/results-search-cuda.md)")
    compile: Literal[False, True, "default", "reduce-overhead", "max-autotune"] = Field(
        False, description="torch.compile the network; reduce-overhead also replays CUDA graphs (CUDA; slow to "
        "compile on a CPU)")
    cuda_graphs: bool = Field(
        False, description="CUDA: record the step (a search's two phases and both optimisers; training's forward, "
        "backward, clipping and SGD) as one CUDA graph and replay it for each batch, so the host launches one graph "
        "instead of thousands of kernels; recorded again each epoch. Not with runtime.compile or fp16")
    threads: Optional[int] = Field(
        None, gt=0, le=MAX_THREADS,
        description="CPU threads; default (null): follow the load, one per core other processes leave free")
    allocator: Literal["auto", "system"] = Field(
        "auto", description="CPU memory: auto keeps freed memory in the process for the next step's tensors "
        "(glibc malloc settings; measured faster, bench/results-allocator-cpu.md); system leaves malloc as it is")
    log_every: int = Field(20, gt=0, description="steps between progress updates")

    @model_validator(mode="after")
    def _graphs(self) -> "RuntimeConfig":
        """What ``cuda_graphs`` cannot record in any run (a search refuses more: ``SearchRecipe._graphs``)."""
        problems = [what for what, on in (
            ("runtime.compile (use one or the other)", self.compile is not False),
            ("runtime.amp: fp16 (its gradient scaler checks for overflow on the host)", self.amp == "fp16"),
        ) if on and self.cuda_graphs]
        if problems:
            raise ValueError("runtime.cuda_graphs cannot record a step with " + "; ".join(problems))
        return self

    @field_validator("device")
    @classmethod
    def _device_name(cls, name: str) -> str:
        return check_device_name(name)


class OptimConfig(StrictModel):
    """SGD on the network weights, cosine-annealed per epoch."""

    lr: float = Field(0.1, gt=0)
    lr_min: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(False, description="Nesterov momentum (NAS-Bench-201's training uses it)")
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: Optional[float] = Field(5.0, gt=0)

    @field_validator("lr_min")
    @classmethod
    def _lr_min_below_lr(cls, lr_min: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")  # absent where lr itself was refused
        if lr is not None and lr_min > lr:
            raise ValueError(f"above lr ({lr:g}): the cosine schedule would raise the learning rate; give "
                             "at most lr")
        return lr_min
