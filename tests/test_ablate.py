"""``eldarts ablate`` (paper section 3.4, Table 3): planning, running, resuming, failures, aggregation.

One tiny ablation (2 rows x 2 seeds, 2 epochs of 2 steps on digits) is run
once per module and shared; each test then checks one property of it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import TINY_SEARCH
from eldarts_cli.config.ablate import GRID_ROWS, PAPER_ROWS, component_settings, load_ablation, row_label
from eldarts_cli.engines.ablate import plan_ablation, run_ablation, run_status, select_shard
from eldarts_cli.runs.folders import read_metrics
from eldarts_cli.runs.tables import aggregate_row, mean_std
from eldarts_cli.cli import app
from eldarts_cli.core.errors import RecipeError, RunFolderError

runner = CliRunner()
RECIPES = Path(__file__).resolve().parent.parent / "recipes"

ABLATION = """
name: tiny-ablation
base: base.yaml
rows: [X, ABC]
seeds: [0, 1]
overrides: {search: {epochs: 2, warmup_epochs: 1, max_steps: 2, val_batches: 1}}
figures: false
"""


def _write(folder: Path, text: str = ABLATION, **updates) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(TINY_SEARCH)
    data = yaml.safe_load(text)
    data.update(updates)
    path = folder / "ablation.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2 x 2 ablation, run through the CLI."""
    folder = tmp_path_factory.mktemp("ablation")
    recipe = _write(folder)
    out = folder / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output
    return recipe, out, result.output


# -- rows and recipes --------------------------------------------------------


def test_row_labels_and_presets():
    assert row_label("abc") == "ABC" and row_label("CA") == "AC" and row_label("") == "X" and row_label("none") == "X"
    assert row_label({"A": True, "B": False, "C": True}) == "AC"
    assert list(PAPER_ROWS) == ["X", "AB", "AC", "BC", "ABC"]
    assert len(set(GRID_ROWS)) == 8 and GRID_ROWS[0] == "X" and GRID_ROWS[-1] == "ABC"
    with pytest.raises(ValueError, match="unknown component"):
        row_label("ABD")
    with pytest.raises(ValueError, match="unknown component 'D'"):
        row_label({"D": True})


def test_component_settings_follow_the_paper():
    full = component_settings("ABC", "pc-darts")
    assert full == {"search_space": {"ops": "ess"}, "edge_coefficients": {"enabled": True, "init": "uniform"},
                    "entropy": {"enabled": True}}
    base = component_settings("X", "pc-darts")
    assert base["search_space"]["ops"] == "darts" and base["entropy"] == {"enabled": False}
    assert base["edge_coefficients"] == {"enabled": True, "init": "normal"}  # PC-DARTS edge normalisation
    assert component_settings("AC", "none")["edge_coefficients"] == {"enabled": False}


def test_plan_resolves_each_run(tmp_path):
    cfg = load_ablation(_write(tmp_path), ["seeds=[4]", "runtime.threads=1"])
    runs = plan_ablation(cfg, tmp_path / "out")
    assert [r.id for r in runs] == ["X-seed4", "ABC-seed4"]
    x, full = runs
    assert len(x.recipe.search_space.ops) == 8 and x.recipe.edge_coefficients.init == "normal"
    assert not x.recipe.entropy.enabled and x.recipe.partial_channels.ratio == 2
    assert len(full.recipe.search_space.ops) == 4 and full.recipe.edge_coefficients.init == "uniform"
    assert full.recipe.entropy.enabled and full.recipe.seed == 4 and full.recipe.runtime.threads == 1
    assert full.recipe.search.epochs == 2


@pytest.mark.parametrize("name", ["ablate-cifar10.yaml", "ablate-quick.yaml"])
def test_shipped_recipes_validate(name, tmp_path):
    cfg = load_ablation(RECIPES / name)
    runs = plan_ablation(cfg, tmp_path)
    assert cfg.rows == list(PAPER_ROWS) and len(runs) == len(cfg.rows) * len(cfg.seeds)


def test_random_partial_channels_get_a_warning(tmp_path):
    """An ablation whose searches draw random partial channels is warned once (measured: the supernet hardly
    learns), as ``eldarts search`` is; the shipped ablation is not."""
    quiet = runner.invoke(app, ["ablate", str(RECIPES / "ablate-quick.yaml"), "--out", str(tmp_path / "q"),
                                "--dry-run"])
    assert quiet.exit_code == 0, quiet.output
    assert "warning:" not in quiet.output
    recipe = _write(tmp_path, row_overrides={"ABC": {"partial_channels": {"sampling": "random"}}})
    loud = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "l"), "--dry-run"])
    assert loud.exit_code == 0, loud.output
    assert loud.output.count("warning:") == 1
    assert "2 of 4 searches (ABC-seed0, ABC-seed1)" in loud.output and "hardly learns" in loud.output
    assert not (tmp_path / "l").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "updates, message",
    [
        ({"rows": ["AB", "AD"]}, "unknown component"),
        ({"rows": "everything"}, "'paper', 'grid'"),
        ({"rows": ["AB", "BA"]}, "listed twice"),
        ({"seeds": []}, "at least one seed"),
        ({"b_off": "darts"}, "'pc-darts' or 'none'"),
        ({"base": "missing.yaml"}, "does not exist"),
        ({"row_overrides": {"AB": {"optim": {"lr": 0.1}}}}, "not in rows"),
        ({"overrides": {"search": {"epoch": 2}}}, "did you mean 'epochs'"),
        ({"rowz": "paper"}, "unknown key"),
        ({"overrides": {"seed": 3}}, "overrides: seed is each run's own, taken from seeds; give seeds: [3]"),
        ({"row_overrides": {"X": {"seed": 4}}}, "row_overrides -> X: seed is each run's own"),
        ({"overrides": {"name": "mine"}}, "overrides: name is each run's own"),
        # what each row sets, given for every search: accepted, then replaced in every run, silently
        ({"overrides": {"entropy": {"enabled": False, "weight": 0.01}}}, "overrides: entropy.enabled is what each "
                                                                          "row sets (A = efficient search space"),
        ({"overrides": {"search_space": {"ops": ["skip_connect", "sep_conv_3x3"]}}}, "search_space.ops is what each"),
    ],
)
def test_bad_ablation_recipes_give_one_message(tmp_path, updates, message):
    recipe = _write(tmp_path, **updates)
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # nothing ran, nothing written


# -- running -----------------------------------------------------------------


def test_an_ablation_that_drew_its_figures_names_them(tmp_path):
    """It ended with "(figures: eldarts report OUT)" beside the figures it had drawn."""
    recipe = _write(tmp_path, rows=["X"], seeds=[0], figures=True)
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert f"(figures in {out / 'figures'})" in flat and "eldarts report" not in flat, result.output
    assert list((out / "figures").glob("ablation_error.*"))


