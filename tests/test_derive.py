"""Architecture selection by perturbation (Wang et al., ICLR 2021) and random partial-channel sampling."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_SEARCH
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import DivergenceError, RecipeError
from eldarts_cli.engines.derive import Projection, batch_statistics, cell_specs, select_by_perturbation, selection_genotype
from eldarts_cli.engines.search import Searcher
from eldarts_cli.models.cells import edge_index
from eldarts_cli.models.genotypes import load_genotype
from eldarts_cli.models.nb201 import NB201Genotype
from eldarts_cli.models.reference import ReferenceSupernet, copy_reference_weights
from eldarts_cli.models.spaces import ESS_SPACE, NB201_SPACE
from eldarts_cli.models.supernet import ArchWeights, Supernet, channel_generator
from eldarts_cli.runs.folders import read_metrics

OPS = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")


def synthetic_accuracy(importance: torch.Tensor):
    """A supernet whose accuracy is sum_e edge_w[e] * sum_o importance[e, o] * op_w[e, o] (one cell type)."""

    def evaluate(weights: ArchWeights) -> tuple[float, float]:
        op_w, _, edge_w, _ = weights
        edge_w = torch.ones(op_w.shape[0]) if edge_w is None else edge_w
        acc = float((edge_w[:, None] * importance * op_w).sum())
        return acc, -acc

    return evaluate


def test_perturbation_keeps_the_op_the_supernet_needs_most_not_the_largest_weight():
    nodes = 3  # NAS-Bench-201 cell: 6 edges
    torch.manual_seed(0)
    op_w = F.softmax(torch.randn(6, 5), -1)
    importance = torch.rand(6, 5) * 10
    cells = cell_specs(NB201_SPACE, nodes, "nb201")
    calls = []
    selection = select_by_perturbation(cells, ArchWeights(op_w, None, None, None), NB201_SPACE,
                                       synthetic_accuracy(importance), finetune=lambda w, k: calls.append(k), seed=1)
    # removing op o on edge e costs importance[e, o] * op_w[e, o]: the largest cost is kept
    want = (importance * op_w).argmax(dim=1).tolist()
    assert [selection.ops["cell"][r] for r in range(6)] == want
    assert want != op_w.argmax(dim=1).tolist()  # this example differs from the magnitude rule
    assert len(selection.decisions) == 6 and calls == [1, 2, 3, 4, 5]  # fine-tuning between decisions only
    assert sorted(d.edge for d in selection.decisions) == list(range(6))
    genotype = selection_genotype(selection, cells, NB201_SPACE, nodes, 1)
    assert isinstance(genotype, NB201Genotype)
    assert [op for op, _, _ in genotype.edges] == [NB201_SPACE[i] for i in want]
    assert all(d.margin >= 0 for d in selection.decisions)
    # the same seed visits the edges in the same order
    again = select_by_perturbation(cells, ArchWeights(op_w, None, None, None), NB201_SPACE,
                                   synthetic_accuracy(importance), seed=1)
    assert [d.edge for d in again.decisions] == [d.edge for d in selection.decisions]


def test_perturbation_in_the_darts_cell_picks_ops_then_two_inputs_per_node():
    nodes = 3
    edges = len(edge_index(nodes))  # 9
    torch.manual_seed(1)
    op_w = F.softmax(torch.randn(edges, len(OPS)), -1)
    importance = torch.rand(edges, len(OPS)) * 10
    importance[:, 0] = 100.0  # 'none' would always win, but DARTS' cell never keeps it
    cells = cell_specs(OPS, nodes, "darts")
    base = ArchWeights(op_w, op_w.clone(), None, None)

    def evaluate(weights):  # both cell types: normal's importance, reduce's reversed
        normal = synthetic_accuracy(importance)(ArchWeights(weights[0], None, weights[2], None))[0]
        reduce = synthetic_accuracy(importance.flip(0))(ArchWeights(weights[1], None, weights[3], None))[0]
        return normal + reduce, -(normal + reduce)

    selection = select_by_perturbation(cells, base, OPS, evaluate, seed=0)
    usable = [1, 2, 3]
    for name, imp in (("normal", importance), ("reduce", importance.flip(0))):
        chosen = [selection.ops[name][r] for r in range(edges)]
        assert chosen == [usable[i] for i in (imp[:, usable] * op_w[:, usable]).argmax(dim=1).tolist()]
        # a decided edge is one-hot, so dropping it costs importance[e, chosen]: each node keeps its two largest
        start = 0
        kept = []
        for node in range(nodes):
            rows = list(range(start, start + node + 2))
            value = {r: float(imp[r, chosen[r]]) for r in rows}
            kept += sorted(sorted(rows, key=lambda r: -value[r])[:2])
            start += node + 2
        assert selection.kept[name] == kept
    op_steps = [d for d in selection.decisions if d.kind == "op"]
    edge_steps = [d for d in selection.decisions if d.kind == "edge"]
    assert len(op_steps) == 2 * edges and len(edge_steps) == 2 * (1 + 2)  # nodes with 3 and 4 inputs
    assert selection.decisions.index(edge_steps[0]) == len(op_steps)  # ops first, then edges
    genotype = selection_genotype(selection, cells, OPS, nodes, nodes)
    assert len(genotype.normal) == 2 * nodes and all(op != "none" for op, _ in genotype.normal + genotype.reduce)


def test_projection_masks_without_renormalising():
    op_w = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]])
    projection = Projection(ArchWeights(op_w, op_w, None, None))
    masked = projection.weights(without_op=(0, 1, 2))
    assert masked.op_normal[1].tolist() == pytest.approx([0.6, 0.2, 0.0])  # sums to 0.8: no renormalisation
    assert masked.edge_normal.tolist() == [1.0, 1.0]  # unweighted node sums, written out
    projection.decide_op(0, 0, 1)
    projection.drop_edge(0, 1)
    w = projection.weights()
    assert w.op_normal[0].tolist() == [0.0, 1.0, 0.0] and w.edge_normal.tolist() == [1.0, 0.0]
    assert w.op_reduce.tolist() == op_w.tolist()  # the other cell type untouched


def test_batch_statistics_leave_running_statistics_alone():
    net = Supernet(ops=ESS_SPACE, num_classes=10, channels=4, layers=3, partial_channels=2)
    net.eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad(), batch_statistics(net):
        assert net.training
        net(torch.randn(4, 3, 8, 8))
    assert not net.training
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def _tiny(tmp_path, *overrides):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SEARCH)
    return load_recipe(path, SearchRecipe, list(overrides))


def test_perturbation_search_writes_both_genotypes(tmp_path):
    recipe = _tiny(tmp_path, "derive.method=perturbation", "derive.finetune_epochs=1", "derive.val_batches=1",
                   "search.epochs=2", "search.max_steps=2")
    genotype = Searcher(recipe, tmp_path / "run").run()
    run = tmp_path / "run"
    assert load_genotype(run / "genotype.json") == genotype == load_genotype(run / "genotype-perturbation.json")
    magnitude = load_genotype(run / "genotype-magnitude.json")
    assert magnitude.name == genotype.name == "tiny"
    derive = json.loads((run / "derive.json").read_text())
    # an edge is named as the alpha figures label it (its source read "3->3" where they said 1→3)
    from eldarts_cli.runs.figures import edge_labels

    labels = {label.split(":")[0]: label.split(": ")[1].replace("→", "->") for label in edge_labels(2)}
    for d in derive["decisions"]:
        if d["kind"] == "edge":
            for name in d["candidates"]:
                row, pair = name.split(" ")
                assert pair == f"({labels[row]})", (name, labels[row])
    kinds = [d["kind"] for d in derive["decisions"]]
    assert kinds.count("op") == 2 * 5 and kinds.count("edge") == 2  # 2 nodes: 5 edges per cell; node 1 drops one
    assert derive["val_images"] == 16 and derive["finetune_epochs"] == 1
    for d in derive["decisions"]:
        assert len(d["accuracies"]) == len(d["candidates"]) == len(d["losses"])
        if d["kind"] == "op":
            assert d["chosen"] != "none" and "none" not in d["candidates"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["derive_method"] == "perturbation" and set(summary["genotypes"]) == {"magnitude", "perturbation"}
    assert summary["derive_seconds"] > 0 and summary["search_seconds"] >= summary["derive_seconds"]
    # reproducible: the same recipe selects the same cells
    assert Searcher(recipe, tmp_path / "again").run() == genotype
    # the softmax margins describe the magnitude cell: not shown as the perturbation cell's (they were, in the
    # tables, the comparison report and the small-margin warning)
    from eldarts_cli.cli.common import margins_line
    from eldarts_cli.models.decisiveness import margin_warning
    from eldarts_cli.runs.files import SearchSummary
    from eldarts_cli.runs.tables import search_facts

    row = search_facts(run)
    assert row["edge_margin_median"] is None and row["node_margin_median"] is None
    assert row["derive_margin_median"] is not None
    loaded = SearchSummary.read(run)
    assert "of the magnitude rule's choices (not the cell saved)" in margins_line(loaded)
    undecided = loaded.margins.model_copy(update={"decided": False, "edge_median": 0.0})
    assert margin_warning(undecided, "perturbation").startswith("the architecture weights are undecided (softmax "
                                                                "margins of the cell the magnitude rule would derive")
    assert margin_warning(undecided, "magnitude").startswith("the genotype rests on small margins")


def test_a_diverging_fine_tune_writes_no_genotype_and_says_what_to_change(tmp_path):
    """Perturbation selection on a network whose fine-tuning diverged chose from chance accuracies and saved that
    as the result; now it stops before writing anything of the selection, and the printed command continues."""
    from typer.testing import CliRunner

    from eldarts_cli.cli import app

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SEARCH)
    run = tmp_path / "run"
    sets = ["--set", "derive.method=perturbation", "--set", "derive.finetune_epochs=1", "--set", "search.epochs=2"]
    result = CliRunner().invoke(app, ["search", str(path), "--out", str(run), *sets, "--set", "derive.finetune_lr=1e12"])
    out = " ".join(result.output.split())
    assert result.exit_code == 1 and out.count("error:") == 1 and "Traceback" not in out, result.output
    assert "perturbation selection diverged while fine-tuning after its decision 1" in out
    # the continue command: an lr far above its default is set back to it (a tenth of 1e12 diverges again, resume
    # after resume); one not far above it, a tenth of it
    assert "Lower derive.finetune_lr (now 1e+12; 0.01 is its default)" in out and "--set derive.finetune_lr=0.01" in out
    from eldarts_cli.engines.derive import PerturbationSelector

    near = load_recipe(path, SearchRecipe, ["derive.finetune_lr=0.5"])
    with pytest.raises(DivergenceError, match=r"now 0.5\) and resume \(e.g. --set derive.finetune_lr=0.05\)"):
        PerturbationSelector._diverged(SimpleNamespace(recipe=near, _lr=lambda: 0.5), "a loss of nan", "while testing")
    for name in ("genotype.json", "summary.json", "derive.json", "genotype-perturbation.json"):
        assert not (run / name).exists(), name
    result = CliRunner().invoke(app, ["search", str(path), "--resume", str(run), *sets, "--set", "derive.finetune_lr=0.01"])
    assert result.exit_code == 0, result.output
    assert load_genotype(run / "genotype.json") == load_genotype(run / "genotype-perturbation.json")


def test_both_methods_on_request_keep_magnitude_as_the_genotype(tmp_path):
    recipe = _tiny(tmp_path, "derive.both=true", "search.epochs=2", "search_space.ops=nb201",
                   "network.nodes=3", "network.multiplier=1", "network.stem_multiplier=1", "network.layers=3")
    genotype = Searcher(recipe, tmp_path / "run").run()
    run = tmp_path / "run"
    assert isinstance(genotype, NB201Genotype)
    assert load_genotype(run / "genotype.json") == load_genotype(run / "genotype-magnitude.json") == genotype
    assert isinstance(load_genotype(run / "genotype-perturbation.json"), NB201Genotype)
    assert len(json.loads((run / "derive.json").read_text())["decisions"]) == 6
    # the tables' search cost of the saved (magnitude) cell leaves out perturbation selection's time, which the
    # run's own cost holds
    from eldarts_cli.runs.tables import search_facts

    summary = json.loads((run / "summary.json").read_text())
    assert summary["derive_seconds"] > 0
    row = search_facts(run)
    assert row["search_hours"] * 3600 == pytest.approx(summary["search_seconds"] - summary["derive_seconds"])
    assert row["search_cost_days"] * 86400 == pytest.approx(summary["search_seconds"] - summary["derive_seconds"])
    # NAS-Bench-201's table holds both cells (the perturbation cell was left out), each with its own cost
    from eldarts_cli.runs.tables import nb201_rows

    measured = [r for r in nb201_rows(search_runs=[run]) if not r["published"]]
    assert [r["method"].split(";")[0].rsplit(", ", 1)[1].rstrip(")") for r in measured] == ["magnitude", "perturbation"]
    assert measured[0]["cell"] == genotype.arch
    assert measured[1]["cell"] == load_genotype(run / "genotype-perturbation.json").arch
    assert measured[1]["values"]["search_cost"] * 86400 == pytest.approx(summary["search_seconds"])
    assert measured[1]["margin"] == "-" and measured[0]["values"]["margin"] == row["edge_margin_median"]
    # an evaluation of each cell records that cell's search cost (the perturbation cell's had the magnitude cell's)
    from eldarts_cli.runs.tables import cell_cost_days

    perturbation = load_genotype(run / "genotype-perturbation.json")
    assert cell_cost_days(run, perturbation) * 86400 == pytest.approx(summary["search_seconds"])
    assert cell_cost_days(run, genotype) * 86400 == pytest.approx(summary["search_seconds"]
                                                                   - summary["derive_seconds"])


# -- partial_channels.sampling: random -----------------------------------------------


@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_sampled_channels_fused_equals_edge_by_edge(reduction, layout):
    torch.manual_seed(0)
    kwargs = dict(ops=ESS_SPACE, num_classes=10, channels=8, layers=3, partial_channels=4, edge_coefficients=True)
    net, reference = Supernet(**kwargs), ReferenceSupernet(**kwargs)
    copy_reference_weights(reference, net)
    for model in (net, reference):
        model.sample_channels(channel_generator(5, 1, 2, 0))
    i = 1 if reduction else 0
    assert torch.equal(net.cells[i].channel_order, reference.cells[i].channel_order)
    x = torch.randn(2, 3, 8, 8)
    layouts = []
    net.cells[i].register_forward_hook(lambda m, args, out: layouts.append(
        out.is_contiguous(memory_format=torch.channels_last)))
    net = net.to(memory_format=layout)
    torch.testing.assert_close(net(x.contiguous(memory_format=layout)), reference(x), rtol=1e-4, atol=1e-5)
    assert layouts == [layout is torch.channels_last]  # the sampled channels' gathers keep NHWC


def test_identity_order_is_the_fixed_choice():
    torch.manual_seed(0)
    net = Supernet(ops=ESS_SPACE, num_classes=10, channels=8, layers=3, partial_channels=4)
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    fixed = net(x)
    for cell in net.cells:
        cell.set_channel_order(torch.arange(cell.op_channels * cell.partial_channels))
    torch.testing.assert_close(net(x), fixed)
    net.sample_channels(channel_generator(0, 0, 0, 0))
    assert not torch.allclose(net(x), fixed)  # another C/K of the channels go through the ops
    net.sample_channels(None)
    torch.testing.assert_close(net(x), fixed)


def test_channel_draws_depend_on_seed_epoch_step_only():
    a = torch.randperm(16, generator=channel_generator(2, 3, 4, 1))
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(a, torch.randperm(16, generator=channel_generator(2, 3, 4, 1)))
    assert not torch.equal(a, torch.randperm(16, generator=channel_generator(2, 3, 5, 1)))
    # every seed a recipe takes (0 <= seed < 2**32) draws: above about 4.6 million the key overflowed, a traceback
    for seed in (5_000_000, 2**32 - 1):
        b = torch.randperm(16, generator=channel_generator(seed, 1000, 10**6, 2))
        assert torch.equal(b, torch.randperm(16, generator=channel_generator(seed, 1000, 10**6, 2)))


def test_random_sampling_draws_a_new_mask_per_step(tmp_path, monkeypatch):
    recipe = _tiny(tmp_path, "partial_channels.sampling=random", "search.epochs=2")
    searcher = Searcher(recipe, tmp_path / "run")
    seen = []
    original = searcher.model.sample_channels

    def record(generator):
        original(generator)
        seen.append(None if generator is None else searcher.model.cells[0].channel_order.tolist())

    monkeypatch.setattr(searcher.model, "sample_channels", record)
    searcher.run()
    draws = [s for s in seen if s is not None]
    # epoch 0: 3 weight steps (warm-up); epoch 1: 3 x (arch + weight); then validation uses the fixed channels
    assert len(draws) == 3 + 6
    assert len({tuple(d) for d in draws}) > 1
    assert None in seen


def test_random_sampling_survives_an_interruption(tmp_path):
    from test_search_e2e import InterruptAt

    recipe = _tiny(tmp_path, "partial_channels.sampling=random")
    full = Searcher(recipe, tmp_path / "full").run()
    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, tmp_path / "cut", callbacks=InterruptAt(epoch=1, step=2)).run()
    torch.manual_seed(999)  # a resumed process starts from another global RNG state
    assert Searcher(recipe, tmp_path / "cut", resume=True).run() == full
    assert read_metrics(tmp_path / "cut", "alphas")[-1] == read_metrics(tmp_path / "full", "alphas")[-1]


def test_random_sampling_needs_partial_channels(tmp_path):
    with pytest.raises(RecipeError, match="sampling=random needs partial_channels.ratio > 1"):
        _tiny(tmp_path, "partial_channels.ratio=1", "partial_channels.sampling=random")


def test_a_run_from_before_these_fields_still_resumes(tmp_path):
    """A checkpoint whose recipe lacks fields added later (derive, sampling, nesterov) resumes."""
    from test_search_e2e import InterruptAt

    recipe = _tiny(tmp_path)
    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, tmp_path / "cut", callbacks=InterruptAt(epoch=1, step=1)).run()
    state = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    del state["recipe"]["derive"], state["recipe"]["partial_channels"]["sampling"], state["recipe"]["optim"]["nesterov"]
    del state["recipe"]["search_space"]["cell"]
    torch.save(state, tmp_path / "cut" / "checkpoint.pt")
    assert Searcher(recipe, tmp_path / "cut", resume=True).start_epoch == 1


def test_finetune_scales_the_loss_as_the_search_does(monkeypatch, tmp_path):
    """Perturbation selection's fine-tuning goes through the device's gradient scaler (fp16 on a GPU needs one, as
    the search's weight steps have): scaled loss, gradients unscaled before clipping, the step through the scaler.
    A scaler that multiplies by 1024 (exact in floats) leaves the fine-tuned weights as an unscaled run's."""
    from eldarts_cli.engines import derive as derive_engine

    class Scaler:  # what torch.amp.GradScaler does with a fixed scale, counting its calls
        def __init__(self):
            self.calls, self.unscaled = [], False

        def scale(self, loss):
            self.calls.append("scale")
            return loss * 1024.0

        def unscale_(self, optimizer):
            self.calls.append("unscale_")
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.div_(1024.0)
            self.unscaled = True

        def step(self, optimizer):
            self.calls.append("step")
            if not self.unscaled:
                self.unscale_(optimizer)
            optimizer.step()

        def update(self):
            self.calls.append("update")
            self.unscaled = False

    recipe = _tiny(tmp_path, "search.epochs=2", "search.max_steps=2", "derive.finetune_epochs=1")
    results = {}
    for fake in (False, True):
        scalers = []
        if fake:
            monkeypatch.setattr(derive_engine, "grad_scaler", lambda device, amp: scalers.append(Scaler()) or scalers[-1])
        torch.manual_seed(0)
        searcher = Searcher(recipe, tmp_path / f"run-{fake}")
        selector = derive_engine.PerturbationSelector(searcher.model, recipe, val=searcher.data.val,
                                                      train=searcher.data.train, device=searcher.device,
                                                      amp=searcher.amp)
        selector.finetune(searcher.model.arch_weights(), 0)
        results[fake] = [p.detach().clone() for p in searcher.model.weight_parameters()]
        if fake:
            assert scalers[0].calls == ["scale", "unscale_", "step", "update"] * 2  # max_steps=2, grad_clip on
    for a, b in zip(results[False], results[True]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_the_search_cost_line_says_it_includes_the_selection(tmp_path):
    """summary.json's search cost adds perturbation selection's time to the epochs'; the console's line said "the
    epochs' wall time" alone."""
    from typer.testing import CliRunner

    from eldarts_cli.cli import app

    _tiny(tmp_path)  # writes tiny.yaml
    sets = ["derive.method=perturbation", "derive.finetune_epochs=1", "derive.val_batches=1", "search.epochs=2",
            "search.max_steps=2", "runtime.threads=1"]
    result = CliRunner().invoke(app, ["search", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
                                      *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["derive_seconds"] > 0
    assert "(measured: the epochs' wall time, over every resume, and perturbation selection's)" in \
        " ".join(result.output.split())


def test_the_printed_runner_up_follows_the_choice_rule_on_ties():
    """Four ops tied at one accuracy: the line named the runner-up by name order ("none"), not by the documented
    tie rule (the removal that raises the loss most: here skip_connect's)."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from eldarts_cli.cli.search import RichSearchCallbacks
    from eldarts_cli.runs.files import Decision

    out = io.StringIO()
    callbacks = RichSearchCallbacks(Progress(console=Console(file=out, width=200)))
    decision = Decision(step=1, kind="op", cell="cell", edge=2, candidates=["none", "skip_connect", "nor_conv_3x3",
                        "avg_pool_3x3"], accuracies=[14.0625, 14.0625, 10.0, 14.0625],
                        losses=[2.26320, 2.26430, 2.5, 2.26100], chosen="nor_conv_3x3", margin=4.06)
    callbacks.derive_decision(decision)
    assert "without skip_connect 14.1%" in out.getvalue(), out.getvalue()
    dropped = decision.model_copy(update={"kind": "edge", "node": 1, "candidates": ["0", "1", "2"],
                                          "accuracies": [30.0, 20.0, 30.0], "losses": [1.0, 2.0, 1.5], "chosen": "1"})
    callbacks.derive_decision(dropped)  # an edge decision's runner-up: the one whose removal hurts least after it
    assert "without 0 30.0%" in out.getvalue(), out.getvalue()
