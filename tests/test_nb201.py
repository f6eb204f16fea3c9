"""The NAS-Bench-201 space: published sizes, arch strings, the fused search cell, and search == evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_supernets_agree
from typer.testing import CliRunner

import eldarts_cli as eldarts
from eldarts_cli.cli import app
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.evaluate import EvalRecipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import GenotypeError, RecipeError
from eldarts_cli.models.genotypes import Genotype, load_genotype, nb201_from_string, save_genotype, zoo_genotype
from eldarts_cli.models.nb201 import NB201_OPS, NB201Genotype, NB201Network, nb201_edges, parse_arch
from eldarts_cli.models.nb201_search import NB201ReferenceSupernet, NB201Supernet
from eldarts_cli.models.network import build_network
from eldarts_cli.models.reference import copy_reference_weights
from eldarts_cli.models.sizes import conv_fc_macs, count_parameters

runner = CliRunner()
RECIPES = Path(__file__).resolve().parent.parent / "recipes"

ALL_3X3 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
ALL_1X1 = "|nor_conv_1x1~0|+|nor_conv_1x1~0|nor_conv_1x1~1|+|nor_conv_1x1~0|nor_conv_1x1~1|nor_conv_1x1~2|"
ALL_NONE = "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
BEST_C100 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
# NATS-Bench issue #36: 0.802426M parameters; issue #18 (arch index 1): 113.95M FLOPs.
NATS_36 = "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
NATS_18 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"


def cell(arch: str) -> NB201Genotype:
    return NB201Genotype(arch=arch)


# -- published facts -----------------------------------------------------------


@pytest.mark.parametrize("arch,params", [
    (ALL_NONE, 73_306),      # published minimum, CIFAR-10: 0.073306M
    (ALL_SKIP, 73_306),
    (ALL_3X3, 1_531_546),    # published maximum: 1.531546M
    (ALL_1X1, 241_306),
    (NATS_36, 802_426),      # published 0.802426M (NATS-Bench issue #36)
    (BEST_C100, 1_288_506),
])
def test_parameter_counts_match_nas_bench_201(arch, params):
    net = build_network("nb201", genotype=cell(arch), num_classes=10)
    assert count_parameters(net) == params
    # NAS-Bench-201's closed form: 73,306 + 243,040 per nor_conv_3x3 edge + 28,000 per nor_conv_1x1 edge
    genotype = cell(arch)
    assert params == 73_306 + 243_040 * genotype.count("nor_conv_3x3") + 28_000 * genotype.count("nor_conv_1x1")


@pytest.mark.parametrize("arch,macs", [(ALL_3X3, 220_119_690), (ALL_NONE, 7_783_050), (NATS_18, 113_951_370)])
def test_multiply_adds_match_nas_bench_201(arch, macs):
    """Published FLOPs: max 220.11969M, min 7.78305M, 113.95M (NATS-Bench issue #18). NAS-Bench-201's counter
    also counts the classifier's 10 bias additions, which a conv+FC multiply-add count leaves out."""
    net = build_network("nb201", genotype=cell(arch)).eval()
    assert conv_fc_macs(net, torch.zeros(1, 3, 32, 32)) + 10 == macs


def test_network_layout():
    net = build_network("nb201", genotype=cell(BEST_C100), num_classes=10)
    kinds = [type(b).__name__ for b in net.cells]
    assert kinds == ["NB201Cell"] * 5 + ["ResNetBasicblock"] + ["NB201Cell"] * 5 + ["ResNetBasicblock"] + ["NB201Cell"] * 5
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(GenotypeError, match="multiple of 3"):
        build_network("nb201", genotype=cell(BEST_C100), layers=4)
    with pytest.raises(GenotypeError, match="auxiliary"):
        build_network("nb201", genotype=cell(BEST_C100), auxiliary=True)
    with pytest.raises(GenotypeError, match="DARTS cell"):
        build_network("nb201", genotype=zoo_genotype("DARTS_V2"))
    with pytest.raises(GenotypeError, match="a cell of the NAS-Bench-201 kind"):
        build_network("cifar", genotype=cell(BEST_C100))


# -- arch strings --------------------------------------------------------------


@pytest.mark.parametrize("arch", [ALL_3X3, ALL_NONE, BEST_C100, NATS_36, "|nor_conv_3x3~0|+|skip_connect~1|"])
def test_arch_string_round_trip(arch, tmp_path):
    genotype = cell(arch)
    assert genotype.arch == arch == str(genotype)
    assert NB201Genotype.from_nodes(genotype.cells) == genotype
    assert NB201Genotype.model_validate_json(genotype.to_json()) == genotype
    save_genotype(genotype.model_copy(update={"name": "x"}), tmp_path / "genotype.json")
    assert load_genotype(tmp_path).arch == arch  # a run folder
    assert load_genotype(arch) == genotype  # the string itself
    (tmp_path / "cell.txt").write_text(arch + "\n")
    assert load_genotype(tmp_path / "cell.txt").arch == arch  # a file holding the string
    assert eldarts.load_genotype(f"  {arch} ").arch == arch
    # files a Windows editor saved, with a byte-order mark: "Unexpected UTF-8 BOM"
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + arch.encode() + b"\r\n")
    assert load_genotype(tmp_path / "bom.txt").arch == arch
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "genotype.json").read_bytes())
    assert load_genotype(tmp_path / "bom.json").arch == arch


