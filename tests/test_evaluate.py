"""``eldarts evaluate``: recipes, --dry-run, a tiny training run, resume, DDP, bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import TINY_EVAL
from eldarts_cli.cli import app
from eldarts_cli.cli.evaluate import comparison_table
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.evaluate import EvalRecipe
from eldarts_cli.core.errors import CheckpointError, RecipeError
from eldarts_cli.engines.evaluate import run_evaluation
from eldarts_cli.models.genotypes import GENOTYPES, load_genotype, save_genotype
from eldarts_cli.runs.folders import read_metrics

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_eval(tmp_path):
    path = tmp_path / "tiny-eval.yaml"
    path.write_text(TINY_EVAL)
    return path


def evaluate(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


def assert_clean_error(result, *phrases):
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output, result.output


# -- recipes and --dry-run ---------------------------------------------------


@pytest.mark.parametrize("path", sorted((ROOT / "recipes").glob("eval-*.yaml")))
def test_every_eval_recipe_validates(path):
    recipe = load_recipe(path, EvalRecipe)
    assert recipe.train.epochs > 0


def test_a_warm_up_over_the_only_epoch_at_lr_0_is_refused(tmp_path):
    """train.epochs=1 with a warm-up (a smoke test of a recipe that warms up) was accepted: the one epoch ran at
    schedule.warmup_lr, and at its default 0 trained nothing; refused then. At a warmup_lr above 0 it trains."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("schedule:\n  warmup_epochs: 5\ntrain:\n  epochs: 1\n")
    with pytest.raises(RecipeError, match=r"schedule.warmup_epochs \(5\) covers the only epoch \(train.epochs=1\), "
                                          r"which would train at schedule.warmup_lr \(0\)"):
        load_recipe(recipe, EvalRecipe)
    assert load_recipe(recipe, EvalRecipe, ["schedule.warmup_lr=0.01"]).train.epochs == 1
    assert load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe, ["train.epochs=1"]).schedule.warmup_lr == 0.1


def test_a_warm_up_that_falls_is_refused(tmp_path):
    """schedule.warmup_lr above optim.lr made the 'warm-up' lower the learning rate to lr, unchecked; it is
    refused (a lower optim.lr given to continue a diverged run is named, as the --set that made the clash)."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.1\nschedule:\n  warmup_epochs: 2\n  warmup_lr: 0.05\ntrain:\n  epochs: 5\n")
    assert load_recipe(recipe, EvalRecipe).schedule.warmup_lr == 0.05
    with pytest.raises(RecipeError, match=r"r.yaml:5, --set optim.lr: \[schedule.warmup_lr, optim.lr\] schedule.warmup_lr \(0.05\) is above "
                                          r"optim.lr \(0.01\): the warm-up rises from warmup_lr to lr"):
        load_recipe(recipe, EvalRecipe, ["optim.lr=0.01"])
    assert load_recipe(recipe, EvalRecipe, ["optim.lr=0.01", "schedule.warmup_epochs=0"]).optim.lr == 0.01
    result = evaluate("darts_v2", recipe, "--set", "schedule.warmup_lr=0.5", "--dry-run")
    assert result.exit_code == 2 and "r.yaml:2, --set schedule.warmup_lr: [optim.lr, schedule.warmup_lr] schedule.warmup_lr (0.5)" in \
        result.output, result.output


def test_a_classifier_too_large_is_named_before_it_is_built():
    """network.num_classes=100000000 was "out of memory: lower data.batch_size" (the size estimate's first small
    copy asked for a 307 GB classifier); the estimate now extrapolates from 2 and 3 classes, exactly, and the
    error names the class count first."""
    from eldarts_cli.engines.evaluate import build_eval_network, check_eval_network_fits, expected_input

    for args in (["--dry-run"], []):
        result = evaluate("darts_v2", ROOT / "recipes/eval-quick.yaml", "--set", "network.num_classes=100000000", *args)
        assert result.exit_code == 2, result.output
        assert "89,800.4M parameters" in result.output and "lower network.num_classes (100000000), network.channels" \
            in result.output, result.output
    recipe = load_recipe(ROOT / "recipes/eval-quick.yaml", EvalRecipe, ["network.num_classes=5000"])
    shape = expected_input(recipe)
    footprint, lower_first = check_eval_network_fits(recipe, GENOTYPES.get("DARTS_V2"), shape, None, batch=2)
    assert lower_first == "network.num_classes (5000)"  # (the classifier holds most of the parameters)
    built = build_eval_network(recipe, GENOTYPES.get("DARTS_V2"), shape)
    assert footprint.params == sum(p.numel() for p in built.parameters())


def test_a_dry_run_says_a_batch_too_large_for_this_machine_would_be_refused(monkeypatch):
    """``evaluate --dry-run --set data.batch_size=100000`` printed "about 5.9 TB (estimated)" without a word, though
    the run refuses it at its start; the dry run now warns that a run here would be refused, as a search's does
    (a dry run may plan for a larger machine: still exit 0)."""
    import eldarts_cli.engines.resources as resources

    monkeypatch.setattr(resources, "device_memory", lambda device: 8 * 2**30)  # this machine: 8 GiB
    result = evaluate("darts_v2", ROOT / "recipes/eval-quick.yaml", "--set", "data.batch_size=100000", "--dry-run")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "warning: the cifar network is too large to train: about" in flat and "at batch 100000" in flat \
        and "the memory this process may use is 8.6 GB" in flat and "data.batch_size (100000)" in flat \
        and "a run here would be refused" in flat, flat
    quiet = evaluate("darts_v2", ROOT / "recipes/eval-quick.yaml", "--dry-run")
    assert quiet.exit_code == 0 and "too large" not in quiet.output, quiet.output


def test_paper_settings():
    cifar = load_recipe(ROOT / "recipes/eval-cifar10.yaml", EvalRecipe)
    # no recipe means the paper's CIFAR-10 settings (data.root defaults to data/cifar10 too)
    assert cifar.model_dump(exclude={"data": {"root"}}) == EvalRecipe().model_dump(exclude={"data": {"root"}})
    assert (cifar.network.layers, cifar.network.channels, cifar.train.epochs, cifar.data.batch_size) == (20, 36, 600, 96)
    assert (cifar.optim.lr, cifar.optim.weight_decay, cifar.network.auxiliary_weight, cifar.data.cutout) == (0.025, 3e-4, 0.4, 16)
    imagenet = load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe)
    assert (imagenet.network.layers, imagenet.network.channels, imagenet.train.epochs) == (14, 48, 250)
    assert imagenet.data.image_size == 224 and imagenet.train.label_smoothing > 0


def test_imagenet_recipe_follows_pc_darts_schedule():
    """eval-imagenet.yaml mixed PC-DARTS' large batch (lr 0.5, 5 warm-up epochs) with DARTS' step decay (x0.97 a
    epoch, ending near 3e-4); it now follows PC-DARTS' ImageNet schedule in timm's form: a warm-up from 0.1 over 5
    epochs, then a straight line to 0 (schedule.kind: linear)."""
    from eldarts_cli.engines.evaluate import make_scheduler

    recipe = load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe)
    assert (recipe.data.batch_size, recipe.optim.lr, recipe.optim.weight_decay) == (1024, 0.5, 3e-5)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.optim.lr)
    scheduler = make_scheduler(recipe, optimizer)
    lrs = []
    for epoch in range(recipe.train.epochs):
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:6] == pytest.approx([0.1, 0.18, 0.26, 0.34, 0.42, 0.5])
    decay = lrs[5:]
    steps = [a - b for a, b in zip(decay, decay[1:])]
    assert steps == pytest.approx([0.5 / 245] * 244)  # a straight line ...
    assert decay[-1] == pytest.approx(0.5 / 245)  # ... that reaches 0 after the last epoch


def test_a_cosine_schedule_after_a_warm_up_ends_at_lr_min():
    """A cosine schedule with a warm-up ran over all train.epochs after the warm-up's: the warm-up's length was cut
    off its end (5 epochs, 2 of warm-up: the last epoch at 65% of the peak lr). It now spans the epochs left."""
    from eldarts_cli.engines.evaluate import make_scheduler

    recipe = load_recipe(ROOT / "recipes/eval-quick.yaml", EvalRecipe,
                         ["train.epochs=5", "schedule.warmup_epochs=2", "schedule.warmup_lr=0.01", "optim.lr=0.05",
                          "optim.lr_min=0"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=recipe.optim.lr)
    scheduler = make_scheduler(recipe, optimizer)
    lrs = []
    for epoch in range(6):  # one past the last epoch: where a schedule over the run's epochs has ended
        scheduler.step(epoch)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[:3] == pytest.approx([0.01, 0.03, 0.05])  # warm-up, then the peak
    assert lrs[3:5] == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 3)) / 2 for k in (1, 2)])
    assert lrs[5] == pytest.approx(0.0)


def test_dry_run_json_cifar():
    result = evaluate("darts_v2", ROOT / "recipes/eval-cifar10.yaml", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # stderr: a warning where the data is missing
    assert round(info["params_m"], 1) == 3.3 and info["input_size"] == [3, 32, 32]
    assert info["macs_m"] > info["macs_conv_fc_m"] > 0 and "thop" in info["macs_convention"]
    assert info["table"] == "cifar10" and "exceeds_mobile_limit" not in info


def test_dry_run_table_gives_a_small_networks_macs_to_four_digits(tiny_eval):
    """The MAC rows of the dry run's table keep 4 significant digits (a 0.238M-MAC network read "0.2"), so they can be
    checked against a search's measured cost and the training run's report."""
    result = evaluate("DARTS_V2", tiny_eval, "--dry-run", "--set", "network.channels=6", "--set", "network.layers=3")
    assert result.exit_code == 0, result.output
    info = json.loads(evaluate("DARTS_V2", tiny_eval, "--dry-run", "--json", "--set", "network.channels=6",
                               "--set", "network.layers=3").stdout)
    assert info["macs_m"] < 10
    for label, key in (("MACs (M, thop)", "macs_m"), ("MACs (M, conv+FC only)", "macs_conv_fc_m")):
        row = next(line for line in result.stdout.splitlines() if label in line)
        assert f"{info[key]:.4g}" in row and f"{info[key]:.4g}" != f"{info[key]:.1f}"


def test_a_head_narrower_than_the_datas_classes_is_refused(tmp_path, tiny_eval):
    """network.num_classes=5 on 10 digit classes crashed at the first step ("IndexError: Target 7 is out of bounds")
    and left a folder; now one error line, exit 2, in the dry run too, and no folder."""
    message = "network.num_classes=5 is fewer than the 10 classes of digits"
    out = tmp_path / "run"
    for extra in ([], ["--dry-run"]):
        result = evaluate("DARTS_V2", tiny_eval, "--out", out, "--set", "network.num_classes=5", *extra)
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
        assert not out.exists()
    from eldarts_cli.data.loaders import training_loaders  # the run's own check, on the loaded labels
    from eldarts_cli.core.errors import DataError

    recipe = load_recipe(tiny_eval, EvalRecipe, [])
    with pytest.raises(DataError, match=message):
        training_loaders(recipe.data, batch=16, eval_batch=16, seed=0, device=torch.device("cpu"),
                         channels_last=False, num_classes=5)
    assert evaluate("DARTS_V2", tiny_eval, "--dry-run", "--set", "network.num_classes=12").exit_code == 0


def test_a_genotype_name_is_text_and_a_small_networks_params_are_not_zero(tmp_path, tiny_eval):
    """A genotype named ``v[/b]2`` crashed the dry run (rich read its name as markup: a traceback); the training's
    first line said "0.00M params" for a network the table gave as 0.0366M."""
    from eldarts_cli.models.genotypes import GENOTYPES

    cell = GENOTYPES.get("DARTS_V2").model_copy(update={"name": "v[/b]2"})
    (tmp_path / "g.json").write_text(cell.model_dump_json())
    result = evaluate(tmp_path / "g.json", tiny_eval, "--dry-run")
    assert result.exit_code == 0 and "v[/b]2 as a CIFAR network" in result.output, result.output
    result = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "run", "--set", "train.epochs=1")
    line = next(line for line in result.output.splitlines() if line.startswith("training "))
    params = json.loads((tmp_path / "run" / "results.json").read_text())["params_m"]
    said = float(line.split()[1].removesuffix("M"))
    assert result.exit_code == 0 and params < 0.1 and said == pytest.approx(params, rel=0.05), line


def test_dry_run_flags_the_mobile_limit():
    result = evaluate("PC-DARTS", ROOT / "recipes/eval-imagenet.yaml", "--dry-run", "--json", "--set", "network.channels=52")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)  # stderr: a warning where the data is missing
    assert info["exceeds_mobile_limit"] is True and info["macs_m"] > 600
    text = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", "--dry-run")
    assert text.exit_code == 0 and "within the mobile limit" in text.output and "4.7188" in text.output


# -- bad input -----------------------------------------------------------------


def test_a_recipe_given_as_the_genotype_says_the_genotype_comes_first(tiny_eval):
    """``eldarts evaluate recipe.yaml`` (the genotype left out) said "not valid JSON ..., nor a NAS-Bench-201 arch
    string"; it now says that the file is a recipe and the genotype comes first."""
    assert_clean_error(evaluate(tiny_eval), f"{tiny_eval} is a recipe, not a genotype: the genotype comes first")
    # the two swapped: it said "recipe DARTS_V2 does not exist"
    assert_clean_error(evaluate(tiny_eval, "DARTS_V2"), f"{tiny_eval} is a recipe and comes second: the genotype "
                                                        f"comes first (eldarts evaluate DARTS_V2 {tiny_eval})")


