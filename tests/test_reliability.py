"""Issue 10: nothing lost, nothing silent, nothing executed.

One section per guarantee of the README's "Reliability" section:
1 untrusted files, 2 divergence, 3 foreign folders, 4 no dead ends,
5 bad data, 6 faults of the environment, 7 resource sanity, 8 strict types.
Faults (a crafted pickle, a full disk, a diverging step) are injected; the
networks are the suite's tiny ones.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import TINY_SEARCH
from eldarts_cli.cli import app
from eldarts_cli.config.base import dump_recipe, load_recipe
from eldarts_cli.config.evaluate import EvalRecipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.config.sections import DataConfig
from eldarts_cli.core.errors import CheckpointError, DataError, DivergenceError, RecipeError
from eldarts_cli.core.io import write_json
from eldarts_cli.data.datasets import load_images
from eldarts_cli.engines.search import Searcher
from eldarts_cli.models.genotypes import GENOTYPES
from eldarts_cli.models.network import build_network
from eldarts_cli.models.sizes import estimate_footprint
from eldarts_cli.models.supernet import Supernet
from eldarts_cli.runs.checkpoint import load_checkpoint, save_checkpoint
from eldarts_cli.runs.folders import MARKER, MetricsLogger, prepare_run_dir, run_folder_name

runner = CliRunner()

TINY_EVAL = """
name: tiny-eval
seed: 1
data: {dataset: digits, batch_size: 16, crop_padding: 1, cutout: 0, limit: 64, test_limit: 32}
network: {channels: 4, layers: 3, auxiliary: false}
train: {epochs: 2, max_steps: 2, onnx: false}
runtime: {threads: 1}
"""


@pytest.fixture
def tiny_eval(tmp_path):
    path = tmp_path / "tiny-eval.yaml"
    path.write_text(TINY_EVAL)
    return path


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error(result, code: int, *phrases: str) -> str:
    """The command failed with ``code`` and a clean ``error:`` line holding ``phrases``; no traceback."""
    out = result.output
    assert result.exit_code == code, out
    assert "Traceback" not in out and out.count("error:") == 1, out
    flat = " ".join(out.split())
    for phrase in phrases:
        assert phrase in flat, out
    return flat


def strict_json(path: Path):
    """Parse as strict JSON: a bare NaN or Infinity token fails."""
    def refuse(token):
        raise AssertionError(f"{path} holds a bare {token}")

    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line, parse_constant=refuse) for line in text.splitlines() if line.strip()]
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------
# 1. Untrusted files never execute code
# ---------------------------------------------------------------------------


class Payload:
    """Unpickling this creates ``path`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def crafted(path: Path, witness: Path, **extra) -> Path:
    torch.save({"format": 1, "kind": "search", "payload": Payload(witness), **extra}, path)
    return path


def test_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path, tiny_recipe):
    witness = tmp_path / "pwned"
    path = crafted(tmp_path / "evil.pt", witness)
    torch.load(path, weights_only=False)  # the payload works when unpickled the unsafe way...
    assert witness.exists()
    witness.unlink()
    with pytest.raises(CheckpointError, match="not an eldarts checkpoint"):  # ...and eldarts never does
        load_checkpoint(path)
    assert not witness.exists()

    run = tmp_path / "run"  # through the CLI, as a downloaded run folder would be resumed
    prepare_run_dir(run, resume=False, kind="search")
    dump_recipe(load_recipe(tiny_recipe, SearchRecipe), run / "recipe.yaml")
    crafted(run / "checkpoint.pt", witness)
    one_error(cli("search", tiny_recipe, "--resume", run), 2, "not an eldarts checkpoint")
    assert not witness.exists()


def test_foreign_torch_file_is_one_error_without_torchs_warning(tmp_path, recwarn):
    """A torch file of another program (old format, pickle protocol 4) as a checkpoint: eldarts' error alone,
    without torch's "Detected pickle protocol 4" warning ahead of it."""
    path = tmp_path / "foreign.pt"
    torch.save({"a": 1}, path, _use_new_zipfile_serialization=False, pickle_protocol=4)
    with pytest.raises(CheckpointError, match="is not an eldarts checkpoint"):
        load_checkpoint(path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_crafted_weights_and_cache_run_nothing(tmp_path, monkeypatch):
    import eldarts_cli

    witness = tmp_path / "pwned"
    folder = tmp_path / "eval"
    folder.mkdir()
    crafted(folder / "weights.pt", witness)
    with pytest.raises(CheckpointError, match="not an eldarts weights file"):
        eldarts_cli.load_trained(folder)
    assert not witness.exists()

    tree = tmp_path / "tree"  # a decoded-image cache replaced by someone else is rebuilt, not run
    make_tree(tree)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ELDARTS_CACHE", str(cache))
    config = DataConfig(dataset="imagefolder", root=tree)
    load_images(config, "train")
    (cached,) = (cache / "decoded").glob("*train*.pt")
    crafted(cached, witness)
    assert load_images(config, "train").images.shape == (6, 3, 6, 6)
    assert not witness.exists()


def test_search_and_ema_evaluation_checkpoints_load_with_weights_only(tmp_path, tiny_recipe, tiny_eval):
    """What a real checkpoint holds (optimisers, GradScaler, RNG state, timm EMA) needs no unsafe unpickling.

    The search goes into an empty folder that exists already: it is used and marked.
    """
    run = tmp_path / "search"
    run.mkdir()
    assert cli("search", tiny_recipe, "--out", run, "--set", "search.epochs=2").exit_code == 0
    assert json.loads((run / MARKER).read_text())["kind"] == "search"
    assert torch.load(run / "checkpoint.pt", weights_only=True)["kind"] == "search"
    ev = tmp_path / "eval"
    assert cli("evaluate", "DARTS_V2", tiny_eval, "--out", ev, "--set", "train.ema=true",
               "--set", "train.epochs=1").exit_code == 0
    state = load_checkpoint(ev / "checkpoint.pt", kind="evaluate")
    assert state["ema"] and state["rng"][0]["cpu"].dtype == torch.uint8 and state["world_size"] == 1


def test_an_empty_folder_of_the_users_survives_a_run_that_never_started(tmp_path, tiny_recipe, tiny_eval):
    """An empty folder made by the user and given as --out was deleted when the run stopped while starting or failed
    a start check (a batch above the images); it is left, empty and with its permissions. One eldarts made for
    such a run is still removed (the same command makes it again)."""
    for first, refused in ((["search", tiny_recipe], "data.limit=8"), (["evaluate", "DARTS_V2", tiny_eval],
                                                                      "data.limit=1")):
        mine = tmp_path / f"mine-{first[0]}"
        mine.mkdir(mode=0o750)
        mode = mine.stat().st_mode
        result = cli(*first, "--out", mine, "--set", refused)
        assert result.exit_code == 2, result.output
        assert mine.is_dir() and not any(mine.iterdir()) and mine.stat().st_mode == mode
        assert cli(*first, "--out", mine, "--set", "runtime.log_every=1").exit_code == 0  # and it takes a run
        made = tmp_path / f"made-{first[0]}"
        assert cli(*first, "--out", made, "--set", refused).exit_code == 2 and not made.exists()


# ---------------------------------------------------------------------------
# 2. Divergence stops the run, loudly, with the last good state kept
# ---------------------------------------------------------------------------


def test_diverging_search_writes_nothing_and_says_what_to_change(tmp_path, tiny_recipe):
    run = tmp_path / "run"
    flat = one_error(cli("search", tiny_recipe, "--out", run, "--set", "optim.lr=1e6"), 1,
                     "diverged in epoch 1 of 3", "Lower optim.lr", "continue with:")
    # 1e6, far above optim.lr's default: set back to the default (a tenth, 1e+05, diverged again), and the
    # architecture lr, at its usual value, left alone (it was divided by 10 every round)
    assert "--resume" in flat and "--set optim.lr=0.1" in flat and "arch_optim.lr=" not in flat.split("Lower")[1]
    assert not any((run / name).exists() for name in ("checkpoint.pt", "genotype.json", "summary.json"))
    # the command it printed finishes the run
    again = shlex.split(flat.split("continue with: ")[1])
    result = runner.invoke(app, again[1:])
    assert result.exit_code == 0, result.output
    assert strict_json(run / "summary.json")["finished"]


class Poison:
    """Search callbacks that put a NaN into one tensor at one step (a diverging step, without waiting for one)."""

    def __init__(self, epoch, step, tensor):
        self.at, self.epoch, self.tensor = (epoch, step), None, tensor
        self.searcher = None

    def epoch_start(self, epoch, epochs, steps):
        self.epoch = epoch

    def step(self, step):
        if (self.epoch, step) == self.at:
            with torch.no_grad():
                self.searcher.model.get_parameter(self.tensor).view(-1)[0] = float("nan")

    def epoch_end(self, row):
        pass


def poisoned(recipe, run, **where) -> Searcher:
    poison = Poison(**where)
    poison.searcher = Searcher(recipe, run, callbacks=poison)
    return poison.searcher


@pytest.mark.parametrize("tensor", ["alpha_normal", "classifier.weight"])
def test_divergence_keeps_the_last_finite_checkpoint_and_resumes_with_a_new_lr(tmp_path, tiny_recipe, tensor):
    run = tmp_path / "run"
    with pytest.raises(DivergenceError, match="epoch 2 of 3") as error:
        poisoned(load_recipe(tiny_recipe, SearchRecipe), run, epoch=1, step=2, tensor=tensor).run()
    # one step later the NaN is everywhere: both learning rates are named
    assert "Lower optim.lr (now 0.1) or arch_optim.lr (now 0.01)" in str(error.value)
    assert "still holds epoch 1" in str(error.value)
    assert error.value.changes == ["optim.lr=0.01", "arch_optim.lr=0.001"]
    state = load_checkpoint(run / "checkpoint.pt", kind="search")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())
    assert [row["epoch"] for row in strict_json(run / "metrics.jsonl")] == [0]
    assert not (run / "genotype.json").exists() and not (run / "summary.json").exists()

    result = cli("search", tiny_recipe, "--resume", run, "--set", "optim.lr=0.05", "--set", "arch_optim.lr=0.002")
    assert result.exit_code == 0, result.output
    rows = strict_json(run / "metrics.jsonl")
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    assert rows[0]["lr"] == pytest.approx(0.1) and rows[1]["lr"] < 0.05  # the new lr, on the same schedule
    # the run's recipe.yaml holds them now: a later interruption's resume (the printed command has no --set) goes on
    # with them, not with the lr that diverged (it did, silently, for a search; an evaluation kept them)
    resolved = load_recipe(run / "recipe.yaml", SearchRecipe)
    assert (resolved.optim.lr, resolved.arch_optim.lr) == (0.05, 0.002)


def test_divergence_advice_keeps_the_schedule_floor_below_the_new_lr(tmp_path, tiny_recipe):
    """The lr a divergence suggests (a tenth) fell below a recipe's optim.lr_min, and the resume it printed was then
    refused (an lr_min above lr); the floor is now lowered with it, and that resume runs."""
    run = tmp_path / "run"
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["optim.lr_min=0.05"])
    with pytest.raises(DivergenceError) as error:
        poisoned(recipe, run, epoch=1, step=2, tensor="classifier.weight").run()
    assert {"optim.lr=0.01", "optim.lr_min=0.01"} <= set(error.value.changes)
    assert "--set optim.lr_min=0.01" in str(error.value)
    sets = [arg for change in error.value.changes for arg in ("--set", change)]
    result = cli("search", tiny_recipe, "--resume", run, *sets)
    assert result.exit_code == 0, result.output


def test_divergence_is_seen_at_log_points_within_an_epoch(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["runtime.log_every=1"])
    with pytest.raises(DivergenceError, match="epoch 1 of 3, by step 2"):
        poisoned(recipe, tmp_path / "run", epoch=0, step=1, tensor="classifier.weight").run()


def test_a_divergence_names_a_setting_far_above_its_default_that_a_resume_cannot_change(tmp_path, tiny_recipe):
    """entropy.weight=1e30 diverged and was sent to lower arch_optim.lr and resume, which diverged again, round after
    round (entropy.weight cannot change on --resume). Such a setting is named as the likelier cause."""
    result = cli("search", tiny_recipe, "--out", tmp_path / "run", "--set", "entropy.weight=1e30")
    flat = one_error(result, 1, "diverged")
    assert "This run's entropy.weight=1e+30 (1e+33x its default, 0.001) may be the cause, and cannot change on " \
           "--resume: start again in a new --out with a value nearer the default" in flat, flat


def test_diverging_evaluation_writes_no_weights_results_or_onnx(tmp_path, tiny_eval):
    run = tmp_path / "run"
    one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--out", run, "--set", "optim.lr=1e6", "--set", "train.onnx=true"),
              1, "training diverged in epoch 1", "Lower optim.lr", "continue with: eldarts evaluate DARTS_V2")
    assert not any((run / name).exists() for name in ("weights.pt", "model.onnx", "results.json", "checkpoint.pt"))
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run, "--set", "optim.lr=0.01")
    assert result.exit_code == 0, result.output
    results = strict_json(run / "results.json")
    assert math.isfinite(results["test_top1_error"])
    assert strict_json(run / "metrics.jsonl")[0]["lr"] == pytest.approx(0.01)


def test_a_finished_run_that_learned_nothing_is_named(tmp_path, tiny_recipe, tiny_eval):
    """An lr just low enough not to diverge finished with a training loss in the thousands and chance accuracy,
    saved as a normal result without a word; the end of the run now says the network did not learn."""
    from eldarts_cli.engines.finite import not_learning

    assert not_learning(2.0, 10, 0.1) is None and not_learning(float("nan"), 10, 0.1) is None
    assert "above twice a uniform guess's (2.30 for 10 classes)" in not_learning(4.7, 10, 0.1)
    # the training loss of a network with an auxiliary head holds its term too: at weight 2, 3x a uniform guess's
    assert not_learning(9.0, 10, 0.1, auxiliary_weight=2) is None
    assert "(6.91 for 10 classes, the auxiliary head's included at weight 2)" in not_learning(14.0, 10, 0.1, 2)
    for command, sets in ((["search", tiny_recipe], ["--set", "optim.lr=1e4"]),
                          (["evaluate", "DARTS_V2", tiny_eval], ["--set", "optim.lr=1e4"])):
        result = cli(*command, "--out", tmp_path / command[0], *sets)
        flat = " ".join(result.output.split())
        assert result.exit_code == 0 and "warning: the last epoch's training loss" in flat, flat
        assert "the network did not learn" in flat and "lower optim.lr (now 10000)" in flat


def test_divergence_advice_keeps_the_warm_up_below_the_new_lr(tmp_path, tiny_eval):
    """A recipe refuses schedule.warmup_lr above optim.lr: the lr a diverged evaluation suggests (a tenth) lowers
    the warm-up's start with it, and a resume may change it (it was not a change --resume allowed)."""
    run = tmp_path / "run"
    sets = ["--set", "optim.lr=1e6", "--set", "schedule.warmup_epochs=1", "--set", "schedule.warmup_lr=5e5"]
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", run, *sets)
    assert result.exit_code == 1 and "--set optim.lr=0.025 --set schedule.warmup_lr=0.0125" in result.output, \
        result.output  # (the default lr, far below 1e6; the warm-up lowered as much: it keeps its shape)
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run, "--set", "optim.lr=0.01",
                 "--set", "schedule.warmup_lr=0.001")
    assert result.exit_code == 0, result.output
    assert strict_json(run / "metrics.jsonl")[0]["lr"] == pytest.approx(0.001)  # the warm-up's new start


def test_evaluation_resume_takes_the_new_lr(tmp_path, tiny_eval):
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "run"
    recipe = load_recipe(tiny_eval, EvalRecipe, ["train.epochs=4", "schedule.kind=step", "schedule.decay_rate=1.0"])
    run_evaluation(recipe, GENOTYPES.get("DARTS_V2"), run, stop_after_epochs=1)
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run, "--set", "optim.lr=0.003")
    assert result.exit_code == 0, result.output
    assert [round(r["lr"], 6) for r in strict_json(run / "metrics.jsonl")] == [0.025, 0.003, 0.003, 0.003]


@pytest.mark.parametrize("setting", ["optim.lr=.inf", "optim.lr=nan", "entropy.weight=-.inf", "arch_optim.betas=[.nan, 0.9]"])
def test_inf_and_nan_recipe_values_are_refused(tiny_recipe, setting):
    one_error(cli("search", tiny_recipe, "--dry-run", "--set", setting), 2, "finite number")


def test_json_files_never_hold_bare_nan(tmp_path):
    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [float("inf"), 1.0]})
    assert strict_json(tmp_path / "a.json") == {"x": None, "y": [None, 1.0]}
    logger = MetricsLogger(tmp_path)
    logger.log({"epoch": 0, "loss": float("nan")})
    assert strict_json(tmp_path / "metrics.jsonl") == [{"epoch": 0, "loss": None}]


def test_a_non_finite_checkpoint_is_never_written(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "model": {"w": torch.ones(2)}}, path)
    with pytest.raises(DivergenceError, match="inf or nan"):
        save_checkpoint({"epoch": 2, "model": {"w": torch.tensor([1.0, float("inf")])}}, path)
    assert load_checkpoint(path)["epoch"] == 1


# ---------------------------------------------------------------------------
# 3. A folder eldarts did not create is never written into
# ---------------------------------------------------------------------------


def foreign(folder: Path, *names: str) -> dict:
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_text(f"the user's own {name}")
    return {name: (folder / name).read_text() for name in names}


def test_foreign_folders_are_refused_by_search_evaluate_and_ablate(tmp_path, tiny_recipe, tiny_eval):
    cases = [
        (["search", tiny_recipe], ("metrics.csv", "recipe.yaml")),
        (["evaluate", "DARTS_V2", tiny_eval], ("weights.pt", "results.json")),
        (["ablate", ablation_recipe(tmp_path)], ("table3.md", "table3.csv")),
    ]
    for i, (command, names) in enumerate(cases):
        folder = tmp_path / f"mine{i}"
        before = foreign(folder, *names)
        one_error(cli(*command, "--out", folder), 2, "did not create")
        assert {name: (folder / name).read_text() for name in names} == before
        assert sorted(p.name for p in folder.iterdir()) == sorted(names)


def test_run_folders_from_before_the_marker_still_resume(tmp_path, tiny_recipe):
    recipe = load_recipe(tiny_recipe, SearchRecipe)
    run = tmp_path / "old"
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, run, callbacks=InterruptAt(epoch=1)).run()
    (run / MARKER).unlink()
    result = cli("search", tiny_recipe, "--resume", run)
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2" in result.output and (run / MARKER).exists()


def test_a_users_folder_with_a_recipe_yaml_is_not_taken_for_a_run(tmp_path, tiny_recipe):
    """A recipe.yaml of the user's own (with their notes, results) is no run from before markers: neither --out nor
    --resume writes there (it was taken for one, and --resume overwrote metrics.csv and recipe.yaml)."""
    root = Path(__file__).resolve().parents[1]
    for command, recipe in (("search", tiny_recipe), ("evaluate", root / "recipes" / "eval-quick.yaml")):
        folder = tmp_path / f"mine-{command}"
        folder.mkdir()
        files = {"recipe.yaml": "# my notes\n" + Path(recipe).read_text(), "metrics.csv": "epoch,acc\n1,0.5\n",
                 "genotype.json": "{}"}
        for name, text in files.items():
            (folder / name).write_text(text)
        first = [command, "DARTS_V2"] if command == "evaluate" else [command]
        one_error(cli(*first, folder / "recipe.yaml", "--out", folder), 2, "eldarts did not create")
        one_error(cli(*first, folder / "recipe.yaml", "--resume", folder), 2, "cannot resume", "holds no eldarts")
        assert {p.name: p.read_text() for p in folder.iterdir()} == files


def test_a_run_folder_is_run_by_one_process_at_a_time(tmp_path, tiny_recipe, tiny_eval):
    """Two --resume of one folder at once both ran and interleaved their epochs in metrics.jsonl. While a process
    runs a folder (here: this test holds its lock, as a running eldarts does), another is refused before it touches
    anything (not even a half-written temporary file); once the lock is gone (the process ended), it resumes."""
    from eldarts_cli.engines.evaluate import run_evaluation
    from eldarts_cli.runs.folders import run_lock

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), run, callbacks=InterruptAt(epoch=1)).run()
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained, stop_after_epochs=1)
    for folder, first in ((run, ["search", tiny_recipe]), (trained, ["evaluate", "DARTS_V2", tiny_eval])):
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        stale = folder / ".checkpoint.pt.inflight.tmp"  # the running process's write in progress
        stale.write_bytes(b"half")
        with run_lock(folder):
            one_error(cli(*first, "--resume", folder), 2, "being run by another eldarts process")
            # its dry run said nothing of it (it printed the resume plan, exit 0)
            one_error(cli(*first, "--resume", folder, "--dry-run"), 2, "being run by another eldarts process")
        assert stale.exists()
        stale.unlink()
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
        result = cli(*first, "--resume", folder)
        assert result.exit_code == 0, result.output


def test_a_damaged_checkpoint_is_named_with_the_command_that_starts_the_run_again(tmp_path, tiny_recipe, tiny_eval):
    """A checkpoint cut short (a disk fault, a copy): one error line naming the file as damaged (it was "not an
    eldarts checkpoint" with torch's paragraph of advice, and no way on), the command that starts the same run in
    a new folder, which works; the damaged folder is left as it was."""
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), run, callbacks=InterruptAt(epoch=1)).run()
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained, stop_after_epochs=1)
    for folder, first, what in ((run, ["search", tiny_recipe], "search"),
                                (trained, ["evaluate", "DARTS_V2", tiny_eval], "evaluation")):
        checkpoint = folder / "checkpoint.pt"
        checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        flat = one_error(cli(*first, "--resume", folder), 2, f"{checkpoint} is damaged: corrupted or truncated",
                         f"start the {what} again in a new folder:")
        # its dry run refuses it too, with the same way on (it named the damage alone)
        assert one_error(cli(*first, "--resume", folder, "--dry-run"), 2, f"{checkpoint} is damaged") == flat
        assert "internal miniz error" not in flat  # torch's advice, beyond the line that says what failed
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
        again = shlex.split(flat.split("in a new folder:")[1])
        assert again[0] == "eldarts" and again[again.index("--out") + 1] == f"{folder}-2"
        result = runner.invoke(app, again[1:])
        assert result.exit_code == 0, result.output
        assert (tmp_path / f"{folder.name}-2" / ("summary.json" if what == "search" else "results.json")).exists()


def test_a_checkpoint_with_changed_bytes_or_a_nan_is_named_damaged(tmp_path, tiny_recipe):
    """Bytes changed inside a tensor's storage (torch's zip reader skips the checksums) or a NaN put in loaded
    without a word: the resume diverged at once and blamed the learning rate, at every lower one, calling the
    checkpoint "the last finite state". Both are damage, named with the command that starts the run again."""
    from eldarts_cli.core.errors import DamagedCheckpoint
    from eldarts_cli.runs.checkpoint import load_checkpoint

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), run, callbacks=InterruptAt(epoch=1)).run()
    checkpoint = run / "checkpoint.pt"
    whole = checkpoint.read_bytes()
    state = torch.load(checkpoint, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() >= 64)
    state["model"][name].view(-1)[0] = float("nan")
    torch.save(state, checkpoint)  # (a valid archive: torch's own checksums are right)
    one_error(cli("search", tiny_recipe, "--resume", run), 2,
              f"{checkpoint} is damaged: model.{name} hold inf or nan", "start the search again in a new folder:")
    # 16 bytes flipped inside the largest tensor's stored data, in place
    import zipfile

    with zipfile.ZipFile(io.BytesIO(whole)) as archive:
        member = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
    offset = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra) + member.file_size // 2
    flipped = bytearray(whole)
    flipped[offset:offset + 16] = bytes(b ^ 0xFF for b in flipped[offset:offset + 16])
    checkpoint.write_bytes(bytes(flipped))
    torch.load(checkpoint, weights_only=True)  # torch's reader takes it
    with pytest.raises(DamagedCheckpoint, match=r"is damaged: its stored checksum does not match member "):
        load_checkpoint(checkpoint, kind="search")
    checkpoint.write_bytes(whole)
    assert load_checkpoint(checkpoint, kind="search")["epoch"] == 1


def test_a_checkpoint_cut_at_any_length_is_named_damaged(tmp_path):
    """Cut to some lengths (5,000 to 50,000 bytes of a larger file), torch's reader raised "[Errno 22] Invalid
    argument" and the resume said "cannot read ...: Invalid argument" with no way on; every cut is damage."""
    from eldarts_cli.core.errors import CheckpointError, DamagedCheckpoint
    from eldarts_cli.core.io import load_tensors

    whole = tmp_path / "whole.pt"
    torch.save({"weights": torch.randn(200_000)}, whole)
    data = whole.read_bytes()
    for size in (1_000, 5_000, 10_000, 50_000, 200_000, len(data) - 1_000):
        cut = tmp_path / f"cut-{size}.pt"
        cut.write_bytes(data[:size])
        with pytest.raises(DamagedCheckpoint, match="is damaged: corrupted or truncated"):
            load_tensors(cut, what="an eldarts checkpoint", error=CheckpointError, damaged=DamagedCheckpoint)


def test_a_damaged_summary_stops_the_resume_of_a_finished_search(tmp_path, tiny_recipe):
    """A finished search whose summary.json is damaged: --resume said "resuming at epoch 3 of 2" and wrote the
    summary over it. It now stops with one error line naming the file and what to do, writing nothing; once the
    file is moved away, the resume writes the same summary from the last checkpoint and says so."""
    run = tmp_path / "run"
    assert cli("search", tiny_recipe, "--out", run, "--set", "search.epochs=2").exit_code == 0
    summary = strict_json(run / "summary.json")
    (run / "summary.json").write_text(json.dumps(summary)[:50])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for dry in ([], ["--dry-run"]):  # (the dry run said "resuming", exit 0)
        one_error(cli("search", tiny_recipe, "--resume", run, *dry), 2, f"{run / 'summary.json'} is not valid JSON",
                  "its summary is damaged", f"move {run / 'summary.json'} away and resume again")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    (run / "summary.json").rename(tmp_path / "damaged.json")
    result = cli("search", tiny_recipe, "--resume", run)
    assert result.exit_code == 0, result.output
    assert "every epoch was searched before" in result.output and "resuming at epoch" not in result.output
    again = strict_json(run / "summary.json")
    assert again["genotype"] == summary["genotype"] and again["search_seconds"] == summary["search_seconds"]
    # a non-finite number edited in (eldarts writes strict JSON) is damage, not a figure: report printed
    # "nan CPU-days" as measured
    (run / "summary.json").write_text(json.dumps({**again, "search_cost": {**again["search_cost"], "days": "NaN"}})
                                      .replace('"NaN"', "NaN"))
    one_error(cli("report", run), 2, f"{run / 'summary.json'} is not valid JSON",
              "NaN is not a number eldarts writes")


def test_a_non_finite_number_in_a_jsonl_file_is_refused_with_its_line(tmp_path):
    """read_json refused NaN and Infinity, but metrics.jsonl and alphas.jsonl were read with Python's lenient
    reader: report drew an edited "train_loss": NaN as measured. The line is named, as a damaged file; a line cut
    by a kill (no valid JSON) is still skipped."""
    from eldarts_cli.core.errors import RunFolderError
    from eldarts_cli.runs.files import SearchCost, SearchSummary
    from eldarts_cli.runs.folders import read_metrics

    run = tmp_path / "run"
    run.mkdir()
    cell = GENOTYPES.get("P_DARTS")
    SearchSummary(finished=True, name="s", epochs=2, device="cpu", search_seconds=1.0, torch=torch.__version__,
                  search_cost=SearchCost(unit="CPU-days", hours=1 / 3600, days=1 / 86400), genotype=cell,
                  skip_normal=0).write(run)
    rows = ['{"epoch": 0, "train_loss": 2.3}', '{"epoch": 1, "train_loss": 2.2}', '{"epoch": 2, "train_lo']
    (run / "metrics.jsonl").write_text("\n".join(rows))
    assert [row["epoch"] for row in read_metrics(run)] == [0, 1]  # the cut line skipped
    for token in ("NaN", "Infinity", "-Infinity"):
        (run / "metrics.jsonl").write_text("\n".join([rows[0], rows[1].replace("2.2", token), rows[2]]))
        with pytest.raises(RunFolderError, match=f"metrics.jsonl, line 2: {token} is not a number eldarts writes"):
            read_metrics(run)
    one_error(cli("report", run), 2, f"{run / 'metrics.jsonl'}, line 2: -Infinity is not a number eldarts writes",
              "the file is damaged")


def test_a_resume_warns_of_epochs_missing_from_the_metrics(tmp_path, tiny_recipe, tiny_eval):
    """Rows of saved epochs deleted from metrics.jsonl (by hand, or a damaged file): the resume went on without a
    word and the run's curves and tables lacked them. It now says which epochs (counted from 1) are missing."""
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), run, callbacks=InterruptAt(epoch=2)).run()
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained, stop_after_epochs=1)
    for folder, first, saved in ((run, ["search", tiny_recipe], 2), (trained, ["evaluate", "DARTS_V2", tiny_eval], 1)):
        metrics = folder / "metrics.jsonl"
        lines = metrics.read_text().splitlines(keepends=True)
        assert len(lines) == saved
        metrics.write_text("".join(lines[1:]))  # the first epoch's row deleted
        result = cli(*first, "--resume", folder)
        assert result.exit_code == 0, result.output
        assert (f"warning: {metrics} has no row for 1 of the {saved} epochs saved before (epoch 1)"
                in " ".join(result.stderr.split())), result.output


def test_profile_outputs_are_not_overwritten_without_force(tmp_path):
    from test_profile import known_profile

    from eldarts_cli.engines.profile import save_profile

    source = tmp_path / "profile.json"
    save_profile(known_profile(), source)
    for flag, name in (("--out", "out.json"), ("--emit-space", "space.yaml"), ("--plot", "chart.png")):
        target = tmp_path / name
        target.write_text("the user's")
        args = ["profile-ops", "--from", source, flag, target, "--budget-macs", "1"]
        one_error(cli(*args), 2, f"{flag} {target} exists", "--force")
        assert target.read_text() == "the user's"
        result = cli(*args, "--force")
        assert result.exit_code == 0, result.output
        assert target.read_bytes() != b"the user's"


def test_an_empty_out_or_resume_is_refused(tmp_path, tiny_recipe, tiny_eval, monkeypatch):
    """``--out ''`` was read as the current folder (``Path("")``), shown as ".", and a search ran into it;
    search, evaluate and ablate now refuse an empty ``--out`` or ``--resume`` with one line."""
    monkeypatch.chdir(tmp_path)
    commands = [["search", tiny_recipe], ["evaluate", "DARTS_V2", tiny_eval], ["ablate", ablation_recipe(tmp_path)]]
    for command in commands:
        for option in ("--out", "--resume"):
            one_error(cli(*command, option, "", "--dry-run"), 2, f"Invalid value for '{option}'", "an empty path")
    one_error(cli("search", tiny_recipe, "--out", ""), 2, "an empty path")
    one_error(cli("report", ""), 2, "Invalid value for 'FOLDER'", "an empty path")  # it said ". holds no run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.yaml", "base.yaml", "tiny-eval.yaml", "tiny.yaml"]


def test_an_out_through_a_dangling_link_is_refused(tmp_path, tiny_recipe, tiny_eval):
    """A symbolic link to a missing target as ``--out`` (or above it) was "cannot create the run folder link: File
    exists"; it is named as such, for search, evaluate and ablate, dry run or not, and nothing is created."""
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    commands = [["search", tiny_recipe], ["evaluate", "DARTS_V2", tiny_eval], ["ablate", ablation_recipe(tmp_path)]]
    for command in commands:
        for out, dry in ((link, ["--dry-run"]), (link, []), (link / "run", [])):
            one_error(cli(*command, "--out", out, *dry), 2, f"{link}", f"is a symbolic link to {tmp_path / 'gone'}, "
                      "which does not exist; eldarts does not create a run folder through it")
        one_error(cli(*command, "--resume", link), 2, f"cannot resume: {link} is a symbolic link")
    assert not (tmp_path / "gone").exists() and link.is_symlink()


def test_a_recipe_name_cannot_leave_the_runs_folder(tmp_path, tiny_recipe):
    one_error(cli("search", tiny_recipe, "--set", "name=../../x", "--dry-run"), 2, "[name]", "plain folder name")
    assert run_folder_name("eval", "../../../x") == "eval-x"
    assert run_folder_name("a/b", "..") == "a-b"


# ---------------------------------------------------------------------------
# 4. No dead ends
# ---------------------------------------------------------------------------


class InterruptAt:
    """Search callbacks raising KeyboardInterrupt (as Ctrl-C) at a step of an epoch."""

    def __init__(self, epoch, step=1):
        self.at, self.epoch = (epoch, step), None

    def epoch_start(self, epoch, epochs, steps):
        self.epoch = epoch

    def step(self, step):
        if (self.epoch, step) == self.at:
            raise KeyboardInterrupt

    def epoch_end(self, row):
        pass


def hinted_command(output: str) -> list[str]:
    """The ``eldarts ...`` command printed after "continue with"."""
    line = [ln for ln in output.splitlines() if ln.strip().startswith("eldarts ") or "continue with: eldarts" in ln][-1]
    words = shlex.split(line.split("continue with:")[-1])
    assert words[0] == "eldarts"
    return words[1:]


def test_ctrl_c_before_the_first_checkpoint_prints_a_command_that_works(tmp_path, tiny_recipe, monkeypatch):
    def interrupted(self, epoch):
        raise KeyboardInterrupt

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "run_epoch", interrupted)
        result = cli("search", tiny_recipe, "--out", run, "--set", "search.epochs=2")
    assert result.exit_code == 130 and not (run / "checkpoint.pt").exists()
    assert result.output.count("interrupted") == 1  # the line with the command, not a second one
    # a message for people: on stderr (it was on stdout), so that stdout holds a command's results alone
    assert "continue with" in result.stderr and "interrupted" not in result.stdout
    again = hinted_command(result.output)
    assert again[:2] == ["search", str(tiny_recipe)] and "--resume" in again
    stale = run / ".checkpoint.pt.k1ll3d_x.tmp"  # what a process killed mid-write leaves (never read)
    stale.write_bytes(b"half")
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "starting from epoch 1" in result.output and strict_json(run / "summary.json")["epochs"] == 2
    assert not stale.exists()  # removed on resuming
    # stopped while drawing its figures: resuming the finished run draws them
    shutil.rmtree(run / "figures")
    result = runner.invoke(app, again)
    assert result.exit_code == 0 and "has finished" in result.output and "figures were missing" in result.output
    assert (run / "figures" / "table1.md").exists() and (run / "figures" / "cell_normal.png").exists()


def test_sigterm_inside_a_command_is_an_interrupt_and_the_default_after():
    """cli.common.sigterm_as_interrupt: SIGTERM raises Terminated (a KeyboardInterrupt: every Ctrl-C path saves
    and hints alike), exit 143 rather than 130; outside, SIGTERM's default action is back; a handler someone else
    installed is left alone."""
    import signal

    from eldarts_cli.cli.common import Terminated, sigterm_as_interrupt, stopped_by

    with pytest.raises(Terminated), sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert stopped_by(Terminated()) == ("terminated (SIGTERM)", 143)
    assert stopped_by(KeyboardInterrupt()) == ("interrupted", 130)
    # SIGHUP (the terminal or ssh session closed) likewise: it ended the run silently, exit 129, no command
    with pytest.raises(Terminated) as stopped, sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(1000):
            pass
    assert stopped_by(stopped.value) == ("terminated (SIGHUP)", 129)
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # (nohup's: left alone)
    try:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(1000):
                pass
    finally:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    seen = []
    signal.signal(signal.SIGTERM, lambda *args: seen.append(args[0]))
    try:
        with sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.slow(seconds=35)
def test_sigterm_stops_a_search_that_the_printed_command_continues(tmp_path, tiny_recipe):
    """A scheduler's SIGTERM (time limit, preemption) after the first checkpoint: exit 143, "terminated
    (SIGTERM)" with the command that continues the run, which finishes it (the run was silently killed before)."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "eldarts_cli", "search", str(tiny_recipe), "--set", "search.epochs=6"]
    proc = subprocess.Popen(cmd + ["--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert not (run / "genotype.json").exists(), "stopped too late to test anything"
    assert proc.returncode == 143, out + err
    assert "terminated (SIGTERM): finished epochs are saved; continue with" in err and "interrupted" not in err
    assert "continue with" not in out  # for people: on stderr
    again = hinted_command(err)
    assert again[:2] == ["search", str(tiny_recipe)] and "--resume" in again
    resumed = subprocess.run([sys.executable, "-m", "eldarts_cli", *again], env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert strict_json(run / "summary.json")["epochs"] == 6


def test_ctrl_c_while_a_resume_starts_prints_the_command_that_continues(tmp_path, tiny_recipe, monkeypatch):
    """Stopped while a resumed search builds its supernet and loads its data (before the epoch loop): the
    continue command is printed (it was "interrupted" alone) and the folder is kept; the command finishes it."""
    run = tmp_path / "run"
    run_epoch = Searcher.run_epoch

    def stop_in_the_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "run_epoch", stop_in_the_second_epoch)
        result = cli("search", tiny_recipe, "--out", run, "--set", "search.epochs=2")
    assert result.exit_code == 130 and (run / "checkpoint.pt").exists(), result.output
    original = Searcher.__init__

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "__init__", interrupted)
        result = cli("search", tiny_recipe, "--resume", run, "--set", "search.epochs=2")
    assert result.exit_code == 130 and result.output.count("interrupted") == 1, result.output
    again = hinted_command(result.output)
    assert again[:2] == ["search", str(tiny_recipe)] and again[again.index("--resume") + 1] == str(run)
    assert (run / "checkpoint.pt").exists() and Searcher.__init__ is original
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2 of 2" in result.output and strict_json(run / "summary.json")["epochs"] == 2


def test_evaluate_prints_a_working_command_on_ctrl_c(tmp_path, tiny_eval, monkeypatch):
    from eldarts_cli.engines.evaluate import Evaluation

    original = Evaluation.train_epoch

    def interrupted(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Evaluation, "train_epoch", interrupted)
        result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", run)
    assert result.exit_code == 130
    assert "continue with" in result.stderr and "continue with" not in result.stdout
    again = hinted_command(result.output)
    assert again[:3] == ["evaluate", "DARTS_V2", str(tiny_eval)]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output.lower() or (run / "results.json").exists()
    assert [r["epoch"] for r in strict_json(run / "metrics.jsonl")] == [1, 2]
    shutil.rmtree(run / "figures")  # stopped while drawing them: resuming the finished run draws them
    result = runner.invoke(app, again)
    assert result.exit_code == 0 and "figures were missing" in result.output
    assert (run / "figures" / "table1.md").exists()


def redraw_command(output: str) -> list[str]:
    """The ``eldarts report ...`` command printed for figures that were not all drawn."""
    line = [ln for ln in output.splitlines() if "eldarts report " in ln][-1]
    words = shlex.split(line[line.index("eldarts report "):])
    return words[1:]


@pytest.mark.parametrize("kind", ["search", "evaluation"])
def test_a_stop_while_the_final_figures_are_drawn_says_the_results_are_saved(tmp_path, tiny_recipe, tiny_eval,
                                                                              monkeypatch, kind):
    """Ctrl-C (search) or SIGTERM (evaluate) after the last epoch, while the figures are drawn: the run has
    finished and its results are written, so the hint is the command that draws the figures (it was
    "interrupted" alone); the exit status stays the interrupt's; that command draws them."""
    import eldarts_cli.runs.figures as figures
    from eldarts_cli.cli.common import Terminated

    signal_, first, done, word, code = {
        "search": (KeyboardInterrupt, ["search", tiny_recipe], "summary.json", "interrupted", 130),
        "evaluation": (Terminated, ["evaluate", "DARTS_V2", tiny_eval], "results.json", "terminated (SIGTERM)", 143),
    }[kind]
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(figures, "plot_genotype", lambda *args, **kwargs: (_ for _ in ()).throw(signal_()))
        result = cli(*first, "--out", run)
    assert result.exit_code == code and (run / done).exists(), result.output
    assert not (run / "figures" / "table1.md").exists()
    flat = " ".join(result.stderr.split())
    assert f"{word}: the {kind} has finished and its results are saved in {run}; its figures were not all drawn; " \
           "draw them with" in flat, result.output
    assert " ".join(result.output.split()).count(word) == 1 and "continue with" not in result.output
    again = redraw_command(result.stderr)
    assert again == ["report", str(run)]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output
    assert (run / "figures" / "table1.md").exists() and (run / "figures" / "cell_normal.png").exists()


@pytest.mark.parametrize("kind", ["search", "evaluation"])
def test_a_stop_while_the_results_are_printed_says_the_run_has_finished(tmp_path, tiny_recipe, tiny_eval,
                                                                         monkeypatch, kind):
    """SIGTERM or Ctrl-C in the second after the last epoch, its figures drawn, while its results were printed:
    "terminated (SIGTERM)" alone (exit 143), as if the run had not finished; it now says that it has, where its
    results are and the command that prints them. The exit status stays the interrupt's."""
    import eldarts_cli.cli.evaluate as evaluate_cli
    import eldarts_cli.cli.search as search_cli
    from eldarts_cli.cli.common import Terminated

    module, name, signal_, first, done, word, code = {
        "search": (search_cli, "margins_line", Terminated, ["search", tiny_recipe], "summary.json",
                   "terminated (SIGTERM)", 143),
        "evaluation": (evaluate_cli, "_print_results", KeyboardInterrupt, ["evaluate", "DARTS_V2", tiny_eval],
                       "results.json", "interrupted", 130),
    }[kind]
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(module, name, lambda *args, **kwargs: (_ for _ in ()).throw(signal_()))
        result = cli(*first, "--out", run)
    assert result.exit_code == code and (run / done).exists() and (run / "figures" / "table1.md").exists()
    flat = " ".join(result.stderr.split())
    assert f"{word}: the {kind} has finished and its results are saved in {run}; print them with eldarts report " \
           f"{run}" in flat, result.output
    assert " ".join(result.output.split()).count(word) == 1 and "continue with" not in result.output


def test_a_stop_in_the_first_second_prints_the_command_again(tmp_path, tiny_recipe, monkeypatch):
    """Ctrl-C or SIGTERM in a command's first second (its imports, reading the recipe), before the run's own hints
    take over, said "interrupted" alone; a search or evaluation now prints the same command again (as typed, in
    the eldarts script or python -m eldarts_cli; not in a torchrun worker). Other commands say the word alone."""
    import eldarts_cli.config.base as base
    from eldarts_cli.cli.common import Terminated

    run = tmp_path / "my run"
    args = ["search", str(tiny_recipe), "--out", str(run), "--set", "search.epochs=2"]
    monkeypatch.setattr(base, "load_given_recipe", lambda *a, **k: (_ for _ in ()).throw(Terminated()))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/eldarts", *args])
    result = cli(*args)
    assert result.exit_code == 143 and not run.exists(), result.output
    flat = " ".join(result.output.split())
    assert "terminated (SIGTERM): nothing was saved yet; start it again with " in flat, flat
    assert shlex.split(flat.split("again with ", 1)[1]) == ["eldarts", *args]
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker: the word alone (the launch is torchrun's)
    assert "start it again" not in cli(*args).output
    # report stopped while drawing said "terminated (SIGTERM)" alone: its files may be part-drawn, and the same
    # command draws them again
    import eldarts_cli.runs.figures as figures

    monkeypatch.delenv("WORLD_SIZE")
    Searcher(load_recipe(tiny_recipe, SearchRecipe), tmp_path / "done").run()
    monkeypatch.setattr(figures, "write_search_report", lambda *a, **k: (_ for _ in ()).throw(Terminated()))
    monkeypatch.setattr(sys, "argv", ["/venv/bin/eldarts", "report", str(tmp_path / "done")])
    result = cli("report", tmp_path / "done")
    flat = " ".join(result.output.split())
    assert result.exit_code == 143 and "terminated (SIGTERM): the figures and tables may be part-drawn; draw them " \
        f"again with eldarts report {tmp_path / 'done'}" in flat, flat


def test_a_new_run_stopped_while_starting_prints_the_command_that_starts_it(tmp_path, tiny_recipe, tiny_eval,
                                                                          monkeypatch):
    """Stopped before a new run's folder holds anything (building the network, loading data): the hint is the
    command again, with its --out and --set values (an evaluation printed a --resume of a folder that did not
    exist; a search printed "interrupted" alone); that command runs the whole run."""
    from eldarts_cli.engines.evaluate import Evaluation

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    for cls, first in ((Evaluation, ["evaluate", "DARTS_V2", tiny_eval]), (Searcher, ["search", tiny_recipe])):
        run = tmp_path / cls.__name__
        with monkeypatch.context() as patch:
            patch.setattr(cls, "__init__", interrupted)
            result = cli(*first, "--out", run, "--set", "runtime.log_every=1")
        assert result.exit_code == 130 and result.output.count("interrupted") == 1, result.output
        assert "nothing was saved yet; start it again with" in " ".join(result.output.split())
        again = hinted_command(result.output)
        assert again == [str(a) for a in first] + ["--out", str(run), "--set", "runtime.log_every=1"]
        result = runner.invoke(app, again)
        assert result.exit_code == 0, result.output


def test_ablate_hint_keeps_the_set_values(tmp_path, monkeypatch):
    recipe = ablation_recipe(tmp_path)
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "run_epoch", lambda self, epoch: (_ for _ in ()).throw(KeyboardInterrupt))
        result = cli("ablate", recipe, "--out", out, "--set", "runtime.threads=1", "--set", "search.val_batches=1")
    assert result.exit_code == 130
    assert "continue with" in result.stderr and "continue with" not in result.stdout
    again = hinted_command(result.output)
    assert again[-4:] == ["--set", "runtime.threads=1", "--set", "search.val_batches=1"]
    result = runner.invoke(app, again)
    assert result.exit_code == 0, result.output


def test_a_started_run_without_its_recipe_says_how_to_resume(tmp_path, tiny_recipe):
    """recipe.yaml deleted from a half-finished search: --resume said "the run never started; start it with --out",
    and --out said "already holds a search run; resume it" (a loop); --resume now says to put the recipe back."""
    run = tmp_path / "run"
    Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), run).run()
    for name in ("summary.json", "genotype.json"):  # as a search stopped after its last checkpoint leaves it
        (run / name).unlink()
    recipe = (run / "recipe.yaml").read_text()
    (run / "recipe.yaml").unlink()
    one_error(cli("search", tiny_recipe, "--resume", run), 2, "holds a checkpoint but no recipe.yaml",
              f"put the run's recipe back as {run / 'recipe.yaml'}")
    (run / "recipe.yaml").write_text(recipe)
    assert cli("search", tiny_recipe, "--resume", run).exit_code == 0


def test_resuming_a_finished_run_says_so(tmp_path, tiny_recipe, tiny_eval):
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "run"
    Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), run).run()
    result = cli("search", tiny_recipe, "--resume", run)
    assert result.exit_code == 0 and "has finished; nothing to resume" in " ".join(result.output.split())
    ev = tmp_path / "ev"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), ev)
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", ev)
    assert result.exit_code == 0 and "has finished; nothing to resume" in " ".join(result.output.split())


def test_a_folder_left_by_a_run_killed_before_it_wrote_anything_is_reused(tmp_path, tiny_recipe):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text('{"kind": "search"}')  # killed while loading data
    result = cli("search", tiny_recipe, "--resume", folder)
    one_error(result, 2, "never started", f"--out {folder}")
    Searcher(load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"]), folder).run()  # what --out does
    assert json.loads((folder / "summary.json").read_text())["finished"]


# ---------------------------------------------------------------------------
# 5. Bad data
# ---------------------------------------------------------------------------


def make_tree(root: Path, classes=("cat", "dog"), test_classes=None, size=6, per_class=3):
    for split, names in (("train", classes), ("test", test_classes or classes)):
        for c, name in enumerate(names):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (40 * c + i, 0, 255 - i)).save(folder / f"{i}.jpg")


def test_corrupt_images_are_named_and_can_be_skipped(tmp_path):
    make_tree(tmp_path / "tree", per_class=4)
    first = tmp_path / "tree" / "train" / "cat" / "1.jpg"
    first.write_bytes(first.read_bytes()[:40])  # truncated
    (tmp_path / "tree" / "train" / "dog" / "2.jpg").write_bytes(b"not an image")
    config = DataConfig(dataset="imagefolder", root=tmp_path / "tree")
    with pytest.raises(DataError, match=r"2 of 8 image files cannot be decoded: .*cat/1\.jpg.*skip_bad_images"):
        load_images(config, "train")
    with pytest.warns(UserWarning, match="skipped 2 of 8"):
        ds = load_images(config.model_copy(update={"skip_bad_images": True}), "train")
    assert len(ds) == 6 and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_truncated_archive_is_one_error_and_leaves_nothing(tmp_path, monkeypatch):
    make_tree(tmp_path / "tree")
    archive = tmp_path / "tree.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="tree")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    cache = tmp_path / "cache"
    monkeypatch.setenv("ELDARTS_CACHE", str(cache))
    with pytest.raises(DataError, match="ends early"):
        load_images(DataConfig(dataset="imagefolder", root=cut), "train")
    assert not cache.exists() or not any(cache.rglob("*"))  # nothing of it written (read in place, not extracted)


def test_a_run_refused_at_its_start_leaves_no_folders_above_its_own(tmp_path, tiny_recipe, tiny_eval):
    """--out deep/a/b/c refused at its start removed c and left deep/a/b (and a default run an empty runs/); the
    folders eldarts made for it go with it, where nothing else was put there; folders that were there stay."""
    (tmp_path / "kept").mkdir()
    make_tree(tmp_path / "kept" / "tree", classes=("a", "b", "c"), test_classes=("a", "c"))
    refused = {"search": ["--set", "data.limit=5"],  # (more than half a batch)
               "evaluate": ["--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'kept' / 'tree'}",
                            "--set", "data.limit=null", "--set", "data.test_limit=null"]}  # (classes that differ)
    for first, out in ((["search", tiny_recipe], tmp_path / "deep" / "a" / "b"),
                       (["evaluate", "DARTS_V2", tiny_eval], tmp_path / "kept" / "x" / "y")):
        one_error(cli(*first, "--out", out, *refused[first[0]]), 2)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["kept", tiny_eval.name, tiny_recipe.name])
        assert [p.name for p in (tmp_path / "kept").iterdir()] == ["tree"]


def test_train_and_test_classes_must_match(tmp_path, tiny_eval):
    make_tree(tmp_path / "tree", classes=("a", "b", "c"), test_classes=("a", "c"))
    for dry in ([], ["--dry-run"]):  # the dry run passed it (README: refused, --dry-run included)
        one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--out", tmp_path / "run", "--set", "data.dataset=imagefolder",
                      "--set", f"data.root={tmp_path / 'tree'}", "--set", "data.limit=null",
                      "--set", "data.test_limit=null", *dry),
                  2, "different class folders", "only in train: b")
    assert not (tmp_path / "run").exists()


def test_a_resume_on_other_data_is_refused(tmp_path, tiny_eval, tiny_recipe, monkeypatch):
    """data.root may change on --resume (a dataset moved); pointed at another tree it failed in load_state_dict
    with a traceback (other classes) or went on training the saved network on other images (another size)."""
    import shutil

    from eldarts_cli.engines.evaluate import run_evaluation

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "a")
    make_tree(tmp_path / "three", classes=("cat", "dog", "emu"))
    make_tree(tmp_path / "big", size=8)
    shutil.copytree(tmp_path / "a", tmp_path / "moved")
    tree = ["data.dataset=imagefolder", "data.limit=null", "data.test_limit=null", "data.cutout=0",
            "data.batch_size=4"]
    run = tmp_path / "run"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe, [*tree, f"data.root={tmp_path / 'a'}"]),
                   GENOTYPES.get("DARTS_V2"), run, stop_after_epochs=1)
    sets = [arg for item in tree for arg in ("--set", item)]
    for other, said in (("three", "3 classes of 3x6x6 images, the run was trained on 2 classes of 3x6x6"),
                        ("big", "2 classes of 3x8x8 images, the run was trained on 2 classes of 3x6x6")):
        one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run, *sets, "--set",
                      f"data.root={tmp_path / other}"), 2, f"cannot resume {run}: its data now holds {said}")
    # a tree grown since (images added to a class): the images of each half reshuffled, without a word
    shutil.copytree(tmp_path / "a", tmp_path / "grown")
    for i in range(3, 6):
        Image.new("RGB", (6, 6), (i, 9, 9)).save(tmp_path / "grown" / "train" / "cat" / f"{i}.jpg")
    one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run, *sets, "--set",
                  f"data.root={tmp_path / 'grown'}"), 2,
              f"cannot resume {run}: its training data now holds 9 images, the run was trained on 6 (before "
              "data.limit)")
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run, *sets, "--set", f"data.root={tmp_path / 'moved'}")
    assert result.exit_code == 0, result.output
    # a search likewise (data.root may change on its resume too, since a relative one was a dead end from another
    # folder): other images trained on without a word, other classes failed with torch's "size mismatch"
    search = tmp_path / "search"
    searched = [*tree[:2], "data.batch_size=2", f"data.root={tmp_path / 'a'}"]
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe, searched), search, callbacks=InterruptAt(epoch=1)).run()
    sets = [arg for item in searched[:-1] for arg in ("--set", item)]
    one_error(cli("search", tiny_recipe, "--resume", search, *sets, "--set", f"data.root={tmp_path / 'three'}"), 2,
              f"cannot resume {search}: its data now holds 3 classes of 3x8x8 images, the run was trained on 2 "
              "classes of 3x8x8")  # (the recipe's image_size: 8)
    one_error(cli("search", tiny_recipe, "--resume", search, *sets, "--set", f"data.root={tmp_path / 'grown'}"), 2,
              f"cannot resume {search}: its training data now holds 9 images, the run was trained on 6")
    result = cli("search", tiny_recipe, "--resume", search, *sets, "--set", f"data.root={tmp_path / 'moved'}")
    assert result.exit_code == 0, result.output


def test_an_evaluation_of_own_data_records_its_classes_and_what_part_it_used(tmp_path, tiny_eval, monkeypatch):
    """An image folder's class names (the network's outputs, in order) were recorded nowhere; and a run on part of
    its images (data.limit, data.test_limit) did not say so in its Table row, as a dataset of known size does."""
    from eldarts_cli.runs.files import EvalResults
    from eldarts_cli.runs.tables import evaluation_table

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", classes=("zebra", "ant"), per_class=4)
    tree = ["data.dataset=imagefolder", f"data.root={tmp_path / 'tree'}", "data.limit=6", "data.test_limit=3",
            "data.cutout=0", "data.batch_size=2", "train.onnx=false"]
    out = tmp_path / "run"
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", out, *(a for item in tree for a in ("--set", item)))
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == ["ant", "zebra"] and results["num_classes"] == 2
    assert (results["train_images"], results["train_split_images"]) == (6, 8)
    assert (results["test_images"], results["test_split_images"]) == (3, 8)
    # data resized in memory keeps its split's size (the first version recorded 64 of 64 for 64 of 1,437 digits)
    resized = cli("evaluate", "DARTS_V2", tiny_eval, "--out", tmp_path / "resized", "--set", "data.image_size=16",
                  "--set", "train.onnx=false")
    assert resized.exit_code == 0, resized.output
    results = json.loads((tmp_path / "resized" / "results.json").read_text())
    assert (results["train_split_images"], results["test_split_images"]) == (1437, 360)
    assert torch.load(out / "weights.pt", weights_only=True)["input"]["classes"] == ["ant", "zebra"]
    row = evaluation_table(EvalResults.read(out))[2][-1]
    assert "trained on 6 of 8 images; 3 of 8 test images; on imagefolder, not CIFAR-10" in row["architecture"]


def test_a_dry_run_counts_an_image_folders_images_for_the_search_halves(tmp_path, tiny_recipe):
    """A batch larger than each half of an image folder's training images passed the dry run (its size was known
    to the run alone, which refused it at once); the tree's images are counted by name, nothing read."""
    make_tree(tmp_path / "tree", per_class=4)
    tree = ["--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'tree'}", "--set",
            "data.limit=null", "--set", "data.image_size=8"]
    message = "data.batch_size=8 is larger than each half of the 8 training images"
    for dry in (["--dry-run"], ["--out", tmp_path / "run"]):
        one_error(cli("search", tiny_recipe, *tree, "--set", "data.batch_size=8", *dry), 2, message)
    assert cli("search", tiny_recipe, *tree, "--set", "data.batch_size=2", "--dry-run").exit_code == 0


def test_a_search_of_a_tree_without_a_test_split_says_its_evaluate_command_needs_one(tmp_path, tiny_recipe,
                                                                                      monkeypatch):
    """A search reads train/ alone; the evaluate command it printed at its end read test/ too and failed."""
    import shutil

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", per_class=8)
    sets = ["--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'tree'}", "--set", "data.limit=null",
            "--set", "data.batch_size=4"]
    result = cli("search", tiny_recipe, "--out", tmp_path / "with", *sets)
    assert result.exit_code == 0 and "lacks" not in result.output, result.output
    shutil.rmtree(tmp_path / "tree" / "test")
    result = cli("search", tiny_recipe, "--out", tmp_path / "without", *sets)
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert (f"warning: the evaluate command above reads its test images from the same data, which it lacks: "
            f"{tmp_path / 'tree'} has no 'test' or 'val' folder") in flat


def test_a_test_split_of_another_image_size_is_refused(tmp_path, tiny_eval, monkeypatch):
    """Test images of another size than the training images were accepted: the test error was measured on another
    input than the one trained and recorded (results.json, the ONNX export)."""
    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    make_tree(tmp_path / "tree", size=6)
    for image in (tmp_path / "tree" / "test").rglob("*.jpg"):
        Image.new("RGB", (8, 8), (9, 9, 9)).save(image)
    tree = ["--set", "data.dataset=imagefolder", "--set", f"data.root={tmp_path / 'tree'}", "--set", "data.limit=null",
            "--set", "data.test_limit=null", "--set", "data.cutout=0"]
    one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--out", tmp_path / "run", *tree), 2,
              "the test images are 8x8, the training images 6x6; set data.image_size to resize both")
    assert not (tmp_path / "run").exists()
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", tmp_path / "run", *tree, "--set", "data.image_size=6")
    assert result.exit_code == 0, result.output


def test_a_cutout_as_wide_as_the_images_is_refused(tmp_path, tiny_recipe, tiny_eval):
    """eval-cifar10.yaml's cutout of 16 on 8x8 digits blanked every training image: it trained at chance, silently.
    Refused by the run and its dry run, in evaluation and search."""
    message = "data.cutout=16 is not smaller than the 8x8 training images"
    for command in (["evaluate", "DARTS_V2", tiny_eval], ["search", tiny_recipe]):
        for dry in ([], ["--dry-run"]):
            one_error(cli(*command, "--out", tmp_path / "run", "--set", "data.cutout=16", "--set", "data.image_size=8",
                          *dry), 2, message, "set data.cutout below 8")
            assert not (tmp_path / "run").exists()
            # a crop padding as wide: its random crops missed the image (100 on 8x8: 99.5% blank), silently
            one_error(cli(*command, "--out", tmp_path / "run", "--set", "data.crop_padding=8", "--set",
                          "data.image_size=8", "--set", "data.cutout=0", *dry), 2,
                      "data.crop_padding=8 is not smaller than the 8x8 training images", "below 8")
            assert not (tmp_path / "run").exists()


def test_a_single_class_is_refused(tmp_path):
    make_tree(tmp_path / "tree", classes=("a",))
    with pytest.raises(DataError, match="at least 2"):
        load_images(DataConfig(dataset="imagefolder", root=tmp_path / "tree"), "train")


def test_images_too_small_fail_at_dry_run(tiny_recipe):
    one_error(cli("search", tiny_recipe, "--dry-run", "--set", "data.image_size=2"), 2,
              "2x2 images are too small", "data.image_size=4")


@pytest.mark.parametrize("betas", ["[1.5, 0.9]", "[0.5, 1.0]", "[-0.1, 0.9]"])
def test_arch_betas_outside_0_1_are_refused(tiny_recipe, betas):
    one_error(cli("search", tiny_recipe, "--dry-run", "--set", f"arch_optim.betas={betas}"), 2, "arch_optim -> betas")


def test_a_recipe_of_another_kind_names_its_command(tmp_path, tiny_recipe, tiny_eval):
    one_error(cli("search", tiny_eval, "--dry-run"), 2, "is an evaluation recipe", "use `eldarts evaluate GENOTYPE")
    one_error(cli("evaluate", "DARTS_V2", tiny_recipe, "--dry-run"), 2, "is a search recipe", "use `eldarts search")
    one_error(cli("ablate", tiny_recipe, "--dry-run"), 2, "is a search recipe")
    one_error(cli("search", ablation_recipe(tmp_path), "--dry-run"), 2, "is an ablation recipe", "eldarts ablate")
    # another kind's sections brought by an included file: that file is named (the file given was called an
    # evaluation recipe, and the command advised would have failed)
    including = tmp_path / "including.yaml"
    including.write_text(f"include: {tiny_eval}\nname: e\n")
    flat = one_error(cli("search", including, "--dry-run"), 2,
                     f"{including} includes {tiny_eval}, an evaluation recipe (it has train): a search recipe cannot "
                     "include it")
    assert "use `" not in flat
    # an ablation's base of another kind: one line (one unknown-key error per section, per run), no command of the
    # other kind; a search recipe given as cost.network: what the setting takes
    base = tmp_path / "base-eval.yaml"
    base.write_text(f"name: ab\nbase: {tiny_eval}\nrows: [ABC]\n")
    flat = one_error(cli("ablate", base, "--dry-run"), 2, f"{tiny_eval} is an evaluation recipe (it has train), not "
                     "a search recipe; an ablation's base is a search recipe")
    assert "unknown key" not in flat
    flat = one_error(cli("search", tiny_recipe, "--dry-run", "--set", f"cost={{network: {tiny_recipe}, metric: macs, "
                         "target: 1}"), 2, "cost.network takes the evaluation recipe of the network to price")
    assert "use `eldarts search" not in flat


