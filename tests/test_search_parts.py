"""Entropy (eq. 6-7), temperature (eq. 8), genotype derivation on hand-made weights."""

import io
import math

import pytest
import torch

from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import EntropyConfig, SearchRecipe
from eldarts_cli.core.errors import GenotypeError
from eldarts_cli.engines.objectives import edge_entropy, entropy_regulariser, temperature
from eldarts_cli.engines.search import cosine_schedule
from eldarts_cli.models.genotypes import Genotype, derive_cell, derive_genotype, genotype_from_dict, load_genotype


def test_temperature_schedule():
    cfg = EntropyConfig()
    assert temperature(0, cfg) == 5.0
    assert temperature(1, cfg) == pytest.approx(4.75)
    assert temperature(10, cfg) == pytest.approx(5.0 * 0.95**10)
    # max(T_min, ...) clips from t = 45 on (5 * 0.95^45 = 0.497)
    assert temperature(44, cfg) == pytest.approx(5.0 * 0.95**44)
    assert temperature(45, cfg) == 0.5 and temperature(200, cfg) == 0.5


def test_edge_entropy_values():
    uniform = torch.zeros(1, 4)
    assert edge_entropy(uniform).item() == pytest.approx(math.log(4))
    peaked = torch.tensor([[100.0, 0, 0, 0]])
    assert edge_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([[1.0, 2.0, 0.0]])
    p = torch.softmax(a / 2.0, -1)
    assert edge_entropy(a, 2.0).item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-6)
    # a higher temperature gives a softer distribution
    assert edge_entropy(a, 5.0) > edge_entropy(a, 1.0) > edge_entropy(a, 0.5)


def test_entropy_regulariser_sums_every_edge_of_both_cells():
    normal, reduce = torch.zeros(14, 4), torch.zeros(14, 4)
    assert entropy_regulariser([normal, reduce], 1.0).item() == pytest.approx(28 * math.log(4), rel=1e-6)


def cosine_lr(epoch, epochs, lr, lr_min):
    """The search's schedule, read off timm's scheduler as the searcher builds it."""
    recipe = SearchRecipe.model_validate({"optim": {"lr": lr, "lr_min": lr_min}, "search": {"epochs": epochs}})
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine_schedule(optimizer, recipe).step(epoch)
    return optimizer.param_groups[0]["lr"]


def test_cosine_lr():
    assert cosine_lr(0, 50, 0.1, 0.0) == pytest.approx(0.1)
    assert cosine_lr(25, 50, 0.1, 0.0) == pytest.approx(0.05)
    assert cosine_lr(50, 50, 0.1, 0.001) == pytest.approx(0.001)
    # the same numbers as the closed form the search used before timm's scheduler, every epoch
    for epoch in range(50):
        closed = 0.001 + 0.5 * (0.1 - 0.001) * (1 + math.cos(math.pi * epoch / 50))
        assert cosine_lr(epoch, 50, 0.1, 0.001) == pytest.approx(closed, rel=1e-12)


OPS = ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"]


def hand_made(nodes=2):
    # edges: (node0, s0) (node0, s1) (node1, s0) (node1, s1) (node1, s2)
    w = torch.tensor(
        [
            [0.9, 0.05, 0.03, 0.02],  # none dominates: 'none' is never chosen -> skip_connect 0.05
            [0.1, 0.1, 0.7, 0.1],  # sep_conv 0.7
            [0.0, 0.2, 0.3, 0.5],  # max_pool 0.5
            [0.0, 0.6, 0.2, 0.2],  # skip 0.6
            [0.0, 0.1, 0.8, 0.1],  # sep 0.8
        ]
    )
    return w


