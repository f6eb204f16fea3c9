"""runtime.recompute: op blocks recompute their activations in the backward pass; the same search, less memory."""

import copy

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from eldarts_cli.cli import app
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core.errors import ResourceError
from eldarts_cli.engines import search as search_engine
from eldarts_cli.models.nb201_search import NB201Supernet
from eldarts_cli.models.ops import set_recompute
from eldarts_cli.models.sizes import recompute_share
from eldarts_cli.models.spaces import DARTS_SPACE, ESS_SPACE, NB201_SPACE
from eldarts_cli.models.supernet import Supernet
from eldarts_cli.runs.folders import read_metrics

runner = CliRunner()


def _step(net, x, y):
    """One forward and backward of weights and architecture; the gradients and the BN buffers it leaves."""
    net.zero_grad(set_to_none=True)
    loss = F.cross_entropy(net(x), y)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters() if p.grad is not None}
    return loss.detach(), grads, {name: b.clone() for name, b in net.named_buffers()}


SUPERNETS = {
    "el-darts": lambda: Supernet(ops=ESS_SPACE, num_classes=5, channels=8, layers=3, partial_channels=2,
                                 edge_coefficients=True),
    "darts": lambda: Supernet(ops=DARTS_SPACE, num_classes=5, channels=4, layers=3),
    "nb201": lambda: NB201Supernet(ops=NB201_SPACE, num_classes=5, channels=4, layers=3, partial_channels=2,
                                   edge_coefficients=True),
}


@pytest.mark.parametrize("space", sorted(SUPERNETS))
@pytest.mark.parametrize("size", [8, 16])  # 16x16: the separable blocks' NHWC detour on the CPU is recomputed too
def test_recompute_gives_the_same_step(space, size):
    torch.manual_seed(0)
    keep = SUPERNETS[space]()
    again = copy.deepcopy(keep)
    set_recompute(again, True)
    assert any(getattr(m, "recompute", False) for m in again.modules())
    for net in (keep, again):
        net.sample_channels(torch.Generator().manual_seed(4))  # sampling: random (Algorithm 1)
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 5, (4,))
    loss_a, grads_a, buffers_a = _step(keep, x, y)
    loss_b, grads_b, buffers_b = _step(again, x, y)
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:  # weights and architecture: same kernels, same order
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-7, msg=name)
    # the BatchNorms' running statistics moved once, not once more in the recomputation
    for name in buffers_a:
        torch.testing.assert_close(buffers_b[name], buffers_a[name], rtol=0, atol=0, msg=name)


def test_recompute_keeps_less_for_the_backward_pass():
    build = lambda layers, channels: SUPERNETS["el-darts"]()  # noqa: E731
    share = recompute_share(build, 3, 16, layers=3, channels=8, channel_multiple=4)
    assert 0 < share < 0.7


def test_recompute_only_while_gradients_are_recorded():
    torch.manual_seed(0)
    net = SUPERNETS["el-darts"]()
    set_recompute(net, True)
    with torch.no_grad():  # evaluation: nothing to recompute, no checkpoint
        out = net(torch.randn(2, 3, 8, 8))
    assert out.grad_fn is None


def _recipe(tmp_path, text, *overrides):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return load_recipe(path, SearchRecipe, list(overrides))


def _memory(monkeypatch, limit):
    from eldarts_cli.engines import resources

    monkeypatch.setattr(resources, "device_memory", lambda device: limit)