# ---------------------------------------------------------------------------
# 6. Faults of the environment: one line, the previous checkpoint intact
# ---------------------------------------------------------------------------


def test_binary_garbage_as_recipe_or_profile(tmp_path):
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(256)) * 8)
    one_error(cli("search", garbage, "--dry-run"), 2, "is not a text file")
    one_error(cli("evaluate", "DARTS_V2", garbage, "--dry-run"), 2, "is not a text file")
    one_error(cli("ablate", garbage, "--dry-run"), 2, "is not a text file")
    one_error(cli("profile-ops", "--from", garbage), 2, "not an eldarts op profile")


def test_unreadable_include(tmp_path, monkeypatch):
    (tmp_path / "secret.yaml").write_text("seed: 1\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(TINY_SEARCH + "include: [secret.yaml]\n")
    real = Path.read_text

    def read_text(self, *args, **kwargs):
        if self.name == "secret.yaml":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    one_error(cli("search", recipe, "--dry-run"), 2, "cannot read included file", "Permission denied")


def test_disk_full_mid_run_keeps_the_checkpoint(tmp_path, tiny_recipe, monkeypatch):
    """Fault injection: the disk fills up while the second epoch's checkpoint is written."""
    import eldarts_cli.core.io as io

    run = tmp_path / "run"
    writes = {"checkpoint.pt": 0}
    real_fsync = io.os.fsync

    def fsync(fd):
        name = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        if name.startswith(".checkpoint.pt."):
            writes["checkpoint.pt"] += 1
            if writes["checkpoint.pt"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    with monkeypatch.context() as patch:
        patch.setattr(io.os, "fsync", fsync)
        result = cli("search", tiny_recipe, "--out", run)
    flat = one_error(result, 1, "No space left on device", "still holds epoch 1 of 3", "continue with:")
    assert load_checkpoint(run / "checkpoint.pt", kind="search")["epoch"] == 1
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert "eldarts search" in flat
    result = cli("search", tiny_recipe, "--resume", run)  # space is back
    assert result.exit_code == 0, result.output
    assert [r["epoch"] for r in strict_json(run / "metrics.jsonl")] == [0, 1, 2]


def test_disk_full_during_onnx_export_stops_the_run_resumably(tmp_path, tiny_eval, monkeypatch):
    """A full disk while model.onnx is written is a storage fault, not an exporter gap: it was warned about and the
    run ended 'completed' without model.onnx, which no resume wrote again. Now: one error line, no results.json,
    and the resume writes model.onnx and the results."""
    import eldarts_cli.engines.export as export
    from eldarts_cli.core.io import storage_error

    run = tmp_path / "run"

    write = export.atomic_write_bytes

    def full(path, data):  # (the exporter writes into memory; the file is written as every other)
        if path.name != "model.onnx":
            return write(path, data)
        raise storage_error(OSError(errno.ENOSPC, "No space left on device"), path)

    with monkeypatch.context() as patch:
        patch.setattr(export, "atomic_write_bytes", full)
        result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", run, "--set", "train.onnx=true")
    one_error(result, 1, "cannot write", "model.onnx", "No space left on device", "continue with:")
    assert not (run / "results.json").exists() and not (run / "model.onnx").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run)  # space is back
    assert result.exit_code == 0, result.output
    assert strict_json(run / "results.json")["onnx"] == "model.onnx" and (run / "model.onnx").stat().st_size > 0


@pytest.mark.parametrize("kind", ["search", "evaluation"])
def test_disk_full_while_the_final_figures_are_drawn_names_the_command_that_draws_them(tmp_path, tiny_recipe,
                                                                                       tiny_eval, monkeypatch, kind):
    """A full disk after the last epoch, while the figures are written (search: an OSError from the drawing;
    evaluate: eldarts' own write of a figure): one error line, which says the run's results are saved, and the
    command that draws the figures once space is free (it gave the error alone); that command draws them."""
    import eldarts_cli.runs.figures as figures
    import eldarts_cli.runs.folders as folders
    from eldarts_cli.core.io import storage_error

    def drawing(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def writing(path, data):
        raise storage_error(OSError(errno.ENOSPC, "No space left on device"), path)

    module, name, fault, first, done = {
        "search": (figures, "plot_genotype", drawing, ["search", tiny_recipe], "summary.json"),
        "evaluation": (folders, "atomic_write_bytes", writing, ["evaluate", "DARTS_V2", tiny_eval], "results.json"),
    }[kind]
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(module, name, fault)
        result = cli(*first, "--out", run)
    flat = one_error(result, 1, "No space left on device", f"the {kind} has finished and its results are saved in "
                     f"{run}", "its figures were not all drawn", "draw them with:")
    assert (run / done).exists() and not (run / "figures" / "table1.md").exists()
    assert "continue with" not in flat and "--resume" not in flat
    again = redraw_command(result.output)
    assert again == ["report", str(run)]
    result = runner.invoke(app, again)  # space is back
    assert result.exit_code == 0, result.output
    assert (run / "figures" / "table1.md").exists() and (run / "figures" / "cell_normal.png").exists()


def test_read_only_output(tmp_path, tiny_recipe, monkeypatch):
    real = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    one_error(cli("search", tiny_recipe, "--out", tmp_path / "ro"), 2, "cannot create the run folder", "Read-only")
    # an existing empty folder on a read-only disk: the same kind of problem, the same exit (it was 1, with a
    # "continue with: ... --resume" line for a run that never began)
    import eldarts_cli.runs.folders as folders

    monkeypatch.setattr(folders, "atomic_write_text", lambda path, text: (_ for _ in ()).throw(
        folders.storage_error(OSError(errno.EROFS, "Read-only file system"), path)))
    (tmp_path / "empty").mkdir()
    flat = one_error(cli("search", tiny_recipe, "--out", tmp_path / "empty"), 2, "cannot use", "Read-only file system")
    assert "continue with" not in flat and not any((tmp_path / "empty").iterdir())


def test_a_dry_run_names_an_out_that_cannot_be_created(tmp_path, tiny_recipe, tiny_eval, monkeypatch):
    """A dry run passed an ``--out`` below a file or in a folder it cannot write to, where the run itself fails
    at once; it now says so, as the run does, and creates nothing."""
    import eldarts_cli.runs.folders as folders

    (tmp_path / "a-file").write_text("the user's")
    for command in (["search", tiny_recipe], ["evaluate", "DARTS_V2", tiny_eval]):
        for dry in (["--dry-run"], []):
            one_error(cli(*command, "--out", tmp_path / "a-file" / "run", *dry), 2,
                      f"cannot create the run folder {tmp_path / 'a-file' / 'run'}: {tmp_path / 'a-file'} is a file")
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(folders.os, "access", lambda path, mode: real(path, mode) and Path(path) != locked)
    for command in (["search", tiny_recipe], ["evaluate", "DARTS_V2", tiny_eval]):
        one_error(cli(*command, "--out", locked / "new" / "run", "--dry-run"), 2,
                  f"cannot create the run folder {locked / 'new' / 'run'}: {locked} is not writable")
    assert not any(locked.iterdir()) and (tmp_path / "a-file").read_text() == "the user's"


# ---------------------------------------------------------------------------
# 7. Resource sanity before work
# ---------------------------------------------------------------------------


@pytest.fixture
def eight_gb(monkeypatch):
    """A machine (and device) with 8 GB, whatever this one has."""
    import eldarts_cli.engines.resources as resources

    monkeypatch.setattr(resources, "device_memory", lambda device: 8_000_000_000)


def test_absurd_networks_are_refused_before_they_are_built(tmp_path, tiny_recipe, tiny_eval, eight_gb):
    one_error(cli("search", tiny_recipe, "--dry-run", "--set", "network.layers=100000", "--set", "network.channels=16"),
              2, "too large", "network.layers (100000)", "8.0 GB")
    one_error(cli("search", tiny_recipe, "--dry-run", "--set", "network.channels=100000"), 2, "too large")
    one_error(cli("search", tiny_recipe, "--out", tmp_path / "big", "--set", "network.channels=100000"), 2,
              "too large", "data.batch_size (16)")
    assert not (tmp_path / "big").exists()
    one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--dry-run", "--set", "network.layers=100000"), 2, "too large")
    one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--out", tmp_path / "big2", "--set", "network.channels=100000"),
              2, "too large")
    result = cli("search", tiny_recipe, "--dry-run", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["supernet"]["estimated_training_memory_bytes"] > 0
    # the warm-up worked out from warmup_fraction where the recipe leaves it null (the text said it; JSON: null)
    plan = json.loads(cli("search", tiny_recipe, "--dry-run", "--json", "--set", "search.warmup_epochs=null",
                          "--set", "search.epochs=10").output)
    assert plan["recipe"]["search"]["warmup_epochs"] is None and plan["warmup_epochs"] == 3


def test_size_estimates_match_the_built_networks():
    """Counts extrapolated from small copies equal the full network's (depth above 24, width above 64)."""
    ops = ["skip_connect", "sep_conv_3x3", "max_pool_3x3", "dil_conv_3x3"]

    def supernet(layers, channels):
        return Supernet(ops=ops, num_classes=10, channels=channels, layers=layers, nodes=2, multiplier=2,
                        partial_channels=2, edge_coefficients=True)

    def cifar(layers, channels):
        return build_network("cifar", genotype=GENOTYPES.get("DARTS_V2"), num_classes=10, channels=channels,
                             layers=layers, auxiliary=True, in_channels=3)

    for build, multiple, layers, channels in ((supernet, 4, 26, 4), (supernet, 4, 3, 72), (cifar, 4, 25, 4)):
        estimate = estimate_footprint(build, layers=layers, channels=channels, channel_multiple=multiple,
                                      input_size=(3, 8))
        model = build(layers, channels)
        assert not estimate.exact
        assert estimate.params == sum(p.numel() for p in model.parameters())
        assert estimate.modules == sum(1 for _ in model.modules())


# ---------------------------------------------------------------------------
# 8. Strict types in --set; duplicate YAML keys
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("setting, message", [
    ("search.epochs=true", "expected a number, not true/false"),
    ("optim.lr=yes", "expected a number, not true/false"),
    ("search.epochs='5'", "expected a number, not text"),
    ("entropy.enabled=1", "expected true or false"),
])
def test_set_values_keep_their_type(tiny_recipe, setting, message):
    one_error(cli("search", tiny_recipe, "--dry-run", "--set", setting), 2, message)


def test_numbers_in_exponent_form_are_numbers(tiny_recipe):
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["optim.lr=1e-3"])
    assert recipe.optim.lr == 1e-3


def test_duplicate_yaml_keys_are_an_error(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(TINY_SEARCH + "seed: 4\n")
    with pytest.raises(RecipeError, match=r"dup.yaml:\d+:\d+: .*key 'seed' is given twice \(first on line 3\)"):
        load_recipe(path, SearchRecipe)


# ---------------------------------------------------------------------------


def ablation_recipe(folder: Path) -> Path:
    (folder / "base.yaml").write_text(TINY_SEARCH)
    path = folder / "ablation.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-ablation", "base": "base.yaml", "rows": ["ABC"], "seeds": [0], "figures": False,
        "overrides": {"search": {"epochs": 2, "warmup_epochs": 1, "max_steps": 2, "val_batches": 1}},
    }))
    return path


