"""The evaluation recipe: training a genotype from scratch (paper 3.2 for CIFAR-10, 3.3 for ImageNet)."""

from __future__ import annotations

from typing import ClassVar, Literal, Optional

from pydantic import Field, field_validator, model_validator

from ..data.datasets import DATASETS
from ..models.network import NETWORKS
from ..core.validation import SEED_RANGE
from .base import RunName, StrictModel
from .sections import MAX_EPOCHS, DataConfig, OptimConfig, RuntimeConfig


class EvalDataConfig(DataConfig):
    """Data for training from scratch; defaults are the CIFAR-10 settings of DARTS' evaluation, which the paper
    follows."""

    batch_size: int = Field(96, gt=0, description="global batch, split over DDP processes")
    cutout: int = Field(16, ge=0, description="cutout square side in pixels (0 = off)")
    # timm transforms of the streamed (ImageFolder) datasets, e.g. imagenet
    color_jitter: Optional[float] = Field(0.4, ge=0, description="imagenet: timm color jitter")
    auto_augment: Optional[str] = Field(None, description="imagenet: timm auto-augment policy, e.g. rand-m9-mstd0.5")
    interpolation: Literal["bilinear", "bicubic", "nearest", "box", "hamming", "lanczos"] = Field(
        "bilinear", description="imagenet: resize interpolation")
    crop_pct: float = Field(0.875, gt=0, le=1, description="imagenet: center-crop share at test time")

    @field_validator("auto_augment")
    @classmethod
    def _timm_policy(cls, policy: Optional[str]) -> Optional[str]:
        """A policy timm builds (it ended in timm's ``AssertionError: Unknown AA policy`` at the first epoch)."""
        if not policy:
            return policy
        from timm.data import create_transform

        try:
            create_transform(input_size=(3, 32, 32), is_training=True, auto_augment=policy)
        except (AssertionError, KeyError, ValueError, IndexError) as error:
            raise ValueError(f"{policy!r} is not a policy timm builds ({error or type(error).__name__}): e.g. "
                             "rand-m9-mstd0.5, augmix-m5, original, v0, or null for none") from None
        return policy

    def augmentation_warning(self) -> Optional[str]:
        """The augmentation settings this dataset's training ignores: an in-memory dataset's batches are made by
        eldarts (crop, flip, cutout), a streamed one's by timm's transforms (random-resized crop, flip, colour
        jitter, auto-augment); each ignores the other's, which had passed without a word (a streamed recipe that
        left ``cutout`` out showed cutout 16 and trained without)."""
        streamed = DATASETS.get(self.dataset).streamed
        # (values other than the defaults: a run's recipe.yaml spells every default out, and was warned of)
        changed = [key for key in ("crop_padding", "color_jitter", "interpolation", "crop_pct")
                   if getattr(self, key) != type(self).model_fields[key].default]
        if streamed:
            ignored = [f"cutout ({self.cutout})" if self.cutout else None,
                       "augment (false)" if not self.augment else None,
                       f"crop_padding ({self.crop_padding})" if "crop_padding" in changed else None]
        else:
            ignored = [f"auto_augment ({self.auto_augment})" if self.auto_augment else None,
                       *(f"{key} ({getattr(self, key)})" for key in ("color_jitter", "interpolation", "crop_pct")
                         if key in changed)]
        ignored = [f"data.{item}" for item in ignored if item]
        if not ignored:
            return None
        made_by = ("timm's transforms (random-resized crop, flip, color_jitter, auto_augment)" if streamed
                   else "eldarts (padded crop, flip, cutout; timm's transforms are for streamed datasets)")
        named = ignored[0] if len(ignored) == 1 else f"{', '.join(ignored[:-1])} and {ignored[-1]}"
        return (f"{named} {'is' if len(ignored) == 1 else 'are'} not applied to {self.dataset}: its training "
                f"batches are made by {made_by}")


class EvalNetworkConfig(StrictModel):
    """The network trained from scratch: cifar (section 3.2), imagenet (section 3.3, mobile setting) or
    nb201 (NAS-Bench-201's network for its cells: C=16, 15 cells, no auxiliary head, no drop path)."""

    kind: str = Field("cifar", description="registered network (eldarts_cli.models.network.NETWORKS)")
    channels: int = Field(36, gt=0, description="initial channels C")
    layers: int = Field(20, ge=3, description="cells; cifar/imagenet: reductions at 1/3 and 2/3; nb201: three "
                        "stages of layers/3 cells")
    auxiliary: bool = Field(True, description="auxiliary head after the cell at 2/3 of the depth")
    auxiliary_weight: float = Field(0.4, ge=0)
    drop_path: float = Field(0.2, ge=0, lt=1, description="drop-path probability, raised linearly from 0 (DARTS' rule: this x epoch / "
                             "epochs, epochs counted from 0, so the last epoch's is just under it)")
    num_classes: Optional[int] = Field(None, gt=1, description="default: the dataset's")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        return NETWORKS.canonical(kind)

    @model_validator(mode="after")
    def _nb201(self) -> "EvalNetworkConfig":
        if self.kind == "nb201":
            problems = []
            if self.layers % 3:
                problems.append(f"layers={self.layers} must be a multiple of 3 (three stages of cells)")
            if self.auxiliary:
                problems.append("auxiliary must be false (the network has no auxiliary head)")
            if self.drop_path:
                problems.append("drop_path must be 0 (NAS-Bench-201 trains without drop path)")
            if problems:
                raise ValueError("kind nb201: " + "; ".join(problems))
        return self