@pytest.mark.parametrize(
    "content,phrase",
    [
        ("{not json", "not valid JSON"),
        ('{"normal": [["sep_conv_3x3", 0]]}', "needs two (op, input) pairs"),
        (None, "unknown op 'sep_conv_3x4'"),
        ("impossible", "node 0 cannot take input 5"),
    ],
)
def test_bad_genotype_files(tmp_path, tiny_eval, content, phrase):
    data = GENOTYPES.get("DARTS_V2").model_dump(mode="json")
    if content is None:
        data["normal"][0] = ["sep_conv_3x4", 0]
        content = json.dumps(data)
    elif content == "impossible":
        data["reduce"][0] = ["max_pool_3x3", 5]
        content = json.dumps(data)
    path = tmp_path / "genotype.json"
    path.write_text(content)
    out = tmp_path / "run"
    assert_clean_error(evaluate(path, tiny_eval, "--out", out), phrase)
    assert not out.exists()


def test_unknown_zoo_name_gets_a_suggestion(tiny_eval):
    assert_clean_error(evaluate("DARTS_V3", tiny_eval, "--dry-run"), "did you mean")


def test_recipe_error(tiny_eval):
    assert_clean_error(evaluate("DARTS_V2", tiny_eval, "--dry-run", "--set", "network.chanels=8"), "did you mean 'channels'")


def test_missing_dataset(tmp_path, tiny_eval):
    out = tmp_path / "run"
    result = evaluate("DARTS_V2", tiny_eval, "--out", out, "--set", "data.dataset=cifar10", "--set", f"data.root={tmp_path / 'nowhere'}")
    assert_clean_error(result, "cifar10 not found")
    assert not out.exists()


# -- training --------------------------------------------------------------------


def test_tiny_run_to_completion(tmp_path, tiny_eval):
    out = tmp_path / "run"
    result = evaluate("DARTS_V2", tiny_eval, "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("recipe.yaml", "genotype.json", "metrics.jsonl", "metrics.csv", "checkpoint.pt", "weights.pt",
                 "model.onnx", "results.json"):
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    for key in ("test_top1_error", "test_top5_error", "params_m", "macs_m", "epochs", "wall_time_s", "device"):
        assert results[key] is not None, key
    assert results["epochs"] == 2 and results["genotype"] == "DARTS_V2"
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["drop_path"] == 0 and rows[1]["drop_path"] == pytest.approx(0.05)
    assert {"lr", "train_loss", "test_top1", "test_top5"} <= set(rows[-1])
    assert load_recipe(out / "recipe.yaml", EvalRecipe) == load_recipe(tiny_eval, EvalRecipe)
    import onnx

    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))
    assert "this run" in result.output
    # the same folder is never trained over
    again = evaluate("DARTS_V2", tiny_eval, "--out", out)
    assert_clean_error(again, "already holds an evaluation run", "--resume")