def test_output_to_a_file_or_pipe_is_not_wrapped_at_80_columns(monkeypatch):
    """Rich wraps output to a log file or a pipe at 80 columns (epoch lines and table cells split mid-number):
    eldarts' consoles take 200 there, unless COLUMNS says otherwise; a terminal keeps its own width."""
    import io

    from eldarts_cli.cli.common import _width

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("COLUMNS", raising=False)
    assert _width(io.StringIO()) == 200 and _width(Terminal()) is None
    monkeypatch.setenv("COLUMNS", "120")
    assert _width(io.StringIO()) == 120 and _width(Terminal()) is None
    # COLUMNS=0 printed nothing (a traceback where the stream was a file), error lines included; a few columns
    # cut every number: below 20 it is taken as 20
    for columns in ("0", "5", "-3"):
        monkeypatch.setenv("COLUMNS", columns)
        assert _width(io.StringIO()) == _width(Terminal()) == 20
    env = {**os.environ, "COLUMNS": "0"}
    done = subprocess.run([sys.executable, "-m", "eldarts_cli", "search", "nowhere.yaml"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr == "error: recipe nowhere.yaml does not exist\n", done.stderr


def test_a_bad_device_is_named_as_the_option_given(tiny_recipe, tiny_eval):
    """--device gpu was reported as "--set runtime.device: ...", an option the user never typed."""
    for first in (["search", tiny_recipe], ["evaluate", "DARTS_V2", tiny_eval]):
        flat = one_error(cli(*first, "--device", "gpu", "--dry-run"), 2, "--device: unknown device 'gpu'")
        assert "--set" not in flat


def test_a_resumes_set_is_checked_against_the_runs_own_recipe(tmp_path, tiny_recipe):
    """A --set on --resume was validated against the recipe file's values: a run started with
    ``search.warmup_epochs=0`` and resumed with ``--set search.epochs=1`` was refused because the file's warm-up (1)
    left no epoch, where the run's own (0) does; what the resume refuses is the change of epochs itself."""
    run = tmp_path / "search"
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["search.warmup_epochs=0"])
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, run, callbacks=InterruptAt(epoch=1)).run()
    flat = one_error(cli("search", tiny_recipe, "--resume", run, "--dry-run", "--set", "search.epochs=1"), 2,
                     "the recipe differs from the one the run was started with", "search.epochs")
    assert "warmup_epochs" not in flat
    # a --set that fits neither is named with the run's own recipe
    one_error(cli("search", tiny_recipe, "--resume", run, "--set", "search.epochs=0"), 2,
              "--set search.epochs", "greater than 0")