def test_derive_cell_top2_without_edge_weights():
    gene = derive_cell(hand_made(), None, OPS, nodes=2)
    assert gene == [("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 2), ("skip_connect", 1)]


def test_derive_cell_edge_weights_change_the_choice():
    # edge weights (per node softmax) demote edge (node1, s2) below (node1, s0)
    edges = torch.tensor([0.5, 0.5, 0.45, 0.45, 0.10])
    gene = derive_cell(hand_made(), edges, OPS, nodes=2)
    assert gene[2:] == [("skip_connect", 1), ("max_pool_3x3", 0)]


def test_derive_genotype_never_none_and_valid():
    torch.manual_seed(0)
    w = torch.softmax(torch.randn(14, 8), -1)
    w[:, 0] = 10  # 'none' largest everywhere
    ops = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
    g = derive_genotype(w, w, ops, 4)
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    assert len(g.normal) == 8 and g.normal_concat == [2, 3, 4, 5]


def test_genotype_json_round_trip(tmp_path):
    g = load_genotype("DARTS_V2")
    path = tmp_path / "g.json"
    path.write_text(g.to_json())
    assert load_genotype(path) == g
    assert load_genotype("pc-darts").name == "PC_DARTS"


@pytest.mark.parametrize(
    "data,expected",
    [
        ({"normal": [["sep_conv_3x3", 0], ["skip_connect", 7]], "normal_concat": [2], "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}, "node 0 cannot take input 7"),
        ({"normal": [["sep_conv_3x4", 0], ["skip_connect", 1]], "normal_concat": [2], "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}, "did you mean 'sep_conv_3x3'"),
        ({"normal": [["none", 0], ["skip_connect", 1]], "normal_concat": [2], "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}, "'none' cannot be an edge"),
        ({"normal": [["sep_conv_3x3", 0]], "normal_concat": [2], "reduce": [], "reduce_concat": [2]}, "two (op, input) pairs per node"),
        # an input or state written true or 1.0 is refused, not read as 1 (JSON has no int type of its own)
        ({"normal": [["sep_conv_3x3", 0], ["skip_connect", True]], "normal_concat": [2], "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}, "[normal -> 1 -> 1] Input should be a valid integer (given: True)"),
        ({"normal": [["sep_conv_3x3", 0], ["skip_connect", 1]], "normal_concat": [2.0], "reduce": [["sep_conv_3x3", 0], ["skip_connect", 1]], "reduce_concat": [2]}, "[normal_concat -> 0] Input should be a valid integer"),
    ],
)
def test_bad_genotypes(data, expected):
    with pytest.raises(GenotypeError) as info:
        genotype_from_dict(data)
    assert expected in str(info.value)


def test_unknown_zoo_name_suggests():
    with pytest.raises(GenotypeError) as info:
        load_genotype("DARTS_V3")
    assert "did you mean 'DARTS_V2'" in str(info.value)


def test_one_epoch_cosine_schedule_logs_nothing(caplog):
    """timm logs "Cosine annealing scheduler will have no effect" for a one-epoch schedule (a 1-epoch evaluation
    printed it); eldarts' builder leaves that out and restores timm's logger."""
    import logging

    from timm.scheduler import CosineLRScheduler

    from eldarts_cli.engines.objectives import timm_cosine

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    logger = logging.getLogger("timm.scheduler.cosine_lr")
    with caplog.at_level(logging.WARNING):
        CosineLRScheduler(optimizer, t_initial=1)
        assert "no effect" in caplog.text  # what timm says alone
        caplog.clear()
        level = logger.level
        scheduler = timm_cosine(optimizer, 1, 0.0, warmup_t=0)
        assert caplog.text == "" and logger.level == level
    assert scheduler.t_initial == 1


def test_one_epoch_linear_schedule_logs_nothing(caplog):
    """schedule.kind: linear (timm's PolyLRScheduler) logs timm's cosine line for one epoch too; left out."""
    import logging

    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.engines.evaluate import make_scheduler

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    recipe = EvalRecipe.model_validate({"schedule": {"kind": "linear"}, "train": {"epochs": 1}})
    with caplog.at_level(logging.WARNING):
        make_scheduler(recipe, optimizer)
    assert caplog.text == ""


def test_too_few_training_images_name_what_to_change():
    """A training set too small to split, or for a batch of each half: the error names data.limit where the limit
    made it so (data.limit=1 said only "cannot split 1 images"), and never advises raising a limit that was not set."""
    from eldarts_cli.core.errors import DataError, RecipeError
    from eldarts_cli.engines.search import search_halves

    recipe = load_recipe(None, SearchRecipe, ["data.dataset=fake", "data.limit=1", "data.batch_size=4"])
    with pytest.raises(DataError, match=r"cannot split 1 images .*; raise data.limit \(data.limit=1\)$"):
        search_halves(recipe, 1)
    recipe = load_recipe(None, SearchRecipe, ["data.dataset=fake", "data.batch_size=64"])
    with pytest.raises(RecipeError, match="larger than each half of the 100 training images; lower it or use more "
                                          "training images$"):
        search_halves(recipe, 100)
    recipe = load_recipe(None, SearchRecipe, ["data.dataset=fake", "data.batch_size=64", "data.limit=100"])
    with pytest.raises(RecipeError, match="lower it or raise data.limit$"):
        search_halves(recipe, 100)


def test_the_search_eta_counts_epochs_with_architecture_steps():
    """The ETA was the epochs left times the mean epoch so far: after the warm-up (no architecture steps, faster)
    it read 18 s for 24 s of work. It counts the epochs with architecture steps; during the warm-up it is a floor."""
    from types import SimpleNamespace

    from rich.console import Console
    from rich.progress import Progress

    from eldarts_cli.cli.search import RichSearchCallbacks

    callbacks = RichSearchCallbacks(Progress(console=Console(file=io.StringIO())))
    callbacks.epochs = 10
    row = lambda epoch, arch, seconds: SimpleNamespace(epoch=epoch, arch_updates=arch, epoch_seconds=seconds)  # noqa: E731
    assert callbacks._eta(row(0, False, 2.0)) == "  (search eta over 18 s: warm-up epochs are faster)"
    assert callbacks._eta(row(1, False, 2.0)) == "  (search eta over 16 s: warm-up epochs are faster)"
    assert callbacks._eta(row(2, True, 3.0)) == "  (search eta 21 s)"  # 7 epochs left at 3 s, not at 2.33 s
    assert callbacks._eta(row(9, True, 3.0)) == ""
