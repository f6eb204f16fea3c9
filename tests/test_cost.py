"""Hardware-aware search: the expected-cost model, the cost term, cost tables, and searches with a budget."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from eldarts_cli.models.reference import PlainEvalForward
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import CostConfig, SearchRecipe
from eldarts_cli.core.errors import RecipeError
from eldarts_cli.engines.cost import CostError, CostTable, load_evaluation_recipe, load_table
from eldarts_cli.engines.objectives import cost_penalty, cost_term
from eldarts_cli.engines.search import Searcher
from eldarts_cli.models.cells import edge_index
from eldarts_cli.models.cost import CostModel, OpSite, build_layout_network, kept_edge_shares, trace_layout
from eldarts_cli.models.genotypes import Genotype
from eldarts_cli.models.sizes import count_parameters, thop_macs
from eldarts_cli.models.spaces import DARTS_SPACE, ESS_SPACE
from eldarts_cli.runs.files import SearchSummary
from eldarts_cli.runs.folders import read_metrics
from eldarts_cli.runs.tables import pareto_front

runner = CliRunner()

TINY_EVAL = """
name: eval-tiny
data: {dataset: digits, batch_size: 16, crop_padding: 1, cutout: 0, limit: 128}
network: {kind: cifar, channels: 4, layers: 3, auxiliary: false}
train: {epochs: 1}
runtime: {threads: 1}
"""

TINY_SEARCH = """
name: tiny
seed: 3
data: {dataset: digits, image_size: 8, batch_size: 16, crop_padding: 1, limit: 128}
search_space: {ops: ess}
network: {channels: 4, layers: 3, nodes: 2, multiplier: 2}
partial_channels: {ratio: 2}
arch_optim: {lr: 0.05}
search: {epochs: 4, warmup_epochs: 1, max_steps: 4, val_batches: 2}
runtime: {threads: 1}
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cost")
    (folder / "eval.yaml").write_text(TINY_EVAL)
    (folder / "eval-wide.yaml").write_text(TINY_EVAL.replace("channels: 4", "channels: 8"))
    (folder / "search.yaml").write_text(TINY_SEARCH)
    return folder


def macs_settings(files: Path, target: float, weight: float = 1.0) -> list[str]:
    return ["cost.metric=macs", f"cost.network={files / 'eval.yaml'}", f"cost.target={target}", f"cost.weight={weight}"]


# -- the model ---------------------------------------------------------------


def random_cell(rng: random.Random, ops: list[str], nodes: int):
    """A random discrete cell, and one-hot op weights and 0/0.5 edge weights that pick exactly it."""
    index = edge_index(nodes)
    usable = [op for op in ops if op != "none"]
    edges = []
    op_weights = torch.zeros(len(index), len(ops), dtype=torch.float64)
    edge_weights = torch.zeros(len(index), dtype=torch.float64)
    for node in range(nodes):
        chosen = rng.sample(range(node + 2), 2)
        for source in range(node + 2):
            e = index.index((node, source))
            op = rng.choice(usable)
            op_weights[e, ops.index(op)] = 1.0
            if source in chosen:
                edge_weights[e] = 0.5
                edges.append((op, source))
    return edges, op_weights, edge_weights


NETWORKS = [  # kind, input (C, H, W), channels, layers, nodes, multiplier
    ("cifar", (1, 8, 8), 4, 3, 2, 2),
    ("cifar", (3, 16, 16), 6, 5, 4, 4),
    ("imagenet", (3, 32, 32), 8, 3, 3, 2),
]


@pytest.mark.parametrize("kind,shape,channels,layers,nodes,multiplier", NETWORKS)
def test_one_hot_expected_cost_is_the_derived_networks_cost_exactly(kind, shape, channels, layers, nodes, multiplier):
    layout, probe = trace_layout(kind, channels=channels, layers=layers, nodes=nodes, multiplier=multiplier,
                                 input_shape=shape, num_classes=10)
    ops = list(DARTS_SPACE)  # with 'none', which no derived network has
    macs = CostModel.counted("macs", layout, probe, ops)
    params = CostModel.counted("params", layout, probe, ops)
    rng = random.Random(channels)
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    for _ in range(3):
        normal, p_normal, b_normal = random_cell(rng, ops, nodes)
        reduce, p_reduce, b_reduce = random_cell(rng, ops, nodes)
        genotype = Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)
        network = build_layout_network(kind, genotype, channels=channels, layers=layers, in_channels=shape[0],
                                       num_classes=10).eval()
        counted_macs = thop_macs(network, torch.zeros(1, *shape))
        counted_params = count_parameters(network)
        assert macs.expected(p_normal, p_reduce, b_normal, b_reduce).item() == counted_macs
        assert params.expected(p_normal, p_reduce, b_normal, b_reduce).item() == counted_params
        assert macs.of_genotype(genotype) == counted_macs and params.of_genotype(genotype) == counted_params