def test_a_refused_resume_says_nothing_of_resuming(tmp_path, tiny_recipe, tiny_eval):
    """A resume its checkpoint refuses (another recipe) printed "run folder: X  (resuming)" and "resuming with the
    run's own recipe ..." before its error: the lines say so once the run has accepted its checkpoint."""
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), run, callbacks=InterruptAt(epoch=1)).run()
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained, stop_after_epochs=1)
    for folder, command, recipe in ((run, "search", tiny_recipe), (trained, "evaluate", tiny_eval)):
        other = tmp_path / f"other-{command}.yaml"  # a file that differs in what a resume takes from the run
        other.write_text(re.sub(r"^seed: \d+$", "seed: 11", recipe.read_text(), flags=re.M))
        first = [command, other] if command == "search" else [command, "DARTS_V2", other]
        flat = one_error(cli(*first, "--resume", folder, "--set", "network.channels=8"), 2,
                         "the recipe differs from the one", "network.channels: 4 -> 8")
        assert "resuming" not in flat and "run folder" not in flat, flat
        result = cli(*first, "--resume", folder)  # accepted: the notes are said
        assert result.exit_code == 0, result.output
        assert "resuming with the run's own recipe" in " ".join(result.output.split()), result.output


def test_a_search_with_a_relative_data_root_resumes_from_another_folder(tmp_path, monkeypatch):
    """A relative data.root is read from the current folder: a resume from another folder (or of a moved dataset)
    said "data.root d/t does not exist", and --set data.root=... was refused as a change of recipe: no way on."""
    from PIL import Image

    monkeypatch.setenv("ELDARTS_CACHE", str(tmp_path / "cache"))
    for split in ("train", "test"):
        for c, name in enumerate(["cat", "dog"]):
            folder = tmp_path / "x" / "d" / split / name
            folder.mkdir(parents=True)
            for i in range(8):
                Image.new("RGB", (8, 8), (40 * c + 9 * i, 0, 255 - i)).save(folder / f"{i}.png")
    recipe = tmp_path / "x" / "r.yaml"
    recipe.write_text(TINY_SEARCH + "\n")
    monkeypatch.chdir(tmp_path / "x")
    sets = ["data.dataset=imagefolder", "data.root=d", "data.limit=null", "data.batch_size=4"]
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(recipe, SearchRecipe, sets), tmp_path / "x" / "run", callbacks=InterruptAt(epoch=1)).run()
    (tmp_path / "y").mkdir()
    monkeypatch.chdir(tmp_path / "y")
    flat = one_error(cli("search", "../x/r.yaml", "--resume", "../x/run"), 2, "error: data.root d does not exist")
    assert f"a relative data.root is read from the current folder ({tmp_path / 'y'}); give the data's place: " \
           "eldarts search ../x/r.yaml --resume ../x/run --set data.root=PATH" in flat
    result = cli("search", "../x/r.yaml", "--resume", "../x/run", "--set", "data.root=../x/d")
    assert result.exit_code == 0, result.output


