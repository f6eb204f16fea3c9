"""Honest decisiveness: margins of a genotype's choices, the small-margin warning, agreement across seeds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.core.errors import GenotypeError
from eldarts_cli.models.decisiveness import (
    collapse_warning, darts_cell_margins, genotype_agreement, margin_warning, nb201_cell_margins,
    supernet_margins,
)
from eldarts_cli.models.genotypes import derive_cell, genotype_from_dict, zoo_genotype
from eldarts_cli.models.nb201 import NB201Genotype
from eldarts_cli.models.supernet import ArchWeights
from eldarts_cli.runs.tables import aggregate_row

runner = CliRunner()
OPS = ("none", "skip_connect", "sep_conv_3x3")


def test_darts_cell_margins_on_known_weights():
    # 2 nodes: node 0 has edges 0, 1; node 1 has edges 2, 3, 4
    w = torch.tensor([
        [0.1, 0.6, 0.3],  # e0: skip 0.6 vs sep 0.3 -> 0.3
        [0.5, 0.2, 0.3],  # e1: 'none' is never chosen: sep 0.3 vs skip 0.2 -> 0.1
        [0.0, 0.7, 0.3],  # e2: 0.4, strength 0.7
        [0.0, 0.45, 0.55],  # e3: 0.1, strength 0.55
        [0.0, 0.5, 0.5],  # e4: tied -> 0.0, strength 0.5 (first dropped)
    ])
    edges, nodes = darts_cell_margins(w, None, OPS, 2)
    # edges follow derive_cell's order: per node, strongest kept edge first
    assert derive_cell(w, None, OPS, 2) == [("skip_connect", 0), ("sep_conv_3x3", 1),
                                            ("skip_connect", 0), ("sep_conv_3x3", 1)]
    assert edges == pytest.approx([0.3, 0.1, 0.4, 0.1])
    assert nodes[0] is None and nodes[1] == pytest.approx(0.55 - 0.5)  # kept e3 minus dropped e4
    # with DCSS edge weights the strengths are scaled by the node's inputs (equal weights count as 1)
    edge_w = torch.tensor([0.5, 0.5, 0.2, 0.5, 0.3])
    _, nodes = darts_cell_margins(w, edge_w, OPS, 2)
    # strengths: e2 0.14, e3 0.275, e4 0.15 -> kept e3, e4; dropped e2; margin 3 * (0.15 - 0.14)
    assert nodes[1] == pytest.approx(3 * (0.5 * 0.3 - 0.7 * 0.2))


def test_one_op_besides_none_is_measured_against_none():
    """[none, sep_conv_3x3]: no op to choose (none is never derived); the op margin was the op's weight itself
    (~0.5 at the start: "decided" before any step). It is the op against none, the softmax's runner-up."""
    w = torch.tensor([[0.45, 0.55], [0.2, 0.8]])
    edges, _ = darts_cell_margins(w, None, ["none", "sep_conv_3x3"], 1)
    assert edges == pytest.approx([0.6, 0.1])


def test_nb201_margins_include_none():
    w = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    assert nb201_cell_margins(w) == pytest.approx([0.3, 0.0])


def test_threshold_decides_and_the_warning_says_what_to_do():
    uniform = torch.full((5, 3), 1 / 3)
    weights = ArchWeights(uniform, uniform, None, None)
    m = supernet_margins(weights, OPS, 2, "darts", threshold=0.05)
    assert not m.decided and m.edge_median == pytest.approx(0.0) and set(m.edges) == {"normal", "reduce"}
    text = margin_warning(m)
    for phrase in ("small margins", "search.epochs", "arch_optim.lr", "derive.method=perturbation", "eldarts report"):
        assert phrase in text
    assert "derive.method" not in margin_warning(m, "perturbation")
    sharp = torch.tensor([[0.0, 0.9, 0.1]] * 4 + [[0.6, 0.3, 0.1]])  # e4 is the clearly weaker input of node 1
    decided = supernet_margins(ArchWeights(sharp, sharp, None, None), OPS, 2, "darts")
    assert decided.decided and margin_warning(decided) is None
    nb = supernet_margins(ArchWeights(torch.full((6, 5), 0.2), None, None, None), OPS, 3, "nb201")
    assert list(nb.edges) == ["cell"] and len(nb.edges["cell"]) == 6 and nb.node_median is None