def test_auto_recomputes_only_what_would_not_fit(monkeypatch, tmp_path):
    from conftest import TINY_SEARCH

    recipe = _recipe(tmp_path, TINY_SEARCH, "data.batch_size=64")
    full = search_engine.check_supernet_fits(recipe, 1, 10, 8, torch.device("cpu"))
    need = full.training_bytes(64)
    base = full.training_bytes(0)
    plan = lambda: search_engine.plan_recompute(recipe, 1, 10, 8, torch.device("cpu"))  # noqa: E731
    _memory(monkeypatch, round(need * search_engine.PEAK_OVER_ESTIMATE) + 1)
    assert plan() is False  # fits as it is, with the room measured peaks need
    _memory(monkeypatch, need + 1)
    assert plan() is True  # the estimate fits, but without that room: recompute
    _memory(monkeypatch, need - 1)
    assert plan() is True  # fits only recomputing
    _memory(monkeypatch, base + 1)  # not even recomputing: refused, saying so
    with pytest.raises(ResourceError, match="recompute"):
        plan()
    for mode in (True, False):
        _memory(monkeypatch, need + 1)
        assert search_engine.plan_recompute(
            _recipe(tmp_path, TINY_SEARCH, "data.batch_size=64", f"runtime.recompute={str(mode).lower()}"),
            1, 10, 8, torch.device("cpu")) is mode
    _memory(monkeypatch, need - 1)
    with pytest.raises(ResourceError, match="too large to train"):
        search_engine.plan_recompute(_recipe(tmp_path, TINY_SEARCH, "data.batch_size=64", "runtime.recompute=false"),
                                     1, 10, 8, torch.device("cpu"))


@pytest.mark.slow(seconds=20)
def test_search_that_fits_only_recomputing_runs_and_says_so(monkeypatch, tiny_recipe, tmp_path):
    """End to end: the same alphas as a search that keeps every activation, and one line saying why."""
    runs = {}
    for mode in ("false", "auto"):
        out = tmp_path / mode
        if mode == "auto":  # memory between "fits recomputing" and "fits as it is"
            recipe = load_recipe(tiny_recipe, SearchRecipe)
            full = search_engine.check_supernet_fits(recipe, 1, 10, 8, torch.device("cpu"))
            _memory(monkeypatch, full.training_bytes(recipe.data.batch_size) - 1)
        result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(out), "--set",
                                     f"runtime.recompute={mode}"])
        assert result.exit_code == 0, result.output
        assert ("recompute their activations" in result.output) is (mode == "auto")
        runs[mode] = read_metrics(out, "alphas")[-1]
    assert runs["auto"]["alpha_normal"] == runs["false"]["alpha_normal"]


def test_bad_recompute_value(tiny_recipe):
    result = runner.invoke(app, ["search", str(tiny_recipe), "--set", "runtime.recompute=sometimes", "--dry-run"])
    assert result.exit_code == 2
    assert "runtime.recompute" in result.output


def test_estimate_counts_what_the_fused_supernet_keeps(tmp_path):
    """The memory estimate is what autograd keeps for the backward pass, so the fused supernet (whose ops
    are functional calls, not modules) is not undercounted against its edge-by-edge reference."""
    from conftest import TINY_SEARCH

    fused, reference = (
        search_engine.check_supernet_fits(_recipe(tmp_path, TINY_SEARCH, f"network.implementation={impl}",
                                                  "search_space.ops=darts", "partial_channels.ratio=1"),
                                          3, 10, 16, None)
        for impl in ("fused", "reference"))
    assert 0.5 < fused.activations_per_image / reference.activations_per_image < 1.0


def test_cpu_memory_is_what_the_process_may_use(monkeypatch):
    import resource

    from eldarts_cli.core import device

    ram = device.device_memory(torch.device("cpu"))
    monkeypatch.setattr(resource, "getrlimit", lambda kind: (64 * 2**30, resource.RLIM_INFINITY))
    left = device.device_memory(torch.device("cpu"))  # ulimit -v, less what the process maps already
    assert left <= min(ram, 64 * 2**30 - 2**30)  # torch alone maps more than 1 GiB
    monkeypatch.setattr(device, "_cgroup_memory_limit", lambda: 2 * 2**30)
    assert device.device_memory(torch.device("cpu")) == min(ram, 2 * 2**30)  # a container's limit


