"""The Python API (eldarts_cli.api): what the README's example uses, on tiny runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import eldarts_cli as eldarts
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.evaluate import EvalRecipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import CheckpointError, EldartsError, GenotypeError, RecipeError, RunFolderError
from eldarts_cli.engines.evaluate import run_evaluation
from eldarts_cli.engines.search import Searcher
from eldarts_cli.models.sizes import count_parameters


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    from conftest import TINY_SEARCH

    folder = tmp_path_factory.mktemp("api")
    (folder / "tiny.yaml").write_text(TINY_SEARCH)
    recipe = load_recipe(folder / "tiny.yaml", SearchRecipe, ["search.epochs=2", "search.max_steps=2"])
    Searcher(recipe, folder / "run").run()
    return folder / "run"


def test_load_genotype_from_zoo_file_and_run(search_run, tmp_path):
    assert eldarts.load_genotype("darts-v2") == eldarts.load_genotype("DARTS_V2")
    from_run = eldarts.load_genotype(search_run)
    assert from_run == eldarts.load_genotype(search_run / "genotype.json")
    assert from_run.nodes == 2
    with pytest.raises(GenotypeError, match="did you mean 'DARTS_V2'"):
        eldarts.load_genotype("DARTS_V3")
    for empty in ("", "  "):  # not the current folder
        with pytest.raises(GenotypeError, match="the genotype is empty"):
            eldarts.load_genotype(empty)


def test_create_network_has_the_published_size():
    model = eldarts.create_network("DARTS_V2", dataset="cifar10", channels=36, layers=20)
    assert round(count_parameters(model) / 1e6, 3) == 3.349  # DARTS paper: 3.3M
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    grey = eldarts.create_network("PC_DARTS", dataset="digits", channels=4, layers=3)
    assert grey.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_derive_genotype_from_a_search_checkpoint(search_run):
    derived = eldarts.derive_genotype(search_run / "checkpoint.pt")
    written = json.loads((search_run / "genotype.json").read_text())
    assert derived.model_dump(mode="json", exclude_none=True) == written
    assert eldarts.derive_genotype(search_run) == derived
    with pytest.raises(CheckpointError):
        eldarts.derive_genotype(search_run / "genotype.json")


def test_load_trained_rebuilds_the_evaluated_network(tmp_path):
    recipe = EvalRecipe.model_validate({
        "data": {"dataset": "digits", "batch_size": 16, "limit": 64, "test_limit": 32, "crop_padding": 1, "cutout": 0},
        "network": {"channels": 4, "layers": 3}, "train": {"epochs": 1, "max_steps": 2, "onnx": False},
        "runtime": {"threads": 1},
    })
    genotype = eldarts.load_genotype("DARTS_V2")
    run_evaluation(recipe, genotype, tmp_path / "eval")
    model = eldarts.load_trained(tmp_path / "eval")
    saved = torch.load(tmp_path / "eval" / "weights.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert not model.training and model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(CheckpointError, match="no EMA"):
        eldarts.load_trained(tmp_path / "eval", ema=True)
    with pytest.raises(RunFolderError):
        eldarts.load_trained(tmp_path / "nothing")
    with pytest.raises(RunFolderError, match="load_trained takes an evaluation run folder"):  # was a TypeError
        eldarts.load_trained(3)
    if not torch.cuda.is_available():  # a device this machine lacks blamed the file: "corrupted or truncated"
        with pytest.raises(EldartsError, match="CUDA is not available here") as error:
            eldarts.load_trained(tmp_path / "eval", map_location="cuda")
        assert "corrupt" not in str(error.value)
        assert 'use map_location="cpu"' in str(error.value) and "--device" not in str(error.value)  # (the API's)
    with pytest.raises(RunFolderError, match="derive_genotype takes a search run folder"):  # was pathlib's TypeError
        eldarts.derive_genotype(None)
    # "auto" and "CPU" passed the device check and went to torch.load, which called the file corrupted
    for name in ("auto", "CPU", torch.device("cpu"), None):
        loaded = eldarts.load_trained(tmp_path / "eval", map_location=name)
        assert next(loaded.parameters()).device.type == "cpu"
        assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())
    with pytest.raises(RecipeError, match="load_trained: ema takes True or False"):  # "yes" loaded the EMA weights
        eldarts.load_trained(tmp_path / "eval", ema="yes")
    with pytest.raises(CheckpointError, match="is an evaluation's checkpoint .to resume it., not a trained network"):
        eldarts.load_trained(tmp_path / "eval" / "checkpoint.pt")  # (it said "it lacks 'network'")
    with pytest.raises(CheckpointError, match="is an evaluation's trained network, not a search checkpoint"):
        eldarts.derive_genotype(tmp_path / "eval" / "weights.pt")  # (it said "format 1")


def test_the_api_reads_home_folder_paths_and_lists_itself(search_run, tmp_path, monkeypatch):
    """``~`` is the home folder on the command line; the API took it for a folder named ``~``. ``dir()`` of the
    package lacked the API (loaded on first use), so tab completion offered none of it."""
    monkeypatch.setenv("HOME", str(search_run.parent))
    assert eldarts.load_genotype(f"~/{search_run.name}") == eldarts.load_genotype(search_run)
    assert eldarts.load_genotype(Path("~") / search_run.name / "genotype.json") == eldarts.load_genotype(search_run)
    assert eldarts.derive_genotype(f"~/{search_run.name}") == eldarts.derive_genotype(search_run)
    assert {"load_genotype", "create_network", "load_trained", "derive_genotype", "__version__"} <= set(dir(eldarts))


@pytest.mark.parametrize("channels", [47, 9])
def test_an_imagenet_network_of_odd_channels_is_refused_in_one_line(channels):
    """Its first cell halves the stem's maps with two convolutions of half the channels: an odd count was a
    ValueError of FactorizedReduce's (a traceback on the command line, dry run included)."""
    with pytest.raises(RecipeError, match=f"imagenet network needs an even channel count.*got channels={channels}"):
        eldarts.create_network("DARTS_V2", dataset="imagenet", channels=channels, layers=3)
    assert eldarts.create_network("DARTS_V2", dataset="imagenet", channels=channels + 1, layers=3) is not None
    from typer.testing import CliRunner

    from eldarts_cli.cli import app

    result = CliRunner().invoke(app, ["evaluate", "DARTS_V2", "recipes/eval-quick.yaml", "--dry-run", "--set",
                                      "network.kind=imagenet", "--set", f"network.channels={channels}"])
    assert result.exit_code == 2 and "Traceback" not in result.output and result.output.count("error:") == 1