def test_resume_equals_an_uninterrupted_run(tmp_path, tiny_eval):
    recipe = load_recipe(tiny_eval, EvalRecipe, ["train.epochs=3", "train.onnx=false", "train.ema=true"])
    genotype = GENOTYPES.get("PC_DARTS")
    whole = run_evaluation(recipe, genotype, tmp_path / "whole")
    part = run_evaluation(recipe, genotype, tmp_path / "part", stop_after_epochs=1)
    assert part["completed"] is False and not (tmp_path / "part" / "results.json").exists()
    # run_time_s counted the last invocation alone: an earlier one of 1000 s (to its checkpoint) is counted too
    from eldarts_cli.runs.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert 0 < state["run_time_s"] < 1000
    save_checkpoint({**state, "run_time_s": 1000.0}, tmp_path / "part" / "checkpoint.pt")
    resumed = run_evaluation(recipe, genotype, tmp_path / "part", resume=True)
    assert 1000 < resumed["run_time_s"] < 1000 + 2 * whole["run_time_s"] + 60
    assert resumed["test_top1_error"] == whole["test_top1_error"]
    assert resumed["ema_test_top1_error"] == whole["ema_test_top1_error"]
    a = torch.load(tmp_path / "whole" / "weights.pt")
    b = torch.load(tmp_path / "part" / "weights.pt")
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in rows]  # noqa: E731
    assert strip(read_metrics(tmp_path / "whole")) == strip(read_metrics(tmp_path / "part"))
    # stopped after the last checkpoint, while writing weights and results: the resume writes the EMA's test
    # scores too (they were not in the checkpoint, and came back as None)
    for name in ("results.json", "weights.pt"):
        (tmp_path / "part" / name).unlink()
    finished = run_evaluation(recipe, genotype, tmp_path / "part", resume=True)
    assert finished["ema_test_top1_error"] == whole["ema_test_top1_error"] is not None
    assert finished["test_top1_error"] == whole["test_top1_error"]


def test_the_ema_weights_test_error_is_printed(tmp_path, tiny_eval):
    """With train.ema the EMA weights' test error was only in results.json and metrics.jsonl: a reader of the
    console reported the other network's."""
    out = tmp_path / "run"
    result = evaluate("DARTS_V2", tiny_eval, "--out", out, "--set", "train.ema=true", "--set", "train.onnx=false")
    assert result.exit_code == 0, result.output
    results, last = json.loads((out / "results.json").read_text()), read_metrics(out)[-1]
    flat = " ".join(result.output.split())
    assert f"EMA {last['ema_test_top1']:.2f}%" in flat, flat  # the epoch line
    assert f"EMA weights (train.ema; in weights.pt beside the network's): test error " \
           f"{results['ema_test_top1_error']:.2f}%" in flat, flat
    plain = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "plain", "--set", "train.onnx=false")
    assert "EMA" not in plain.output


def test_resume_refuses_another_genotype(tmp_path, tiny_eval):
    out = tmp_path / "run"
    recipe = load_recipe(tiny_eval, EvalRecipe, ["train.onnx=false"])
    run_evaluation(recipe, GENOTYPES.get("DARTS_V2"), out, stop_after_epochs=1)
    before = (out / "checkpoint.pt").read_bytes()
    result = evaluate("P_DARTS", tiny_eval, "--resume", out, "--set", "train.onnx=false")
    assert_clean_error(result, "trained with DARTS_V2, not with P_DARTS")
    with pytest.raises(CheckpointError, match="trained with DARTS_V2, not with P_DARTS"):  # the checkpoint's cells
        run_evaluation(recipe, GENOTYPES.get("P_DARTS"), out, resume=True)
    with pytest.raises(CheckpointError, match=r"train.epochs: 2 -> 5\); resume with the same recipe \(only runtime.\*, "
                                              r"data.num_workers, .*optim.lr, .* may change\)"):  # (which, named)
        run_evaluation(load_recipe(tiny_eval, EvalRecipe, ["train.onnx=false", "train.epochs=5"]),
                       GENOTYPES.get("DARTS_V2"), out, resume=True)
    assert (out / "checkpoint.pt").read_bytes() == before
    # before its first checkpoint, and once finished, the run's genotype.json is what the GENOTYPE must match
    (out / "checkpoint.pt").unlink()
    result = evaluate("P_DARTS", tiny_eval, "--resume", out, "--set", "train.onnx=false")
    assert_clean_error(result, "trained with DARTS_V2, not with P_DARTS")
    assert load_genotype(out / "genotype.json").name == "DARTS_V2"
    # another cell of the same name (two searches of one recipe): "trained with quickstart, not with quickstart"
    renamed = GENOTYPES.get("P_DARTS").model_copy(update={"name": "DARTS_V2"})
    save_genotype(renamed, tmp_path / "other.json")
    result = evaluate(tmp_path / "other.json", tiny_eval, "--resume", out, "--set", "train.onnx=false")
    assert_clean_error(result, "trained with another DARTS_V2 cell, not with this DARTS_V2 cell",
                       f"(its own: {out / 'genotype.json'})")


def test_genotype_from_a_search_run_folder(tmp_path, tiny_eval):
    folder = tmp_path / "search"
    folder.mkdir()
    save_genotype(GENOTYPES.get("P_DARTS").model_copy(update={"name": None}), folder / "genotype.json")
    result = evaluate(folder, tiny_eval, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["genotype"] == "search"  # named after its run folder


def test_a_searched_cell_is_evaluated_with_its_searchs_cost(tmp_path, tiny_eval, tiny_recipe):
    """GENOTYPE given as a finished search (its folder or its genotype.json): the Table 1 row of the evaluation
    gives that search's measured cost and op count (it gave "-"), from search-origin.json, also after a resume;
    a zoo cell has none."""
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher

    search = tmp_path / "search"
    Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), search).run()
    summary = json.loads((search / "summary.json").read_text())
    out = tmp_path / "ev"
    recipe = load_recipe(tiny_eval, EvalRecipe, ["train.onnx=false"])
    run_evaluation(recipe, load_genotype(str(search)), out, stop_after_epochs=1, search_run=search)
    result = evaluate(search / "genotype.json", tiny_eval, "--resume", out, "--set", "train.onnx=false", "--json")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert results["search_run"] == str(search) and results["search_cost_unit"] == "CPU-days"
    assert results["search_cost_days"] == summary["search_cost"]["days"] and results["search_num_ops"] == 4
    from eldarts_cli.runs.files import EvalResults
    from eldarts_cli.runs.tables import evaluation_table, fmt_cost

    row = evaluation_table(EvalResults.read(out))[2][-1]  # this run's row of Table 1
    assert row["search_cost"] == fmt_cost(summary["search_cost"]["days"], "CPU-days") and row["num_ops"] == "4"
    # a cell of an eldarts search: found by gradient; searched on the data it is evaluated on, so no note (a
    # search and an evaluation of one JPEG CIFAR-10 read "cell searched on imagefolder", as if on other data) ...
    assert row["method"] == "gradient"
    assert row["architecture"].endswith("(this run) (trained on 96 of 1,437 images; 40 of 360 test images; on "
                                        "digits, not CIFAR-10; cell searched with 2 of 50 epochs, 3 of 4 steps an "
                                        "epoch, C=4, 3 cells (paper: C=16, 8), 8x8 images (paper: 32x32), 128 of "
                                        "1,437 images)")
    # (a run on other data than CIFAR-10 says so in Table 1: a JPEG copy of CIFAR-10 read as CIFAR-10's row)
    # ... which a cell searched on other data than the run's gets (the paper's cells: CIFAR-10)
    elsewhere = EvalResults.read(out).model_copy(update={"dataset": "cifar10"})
    assert "; cell searched on digits with 2 of 50 epochs, " in evaluation_table(elsewhere)[2][-1]["architecture"]
    zoo = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "zoo", "--set", "train.onnx=false", "--json")
    assert json.loads(zoo.stdout)["search_run"] is None and not (tmp_path / "zoo" / "search-origin.json").exists()
    assert evaluation_table(EvalResults.read(tmp_path / "zoo"))[2][-1]["method"] == "gradient"  # DARTS_V2's


