"""Divergence and storage faults of a training loop: stop loudly, keep the last good state.

Both loops (the search, ``engines.search``; training from scratch,
``engines.evaluate``) keep their running loss sums on the device and call
:func:`check_finite` at their log points and at the end of every epoch,
before anything of the epoch is written: a non-finite loss, weight or
buffer raises :class:`~eldarts_cli.core.errors.DivergenceError` and the last
finite checkpoint stays as it was. The checks read a few numbers back from
the device at those points only, never once per step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from ..core.errors import DivergenceError, StorageError
from ..runs.checkpoint import nonfinite_tensors


def _first(names: Sequence[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def loss_is_finite(total: torch.Tensor) -> bool:
    """One read from the device: is an accumulated loss sum still finite?"""
    return bool(torch.isfinite(total).all())


def check_finite(
    *,
    what: str,
    epoch: int,
    epochs: int,
    losses: dict[str, Optional[float]],
    states: Iterable[tuple[str, dict]] = (),
    arch_names: Sequence[str] = (),
    arch_labels: Sequence[str] = (),
    arch_knobs: Sequence[tuple[str, float]] = (),
    typical: Optional[dict[str, float]] = None,
    lr_field: str = "optim.lr",
    lr: float = 0.0,
    lr_min: Optional[float] = None,
    warmup_lr: Optional[float] = None,
    arch_lr: Optional[float] = None,
    fixes: Sequence[str] = (),
    checkpoint: Optional[Path] = None,
    step: Optional[int] = None,
    fixed: Optional[dict[str, tuple[float, float]]] = None,
) -> None:
    """Raise :class:`DivergenceError` if a loss or a tensor of ``states`` is not finite.

    ``epoch`` counts from 0 (the message counts from 1); ``losses`` maps a
    label (``training loss``) to its value; ``states`` are ``(label,
    state_dict)`` pairs; tensors named in ``arch_names`` are the architecture
    weights, whose divergence points at ``arch_optim.lr`` rather than ``lr_field``, as does any tensor of a state
    labelled in ``arch_labels`` (the architecture optimiser's moments); ``arch_knobs``: further ``(field, value)``
    to lower then (``cost.weight``). ``typical``: each knob's default; a knob 100x above its default is the one named
    (the others, at their usual values, are left alone) and set back to its default rather than a tenth (a tenth
    of 1e30 diverged again, round after round). ``lr_min``: the schedule's
    floor (``optim.lr_min``), lowered with the lr where the lr suggested would fall below it (a recipe refuses a
    floor above its lr); ``warmup_lr``: likewise the warm-up's start (``schedule.warmup_lr``, training from
    scratch with a warm-up).
    """
    problems = [f"the {label} is {value}" for label, value in losses.items()
                if value is not None and not math.isfinite(value)]
    arch_bad: list[str] = []
    weights_bad = False
    for label, state in states:
        bad = nonfinite_tensors(state)
        if label in arch_labels:
            arch_bad += [f"{label}: {name}" for name in bad]
            continue
        arch = [name for name in bad if name in arch_names]
        weights = [name for name in bad if name not in arch_names]
        arch_bad += arch
        if weights:
            weights_bad = True
            problems.append(f"{len(weights)} tensor(s) of the {label} hold inf or nan ({_first(weights)})")
    if arch_bad:
        problems.append(f"the architecture weights or their optimiser's state hold inf or nan ({_first(arch_bad)})")
    if not problems:
        return
    # A NaN spreads through the whole network within a step, so the tensors seldom tell which step
    # diverged first: point at the architecture lr when only the architecture weights are bad, at the
    # weights' lr when only they are, at both otherwise.
    knobs = []
    if not arch_bad or weights_bad or arch_lr is None:
        knobs.append((lr_field, lr))
    if arch_bad and arch_lr is not None:
        knobs.append(("arch_optim.lr", arch_lr))
    if arch_bad:
        knobs += list(arch_knobs)
    typical = typical or {}
    outliers = [(field, value) for field, value in knobs if field in typical and value > 100 * typical[field]]
    if outliers:  # far above their defaults: those, not the others
        knobs = outliers

    def lowered(field: str, value: float) -> float:
        return typical[field] if (field, value) in outliers else float(f"{value / 10:.3g}")

    changes = [f"{field}={lowered(field, value):.3g}" for field, value in knobs]
    if (lr_field, lr) in knobs:
        suggested = lowered(lr_field, lr)
        if lr_min is not None and suggested < lr_min:
            changes.append(f"{lr_field}_min={suggested:.3g}")
        if warmup_lr is not None and suggested < warmup_lr:  # lowered as much: the warm-up keeps its shape
            changes.append(f"schedule.warmup_lr={warmup_lr * suggested / lr:.3g}")
    lower = " or ".join(f"{field} (now {value:g})" for field, value in knobs)
    where = f"epoch {epoch + 1} of {epochs}" + (f", by step {step}" if step else "")
    if checkpoint is not None and checkpoint.exists() and epoch > 0:
        kept = f"{checkpoint} still holds epoch {epoch}, the last finite state"
    else:
        kept = "no epoch had finished, so nothing was saved"
    # settings a resume cannot change (``fixed``: field -> its default) far above their defaults: the likelier
    # cause (entropy.weight=1e30 was sent to lower the learning rate, resume after resume, diverging each time)
    far = [f"{field}={value:g} ({value / default:.3g}x its default, {default:g})"
           for field, (value, default) in (fixed or {}).items() if value > 100 * default]
    cause = (f" This run's {', '.join(far)} may be the cause, and cannot change on --resume: start again in a new "
             "--out with a value nearer the default; or" if far else "")
    raise DivergenceError(
        f"the {what} diverged in {where}: {'; '.join(problems)}. Nothing of that epoch was written; {kept}."
        f"{cause} {'l' if far else 'L'}ower {lower} and resume (e.g. {' '.join('--set ' + c for c in changes)}); "
        f"on --resume {', '.join(fixes)} may change",
        epoch=epoch + 1,
        changes=changes,
    )


def not_learning(train_loss: Optional[float], classes: int, lr: float, auxiliary_weight: float = 0.0) -> Optional[str]:
    """A warning when a finished run's last training loss is above twice a uniform guess's, ``log(classes)``: finite,
    so saved, but the network learned nothing (an lr lowered just enough not to diverge); ``None`` otherwise.
    ``auxiliary_weight``: the training loss holds the auxiliary head's cross-entropy at that weight too (at 2 it
    warned of a network that had learned)."""
    if train_loss is None or classes < 2 or not math.isfinite(train_loss):
        return None
    guess = math.log(classes) * (1 + auxiliary_weight)  # (the main head's and the auxiliary head's, weighted)
    if train_loss <= 2 * guess:
        return None
    heads = f", the auxiliary head's included at weight {auxiliary_weight:g}" if auxiliary_weight else ""
    return (f"the last epoch's training loss, {train_loss:.3g}, is above twice a uniform guess's ({guess:.2f} for "
            f"{classes} classes{heads}): the network did not learn and its results say little; run again in a new "
            f"folder with a lower optim.lr (now {lr:g})")


def settings_and_defaults(recipe, fields: Sequence[str]) -> dict[str, tuple[float, float]]:
    """``{"entropy.weight": (value, default), ...}`` of a recipe's numeric fields with a positive default (the
    ``fixed`` of :func:`check_finite`)."""
    defaults = field_defaults(recipe, fields)
    out = {}
    for field, default in defaults.items():
        section, name = field.split(".")
        value = getattr(getattr(recipe, section), name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[field] = (float(value), default)
    return out


def field_defaults(recipe, fields: Sequence[str]) -> dict[str, float]:
    """``{"optim.lr": default, ...}``: the defaults of a recipe's fields (a section the recipe lacks: left out)."""
    out = {}
    for field in fields:
        section, name = field.split(".")
        part = getattr(recipe, section, None)
        if part is not None and name in type(part).model_fields:
            default = type(part).model_fields[name].default
            if isinstance(default, (int, float)) and default > 0:
                out[field] = float(default)
    return out


def storage_context(error: StorageError, checkpoint: Path, epochs_done: int, epochs: int) -> StorageError:
    """The write error plus what is still safe on disk (the checkpoint is replaced atomically or not at all); a run
    folder moved or removed while the run went on is said as such (it was "no epoch was saved yet: free space",
    with the epochs saved where the folder went). Such an error has ``folder_gone``."""
    if not checkpoint.parent.is_dir():
        gone = StorageError(f"{error}; the run folder {checkpoint.parent} was moved or removed while the run went "
                            "on" + ("; the epochs it saved went with it" if epochs_done > 0 else ""))
        gone.folder_gone = True
        return gone
    if epochs_done > 0 and checkpoint.exists():
        kept = f"{checkpoint} still holds epoch {epochs_done} of {epochs}: free space (or make the folder writable) and resume"
    else:
        kept = "no epoch was saved yet: free space (or make the folder writable) and resume"
    return StorageError(f"{error}; {kept}")