def test_running_out_of_memory_mid_search_says_how_to_continue_recomputing(monkeypatch, tiny_recipe, tmp_path):
    """The CPU allocator's error in epoch 2: one error line, exit 1, epoch 1 kept, and the printed command
    (resume with runtime.recompute=true) finishes the search."""
    import shlex

    from eldarts_cli.engines.search import Searcher

    step = Searcher.search_step

    def failing(self, *args, epoch=0, **kwargs):
        if epoch == 1:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                               "memory: you tried to allocate 6291456 bytes. Error code 12 (Cannot allocate memory)")
        return step(self, *args, epoch=epoch, **kwargs)

    monkeypatch.setattr(Searcher, "search_step", failing)
    out = tmp_path / "run"
    result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(out)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "alloc_cpu.cpp" not in result.output and "err == 0" not in result.output
    assert "error: the device ran out of memory (DefaultCPUAllocator: can't allocate memory" in result.output
    assert [r["epoch"] for r in read_metrics(out)] == [0]  # epoch 1 kept
    command = next(line.split("continue with: ", 1)[1] for line in result.output.splitlines()
                   if "continue with: " in line)
    assert command.endswith("--set runtime.recompute=true")
    monkeypatch.setattr(Searcher, "search_step", step)
    args = shlex.split(command)[1:]  # without the program name
    resumed = runner.invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    assert [r["epoch"] for r in read_metrics(out)] == [0, 1, 2]


def test_running_out_of_memory_while_recomputing_already(monkeypatch, tiny_recipe, tmp_path):
    from eldarts_cli.engines.search import Searcher

    def failing(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Searcher, "search_step", failing)
    result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(tmp_path / "run"), "--set",
                                 "runtime.recompute=true"])
    assert result.exit_code == 1
    assert "error: the device ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in result.output
    assert "lower data.batch_size" in result.output and "after freeing memory, continue with: " in result.output
    assert "--set runtime.recompute" not in result.output.split("continue with: ")[1]


@pytest.mark.parametrize("recipe", ["search-cifar10.yaml", "search-darts-cifar10.yaml",
                                    "search-nb201-eldarts-cifar10.yaml"])
