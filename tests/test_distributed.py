"""Data-parallel search under torchrun: 2 CPU processes with the gloo backend.

One 2-process search (module fixture) is compared with its ranks, with
one-process searches at the same global batch, and with a run killed after
a checkpoint and resumed. Each launch goes through tests/torchrun_entry.py
(the CLI plus test instruments: per-rank dumps and injected faults).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import typer
import torch

from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import CheckpointError, DistributedError, RecipeError
from eldarts_cli.engines.distributed import Distributed
from eldarts_cli.engines.search import Searcher
from eldarts_cli.runs.folders import read_metrics

pytestmark = pytest.mark.slow(seconds=30)  # one block: most tests share the module's torchrun search
ENTRY = Path(__file__).with_name("torchrun_entry.py")
ROOT = Path(__file__).resolve().parent.parent
#: Large enough per rank (32 images) for the architecture to move with the data, small enough for seconds.
SETTINGS = ["data.batch_size=64", "data.limit=1024", "search.max_steps=8", "search.epochs=2", "seed=5"]


def torchrun(tmp: Path, *args: str, fault: str = "", dump: Path | None = None, timeout: int = 300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAULT": fault, "PYTHONPATH": str(ROOT)}
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        env["DUMP"] = str(dump)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ENTRY),
           "search", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=tmp)


def sets(*items: str) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    from conftest import TINY_SEARCH

    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "tiny.yaml").write_text(TINY_SEARCH)
    out = tmp / "run"
    proc = torchrun(tmp, "tiny.yaml", "--out", str(out), *sets(*SETTINGS), dump=tmp / "dump")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp / "dump" / f"rank{r}.pt") for r in (0, 1)]
    return tmp, out, ranks, proc


def one_process(tmp: Path, name: str, same_batchnorm_batches: bool = False) -> Path:
    recipe = load_recipe(tmp / "tiny.yaml", SearchRecipe, SETTINGS)
    searcher = Searcher(recipe, tmp / name)
    if same_batchnorm_batches:  # each half of a batch through the network alone, as each rank's half is
        model, forward = searcher.model, searcher.model.forward

        def halves(x, detach_arch=False):
            if not model.training:
                return forward(x, detach_arch)
            h = len(x) // 2
            return torch.cat([forward(x[:h], detach_arch), forward(x[h:], detach_arch)])

        model.forward = halves
    searcher.run()
    return tmp / name


def architecture(run: Path) -> torch.Tensor:
    row = read_metrics(run, "alphas")[-1]
    return torch.tensor([row["alpha_normal"], row["alpha_reduce"]])


def test_the_ranks_hold_one_model_and_rank_0_writes(two_process_run):
    tmp, out, ranks, proc = two_process_run
    (a, b) = (r["state"] for r in ranks)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # weights, alphas, BN statistics
    assert torch.equal(a["alpha_normal"], torch.tensor(read_metrics(out, "alphas")[-1]["alpha_normal"]))
    assert not torch.equal(a["alpha_normal"], torch.tensor(read_metrics(out, "alphas")[0]["alpha_normal"]))
    assert ranks[0]["leaks"] == ranks[1]["leaks"] == []  # neither step touched the other's gradients
    assert [r["epoch"] for r in read_metrics(out)] == [0, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["device"].endswith(" x2")
    assert proc.stdout.count("Discovered cells") == 1 and proc.stdout.count("epoch   2") == 1  # rank 0 reports
    # the separable blocks' (C, 1, k, k) and (O, I, 1, 1) weights are contiguous and channels_last at once: DDP's
    # false alarm about their gradients' strides is not shown (engines/distributed.data_parallel)
    assert "Grad strides" not in proc.stderr


def test_two_processes_equal_one_process_given_the_same_batchnorm_batches(two_process_run):
    """The one difference from a 1-process step at the same global batch is BatchNorm: each rank normalises its
    half batch with that half's statistics (DDP keeps BatchNorm per process, as PC-DARTS' multi-GPU search does).
    Run the 1-process network on each half separately and the runs agree to float rounding (the ranks' gradients
    are summed in another order): measured below 3e-8 on the alphas; 1e-5 is far below one Adam step (lr = 0.01)."""
    tmp, out, _, _ = two_process_run
    one = one_process(tmp, "halves", same_batchnorm_batches=True)
    torch.testing.assert_close(architecture(one), architecture(out), rtol=0, atol=1e-5)
    for a, b in zip(read_metrics(one), read_metrics(out)):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
    assert json.loads((one / "genotype.json").read_text()) == json.loads((out / "genotype.json").read_text())


def test_two_processes_agree_with_one_process_at_the_same_global_batch(two_process_run):
    """With plain BatchNorm, statistics of 32 images (x H x W positions) per rank are close to those of 64:
    losses agree within 2% (0.13% measured). The architectures move the same way, but Adam's first steps move
    every alpha by about lr in the sign of its gradient, and the ~10% of components whose gradient is near zero
    (measured on these runs' first batches) may flip with the statistics: the displacements agree in direction
    (cosine 0.86 measured, >= 0.7 asked) and the genotypes in most entries (7 of 8 measured, >= 5 asked; a
    search with another seed shares 2)."""
    tmp, out, _, _ = two_process_run
    one = one_process(tmp, "plain")
    for a, b in zip(read_metrics(one), read_metrics(out)):
        for key in ("train_loss", "val_loss"):
            assert a[key] == pytest.approx(b[key], rel=0.02), key
    start = torch.tensor([read_metrics(one, "alphas")[0][k] for k in ("alpha_normal", "alpha_reduce")])
    moved_one, moved_two = (architecture(run) - start for run in (one, out))
    assert torch.cosine_similarity(moved_one.flatten(), moved_two.flatten(), dim=0) >= 0.7
    cells = [json.loads((run / "genotype.json").read_text()) for run in (one, out)]
    entries = [[tuple(e) for cell in ("normal", "reduce") for e in g[cell]] for g in cells]
    assert sum(a == b for a, b in zip(*entries)) >= 5


def test_killed_after_a_checkpoint_and_resumed_continues_exactly(two_process_run):
    """Every rank is SIGKILLed in the middle of epoch 2 (after epoch 1's checkpoint); torchrun --resume ends with
    the uninterrupted run's weights, alphas and statistics on both ranks, bit for bit."""
    tmp, reference, ranks, _ = two_process_run
    cut = tmp / "cut"
    killed = torchrun(tmp, "tiny.yaml", "--out", str(cut), *sets(*SETTINGS), fault="kill")
    assert killed.returncode != 0 and (cut / "checkpoint.pt").exists() and not (cut / "genotype.json").exists()
    assert [r["epoch"] for r in read_metrics(cut)] == [0]
    resumed = torchrun(tmp, "tiny.yaml", "--resume", str(cut), *sets(*SETTINGS), dump=tmp / "dump-resumed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 2 of 2" in resumed.stdout
    for r in (0, 1):
        state, expected = torch.load(tmp / "dump-resumed" / f"rank{r}.pt")["state"], ranks[r]["state"]
        assert all(torch.equal(state[k], expected[k]) for k in expected), r
    assert [r["epoch"] for r in read_metrics(cut)] == [0, 1]
    assert (cut / "genotype.json").read_text() == (reference / "genotype.json").read_text()


def test_resuming_with_another_number_of_processes_is_refused(two_process_run):
    _, out, _, _ = two_process_run
    recipe = load_recipe(out / "recipe.yaml", SearchRecipe)
    before = (out / "metrics.jsonl").read_text()
    with pytest.raises(CheckpointError, match=r"searched by 2 process\(es\) and cannot continue on 1.*--nproc_per_node 2"):
        Searcher(recipe, out, resume=True)
    assert (out / "metrics.jsonl").read_text() == before


def test_a_rank_that_raises_stops_every_rank_with_one_message(tmp_path, tiny_recipe):
    proc = torchrun(tmp_path, str(tiny_recipe), "--out", str(tmp_path / "run"), fault="raise")
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert output.count("rank 1 cannot read its shard (injected)") == 1  # rank 1 says it; rank 0 stops quietly
    assert "error: rank 1 cannot read its shard" in output


def test_a_peer_killed_after_the_last_collective_step_leaves_a_finished_run_finished(tmp_path, tiny_recipe):
    """Rank 1 killed once its work was done (after the last epoch, before leaving the group): rank 0's last barrier
    failed, and the finished run ended in "another process ended ... continue with --resume" (an evaluation's
    figures not drawn). Rank 0 now warns and finishes; torchrun reports the killed process."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, str(tiny_recipe), "--out", str(out), fault="kill-at-end")
    output = proc.stdout + proc.stderr
    flat = " ".join(output.split())
    assert proc.returncode != 0  # (torchrun's: a worker was killed)
    assert "error:" not in output and "[rank0]: Traceback" not in output, output[-3000:]
    # rank 0 meets the gone peer at its last barrier, or torchrun's SIGTERM first (it stops the other workers)
    assert ("warning: another process of this torchrun launch ended before leaving it" in flat
            or "terminated (SIGTERM): the search has finished and its results are saved" in flat), output[-3000:]
    assert (out / "summary.json").exists() and (out / "genotype.json").exists()


def test_rank_0_killed_while_the_others_wait_for_it_is_said_with_the_resume(tmp_path, tiny_recipe):
    """Rank 0 SIGKILLed while the other ranks wait for it to finish the run alone (perturbation selection, the
    files): torchrun stopped them, and no eldarts line said how to continue (rank 0 gives the resume command). The
    first waiting rank to be stopped now says it in rank 0's place, once."""
    out = tmp_path / "run"
    proc = torchrun(tmp_path, str(tiny_recipe), "--out", str(out), fault="kill-main-at-end")
    output = proc.stdout + proc.stderr
    flat = " ".join(output.split())
    assert proc.returncode != 0 and "[rank1]: Traceback" not in output, output[-3000:]
    said = "terminated (SIGTERM): rank 0 of this torchrun launch ended without a word (killed?); finished epochs " \
           "are saved; continue with torchrun --standalone --nproc_per_node 2 "
    assert flat.count(said) == 1 and f"search {tiny_recipe} --resume {out}" in flat, output[-3000:]


def test_a_peer_gone_at_the_last_barrier_is_a_warning_on_rank_0(monkeypatch):
    """The last barrier (``close()``, every rank's work done) failing because a peer is gone: a warning on rank 0,
    nothing on the others; any other failure of it is raised. The group is left either way."""
    import torch.distributed as torch_dist

    left = []
    monkeypatch.setattr(torch_dist, "destroy_process_group", lambda: left.append(True))
    for rank, failure, expected in ((0, "Connection closed by peer", "warn"), (1, "Connection closed by peer", None),
                                    (0, "Timed out waiting", "raise")):
        def barrier(failure=failure):
            raise RuntimeError(f"[../gloo/transport/tcp/pair.cc:534] {failure}")

        monkeypatch.setattr(torch_dist, "barrier", barrier)
        dist = Distributed(rank=rank, world_size=2, owns_group=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if expected == "raise":
                with pytest.raises(RuntimeError, match="Timed out"):
                    dist.close()
            else:
                dist.close()
        said = [str(w.message) for w in caught]
        assert said == ([] if expected != "warn" else
                        ["another process of this torchrun launch ended before leaving it (stopped or killed), after "
                         "this run's last collective step: its files are complete"])
        assert not dist.owns_group
    assert len(left) == 3


class TwoRanks(Distributed):
    """Rank 0 of 2 whose peer holds ``peer(tensor)``: the per-epoch comparison, without processes."""

    def __init__(self, peer):
        super().__init__(rank=0, world_size=2)
        self.peer = peer

    def all_gather(self, tensor):
        return [tensor, self.peer(tensor.clone())]


def test_ranks_that_drift_apart_stop_the_search_naming_them(tiny_recipe, tmp_path):
    searcher = Searcher(load_recipe(tiny_recipe, SearchRecipe), tmp_path / "run")
    searcher.dist = TwoRanks(lambda t: t)
    searcher.check_ranks_agree(0)  # equal: nothing to say
    n = sum(p.numel() for p in searcher.model.arch_parameters())

    def nudge(at):
        def peer(bits):
            values = bits.view(torch.float64)
            values[at] += 1e-3
            return values.view(torch.int64)
        return peer

    searcher.dist = TwoRanks(nudge(0))
    with pytest.raises(DistributedError, match=r"after epoch 4 the architecture weights of rank\(s\) 1 differ .*0\.001"):
        searcher.check_ranks_agree(3)
    searcher.dist = TwoRanks(nudge(n))
    with pytest.raises(DistributedError, match=r"the network weights of rank\(s\) 1 differ"):
        searcher.check_ranks_agree(3)


def test_second_order_and_uneven_batches_are_refused_under_torchrun(tiny_recipe, tmp_path):
    two = Distributed(rank=0, world_size=2)  # refused before any process group is joined
    recipe = load_recipe(tiny_recipe, SearchRecipe, ["search.order=second"])
    with pytest.raises(RecipeError, match="search.order: second .* one process only"):
        Searcher(recipe, tmp_path / "a", dist=two)
    from eldarts_cli.engines.search import build_search_data

    recipe = load_recipe(tiny_recipe, SearchRecipe, ["data.batch_size=15"])
    with pytest.raises(RecipeError, match="batch_size=15 is the global batch: it must divide over the 2 processes"):
        build_search_data(recipe, torch.device("cpu"), rank=0, world_size=2)
    # what a dry run under torchrun asks (it refused only the batches: a second-order plan exited 0)
    from eldarts_cli.engines.search import check_launch

    with pytest.raises(RecipeError, match="search.order: second .* one process only"):
        check_launch(load_recipe(tiny_recipe, SearchRecipe, ["search.order=second"]), 2)
    check_launch(load_recipe(tiny_recipe, SearchRecipe, ["search.order=second"]), 1)


def test_an_ablations_dry_run_under_torchrun_is_refused_once(tmp_path, monkeypatch):
    """ablate under torchrun: the run refused it after each process had printed its folder; the dry run planned it
    and exited 0. Both refuse it at once."""
    from typer.testing import CliRunner

    from eldarts_cli.cli import app

    (tmp_path / "base.yaml").write_text("search: {epochs: 2, warmup_epochs: 1}\n")
    (tmp_path / "ablation.yaml").write_text("base: base.yaml\nrows: [X]\nseeds: [0]\n")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    for dry in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / "o"), *dry])
        assert result.exit_code == 2 and "not with torchrun" in result.output, result.output
        assert "ablation folder" not in result.output and not (tmp_path / "o").exists()
    # rank 1 leaves it to rank 0, with the same status (every rank had printed it)
    monkeypatch.setenv("RANK", "1")
    for dry in ([], ["--dry-run"]):
        result = CliRunner().invoke(app, ["ablate", str(tmp_path / "ablation.yaml"), "--out", str(tmp_path / "o"), *dry])
        assert result.exit_code == 2 and result.output == "", result.output


def test_another_rank_leaves_a_stop_to_rank_0(monkeypatch, capsys):
    """Stopped while it waited for rank 0 (perturbation selection, figures) or in its first seconds, rank 1 printed a
    bare "interrupted" beside rank 0's message with the command."""
    from eldarts_cli.cli.common import Terminated, handle_errors

    @handle_errors(restartable=True)
    def stopped():
        raise Terminated()

    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", ""), ("0", "terminated (SIGTERM)\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(typer.Exit) as end:
            stopped()
        assert end.value.exit_code == 143 and capsys.readouterr().err == said, rank


def test_recomputing_activations_under_torchrun_gives_the_same_search(two_process_run):
    """runtime.recompute (torch.utils.checkpoint inside the supernet) under DDP: the same architecture."""
    tmp, out, _, _ = two_process_run
    again = tmp / "recomputed"
    proc = torchrun(tmp, "tiny.yaml", "--out", str(again), *sets(*SETTINGS, "runtime.recompute=true"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    torch.testing.assert_close(architecture(again), architecture(out), rtol=1e-5, atol=1e-6)


def test_an_evaluations_test_batch_is_global_under_torchrun_as_a_searchs(tmp_path, monkeypatch):
    """``data.eval_batch_size`` was each process's in an evaluation and the global batch in a search: on 4
    processes an evaluation's 256 was 1,024 images at a time. Both are global now; one that does not divide is
    refused, by the run and by its dry run."""
    import yaml

    from conftest import TINY_EVAL
    from eldarts_cli.config.base import apply_overrides
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.engines.distributed import check_global_batches
    from eldarts_cli.engines.evaluate import Evaluation
    from eldarts_cli.models.genotypes import GENOTYPES

    asked = {}

    class Built(Exception):
        pass

    def loaders(data, **kwargs):  # what each process's loaders are asked for; the rest needs a process group
        asked.update(kwargs)
        raise Built

    monkeypatch.setattr("eldarts_cli.engines.evaluate.training_loaders", loaders)

    def evaluation(*sets):
        recipe = EvalRecipe.model_validate(apply_overrides(yaml.safe_load(TINY_EVAL), ["data.batch_size=8", *sets]))
        with pytest.raises(Built):
            Evaluation(recipe, GENOTYPES.get("DARTS_V2"), tmp_path / "run", device=torch.device("cpu"),
                       dist=Distributed(rank=0, world_size=2), resume=False, report=lambda event: None)
        return asked["batch"], asked["eval_batch"]

    assert evaluation("data.eval_batch_size=12") == (4, 6)
    assert evaluation() == (4, 4)  # (the default: batch_size, global too)
    with pytest.raises(RecipeError, match="eval_batch_size=15 is the global batch: it must divide over the 2"):
        evaluation("data.eval_batch_size=15")
    recipe = EvalRecipe.model_validate(apply_overrides(yaml.safe_load(TINY_EVAL), ["data.eval_batch_size=15"]))
    with pytest.raises(RecipeError, match="eval_batch_size=15 is the global batch"):  # (what the dry run asks)
        check_global_batches(recipe.data, 2)
    recipe = EvalRecipe.model_validate(apply_overrides(yaml.safe_load(TINY_EVAL), ["data.batch_size=2"]))
    with pytest.raises(RecipeError, match="batch_size=2 over 2 processes leaves each one image"):  # (BatchNorm)
        check_global_batches(recipe.data, 2)