def synthetic_table(layout, ops: list[str], seed: int = 0) -> CostTable:
    """A cost table with made-up (but distinct) latencies for every op, site and fixed part."""
    rng = random.Random(seed)

    def timing():
        value = rng.uniform(0.01, 1.0)
        return {"median_ms": value, "q1_ms": value, "q3_ms": value, "min_ms": value, "max_ms": value, "repeats": 1}

    return CostTable.model_validate({
        "environment": {"device": "cpu", "device_name": "cpu", "torch_version": torch.__version__, "cpu_model": "x",
                        "threads": 1, "python_version": "3", "platform": "p", "mac_counter": "thop",
                        "measured_at": "now"},
        "settings": {"batch": 1, "dtype": "float32", "channels_last": False, "repeats": 1, "warmup": 0},
        "network": layout.signature(),
        "ops": [{"op": op, "channels": s.channels, "resolution": s.resolution, "stride": s.stride, "forward": timing()}
                for op in ops if op != "none" for s in layout.sites()],
        "fixed": [{"name": p.name, "kind": p.kind, "input_shape": list(p.input_shape), "forward": timing()}
                  for p in layout.fixed],
    })


def test_one_hot_expected_latency_is_the_sum_of_the_derived_networks_table_entries():
    nodes, multiplier = 3, 3
    layout, _ = trace_layout("cifar", channels=6, layers=5, nodes=nodes, multiplier=multiplier,
                             input_shape=(3, 16, 16), num_classes=10)
    ops = list(ESS_SPACE)
    table = synthetic_table(layout, ops)
    entries = table.op_costs()
    fixed = sum(e.forward.median_ms for e in table.fixed)
    model = CostModel.from_costs("latency", layout, ops, lambda op, site: entries[(op, site)], fixed)
    rng = random.Random(1)
    concat = list(range(2 + nodes - multiplier, nodes + 2))
    normal, p_normal, b_normal = random_cell(rng, ops, nodes)
    reduce, p_reduce, b_reduce = random_cell(rng, ops, nodes)
    genotype = Genotype(normal=normal, normal_concat=concat, reduce=reduce, reduce_concat=concat)
    network = build_layout_network("cifar", genotype, channels=6, layers=5, in_channels=3, num_classes=10).eval()
    # Independently: the site of every op the built network runs, read off its forward pass.
    seen = []
    for cell in network.cells:
        edges, _ = genotype.cell(cell.reduction)
        for e, module in enumerate(cell.ops):
            stride = 2 if cell.reduction and edges[e][1] < 2 else 1
            module.register_forward_pre_hook(
                lambda m, args, op=edges[e][0], stride=stride: seen.append((op, OpSite(args[0].shape[1], args[0].shape[2], stride))))
    with torch.no_grad():  # each op module called on its own input (models/reference.py: the same function)
        PlainEvalForward(network)(torch.zeros(1, 3, 16, 16))
    assert len(seen) == 2 * nodes * 5
    by_hand = fixed + sum(entries[key] for key in seen)
    assert model.expected(p_normal, p_reduce, b_normal, b_reduce).item() == pytest.approx(by_hand, rel=1e-12)
    assert model.of_genotype(genotype) == pytest.approx(by_hand, rel=1e-12)


def test_kept_edge_shares_sum_to_two_per_node_and_select_the_derived_edges():
    nodes = 4
    ops = list(ESS_SPACE)
    usable = torch.arange(len(ops))
    torch.manual_seed(0)
    alpha = torch.randn(14, len(ops), requires_grad=True)
    coefficients = torch.randn(14, requires_grad=True)
    from eldarts_cli.models.supernet import node_softmax

    shares = kept_edge_shares(torch.softmax(alpha, -1), node_softmax(coefficients, nodes), usable, nodes)
    start = 0
    for node in range(nodes):
        part = shares[start : start + node + 2]
        assert part.sum().item() == pytest.approx(2.0)
        assert (part >= 0).all() and (part <= 1 + 1e-6).all()
        start += node + 2
    assert shares[:2].tolist() == pytest.approx([1.0, 1.0])  # node 0 keeps both of its edges
    shares.sum().backward()
    assert torch.isfinite(alpha.grad).all() and torch.isfinite(coefficients.grad).all()
    # one edge holding most of the strength: it counts once, the rest share the second place
    weights = torch.tensor([0.5, 0.5, 0.7, 0.2, 0.1])
    shares = kept_edge_shares(torch.ones(5, 1), weights, torch.tensor([0]), 2)[2:]
    assert shares.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])