def test_the_recorded_input_normalisation_reproduces_the_test_accuracy(tmp_path):
    """The input a network was trained on (pixels in [0, 1], minus the training images' mean, over their std) was
    recorded nowhere: a loaded network could not be scored as the run scored it. results.json and weights.pt now
    hold it, and with it the loaded network gives the run's test accuracy (fp32, as the run)."""
    from eldarts_cli.data.datasets import load_images

    recipe = EvalRecipe.model_validate({
        "data": {"dataset": "digits", "batch_size": 16, "limit": 96, "test_limit": 64, "crop_padding": 1, "cutout": 0},
        "network": {"channels": 4, "layers": 3}, "train": {"epochs": 2, "onnx": False},
        "runtime": {"threads": 1, "amp": "none"},
    })
    results = run_evaluation(recipe, eldarts.load_genotype("DARTS_V2"), tmp_path / "eval")
    assert results["test_images"] == 64 and len(results["input_mean"]) == len(results["input_std"]) == 1
    assert torch.load(tmp_path / "eval" / "weights.pt", weights_only=True)["input"]["mean"] == results["input_mean"]
    test = load_images(recipe.data, "test")
    mean = torch.tensor(results["input_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(results["input_std"]).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = eldarts.load_trained(tmp_path / "eval")((test.images.float() / 255 - mean) / std)
    accuracy = 100 * (logits.argmax(1) == test.labels).float().mean().item()
    assert accuracy == pytest.approx(100 - results["test_top1_error"], abs=1e-3)


@pytest.mark.parametrize("name,value", [("channels", 0), ("layers", 0), ("num_classes", 0), ("in_channels", 0),
                                        ("channels", -4), ("channels", 3.5), ("channels", "16"), ("layers", True)])
def test_create_network_refuses_sizes_it_cannot_build(name, value):
    """0 was read as "the default" (``x or default``: channels=0 built C=36) and other values fell through to
    PyTorch's errors (negative dimension, divisible by groups, string formatting)."""
    with pytest.raises(RecipeError, match=f"create_network: {name} takes a whole number of at least"):
        eldarts.create_network("DARTS_V2", **{name: value})


@pytest.mark.parametrize("ref", [None, 3, ["DARTS_V2"]])
def test_load_genotype_names_what_it_takes(ref):
    with pytest.raises(GenotypeError, match="load_genotype takes a genotype.json file, a run folder, a zoo name"):
        eldarts.load_genotype(ref)


def test_create_network_too_large_for_memory_is_one_error(monkeypatch):
    """channels=100000 ended in PyTorch's "[enforce fail at alloc_cpu.cpp] ... can't allocate memory"."""
    import eldarts_cli.api as api
    from eldarts_cli.core.errors import ResourceError

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 120000000000 bytes.")

    monkeypatch.setattr(api, "build_network", no_memory)
    with pytest.raises(ResourceError, match=r"create_network: the network \(channels=64, layers=3\) does not fit"):
        eldarts.create_network("DARTS_V2", channels=64, layers=3)  # (within the sizes built without an estimate)


@pytest.mark.parametrize("sizes,where", [({"layers": 100000}, "channels=36, layers=100000, num_classes=10"),
                                         ({"channels": 100000}, "channels=100000, layers=20"),
                                         ({"num_classes": 10**9}, "num_classes=1000000000")])
def test_create_network_refuses_a_network_too_large_before_building_it(sizes, where):
    """layers=100000 built for ten minutes and filled the machine's 24 GB (the CLI refuses it in a second); the
    API now estimates such a network from small copies first and refuses it; and auxiliary takes a bool ("yes"
    built a head)."""
    from eldarts_cli.core.errors import ResourceError

    with pytest.raises(ResourceError, match=rf"create_network: the cifar network \(.*{where}.*more than the .* this "
                                            r"process may use"):
        eldarts.create_network("DARTS_V2", **sizes)
    with pytest.raises(RecipeError, match=r"auxiliary takes True or False \(given 'yes'\)"):
        eldarts.create_network("DARTS_V2", channels=4, layers=3, auxiliary="yes")