def test_table_rows_say_where_a_run_is_not_the_papers_setting():
    """A Table 1 row scored on part of CIFAR-10's test set said nothing of it; Table 2's MACs of a small network
    printed "1 (thop)" for 0.6954."""
    from eldarts_cli.runs.files import EvalResults
    from eldarts_cli.runs.tables import evaluation_table

    common = dict(genotype="mine", test_top1_error=10.0, test_top5_error=1.0, params_m=0.0359, epochs=1, name="e",
                  genotype_cells={}, channels=8, layers=5, wall_time_s=1.0, device="cpu")
    cifar = EvalResults(table="cifar10", dataset="cifar10", network="cifar", input_size=[3, 32, 32], num_classes=10,
                        macs_m=5.0, test_images=500, **common)
    assert evaluation_table(cifar)[2][-1]["architecture"] == "mine (this run) (500 of 10,000 test images)"
    full = cifar.model_copy(update={"test_images": 10_000})
    assert evaluation_table(full)[2][-1]["architecture"] == "mine (this run)"
    # ... and trained on part of the training set, which it did not say either
    part = cifar.model_copy(update={"train_images": 512})
    assert evaluation_table(part)[2][-1]["architecture"] == \
        "mine (this run) (trained on 512 of 50,000 images; 500 of 10,000 test images)"
    # any data whose training set eldarts knows in full says so, not CIFAR-10's rows alone (digits: 80% of 1,797)
    digits = part.model_copy(update={"table": None, "dataset": "digits", "train_images": 64, "test_images": 360})
    assert evaluation_table(digits)[2][-1]["architecture"] == \
        "mine (this run) (trained on 64 of 1,437 images; on digits, not CIFAR-10)"
    # an image folder of 10 classes at 32x32 (Table 1's shape) is counted against its own images, as the run read
    # them (it read "300 of 50,000; 100 of 10,000" for a folder used in full)
    own = cifar.model_copy(update={"dataset": "imagefolder", "train_images": 300, "test_images": 100,
                                   "train_split_images": 300, "test_split_images": 100, "classes": list("abcdefghij")})
    assert evaluation_table(own)[2][-1]["architecture"] == "mine (this run) (on imagefolder, not CIFAR-10)"
    # ... and a folder of CIFAR-10's classes and 50,000 training images is CIFAR-10 as image files (it read "on
    # imagefolder, not CIFAR-10" beside "trained on 1,000 of 50,000 images")
    from eldarts_cli.runs.tables import CIFAR10_CLASSES

    jpeg = own.model_copy(update={"classes": CIFAR10_CLASSES, "train_images": 1000, "test_images": 10_000,
                                  "train_split_images": 50_000, "test_split_images": 10_000})
    assert evaluation_table(jpeg)[2][-1]["architecture"] == ("mine (this run) (trained on 1,000 of 50,000 images; on "
                                                              "CIFAR-10 as image files (decoded pixels differ slightly))")
    # a cell searched on CIFAR-10 as image files is a CIFAR-10 cell ("cell searched on imagefolder" before); one of
    # another image folder says so; under torchrun an epoch of 1,436 of 1,437 images (a multiple of 2) is all of them
    from_jpeg = cifar.model_copy(update={"search_dataset": "imagefolder", "search_classes": CIFAR10_CLASSES,
                                         "search_train_split_images": 50_000, "test_images": 10_000})
    assert evaluation_table(from_jpeg)[2][-1]["architecture"] == "mine (this run)"
    other_folder = jpeg.model_copy(update={"search_dataset": "imagefolder", "search_classes": ["a", "b"],
                                           "search_train_split_images": 40})
    assert "; cell searched on another image folder)" in evaluation_table(other_folder)[2][-1]["architecture"]
    same_folder = other_folder.model_copy(update={"search_classes": CIFAR10_CLASSES,
                                                  "search_train_split_images": 50_000})
    assert "cell searched" not in evaluation_table(same_folder)[2][-1]["architecture"]
    two = digits.model_copy(update={"train_images": 1436, "world_size": 2})
    assert evaluation_table(two)[2][-1]["architecture"] == "mine (this run) (on digits, not CIFAR-10)"
    made = digits.model_copy(update={"dataset": "fake"})  # images made to data.limit: none left out
    assert evaluation_table(made)[2][-1]["architecture"] == "mine (this run) (on fake, not CIFAR-10)"
    nb201 = cifar.model_copy(update={"table": "nb201", "network": "nb201", "channels": 16, "layers": 15})
    assert evaluation_table(nb201)[2][-1]["method"] == "mine (trained here; 500 of 10,000 test images)"
    # a NAS-Bench-201 row of another network, image size or data says so beside the benchmark's published rows,
    # and gives its search's measured cost (it printed "-")
    small = nb201.model_copy(update={"channels": 8, "layers": 3, "input_size": [3, 16, 16], "dataset": "imagefolder",
                                     "search_cost_days": 1e-5, "search_cost_unit": "CPU-days"})
    row = evaluation_table(small)[2][-1]
    assert row["method"] == ("mine (trained here; 500 of 10,000 test images; C=8, 3 cells, not the benchmark's C=16, "
                             "15 cells; 16x16 images, not 32x32; on imagefolder, not CIFAR-10)"), row
    assert row["search_cost"] == "1.00e-05 CPU-days" and row["source"] == "measured, 1 epoch", row
    # NAS-Bench-201's rows name the data and the cell's search as Table 1's do (it said "data: imagefolder" for
    # CIFAR-10 as image files, and nothing of a cell searched on digits)
    files = nb201.model_copy(update={"dataset": "imagefolder", "classes": CIFAR10_CLASSES,
                                     "train_split_images": 50_000, "test_split_images": 10_000, "test_images": 10_000})
    assert evaluation_table(files)[2][-1]["method"] == ("mine (trained here; on CIFAR-10 as image files (decoded "
                                                        "pixels differ slightly))")
    searched = nb201.model_copy(update={"search_dataset": "digits", "test_images": 10_000,
                                        "search_differences": ["2 of 50 epochs"]})
    assert evaluation_table(searched)[2][-1]["method"] == ("mine (trained here; cell searched on digits with 2 of "
                                                           "50 epochs)")
    imagenet = EvalResults(table="imagenet", dataset="imagenet", network="imagenet", input_size=[3, 224, 224],
                           num_classes=1000, macs_m=0.6954, **common)
    title, _, rows = evaluation_table(imagenet)
    assert title.startswith("Table 2") and rows[-1]["macs_m"] == "0.6954 (thop)" and rows[-1]["method"] == "-"
    # a run of an ImageNet network on 3 classes at 32x32 from before results.json's table said so: not Table 2
    older = imagenet.model_copy(update={"num_classes": 3, "input_size": [3, 32, 32]})
    assert evaluation_table(older)[0].startswith("this run (imagenet network on imagenet, 3 classes at 32x32;")
    # a CIFAR network trained on ImageNet: not Table 2 either, and its MACs in whole millions
    cifar_on_imagenet = imagenet.model_copy(update={"network": "cifar", "macs_m": 26017.4})
    title, _, rows = evaluation_table(cifar_on_imagenet)
    assert title.startswith("this run (cifar network on imagenet, 1000 classes at 224x224;")
    assert rows[-1]["macs_m"] == "26017 (thop)"
    # the mobile setting's 600M-MAC limit holds for ImageNet's 1,000 classes at 224x224 only
    from eldarts_cli.data.datasets import InputShape
    from eldarts_cli.engines.evaluate import _mobile_limit

    recipe = load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe)
    assert _mobile_limit(recipe, InputShape(3, 224, 1000), 700.0)["exceeds_mobile_limit"] is True
    assert _mobile_limit(recipe, InputShape(3, 224, 3), 700.0) == {}


def imagenet_style_tree(root):
    """train/ and val/ of two classes, four 40x40 images each (an ImageNet-style tree, streamed)."""
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 100 if label == "a" else 200, 30)).save(folder / f"{i}.png")


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_in_a_streamed_dataset_is_named_or_skipped(tmp_path, workers):
    """A truncated file in an ImageNet-style tree ended in "cannot use: image file is truncated" (no file named)
    or, with workers, a page of the workers' tracebacks, and data.skip_bad_images was ignored."""
    imagenet_style_tree(tmp_path / "tree")
    bad = tmp_path / "tree" / "train" / "a" / "2.png"
    bad.write_bytes(bad.read_bytes()[:60])
    overrides = [
        f"data.root={tmp_path / 'tree'}", "data.batch_size=4", "data.eval_batch_size=4", "data.image_size=32",
        f"data.num_workers={workers}", "network.channels=8", "network.layers=3", "train.epochs=1",
        "schedule.warmup_epochs=0", "runtime.threads=1",
    ]
    sets = [a for o in overrides for a in ("--set", o)]
    result = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", *sets, "--out", str(tmp_path / "run"))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and flat.count("error:") == 1 and "Traceback" not in flat, result.output
    assert f"error: {bad} cannot be decoded (" in flat and "data.skip_bad_images: true" in flat
    result = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", *sets, "--set", "data.skip_bad_images=true",
                      "--out", str(tmp_path / "skipped"))
    assert result.exit_code == 0, result.output
    assert f"1 image file of this epoch could not be decoded and was left out (data.skip_bad_images): {bad}" in \
        " ".join(result.output.split())