def test_expected_cost_has_gradients_for_alphas_and_edge_coefficients(files):
    recipe = load_recipe(files / "search.yaml", SearchRecipe, macs_settings(files, 0.05))
    searcher = Searcher(recipe, files / "gradients")
    expected = searcher.cost.expected()
    expected.backward()
    for p in searcher.model.arch_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    low, high = searcher.cost.bounds()
    assert low < expected.item() < high


def test_second_order_search_takes_the_cost_term(files, tmp_path):
    settings = macs_settings(files, 0.045, weight=5) + ["search.order=second", "search.epochs=2"]
    search(files, tmp_path / "run", settings)
    rows = read_metrics(tmp_path / "run")
    assert rows[-1]["cost_expected"] < rows[0]["cost_expected"]


def test_cost_forms():
    e = torch.tensor(3.0, dtype=torch.float64)
    settings = dict(metric="macs", network="eval.yaml", target=2.0, weight=0.5)
    assert cost_penalty(e, CostConfig(**settings, form="hinge")).item() == pytest.approx(0.25)
    assert cost_penalty(torch.tensor(1.0), CostConfig(**settings, form="hinge")).item() == 0
    assert cost_penalty(torch.tensor(1.0), CostConfig(**settings, form="absolute")).item() == pytest.approx(0.25)
    assert cost_penalty(e, CostConfig(**settings, form="linear")).item() == pytest.approx(0.75)
    ce = torch.tensor(2.3)
    proxyless = CostConfig(**{**settings, "weight": 1.0}, form="log_ratio", beta=0.6)
    total = ce + cost_term(ce, e, proxyless)
    assert total.item() == pytest.approx(2.3 * (math.log(3) / math.log(2)) ** 0.6, rel=1e-6)


# -- recipes -----------------------------------------------------------------


@pytest.mark.parametrize("settings,message", [
    (["cost.target=0"], "greater than 0"),
    (["cost.target=-2"], "greater than 0"),
    (["cost.metric=latency"], "needs a table"),
    (["cost.table=t.json"], "a table is for metric latency"),
    (["cost.form=log_ratio", "cost.target=0.5"], "needs target > 1"),
    (["cost.start_epoch=4"], "cost.start_epoch (4) is not below search.epochs (4)"),
    (["cost.form=square"], "hinge"),
    (["cost.metirc=macs"], "did you mean 'metric'"),
])
def test_bad_cost_sections_are_refused(files, settings, message):
    with pytest.raises(RecipeError) as error:
        load_recipe(files / "search.yaml", SearchRecipe, macs_settings(files, 0.05) + settings)
    assert message in str(error.value) and "cost" in str(error.value)


def test_a_resume_that_would_price_another_network_is_refused(files, tmp_path, monkeypatch):
    """A relative cost.network is read from the current folder: resumed from a folder whose file of that name is
    another network, the search priced that one from the next epoch on, silently (E 0.47 -> 3.3 M MACs). The
    resume now compares the network with the one the checkpoint priced and refuses another; the same network
    given by another path (an absolute one, with --set) resumes."""
    from eldarts_cli.core.errors import CheckpointError

    class StopAfterEpoch1:
        def epoch_start(self, epoch, epochs, steps):
            if epoch == 1:
                raise KeyboardInterrupt

        def __getattr__(self, name):  # the other callbacks: nothing
            return lambda *args, **kwargs: None

    here, there = tmp_path / "here", tmp_path / "there"
    for folder, width in ((here, "4"), (there, "8")):
        folder.mkdir()
        (folder / "eval.yaml").write_text(TINY_EVAL.replace("channels: 4", f"channels: {width}"))
    settings = ["cost.metric=macs", "cost.network=eval.yaml", "cost.target=0.05", "cost.weight=1", "search.epochs=3"]
    run = tmp_path / "run"
    monkeypatch.chdir(here)
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(files / "search.yaml", SearchRecipe, settings), run, callbacks=StopAfterEpoch1()).run()
    monkeypatch.chdir(there)
    with pytest.raises(CheckpointError, match=r"cost.network eval.yaml \(read from .*there\) is now cifar, C=8, .* but "
                                              r"this run priced cifar, C=4"):
        Searcher(load_recipe(run / "recipe.yaml", SearchRecipe), run, resume=True)
    moved = load_recipe(run / "recipe.yaml", SearchRecipe, [f"cost.network={here / 'eval.yaml'}"])
    assert Searcher(moved, run, resume=True).run() is not None  # the same network, by its absolute path