class EvalOptimConfig(OptimConfig):
    """SGD on the weights (section 3.2: lr 0.025, momentum 0.9, weight decay 3e-4; gradients clipped at 5 as in
    DARTS' evaluation, which the paper follows)."""

    lr: float = Field(0.025, gt=0)


class ScheduleConfig(StrictModel):
    """Per-epoch learning rate by timm's schedulers: optional linear warm-up, then cosine, linear (to
    ``optim.lr_min`` at the last epoch; PC-DARTS' ImageNet schedule) or step decay."""

    kind: Literal["cosine", "linear", "step"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    warmup_lr: float = Field(0.0, ge=0, description="lr at the start of the warm-up")
    decay_epochs: float = Field(1.0, gt=0, description="step: epochs between decays")
    decay_rate: float = Field(0.97, gt=0, le=1, description="step: lr multiplier at each decay")


class TrainConfig(StrictModel):
    epochs: int = Field(600, gt=0, le=MAX_EPOCHS)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    ema: bool = Field(False, description="also keep (and test) an exponential moving average of the weights")
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    eval_every: int = Field(1, gt=0, description="test every N epochs (and always after the last)")
    max_steps: Optional[int] = Field(None, gt=0, description="cap on steps per epoch (smoke runs)")
    onnx: bool = Field(True, description="export the trained network to model.onnx")


class EvalRuntimeConfig(RuntimeConfig):
    """``amp: auto``: bf16 autocast (fp16 without bf16 support) on CUDA; on CPU, what bench/ measured faster."""


class EvalRecipe(StrictModel):
    """Training a genotype from scratch; the defaults are the paper's CIFAR-10 settings (section 3.2) and, where
    it is silent, those of DARTS' evaluation, which it follows (auxiliary head, drop path, cutout, batch 96)."""

    recipe_kind: ClassVar[str] = "evaluation"

    name: RunName = "eval-cifar10"
    seed: int = Field(0, **SEED_RANGE)
    data: EvalDataConfig = EvalDataConfig()
    network: EvalNetworkConfig = EvalNetworkConfig()
    optim: EvalOptimConfig = EvalOptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()
    runtime: EvalRuntimeConfig = EvalRuntimeConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "EvalRecipe":
        if self.schedule.warmup_epochs >= self.train.epochs and self.train.epochs > 1:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be below train.epochs ({self.train.epochs})"
            )
        if self.schedule.warmup_epochs >= self.train.epochs and self.schedule.warmup_lr == 0:  # (one epoch)
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) covers the only epoch (train.epochs="
                f"{self.train.epochs}), which would train at schedule.warmup_lr (0): nothing; set "
                "schedule.warmup_epochs=0, or a schedule.warmup_lr above 0"
            )
        if self.schedule.warmup_epochs > 0 and self.schedule.warmup_lr > self.optim.lr:
            raise ValueError(
                f"schedule.warmup_lr ({self.schedule.warmup_lr:g}) is above optim.lr ({self.optim.lr:g}): the warm-up "
                "rises from warmup_lr to lr; lower schedule.warmup_lr"
            )
        if DATASETS.get(self.data.dataset).streamed and self.data.root is None:
            raise ValueError(f"dataset {self.data.dataset} needs data.root: an ImageFolder tree with train/ and val/")
        if self.data.batch_size < 2:  # (BatchNorm of 1x1 maps, the auxiliary head's: a traceback mid-epoch)
            raise ValueError("data.batch_size=1: training normalises each batch (BatchNorm), which needs at least 2 "
                             "images; give data.batch_size 2 or more")
        return self


#: Fields that may change on ``--resume`` to continue a run that diverged.
DIVERGENCE_FIXES = ("optim.lr", "optim.lr_min", "optim.grad_clip", "schedule.warmup_lr")
#: Fields that may differ between a run and its ``--resume``: those that do not change the result,
#: and the divergence fixes.
RESUMABLE_CHANGES = ("runtime.", "data.num_workers", "data.root", "data.download", "data.eval_batch_size") \
    + DIVERGENCE_FIXES
