"""Architecture selection by perturbation (Wang et al., "Rethinking Architecture Selection in
Differentiable NAS", ICLR 2021, section 4 and Algorithm 1): ``derive.method: perturbation``.

The magnitude rule takes the op with the largest architecture weight; Wang
et al. show that weight need not say how much the supernet relies on the
op. Perturbation asks the supernet instead:

1. **ops**: for every edge, in a random order, remove each candidate op in
   turn (its softmax weight set to 0, the others left as they are) and
   measure the supernet's validation accuracy; keep the op whose removal
   costs the most accuracy and make the edge one-hot on it. Optionally
   train the weights a few epochs before the next edge
   (``derive.finetune_epochs``; Wang et al.: 5).
2. **edges** (DARTS' cell, nodes with more than two inputs): remove each
   remaining incoming edge in turn and drop the one whose removal costs the
   least, until two remain (their code's topology step).

NAS-Bench-201 keeps every edge, so only step 1 runs there, and ``none`` is a
candidate like any op; in DARTS' cell ``none`` is never chosen. Accuracies
are measured with batch statistics (``train`` mode, running statistics left
untouched), as Wang et al. do, on the first ``derive.val_batches`` batches of
the architecture half without augmentation, and partial channels fixed to
the first ``C / K``. Fine-tuning trains the weights only (SGD at ``optim.lr /
10``, as theirs) with the decided edges one-hot; unlike their code it does
not keep updating the architecture weights, which decided edges no longer use.

:func:`select_by_perturbation` is the selection itself, on any ``evaluate``
function (the tests drive it with tiny networks and synthetic scores);
:class:`PerturbationSelector` runs it on a trained supernet.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config.search import SearchRecipe
from ..core.device import autocast, grad_scaler
from ..core.errors import DivergenceError
from ..models.cells import edge_index, state_name
from ..models.genotypes import AnyGenotype, Genotype
from ..models.nb201 import NB201Genotype, nb201_edges
from ..models.supernet import ArchWeights, channel_generator
from ..runs.checkpoint import nonfinite_tensors
from ..runs.files import Decision, DeriveResult
from .finite import field_defaults

Evaluate = Callable[[ArchWeights], tuple[float, float]]
Finetune = Callable[[ArchWeights, int], None]


@dataclass(frozen=True)
class CellSpec:
    """One cell type to discretise: ``slot`` 0 (normal / NAS-Bench-201) or 1 (reduce) of ``ArchWeights``."""

    name: str
    slot: int
    index: list[tuple[int, int]]  # (node, source) of each edge row
    choosable: list[int]  # op indices a decision may keep
    keep: Optional[int]  # edges kept per node (DARTS: 2); None: every edge stays


@dataclass
class Selection:
    """What the selection decided: per cell type, the op of every edge row and the rows kept."""

    ops: dict[str, dict[int, int]] = field(default_factory=dict)
    kept: dict[str, list[int]] = field(default_factory=dict)
    decisions: list[Decision] = field(default_factory=list)


class Projection:
    """The partially discretised supernet: decided edges one-hot, dropped edges weighted 0."""

    def __init__(self, base: ArchWeights):
        self.ops = [None if w is None else w.detach().clone() for w in base[:2]]
        self.edges = []
        for slot in (0, 1):
            w = base[2 + slot]
            if w is None and self.ops[slot] is not None:  # unweighted node sums: weight 1 per edge
                w = torch.ones(self.ops[slot].shape[0], device=self.ops[slot].device)
            self.edges.append(None if w is None else w.detach().clone())

    def decide_op(self, slot: int, row: int, op: int) -> None:
        self.ops[slot][row] = 0.0
        self.ops[slot][row, op] = 1.0

    def drop_edge(self, slot: int, row: int) -> None:
        self.edges[slot][row] = 0.0

    def weights(self, without_op: Optional[tuple[int, int, int]] = None,
                without_edge: Optional[tuple[int, int]] = None) -> ArchWeights:
        ops = [None if w is None else w.clone() for w in self.ops]
        edges = [None if w is None else w.clone() for w in self.edges]
        if without_op is not None:
            slot, row, op = without_op
            ops[slot][row, op] = 0.0  # no renormalisation (Wang et al.)
        if without_edge is not None:
            slot, row = without_edge
            edges[slot][row] = 0.0
        return ArchWeights(ops[0], ops[1], edges[0], edges[1])


def _margin(accuracies: Sequence[float], best: int, lowest: bool) -> float:
    if len(accuracies) < 2:
        return 0.0
    others = [a for i, a in enumerate(accuracies) if i != best]
    return (min(others) - accuracies[best]) if lowest else (accuracies[best] - max(others))


def select_by_perturbation(
    cells: Sequence[CellSpec],
    base: ArchWeights,
    ops: Sequence[str],
    evaluate: Evaluate,
    finetune: Optional[Finetune] = None,
    seed: int = 0,
    report: Optional[Callable[[Decision], None]] = None,
) -> Selection:
    """Wang et al.'s Algorithm 1 (and their topology step for DARTS' cell) on ``evaluate``'s accuracies.

    ``evaluate(weights)`` is the supernet's validation ``(accuracy %, loss)``
    under ``weights``; accuracy decides, and the loss breaks ties (on a small
    validation set many removals cost the same number of images).
    ``finetune(weights, decision)`` trains the supernet's weights between two
    decisions. Edges and nodes are visited in a random order drawn from ``seed``.
    """
    rng = random.Random(seed)
    projection = Projection(base)
    selection = Selection(ops={c.name: {} for c in cells}, kept={c.name: [] for c in cells})
    edge_steps = [(cell, row) for cell in cells for row in range(len(cell.index))]
    rng.shuffle(edge_steps)
    node_steps = []
    for cell in cells:
        if cell.keep is None:
            continue
        for node in sorted({n for n, _ in cell.index}):
            rows = [r for r, (n, _) in enumerate(cell.index) if n == node]
            if len(rows) > cell.keep:
                node_steps.append((cell, node, rows))
    rng.shuffle(node_steps)
    total = len(edge_steps) + sum(len(rows) - cell.keep for cell, _, rows in node_steps)

    def record(decision: Decision) -> None:
        selection.decisions.append(decision)
        if report is not None:
            report(decision)
        if finetune is not None and len(selection.decisions) < total:
            finetune(projection.weights(), len(selection.decisions))

    for cell, row in edge_steps:
        scores = [evaluate(projection.weights(without_op=(cell.slot, row, op))) for op in cell.choosable]
        accuracies, losses = [a for a, _ in scores], [loss for _, loss in scores]
        best = min(range(len(scores)), key=lambda i: (accuracies[i], -losses[i]))  # removal hurts most
        chosen = cell.choosable[best]
        projection.decide_op(cell.slot, row, chosen)
        selection.ops[cell.name][row] = chosen
        node, source = cell.index[row]
        record(Decision(step=len(selection.decisions), kind="op", cell=cell.name, edge=row, node=node,
                        candidates=[ops[o] for o in cell.choosable], accuracies=accuracies, losses=losses,
                        chosen=ops[chosen], margin=_margin(accuracies, best, lowest=True)))

    for cell in cells:
        if cell.keep is None:
            selection.kept[cell.name] = list(range(len(cell.index)))
    kept_by_node: dict[tuple[str, int], list[int]] = {}
    for cell, node, rows in node_steps:
        remaining = list(rows)
        while len(remaining) > cell.keep:
            scores = [evaluate(projection.weights(without_edge=(cell.slot, r))) for r in remaining]
            accuracies, losses = [a for a, _ in scores], [loss for _, loss in scores]
            worst = max(range(len(scores)), key=lambda i: (accuracies[i], -losses[i]))  # removal hurts least
            names = [_edge_name(cell, r) for r in remaining]
            dropped = remaining.pop(worst)
            projection.drop_edge(cell.slot, dropped)
            record(Decision(step=len(selection.decisions), kind="edge", cell=cell.name, node=node, edge=dropped,
                            candidates=names, accuracies=accuracies, losses=losses, chosen=_edge_name(cell, dropped),
                            margin=_margin(accuracies, worst, lowest=False)))
        kept_by_node[(cell.name, node)] = remaining
    for cell in cells:
        if cell.keep is not None:
            nodes = sorted({n for n, _ in cell.index})
            selection.kept[cell.name] = [r for node in nodes for r in kept_by_node.get(
                (cell.name, node), [r for r, (n, _) in enumerate(cell.index) if n == node])]
    return selection


def _edge_name(cell: CellSpec, row: int) -> str:
    """``e12 (1->3)``, as the alpha figures label the row (a DARTS cell's source by state_name: it read "3->3")."""
    node, source = cell.index[row]
    return f"e{row} ({source if cell.keep is None else state_name(source)}->{node})"


# ---------------------------------------------------------------------------
# On a supernet
# ---------------------------------------------------------------------------


def cell_specs(ops: Sequence[str], nodes: int, cell: str) -> list[CellSpec]:
    """The cell types of a search space and what a decision may choose in each."""
    if cell == "nb201":  # nodes numbered from 1, as in the arch string
        return [CellSpec("cell", 0, nb201_edges(nodes), list(range(len(ops))), None)]
    usable = [i for i, name in enumerate(ops) if name != "none"]
    index = edge_index(nodes)
    return [CellSpec("normal", 0, index, usable, 2), CellSpec("reduce", 1, index, usable, 2)]


def selection_genotype(selection: Selection, cells: Sequence[CellSpec], ops: Sequence[str], nodes: int,
                       multiplier: int) -> AnyGenotype:
    if len(cells) == 1 and cells[0].keep is None:
        spec = cells[0]
        nb201: list[list[tuple[str, int]]] = [[] for _ in range(nodes)]
        for row, (node, source) in enumerate(spec.index):
            nb201[node - 1].append((ops[selection.ops[spec.name][row]], source))
        return NB201Genotype.from_nodes(nb201)
    genes = {}
    for spec in cells:
        genes[spec.name] = [(ops[selection.ops[spec.name][r]], spec.index[r][1]) for r in selection.kept[spec.name]]
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    return Genotype(normal=genes["normal"], normal_concat=concat, reduce=genes["reduce"], reduce_concat=concat)


@contextlib.contextmanager
def batch_statistics(model: nn.Module):
    """``train`` mode for BatchNorm's batch statistics, with the running statistics left as they are."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    was_training = model.training
    for m in norms:
        m.momentum = 0.0
    model.train()
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
        model.train(was_training)


class PerturbationSelector:
    """Perturbation selection on a trained supernet (the search's own model, loaders and recipe)."""

    def __init__(self, model: nn.Module, recipe: SearchRecipe, *, val, train, device: torch.device, amp: str,
                 report: Optional[Callable[[Decision], None]] = None):
        self.model, self.recipe, self.val, self.train = model, recipe, val, train
        self.device, self.amp, self.report = device, amp, report
        self.val_batches = recipe.derive.val_batches or recipe.search.val_batches
        self.val_images = 0
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.scaler = grad_scaler(device, amp)  # fp16 on a GPU: the loss scaled, as in the search's weight steps

    @torch.no_grad()
    def evaluate(self, weights: ArchWeights) -> tuple[float, float]:
        correct = seen = 0
        loss = 0.0
        self.model.sample_channels(None)
        with batch_statistics(self.model):
            for i, (x, y) in enumerate(self.val.epoch(0)):
                if self.val_batches is not None and i >= self.val_batches:
                    break
                with autocast(self.device, self.amp):
                    logits = self.model(x, weights=weights)
                correct += int((logits.argmax(1) == y).sum())
                loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                seen += len(y)
        self.val_images = seen
        if not math.isfinite(loss):  # a network that diverged chooses nothing (all its accuracies are chance)
            self._diverged(f"the validation loss is {loss}", "while measuring a choice")
        return 100.0 * correct / max(seen, 1), loss / max(seen, 1)

    def _lr(self) -> float:
        return self.recipe.derive.finetune_lr or self.recipe.optim.lr / 10

    def _diverged(self, problem: str, when: str) -> None:
        lr = self._lr()
        # its default: the default optim.lr / 10; an lr far above it is set back to it (at 1e30, a tenth of it
        # diverged again, resume after resume), one not far above, a tenth of it
        typical = field_defaults(self.recipe, ("optim.lr",)).get("optim.lr", self.recipe.optim.lr) / 10
        fix = typical if lr > 100 * typical else lr / 10
        raise DivergenceError(
            f"perturbation selection diverged {when}: {problem}. Nothing of the selection was written; the "
            f"search's last checkpoint holds its finished epochs. Lower derive.finetune_lr (now {lr:g}"
            + (f"; {fix:g} is its default" if fix == typical else "") + ") and resume "
            f"(e.g. --set derive.finetune_lr={fix:.3g})",
            epoch=self.recipe.search.epochs, changes=[f"derive.finetune_lr={fix:.3g}"])

    def finetune(self, weights: ArchWeights, decision: int) -> None:
        recipe = self.recipe
        epochs = recipe.derive.finetune_epochs
        if not epochs:
            return
        params = self.model.weight_parameters()
        if self.optimizer is None:
            o = recipe.optim
            self.optimizer = torch.optim.SGD(params, lr=self._lr(), momentum=o.momentum,
                                             weight_decay=o.weight_decay, nesterov=o.nesterov)
        weights = weights.detach()
        random_channels = recipe.partial_channels.sampling == "random"
        self.model.train()
        total = torch.zeros((), device=self.device)  # the losses' sum stays on the device: one read per fine-tune
        for k in range(epochs):
            epoch = recipe.search.epochs + decision * epochs + k  # data orders no search epoch used
            for step, (x, y) in enumerate(self.train.epoch(epoch)):
                if recipe.search.max_steps and step >= recipe.search.max_steps:
                    break
                if random_channels:
                    self.model.sample_channels(channel_generator(recipe.seed, epoch, step, phase=2))
                self.optimizer.zero_grad(set_to_none=True)
                with autocast(self.device, self.amp):
                    loss = F.cross_entropy(self.model(x, weights=weights), y)
                self.scaler.scale(loss).backward(inputs=params)
                if recipe.optim.grad_clip:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(params, recipe.optim.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += loss.detach().float()
        self.model.sample_channels(None)
        when = f"while fine-tuning after its decision {decision}"
        if not torch.isfinite(total):
            self._diverged(f"the training loss is {total.item()}", when)
        bad = nonfinite_tensors(self.model.state_dict())
        if bad:
            self._diverged(f"{len(bad)} tensor(s) of the network hold inf or nan ({', '.join(bad[:3])})", when)

    def run(self) -> tuple[AnyGenotype, DeriveResult]:
        start = time.perf_counter()
        recipe, model = self.recipe, self.model
        cell = recipe.search_space.cell
        cells = cell_specs(model.ops, model.nodes, cell)
        selection = select_by_perturbation(cells, model.arch_weights(), model.ops, self.evaluate, self.finetune,
                                           seed=recipe.seed, report=self.report)
        genotype = selection_genotype(selection, cells, model.ops, model.nodes, model.multiplier)
        op_margins = sorted(d.margin for d in selection.decisions if d.kind == "op")
        median = None
        if op_margins:
            mid = len(op_margins) // 2
            median = op_margins[mid] if len(op_margins) % 2 else (op_margins[mid - 1] + op_margins[mid]) / 2
        result = DeriveResult(genotype=genotype, val_images=self.val_images,
                              finetune_epochs=recipe.derive.finetune_epochs, seconds=time.perf_counter() - start,
                              margin_median=median, decisions=selection.decisions)
        return genotype, result