def test_a_target_the_term_cannot_serve_is_said_at_the_start_of_the_run_too(files, tmp_path):
    """Only the dry run said that a target is below the cheapest derivable network (a run went on to "over" at its
    end); a hinge target above the dearest one (the term never acts) and perturbation selection (it chooses by
    accuracy, not cost) were said nowhere."""
    from eldarts_cli.engines.cost import CostObjective
    from eldarts_cli.engines.search import build_supernet

    base = load_recipe(files / "search.yaml", SearchRecipe, macs_settings(files, 0.05))
    low, high = CostObjective(base, build_supernet(base, 1, 10), torch.device("cpu")).bounds()
    cases = [(low / 2, [], "is below the cheapest network this space can derive"),
             (high * 10, [], "is at or above the dearest network this space can derive"),
             ((low + high) / 2, ["derive.method=perturbation"], "chooses the cell by validation accuracy alone")]
    for number, (target, extra, words) in enumerate(cases):
        sets = [*macs_settings(files, target), *extra, "search.epochs=1", "search.warmup_epochs=0"]
        result = runner.invoke(app, ["search", str(files / "search.yaml"), "--out", str(tmp_path / f"r{number}"),
                                     *sum((["--set", s] for s in sets), [])])
        flat = " ".join(result.output.split())
        assert result.exit_code == 0 and flat.count(words) == 1, result.output
        assert flat.index(words) < flat.index("epoch"), result.output  # at the start
    quiet = runner.invoke(app, ["search", str(files / "search.yaml"), "--dry-run",
                                *sum((["--set", s] for s in macs_settings(files, (low + high) / 2)), [])])
    assert quiet.exit_code == 0 and "warning" not in quiet.output, quiet.output


def test_a_log_ratio_term_that_would_maximise_the_cross_entropy_is_refused(files, monkeypatch):
    """cost.form=log_ratio counts a cost below 1 (in its unit) as 1 (log 0): with every derivable network under 1
    the term gave no cost gradient, and with a weight above 1 the loss became CE x (1 - weight), so a target of
    2 M MACs at weight 2 maximised the cross-entropy for the whole search, silently. Both are refused, by the
    run and its dry run; a weight of 1 (FBNet's form) on costs above 1 is not."""
    from eldarts_cli.engines.cost import CostObjective
    from eldarts_cli.engines.search import build_supernet

    result = runner.invoke(app, ["search", str(files / "search.yaml"), "--dry-run", "--set", "cost.form=log_ratio",
                                 *(f"--set={s}" for s in macs_settings(files, 2, weight=2))])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and flat.count("error:") == 1 and "at most 1, whose log counts as 0" in flat, flat
    recipe = load_recipe(files / "search.yaml", SearchRecipe,
                         macs_settings(files, 100, weight=3) + ["cost.form=log_ratio"])
    monkeypatch.setattr(CostObjective, "bounds", lambda self: (4.0, 40.0))  # costs above 1 in the unit
    supernet = build_supernet(recipe, 1, 10)
    with pytest.raises(RecipeError, match=r"cost.weight=3: at the cheapest network this space can derive \(4 M MACs; "
                                          r"derivable 4 to 40 M MACs\) the architecture loss would be the "
                                          r"cross-entropy x -0.54, .* give cost.weight below 1.95"):
        CostObjective(recipe, supernet, torch.device("cpu"))
    fbnet = recipe.model_copy(update={"cost": recipe.cost.model_copy(update={"weight": 1.0})})
    assert CostObjective(fbnet, supernet, torch.device("cpu")).cfg.weight == 1.0


# -- searches ----------------------------------------------------------------


def search(files: Path, out: Path, settings: list[str]) -> Genotype:
    return Searcher(load_recipe(files / "search.yaml", SearchRecipe, settings), out).run()


TIMES = ("images_per_s", "epoch_seconds", "elapsed_seconds")


def test_weight_zero_is_the_search_without_a_cost_section(files, tmp_path):
    plain = search(files, tmp_path / "plain", [])
    weighted = search(files, tmp_path / "zero", macs_settings(files, 0.05, weight=0))
    assert plain == weighted
    assert read_metrics(tmp_path / "plain", "alphas") == read_metrics(tmp_path / "zero", "alphas")
    rows = read_metrics(tmp_path / "zero")
    for a, b in zip(read_metrics(tmp_path / "plain"), rows):
        assert {k: v for k, v in a.items() if k not in TIMES} == {
            k: v for k, v in b.items() if k not in TIMES and not k.startswith("cost_")}
    assert all(r["cost_expected"] > 0 and r["cost_penalty"] >= 0 for r in rows)  # computed and logged all the same
    assert "cost_expected" not in read_metrics(tmp_path / "plain")[0]  # no empty cost columns without the section