def test_tiny_ablation_end_to_end(finished):
    _, out, output = finished
    state = json.loads((out / "ablation.json").read_text())
    assert [r["id"] for r in state["runs"]] == ["X-seed0", "ABC-seed0", "X-seed1", "ABC-seed1"]
    assert all(r["status"] == "finished" for r in state["runs"]) and state["finished"]
    for run in state["runs"]:
        assert json.loads((out / run["id"] / "summary.json").read_text())["finished"]
    assert "Table 3" in output and "published" in output
    assert f"(figures: eldarts report {out})" in " ".join(output.split())  # (figures: false drew none)
    csv = (out / "table3.csv").read_text().splitlines()
    assert csv[0].startswith("source,label,A,B,C,runs")
    measured = [line for line in csv[1:] if line.startswith("measured")]
    assert [line.split(",")[1] for line in measured] == ["X", "ABC"]
    assert all(line.split(",")[5] == "2" for line in measured)  # two seeds each
    assert sum(line.startswith("published") for line in csv[1:]) == 2  # the paper's X and ABC rows
    md = (out / "table3.md").read_text()
    assert "published (paper)" in md and "search val error" in md and "✓" in md and "✗" in md


def test_resume_skips_finished_runs_and_finishes_half_written_ones(finished, tmp_path):
    recipe, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    half = copy / "ABC-seed1"
    (half / "summary.json").unlink()  # as if killed after its last checkpoint
    before = {p.name: (p / "summary.json").stat().st_mtime_ns for p in copy.iterdir() if (p / "summary.json").exists()}
    assert run_status(half) == "partial"

    events = []

    class Record:
        def run_start(self, run, index, total, resuming):
            events.append(("start", run.id, resuming))

        def run_skipped(self, run, index, total):
            events.append(("skip", run.id))

        def run_end(self, run, record):
            events.append(("end", run.id, record.status))

        def search_callbacks(self, run):
            return None

    # a temporary file of ablation.json's atomic write, left by a SIGKILL: removed by the resume once stale (a
    # sibling shard's, being written now, is not)
    stale, fresh = copy / ".ablation.json.nxnp2_0s.tmp", copy / ".ablation.json.abcd1234.tmp"
    for path in (stale, fresh):
        path.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    cfg = load_ablation(recipe, ["runtime.threads=1"])
    state = run_ablation(cfg, copy, resume=True, callbacks=Record())
    assert not stale.exists() and fresh.exists()
    assert events == [("skip", "X-seed0"), ("skip", "ABC-seed0"), ("skip", "X-seed1"),
                      ("start", "ABC-seed1", True), ("end", "ABC-seed1", "finished")]
    after = {name: (copy / name / "summary.json").stat().st_mtime_ns for name in before}
    assert after == before  # finished runs untouched
    assert all(r.status == "finished" for r in state.runs)


def test_a_failed_run_does_not_stop_the_others_and_is_retried_on_resume(tmp_path):
    # ABC's batch is larger than the 64 images of each half: its search raises when it builds its data.
    recipe = _write(tmp_path, seeds=[0], row_overrides={"ABC": {"data": {"batch_size": 1000}}})
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 1
    assert "1 of 2 runs failed" in result.output and "--resume" in result.output
    state = json.loads((out / "ablation.json").read_text())
    status = {r["id"]: r["status"] for r in state["runs"]}
    assert status == {"X-seed0": "finished", "ABC-seed0": "failed"}
    assert "batch_size=1000" in (out / "ABC-seed0" / "error.txt").read_text()
    assert "1 failed" in (out / "table3.md").read_text()

    x_summary = (out / "X-seed0" / "summary.json").stat().st_mtime_ns
    _write(tmp_path, seeds=[0])  # fix the recipe and resume: only the failed run runs again
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output
    assert "X-seed0: finished earlier, skipped" in result.output
    assert (out / "X-seed0" / "summary.json").stat().st_mtime_ns == x_summary
    assert not (out / "ABC-seed0" / "error.txt").exists()
    assert all(r["status"] == "finished" for r in json.loads((out / "ablation.json").read_text())["runs"])


def stop_in_row(label: str):
    """Ablation callbacks that stop (Ctrl-C) at the end of the first epoch of row ``label``'s search."""
    from eldarts_cli.engines.ablate import QuietAblation
    from eldarts_cli.engines.search import _Silent

    class Stop(QuietAblation):
        def search_callbacks(self, run):
            class Epochs(_Silent):
                def epoch_end(self, row):
                    if run.row == label:
                        raise KeyboardInterrupt

            return Epochs()

    return Stop()