def test_arch_string_parsing_is_nas_bench_201s():
    nodes = parse_arch(BEST_C100)
    assert nodes == [[("nor_conv_3x3", 0)], [("nor_conv_3x3", 0), ("nor_conv_3x3", 1)],
                     [("skip_connect", 0), ("nor_conv_3x3", 1), ("nor_conv_3x3", 2)]]
    assert [(n, s) for n, s in nb201_edges()] == [(1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2)]
    assert cell(ALL_NONE).in_benchmark and cell(BEST_C100).in_benchmark
    assert not cell("|nor_conv_3x3~0|+|skip_connect~1|").in_benchmark  # a missing edge
    assert cell(NATS_36).count("none") == 1 and cell(NATS_36).count("skip_connect", reduction=True) is None
    # a node's edges in another order: kept as given (the network's modules, and so older runs' weights, follow
    # it), and named with the benchmark's spelling, the text its query_index_by_arch matches
    shuffled = "|nor_conv_3x3~0|+|nor_conv_3x3~1|nor_conv_3x3~0|+|nor_conv_3x3~2|skip_connect~0|nor_conv_3x3~1|"
    assert cell(shuffled).arch == shuffled and cell(shuffled).benchmark_arch == BEST_C100
    assert cell(BEST_C100).not_in_benchmark() is None
    assert cell(shuffled).not_in_benchmark().endswith(f"the benchmark's cell {BEST_C100}, the text its "
                                                      "query_index_by_arch matches")


def test_a_cell_nas_bench_201_does_not_hold_trains_with_a_warning():
    """A cell outside the benchmark (a missing edge, a DARTS op) is a legal network, but there is no NAS-Bench-201
    accuracy to compare it with: evaluate says so (it said nothing); a benchmark cell gets no such warning."""
    for arch in ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|",
                 "|sep_conv_3x3~0|+|nor_conv_3x3~0|none~1|+|skip_connect~0|none~1|none~2|"):
        result = runner.invoke(app, ["evaluate", arch, str(RECIPES / "eval-nb201-cifar10.yaml"), "--dry-run"])
        assert result.exit_code == 0, result.output
        assert "is not a NAS-Bench-201 cell" in " ".join(result.output.split())
    result = runner.invoke(app, ["evaluate", BEST_C100, str(RECIPES / "eval-nb201-cifar10.yaml"), "--dry-run"])
    assert result.exit_code == 0 and "is not a NAS-Bench-201 cell" not in " ".join(result.output.split())


def test_a_darts_cell_on_the_nb201_network_is_the_one_error_of_its_dry_run():
    """The dry run printed a warning about the data first, then the error that matters (the cell does not fit the
    network); the error now stands alone (the data is checked only once the network is built)."""
    result = runner.invoke(app, ["evaluate", "DARTS_V2", str(RECIPES / "eval-nb201-cifar10.yaml"), "--dry-run"])
    assert result.exit_code == 2 and result.output.startswith("error: the nb201 network takes a NAS-Bench-201 cell")
    assert "warning:" not in result.output