def test_mac_target_gives_a_cheaper_network_and_weights_on_cheaper_ops(files, tmp_path):
    target = 0.045  # M MACs; this space's cheapest derivable network costs 0.0412 (test above)
    search(files, tmp_path / "free", macs_settings(files, target, weight=0))
    search(files, tmp_path / "budget", macs_settings(files, target, weight=5))
    free, budget = SearchSummary.read(tmp_path / "free").cost, SearchSummary.read(tmp_path / "budget").cost
    assert free.measured > target  # the target is well below what the unconstrained search derives
    assert budget.measured < target and budget.within_target
    assert budget.predicted == budget.measured and budget.error_percent == 0  # MACs are predicted exactly
    assert budget.expected < free.expected

    def conv_weight(run: Path) -> float:  # softmax weight on the two convolutions, the dear ops of the space
        last = read_metrics(run, "alphas")[-1]
        rows = last["weights_normal"] + last["weights_reduce"]
        return sum(w for row in rows for op, w in zip(last["ops"], row) if "conv" in op)

    assert conv_weight(tmp_path / "budget") < conv_weight(tmp_path / "free")
    rows = read_metrics(tmp_path / "budget")
    assert rows[-1]["cost_expected"] < rows[0]["cost_expected"]


# -- cost tables -------------------------------------------------------------


@pytest.fixture(scope="module")
def table(files):
    path = files / "table.json"
    result = runner.invoke(app, ["profile-ops", "--table", str(path), "--network", str(files / "eval.yaml"),
                                 "--nodes", "2", "--multiplier", "2", "--ops", "ess", "--repeats", "3",
                                 "--warmup", "1", "--threads", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return path


def latency_settings(files: Path, table_path: Path, target: float = 5.0) -> list[str]:
    return ["cost.metric=latency", f"cost.table={table_path}", f"cost.network={files / 'eval.yaml'}",
            f"cost.target={target}"]


def test_profile_ops_table_covers_the_network_and_records_where_it_was_measured(files, table):
    result = load_table(table)
    layout, _ = trace_layout("cifar", channels=4, layers=3, nodes=2, multiplier=2, input_shape=(1, 8, 8),
                             num_classes=10)
    assert {(e.op, e.site) for e in result.ops} == {(op, s) for op in ESS_SPACE for s in layout.sites()}
    assert [(f.name, tuple(f.input_shape)) for f in result.fixed] == [(p.name, p.input_shape) for p in layout.fixed]
    assert result.environment.device == "cpu" and result.environment.torch_version == torch.__version__
    from eldarts_cli.core.device import cpu_has_native_bf16, cpu_instructions

    assert result.environment.cpu_instructions == cpu_instructions()  # a model name can hide two CPUs

    dtype = "bfloat16" if cpu_has_native_bf16() else "float32"  # the evaluation recipe's precision on this CPU
    assert result.settings.batch == 1 and result.settings.dtype == dtype and result.environment.threads == 1
    for entry in result.ops + result.fixed:
        t = entry.forward
        assert t.repeats == 3 and 0 <= t.min_ms <= t.q1_ms <= t.median_ms <= t.q3_ms <= t.max_ms


def test_latency_search_reports_predicted_and_measured_latency(files, table, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", str(files / "search.yaml"), "--out", str(out),
                                 *sum((["--set", s] for s in latency_settings(files, table)), [])])
    assert result.exit_code == 0, result.output
    cost = SearchSummary.read(out).cost
    assert cost.metric == "latency" and cost.unit == "ms" and cost.measured > 0 and cost.predicted > 0
    assert cost.error_percent == pytest.approx(100 * (cost.predicted - cost.measured) / cost.measured)
    assert "cpu" in cost.measured_by and "batch 1" in cost.measured_by
    assert "prediction error" in result.output and "latency E" in result.output
    assert (out / "figures" / "curves.png").exists()


def test_a_resume_on_a_table_that_prices_the_ops_otherwise_is_refused(files, table, tmp_path):
    """A table measured again (``profile-ops --table --force``) or edited between an interruption and its resume
    priced the later epochs with other latencies than the earlier ones, silently (E 2.96 -> 26.5 ms)."""
    from eldarts_cli.core.errors import CheckpointError

    class StopAfterEpoch1:
        def epoch_start(self, epoch, epochs, steps):
            if epoch == 1:
                raise KeyboardInterrupt

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    mine = tmp_path / "table.json"
    original = table.read_text()
    mine.write_text(original)
    run = tmp_path / "run"
    recipe = load_recipe(files / "search.yaml", SearchRecipe, [*latency_settings(files, mine), "search.epochs=3"])
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, run, callbacks=StopAfterEpoch1()).run()
    edited = json.loads(original)
    for entry in edited["ops"]:
        if entry["op"] == "sep_conv_3x3":
            entry["forward"] = {k: v * 20 if k.endswith("_ms") else v for k, v in entry["forward"].items()}
    mine.write_text(json.dumps(edited))
    with pytest.raises(CheckpointError, match=r"cost.table .*table.json prices the ops otherwise than the table this "
                                              r"run priced its epochs with \(cpu.*measured 20\d\d-"):
        Searcher(load_recipe(run / "recipe.yaml", SearchRecipe), run, resume=True)
    mine.write_text(original)  # the same table: the resume goes on
    assert Searcher(load_recipe(run / "recipe.yaml", SearchRecipe), run, resume=True).run() is not None