def test_a_corrupt_test_image_is_refused_before_training(tmp_path):
    """A file of the test split that cannot be decoded was met at the end of the first epoch, before its checkpoint:
    the epoch's training was lost (on ImageNet, hours), and nothing was left to resume. It is refused at the start."""
    imagenet_style_tree(tmp_path / "tree")
    bad = tmp_path / "tree" / "val" / "b" / "3.png"
    bad.write_bytes(bad.read_bytes()[:60])
    overrides = [
        f"data.root={tmp_path / 'tree'}", "data.batch_size=4", "data.eval_batch_size=4", "data.image_size=32",
        "data.num_workers=0", "network.channels=8", "network.layers=3", "train.epochs=1",
        "schedule.warmup_epochs=0", "runtime.threads=1",
    ]
    sets = [a for o in overrides for a in ("--set", o)]
    result = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", *sets, "--out", str(tmp_path / "run"))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and flat.count("error:") == 1 and f"error: {bad} cannot be decoded (" in flat, flat
    assert "training " not in flat.replace("before training", "") and "epoch " not in flat  # (before the first step)
    assert not (tmp_path / "run").exists()  # the same command runs it once the file is mended
    assert "reading the 8 test images once before training" in flat  # (said: on ImageNet, minutes)
    result = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", *sets, "--set", "data.skip_bad_images=true",
                      "--out", str(tmp_path / "skipped"))
    assert result.exit_code == 0, result.output


def test_an_empty_test_class_folder_is_refused_by_the_dry_run_too(tmp_path):
    """An empty class folder of val/ passed --dry-run (train/'s was refused), and the run said torchvision's
    "Found no valid file for the classes b" after building the network."""
    imagenet_style_tree(tmp_path / "tree")
    for image in (tmp_path / "tree" / "val" / "b").iterdir():
        image.unlink()
    sets = [a for o in [f"data.root={tmp_path / 'tree'}", "data.image_size=32", "network.channels=8",
                        "network.layers=3", "data.num_workers=0"] for a in ("--set", o)]
    for dry in (["--dry-run"], ["--out", str(tmp_path / "run")]):
        result = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", *sets, *dry)
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and flat.count("error:") == 1, flat
        assert f"error: {tmp_path / 'tree' / 'val'}: class folder b holds no images" in flat, flat
    assert not (tmp_path / "run").exists()


def test_timm_settings_are_checked_and_ignored_augmentation_is_named(tmp_path, tiny_eval):
    """data.interpolation=foo and data.auto_augment=foo passed validation and the dry run, and ended in timm's
    KeyError / AssertionError tracebacks at the first epoch; settings the dataset's training does not use (cutout on
    a streamed tree, whose recipe showed cutout 16 when left out; colour jitter on in-memory data) passed silently."""
    for key, value, phrase in (("interpolation", "foo", "Input should be 'bilinear', 'bicubic'"),
                               ("interpolation", "random", "Input should be 'bilinear', 'bicubic'"),
                               ("auto_augment", "foo", "'foo' is not a policy timm builds (Unknown AA policy foo)"),
                               ("auto_augment", "rand-m9-x3", "is not a policy timm builds")):
        result = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", "--dry-run", "--set", f"data.{key}={value}")
        flat = " ".join(result.output.split())
        assert result.exit_code == 2 and f"error: --set data.{key}: " in flat and phrase in flat, flat
        assert "Traceback" not in flat
    assert load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe,
                       ["data.auto_augment=rand-m9-mstd0.5"]).data.auto_augment == "rand-m9-mstd0.5"
    imagenet_style_tree(tmp_path / "tree")
    streamed = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", "--dry-run", "--set",
                        f"data.root={tmp_path / 'tree'}", "--set", "data.cutout=16", "--set", "data.crop_padding=2")
    assert streamed.exit_code == 0, streamed.output
    assert "warning: data.cutout (16) and data.crop_padding (2) are not applied to imagenet: its training batches " \
           "are made by timm's transforms" in " ".join(streamed.output.split())
    in_memory = evaluate("DARTS_V2", tiny_eval, "--dry-run", "--set", "data.color_jitter=0.2")
    assert "warning: data.color_jitter (0.2) is not applied to digits" in " ".join(in_memory.output.split())
    for recipe in ROOT.glob("recipes/eval-*.yaml"):  # the shipped ones: no word
        assert "not applied" not in evaluate("DARTS_V2", recipe, "--dry-run").output, recipe
    # a run's own recipe.yaml spells every default out: no word either (it warned of color_jitter (0.4), ...)
    from eldarts_cli.config.base import dump_recipe

    dump_recipe(load_recipe(tiny_eval, EvalRecipe), tmp_path / "written.yaml")
    assert "not applied" not in evaluate("DARTS_V2", tmp_path / "written.yaml", "--dry-run").output