def test_a_damaged_recipe_yaml_is_named_as_the_cause_of_a_refused_resume(tmp_path, tiny_recipe):
    """The run's recipe.yaml cut short (or edited) since the run wrote it: the resume listed every difference as if
    the user had changed them; it says that the file itself differs from the recipe the checkpoint holds."""
    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), run, callbacks=InterruptAt(epoch=1)).run()
    flat = one_error(cli("search", tiny_recipe, "--resume", run, "--set", "seed=11"), 2,
                     "the recipe differs from the one the run was started with: seed")
    assert "itself differs" not in flat  # (the file is the run's: the --set is the change)
    text = (run / "recipe.yaml").read_text()  # (an edit; a cut that leaves valid YAML reads the same)
    assert "\n  channels: 4\n" in text
    (run / "recipe.yaml").write_text(text.replace("\n  channels: 4\n", "\n  channels: 16\n", 1))
    for dry in ([], ["--dry-run"]):
        one_error(cli("search", tiny_recipe, "--resume", run, *dry), 2,
                  "the recipe differs from the one the run was started with",
                  f"{run / 'recipe.yaml'} itself differs from the recipe its checkpoint holds (edited or damaged")


def test_an_edited_recipe_yaml_is_named_as_the_cause_of_a_refused_evaluation_resume(tmp_path, tiny_eval):
    """As a search's: an evaluation's resume reads its own recipe.yaml, edited since; every difference was blamed
    on the recipe given."""
    from eldarts_cli.engines.evaluate import run_evaluation

    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained, stop_after_epochs=1)
    flat = one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--resume", trained, "--set", "seed=11"), 2,
                     f"the recipe differs from the one {trained} was trained with (seed: ")
    assert "itself differs" not in flat  # (the file is the run's: the --set is the change)
    text = (trained / "recipe.yaml").read_text()
    assert "\n  channels: 4\n" in text
    (trained / "recipe.yaml").write_text(text.replace("\n  channels: 4\n", "\n  channels: 16\n", 1))
    for dry in ([], ["--dry-run"]):
        one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--resume", trained, *dry), 2,
                  f"the recipe differs from the one {trained} was trained with (network.channels: 4 -> 16)",
                  f"{trained / 'recipe.yaml'} itself differs from the recipe its checkpoint holds (edited or damaged")