def test_profile_ops_table_never_replaces_a_file_it_did_not_write(files, table, tmp_path):
    precious = tmp_path / "notes.json"
    precious.write_text("{}")
    result = runner.invoke(app, ["profile-ops", "--table", str(precious), "--network", str(files / "eval.yaml")])
    assert result.exit_code == 2 and "not an eldarts cost table" in result.output
    assert precious.read_text() == "{}"
    result = runner.invoke(app, ["profile-ops", "--table", str(tmp_path / "t.json")])
    assert result.exit_code == 2 and "--table and --network go together" in result.output
    # a cost table measured before is replaced only with --force (it was replaced silently, by a table of other ops)
    measured = tmp_path / "measured.json"
    measured.write_bytes(table.read_bytes())
    args = ["profile-ops", "--table", str(measured), "--network", str(files / "eval.yaml"), "--nodes", "2",
            "--multiplier", "2", "--ops", "skip_connect", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "exists" in result.output and "--force" in result.output
    assert measured.read_bytes() == table.read_bytes()
    result = runner.invoke(app, [*args, "--force"])
    assert result.exit_code == 0, result.output
    assert {e.op for e in load_table(measured).ops} == {"skip_connect"}
    result = runner.invoke(app, ["profile-ops", "--table", str(tmp_path / "t.json"), "--network",
                                 str(files / "eval.yaml"), "--channels", "8"])
    assert result.exit_code == 2 and "--channels" in result.output


def edited_table(table: Path, folder: Path, edit) -> Path:
    data = json.loads(table.read_text())
    edit(data)
    path = folder / "edited.json"
    path.write_text(json.dumps(data))
    return path


def _drop_convs(data):
    data["ops"] = [e for e in data["ops"] if "conv" not in e["op"]]


def _other_cpu(data):
    data["environment"]["cpu_model"] = "Some Other CPU 9000"


def _other_instructions(data):  # the same model name, other vector instructions (AVX2 and AVX512 "AMD EPYC")
    data["environment"]["cpu_instructions"] = "OTHER-ISA"


def _no_instructions(data):  # a table written before eldarts recorded the CPU's instructions
    del data["environment"]["cpu_instructions"]


def _twice(data):  # a hand-edited or merged table: an entry listed twice, at another latency
    slow = {key: 999.0 for key in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms")}
    data["ops"].append({**data["ops"][0], "forward": {**data["ops"][0]["forward"], **slow}})


def _bf16(data):  # a dtype the evaluation recipe runs on no CPU
    data["settings"]["dtype"] = "float16"


@pytest.mark.parametrize("case,message", [
    ("other ops", "has no entries for sep_conv_3x3, dil_conv_3x3"),
    ("other ops", "--force --ops"),  # the table exists: the command that measures it again needs --force
    ("other sizes", "was measured for another network: channels 8 (table) vs 4"),
    ("missing", "does not exist; measure it with: eldarts profile-ops --table"),
    ("other device", "was measured on cpu: Some Other CPU 9000 (OTHER-ISA), but this search runs on cpu"),
    ("other instructions", "(OTHER-ISA), but this search runs on cpu"),
    ("other dtype", "was measured in float16, but the evaluation recipe runs the network in"),
    ("not a table", "is not an eldarts cost table"),
    ("no network", "cost.network"),
    ("an entry twice", "is not a valid cost table: [top level] it lists op skip_connect at C=4, 8x8, stride 1 twice"),
])
def test_bad_tables_give_one_clear_error_each(files, table, tmp_path, case, message):
    settings = latency_settings(files, table)
    if case == "other ops":
        settings[1] = f"cost.table={edited_table(table, tmp_path, _drop_convs)}"
    elif case == "other sizes":
        wide = tmp_path / "wide.json"
        assert runner.invoke(app, ["profile-ops", "--table", str(wide), "--network", str(files / "eval-wide.yaml"),
                                   "--nodes", "2", "--multiplier", "2", "--ops", "ess", "--repeats", "1",
                                   "--warmup", "0", "--device", "cpu"]).exit_code == 0
        settings[1] = f"cost.table={wide}"
    elif case == "missing":
        settings[1] = f"cost.table={tmp_path / 'nowhere.json'}"
    elif case == "other device":
        settings[1] = f"cost.table={edited_table(table, tmp_path, lambda d: (_other_cpu(d), _other_instructions(d)))}"
    elif case == "other instructions":
        settings[1] = f"cost.table={edited_table(table, tmp_path, _other_instructions)}"
    elif case == "other dtype":
        settings[1] = f"cost.table={edited_table(table, tmp_path, _bf16)}"
    elif case == "an entry twice":
        settings[1] = f"cost.table={edited_table(table, tmp_path, _twice)}"
    elif case == "not a table":
        (tmp_path / "profile.json").write_text('{"format": "eldarts-op-profile"}')
        settings[1] = f"cost.table={tmp_path / 'profile.json'}"
    else:
        settings[2] = f"cost.network={tmp_path / 'no-such-eval.yaml'}"
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", str(files / "search.yaml"), "--out", str(out),
                                 *sum((["--set", s] for s in settings), [])])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())  # nothing half-made