def test_agreement_of_genotypes():
    a = zoo_genotype("DARTS_V2")
    assert genotype_agreement([a]) is None
    same = genotype_agreement([a, a, a])
    assert same.runs == 3 and same.edges == 1.0 and same.ops == 1.0
    # change one normal-cell op (same edge) and one normal-cell input (node 3: input 2 -> input 1)
    normal = list(a.normal)
    assert normal[0] == ("sep_conv_3x3", 0) and normal[7] == ("dil_conv_3x3", 2)
    normal[0] = ("dil_conv_3x3", 0)
    normal[7] = ("dil_conv_3x3", 1)
    b = a.model_copy(update={"normal": normal})
    agree = genotype_agreement([a, b])
    # normal cell: 7 of 8 kept edges shared, 6 of 8 ops; the reduction cells are identical
    assert agree.edges == pytest.approx((7 / 8 + 1) / 2) and agree.ops == pytest.approx((6 / 8 + 1) / 2)
    three = genotype_agreement([a, b, a])  # mean over the 3 pairs: (a, b), (a, a), (b, a)
    assert three.ops == pytest.approx((2 * (6 / 8 + 1) / 2 + 1) / 3)
    x = NB201Genotype(arch="|nor_conv_3x3~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|none~1|avg_pool_3x3~2|")
    y = NB201Genotype(arch="|nor_conv_1x1~0|+|none~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|avg_pool_3x3~2|")
    nb = genotype_agreement([x, y])
    assert nb.edges == pytest.approx(5 / 6)  # edge 3<-1 is 'none' in x only
    assert nb.ops == pytest.approx(4 / 6)
    with pytest.raises(GenotypeError, match="cannot compare"):
        genotype_agreement([a, x])
    # cells of another number of nodes: an agreement figure was made up (62% of edges for 4 against 3 nodes)
    smaller = a.model_copy(update={"normal": a.normal[:6], "reduce": a.reduce[:6], "normal_concat": [2, 3, 4],
                                   "reduce_concat": [2, 3, 4]})
    with pytest.raises(GenotypeError, match="cannot compare cells of 4 and 3 nodes"):
        genotype_agreement([a, smaller])
    z = NB201Genotype(arch="|nor_conv_3x3~0|+|none~0|skip_connect~1|")
    with pytest.raises(GenotypeError, match="cannot compare cells of 3 and 2 nodes"):
        genotype_agreement([x, z])


def test_table3_row_reports_margins_and_agreement():
    g = zoo_genotype("DARTS_V1")
    results = [{"error": 1.0, "search_cost_days": 0.1, "edge_margin_median": m, "genotype": g} for m in (0.1, 0.3)]
    row = aggregate_row("ABC", results)
    assert row["edge_margin_mean"] == pytest.approx(0.2) and row["agreement_edges"] == 1.0
    assert row["agreement_ops"] == 1.0


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    from conftest import TINY_SEARCH

    folder = tmp_path_factory.mktemp("seeds")
    recipe = folder / "tiny.yaml"
    recipe.write_text(TINY_SEARCH)
    runs = []
    for seed in (3, 4):
        run = folder / f"seed{seed}"
        result = runner.invoke(app, ["search", str(recipe), "--out", str(run), "--set", f"seed={seed}",
                                     "--set", "search.epochs=2"])
        assert result.exit_code == 0, result.output
        runs.append((run, result.output))
    return runs


def test_search_records_margins_and_warns_on_small_ones(two_seeds):
    run, output = two_seeds[0]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["edge_margin_median"] < 1 and 0 <= abs(r["node_margin_median"]) < 1 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    margins = summary["margins"]
    assert margins["edge_median"] == pytest.approx(rows[-1]["edge_margin_median"])
    assert len(margins["edges"]["normal"]) == 4 and len(margins["nodes"]["reduce"]) == 2
    assert not margins["decided"]  # 2 tiny epochs decide nothing
    assert "margin " in output  # the progress line
    flat = output.replace("\n", " ")
    assert "warning:" in flat and "small margins" in flat and "search.epochs" in flat
    assert "NOT decided" in flat