def test_a_streamed_epoch_read_without_workers_is_augmented_alike_on_every_run(tmp_path):
    """With data.num_workers: 0, timm's random-resized crops and flips drew from Python's global generator, which
    nothing seeded: two runs of one recipe (and a resume) trained on other crops (epoch-1 loss 2.43 against 2.52)."""
    import random

    from PIL import Image

    noise = torch.Generator().manual_seed(0)
    for split in ("train", "val"):  # (textured: a crop or a flip of a plain image is the same image)
        for label in ("a", "b"):
            (tmp_path / "tree" / split / label).mkdir(parents=True)
            for i in range(4):
                pixels = torch.randint(0, 256, (40, 40, 3), generator=noise, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(tmp_path / "tree" / split / label / f"{i}.png")
    overrides = [
        f"data.root={tmp_path / 'tree'}", "data.batch_size=4", "data.eval_batch_size=4", "data.image_size=32",
        "data.num_workers=0", "network.channels=8", "network.layers=3", "train.epochs=1", "schedule.warmup_epochs=0",
        "runtime.threads=1", "runtime.amp=none",
    ]
    recipe = load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe, overrides)
    weights = []
    for run in ("one", "two"):
        random.seed(run)  # whatever the process drew before
        run_evaluation(recipe, GENOTYPES.get("DARTS_V2"), tmp_path / run)
        weights.append(torch.load(tmp_path / run / "weights.pt", weights_only=True)["state_dict"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "the two runs trained otherwise"


def test_imagenet_pipeline_on_an_image_folder(tmp_path):
    imagenet_style_tree(tmp_path / "tree")
    overrides = [
        f"data.root={tmp_path / 'tree'}", "data.batch_size=4", "data.eval_batch_size=4", "data.image_size=32",
        "data.num_workers=0", "network.channels=8", "network.layers=3", "train.epochs=1", "schedule.warmup_epochs=0",
        "runtime.threads=1",
    ]
    recipe = load_recipe(ROOT / "recipes/eval-imagenet.yaml", EvalRecipe, overrides)
    results = run_evaluation(recipe, GENOTYPES.get("DARTS_V2"), tmp_path / "run")
    assert results["completed"] and results["network"] == "imagenet" and results["num_classes"] == 2
    # 2 classes at 32x32 are not the paper's Table 2 (ImageNet-1k at 224x224), nor its mobile setting
    assert results["table"] is None and results["exceeds_mobile_limit"] is None
    from eldarts_cli.runs.files import EvalResults
    from eldarts_cli.runs.tables import evaluation_table

    title, _, rows = evaluation_table(EvalResults.read(tmp_path / "run"))
    assert title.startswith("this run (imagenet network on imagenet, 2 classes at 32x32; the paper's Table 2 is")
    assert len(rows) == 1
    planned = evaluate("DARTS_V2", ROOT / "recipes/eval-imagenet.yaml", *[a for o in overrides for a in ("--set", o)],
                       "--dry-run")
    assert "DARTS_V2 as an ImageNet network (not trained)" in planned.output, planned.output
    assert "mobile" not in planned.output  # (the mobile setting is 224x224)
    # the input it was trained on is recorded, as timm's transforms normalised it
    assert results["test_images"] == 8
    assert results["input_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert results["input_std"] == pytest.approx([0.229, 0.224, 0.225])
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert weights["input"]["mean"] == results["input_mean"] and weights["input"]["std"] == results["input_std"]


def test_comparison_table_marks_published_rows():
    from rich.console import Console

    from eldarts_cli.runs.files import EvalResults

    results = EvalResults(table="cifar10", dataset="cifar10", genotype="mine", test_top1_error=2.9, params_m=3.35,
                          epochs=600, name="eval", genotype_cells={}, network="cifar", channels=36, layers=20,
                          input_size=[3, 32, 32], num_classes=10, macs_m=550.0, wall_time_s=1.0, device="cpu")
    console = Console(width=200, record=True)
    console.print(comparison_table(results))
    text = console.export_text()
    assert text.count("│ published ") == 14 and "DARTS_V2 [16]" in text and "2.76 ± 0.09" in text
    assert "mine (this run)" in text and "measured" in text
    # in a narrow terminal no number or word is cut: rich had shrunk every column but the source to nothing at 40
    # columns, and broken words at 80 ("Archite|cture")
    for width in (30, 50, 80, 120):
        console = Console(width=width, record=True)
        console.print(comparison_table(results))
        text = console.export_text()
        assert all(len(line) <= width for line in text.splitlines()), width
        words = set(text.replace("│", " ").replace("┃", " ").replace(":", " ").replace(",", " ").split())
        assert {"Architecture", "published", "measured", "mine", "2.90", "3.35", "2.76", "0.09"} <= words, (width, text)


def test_a_key_value_table_too_wide_for_the_terminal_reads_key_colon_value():
    """A table without headers (the dry run's sizes), printed row by row in a narrow terminal, read ": label" and
    ": value" on two lines; its first column is the key."""
    from rich.console import Console
    from rich.table import Table

    from eldarts_cli.cli.common import FittedTable

    table = Table(show_header=False)
    table.add_row("params (M, no aux head)", "3.3493")
    table.add_row("MACs (M, thop)", "549.9")
    console = Console(width=16, record=True)
    console.print(FittedTable(table))
    text = " ".join(console.export_text().split())
    assert text == "params (M, no aux head): 3.3493 MACs (M, thop): 549.9", text


@pytest.mark.slow(seconds=25)
def test_ddp_two_cpu_processes(tmp_path, tiny_eval):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "eldarts_cli", "evaluate", "DARTS_V2", str(tiny_eval), "--out", str(out), "--json",
           "--set", "train.onnx=false", "--set", "train.epochs=1", "--set", "runtime.amp=none",
           "--set", "train.ema=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["world_size"] == 2 and results["completed"]
    # the test errors are those of the saved networks (each rank had tested with its own BatchNorm statistics)
    import eldarts_cli
    from eldarts_cli.config.base import load_recipe
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.data.datasets import load_images

    test = load_images(load_recipe(out / "recipe.yaml", EvalRecipe).data, "test")
    mean = torch.tensor(results["input_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(results["input_std"]).view(1, -1, 1, 1)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    for ema, key in ((False, "test"), (True, "ema_test")):
        with torch.no_grad():
            logits = eldarts_cli.load_trained(out, ema=ema)((test.images.float() / 255 - mean) / std)
        error = 100 * (logits.argmax(1) != test.labels).float().mean().item()
        assert error == pytest.approx(results[f"{key}_top1_error"], abs=1e-3), key
        loss = torch.nn.functional.cross_entropy(logits, test.labels).item()
        assert loss == pytest.approx(last[f"{key}_loss"], rel=1e-5), key
    assert json.loads(proc.stdout)["world_size"] == 2  # printed once, by rank 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".eldarts-run.json", "checkpoint.pt", "figures", "genotype.json", "metrics.csv", "metrics.jsonl", "recipe.yaml",
         "results.json", "weights.pt"]
    )


@pytest.mark.slow(seconds=45)
def test_a_two_process_evaluation_stopped_and_resumed_ends_as_one_never_stopped(tmp_path, tiny_eval):
    """torchrun, 2 processes: SIGTERM after epoch 1's checkpoint, then the printed resume (a torchrun launch, said
    once: it printed a one-process command, twice) ends bit for bit as the run never stopped; each rank's random
    state is kept (rank 1 had resumed with rank 0's, and the results differed). Resuming on one process is
    refused, naming the launch."""
    import signal
    import shlex

    from eldarts_cli.engines.evaluate import Evaluation
    from eldarts_cli.engines.distributed import Distributed

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sets = ["--set", "train.onnx=false", "--set", "train.epochs=3", "--set", "train.max_steps=2",
            "--set", "data.limit=128"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "eldarts_cli", "evaluate", "DARTS_V2", str(tiny_eval)]
    whole = subprocess.run([*launch, "--out", str(tmp_path / "whole"), *sets], capture_output=True, text=True,
                           env=env, timeout=240, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*launch, "--out", str(cut), *sets], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("epoch    1"):  # (printed once epoch 1's checkpoint is written)
            os.killpg(proc.pid, signal.SIGTERM)
            break
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode != 0 and (cut / "checkpoint.pt").exists() and not (cut / "results.json").exists()
    flat = " ".join(stderr.split())
    assert flat.count("continue with") == 1, stderr[-3000:]
    command = shlex.split(flat.split("continue with ", 1)[1])[:12]
    # (the launch as given, --standalone too: it was rebuilt from the process count alone)
    assert command[:6] == ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "eldarts_cli"], command
    assert "--resume" in command, command
    with pytest.raises(CheckpointError, match=r"trained by 2 process\(es\) and cannot continue on 1: resume it with "
                                              r"torchrun --nproc_per_node 2 -m eldarts_cli evaluate .*genotype.json"):
        Evaluation(load_recipe(cut / "recipe.yaml", EvalRecipe), GENOTYPES.get("DARTS_V2"), cut,
                   device=torch.device("cpu"), dist=Distributed(), resume=True, report=lambda event: None)
    resumed = subprocess.run([*launch, "--resume", str(cut)], capture_output=True, text=True, env=env, timeout=240,
                             cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "whole" / "weights.pt", weights_only=True)["state_dict"]
    b = torch.load(cut / "weights.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    ran = [json.loads(line)["train_loss"] for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert ran == [json.loads(line)["train_loss"] for line in (tmp_path / "whole" / "metrics.jsonl").read_text()
                   .splitlines()]


@pytest.mark.slow(seconds=30)
def test_one_process_of_a_launch_stopped_alone_is_said_once_with_the_resume(tmp_path, tiny_eval):
    """SIGTERM to one worker (a scheduler's or a user's): it left quietly, and rank 0, losing it, ended in a
    traceback of gloo's ("Connection closed by peer") with no word of how to continue."""
    import signal

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "eldarts_cli", "evaluate", "DARTS_V2", str(tiny_eval), "--out", str(run), "--set", "train.onnx=false",
              "--set", "train.epochs=20", "--set", "train.max_steps=2", "--set", "data.limit=128"]
    proc = subprocess.Popen(launch, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    for line in proc.stdout:
        if line.startswith("epoch    1"):  # epoch 1's checkpoint is written: stop rank 1 alone
            ranks = {}
            for child in Path("/proc").glob("[0-9]*"):
                try:  # (the launch's workers: their command line names the run folder, their environment the rank)
                    if str(run).encode() not in (child / "cmdline").read_bytes():
                        continue
                    environ = (child / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                ranks.update({int(e[5:]): int(child.name) for e in environ if e.startswith(b"RANK=")})
            os.kill(ranks[1], signal.SIGTERM)
            break
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    flat = " ".join(stderr.split())
    assert proc.returncode != 0 and "[rank0]: Traceback" not in stderr, stderr[-3000:]
    assert flat.count("error: another process of this torchrun launch ended") == 1, stderr[-3000:]
    assert "gloo" not in flat and "pair.cc" not in flat  # (its internals were quoted)
    assert flat.count("finished epochs are saved; continue with: torchrun --standalone --nproc_per_node 2 -m eldarts_cli "
                      "evaluate") == 1, stderr[-3000:]
    assert (run / "checkpoint.pt").exists()


def test_dry_runs_under_torchrun_refuse_a_batch_that_does_not_divide(tmp_path, tiny_eval, tiny_recipe):
    """--dry-run under torchrun accepted data.batch_size=63 on 2 processes, which the run refuses; it now refuses
    it too, said once (evaluate said everything twice)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "eldarts_cli"]
    for command in (["evaluate", "DARTS_V2", str(tiny_eval), "--set", "data.batch_size=63"],
                    ["search", str(tiny_recipe), "--set", "data.batch_size=31"]):
        proc = subprocess.run([*launch, *command, "--dry-run"], capture_output=True, text=True, env=env,
                              timeout=240, cwd=tmp_path)
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0 and output.count("error: data.batch_size=") == 1, output[-3000:]
        assert "is the global batch: it must divide over the 2 processes" in output


def test_json_output_is_json_alone(tmp_path, tiny_eval):
    """--json: stdout holds the results alone, as results.json has them; the progress and the results table go to
    stderr (they went to stdout, or not at all); a finished run resumed says so on stderr and prints its results
    (it printed no JSON)."""
    out = tmp_path / "run"
    result = evaluate("DARTS_V2", tiny_eval, "--out", out, "--json", "--set", "train.onnx=false")
    assert result.exit_code == 0, result.output
    written = json.loads((out / "results.json").read_text())
    assert json.loads(result.stdout) == json.loads(json.dumps(written))
    assert "training" in result.stderr and "epoch" in result.stderr
    again = evaluate("DARTS_V2", tiny_eval, "--resume", out, "--json")
    assert again.exit_code == 0, again.output
    # (pytest-xdist's workers set COLUMNS=80: the line wraps where the run folder's path ends)
    assert json.loads(again.stdout) == written and "this evaluation has finished" in " ".join(again.stderr.split())


def test_cli_resume_keeps_the_runs_own_overrides(tmp_path, tiny_eval):
    """Started with --set train.epochs=3 and resumed without it: the run's 3 epochs hold."""
    out = tmp_path / "run"
    recipe = load_recipe(tiny_eval, EvalRecipe, ["train.onnx=false", "train.epochs=3"])
    run_evaluation(recipe, GENOTYPES.get("DARTS_V2"), out, stop_after_epochs=1)
    result = evaluate("DARTS_V2", tiny_eval, "--resume", out)
    assert result.exit_code == 0, result.output
    assert "train.epochs: 3 ->" in " ".join(result.output.split())
    assert json.loads((out / "results.json").read_text())["epochs"] == 3


def test_start_line_names_the_epochs_left(capsys):
    """The training line's epoch range: "epochs 3-5", one epoch, or none left after the last checkpoint (a run
    stopped before its final test; it printed "epochs 6-5")."""
    from eldarts_cli.cli.evaluate import _progress

    event = {"event": "start", "params_m": 1.0, "macs_m": 2.0, "device": "cpu", "world_size": 1, "amp": "none",
             "channels_last": True, "steps_per_epoch": 7, "epochs": 5}
    for start, words in ((2, "epochs 3-5, 7 steps each"), (4, "epoch 5, 7 steps"),
                         (5, "every epoch was trained before: the final test remains")):
        _progress({**event, "start_epoch": start})
        assert words in capsys.readouterr().out.replace("\n", " ")


def test_final_report_gives_a_short_runs_wall_time_in_seconds(monkeypatch, tmp_path):
    """A run of under a minute printed "training wall time 0.0 min": now seconds under a minute, minutes above."""
    from rich.console import Console

    from eldarts_cli.cli import evaluate as evaluate_cli
    from eldarts_cli.runs.files import EvalResults

    lines = {}
    for seconds in (12.4, 754.0):
        results = EvalResults(table="cifar10", dataset="cifar10", genotype="mine", test_top1_error=2.9, params_m=3.35,
                              epochs=2, name="eval", genotype_cells={}, network="cifar", channels=36, layers=20,
                              input_size=[3, 32, 32], num_classes=10, macs_m=550.0, wall_time_s=seconds, device="cpu")
        console = Console(width=200, record=True)
        monkeypatch.setattr(evaluate_cli, "console", console)
        evaluate_cli._print_results(results, tmp_path, onnx_wanted=False)
        lines[seconds] = console.export_text()
    assert "training wall time 12 s (" in lines[12.4]
    assert "training wall time 12.6 min (" in lines[754.0]


def test_dry_run_says_what_the_run_refuses_at_its_start(tmp_path, tiny_eval):
    """evaluate --dry-run exited 0, saying nothing, where the run then refused at once: an --out it may not use is
    now the run's own error line, exit 2; missing data the run's message as a warning (the dry run may size a run
    for the machine that holds the data, as README's `--dry-run` on eval-cifar10.yaml does)."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    planned, ran = evaluate("DARTS_V2", tiny_eval, "--out", full, "--dry-run"), evaluate("DARTS_V2", tiny_eval, "--out", full)
    assert planned.exit_code == ran.exit_code == 2, planned.output
    line = next(line for line in ran.output.splitlines() if line.startswith("error: "))
    assert "did not create and it is not empty" in line and line in planned.output.splitlines()
    nowhere = ["--set", f"data.root={tmp_path / 'nowhere'}"]
    planned = evaluate("DARTS_V2", ROOT / "recipes/eval-cifar10.yaml", *nowhere, "--dry-run")
    ran = evaluate("DARTS_V2", ROOT / "recipes/eval-cifar10.yaml", *nowhere, "--out", tmp_path / "run")
    assert planned.exit_code == 0 and ran.exit_code == 2, ran.output
    line = next(line for line in ran.output.splitlines() if line.startswith("error: "))
    assert "cifar10 not found in" in line
    assert f"warning: {line.removeprefix('error: ')}; a run here would be refused" in planned.output.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "tiny-eval.yaml"]


def test_a_batch_above_the_training_images_is_named(tmp_path, tiny_eval):
    """data.batch_size=100000 on 1,437 images trained one step an epoch without a word (a search refuses such a
    batch): it warns now, with the step count; and a run's time under 10 s reads "0.5 s", not "0 s"."""
    from eldarts_cli.runs.tables import fmt_duration

    result = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "run", "--set", "data.limit=12",
                      "--set", "train.epochs=2", "--set", "train.onnx=false")
    assert result.exit_code == 0, result.output
    assert "warning: data.batch_size=16 is above the 12 training images: each epoch is one step of 12, 2 steps in " \
           "all; lower data.batch_size for more steps" in " ".join(result.output.split()), result.output
    assert [fmt_duration(s) for s in (0.46, 9.94, 9.96, 59.4, 150)] == ["0.5 s", "9.9 s", "10 s", "59 s", "2.5 min"]
    # its table file says which data it is on, as the console's title does (it held the row alone)
    assert (tmp_path / "run" / "figures" / "table1.md").read_text().startswith("this run (digits; the paper has no")


def test_a_last_batch_of_one_image_is_left_out(tmp_path, tiny_eval):
    """17 images at batch 16 ended the epoch in a traceback (BatchNorm of the auxiliary head on one image: "Expected
    more than 1 value per channel when training"): that batch is now left out; data.limit=1, no step at all, is one
    error line, exit 2, before any folder is made (it trained nothing and reported the untrained network)."""
    from eldarts_cli.data.datasets import ImageSet
    from eldarts_cli.data.loaders import TensorLoader

    images = ImageSet(torch.zeros(17, 1, 8, 8, dtype=torch.uint8), torch.arange(17) % 2, ["a", "b"], "t")
    loader = TensorLoader(images, 16, mean=[0.0], std=[1.0], device=torch.device("cpu"))
    assert len(loader) == 1 and [len(x) for x, _ in loader.epoch(0)] == [16]
    plain = TensorLoader(images, 16, mean=[0.0], std=[1.0], device=torch.device("cpu"), shuffle=False)
    assert len(plain) == 2 and [len(x) for x, _ in plain.epoch(0)] == [16, 1]  # testing: every image
    result = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "run", "--set", "data.limit=17",
                      "--set", "train.epochs=1", "--set", "network.auxiliary=true", "--set", "train.onnx=false")
    assert result.exit_code == 0 and "training images: each epoch is one step" not in result.output, result.output
    none = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "none", "--set", "data.limit=1")
    assert_clean_error(none, "the training images make no step at data.batch_size=16", "raise data.limit (now 1)")
    assert not (tmp_path / "none").exists()