def test_every_shipped_search_recipe_can_plan_recomputing(recipe):
    """The share kept while recomputing is measured on a smaller copy: one each shipped space can build
    (NAS-Bench-201's 15 cells need a multiple of 3)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / recipe
    cfg = load_recipe(path, SearchRecipe, ["data.dataset=fake", "runtime.recompute=true"])
    full = search_engine.check_supernet_fits(cfg, 3, 10, 32, None)
    recomputing = search_engine.check_supernet_fits(cfg, 3, 10, 32, None, recompute=True)
    assert recomputing.activations_per_image == full.activations_per_image  # the estimate itself...
    share = recompute_share(lambda layers, channels: search_engine.build_supernet(cfg, 3, 10, layers=layers,
                                                                                  channels=channels),
                            3, 32, layers=cfg.network.layers, channels=cfg.network.channels,
                            channel_multiple=2 * cfg.partial_channels.ratio)
    assert 0 < share < 0.8  # ...and the share of it kept while recomputing


@pytest.mark.slow(seconds=40)
def test_recompute_inside_torch_compile():
    """runtime.compile with runtime.recompute: the compiled graph recomputes (values only; BatchNorm running
    statistics move once), the same gradients and buffers as eager without recomputing."""
    torch.manual_seed(0)
    eager = SUPERNETS["el-darts"]()
    compiled = copy.deepcopy(eager)
    set_recompute(compiled, True)
    forward = torch.compile(compiled, backend="aot_eager")  # inductor needs a C++ compiler and minutes
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
    F.cross_entropy(forward(x), y).backward()
    F.cross_entropy(eager(x), y).backward()
    for (name, a), b in zip(compiled.named_parameters(), eager.parameters()):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)
    for (name, a), b in zip(compiled.named_buffers(), eager.buffers()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_dry_run_says_what_the_run_would_do_about_memory(tiny_recipe):
    def dry_run(*sets):
        result = runner.invoke(app, ["search", str(tiny_recipe), "--dry-run", *sets])
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())  # without the console's line wrapping

    assert "recompute their activations (runtime.recompute: true)" in dry_run("--set", "runtime.recompute=true")
    assert "recompute their activations" not in dry_run()
    # and which it would do when it keeps them (it said nothing then)
    assert "keeps every activation: it fits with room to spare (runtime.recompute: auto)" in dry_run()
    assert "keeps every activation: runtime.recompute: false" in dry_run("--set", "runtime.recompute=false")
    # (fake images, made to data.limit's count: with the tiny recipe's 128 digits, or all 1,437, the halves check
    # refuses this batch first, as a run does)
    assert "warning: the supernet is too large to train" in dry_run("--set", "data.batch_size=100000000",
                                                                      "--set", "data.dataset=fake",
                                                                      "--set", "data.limit=300000000")


def test_dry_run_warns_of_a_batch_the_run_refuses(monkeypatch, tiny_recipe, tmp_path):
    """A batch too large for the memory even recomputing: the run refuses it with an error; its dry run said "it
    does not fit" as a plain line of the plan. It now says what the run says, as a ``warning:`` line, as a dry
    run says the run's other refusals (another machine may be meant: it still exits 0)."""
    recipe = load_recipe(tiny_recipe, SearchRecipe)
    full = search_engine.check_supernet_fits(recipe, 1, 10, 8, torch.device("cpu"))
    _memory(monkeypatch, full.training_bytes(2))  # a dry run refuses a network that cannot train one image
    batch = ["--set", "data.batch_size=60"]
    result = runner.invoke(app, ["search", str(tiny_recipe), "--out", str(tmp_path / "run"), *batch])
    assert result.exit_code == 2 and "error: the supernet is too large to train" in result.output, result.output
    assert not (tmp_path / "run").exists()
    refused = " ".join(result.output.split("error: ")[1].split())
    planned = runner.invoke(app, ["search", str(tiny_recipe), "--dry-run", *batch])
    assert planned.exit_code == 0, planned.output
    said = " ".join(planned.output.split())
    assert f"warning: {refused}; a run here would be refused" in said, said
    assert "does not fit" not in said and "keeps every activation" not in said


def test_planning_estimates_the_supernet_once(monkeypatch, tmp_path):
    """auto may check three times (with room, as it is, recomputing): one estimate serves them all."""
    from conftest import TINY_SEARCH

    from eldarts_cli.engines import resources

    calls = []
    estimate = resources.estimate_footprint
    monkeypatch.setattr(resources, "estimate_footprint", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    recipe = _recipe(tmp_path, TINY_SEARCH, "data.batch_size=64")
    full = search_engine.check_supernet_fits(recipe, 1, 10, 8, None)
    calls.clear()
    _memory(monkeypatch, full.training_bytes(64) - 1)
    assert search_engine.plan_recompute(recipe, 1, 10, 8, torch.device("cpu")) is True
    assert len(calls) == 1


def test_gpu_estimate_counts_activations_at_the_precision_the_search_runs(monkeypatch, tmp_path):
    """On a GPU a search's activations are estimated at 2 bytes only where it runs autocast: amp auto resolves to
    fp32 for a search (it was estimated at 2 bytes, half what a default GPU search keeps); bf16 and fp16 are."""
    from conftest import TINY_SEARCH

    seen = []

    def fake_fits(build, **kwargs):
        seen.append(kwargs["amp"])

    monkeypatch.setattr(search_engine, "check_network_fits", fake_fits)
    for amp in ("auto", "none", "bf16", "fp16"):
        recipe = _recipe(tmp_path, TINY_SEARCH, f"runtime.amp={amp}")
        search_engine.check_supernet_fits(recipe, 1, 10, 8, torch.device("cuda"))
        search_engine.check_supernet_fits(recipe, 1, 10, 8, torch.device("cpu"))
    assert seen == [False, False, False, False, True, False, True, False]