def test_interrupted_ablation_resumes(tmp_path):
    recipe = _write(tmp_path, seeds=[0])
    cfg = load_ablation(recipe, ["runtime.threads=1"])
    out = tmp_path / "out"

    with pytest.raises(KeyboardInterrupt):
        run_ablation(cfg, out, callbacks=stop_in_row("ABC"))
    status = {r["id"]: r["status"] for r in json.loads((out / "ablation.json").read_text())["runs"]}
    assert status == {"X-seed0": "finished", "ABC-seed0": "partial"}
    with pytest.raises(RunFolderError, match="already holds an ablation"):
        run_ablation(cfg, out)
    state = run_ablation(cfg, out, resume=True)
    assert all(r.status == "finished" for r in state.runs)
    assert len((out / "ABC-seed0" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler (KeyboardInterrupt) for the test, whatever an earlier test left, then back."""
    import signal

    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_at_the_end_of_a_run_leaves_it_recorded_as_finished(tmp_path, monkeypatch, python_sigint):
    """Ctrl-C as a run ends: a real SIGINT while its end is recorded left its record (ablation-run.json) and the
    snapshot (ablation.json) saying "running"; one right after its summary was written recorded a finished run as
    "interrupted". The end of a run is now recorded whole before the interrupt stops the ablation, and a run whose
    result was saved is recorded as finished; --resume skips it."""
    import os
    import signal

    from eldarts_cli.engines import ablate as engine
    from eldarts_cli.engines.search import Searcher

    recipe = _write(tmp_path, rows=["X"], seeds=[0, 1])
    cfg = load_ablation(recipe, ["runtime.threads=1"])
    out = tmp_path / "out"
    record, search = engine._Book.record, Searcher.run

    def ctrl_c_while_recording_the_end(self, run, outcome, **fields):
        if outcome != "running":
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs between bytecodes: in the call below, or here
        return record(self, run, outcome, **fields)

    def ctrl_c_after_the_summary(self):
        search(self)  # the run's result saved: summary.json, genotype.json
        raise KeyboardInterrupt

    for patched, ident in ((("_Book", "record"), "X-seed0"), (("Searcher", "run"), "X-seed1")):
        with monkeypatch.context() as patch:
            if patched[0] == "_Book":
                patch.setattr(engine._Book, "record", ctrl_c_while_recording_the_end)
            else:
                patch.setattr(Searcher, "run", ctrl_c_after_the_summary)
            with pytest.raises(KeyboardInterrupt):
                run_ablation(cfg, out, resume=(out / "ablation.json").exists())
        assert (out / ident / "summary.json").exists()
        assert json.loads((out / ident / "ablation-run.json").read_text())["outcome"] == "finished", ident
        status = {r["id"]: r["status"] for r in json.loads((out / "ablation.json").read_text())["runs"]}
        assert status[ident] == "finished", status
    summaries = {ident: (out / ident / "summary.json").stat().st_mtime_ns for ident in ("X-seed0", "X-seed1")}
    state = run_ablation(cfg, out, resume=True)
    assert all(r.status == "finished" for r in state.runs)
    assert {ident: (out / ident / "summary.json").stat().st_mtime_ns for ident in summaries} == summaries


def test_json_output_is_json_alone(finished):
    """ablate --json: stdout holds the JSON alone (it followed the folder line and each run's progress line);
    what is printed for people goes to stderr."""
    recipe, out, _ = finished
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["missing"] == [] and len(data["table3"]) > 0
    assert "ablation folder:" in result.stderr


def test_resume_refuses_a_changed_recipe_and_missing_ablation(finished, tmp_path):
    recipe, out, _ = finished
    for dry in ([], ["--dry-run"]):  # the dry run refuses it too (it planned the runs as pending)
        result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--set", "search.epochs=3", *dry])
        assert result.exit_code == 2 and "different recipe" in result.output and "search.epochs" in result.output
        assert result.output.count("error:") == 1 and "\n" not in result.output.split("error:")[1].strip()  # one line
    # other rows or seeds: refused (a resume of rows=[ABC], seeds=[5] ran ABC-seed5 and rewrote the tables without
    # the runs the folder had finished)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for change in (["--set", "seeds=[5]"], ["--set", "rows=[ABC]"]):
        for dry in ([], ["--dry-run"]):
            result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), *change, *dry])
            assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
            flat = " ".join(result.output.split())
            assert "holds an ablation of runs X-seed0, ABC-seed0, X-seed1, ABC-seed1" in flat, flat
            assert "--resume continues the same plan" in flat and "ablation folder:" not in flat
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not (out / "ABC-seed5").exists()
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    # a folder of another kind is named as such, not sent to start an ablation there (refused too)
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out / "X-seed0")])
    assert result.exit_code == 2 and "holds a search run, not an ablation" in result.output
    assert "ablation folder:" not in result.output  # refused before the folder line
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(tmp_path / "mine")])
    assert result.exit_code == 2 and "holds no eldarts ablation" in result.output and "another --out" in result.output


# -- aggregation -------------------------------------------------------------


def test_mean_and_sample_std_on_known_numbers():
    mean, std = mean_std([2.5, 2.7, 2.9])
    assert mean == pytest.approx(2.7) and std == pytest.approx(0.2)
    assert mean_std([3.0]) == (3.0, None)
    assert mean_std([]) == (None, None)


def test_aggregate_row_on_known_numbers():
    results = [
        {"error": 2.0, "error_metric": "test error", "search_cost_days": 0.07, "search_cost_unit": "GPU-days",
         "skip_normal": 1, "skip_reduce": 0, "entropy_normal": 1.0, "entropy_reduce": 1.2},
        {"error": 4.0, "error_metric": "test error", "search_cost_days": 0.08, "search_cost_unit": "GPU-days",
         "skip_normal": 3, "skip_reduce": 2, "entropy_normal": 0.5, "entropy_reduce": 0.8},
    ]
    row = aggregate_row("AB", results, failed=1)
    assert row["A"] and row["B"] and not row["C"] and not row["published"]
    assert row["runs"] == 2 and row["failed"] == 1
    assert row["error_mean"] == pytest.approx(3.0) and row["error_std"] == pytest.approx(2 ** 0.5)
    assert row["search_cost_days"] == pytest.approx(0.075) and row["search_cost_unit"] == "GPU-days"
    assert row["skip_normal_mean"] == pytest.approx(2.0) and row["skip_reduce_mean"] == pytest.approx(1.0)
    assert row["entropy_normal_mean"] == pytest.approx(0.75) and row["error_metric"] == "test error"
    # runs on a CPU and a GPU: no mean of CPU-days and GPU-days together
    mixed = aggregate_row("AB", [results[0], {**results[1], "search_cost_unit": "CPU-days"}])
    assert mixed["search_cost_days"] is None and mixed["search_cost_unit"] == "CPU-days / GPU-days"
    assert mixed["error_mean"] == pytest.approx(3.0)


TINY_EVAL = """
name: tiny-eval
seed: 0
data: {dataset: digits, batch_size: 16, crop_padding: 1, cutout: 0, limit: 64, test_limit: 64}
network: {kind: cifar, channels: 4, layers: 3, auxiliary: false, drop_path: 0.0}
train: {epochs: 1, max_steps: 2, onnx: false}
"""


def test_evaluated_ablation_aggregates_test_error(tmp_path):
    pytest.importorskip("eldarts_cli.engines.evaluate")
    (tmp_path / "eval.yaml").write_text(TINY_EVAL)
    recipe = _write(tmp_path, rows=["ABC"], seeds=[0], evaluate={"recipe": "eval.yaml"})
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "ABC-seed0" / "eval" / "results.json").read_text())
    csv = [line.split(",") for line in (out / "table3.csv").read_text().splitlines()]
    measured = next(row for row in csv if row[0] == "measured")
    header = csv[0]
    assert measured[header.index("error_metric")] == "test error on digits"  # (the paper's rows are CIFAR-10)
    assert float(measured[header.index("error_mean")]) == pytest.approx(results["test_top1_error"])
    assert run_status(out / "ABC-seed0", evaluate=True) == "finished"
    # a resume (or another shard) with other evaluation settings, or none, was taken and its rows mixed test errors
    # of other trainings (or validation errors) into one row: refused, by the run and its dry run
    for sets, said in ((["--set", "evaluate.overrides.train.epochs=3"], "ABC-seed0 (its evaluation): train.epochs: 1 -> 3"),
                       (["--set", "evaluate=null"], "ABC-seed0 (its evaluation): evaluated, and the ablation now has "
                                                    "no evaluate section")):
        for dry in ([], ["--dry-run"]):
            result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--set", "runtime.threads=1",
                                         *sets, *dry])
            flat = " ".join(result.output.split())
            assert result.exit_code == 2 and "existing runs were made with a different recipe" in flat, flat
            assert said in flat, flat
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--set", "runtime.threads=2"])
    assert result.exit_code == 0, result.output  # (runtime may differ)
    # an earlier eldarts' files lack the fields added since: read with their defaults, not as "None -> 'cosine'"
    for path in (out / "ABC-seed0" / "recipe.yaml", out / "ABC-seed0" / "eval" / "recipe.yaml"):
        text = path.read_text()
        assert "  kind: cosine\n" in text or "derive:" in text
        path.write_text(text.replace("  kind: cosine\n", "").replace("  both: false\n", ""))
    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output


def test_bad_evaluation_recipe_stops_before_any_search(tmp_path):
    pytest.importorskip("eldarts_cli.engines.evaluate")
    (tmp_path / "eval.yaml").write_text(TINY_EVAL.replace("epochs: 1", "epoch: 1"))
    recipe = _write(tmp_path, evaluate={"recipe": "eval.yaml"})
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "evaluation recipe" in result.output and "epochs" in result.output
    assert not (tmp_path / "out").exists()


def test_augmentation_the_evaluation_ignores_is_warned_of(tmp_path):
    """``evaluate`` warns of augmentation settings its dataset's training ignores; an ablation's evaluation recipe
    was not warned of (auto_augment on digits trained without it, a row of Table 3 each)."""
    (tmp_path / "eval.yaml").write_text(TINY_EVAL)
    recipe = _write(tmp_path, evaluate={"recipe": "eval.yaml", "overrides": ["data.auto_augment=rand-m9-mstd0.5"]})
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert f"warning: evaluation recipe {tmp_path / 'eval.yaml'}: data.auto_augment (rand-m9-mstd0.5) is not applied " \
           "to digits" in flat
    (tmp_path / "eval.yaml").write_text(TINY_EVAL)
    recipe = _write(tmp_path, evaluate={"recipe": "eval.yaml"})
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "out"), "--dry-run"])
    assert result.exit_code == 0 and "not applied" not in result.output, result.output


# -- spread over devices and machines ------------------------------------------


def _measured(out: Path, drop=("search_cost_days", "search_cost_days_std")) -> list[dict]:
    """Table 3's measured rows without the wall-time columns (which no two runs share)."""
    import csv

    with open(out / "table3.csv") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f) if row["source"] == "measured"]


@pytest.mark.slow
def test_two_cpu_workers_give_the_sequential_table(finished, tmp_path):
    """--devices cpu,cpu: the 4 searches run 2 at a time in worker processes; same seeds, same rows."""
    recipe, sequential, _ = finished
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--devices", "cpu,cpu",
                                 "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output
    assert _measured(out) == _measured(sequential) and len(_measured(out)) == 2
    records = {}
    for run in ("X-seed0", "ABC-seed0", "X-seed1", "ABC-seed1"):
        assert (out / run / "genotype.json").read_text() == (sequential / run / "genotype.json").read_text()
        records[run] = json.loads((out / run / "ablation-run.json").read_text())
        assert records[run]["outcome"] == "finished" and records[run]["device"] == "cpu"
    assert len({r["worker_pid"] for r in records.values()}) == 2  # one worker process per device
    assert "on cpu" in result.output


def test_two_shards_cover_the_plan_exactly_once(tmp_path):
    recipe = _write(tmp_path)
    out = tmp_path / "out"
    cfg = load_ablation(recipe, ["runtime.threads=1"])
    plan = [r.id for r in plan_ablation(cfg, out)]
    parts = [[r.id for _, r in select_shard(plan_ablation(cfg, out), (i, 2))] for i in (1, 2)]
    assert sorted(parts[0] + parts[1]) == sorted(plan) and not set(parts[0]) & set(parts[1])
    assert parts == [["X-seed0", "X-seed1"], ["ABC-seed0", "ABC-seed1"]]  # every 2nd run of the seed-major plan

    first = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--shard", "1/2", "--set", "runtime.threads=1"])
    assert first.exit_code == 0, first.output
    assert "Table 3 lacks 2 of 4 runs" in first.output and "ABC-seed1: not started" in first.output
    second = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--shard", "2/2", "--set", "runtime.threads=1"])
    assert second.exit_code == 0, second.output  # joins the first shard's folder: no --resume needed
    assert "lacks" not in second.output
    for run in plan:
        record = json.loads((out / run / "ablation-run.json").read_text())
        assert record["shard"] == ("1/2" if run in parts[0] else "2/2") and record["outcome"] == "finished"
        assert [r["epoch"] for r in read_metrics(out / run)] == [0, 1]  # each search ran once
    state = json.loads((out / "ablation.json").read_text())
    assert state["finished"] and all(r["status"] == "finished" for r in state["runs"])
    assert all(line.split(",")[5] == "2" for line in (out / "table3.csv").read_text().splitlines()[1:]
               if line.startswith("measured"))
    again = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--shard", "1/2", "--set", "runtime.threads=1"])
    assert again.exit_code == 0 and again.output.count("finished earlier, skipped") == 2
    other = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--shard", "1/2", "--set", "seeds=[0]"])
    assert other.exit_code == 2 and "Shards must share one plan" in other.output
    bad = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "x"), "--shard", "3/2"])
    assert bad.exit_code == 2 and "--shard takes I/N" in bad.output
    # a shard beyond the plan's runs ran nothing without a word; a mistyped --resume of a shard started a new ablation
    empty = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--shard", "5/8", "--set",
                                "runtime.threads=1"])
    assert empty.exit_code == 0 and "warning: shard 5/8 holds no run: the plan has 4" in \
        " ".join(empty.output.split()), empty.output
    for dry in ([], ["--dry-run"]):
        typo = runner.invoke(app, ["ablate", str(recipe), "--resume", str(tmp_path / "otu"), "--shard", "1/2", *dry])
        assert typo.exit_code == 2 and "cannot resume" in typo.output and not (tmp_path / "otu").exists(), typo.output