def test_a_table_without_the_cpus_instructions_is_matched_by_its_model(files, table, tmp_path):
    """Tables written before eldarts recorded the instructions: the model name is all there is to compare."""
    from eldarts_cli.engines.cost import table_device_here

    old = load_table(edited_table(table, tmp_path, _no_instructions))
    assert old.environment.cpu_instructions is None and table_device_here(old) == torch.device("cpu")
    assert table_device_here(load_table(edited_table(table, tmp_path, _other_instructions))) is None


def test_a_foreign_table_is_used_when_allowed_and_not_timed_here(files, table, tmp_path):
    foreign = edited_table(table, tmp_path, _other_cpu)
    settings = latency_settings(files, table) + ["cost.allow_foreign_table=true"]
    settings[1] = f"cost.table={foreign}"
    search(files, tmp_path / "run", settings + ["search.epochs=2"])
    cost = SearchSummary.read(tmp_path / "run").cost
    assert cost.foreign_table and cost.measured is None and cost.predicted > 0
    assert "not on this machine" in cost.note and "not measured" not in cost.note  # the console line says it once
    assert cost.measured_by.startswith("not measured here; would be a timed forward on")  # it read as done


# -- sweeps and the accuracy-cost figure -------------------------------------


def test_pareto_front():
    points = [(1.0, 80.0), (2.0, 85.0), (2.0, 84.0), (3.0, 85.0), (0.5, 70.0), (4.0, 90.0)]
    assert pareto_front(points) == [4, 0, 1, 5]