def test_report_on_several_runs_gives_agreement(two_seeds):
    (a, _), (b, _) = two_seeds
    result = runner.invoke(app, ["report", str(a), str(b), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["kind"] == "searches" and len(data["runs"]) == 2
    assert all(isinstance(r["val_error"], float) and r["decided"] in (True, False) for r in data["runs"])  # not "no"
    assert 0 <= data["agreement"]["ops"] <= data["agreement"]["edges"] <= 1 and data["agreement"]["runs"] == 2
    text = runner.invoke(app, ["report", str(a), str(b)])
    assert text.exit_code == 0 and "genotype agreement over 2 runs" in text.output.replace("\n", " ")
    bad = runner.invoke(app, ["report", str(a), str(a / "figures")])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_no_warning_when_the_threshold_is_met(tmp_path):
    from conftest import TINY_SEARCH

    (tmp_path / "r.yaml").write_text(TINY_SEARCH)
    result = runner.invoke(app, ["search", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"),
                                 "--set", "search.epochs=2", "--set", "derive.margin_threshold=0"])
    assert result.exit_code == 0, result.output
    assert "small margins" not in result.output and "decided" in result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    genotype = genotype_from_dict(summary["genotype"])  # the collapse warning is printed exactly when it applies
    assert ("parameter-free" in result.output.replace("\n", " ")) == (collapse_warning(genotype) is not None)


def test_collapse_warning_on_a_cell_without_parameters():
    from eldarts_cli.models.genotypes import Genotype

    pools = [("max_pool_3x3", 0), ("max_pool_3x3", 1)] + [("max_pool_3x3", 1), ("skip_connect", 2)] * 3
    collapsed = Genotype(normal=pools, normal_concat=[2, 3, 4, 5], reduce=pools, reduce_concat=[2, 3, 4, 5])
    text = collapse_warning(collapsed)
    for phrase in ("parameter-free", "max_pool_3x3 x5", "skip_connect x3", "arch_optim.lr", "search.epochs"):
        assert phrase in text
    assert collapse_warning(zoo_genotype("DARTS_V2")) is None  # separable convolutions
    one_conv = pools[:-1] + [("sep_conv_3x3", 2)]
    assert collapse_warning(Genotype(normal=one_conv, normal_concat=[2, 3, 4, 5], reduce=pools,
                                     reduce_concat=[2, 3, 4, 5])) is None  # only the normal cell counts
    all_skip = NB201Genotype(arch="|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|skip_connect~1|avg_pool_3x3~2|")
    assert "skip_connect x4" in collapse_warning(all_skip)
    # a search with a cost term: the term pulls towards parameter-free ops, and the warning says which settings
    cost = SimpleNamespace(metric="macs", unit="M MACs", target=12.5, weight=2.0)
    assert "cost.weight 2, cost.target 12.5 M MACs" in collapse_warning(all_skip, cost)
    assert "cost.weight" not in collapse_warning(all_skip, SimpleNamespace(**{**vars(cost), "weight": 0.0}))
    assert "cost.weight" not in collapse_warning(all_skip)
    assert collapse_warning(zoo_genotype("DARTS_V2"), cost) is None
    # a cell selected by perturbation is not sent to perturbation; a space without an op with parameters can give
    # no other cell (it was sent to a longer search and to perturbation)
    assert "derive.method=perturbation" in collapse_warning(collapsed, method="magnitude")
    assert "derive.method=perturbation" not in collapse_warning(collapsed, method="perturbation")
    assert "A longer search (search.epochs, search.warmup_epochs) or a lower arch_optim.lr may give" in \
        collapse_warning(collapsed, method="perturbation")
    text = collapse_warning(collapsed, space=["none", "max_pool_3x3", "skip_connect"], method="perturbation")
    assert "as every op of the search space is (none, max_pool_3x3, skip_connect)" in text
    assert "add an op with parameters (a convolution) to search_space.ops" in text and "search.epochs" not in text
    assert "search.epochs" in collapse_warning(collapsed, space=["max_pool_3x3", "sep_conv_3x3"])
    assert collapse_warning(NB201Genotype(arch="|nor_conv_3x3~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|")) is None