@pytest.mark.parametrize("text,message", [
    ("nor_conv_3x3~0", "starts and ends with '|'"),
    ("|nor_conv_3x3|", "is not 'op~input'"),
    ("|nor_conv_3x3~1|", "node 1 cannot take input 1"),
    ("|nor_conv_3x3~0|+|none~0|none~0|", "takes input 0 twice"),
    ("|nor_conv_3x3~0|+||", "node 2 has no edge"),
    ("|nor_conv_3x4~0|", "did you mean 'nor_conv_3x3'"),
    ("|nor_conv_3x3~0+|none~0|none~1|", "does not start and end with"),  # node 1 was read as one edge
])
def test_bad_arch_strings_give_one_clear_error(text, message):
    with pytest.raises(GenotypeError, match=message):
        nb201_from_string(text)
    if text.startswith("|"):
        result = runner.invoke(app, ["evaluate", text, "--dry-run"])
        assert result.exit_code == 2 and "error:" in result.output and "Traceback" not in result.output
        assert message.split("'")[0].strip() in result.output


def test_darts_genotypes_still_reject_none():
    with pytest.raises(ValueError, match="'none' cannot be an edge"):
        Genotype(normal=[("none", 0), ("skip_connect", 1)], normal_concat=[2],
                 reduce=[("skip_connect", 0), ("skip_connect", 1)], reduce_concat=[2])


# -- the search cell -----------------------------------------------------------


@pytest.mark.parametrize("k,dcss,sampled", [(1, False, False), (2, True, False), (2, True, True), (4, False, True)])
def test_fused_nb201_cell_equals_edge_by_edge(k, dcss, sampled):
    torch.manual_seed(0)
    kwargs = dict(ops=NB201_OPS, num_classes=10, channels=8, layers=3, partial_channels=k, edge_coefficients=dcss)
    fused, reference = NB201Supernet(**kwargs), NB201ReferenceSupernet(**kwargs)
    copy_reference_weights(reference, fused)
    alpha = torch.randn(6, 5)
    with torch.no_grad():
        for net in (fused, reference):
            net.alpha_normal.copy_(alpha)
    if sampled:
        fused.sample_channels(torch.Generator().manual_seed(7))
        reference.sample_channels(torch.Generator().manual_seed(7))
        assert fused.search_cells[0].channel_order is not None
    assert_supernets_agree(fused, reference, torch.randn(3, 3, 8, 8))


def test_search_network_shapes_and_parameters():
    net = NB201Supernet(ops=NB201_OPS, num_classes=7, in_channels=1, channels=4, layers=3, partial_channels=2,
                        edge_coefficients=True)
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    assert [tuple(p.shape) for p in net.arch_parameters()] == [(6, 5), (6,)]
    assert net.alpha_reduce is None and net.op_weights()[1] is None
    _, _, edge_w, _ = net.arch_weights()
    assert float(edge_w[0].detach()) == pytest.approx(1.0)  # node 1 has one input
    torch.testing.assert_close(edge_w[1:3].sum().detach(), torch.tensor(1.0))
    assert len(net.weight_parameters()) + 2 == len(list(net.parameters()))
    # the full-size supernet: NAS-Bench-201's network with every op on every edge, cell ops non-affine
    full = NB201Supernet(ops=NB201_OPS, num_classes=10)
    cell_bn_affine = 12 * 5 * (2 * 16 + 2 * 32 + 2 * 64)  # 6 edges x 2 convs, 5 cells per stage
    weights = sum(p.numel() for p in full.weight_parameters())
    assert weights == 73_306 + 6 * 243_040 + 6 * 28_000 - cell_bn_affine


def _one_hot(genotype: NB201Genotype) -> torch.Tensor:
    alpha = torch.full((6, 5), -1e4)
    for row, (op, _, _) in enumerate(genotype.edges):
        alpha[row, NB201_OPS.index(op)] = 0.0
    return alpha


@torch.no_grad()
def _load_search_weights(evaluation: NB201Network, search: NB201ReferenceSupernet, genotype: NB201Genotype) -> None:
    """Give the evaluation network the search network's weights: stem, reduction blocks and head as they
    are, and on each edge the chosen op's weights (non-affine BNs: affine ones stay at weight 1, bias 0)."""
    own = {k: v for k, v in search.state_dict().items() if ".edges." not in k and not k.startswith(("alpha", "edge"))}
    missing, unexpected = evaluation.load_state_dict(own, strict=False)
    assert not unexpected
    for block, ref_cell in zip(evaluation.cells, search.cells):
        if not hasattr(block, "sources"):
            continue
        row = 0
        for node_ops in block.ops:
            for op_module in node_ops:
                op = genotype.edges[row][0]
                source = ref_cell.edges[row].ops[NB201_OPS.index(op)]
                theirs = dict(source.named_buffers()) | dict(source.named_parameters())
                for name, tensor in list(op_module.named_parameters()) + list(op_module.named_buffers()):
                    if name in theirs:
                        tensor.copy_(theirs[name])
                row += 1