def test_a_run_folder_is_claimed_by_one_process(tmp_path):
    import socket
    import subprocess
    import sys
    import threading

    from eldarts_cli.core.io import write_json
    from eldarts_cli.runs.ablation import claim_run, read_claim, run_status

    folder = tmp_path / "run"
    barrier, results = threading.Barrier(8), []

    def race():
        barrier.wait()
        results.append(claim_run(folder)[0])

    threads = [threading.Thread(target=race) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [c for c in results if c is not None]
    assert len(results) == 8  # every thread got an answer (none raised)
    assert len(winners) == 1 and run_status(folder) == "running"
    assert not list(folder.glob(".claim.*.tmp"))  # no temporary file left
    assert claim_run(folder) == (None, read_claim(folder))  # this process is alive: not taken over
    winners[0].release()
    again, _ = claim_run(folder)
    assert again.path.name == "claim-2.json" and run_status(folder) == "running"  # numbers are never reused
    again.release()
    assert run_status(folder) == "pending" and sorted(p.name for p in folder.iterdir()) == ["released-2.json"]

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_json(folder / "claim-3.json", {"host": socket.gethostname(), "processes": [[int(dead.stdout), None]]})
    assert run_status(folder) == "pending"  # its process is gone
    taken, _ = claim_run(folder)
    assert taken.path.name == "claim-4.json" and not (folder / "claim-3.json").exists()
    taken.release()
    write_json(folder / "claim-5.json", {"host": "another-machine", "processes": [[1, None]], "since": "then"})
    claim, holder = claim_run(folder)
    assert claim is None and holder["host"] == "another-machine" and run_status(folder) == "running"


@pytest.mark.slow(seconds=20)
def test_a_killed_worker_leaves_a_run_that_resume_finishes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe = _write(tmp_path, rows=["ABC"], overrides={"search": {"epochs": 6, "warmup_epochs": 1, "max_steps": 2,
                                                                   "val_batches": 1}})
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "eldarts_cli", "ablate", str(recipe), "--out", str(out), "--devices", "cpu,cpu",
           "--set", "runtime.threads=1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    victim = out / "ABC-seed0"
    deadline = time.time() + 240
    while not (victim / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    worker = json.loads((victim / "ablation-run.json").read_text())["worker_pid"]
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=240)
    assert not (victim / "summary.json").exists(), "killed too late to test anything"
    assert proc.returncode == 1
    assert "1 of 2 runs did not finish (ABC-seed0)" in stderr and "--resume" in stderr and "--devices cpu,cpu" in stderr
    assert "died (exit code -9)" in stdout
    assert json.loads((out / "ABC-seed1" / "summary.json").read_text())["finished"]  # the other worker went on
    state = {r["id"]: r["status"] for r in json.loads((out / "ablation.json").read_text())["runs"]}
    assert state == {"ABC-seed0": "partial", "ABC-seed1": "finished"}

    result = runner.invoke(app, ["ablate", str(recipe), "--resume", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 0, result.output
    assert "ABC-seed0: A ✓  B ✓  C ✓  seed 0  (resuming)" in result.output
    assert [r["epoch"] for r in read_metrics(victim)] == list(range(6))
    assert all(r["status"] == "finished" for r in json.loads((out / "ablation.json").read_text())["runs"])


def test_a_diverged_runs_error_file_says_how_an_ablation_takes_a_lower_lr(tmp_path):
    """A divergence's advice (--set optim.lr=...) cannot be followed for one run of an ablation (its runs share one
    recipe): error.txt says to put it in the ablation's overrides and start a new ablation folder."""
    import types

    from eldarts_cli.core.errors import DivergenceError
    from eldarts_cli.engines.ablate import _write_error

    run = types.SimpleNamespace(folder=tmp_path / "ABC-seed0")
    _write_error(run, DivergenceError("loss is nan at epoch 2; lower optim.lr", epoch=2, changes=["optim.lr=0.01"]))
    text = (run.folder / "error.txt").read_text()
    assert text.startswith("loss is nan at epoch 2") and "overrides: {optim: {lr: ...}}" in text
    _write_error(run, ValueError("boom"))  # other failures: the traceback alone
    assert "overrides" not in (run.folder / "error.txt").read_text()


def test_a_diverged_run_is_not_sent_to_a_resume_that_diverges_again(tmp_path):
    """The run's line said "resume (e.g. --set optim.lr=...)" and the last line "Retry them with: ... --resume",
    which runs the same recipe and diverges again; both now say to lower the lr in the ablation recipe and start a
    new ablation folder, and --resume is offered for the runs it can finish."""
    recipe = _write(tmp_path, rows=["X", "ABC"], seeds=[0], row_overrides={"X": {"optim": {"lr": 1.0e9}}})
    out = tmp_path / "out"
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "runtime.threads=1"])
    assert result.exit_code == 1, result.output
    flat = " ".join(result.output.split())
    assert "X-seed0" in flat and "--set optim.lr=" not in flat, flat
    assert ("error: 1 of 2 runs diverged (X-seed0): an ablation's --resume runs it with the same recipe again: "
            "lower the learning rate in the ablation recipe's overrides (or row_overrides) and start a new "
            "ablation folder") in flat, flat
    assert "Retry them with" not in flat
    assert json.loads((out / "ABC-seed0" / "summary.json").read_text())["finished"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_devices_errors_name_the_devices_option(tmp_path):
    """A bad --devices list is reported as --devices, with a --devices value that runs here (not "--device cpu",
    an option ablate does not have); nothing is run or written."""
    from eldarts_cli.core.errors import EldartsError
    from eldarts_cli.engines.ablate import parse_devices

    with pytest.raises(EldartsError, match=r"^--devices cuda:1: device 'cuda:1' asked for, but CUDA is not "
                                            r"available here; use --devices cpu,cpu$"):
        parse_devices("cpu,cuda:1")
    with pytest.raises(EldartsError, match=r"^--devices gpu: unknown device 'gpu'"):
        parse_devices("cpu, gpu")
    with pytest.raises(EldartsError, match=r"^--devices 'cpu,,cpu' has an empty entry"):  # was taken as cpu,cpu
        parse_devices("cpu,,cpu")
    assert parse_devices(" cpu , cpu ") == ["cpu", "cpu"]
    recipe = _write(tmp_path)
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(tmp_path / "out"), "--devices", "cuda:0"])
    assert result.exit_code == 2 and "use --devices cpu\n" in result.output and "--device cpu" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_device_this_machine_lacks_is_refused_before_any_run(tmp_path, monkeypatch):
    """``--set runtime.device=mps`` without MPS: one error line, exit 2, no folder, as ``eldarts search`` refuses it
    (each of the ablation's runs failed on it in turn, ten error.txt, exit 1); ``--dry-run`` plans with a warning."""
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    out = tmp_path / "abl"
    args = ["ablate", str(RECIPES / "ablate-quick.yaml"), "--out", str(out), "--set", "runtime.device=mps"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "error: device 'mps' asked for, but MPS is not available here" in result.output
    assert "Traceback" not in result.output and not out.exists()
    if not torch.cuda.is_available():  # ablate has no --device to advise
        cuda = runner.invoke(app, [*args[:-1], "runtime.device=cuda"])
        assert cuda.exit_code == 2 and "use --set runtime.device=cpu (or --devices cpu)\n" in cuda.output
    planned = runner.invoke(app, [*args, "--dry-run"])
    assert planned.exit_code == 0, planned.output
    assert "warning: device 'mps' asked for, but MPS is not available here; a run here would be refused" in planned.output
    if not torch.cuda.is_available():  # runtime.cuda_graphs off CUDA: refused likewise (each search failed on it)
        graphs = [*args[:-1], "runtime.cuda_graphs=true"]
        refused = runner.invoke(app, graphs)
        assert refused.exit_code == 2 and not out.exists(), refused.output
        assert "error: runtime.cuda_graphs records CUDA graphs: this search runs on cpu" in refused.output
        planned = runner.invoke(app, [*graphs, "--dry-run"])
        assert planned.exit_code == 0 and "warning: runtime.cuda_graphs records CUDA graphs" in planned.output


def test_dry_run_says_what_the_ablation_and_its_searches_refuse(tmp_path):
    """ablate --dry-run printed the plan and exited 0, saying nothing, where the ablation then refused its --out
    at once (now the same error line, exit 2) or every search failed on a data.limit too small for a batch of each
    half (now a warning naming them; the ablation still runs the others, as a failed run does not stop them)."""
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    args = ["ablate", str(RECIPES / "ablate-quick.yaml"), "--out", str(full)]
    planned, ran = runner.invoke(app, [*args, "--dry-run"]), runner.invoke(app, args)
    assert planned.exit_code == ran.exit_code == 2, ran.output
    line = next(line for line in ran.output.splitlines() if line.startswith("error: "))
    assert "is not empty" in line and line in planned.output.splitlines() and "Traceback" not in planned.output
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    small = runner.invoke(app, ["ablate", str(RECIPES / "ablate-quick.yaml"), "--out", str(tmp_path / "abl"),
                                "--set", "data.limit=20", "--set", "seeds=[0]", "--dry-run"])
    assert small.exit_code == 0, small.output
    assert ("warning: data.batch_size=32 is larger than each half of the 20 training images; lower it or raise "
            "data.limit; every search (5) would fail here") in small.output.splitlines()
    assert not (tmp_path / "abl").exists()


def test_an_evaluation_of_another_network_than_the_priced_one_is_warned_of():
    """Table 3's cost column is the cost.network's network: an evaluation that trains another (other channels)
    set one network's cost beside another's test error, without a word."""
    args = ["ablate", str(RECIPES / "ablate-cost-quick.yaml"), "--dry-run"]
    assert "warning" not in runner.invoke(app, args).output
    other = runner.invoke(app, [*args, "--set", "evaluate.overrides.network.channels=4"])
    flat = " ".join(other.output.split())
    assert other.exit_code == 0 and flat.count("warning:") == 1, other.output
    assert ("prices the cifar network C=8, 5 cells, on digits, but the ablation's evaluation trains the cifar "
            "network C=4, 5 cells, on digits: Table 3's cost column is the priced network's") in flat


def test_dry_run_says_a_cost_sections_network_is_missing(tmp_path, monkeypatch):
    """A cost sweep run from another folder: cost.network (a path from where eldarts runs) did not exist, the dry
    run said nothing and every search then failed on it; the dry run now warns, naming it, as a search's does."""
    monkeypatch.chdir(tmp_path)
    planned = runner.invoke(app, ["ablate", str(RECIPES / "ablate-cost-quick.yaml"), "--out", str(tmp_path / "abl"),
                                  "--dry-run"])
    assert planned.exit_code == 0, planned.output
    line = next(line for line in planned.output.splitlines() if line.startswith("warning: cost.network"))
    assert "eval-quick.yaml does not exist" in line and line.endswith("would fail here"), line
    assert not (tmp_path / "abl").exists()
    # the run refuses it before its first search (each search failed on it in turn: exit 1, tracebacks in error.txt,
    # "eldarts_cli.models.cost.CostError: ..." in the status lines); the advice no longer names the missing path
    result = runner.invoke(app, ["ablate", str(RECIPES / "ablate-cost-quick.yaml"), "--out", str(tmp_path / "abl")])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and flat.count("error:") == 1 and "Traceback" not in flat, result.output
    assert "error: every search (3) would fail on it: cost.network recipes/eval-quick.yaml does not exist" in flat
    assert "run from the folder it is relative to, or give its absolute path" in flat
    assert not (tmp_path / "abl").exists()


def test_a_failed_runs_eldarts_error_is_recorded_as_its_one_line(tmp_path):
    """error.txt held the traceback of a user-facing error too, whose last line, the status shown, began with its
    class's module path ("failed: eldarts_cli.models.cost.CostError: ...")."""
    import types

    from eldarts_cli.core.errors import RecipeError
    from eldarts_cli.engines.ablate import _write_error
    from eldarts_cli.runs.ablation import last_line

    run = types.SimpleNamespace(folder=tmp_path / "X-seed0")
    _write_error(run, RecipeError("data.limit 3 leaves no batch"))
    assert (run.folder / "error.txt").read_text() == "data.limit 3 leaves no batch\n"
    try:
        raise RuntimeError("boom")
    except RuntimeError as error:
        _write_error(run, error)
    text = (run.folder / "error.txt").read_text()
    assert text.startswith("Traceback") and last_line(run.folder / "error.txt") == "RuntimeError: boom"


def test_a_set_key_of_neither_recipe_is_named_with_a_suggestion(tmp_path):
    """``ablate --set rowz=paper`` was passed to every search, whose error listed the search recipe's sections;
    a key of neither recipe is refused once, with the ablation's fields and a "did you mean"."""
    result = runner.invoke(app, ["ablate", str(RECIPES / "ablate-quick.yaml"), "--out", str(tmp_path / "a"),
                                 "--set", "rowz=paper", "--dry-run"])
    assert result.exit_code == 2 and not (tmp_path / "a").exists(), result.output
    assert ("error: --set rowz=paper: 'rowz' is neither a field of the ablation recipe nor a section of its searches "
            "(did you mean 'rows'?)") in " ".join(result.output.split())


def test_a_set_seed_is_refused_with_the_seeds_to_give(tmp_path):
    """``ablate --set seed=3`` was accepted and then overwritten by each run's own seed (0 and 1): nothing said."""
    result = runner.invoke(app, ["ablate", str(RECIPES / "ablate-quick.yaml"), "--out", str(tmp_path / "a"),
                                 "--set", "seed=3"])
    assert result.exit_code == 2 and not (tmp_path / "a").exists(), result.output
    assert ("error: --set seed=3: seed is each run's own, taken from the ablation's seeds; give --set 'seeds=[3]' "
            "instead") in " ".join(result.output.split())
    # a key each row sets (entropy.enabled: C) was accepted and replaced in every run; a key it does not set is taken
    rows_set = runner.invoke(app, ["ablate", str(RECIPES / "ablate-quick.yaml"), "--dry-run",
                                   "--set", "entropy.enabled=false"])
    assert rows_set.exit_code == 2 and "error: --set entropy.enabled=false: entropy.enabled is what each row sets" \
        in " ".join(rows_set.output.split()), rows_set.output
    assert runner.invoke(app, ["ablate", str(RECIPES / "ablate-quick.yaml"), "--dry-run",
                               "--set", "entropy.weight=0.01"]).exit_code == 0


def test_report_names_a_damaged_summary_of_an_ablation_run(finished, tmp_path):
    """A finished run whose summary.json was damaged read "interrupted; its last checkpoint is kept" in report
    (a single search's report names the damage and what to do)."""
    _, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "X-seed0" / "summary.json").write_text('{"x')
    result = runner.invoke(app, ["report", str(copy)])
    flat = " ".join(result.output.split())
    assert "X-seed0: interrupted" not in flat, flat
    assert "X-seed0:" in flat and "summary.json is not valid JSON" in flat and "its summary is damaged" in flat
    assert f"move{copy / 'X-seed0' / 'summary.json'}awayandresumeagain" in "".join(flat.split())  # (paths wrap)