def test_dry_run_refuses_a_training_set_that_makes_no_step(tiny_eval):
    """data.limit=1: the run refuses it (no training step); its dry run now does too, with the same line."""
    planned = evaluate("DARTS_V2", tiny_eval, "--set", "data.limit=1", "--dry-run")
    assert_clean_error(planned, "the training images make no step at data.batch_size=16", "raise data.limit (now 1)")
    assert evaluate("DARTS_V2", tiny_eval, "--set", "data.limit=2", "--dry-run").exit_code == 0


def test_an_unfinished_search_as_the_genotype_names_its_resume(tmp_path, tiny_eval, tiny_recipe):
    """GENOTYPE given as a search that was stopped before its end: the error said "a folder without genotype.json
    (is it a finished search run?)"; it now says the search has not finished and how to resume it. A folder that
    is no search keeps the old line."""
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher
    from eldarts_cli.models.genotypes import GenotypeError

    class StopAfterFirstEpoch:  # Ctrl-C in the second epoch's first step: the first epoch is checkpointed
        epoch = None

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

        def epoch_start(self, epoch, epochs, steps):
            self.epoch = epoch

        def step(self, step):
            if self.epoch == 1:
                raise KeyboardInterrupt

    search = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), search, callbacks=StopAfterFirstEpoch()).run()
    from eldarts_cli.api import load_genotype as api_load_genotype
    from eldarts_cli.core.errors import RunFolderError

    with pytest.raises(RunFolderError, match=f"{search} holds a half-written search run .* finish it first: eldarts "
                                             f"search {search / 'recipe.yaml'} --resume {search}"):
        api_load_genotype(str(search))
    result = evaluate(search, tiny_eval, "--dry-run")  # the command says it too
    assert result.exit_code == 2 and "finish it first: eldarts search" in " ".join(result.output.split())
    (tmp_path / "mine").mkdir()
    for load in (load_genotype, api_load_genotype):
        with pytest.raises(GenotypeError, match="mine is a folder without genotype.json"):
            load(str(tmp_path / "mine"))


