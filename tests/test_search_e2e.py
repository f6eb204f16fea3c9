"""A tiny search end to end, run-folder rules, and kill-and-resume equivalence."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import CheckpointError, StorageError
from eldarts_cli.engines.search import Searcher
from eldarts_cli.runs.folders import read_metrics

runner = CliRunner()


ROOT = Path(__file__).resolve().parents[1]


def last_alphas(run: Path) -> dict:
    return read_metrics(run, "alphas")[-1]


def test_the_evaluate_command_of_a_search_on_an_image_folder_reads_the_same_images(tmp_path):
    """A search of CIFAR-10 as JPEGs printed ``eldarts evaluate RUN``, whose default recipe reads torchvision's
    CIFAR-10 ("cifar10 not found" offline); it names the search's images now, with the cell kind's recipe."""
    from eldarts_cli.cli.search import evaluate_command

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("data:\n  dataset: imagefolder\n  root: /data/cifar10-jpeg.tar.gz\n")
    assert evaluate_command(run, "darts") == (f"eldarts evaluate {run} recipes/eval-cifar10.yaml --set "
                                              "data.dataset=imagefolder --set data.root=/data/cifar10-jpeg.tar.gz")
    assert evaluate_command(run, "nb201").startswith(f"eldarts evaluate {run} recipes/eval-nb201-cifar10.yaml --set")
    (run / "recipe.yaml").write_text("data:\n  dataset: cifar10\n")
    assert evaluate_command(run, "darts") == f"eldarts evaluate {run}"


def test_the_evaluate_command_of_a_search_works_from_another_folder(tmp_path, monkeypatch):
    """The command a quickstart search printed, ``eldarts evaluate runs/q recipes/eval-quick.yaml``, worked from the
    repository's root alone; from another folder it names the repository's recipe where it is."""
    import shlex

    from eldarts_cli.cli.search import evaluate_command

    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("data:\n  dataset: digits\n")
    monkeypatch.chdir(ROOT)
    assert evaluate_command(run, "darts") == f"eldarts evaluate {run} recipes/eval-quick.yaml"
    monkeypatch.chdir(tmp_path)
    recipe = shlex.split(evaluate_command(run, "darts"))[-1]
    assert Path(recipe).is_absolute() and Path(recipe).is_file() and Path(recipe).name == "eval-quick.yaml"


@pytest.mark.slow(seconds=30)
def test_a_torchrun_search_whose_selection_outlasts_the_group_timeout_finishes(tiny_recipe, tmp_path):
    """Rank 0 runs perturbation selection alone while the other ranks wait to leave together: their barrier timed
    out (gloo's 30 min, NCCL's 10; here shortened to 3 s) with a traceback, and the run never finished."""
    import os
    import subprocess
    import sys

    wrapper = tmp_path / "short_timeout.py"
    wrapper.write_text("import datetime, sys\n"
                       "import torch.distributed.distributed_c10d as c10d\n"
                       "c10d.default_pg_timeout = datetime.timedelta(seconds=3)\n"
                       "sys.argv[0] = 'eldarts'\n"
                       "from eldarts_cli.cli import run\n"
                       "run()\n")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(wrapper), "search", str(tiny_recipe), "--out", str(out), "--set", "search.epochs=2",
                           "--set", "derive.method=perturbation", "--set", "derive.finetune_epochs=20",
                           "--set", "data.batch_size=16"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["derive_seconds"] > 3 and (out / "derive.json").exists()  # (longer than the timeout)


def test_tiny_search_end_to_end(tiny_recipe, tmp_path):
    out = tmp_path / "my run"  # the evaluate command it prints is quoted for the shell
    result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    # --json: stdout holds the summary alone (it held the progress and tables); people's lines go to stderr
    assert json.loads(result.stdout) == json.loads((out / "summary.json").read_text())
    assert "run folder:" in result.stderr and "genotype:" in result.stderr
    # a search on the digits is evaluated with their recipe (the default one reads CIFAR-10, and failed offline)
    assert f"(eldarts evaluate '{out}' recipes/eval-quick.yaml)" in " ".join(result.stderr.split())
    for name in ("recipe.yaml", "genotype.json", "metrics.jsonl", "metrics.csv", "alphas.jsonl", "checkpoint.pt", "summary.json"):
        assert (out / name).exists(), name
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0]["arch_updates"] is False and rows[1]["arch_updates"] is True  # 1 warm-up epoch
    assert rows[1]["temperature"] == pytest.approx(5.0 * 0.95)
    for key in ("train_loss", "val_acc", "entropy_normal", "skip_normal", "lr", "images_per_s"):
        assert rows[-1][key] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["search_cost"]["unit"] == "CPU-days"
    assert summary["search_cost"]["days"] > 0
    genotype = json.loads((out / "genotype.json").read_text())
    assert len(genotype["normal"]) == 4  # 2 nodes x 2 edges
    assert "normal cell" in result.output and "search cost" in result.output
    # a tiny search's cost in seconds (it read "0.0001 CPU-hours = 0.00000 CPU-days"); summary.json keeps days
    seconds = summary["search_cost"]["hours"] * 3600
    assert f"search cost: {seconds:.3g} CPU-seconds on cpu" in result.stderr, result.stderr
    assert summary["search_cost"]["days"] == pytest.approx(seconds / 86400)
    # the resolved recipe in the folder loads back to the same recipe
    assert load_recipe(out / "recipe.yaml", SearchRecipe) == load_recipe(tiny_recipe, SearchRecipe)
    # the architecture moved after the warm-up, not before
    alphas = read_metrics(out, "alphas")
    assert alphas[0]["alpha_normal"] != alphas[-1]["alpha_normal"]


def test_existing_run_is_never_overwritten(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "recipe.yaml").write_text("precious")  # not a run eldarts made: not even "resume it"
    result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(out)])
    assert result.exit_code == 2
    assert "did not create" in result.output
    assert (out / "recipe.yaml").read_text() == "precious"

    run = tmp_path / "mine"
    assert runner.invoke(app, ["search", str(tiny_recipe), "--out", str(run), "--set", "search.epochs=2"]).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(run)])
    assert result.exit_code == 2
    assert "already holds a search run" in result.output and "--resume" in result.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_corrupted_checkpoint_on_resume(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = runner.invoke(app, ["search", str(tiny_recipe), "--resume", str(out)])
    assert result.exit_code == 2
    assert "corrupted" in result.output and "Traceback" not in result.output


def test_resume_keeps_the_runs_own_overrides(tiny_recipe, tmp_path):
    """Started with --set search.epochs=2 and resumed without it: the run's 2 epochs hold."""
    out = tmp_path / "run"
    (tmp_path / "cut").mkdir()
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["search.epochs=2"])
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, out, callbacks=InterruptAt(epoch=1, step=1)).run()
    result = runner.invoke(app, ["search", str(tiny_recipe), "--resume", str(out)])
    assert result.exit_code == 0, result.output
    assert "search.epochs: 2 -> 3" in result.output
    assert [r["epoch"] for r in read_metrics(out)] == [0, 1]