def test_ablate_sweeps_a_cost_setting_and_report_draws_accuracy_against_cost(files, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(TINY_SEARCH + f"cost: {{metric: macs, network: {files / 'eval.yaml'}, target: 0.05, weight: 2}}\n")
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text("name: sweep\nbase: base.yaml\nrows: [ABC]\nseeds: [0]\n"
                      "sweep: {key: cost.target, values: [0.045, 0.09]}\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "search.epochs=2"])
    assert result.exit_code == 0, result.output
    state = json.loads((out / "ablation.json").read_text())
    assert [r["id"] for r in state["runs"]] == ["ABC-target0.045-seed0", "ABC-target0.09-seed0"]
    assert [load_recipe(out / r["id"] / "recipe.yaml", SearchRecipe).cost.target for r in state["runs"]] == [0.045, 0.09]
    lines = [line.split(",") for line in (out / "table3.csv").read_text().splitlines()]
    header, measured = lines[0], [line for line in lines[1:] if line[0] == "measured"]
    assert [row[header.index("sweep")] for row in measured] == ["cost.target=0.045", "cost.target=0.09"]
    assert [float(row[header.index("sweep_value")]) for row in measured] == [0.045, 0.09]  # (a number too)
    assert all(float(row[header.index("cost_measured_mean")]) > 0 for row in measured)
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "figures" / "accuracy_cost.png").exists() and (out / "figures" / "accuracy_cost.svg").exists()


def test_a_sweep_needs_a_cost_section(files, tmp_path):
    (tmp_path / "base.yaml").write_text(TINY_SEARCH)
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text("base: base.yaml\nrows: [ABC]\nseeds: [0]\nsweep: {key: cost.weight, values: [0, 1]}\n")
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 2 and "needs a cost: section" in result.output
    recipe.write_text("base: base.yaml\nsweep: {key: cost.target, values: [1, -1]}\n")
    result = runner.invoke(app, ["ablate", str(recipe), "--dry-run"])
    assert result.exit_code == 2 and "above 0" in result.output


def test_a_missing_relative_cost_file_says_where_it_was_looked_for(tmp_path, monkeypatch):
    """cost.network and cost.table are read from the current folder (include: from the recipe's): run from
    another folder, the error repeated the same path as its example and left the user guessing."""
    from eldarts_cli.engines.cost import CostError, load_evaluation_recipe, load_table

    monkeypatch.chdir(tmp_path)
    for load, field in ((load_evaluation_recipe, "cost.network"), (load_table, "cost.table")):
        with pytest.raises(CostError, match=rf"{field} recipes/x.yaml does not exist \(a relative path is read from "
                                            rf"the current folder, {tmp_path}\)"):
            load("recipes/x.yaml")
        with pytest.raises(CostError) as info:
            load(tmp_path / "x.yaml")
        assert "relative path" not in str(info.value)
    # the command that measures a missing table names the search's cost.network (it printed EVAL_RECIPE)
    with pytest.raises(CostError, match=r"measure it with: eldarts profile-ops --table t.json --network "
                                        r"recipes/eval-quick.yaml$"):
        load_table("t.json", network=Path("recipes/eval-quick.yaml"))


def test_a_cost_weight_that_overflows_the_architecture_optimiser_is_a_divergence(files, tmp_path):
    """``cost.weight=1e30`` left the alphas finite but Adam's squared-gradient averages infinite: the epoch's metrics
    were written, then the checkpoint refused ("the previous checkpoint is kept", where there was none), and the
    printed resume failed the same way. It is a divergence now: nothing written, cost.weight named, and a resume
    with a lower weight runs."""
    from eldarts_cli.core.errors import DivergenceError

    run = tmp_path / "run"
    macs = [f"cost.metric=macs", f"cost.network={files / 'eval.yaml'}", "cost.target=0.05", "search.epochs=2",
            "search.warmup_epochs=0"]
    with pytest.raises(DivergenceError) as error:
        search(files, run, macs + ["cost.weight=1e30"])
    text = str(error.value)
    assert "epoch 1 of 2" in text and "architecture optimiser: state." in text and "exp_avg_sq" in text
    assert "cost.weight (now 1e+30)" in text and "--set cost.weight=1" in text  # the default, not a tenth (1e+29)
    assert "arch_optim.lr (now" not in text  # at its usual value: left alone
    assert "no epoch had finished, so nothing was saved" in text
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["recipe.yaml"]
    result = runner.invoke(app, ["search", str(files / "search.yaml"), "--resume", str(run),
                                 *[arg for s in macs + ["cost.weight=2"] for arg in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert SearchSummary.read(run).cost is not None


def test_a_cost_table_given_as_an_op_profile_is_named(table, tmp_path):
    """``profile-ops --from TABLE`` printed an 8,000-character line of every field the table lacks; it says what
    the file is. A damaged profile's problems are cut to three."""
    result = runner.invoke(app, ["profile-ops", "--from", str(table)])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert flat == (f"error: {table} is a cost table (eldarts profile-ops --table), not an op profile: give a file "
                    "eldarts profile-ops --out wrote"), flat
    other = tmp_path / "other.json"
    other.write_text('{"format": "eldarts-op-profile", "ops": [{}, {}, {}, {}]}')
    result = runner.invoke(app, ["profile-ops", "--from", str(other)])
    assert result.exit_code == 2 and "more" in result.output and len(result.output) < 600, result.output


def test_a_nas_bench_201_evaluation_recipe_is_refused_as_the_network_priced(tmp_path):
    """It failed on an inner cell eldarts builds to trace the network ("probe is a DARTS cell: use
    network.kind=cifar"), naming neither the limit nor the field."""
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "eval-nb201-cifar10.yaml"
    expected = "trains a NAS-Bench-201 network (network.kind: nb201); cost sections and cost tables price DARTS cells only"
    result = runner.invoke(app, ["profile-ops", "--table", str(tmp_path / "t.json"), "--network", str(recipe)])
    assert result.exit_code == 2 and f"error: --network {recipe} {expected}" in " ".join(result.output.split())
    assert not (tmp_path / "t.json").exists()
    with pytest.raises(CostError, match=f"cost.network {recipe} trains a NAS-Bench-201 network"):
        load_evaluation_recipe(recipe)


def test_sweep_values_that_print_alike_get_their_own_run_folders(files, tmp_path):
    """A run's folder wrote its sweep value with 6 digits (``:g``): 0.1 and 0.1000001 shared one folder, the second
    search never ran ("finished earlier, skipped") and the table reported the first's for both."""
    from eldarts_cli.config.ablate import load_ablation
    from eldarts_cli.engines.ablate import plan_ablation

    base = tmp_path / "base.yaml"
    base.write_text(TINY_SEARCH + f"cost: {{metric: macs, network: {files / 'eval.yaml'}, target: 0.05, weight: 2}}\n")
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text("name: sweep\nbase: base.yaml\nrows: [ABC]\nseeds: [0]\n"
                      "sweep: {key: cost.weight, values: [0.1, 0.1000001, 2, 0.1234567]}\n")
    runs = plan_ablation(load_ablation(recipe), tmp_path / "out")
    # (values that do not read alike keep the names an earlier eldarts gave them: 0.123457, whose --resume finds them)
    assert [run.id for run in runs] == ["ABC-weight0.1-seed0", "ABC-weight0.1000001-seed0", "ABC-weight2-seed0",
                                        "ABC-weight0.123457-seed0"]