def test_a_dry_run_of_a_resume_refuses_what_the_checkpoint_refuses(tmp_path, tiny_recipe, tiny_eval):
    """``--resume RUN --dry-run`` planned a resume that the run refuses on reading its checkpoint: a search or
    an evaluation run by 2 processes, resumed on 1, and (evaluate) a --set the resume refuses."""
    from eldarts_cli.engines.evaluate import run_evaluation
    from eldarts_cli.runs.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), run, callbacks=InterruptAt(epoch=1)).run()
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained, stop_after_epochs=1)
    one_error(cli("evaluate", "DARTS_V2", tiny_eval, "--resume", trained, "--dry-run", "--set", "network.channels=8"),
              2, f"the recipe differs from the one {trained} was trained with (network.channels: 4 -> 8)")
    for folder, first, verb in ((run, ["search", tiny_recipe], "searched"),
                                (trained, ["evaluate", "DARTS_V2", tiny_eval], "trained")):
        assert cli(*first, "--resume", folder, "--dry-run").exit_code == 0
        state = load_checkpoint(folder / "checkpoint.pt")
        state["world_size"] = 2  # as a torchrun launch of 2 processes leaves it
        save_checkpoint(state, folder / "checkpoint.pt")
        before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        for dry in (["--dry-run"], []):
            one_error(cli(*first, "--resume", folder, *dry), 2,
                      f"{folder} was {verb} by 2 process(es) and cannot continue on 1", "--nproc_per_node 2")
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_missing_device_is_refused_before_a_run_folder_is_named(tmp_path, tiny_recipe):
    """``search --device cuda`` on a machine without CUDA printed "run folder: X" and then the error (the folder
    was never made)."""
    flat = one_error(cli("search", tiny_recipe, "--device", "cuda", "--out", tmp_path / "run"), 2,
                     "device 'cuda' asked for, but CUDA is not available here")
    assert "run folder" not in flat and not (tmp_path / "run").exists()