def test_a_set_path_is_read_from_where_eldarts_runs(tmp_path, monkeypatch):
    """``--set evaluate.recipe=recipes/eval-quick.yaml`` (or ``base=``) was read from the ablation recipe's folder
    (recipes/recipes/...) and blamed on the file; a path typed in the shell is read from the current folder, and
    a missing one is named as the --set."""
    monkeypatch.chdir(RECIPES.parent)
    args = ["ablate", "recipes/ablate-quick.yaml", "--dry-run", "--out", str(tmp_path / "a")]
    result = runner.invoke(app, [*args, "--set", "evaluate.recipe=recipes/eval-quick.yaml"])
    assert result.exit_code == 0 and "evaluation: recipes/eval-quick.yaml" in result.output, result.output
    result = runner.invoke(app, [*args, "--set", "base=recipes/quickstart.yaml"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, [*args, "--set", "base=recipes/nothing.yaml"])
    assert result.exit_code == 2 and ("error: --set base=recipes/nothing.yaml: search recipe recipes/nothing.yaml "
                                      "does not exist") in " ".join(result.output.split()), result.output
    assert not (tmp_path / "a").exists()


def test_report_leaves_an_edited_table3_and_redraws_its_own_in_a_folder_without_the_marker(finished, tmp_path):
    """An edited table3.md (or a file of the user's named table3.csv) was overwritten by report without a word; it
    is named and left now. In a folder without eldarts' marker a second report refused the table3.* the first one
    wrote ("may not have written"); the files it wrote, as it wrote them, are redrawn."""
    _, out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    edited = (copy / "table3.md").read_text() + "my notes\n"
    (copy / "table3.md").write_text(edited)
    flat = " ".join(runner.invoke(app, ["report", str(copy)]).output.split())
    assert "error:" in flat and "table3.md, which eldarts did not write (or which changed since it did)" in flat, flat
    assert (copy / "table3.md").read_text() == edited
    unmarked = tmp_path / "unmarked"
    shutil.copytree(out, unmarked)
    for name in (".eldarts-run.json", "table3.csv", "table3.md", ".eldarts-written.json"):
        (unmarked / name).unlink(missing_ok=True)
    shutil.rmtree(unmarked / "figures", ignore_errors=True)
    for attempt in (1, 2):
        result = runner.invoke(app, ["report", str(unmarked)])
        assert result.exit_code == 0 and (unmarked / "table3.md").exists(), (attempt, result.output)


def test_a_run_whose_process_was_killed_before_its_first_checkpoint_is_not_called_unstarted(tmp_path):
    """A run that started (its record says "running") and whose process was killed (no claim alive, no checkpoint)
    was listed as "not started"; it was started, and stopped."""
    from eldarts_cli.runs.ablation import missing_runs
    from eldarts_cli.runs.files import AblationRun, AblationRunRecord, AblationState

    folder = tmp_path / "X-seed0"
    folder.mkdir()
    AblationRunRecord(id="X-seed0", outcome="running").write(folder)
    (tmp_path / "X-seed1").mkdir()
    runs = [AblationRun(id=f"X-seed{seed}", row="X", seed=seed, A=False, B=False, C=False, status="pending")
            for seed in (0, 1)]
    state = AblationState(rows=["X"], seeds=[0, 1], runs=runs)
    assert missing_runs(tmp_path, state) == ["X-seed0: interrupted before its first checkpoint", "X-seed1: not started"]


def test_a_worker_whose_main_process_is_gone_leaves_its_run_unfailed(tmp_path, monkeypatch):
    """With --devices, the main process killed: its worker's next message met a broken pipe, and the run was
    recorded as failed ("BrokenPipeError", error.txt), though it was stopped; it is left for --resume."""
    import os
    from types import SimpleNamespace

    import eldarts_cli.engines.ablate as ablate

    def broken(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(ablate, "_run_one", broken)
    run = SimpleNamespace(id="X-seed0", folder=tmp_path / "X-seed0")
    tasks = iter([(run, None), None])
    sent = []
    ablate._worker_main("cpu", SimpleNamespace(recv=lambda: next(tasks)), SimpleNamespace(send=sent.append),
                        os.getppid())
    assert sent == [] and not (tmp_path / "X-seed0" / "error.txt").exists()


def test_a_sibling_shards_run_of_another_recipe_met_midway_stops_this_shard(tmp_path, monkeypatch):
    """Two shards started at the same moment with other recipes each found no run of the other at its start, ran
    all of theirs, and the table mixed them. The recipes are compared again before each run: the second stops."""
    import eldarts_cli.engines.ablate as ablate

    recipe = _write(tmp_path, rows=["X"], seeds=[0, 1])
    out = tmp_path / "out"
    original = ablate._run_one

    def and_a_sibling(run, cfg, *args, **kwargs):
        original(run, cfg, *args, **kwargs)
        other = out / "X-seed1"  # what a sibling shard with search.epochs=3 wrote meanwhile
        other.mkdir(exist_ok=True)
        (other / "recipe.yaml").write_text((run.folder / "recipe.yaml").read_text().replace("epochs: 2", "epochs: 3"))

    monkeypatch.setattr(ablate, "_run_one", and_a_sibling)
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--set", "runtime.threads=1"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and "existing runs were made with a different recipe" in flat, flat
    assert "X-seed1: " in flat and "search.epochs: 3 -> 2" in flat and (out / "X-seed0" / "summary.json").exists()


@pytest.mark.slow(seconds=20)
def test_a_refusal_between_runs_stops_the_busy_workers_as_interrupted(tmp_path, monkeypatch):
    """With --devices, a refusal met before a claim (another shard's runs of another recipe) left this process with
    an error while its workers ran on, until they noticed it gone and ended, their runs recorded as running. The
    busy runs are interrupted and recorded so, as for Ctrl-C."""
    import eldarts_cli.engines.ablate as ablate

    recipe = _write(tmp_path, rows=["X"], seeds=[0, 1, 2],
                    overrides={"search": {"epochs": 4, "warmup_epochs": 1, "max_steps": 2, "val_batches": 1}})
    out = tmp_path / "out"
    calls = []
    original = ablate.check_existing

    def refused_third(runs, evaluation=None):
        calls.append(1)
        if len(calls) == 4:  # (the start's check, two claims, then the third run's claim)
            raise RecipeError("existing runs were made with a different recipe (injected)")
        original(runs, evaluation)

    monkeypatch.setattr(ablate, "check_existing", refused_third)
    result = runner.invoke(app, ["ablate", str(recipe), "--out", str(out), "--devices", "cpu,cpu",
                                 "--set", "runtime.threads=1"])
    assert result.exit_code == 2 and "(injected)" in result.output, result.output
    outcomes = {run: json.loads((out / run / "ablation-run.json").read_text())["outcome"]
                for run in ("X-seed0", "X-seed1") if (out / run / "ablation-run.json").exists()}
    assert outcomes and "running" not in outcomes.values(), outcomes


def test_a_key_value_list_of_overrides_merges_as_the_mapping_it_stands_for(tmp_path):
    """``--set 'overrides=[search.warmup_epochs=0]'`` replaced the file's whole ``overrides`` (every search ran at the
    base recipe's size, without a word), where the mapping form merged; a file's list form beside a --set of a
    search key was refused as "give a mapping"; and an included file's list lost to the file's mapping."""
    (tmp_path / "tiny.yaml").write_text(TINY_SEARCH)
    (tmp_path / "ab.yaml").write_text("name: ab\nbase: tiny.yaml\nrows: [ABC]\nseeds: [0]\n"
                                      "overrides:\n  search: {epochs: 1}\n  network: {channels: 4, layers: 3}\n")
    expected = {"search": {"epochs": 1, "warmup_epochs": 0}, "network": {"channels": 4, "layers": 3}}
    assert load_ablation(tmp_path / "ab.yaml", ["overrides=[search.warmup_epochs=0]"]).overrides == expected
    assert load_ablation(tmp_path / "ab.yaml", ["overrides={search: {warmup_epochs: 0}}"]).overrides == expected
    (tmp_path / "listed.yaml").write_text("name: ab\nbase: tiny.yaml\nrows: [ABC]\nseeds: [0]\n"
                                          "overrides: [search.epochs=1, network.channels=4, network.layers=3]\n")
    assert load_ablation(tmp_path / "listed.yaml", ["search.warmup_epochs=0"]).overrides == expected
    (tmp_path / "top.yaml").write_text("include: listed.yaml\noverrides: {search: {warmup_epochs: 0}}\n")
    assert load_ablation(tmp_path / "top.yaml").overrides == expected


def test_an_included_files_base_is_read_from_its_own_folder(tmp_path, monkeypatch):
    """``base:`` given in an included file was read from the top file's folder: a file of that name there was
    taken instead, without a word."""
    (tmp_path / "other").mkdir()
    (tmp_path / "tiny.yaml").write_text(TINY_SEARCH)  # the decoy beside the top file
    (tmp_path / "other" / "tiny.yaml").write_text(TINY_SEARCH)
    (tmp_path / "other" / "inc.yaml").write_text("base: tiny.yaml\n")
    (tmp_path / "ab.yaml").write_text("include: other/inc.yaml\nname: ab\nrows: [ABC]\nseeds: [0]\n")
    assert load_ablation(tmp_path / "ab.yaml").base.resolve() == (tmp_path / "other" / "tiny.yaml").resolve()
    (tmp_path / "own.yaml").write_text("include: other/inc.yaml\nbase: tiny.yaml\nname: ab\nrows: [ABC]\n")
    assert load_ablation(tmp_path / "own.yaml").base.resolve() == (tmp_path / "tiny.yaml").resolve()
    # the ablation recipe named by a relative path, from another folder: its folder is not added twice
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "common.yaml").write_text("base: ../other/tiny.yaml\n")
    (tmp_path / "sub" / "ab.yaml").write_text("include: common.yaml\nname: ab\nrows: [ABC]\nseeds: [0]\n")
    monkeypatch.chdir(tmp_path)
    assert load_ablation(Path("sub/ab.yaml")).base.resolve() == (tmp_path / "other" / "tiny.yaml").resolve()


def test_a_search_only_runtime_setting_and_an_evaluate_override_typo(tmp_path):
    """--set runtime.recompute=true (README's out-of-memory advice) was refused for an ablation with an evaluate
    stage, as "--set runtime.recompute: unknown key" of the evaluation recipe; a typo in evaluate.overrides was
    blamed on a --set the user never typed, over two lines."""
    from eldarts_cli.engines.ablate import eval_recipe

    (tmp_path / "tiny.yaml").write_text(TINY_SEARCH)
    eval_path = RECIPES / "eval-quick.yaml"
    (tmp_path / "ab.yaml").write_text(f"name: ab\nbase: tiny.yaml\nrows: [ABC]\nseeds: [0]\n"
                                      f"evaluate:\n  recipe: {eval_path}\n")
    cfg = load_ablation(tmp_path / "ab.yaml", ["runtime.recompute=true", "runtime.threads=1"])
    assert cfg.overrides["runtime"]["recompute"] is True
    assert eval_recipe(cfg).runtime.threads == 1
    (tmp_path / "typo.yaml").write_text(f"name: ab\nbase: tiny.yaml\nrows: [ABC]\nseeds: [0]\n"
                                        f"evaluate:\n  recipe: {eval_path}\n  overrides: {{train: {{epochz: 3}}}}\n")
    with pytest.raises(RecipeError) as refused:
        eval_recipe(load_ablation(tmp_path / "typo.yaml"))
    message = str(refused.value)
    assert message.startswith("evaluation recipe of the ablation: the ablation's override train.epochz: ")
    assert "\n" not in message and "--set" not in message
    # a search recipe as evaluate.recipe: what the setting takes, not "use `eldarts search`"
    (tmp_path / "kind.yaml").write_text(f"name: ab\nbase: tiny.yaml\nrows: [ABC]\nseeds: [0]\n"
                                        f"evaluate:\n  recipe: tiny.yaml\n")
    with pytest.raises(RecipeError, match="is a search recipe .*; an ablation's evaluate.recipe is an evaluation "
                                          "recipe$"):
        eval_recipe(load_ablation(tmp_path / "kind.yaml"))


def test_a_device_workers_warnings_are_one_line_each(capfd):
    """``ablate --devices cpu,cpu``: each worker printed Python's two-line warning format with its source line."""
    import warnings

    from eldarts_cli.engines.ablate import _one_line_warning

    before = warnings.showwarning
    try:
        warnings.showwarning = _one_line_warning
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("data.limit=1536 is more than the 1,000 images of train")
    finally:
        warnings.showwarning = before
    assert capfd.readouterr().err == "warning: data.limit=1536 is more than the 1,000 images of train\n"


def test_data_every_search_lacks_is_refused_before_the_first_run(tmp_path, monkeypatch):
    """A data.root that no search can read (missing, or relative and resumed from another folder): every search
    failed on it in turn, an error.txt each, and the resume command printed failed the same way. It is refused
    before the first run; on a resume, with the --set that gives the data's place."""
    from PIL import Image

    x = tmp_path / "x"
    recipe = _write(x, seeds=[0])
    for c, name in enumerate(("a", "b")):
        folder = x / "d" / "train" / name
        folder.mkdir(parents=True)
        for i in range(16):
            Image.new("RGB", (8, 8), (90 * c + 9 * i, 0, 255 - i)).save(folder / f"{i}.png")
    sets = ["data.dataset=imagefolder", "data.root=d", "data.limit=null", "data.batch_size=4", "runtime.threads=1"]
    monkeypatch.chdir(x)
    result = runner.invoke(app, ["ablate", "ablation.yaml", "--out", "out", *(a for s in sets for a in ("--set", s)),
                                 "--set", "data.root=nowhere"])
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "data.root nowhere does not exist" in result.output and "(every search (2) would fail on it)" in \
        " ".join(result.output.split()) and "Traceback" not in result.output
    assert not (x / "out").exists()
    (x / "mine").mkdir()
    (x / "mine" / "notes.txt").write_text("the user's")  # a folder the ablation may not use: said first
    result = runner.invoke(app, ["ablate", "ablation.yaml", "--out", "mine", *(a for s in sets for a in ("--set", s)),
                                 "--set", "data.root=nowhere"])
    assert result.exit_code == 2 and "eldarts did not create" in result.output and "nowhere" not in result.output

    with pytest.raises(KeyboardInterrupt):
        run_ablation(load_ablation(recipe, sets), x / "out", callbacks=stop_in_row("ABC"))
    (tmp_path / "y").mkdir()
    monkeypatch.chdir(tmp_path / "y")
    args = ["ablate", "../x/ablation.yaml", "--resume", "../x/out", *(a for s in sets for a in ("--set", s))]
    before = (x / "out" / "ablation.json").read_bytes()
    result = runner.invoke(app, args)
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert "data.root d does not exist" in flat and "(ABC-seed0: this search would fail on it)" in flat, flat
    assert (f"a relative data.root is read from the current folder ({tmp_path / 'y'}); give the data's place: "
            "eldarts ablate ../x/ablation.yaml --resume ../x/out") in flat and flat.endswith("--set data.root=PATH")
    assert (x / "out" / "ablation.json").read_bytes() == before and not (x / "out" / "ABC-seed0" / "error.txt").exists()
    result = runner.invoke(app, [*args, "--set", "data.root=../x/d"])
    assert result.exit_code == 0, result.output