def test_resume_refuses_a_changed_recipe(tiny_recipe, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Searcher(load_recipe(tiny_recipe, SearchRecipe), out, callbacks=InterruptAt(epoch=1, step=1)).run()
    result = runner.invoke(app, ["search", str(tiny_recipe), "--resume", str(out), "--set", "entropy.weight=0.5"])
    assert result.exit_code == 2 and "entropy.weight" in result.output
    assert "optim.lr" in result.output  # the message lists what may change


class InterruptAt:
    """Raise KeyboardInterrupt (as Ctrl-C would) at a given step of a given epoch."""

    def __init__(self, epoch, step):
        self.target, self.epoch = (epoch, step), None

    def epoch_start(self, epoch, epochs, steps):
        self.epoch = epoch

    def step(self, step):
        if (self.epoch, step) == self.target:
            raise KeyboardInterrupt

    def epoch_end(self, row):
        pass


def test_interrupted_and_resumed_search_ends_identically(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe, SearchRecipe)
    full = Searcher(recipe, tmp_path / "full").run()

    (tmp_path / "cut").mkdir()
    with pytest.raises(KeyboardInterrupt):
        Searcher(recipe, tmp_path / "cut", callbacks=InterruptAt(epoch=1, step=2)).run()
    resumed = Searcher(recipe, tmp_path / "cut", resume=True)
    assert resumed.start_epoch == 1
    assert resumed.run() == full
    assert last_alphas(tmp_path / "cut") == last_alphas(tmp_path / "full")
    assert [r["epoch"] for r in read_metrics(tmp_path / "cut")] == [0, 1, 2]


@pytest.mark.slow(seconds=50)
def test_killed_process_resumes_to_the_same_genotype(tiny_recipe, tmp_path):
    """SIGKILL a real `eldarts search` process after its first checkpoint, resume it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "eldarts_cli", "search", str(tiny_recipe), "--set", "search.epochs=8"]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr

    proc = subprocess.Popen(cmd + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (tmp_path / "cut" / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.05)  # somewhere inside the next epoch (or its checkpoint save)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "genotype.json").exists(), "killed too late to test anything"
    resumed = subprocess.run(cmd + ["--resume", str(tmp_path / "cut")], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "cut" / "genotype.json").read_text()) == json.loads((tmp_path / "ref" / "genotype.json").read_text())
    assert last_alphas(tmp_path / "cut") == last_alphas(tmp_path / "ref")


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    """A crash in the middle of writing leaves the previous checkpoint intact."""
    from eldarts_cli.core import io as runs
    from eldarts_cli.runs.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1}, path)

    def boom(fd):
        raise OSError("disk vanished")

    monkeypatch.setattr(runs.os, "fsync", boom)
    with pytest.raises(StorageError, match="disk vanished"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_truncated_checkpoint_is_reported(tmp_path):
    from eldarts_cli.runs.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"epoch": 1, "blob": list(range(1000))}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_second_order_search_runs_and_moves_alphas(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["search.order=second", "search.epochs=2", "search.max_steps=2"])
    searcher = Searcher(recipe, tmp_path / "run")
    before = searcher.model.alpha_normal.detach().clone()
    searcher.run()
    assert not torch.equal(before, searcher.model.alpha_normal.detach())
    assert torch.isfinite(searcher.model.alpha_normal).all()


def test_second_order_with_zero_step_equals_first_order(tiny_recipe, tmp_path):
    """With xi = 0 the unrolled weights are the weights: DARTS' eq. 7 reduces to the first-order gradient."""
    recipe = load_recipe(tiny_recipe, SearchRecipe)
    s = Searcher(recipe, tmp_path / "run")
    (x, y), (xa, ya) = next(zip(s.data.train.epoch(0), s.data.arch.epoch(0)))
    from eldarts_cli.engines.objectives import entropy_regulariser

    loss = torch.nn.functional.cross_entropy(s.model(xa), ya)
    loss = loss + recipe.entropy.weight * entropy_regulariser([s.model.alpha_normal, s.model.alpha_reduce], 2.0)
    first = torch.autograd.grad(loss, s.model.arch_parameters())
    s._arch_step_second_order(x, y, xa, ya, temp=2.0, lr=0.0)  # grads are kept after the Adam step
    second = [p.grad for p in s.model.arch_parameters()]
    for a, b in zip(second, first):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_second_order_matches_exact_unrolled_gradient(tiny_recipe, tmp_path):
    """The finite-difference Hessian-vector product converges to the exact
    d/dalpha L_val(w - xi grad_w L_train(w, alpha), alpha) (float64, small epsilon;
    at DARTS' epsilon = 0.01 a tiny ReLU/BN network is far from linear)."""
    from torch.func import functional_call

    recipe = load_recipe(tiny_recipe, SearchRecipe, [
        "entropy.enabled=false", "optim.weight_decay=0", "data.dataset=fake", "data.image_size=8",
        "search.hessian_epsilon=1e-7",
    ])
    s = Searcher(recipe, tmp_path / "run")
    model, xi = s.model.double(), 0.5
    torch.manual_seed(0)
    with torch.no_grad():  # spread the alphas so the Hessian term is not negligible
        for p in model.arch_parameters():
            p.normal_(0, 0.5)
    (x, y), (xa, ya) = next(zip(s.data.train.epoch(0), s.data.arch.epoch(0)))
    x, xa = x.double(), xa.double()
    arch = model.arch_parameters()
    names = [n for n, p in model.named_parameters() if any(p is w for w in s.weights)]
    train_loss = torch.nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(train_loss, s.weights, create_graph=True)
    unrolled = {n: w - xi * g for n, w, g in zip(names, s.weights, grads)}
    val_loss = torch.nn.functional.cross_entropy(functional_call(model, unrolled, (xa,)), ya)
    exact = torch.autograd.grad(val_loss, arch)
    first_order = torch.autograd.grad(torch.nn.functional.cross_entropy(model(xa), ya), arch)

    s._arch_step_second_order(x, y, xa, ya, temp=None, lr=xi)
    approx = [p.grad for p in arch]
    for e, a, f in zip(exact, approx, first_order):
        assert (e - a).norm() / e.norm() < 1e-4
        assert (e - f).norm() / e.norm() > 1e-2  # the unrolled term is not negligible here