def test_a_dry_run_of_a_resume_plans_what_the_resume_runs(tmp_path, tiny_recipe, tiny_eval):
    """``--resume RUN --dry-run`` showed the recipe given on the command line, not the run's own one the resume
    continues with (an NAS-Bench-201 recipe planned over a DARTS run), said nothing of a finished run, and let
    through a --set the resume refuses. It now plans the run's recipe with this --set, says what differs, refuses
    what the resume refuses, and says when there is nothing to resume; it writes nothing."""
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), run, callbacks=InterruptAt(epoch=1)).run()
    other = tmp_path / "other.yaml"
    other.write_text(tiny_recipe.read_text().replace("channels: 4", "channels: 8"))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = runner.invoke(app, ["search", str(other), "--resume", str(run), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["recipe"]["network"]["channels"] == 4  # the run's own recipe
    result = cli("search", other, "--resume", run, "--dry-run")
    assert "differs in: network.channels: 4 -> 8" in " ".join(result.output.split())
    one_error(cli("search", tiny_recipe, "--resume", run, "--dry-run", "--set", "network.channels=8"), 2,
              "the recipe differs from the one the run was started with: network.channels: 4 -> 8")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert cli("search", tiny_recipe, "--resume", run).exit_code == 0
    # another recipe file given to resume a finished run: what it changes is not applied, and the user is told
    # (it said nothing); the run's own file: no word
    for dry in (["--dry-run"], []):
        result = cli("search", other, "--resume", run, *dry)
        flat = " ".join(result.output.split())
        assert result.exit_code == 0 and "this search has finished; nothing to resume" in flat
        assert f"warning: {other} differs from the run's recipe ({run / 'recipe.yaml'}) in: network.channels: 4 -> 8; " \
               "not applied: the search has finished (search again in a new --out to run with it)" in flat, flat
        assert "differs" not in cli("search", tiny_recipe, "--resume", run, *dry).output
        # the printed resume command repeats the run's own --set: no "differs" for what the --set gives
        again = cli("search", other, "--resume", run, "--set", "network.channels=4", *dry).output
        assert "differs" not in again and "not applied" not in again, again
    # with --json, stdout holds what the resume prints, the summary (it was empty, exit 0)
    result = runner.invoke(app, ["search", str(other), "--resume", str(run), "--dry-run", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == json.loads((run / "summary.json").read_text())
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained)
    for extra in ([], ["--json"]):
        result = runner.invoke(app, ["evaluate", "DARTS_V2", str(tiny_eval), "--resume", str(trained), "--dry-run",
                                     *extra])
        assert result.exit_code == 0, result.output
        said = result.stderr if extra else result.stdout
        assert "this evaluation has finished; nothing to resume" in said
        if extra:
            assert json.loads(result.stdout) == json.loads((trained / "results.json").read_text())
    other_eval = tmp_path / "other-eval.yaml"
    other_eval.write_text(f"include: [{tiny_eval}]\ntrain:\n  epochs: 7\n")
    result = runner.invoke(app, ["evaluate", "DARTS_V2", str(other_eval), "--resume", str(trained)])
    assert result.exit_code == 0 and "train.epochs: 2 -> 7; not applied: the evaluation has finished" in \
        " ".join(result.stderr.split()), result.output
    # resuming a finished run with a --set: it is not applied, and the user is told (it was ignored silently)
    for command in (["search", str(tiny_recipe), "--resume", str(run), "--set", "search.epochs=9"],
                    ["evaluate", "DARTS_V2", str(tiny_eval), "--resume", str(trained), "--set", "train.epochs=9"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
        assert f"warning: --set {command[-1]} not applied" in " ".join(result.stderr.split())
        # a --set of the run's own value changes nothing: not named (it was)
        own = "search.epochs=3" if command[0] == "search" else "train.epochs=2"  # (the tiny recipes')
        again = runner.invoke(app, [*command, "--set", own])
        flat = " ".join(again.stderr.split())
        assert f"warning: --set {command[-1]} not applied" in flat and own not in flat, flat


def test_ctrl_c_before_the_first_checkpoint_says_no_epoch_was_saved(tmp_path, tiny_recipe, monkeypatch):
    """Stopped in the first epoch: the folder holds its recipe but no checkpoint. The hint said "finished epochs
    are saved"; it now says no epoch had finished, and its command runs the search from the first epoch."""
    run = tmp_path / "run"

    def stop(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "run_epoch", stop)
        result = cli("search", tiny_recipe, "--out", run, "--set", "search.epochs=2")
    assert result.exit_code == 130 and not (run / "checkpoint.pt").exists(), result.output
    flat = " ".join(result.output.split())
    assert "interrupted: no epoch had finished (it continues from the first); continue with" in flat
    assert "finished epochs are saved" not in flat
    result = runner.invoke(app, hinted_command(result.output))
    assert result.exit_code == 0, result.output
    assert strict_json(run / "summary.json")["epochs"] == 2


def test_profile_outputs_never_overwrite_a_runs_files_even_with_force(tmp_path, tiny_recipe):
    """``--force`` is for profile-ops' own outputs: a search's summary, genotype or figure given as ``--out``,
    ``--plot`` or ``--emit-space`` was overwritten with it. An op profile saved in a run folder may be replaced."""
    from test_profile import known_profile

    from eldarts_cli.engines.profile import save_profile

    source = tmp_path / "profile.json"
    save_profile(known_profile(), source)
    run = tmp_path / "search"
    assert cli("search", tiny_recipe, "--out", run).exit_code == 0
    for flag, name in (("--out", "summary.json"), ("--out", "genotype.json"), ("--emit-space", "recipe.yaml"),
                       ("--plot", "figures/curves.png"), ("--out", "checkpoint.pt")):
        target = run / name
        before = target.read_bytes()
        args = ["profile-ops", "--from", source, flag, target, "--budget-macs", "1", "--force"]
        one_error(cli(*args), 2, f"{flag} {target} is a file of the run in {run}", "even with --force")
        assert target.read_bytes() == before
    mine = run / "ops.json"
    save_profile(known_profile(), mine)
    result = cli("profile-ops", "--from", source, "--out", mine, "--force")
    assert result.exit_code == 0, result.output


def test_a_refused_checkpoint_says_what_is_kept(tmp_path):
    """save_checkpoint's guard said "the previous checkpoint is kept" where there was none."""
    from eldarts_cli.runs.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.pt"
    with pytest.raises(DivergenceError, match="hold inf or nan; nothing was saved"):
        save_checkpoint({"epoch": 1, "w": torch.tensor([float("nan")])}, path)
    assert not path.exists()
    save_checkpoint({"epoch": 1, "w": torch.ones(2)}, path)
    with pytest.raises(DivergenceError, match="hold inf or nan; the previous checkpoint is kept"):
        save_checkpoint({"epoch": 2, "w": torch.tensor([float("inf")])}, path)
    assert load_checkpoint(path)["epoch"] == 1


@pytest.mark.parametrize("code", [0, None, 1, 130, "message"])
def test_a_signal_in_the_teardown_is_ignored_whatever_the_outcome(monkeypatch, code):
    """Ctrl-C in the second after a finished evaluation's last line (the interpreter tearing down) exited 130 with
    no word; after a stop's message, a second Ctrl-C printed a traceback from an atexit callback. Once a command
    has ended, Ctrl-C and SIGTERM are ignored (SIG_IGN: the interpreter's finalisation resets Python handlers to
    the default action, which a handler here would not survive)."""
    import signal

    import eldarts_cli.cli as cli_package

    def finished(**kwargs):
        raise SystemExit(code)

    monkeypatch.setattr(cli_package, "app", finished)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a process's own, whatever ran before here
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with pytest.raises(SystemExit) as end:
            cli_package.run()
        assert end.value.code == code
        assert all(signal.getsignal(sig) == signal.SIG_IGN for sig in before)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_commands_in_messages_quote_a_folder_with_a_space(tmp_path, tiny_recipe):
    """"resume it with --resume /x/my run" and report's "finish it first: eldarts search /x/sp run/recipe.yaml
    --resume /x/sp run" could not be pasted; the paths are shell-quoted, as the other hints quote them."""
    import shlex

    run = tmp_path / "my run"
    assert cli("search", tiny_recipe, "--out", run).exit_code == 0
    flat = one_error(cli("search", tiny_recipe, "--out", run), 2, "already holds a search run")
    assert f"--resume {shlex.quote(str(run))}," in flat
    stopped = tmp_path / "sp run"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), stopped, callbacks=InterruptAt(epoch=1)).run()
    flat = one_error(cli("report", stopped), 2, "finish it first")
    command = flat.split("finish it first: ", 1)[1]
    assert shlex.split(command) == ["eldarts", "search", str(stopped / "recipe.yaml"), "--resume", str(stopped)]


def test_impossible_figures_in_a_run_file_are_refused_not_shown(tmp_path, tiny_recipe, tiny_eval):
    """A summary.json edited to a search cost of -5 days, or a results.json to a test error of -3%, was reported as
    measured ("-5.00e+00 CPU-days", a Test Error of -3.00); such a file is refused as damaged, naming the field."""
    from eldarts_cli.engines.evaluate import run_evaluation

    search = tmp_path / "search"
    Searcher(load_recipe(tiny_recipe, SearchRecipe), search).run()
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe), GENOTYPES.get("DARTS_V2"), trained)
    summary = json.loads((search / "summary.json").read_text())
    summary["search_cost"]["days"] = -5
    (search / "summary.json").write_text(json.dumps(summary))
    one_error(cli("report", search), 2, "search_cost -> days", "greater than or equal to 0")
    results = json.loads((trained / "results.json").read_text())
    results["test_top1_error"] = -3
    (trained / "results.json").write_text(json.dumps(results))
    one_error(cli("report", trained), 2, "test_top1_error", "greater than or equal to 0")


def test_a_finished_torchrun_worker_ends_without_the_interpreters_teardown(monkeypatch):
    """A torchrun worker aborted now and then in the interpreter's teardown after a finished search (SIGABRT,
    "terminate called without an active exception"); a worker that exits 0 ends at once, its output flushed. A
    failed command, or one outside torchrun, ends as before."""
    import signal

    import eldarts_cli.cli as cli_package

    ended = []
    monkeypatch.setattr(cli_package.os, "_exit", lambda code: ended.append(code) or (_ for _ in ()).throw(
        SystemExit(f"os._exit({code})")))
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for world, code, expected in (("2", 0, [0]), ("2", 2, []), ("1", 0, [])):
            monkeypatch.setenv("WORLD_SIZE", world)
            monkeypatch.setattr(cli_package, "app", lambda **kwargs: (_ for _ in ()).throw(SystemExit(code)))
            ended.clear()
            with pytest.raises(SystemExit):
                cli_package.run()
            assert ended == expected, (world, code)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_a_tilde_in_a_path_given_to_eldarts_is_the_home_folder(tmp_path, tiny_recipe, tiny_eval, monkeypatch):
    """``--out=~/x`` (which the shell leaves as typed) made a folder named "~" in the current folder, printed as
    "run folder: ~/x" (the home folder, to read it), where ``rm -rf ~`` cleans it up; a recipe named "~/r.yaml"
    did not exist. They are the home folder's now, as data.root's and include:'s are."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "r.yaml").write_text(tiny_recipe.read_text())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    result = cli("search", "~/r.yaml", "--out=~/run", "--dry-run")
    assert result.exit_code == 0, result.output
    result = cli("search", "~/r.yaml", "--out=~/run", "--set", "search.epochs=2", "--set", "search.warmup_epochs=1")
    assert result.exit_code == 0 and (home / "run" / "genotype.json").exists(), result.output
    assert not (tmp_path / "~").exists() and f"runfolder:{home / 'run'}" in "".join(result.output.split())  # (folded)
    assert cli("search", "~/r.yaml", "--resume", "~/run").exit_code == 0
    result = cli("evaluate", "~/run", tiny_eval, "--dry-run")  # a GENOTYPE argument too
    assert result.exit_code == 0, result.output


def test_a_finished_search_resumed_writes_a_deleted_genotype_again(tmp_path, tiny_recipe):
    """genotype.json deleted from a finished search: the resume named it as the genotype, and the evaluate command it
    printed failed ("folder without genotype.json"); nothing wrote it again, though summary.json holds the cell. A
    file there, even one that cannot be read, is the user's: left as it is."""
    run = tmp_path / "run"
    assert cli("search", tiny_recipe, "--out", run).exit_code == 0
    saved = (run / "genotype.json").read_bytes()
    (run / "genotype.json").unlink()
    result = cli("search", tiny_recipe, "--resume", run)
    assert result.exit_code == 0 and "genotype.json was missing: written again from" in result.output, result.output
    assert (run / "genotype.json").read_bytes() == saved
    (run / "genotype.json").write_text("{ edited")
    assert cli("search", tiny_recipe, "--resume", run).exit_code == 0
    assert (run / "genotype.json").read_text() == "{ edited"


def test_a_resume_goes_on_when_the_recipe_file_it_was_started_from_is_gone(tmp_path, tiny_recipe, monkeypatch):
    """The printed resume names the recipe file the run was started from, and it failed ("recipe ... does not
    exist") once that file had moved, though a resume goes on with the run's own recipe.yaml: it does now, and says
    so."""
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(tiny_recipe.read_text())
    run = tmp_path / "run"

    def stop(self, epoch):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(Searcher, "run_epoch", stop)
        assert cli("search", recipe, "--out", run).exit_code == 130
    recipe.unlink()
    result = cli("search", recipe, "--resume", run)
    flat = " ".join(result.output.split())
    assert result.exit_code == 0 and (run / "genotype.json").exists(), result.output
    assert f"warning: recipe {recipe} does not exist; the resume goes on with the run's own recipe " \
           f"({run / 'recipe.yaml'})" in flat, flat
    one_error(cli("search", recipe, "--out", tmp_path / "other"), 2, "does not exist")  # (a new run: no copy to use)
    evaluation = tmp_path / "evaluation"  # another kind's run: not its recipe ("... is an evaluation recipe")
    evaluation.mkdir()
    (evaluation / "recipe.yaml").write_text("train: {epochs: 1}\n")
    one_error(cli("search", recipe, "--resume", evaluation), 2, f"recipe {recipe} does not exist")


def test_a_name_too_long_for_the_disk_is_bad_input(tmp_path, tiny_recipe):
    """An --out name longer than the filesystem takes exited 1 (a fault while running), not 2 (bad input)."""
    one_error(cli("search", tiny_recipe, "--out", tmp_path / ("a" * 300)), 2, "File name too long")


def test_a_new_run_that_loses_its_folder_to_another_is_told_to_choose_another(tmp_path, tiny_recipe):
    """Two runs started at once into one new --out: the loser was told to "then resume", which would continue the
    other process's run, not start its own."""
    from eldarts_cli.runs.folders import mark_run_dir, run_lock

    folder = tmp_path / "run"
    folder.mkdir()
    mark_run_dir(folder, "search")  # the other process's folder, made a moment ago, nothing written yet
    with run_lock(folder):
        flat = one_error(cli("search", tiny_recipe, "--out", folder), 2, "being run by another eldarts process")
    assert "or give --out another folder for this run" in flat and "then resume" not in flat


def test_a_finished_evaluation_resumed_writes_deleted_weights_again(tmp_path, tiny_eval):
    """weights.pt deleted from a finished evaluation: --resume said "finished", load_trained failed, and nothing
    wrote the weights again, though checkpoint.pt holds the network after its last epoch. It does now."""
    import torch

    from eldarts_cli.api import load_trained

    run = tmp_path / "run"
    assert cli("evaluate", "DARTS_V2", tiny_eval, "--out", run, "--set", "train.onnx=false").exit_code == 0
    saved = torch.load(run / "weights.pt", weights_only=True)
    (run / "weights.pt").unlink()
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run)
    assert result.exit_code == 0 and "weights.pt was missing: written again from" in result.output, result.output
    again = torch.load(run / "weights.pt", weights_only=True)
    assert again.keys() == saved.keys() and again["input"] == saved["input"] and again["network"] == saved["network"]
    assert again["genotype"] == saved["genotype"]
    for key, value in saved["state_dict"].items():
        assert torch.equal(again["state_dict"][key], value), key
    assert load_trained(run) is not None