def test_a_cell_with_a_node_nothing_reads_is_warned_of():
    """A hand-written genotype whose last node is neither in the concat nor any node's input trained, and counted
    its ops in params and MACs, without a word; ``unused_nodes_note`` names it (no zoo cell has one)."""
    from eldarts_cli.models.genotypes import Genotype

    darts = GENOTYPES.get("DARTS_V2")
    assert darts.unused_nodes_note() is None
    five = darts.model_copy(update={"normal": [*darts.normal, ("skip_connect", 4), ("skip_connect", 5)]})
    five = Genotype.model_validate(five.model_dump())
    assert five.unused_nodes_note().startswith("in normal cell state 6 nothing reads the node's output")
    assert all(GENOTYPES.get(n).unused_nodes_note() is None for n in GENOTYPES.names()
               if isinstance(GENOTYPES.get(n), Genotype))


def test_an_edited_cell_of_a_search_does_not_take_its_cost(tmp_path, tiny_recipe, tiny_eval):
    """A search's genotype.json edited by hand named another cell, and the evaluation's Table 1 row credited it
    with that search's measured cost (search-origin.json): ``search_run_of`` now gives the search only for one of
    the cells it derived."""
    from eldarts_cli.config.search import SearchRecipe
    from eldarts_cli.engines.search import Searcher
    from eldarts_cli.runs.files import search_run_of

    search = tmp_path / "search"
    Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), search).run()
    cell = load_genotype(str(search))
    assert search_run_of(search, cell) == search and search_run_of(search / "genotype.json", cell) == search
    data = json.loads((search / "genotype.json").read_text())
    data["normal"][0][0] = "max_pool_3x3" if data["normal"][0][0] != "max_pool_3x3" else "sep_conv_3x3"
    (search / "genotype.json").write_text(json.dumps(data))
    edited = load_genotype(str(search))
    assert search_run_of(search) == search  # the folder is still a finished search
    assert search_run_of(search, edited) is None  # but not this cell's
    result = evaluate(search, tiny_eval, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "is none of the cells the search in" in " ".join(result.output.split())


def test_a_searchs_summary_as_the_genotype_names_what_to_give(tmp_path, tiny_eval):
    """A search's summary.json given as GENOTYPE printed every field pydantic missed ("[normal] Field required;
    [finished] unknown key; ..."); it is now one line saying what the file is and what to give instead. A
    genotype saved under that name still loads."""
    from eldarts_cli.runs.files import SearchCost, SearchSummary

    search = tmp_path / "search"
    search.mkdir()
    cell = GENOTYPES.get("P_DARTS")
    save_genotype(cell, search / "genotype.json")
    SearchSummary(finished=True, name="s", epochs=1, device="cpu", search_seconds=1.0, torch=torch.__version__,
                  search_cost=SearchCost(unit="CPU-days", hours=1 / 3600, days=1 / 86400), genotype=cell,
                  skip_normal=0).write(search)
    result = evaluate(search / "summary.json", tiny_eval, "--dry-run")
    assert_clean_error(result, f"{search / 'summary.json'} is a search's summary, not a genotype: give its run "
                               f"folder ({search}) or its genotype.json ({search / 'genotype.json'})")
    assert "Field required" not in result.output and result.output.count("error:") == 1
    mine = tmp_path / "mine"
    mine.mkdir()
    save_genotype(cell, mine / "summary.json")
    assert evaluate(mine / "summary.json", tiny_eval, "--dry-run").exit_code == 0
    # the same for the summary given to profile-ops --from, and for an op profile given as GENOTYPE
    from eldarts_cli.engines.profile import FORMAT

    result = runner.invoke(app, ["profile-ops", "--from", str(search / "summary.json")])
    assert_clean_error(result, f"{search / 'summary.json'} is a search's summary, not an op profile: give a file "
                               "eldarts profile-ops --out wrote")
    profile = tmp_path / "p.json"
    profile.write_text(json.dumps({"format": FORMAT, "version": 1, "ops": []}))
    result = evaluate(profile, tiny_eval, "--dry-run")
    assert_clean_error(result, f"{profile} is an op profile (eldarts profile-ops --out), not a genotype")
    assert "Field required" not in result.output
    # a run's checkpoint ("not valid JSON ('utf-8' codec can't decode ...)") and an ablation folder ("a folder without
    # genotype.json (is it a finished search run?)")
    torch.save({"kind": "search"}, search / "checkpoint.pt")
    assert_clean_error(evaluate(search / "checkpoint.pt", tiny_eval, "--dry-run"),
                       f"{search / 'checkpoint.pt'} is a run's PyTorch checkpoint, not a genotype: give its run folder")
    ablation = tmp_path / "ablation"
    ablation.mkdir()
    (ablation / "ablation.json").write_text("{}")
    assert_clean_error(evaluate(ablation, tiny_eval, "--dry-run"), f"{ablation} is an ablation folder")


def test_top5_is_left_out_with_five_classes_or_fewer():
    """With 5 classes or fewer every image is in the top 5: a measured-looking 0.00% top-5 error was saved."""
    from eldarts_cli.engines.distributed import Distributed
    from eldarts_cli.engines.evaluate import score_test_set

    class Batches:
        def epoch(self, epoch):
            yield torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])

    model = torch.nn.Identity()
    few = score_test_set(model, Batches(), torch.device("cpu"), "none", Distributed(), num_classes=3)
    assert few["top5"] is None and 0 <= few["top1"] <= 100
    many = score_test_set(torch.nn.Linear(3, 10), Batches(), torch.device("cpu"), "none", Distributed(), num_classes=10)
    assert many["top5"] is not None


def test_a_folder_name_with_brackets_is_printed_as_it_is(tmp_path, tiny_eval):
    """rich read a run folder's name as markup: "runs[v2]" printed as "runs", and "e[/b]x" ended a finished
    evaluation in a traceback after results.json was written."""
    for name in ("runs[v2]", "e[/b]x"):
        result = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / name, "--set", "train.epochs=1")
        assert result.exit_code == 0 and f"run folder: {tmp_path / name}" in "".join(result.output.splitlines()), \
            result.output
        again = evaluate("DARTS_V2", tiny_eval, "--resume", tmp_path / name)
        assert again.exit_code == 0 and "this evaluation has finished" in again.output, again.output


def test_the_dry_run_and_the_results_give_sizes_to_the_same_digits(tmp_path, tiny_eval):
    """--dry-run --json rounded params_m and macs_m to 3 decimals (0.031, 6.776), results.json to 4 (0.0307,
    6.7762): one key, two values for one network."""
    info = json.loads(evaluate("DARTS_V2", tiny_eval, "--dry-run", "--json").stdout)
    result = evaluate("DARTS_V2", tiny_eval, "--out", tmp_path / "run", "--set", "train.epochs=1", "--json")
    results = json.loads(result.stdout)
    assert (info["params_m"], info["macs_m"]) == (results["params_m"], results["macs_m"])
    assert results["train_images"] == 96  # (the tiny recipe's data.limit: Table 1's row says how few)