@pytest.mark.parametrize("arch", [NATS_36, BEST_C100, ALL_1X1])
def test_searched_network_equals_evaluated_network_with_one_hot_alphas(arch):
    """One-hot alphas, full channels, no edge coefficients: the supernet is the evaluation network."""
    torch.manual_seed(3)
    genotype = cell(arch)
    kwargs = dict(ops=NB201_OPS, num_classes=10, channels=8, layers=6)
    reference, fused = NB201ReferenceSupernet(**kwargs), NB201Supernet(**kwargs)
    with torch.no_grad():
        reference.alpha_normal.copy_(_one_hot(genotype))
    copy_reference_weights(reference, fused)
    evaluation = NB201Network(genotype=genotype, num_classes=10, channels=8, layers=6)
    _load_search_weights(evaluation, reference, genotype)
    assert fused.genotype().arch == arch
    x = torch.randn(4, 3, 16, 16)
    for train in (True, False):  # batch statistics, then the (shared) running statistics
        for net in (reference, fused, evaluation):
            net.train(train)
        want = evaluation(x)
        torch.testing.assert_close(reference(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused(x), want, rtol=1e-5, atol=1e-5)


# -- recipes, search and evaluation ------------------------------------------------


def test_nb201_recipe_gets_nas_bench_201s_network(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("search_space: {ops: nb201}\n")
    recipe = load_recipe(path, SearchRecipe)
    assert recipe.search_space.cell == "nb201" and list(recipe.search_space.ops) == list(NB201_OPS)
    net = recipe.network
    assert (net.channels, net.layers, net.nodes, net.multiplier, net.stem_multiplier) == (16, 15, 3, 1, 1)
    assert load_recipe(path, SearchRecipe, ["network.layers=3"]).network.layers == 3
    with pytest.raises(RecipeError, match="multiplier=2 must be 1"):
        load_recipe(path, SearchRecipe, ["network.multiplier=2"])
    with pytest.raises(RecipeError, match="multiple of 3"):
        load_recipe(path, SearchRecipe, ["network.layers=4"])
    from eldarts_cli.engines.search import build_supernet

    small = load_recipe(path, SearchRecipe, ["network.layers=3", "network.channels=4"])
    assert type(build_supernet(small, 3, 10)) is NB201Supernet
    reference = load_recipe(path, SearchRecipe, ["network.layers=3", "network.channels=4",
                                                 "network.implementation=reference"])
    assert type(build_supernet(reference, 3, 10)) is NB201ReferenceSupernet
    with pytest.raises(RecipeError, match="prices DARTS' cells only"):
        load_recipe(path, SearchRecipe, ["cost.metric=macs", "cost.target=1", "cost.network=eval.yaml"])
    darts = load_recipe(path, SearchRecipe, ["search_space.ops=darts"])
    assert darts.search_space.cell == "darts" and darts.network.nodes == 4
    with pytest.raises(RecipeError, match="search_space -> cell"):
        load_recipe(path, SearchRecipe, ["search_space.cell=nasbench"])


def test_narrowing_a_named_nb201_space_keeps_its_cell(tmp_path):
    """--set search_space.ops=[nor_conv_3x3,skip_connect] on an ``ops: nb201`` recipe (a common NAS-Bench-201
    ablation) silently searched DARTS' cell in a DARTS network (14 edges, 4 nodes); the named space's cell stays,
    through --set and through a file including the recipe; a cell given with the list wins."""
    path = tmp_path / "r.yaml"
    path.write_text("search_space: {ops: nb201}\nnetwork: {layers: 3}\n")
    narrowed = load_recipe(path, SearchRecipe, ["search_space.ops=[nor_conv_3x3,skip_connect]"])
    assert narrowed.search_space.cell == "nb201" and narrowed.network.nodes == 3
    assert narrowed.search_space.ops == ["nor_conv_3x3", "skip_connect"]
    mapping = load_recipe(path, SearchRecipe, ["search_space={ops: [nor_conv_1x1, avg_pool_3x3]}"])
    assert mapping.search_space.cell == "nb201"
    darts = load_recipe(path, SearchRecipe, ["search_space={ops: [nor_conv_3x3, skip_connect], cell: darts}"])
    assert darts.search_space.cell == "darts" and darts.network.nodes == 4
    including = tmp_path / "mine.yaml"
    including.write_text("include: r.yaml\nsearch_space: {ops: [nor_conv_3x3, skip_connect]}\n")
    import warnings

    with warnings.catch_warnings():  # narrowing a named space, as README documents: no "replaces" warning
        warnings.simplefilter("error")
        assert load_recipe(including, SearchRecipe).search_space.cell == "nb201"
    # an op NAS-Bench-201 lacks, in its cell: said (evaluate said it only of the arch string, after the search)
    from eldarts_cli.config.search import nb201_ops_warning

    assert nb201_ops_warning(narrowed) is None
    alien = load_recipe(path, SearchRecipe, ["search_space.ops=[sep_conv_3x3,skip_connect]"])
    assert "search_space.ops sep_conv_3x3 is not among NAS-Bench-201's" in nb201_ops_warning(alien)
    planned = runner.invoke(app, ["search", str(path), "--dry-run", "--set", "search_space.ops=[sep_conv_3x3,none]"])
    assert "warning: search_space.ops sep_conv_3x3 is not among" in " ".join(planned.output.split()), planned.output
    cpu = load_recipe(RECIPES / "search-nb201-eldarts-cpu.yaml", SearchRecipe,
                      ["search_space.ops=[none,skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3]"])
    assert cpu.search_space.cell == "nb201"


def test_search_dry_run_sizes_the_nb201_supernet():
    result = runner.invoke(app, ["search", str(RECIPES / "search-nb201-darts-cifar10.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    sizes = json.loads(result.stdout)["supernet"]  # stderr: a warning where the data is missing
    assert sizes["cell"] == "nb201" and sizes["cells"] == 15 and sizes["reduction_cells"] == []
    assert sizes["weight_params"] == 1_686_106 and sizes["arch_params"] == 30 and sizes["edges_per_cell"] == 6


def test_nb201_evaluation_recipe_rules(tmp_path):
    recipe = load_recipe(RECIPES / "eval-nb201-cifar10.yaml", EvalRecipe)
    assert recipe.train.epochs == 200 and recipe.optim.nesterov and recipe.optim.lr == 0.1
    assert recipe.optim.weight_decay == 5e-4 and recipe.data.batch_size == 256 and recipe.data.cutout == 0
    with pytest.raises(RecipeError, match="auxiliary must be false"):
        load_recipe(RECIPES / "eval-nb201-cifar10.yaml", EvalRecipe, ["network.auxiliary=true"])
    with pytest.raises(RecipeError, match="drop_path must be 0"):
        load_recipe(RECIPES / "eval-nb201-cifar10.yaml", EvalRecipe, ["network.drop_path=0.2"])


def test_evaluate_dry_run_of_an_arch_string():
    result = runner.invoke(app, ["evaluate", ALL_3X3, str(RECIPES / "eval-nb201-cifar10.yaml"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # stderr: a warning where the data is missing
    assert info["params_m"] == pytest.approx(1.532, abs=1e-3) and info["network"] == "nb201"
    assert info["genotype"] == ALL_3X3  # (it read "genotype")
    assert info["params"] == 1_531_546  # the exact count (params_m is rounded to 4 decimals)
    assert info["table"] == "nb201"
    wrong = runner.invoke(app, ["evaluate", ALL_3X3, str(RECIPES / "eval-cifar10.yaml"), "--dry-run"])
    assert wrong.exit_code == 2 and "nb201 network" in wrong.output
    # the console prints the size as kept (1,288,506 parameters, kept as 1.2885, were printed as 1.288)
    shown = runner.invoke(app, ["evaluate", BEST_C100, str(RECIPES / "eval-nb201-cifar10.yaml"), "--dry-run"])
    assert shown.exit_code == 0 and "│ 1.2885 " in shown.output, shown.output


def test_api_builds_nas_bench_201_networks():
    net = eldarts.create_network(ALL_3X3)
    assert isinstance(net, NB201Network) and count_parameters(net) == 1_531_546
    small = eldarts.create_network(cell(BEST_C100), channels=8, layers=3, num_classes=5)
    assert small(torch.zeros(1, 3, 16, 16)).shape == (1, 5)


TINY_NB201 = """
name: tiny-nb201
seed: 3
data: {dataset: digits, image_size: 8, batch_size: 16, crop_padding: 1, limit: 128}
search_space: {ops: nb201}
network: {channels: 4, layers: 3}
partial_channels: {ratio: 2}
arch_optim: {lr: 0.01}
search: {epochs: 2, warmup_epochs: 1, max_steps: 3, val_batches: 2}
runtime: {threads: 1}
"""

TINY_NB201_EVAL = """
name: tiny-nb201-eval
seed: 0
data: {dataset: digits, batch_size: 16, crop_padding: 1, cutout: 0, limit: 64, test_limit: 64}
network: {kind: nb201, channels: 4, layers: 3, auxiliary: false, drop_path: 0.0}
optim: {lr: 0.1, nesterov: true, weight_decay: 5.0e-4, grad_clip: null}
train: {epochs: 1, max_steps: 2, onnx: false}
"""


def test_tiny_nb201_search_then_evaluate(tmp_path):
    (tmp_path / "search.yaml").write_text(TINY_NB201)
    (tmp_path / "eval.yaml").write_text(TINY_NB201_EVAL)
    run = tmp_path / "run"
    result = runner.invoke(app, ["search", str(tmp_path / "search.yaml"), "--out", str(run),
                                 "--set", "entropy.enabled=true", "--set", "partial_channels.sampling=random"])
    assert result.exit_code == 0, result.output
    genotype = load_genotype(run)
    assert isinstance(genotype, NB201Genotype) and genotype.in_benchmark and genotype.name == "tiny-nb201"
    assert genotype.arch in result.output.replace("\n", "") and "NAS-Bench-201" in result.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cell"] == "nb201" and summary["genotype"]["arch"] == genotype.arch
    assert len(summary["margins"]["edges"]["cell"]) == 6 and summary["margins"]["node_median"] is None
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["entropy_reduce"] is None and rows[-1]["skip_reduce"] is None
    assert rows[-1]["entropy_regulariser"] is not None  # the entropy term works on the one alpha matrix
    figures = run / "figures"
    for name in ("alpha_cell.png", "cell.png", "curves.png", "table_nb201.md"):
        assert (figures / name).exists(), name
    markdown = (figures / "table_nb201.md").read_text()
    assert "published (NAS-Bench-201)" in markdown
    assert genotype.arch.replace("|", "\\|") in markdown  # escaped, not rewritten: it renders as the arch string
    assert eldarts.derive_genotype(run) == genotype  # the Python API reads NB201 checkpoints
    # a finished search's resume names the command that trains it: with the NB201 recipe (the default one refuses
    # an arch string), as the search's last line does
    command = f"eldarts evaluate {run} recipes/eval-nb201-cifar10.yaml"
    assert command in " ".join(result.output.split())
    for dry in ([], ["--dry-run"]):
        again = runner.invoke(app, ["search", str(tmp_path / "search.yaml"), "--resume", str(run), *dry])
        assert again.exit_code == 0 and "nothing to resume" in again.output, again.output
        assert command in " ".join(again.output.split()), again.output

    trained = runner.invoke(app, ["evaluate", str(run), str(tmp_path / "eval.yaml"), "--out", str(tmp_path / "eval")])
    assert trained.exit_code == 0, trained.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["network"] == "nb201" and results["genotype_cells"]["arch"] == genotype.arch
    model = eldarts.load_trained(tmp_path / "eval")
    assert isinstance(model, NB201Network) and model.genotype.arch == genotype.arch


def test_nb201_second_order_search_moves_alphas(tmp_path):
    from eldarts_cli.engines.search import Searcher

    (tmp_path / "r.yaml").write_text(TINY_NB201)
    recipe = load_recipe(tmp_path / "r.yaml", SearchRecipe, ["search.order=second", "search.max_steps=2"])
    searcher = Searcher(recipe, tmp_path / "run")
    before = searcher.model.alpha_normal.detach().clone()
    searcher.run()
    assert not torch.equal(before, searcher.model.alpha_normal.detach())
    assert F.softmax(searcher.model.alpha_normal, -1).sum(-1).allclose(torch.ones(6))