def test_a_finished_evaluation_resumed_exports_a_deleted_onnx_file_again(tmp_path, tiny_eval):
    """model.onnx and weights.pt deleted: the resume wrote weights.pt again, and results.json went on naming a
    model.onnx that was not there."""
    pytest.importorskip("onnx")
    import onnx

    run = tmp_path / "run"
    assert cli("evaluate", "DARTS_V2", tiny_eval, "--out", run, "--set", "train.onnx=true").exit_code == 0
    saved = onnx.load(str(run / "model.onnx"))
    for name in ("model.onnx", "weights.pt"):
        (run / name).unlink()
    flat = " ".join(cli("evaluate", "DARTS_V2", tiny_eval, "--resume", run).output.split())
    assert "weights.pt was missing" in flat and "model.onnx was missing: exported again from" in flat, flat
    again = onnx.load(str(run / "model.onnx"))
    assert [t.name for t in again.graph.initializer] == [t.name for t in saved.graph.initializer]
    assert all(a.raw_data == b.raw_data for a, b in zip(again.graph.initializer, saved.graph.initializer))


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_the_torchrun_prefix_in_hints_is_the_launch_as_given(monkeypatch):
    """The commands a torchrun run prints to continue named ``torchrun --nproc_per_node N -m eldarts_cli``, rebuilt
    from the process count: ``--standalone`` and the rendezvous options were dropped. They are read from the
    launching process's command line, up to this process's own arguments; any other parent gives the rebuilt form."""
    from eldarts_cli.cli.search import _launch_options, torchrun_prefix
    from eldarts_cli.engines.distributed import Distributed

    own = ["search", "r.yaml", "--out", "a b"]
    monkeypatch.setattr(sys, "argv", ["/x/eldarts_cli/__main__.py", *own])
    given = ["/v/bin/torchrun", "--nnodes=2", "--rdzv-endpoint", "h:29400", "--rdzv-backend", "c10d",
             "--nproc_per_node", "2", "-m", "eldarts_cli", *own]
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *given])
    try:
        for _ in range(100):  # (until the child's command line is its own)
            if b"torchrun" in Path(f"/proc/{launcher.pid}/cmdline").read_bytes():
                break
            time.sleep(0.05)
        assert _launch_options(launcher.pid) == given[1:10]
        monkeypatch.setattr(sys, "argv", ["/x/eldarts_cli/__main__.py", "search", "other.yaml"])
        assert _launch_options(launcher.pid) is None  # (not this process's launch)
    finally:
        launcher.kill()
        launcher.wait()
    assert _launch_options(os.getpid()) is None  # (pytest is no torchrun)
    monkeypatch.setattr(os, "getppid", lambda: os.getpid())
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    dist = Distributed()
    dist.world_size = 4
    assert torchrun_prefix(dist) == "torchrun --nnodes 2 --nproc_per_node 2 -m eldarts_cli"


def test_a_run_folder_named_in_bytes_that_are_no_utf8_finishes(tmp_path, tiny_recipe, tiny_eval):
    """A folder named in Latin-1 (``café`` as the byte 0xe9, an ordinary Linux name): the search's tables failed to
    encode its path (a traceback after every run, resume and report), and the ONNX exporter, given the path as text,
    failed with a 100 KB warning that quoted the whole graph; model.onnx was missing."""
    search, trained = tmp_path / "s-caf\udce9", tmp_path / "e-caf\udce9"
    result = cli("search", tiny_recipe, "--out", search)
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert "caf\\udce9" in (search / "figures" / "table1.md").read_text()
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", trained, "--set", "train.onnx=true")
    assert result.exit_code == 0 and "warning: ONNX" not in result.output, result.output
    assert strict_json(trained / "results.json")["onnx"] == "model.onnx" and (trained / "model.onnx").stat().st_size


def test_an_onnx_export_that_fails_is_one_short_warning(tmp_path, tiny_eval, monkeypatch):
    """An exporter gap is a warning (the training is kept), of the error's first line: it quoted the whole graph."""
    def gap(*args, **kwargs):
        raise TypeError("_export_onnx(): incompatible function arguments\n" + "graph(%images : Float(...))\n" * 2000)

    monkeypatch.setattr(torch.onnx, "export", gap)
    result = cli("evaluate", "DARTS_V2", tiny_eval, "--out", tmp_path / "run", "--set", "train.onnx=true")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "ONNX export failed" in line]
    assert len(result.output) < 5000 and "graph(" not in result.output, result.output[-2000:]
    assert " ".join(result.output.split()).count("warning: ONNX export failed (TypeError: _export_onnx(): "
                                                  "incompatible function arguments); the weights are in weights.pt") == 1
    assert warned and strict_json(tmp_path / "run" / "results.json")["onnx"] is None


def test_json_on_a_closed_stdout_is_no_traceback(monkeypatch):
    """``--json >&-``: Python's sys.stdout is None, and printing the JSON was an AttributeError after the run had
    saved everything; the JSON printed is strict (a non-finite number as null, as the files hold it)."""
    from eldarts_cli.cli.common import print_json

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    print_json({"a": float("nan"), "b": [1.5, float("inf")]})
    assert json.loads(out.getvalue(), parse_constant=lambda token: pytest.fail(token)) == {"a": None, "b": [1.5, None]}
    monkeypatch.setattr(sys, "stdout", None)
    print_json({"a": 1})  # nowhere to print: nothing, no error


def test_a_run_folder_moved_during_the_run_is_said_so(tmp_path, tiny_recipe, monkeypatch):
    """The run folder moved (or removed) while the run went on: the error said "no epoch was saved yet: free space
    (or make the folder writable)", though the moved folder held saved epochs."""
    import eldarts_cli.engines.search as search_engine

    run, moved = tmp_path / "run", tmp_path / "moved"
    save = search_engine.save_checkpoint

    def save_then_move(state, path):
        save(state, path)
        if not moved.exists():
            run.rename(moved)

    monkeypatch.setattr(search_engine, "save_checkpoint", save_then_move)
    flat = one_error(cli("search", tiny_recipe, "--out", run), 1,
                     f"the run folder {run} was moved or removed while the run went on; the epochs it saved went "
                     "with it", f"if it was moved, give its new place to --resume: eldarts search {tiny_recipe} "
                     f"--resume {run}")
    assert "free space" not in flat and "no epoch was saved" not in flat
    monkeypatch.setattr(search_engine, "save_checkpoint", save)
    result = cli("search", tiny_recipe, "--resume", moved)
    assert result.exit_code == 0 and "resuming at epoch 2" in result.output, result.output


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_stdout_that_cannot_be_written_is_named(tmp_path, tiny_recipe):
    """stdout on a full disk (``> log``, here ``> /dev/full``): "cannot use: No space left on device", naming no
    file."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "eldarts_cli", "search", str(tiny_recipe), "--dry-run"],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "error: cannot use the standard output: No space left on device", proc.stderr


def test_out_folders_the_run_cannot_use_are_refused_by_its_dry_run_too(tmp_path, tiny_recipe, monkeypatch):
    """``--out a/b/..`` made a/b inside a (mkdir), then refused a as a folder holding more than its marker, and the
    resume command it gave refused it again; an existing empty folder on a read-only file system passed the dry
    run, which the run refused."""
    import eldarts_cli.runs.folders as folders

    for dry in (["--dry-run"], []):
        one_error(cli("search", tiny_recipe, "--out", tmp_path / "a" / "b" / "..", *dry), 2,
                  f"--out {tmp_path / 'a' / 'b' / '..'} goes up ('..') from {tmp_path / 'a' / 'b'}, which is not a "
                  f"folder (yet): give the folder itself, --out {tmp_path / 'a'}")
        assert not (tmp_path / "a").exists()
    # a '..' after folders that exist is a path like any other (the first version refused --out ../new)
    (tmp_path / "sub" / "there").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "sub")
    for out in ("../new", "there/../new"):
        assert cli("search", tiny_recipe, "--out", out, "--dry-run").exit_code == 0, out
    (tmp_path / "ro").mkdir()
    access = os.access
    monkeypatch.setattr(folders.os, "access", lambda path, mode: False if Path(path) == tmp_path / "ro"
                        else access(path, mode))  # (as a read-only mount answers; root ignores the mode bits)
    for dry in (["--dry-run"], []):
        one_error(cli("search", tiny_recipe, "--out", tmp_path / "ro", *dry), 2,
                  f"cannot use {tmp_path / 'ro'} as a run folder: it is not writable")
    assert list((tmp_path / "ro").iterdir()) == []


def test_an_unwritable_home_gives_no_raw_matplotlib_lines(tmp_path):
    """HOME not writable: matplotlib's notes on its configuration folder ("mkdir -p failed ...", "Matplotlib created
    a temporary cache directory ...") were two raw lines, not warning lines, on every run that drew a figure."""
    env = {key: value for key, value in os.environ.items() if key != "MPLCONFIGDIR"}
    env["HOME"] = "/proc/nohome"
    code = ("from eldarts_cli.runs.figures import _new_figure; f = _new_figure(1, 1); "
            "import matplotlib; print(matplotlib.get_configdir())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_the_thread_counts_of_a_resumed_run_are_all_in_its_device_label(tmp_path, tiny_recipe, tiny_eval):
    """Epochs on 1 thread, resumed on 2: summary.json (and results.json) said "2 threads", the last invocation's,
    though a thread count changed midway moves the cell."""
    from eldarts_cli.engines.evaluate import run_evaluation

    run = tmp_path / "search"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe, ["runtime.threads=1"]), run,
                 callbacks=InterruptAt(epoch=1)).run()
    searcher = Searcher(load_recipe(tiny_recipe, SearchRecipe, ["runtime.threads=2"]), run, resume=True)
    searcher.run()
    assert strict_json(run / "summary.json")["device"].endswith("1-2 threads (over its resumes))")
    trained = tmp_path / "evaluation"
    run_evaluation(load_recipe(tiny_eval, EvalRecipe, ["runtime.threads=1"]), GENOTYPES.get("DARTS_V2"), trained,
                   stop_after_epochs=1)
    results = run_evaluation(load_recipe(tiny_eval, EvalRecipe, ["runtime.threads=2"]), GENOTYPES.get("DARTS_V2"),
                             trained, resume=True)
    assert results["device"].endswith("1-2 threads (over its resumes))"), results["device"]
    again = tmp_path / "again"  # one count throughout: as before
    run_evaluation(load_recipe(tiny_eval, EvalRecipe, ["runtime.threads=1"]), GENOTYPES.get("DARTS_V2"), again,
                   stop_after_epochs=1)
    results = run_evaluation(load_recipe(tiny_eval, EvalRecipe, ["runtime.threads=1"]), GENOTYPES.get("DARTS_V2"),
                             again, resume=True)
    assert results["device"].endswith(", 1 thread)"), results["device"]


def test_a_diverged_run_is_sent_back_with_its_lower_learning_rate(tmp_path, tiny_recipe, tiny_eval):
    """A search that diverged before its first epoch, given to ``evaluate``, was sent to "finish it first: eldarts
    search RUN/recipe.yaml --resume RUN", which diverged again; the command gives the lower learning rate its
    divergence asked for, until an epoch is saved."""
    run = tmp_path / "run"
    result = cli("search", tiny_recipe, "--out", run, "--set", "optim.lr=1e30", "--set", "arch_optim.lr=1e30")
    assert result.exit_code == 1 and "diverged" in result.output, result.output
    hinted = " ".join(result.output.split()).split("continue with: ")[1].split(" --set ")[1:]
    flat = one_error(cli("evaluate", run, tiny_eval), 2, "holds a half-written search run",
                     f"it diverged: finish it first with a lower learning rate: eldarts search {run / 'recipe.yaml'} "
                     f"--resume {run} --set {hinted[0]}")
    assert hinted and all(f"--set {change}" in flat for change in hinted)
    resumed = cli("search", tiny_recipe, "--resume", run, "--set", "optim.lr=0.05", "--set", "arch_optim.lr=0.01")
    assert resumed.exit_code == 0, resumed.output
    assert "diverged" not in json.loads((run / ".eldarts-run.json").read_text())  # (an epoch saved since)
