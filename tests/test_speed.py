"""What makes a search fast stays correct: thread policy, precision resolution, torch.compile, the device check.

Timings are never asserted (machines are noisy); bench/ measures them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TINY_EVAL, TINY_SEARCH
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.core import device as device_module, threads as threads_module
from eldarts_cli.core.device import resolve_precision
from eldarts_cli.core.threads import ThreadGovernor, _Sample
from eldarts_cli.engines.search import Searcher

ROOT = Path(__file__).resolve().parents[1]


def tiny(**runtime) -> SearchRecipe:
    data = yaml.safe_load(TINY_SEARCH)
    data["runtime"].update(runtime)
    return SearchRecipe.model_validate(data)


# -- CPU threads ---------------------------------------------------------------


def test_fixed_threads_are_kept(monkeypatch):
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(fixed=1)
        assert torch.get_num_threads() == 1
        assert governor.update(force=True) == 1 and governor.history == [(0.0, 1)]
        assert governor.describe() == "1 thread"
    finally:
        torch.set_num_threads(before)


def test_auto_threads_follow_the_other_processes_load(monkeypatch):
    """Synthetic /proc readings: 4 cores; other processes keep 0, then 2, 3 and 4 of them busy."""
    monkeypatch.setattr(threads_module, "available_cores", lambda: [0, 1, 2, 3])
    clock = {"t": 0.0}
    monkeypatch.setattr(threads_module.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads_module.time, "sleep", lambda s: clock.update(t=clock["t"] + s))
    # each reading: (busy jiffies of all processes, this process's jiffies); 100 jiffies per core and second
    readings = iter([(0, 0), (20, 20), (320, 120), (720, 220), (1120, 220)])

    def sample(cores):
        busy, own = next(readings)
        return _Sample(clock["t"], busy, int(round(clock["t"] * 100 * len(cores))), own)

    monkeypatch.setattr(threads_module, "_read_sample", sample)
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(interval=1.0)  # first look: only this process busy -> 4 threads
        assert governor.threads == 4 and governor.describe() == "4 threads"
        clock["t"] += 0.5
        assert governor.update() == 4  # within the interval: no new look
        clock["t"] += 0.5
        assert governor.update() == 2  # others used (300 - 100) / 100 = 2 of the 4 cores
        clock["t"] += 1.0
        assert governor.update() == 1  # others 3 cores -> 1 free
        clock["t"] += 1.0
        assert governor.update() == 1  # others 4 cores -> still one thread, never zero
        assert [t for _, t in governor.history] == [4, 2, 1]
        # what run files record: every count the run worked with, not the last one alone
        assert governor.describe() == "1-4 threads (following the load)"
        assert device_module.device_name(torch.device("cpu"), governor.describe()).endswith(
            ", 1-4 threads (following the load))")
    finally:
        torch.set_num_threads(before)


def test_auto_threads_of_a_torchrun_rank_take_its_share_of_the_cores(monkeypatch):
    """Each rank of a 2-process launch looked at the load while its peer was still starting, took every core, and
    the first epoch ran oversubscribed (18 against 500 images/s): a rank takes at most its share of the cores."""
    monkeypatch.setattr(threads_module, "available_cores", lambda: [0, 1, 2, 3])
    monkeypatch.setattr(threads_module, "_read_sample",
                        lambda cores: _Sample(threads_module.time.monotonic(), 0, 400, 0))  # (an idle machine)
    monkeypatch.setattr(threads_module.time, "sleep", lambda s: None)
    before = torch.get_num_threads()
    try:
        for processes, share in (("2", 2), ("3", 1), ("8", 1), ("1", 4)):
            monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
            assert ThreadGovernor(interval=1.0).update(force=True) == share, processes
        monkeypatch.delenv("LOCAL_WORLD_SIZE")
        assert ThreadGovernor(interval=1.0).update(force=True) == 4
    finally:
        torch.set_num_threads(before)


def test_precision_resolution_on_the_cpu(monkeypatch):
    from eldarts_cli.core import device as device_module

    cpu = torch.device("cpu")
    assert resolve_precision("auto", None, cpu, search=True) == ("none", True)  # NHWC: measured faster with the composed kernels
    assert resolve_precision("auto", False, cpu, search=True) == ("none", False)  # runtime.channels_last: false is kept
    for native, amp in ((True, "bf16"), (False, "none")):  # training: bf16 only where the CPU computes it
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda native=native: native)
        assert resolve_precision("auto", None, cpu, search=False) == (amp, True)
    assert resolve_precision("fp16", False, cpu, search=False) == ("none", False)  # no fp16 autocast on CPUs
    assert resolve_precision("bf16", True, cpu, search=True) == ("bf16", True)
    cuda = torch.device("cuda")  # only named, never touched: channels_last stays on for a CUDA search
    assert resolve_precision("none", None, cuda, search=True) == ("none", True)


def test_cpu_device_name_names_the_vector_instructions(monkeypatch):
    """Two CPUs of one model name can differ in the instructions PyTorch's kernels use (AVX2 / AVX512): the
    CPU's name in summaries and benchmark output says which, and whether bf16 is native."""
    from eldarts_cli.core import device as device_module

    for native, suffix in ((True, "+BF16"), (False, "")):
        monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda native=native: native)
        instructions = device_module.cpu_instructions()
        assert instructions == torch.backends.cpu.get_cpu_capability() + suffix
        name = device_module.device_name(torch.device("cpu"))
        count = torch.get_num_threads()
        assert name == f"cpu ({device_module.cpu_model()}, {instructions}, {count} thread{'s' * (count != 1)})"


def test_benchmark_cpu_label_names_the_family_and_model(monkeypatch):
    """Cloud CPUs of one model name ("AMD EPYC") and one instruction set run at different speeds by generation:
    benchmark records name the family and model of the first processor; cost tables keep the short label."""
    from eldarts_cli.core import device as device_module

    cpuinfo = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n\n"
               "processor\t: 1\ncpu family\t: 25\nmodel\t\t: 17\n")
    assert device_module.cpu_family(cpuinfo) == "family 26, model 2"
    assert device_module.cpu_family("processor\t: 0\nCPU implementer\t: 0x41\n") is None  # (an ARM cpuinfo)
    monkeypatch.setattr(device_module, "cpu_family", lambda: "family 26, model 2")
    short = device_module.cpu_label()
    assert "family" not in short
    assert device_module.cpu_label(detail=True) == short + ", family 26, model 2"
    monkeypatch.setattr(device_module, "cpu_family", lambda: None)
    assert device_module.cpu_label(detail=True) == short


def test_cuda_search_with_partial_channels_and_darts_ops_runs_nchw_by_default():
    """On CUDA a supernet with partial channels and ops outside EL-DARTS' four runs NCHW unless
    ``runtime.channels_last`` says otherwise (PC-DARTS' recipe in NHWC hit an illegal memory access at batch 256 on
    an H200); EL-DARTS' ops, DARTS' ops on all channels and every CPU search keep NHWC."""
    from eldarts_cli.engines.search import default_layout

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # only named, never touched
    data = yaml.safe_load(TINY_SEARCH)
    for ops, ratio, device, expected in (("darts", 4, cuda, False), (["skip_connect", "avg_pool_3x3"], 2, cuda, False),
                                         ("ess", 4, cuda, None), ("darts", 1, cuda, None), ("darts", 4, cpu, None),
                                         (["skip_connect", "sep_conv_3x3"], 4, cuda, None),
                                         (["skip_connect", "sep_conv_5x5"], 4, cuda, False)):
        data["search_space"] = {"ops": ops}
        data["partial_channels"] = {"ratio": ratio}
        recipe = SearchRecipe.model_validate(data)
        assert default_layout(recipe, device) is expected, (ops, ratio, device)
        assert resolve_precision("auto", expected, device, search=True)[1] is (expected is None)
    data["network"]["implementation"] = "reference"
    assert default_layout(SearchRecipe.model_validate(data), cpu) is False


_REFERENCE_SEARCH_ON_ONE_THREAD = """
import sys, tempfile
from pathlib import Path
from eldarts_cli.config.base import load_recipe
from eldarts_cli.config.search import SearchRecipe
from eldarts_cli.engines.search import Searcher
recipe = load_recipe(Path("recipes/quickstart.yaml"), SearchRecipe, [
    "network.implementation=reference", "runtime.threads=1", "search.epochs=1", "search.warmup_epochs=0",
    "data.limit=64", "partial_channels.ratio=4", *sys.argv[1:]])
with tempfile.TemporaryDirectory() as tmp:
    searcher = Searcher(recipe, Path(tmp) / "run")
    (x, y), (xa, ya) = next(zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0)))
    for _ in range(6):
        searcher.search_step(x, y, xa, ya, 1.0, lr=recipe.optim.lr)
print("ok", searcher.channels_last)
"""


@pytest.mark.slow(seconds=35)
def test_reference_supernet_runs_nchw_unless_asked(tmp_path):
    """``network.implementation: reference`` runs as the public code runs, NCHW, unless ``runtime.channels_last``
    says otherwise (the fused supernet's default stays NHWC); its search on one CPU thread completes either way (in a
    child process: NHWC, PyTorch 2.14's stride-2 1x1 convolution backward corrupted the heap there and glibc aborted
    the process; the public FactorizedReduce now runs it on NCHW input and weights)."""
    data = yaml.safe_load(TINY_SEARCH)
    for implementation, asked, expected in (("reference", None, False), ("reference", True, True),
                                            ("fused", None, True)):
        data["network"]["implementation"] = implementation
        data["runtime"]["channels_last"] = asked
        searcher = Searcher(SearchRecipe.model_validate(data), tmp_path / f"{implementation}-{asked}")
        assert searcher.channels_last is expected
    for extra, layout in (([], "False"), (["runtime.channels_last=true"], "True")):  # asked: NHWC on one thread
        proc = subprocess.run([sys.executable, "-c", _REFERENCE_SEARCH_ON_ONE_THREAD, *extra], capture_output=True,
                              text=True, cwd=ROOT, timeout=600)
        assert proc.returncode == 0 and proc.stdout.split() == ["ok", layout], proc.stderr[-2000:]


# -- precision of the architecture step --------------------------------------------


@pytest.mark.parametrize("layout", [False, True])
def test_architecture_step_stays_fp32_under_bf16_weight_steps(tmp_path, layout):
    """``runtime.amp: bf16`` autocasts the weight steps only: the architecture step is the fp32 one, bit for bit."""
    alphas = {}
    for amp in ("none", "bf16"):
        searcher = Searcher(tiny(amp=amp, channels_last=layout), tmp_path / f"{amp}-{layout}")
        assert searcher.arch_amp == "none" and searcher.amp == amp
        (x, y), (xa, ya) = next(zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0)))
        searcher._arch_step(xa, ya, 1.0)
        alphas[amp] = torch.cat([p.detach().flatten() for p in searcher.model.arch_parameters()])
    assert torch.equal(alphas["none"], alphas["bf16"])


# -- torch.compile -----------------------------------------------------------------


@pytest.mark.slow(seconds=60)
def test_compiled_search_steps_equal_eager_ones(tmp_path, monkeypatch):
    """``runtime.compile``: the supernet is compiled (weights frozen in the architecture step, DDP-free here)
    and the steps compute what eager ones do. Inductor takes minutes to build a supernet's kernels on a CPU,
    so the test compiles through dynamo and AOT autograd with the aot_eager backend: the same graphs,
    run by the eager kernels (bench/device-check.sh runs the real compiler on a GPU)."""
    compile_ = torch.compile
    calls = []

    def aot_eager(module, mode=None):
        calls.append(mode)
        return compile_(module, backend="aot_eager")

    results = {}
    for compiled in (False, True):
        if compiled:
            monkeypatch.setattr(torch, "compile", aot_eager)
        torch.manual_seed(0)
        searcher = Searcher(tiny(compile=compiled), tmp_path / f"compiled-{compiled}")
        assert (searcher.compiled is None) != compiled
        batches = zip(searcher.data.train.epoch(0), searcher.data.arch.epoch(0))
        losses = []
        for step in range(2):
            (x, y), (xa, ya) = next(batches)
            losses.append(searcher.search_step(x, y, xa, ya, 1.0, 0.05, step=step)[0].item())
        weights = torch.cat([p.detach().flatten() for p in searcher.model.parameters()])
        results[compiled] = (losses, weights)
        assert all(p.requires_grad for p in searcher.weights)  # frozen only during the architecture step
    assert calls == [None]
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=1e-4, atol=1e-6)


# -- the prepared GPU check, at toy sizes on the CPU --------------------------------


@pytest.mark.slow(seconds=120)
def test_device_check_script_runs_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device-check.sh"), "--device", "cpu", "--dry", "--out", str(out),
                           "--set", "runtime.log_every=5"],  # --set: to the two-epoch search
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    search = (out / "results-search-cpu.md").read_text()
    assert "| EL-DARTS | 8 | eldarts |" in search and "| EL-DARTS | 8 | reference |" in search
    assert "speed-up vs reference" in search
    assert "steps alternated" in search and "| EL-DARTS | 8 | " in search.split("steps alternated", 1)[1]
    assert "relative L2 error" in (out / "results-amp-cpu.md").read_text()
    projection = (out / "results-search-projection-cpu.md").read_text()
    assert "projected" in projection and "cifar10-jpeg.yaml with --set runtime.log_every=5 on cpu" in projection
    evaluation = (out / "results-eval-cpu.md").read_text()
    assert "reference: plain DARTS-style, DARTS' modules" in evaluation
    assert "reference, eldarts' modules" in evaluation and "vs reference, eldarts' modules" in evaluation
    # the compiled steps' tables exist whether or not their rows finished in the dry run's 3 s (a timed-out row is
    # named in the summary); the summary lists every step, and the log holds all the output
    assert "| EL-DARTS | 8 | eldarts compiled |" in (out / "results-search-compiled-cpu.md").read_text()
    assert "| 8 | 5 | eldarts + runtime.compile |" in (out / "results-eval-compiled-cpu.md").read_text()
    assert "| avg_pool_3x3 | 4 | ok |" in (out / "results-ops-cpu.md").read_text()
    log = (out / "device-check.log").read_text()
    for step in ("1/8 ops: each operator against float64 on the CPU: ok",
                 "2/8 graphs: runtime.cuda_graphs' replayed steps against eager ones: ok",
                 "3/8 search: the search-step table on cpu: ok",
                 "4/8 projection: a two-epoch full-size search, projected to 50 epochs: ok",
                 "5/8 eval: evaluation-training throughput: ok", "6/8 amp: bf16 against fp32: ok",
                 "7/8 compiled-search: the EL-DARTS search step as one CUDA graph, and compiled: ok",
                 "8/8 compiled-eval: the evaluation-training step as one CUDA graph, and compiled: ok"):
        assert step in log and step in proc.stdout
    assert "epoch   2" in log  # the two-epoch search's own output is in the log
    assert "| search (quickstart, 2 epochs) | architecture | 0.00e+00 | 0.00e+00 | ok |" in log  # (Replay on a CPU)
    assert sorted(p.name for p in out.iterdir()) == [  # at most 8 files come back from the device tool
        "device-check.log", "results-amp-cpu.md", "results-eval-compiled-cpu.md", "results-eval-cpu.md",
        "results-ops-cpu.md", "results-search-compiled-cpu.md", "results-search-cpu.md",
        "results-search-projection-cpu.md"]


@pytest.mark.slow(seconds=15)
def test_device_check_skip_runs_none_of_the_steps_it_names(tmp_path):
    """--skip: the named steps are not run and are no failure (a GPU session skips what it has figures for); an
    unknown step name is refused before anything runs."""
    env = {**os.environ, "PYTHON": sys.executable}
    script = str(ROOT / "bench" / "device-check.sh")
    every = "ops,graphs,search,projection,eval,amp,compiled-search,compiled-eval"
    proc = subprocess.run(["bash", script, "--device", "cpu", "--dry", "--out", str(tmp_path / "out"), "--skip", every],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.count("skipped (--skip)") == 16  # each step's line, and its summary line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["device-check.log"]
    proc = subprocess.run(["bash", script, "--dry", "--skip", "amp,gpu"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --skip gpu: no such step (steps: ops, graphs, search,")


def test_bench_eval_rows_weigh_the_defaults_on_each_device():
    """bench_eval.py's rows: on CUDA the defaults (channels_last, bf16) beside fp32 and NCHW fp32, so one table
    says what each default costs there; on a CPU the bf16 opt-in (or fp32 where bf16 is the default);
    --defaults-only leaves those out, --compiled-only keeps the compiled row (on CUDA after the one-graph row)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "bench" / "bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cuda = bench.variant_rows("cuda", "bf16", True)
    assert [r[0] for r in cuda] == [bench.REFERENCE, bench.SHARED_REFERENCE, "eldarts defaults (channels_last, bf16)",
                                    "eldarts in fp32 (runtime.amp: none)",
                                    "eldarts in NCHW fp32 (runtime.channels_last: false, runtime.amp: none)"]
    assert [r[1:3] for r in cuda[2:]] == [(True, "bf16"), (True, "none"), (False, "none")]
    assert len(bench.variant_rows("cuda", "bf16", True, defaults_only=True)) == 3
    assert bench.variant_rows("cpu", "none", True)[-1][0] == "eldarts + bf16 autocast (runtime.amp: bf16)"
    assert bench.variant_rows("cpu", "bf16", True)[-1][0] == "eldarts in fp32 (runtime.amp: none)"
    assert bench.variant_rows("cuda", "bf16", True, compiled_only=True) == [  # the one-graph row on CUDA only
        ("eldarts + runtime.cuda_graphs", True, "bf16", "graphs", False, False),
        ("eldarts + runtime.compile", True, "bf16", True, False, False)]
    assert bench.variant_rows("cpu", "none", True, compiled_only=True) == [
        ("eldarts + runtime.compile", True, "none", True, False, False)]
    assert bench.variant_rows("cuda", "bf16", True, compiled_only=True, compile_mode="reduce-overhead")[1][0] == \
        "eldarts + runtime.compile: reduce-overhead"


def test_bench_eval_reports_a_row_that_timed_out_and_keeps_the_others(monkeypatch, capfd):
    """bench_eval.py --timeout: a row's process past it is a "timed out" row; the rows that ran keep their figures
    and the speed-ups of a missing reference read "-" (the device check's compiled-only table). A row that ran out
    of memory says so, as bench_search.py's rows do."""
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as when run as a script: bench_search beside it

    spec = importlib.util.spec_from_file_location("bench_eval", ROOT / "bench" / "bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.run_row([sys.executable, "-c", "import time; time.sleep(30)"], 0.5) == {
        "error": "timed out after 0.5 s"}
    assert bench.run_row([sys.executable, "-c", "raise SystemExit('error: no GPU')"], 30) == {
        "error": "failed: error: no GPU"}
    assert bench.run_row([sys.executable, "-c", "print('{\"images_per_s\": 3.0}')"], 30) == {"images_per_s": 3.0}
    # out of memory, and eldarts' own refusal, are named as the search benchmark names them
    assert bench.run_row([sys.executable, "-c", "raise MemoryError"], 30) == {"error": "out of memory"}
    assert bench.run_row([sys.executable, "-c", "import sys; sys.exit('torch.OutOfMemoryError: CUDA out of memory.')"],
                         30) == {"error": "out of memory"}
    assert bench.run_row([sys.executable, "-c", "import sys; sys.exit('eldarts_cli.core.errors.ResourceError: 9 GB')"],
                         30) == {"error": "refused by eldarts' memory check: 9 GB"}
    # a CUDA error: the row names the exception, not PyTorch's advice after it; the log gets both tracebacks, the
    # second from a rerun with CUDA_LAUNCH_BLOCKING=1 (here a child that says which run it was)
    child = ("import os, sys; sys.stderr.write('Traceback ...\\ntorch.AcceleratorError: CUDA error: an illegal memory '"
             "'access was encountered\\nFor debugging consider passing CUDA_LAUNCH_BLOCKING=1\\nCompile with '"
             "'`TORCH_USE_CUDA_DSA` to enable device-side assertions.\\n'); "
             "sys.stderr.write('blocking run: kernel X\\n' if os.environ.get('CUDA_LAUNCH_BLOCKING') == '1' else ''); "
             "sys.exit(1)")
    assert bench.run_row([sys.executable, "-c", child], 30) == {
        "error": "failed: torch.AcceleratorError: CUDA error: an illegal memory access was encountered"}
    log = capfd.readouterr().err
    assert "CUDA error in -c" in log and "the same with CUDA_LAUNCH_BLOCKING=1: exit 1" in log
    rerun = log.index("the same with CUDA_LAUNCH_BLOCKING=1")
    assert "\n    blocking run: kernel X" not in log[:rerun] and "\n    blocking run: kernel X" in log[rerun:]
    assert bench._ran([{"error": "x"}, {"images_per_s": 2.0}]) == [{"images_per_s": 2.0}]
    assert bench._ran([{"error": "x"}, {"error": "y"}]) == [{"error": "x"}]
    assert bench._ratio(6.0, 3.0) == "2.00x" and bench._ratio(6.0, None) == "-"


def test_device_check_refuses_to_start_without_its_packages(tmp_path):
    """On a machine whose Python lacks packages (a GPU machine without registries, before wheels are carried),
    the device check names them in one error line and exits 2 before any step; a bad --budget is refused too."""
    python = tmp_path / "bare-python"  # this Python without its site-packages: no torch, pydantic, thop, ...
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    python.chmod(0o755)
    env = {**os.environ, "PYTHON": str(python)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device-check.sh"), "--device", "cpu", "--dry", "--wheels",
                           "none", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    error = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "cannot import: torch" in error[0] and "pydantic" in error[0]
    assert "bench/device-prepare.sh" in error[0] and "1/6" not in proc.stdout
    proc = subprocess.run(["bash", str(ROOT / "bench" / "device-check.sh"), "--budget", "5m"], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: --budget takes whole seconds, not '5m'"
    for script, option in (("device-check.sh", "--dry"), ("device-prepare.sh", "--python-version")):
        shown = subprocess.run(["bash", str(ROOT / "bench" / script), "--help"], capture_output=True, text=True,
                               cwd=ROOT, timeout=60)
        assert shown.returncode == 0 and option in shown.stdout and not shown.stdout.startswith("#"), shown.stderr


def test_allocator_setting(monkeypatch):
    """runtime.allocator: auto sets glibc's malloc to keep freed memory (CPU runs only); system and other
    devices leave it; a swapped allocator (LD_PRELOAD) or another C library is left alone."""
    import platform

    from eldarts_cli.core import allocator

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc())
    assert allocator.configure("system", "cpu") is False and calls == []
    assert allocator.configure("auto", "cuda") is False and calls == []
    assert allocator.configure("auto", "cpu") is True
    assert calls == [(allocator.M_MMAP_THRESHOLD, allocator.HEAP_UP_TO), (allocator.M_TRIM_THRESHOLD, -1)]
    assert allocator.configure("auto", "cpu") is True and len(calls) == 2  # once per process

    monkeypatch.undo()  # the real _glibc and _applied again
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")
    assert allocator._glibc() is None
    monkeypatch.delenv("LD_PRELOAD")
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert allocator._glibc() is not None


def test_bench_search_rounds_pair_each_ratio_within_its_round():
    """bench_search.py --rounds: the speed-up is the median of same-round ratios, not a ratio of medians; a
    failed round reports the failure."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "bench_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def run(s, gflop=12.0):
        return {"s_per_step": s, "min": s * 0.9, "max": s * 1.1, "images_per_s": 32 / s, "peak_mib": 100 * s,
                "gflops": gflop / s, "threads": 2}

    # a machine that slowed down 2x between rounds 2 and 3: each round's ratio is 3x
    runs = {"eldarts": [run(1.0), run(1.0), run(2.0)], "reference": [run(3.0), run(3.0), run(6.0)]}
    out = bench.combine_rounds(runs, 32)
    assert out["eldarts"]["speedups"] == pytest.approx([3.0, 3.0, 3.0])
    assert out["eldarts"]["s_per_step"] == 1.0 and out["reference"]["s_per_step"] == 3.0
    assert out["eldarts"]["min"] == pytest.approx(0.9) and out["eldarts"]["max"] == pytest.approx(2.2)
    assert out["eldarts"]["peak_mib"] == pytest.approx(200.0)
    assert out["eldarts"]["gflops"] == pytest.approx(12.0) and out["eldarts"]["images_per_s"] == 32.0
    # the ratio of medians would differ where rounds drift unevenly; the paired median does not
    uneven = bench.combine_rounds({"eldarts": [run(1.0), run(1.0), run(2.0)],
                                   "reference": [run(2.0), run(4.0), run(7.0)]}, 32)
    assert uneven["eldarts"]["speedups"] == pytest.approx([2.0, 4.0, 3.5])
    import statistics
    assert statistics.median(uneven["eldarts"]["speedups"]) == pytest.approx(3.5)  # the ratio of medians: 4.0
    assert uneven["reference"]["s_per_step"] / uneven["eldarts"]["s_per_step"] == pytest.approx(4.0)
    failed = bench.combine_rounds({"eldarts": [run(1.0), {"error": "out of memory"}], "reference": [run(3.0), run(3.0)]}, 32)
    assert failed["eldarts"] == {"error": "out of memory"}
    # a second baseline's column: the same-round ratios against the public-style step's row
    both = bench.combine_rounds({"eldarts": [run(1.0), run(2.0)], "reference": [run(3.0), run(5.0)],
                                 "public": [run(3.5), run(6.0)]}, 32, others=["public", "absent"])
    assert both["eldarts"]["speedups"] == pytest.approx([3.0, 2.5])
    assert both["eldarts"]["speedups_vs"] == {"public": pytest.approx([3.5, 3.0])}
    assert bench._median_ratio(both["eldarts"]["speedups_vs"]["public"], 2) == "3.25x (3.50x, 3.00x)"
    assert bench._median_ratio(None) == "-" and bench._median_ratio([2.0]) == "2.00x"
    # a baseline that failed in a round: the ratio says how many rounds gave it
    assert bench._median_ratio([3.6], 2) == "3.60x (1 of 2 rounds)"
    assert bench._median_ratio([3.0, 3.5], 3, per_round=False) == "3.25x (2 of 3 rounds)"
    # --baseline: the ratios divide by another row (NHWC against NCHW, no reference run)
    layouts = bench.combine_rounds({"eldarts": [run(1.0), run(2.0)], "eldarts NCHW": [run(1.5), run(2.0)]}, 32,
                                   baseline="eldarts NCHW")
    assert layouts["eldarts"]["speedups"] == pytest.approx([1.5, 1.0])


def test_bench_search_variants_and_child_environment(monkeypatch):
    """bench_search.py --variants picks the rows (device-check's compiled-only table); without it --compile and
    --recompute add theirs between eldarts and the reference. Children keep the caller's PYTHONPATH after the
    repository's (where device-check.sh puts carried packages)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "bench_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)

    def rows(variants=None, compile=False, recompute=False):
        args = argparse.Namespace(variants=variants, compile=compile, recompute=recompute, set=["data.limit=8"])
        return bench.variant_list(args)

    assert rows() == [("eldarts", ["data.limit=8"]), ("reference", ["data.limit=8"]), ("public", ["data.limit=8"])]
    assert rows(compile=True, recompute=True) == [
        ("eldarts", ["data.limit=8"]), ("eldarts", ["data.limit=8", "runtime.recompute=true"]),
        ("eldarts", ["data.limit=8", "runtime.compile=true"]), ("reference", ["data.limit=8"]),
        ("public", ["data.limit=8"])]
    assert rows("compiled") == [("eldarts", ["data.limit=8", "runtime.compile=true"])]
    assert rows("graphs") == [("eldarts", ["data.limit=8", "runtime.compile=reduce-overhead"])]
    assert rows("nchw") == [("eldarts", ["data.limit=8", "runtime.channels_last=false"])]
    assert rows("step-graph") == [("eldarts", ["data.limit=8", "runtime.cuda_graphs=true"])]
    assert [bench.row_label(*row) for row in rows("eldarts,nchw,compiled,graphs,step-graph,recompute,reference,"
                                                  "public")] == [
        "eldarts", "eldarts NCHW", "eldarts compiled", "eldarts compiled, CUDA graphs",
        "eldarts, step as one CUDA graph", "eldarts recompute", "reference", "reference, public-style step"]
    # the public-style step runs the reference supernet, with the reference's overrides
    overrides = bench._overrides(8, 1, 1, "cpu", "public", [])
    assert overrides[-5:] == ["network.implementation=reference", "runtime.channels_last=false", "runtime.amp=none",
                              "runtime.compile=false", "runtime.recompute=false"]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/carried/site", ""]))
    assert bench.child_env()["PYTHONPATH"] == os.pathsep.join([str(ROOT), "/carried/site"])
    monkeypatch.delenv("PYTHONPATH")
    assert bench.child_env()["PYTHONPATH"] == str(ROOT)


def test_bench_public_code_step_makes_eldarts_updates_with_every_gradient(tmp_path):
    """bench_search.py's public-style baseline: the reference supernet stepped as the public train_search.py steps it
    computes the weights' gradients in the architecture step (eldarts' step does not) and the architecture's in the
    weight step, and makes the same updates as eldarts' own step from the same start."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "bench_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data = yaml.safe_load(TINY_SEARCH)
    data["network"]["implementation"] = "reference"
    data["optim"] = {"grad_clip": 0.05}  # below the tiny supernet's gradient norm (about 0.9): clipping acts
    searchers = [Searcher(SearchRecipe.model_validate(data), tmp_path / name) for name in ("eldarts", "public")]
    ours, public = searchers
    public.model.load_state_dict(ours.model.state_dict())
    (x, y), (xa, ya) = next(zip(ours.data.train.epoch(0), ours.data.arch.epoch(0)))
    ours._arch_step(xa, ya, 1.0)
    bench.public_architecture_step(public, xa, ya, 1.0)
    assert all(w.grad is None for w in ours.weights)
    assert all(w.grad is not None for w in public.weights if w.requires_grad)
    ours._weight_step(x, y)
    bench.public_weight_step(public, x, y)
    # the weight step's architecture gradients (alphas and DCSS coefficients) add to the architecture step's
    # (unused: the next step zeroes them)
    assert len(ours.model.arch_parameters()) == 4
    for a, b in zip(ours.model.arch_parameters(), public.model.arch_parameters()):
        assert not torch.allclose(a.grad, b.grad)
    for (name, a), b in zip(ours.model.named_parameters(), public.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    for _ in range(2):  # and on, with the optimizers' momentum
        ours.search_step(x, y, xa, ya, 1.0, lr=0.025)
        bench.public_code_step(public, x, y, xa, ya, 1.0)
    for (name, a), b in zip(ours.model.named_parameters(), public.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    # what it does not reproduce is refused, not run as something else
    import argparse
    for extra in ("search.order=second", "partial_channels.sampling=random"):
        args = argparse.Namespace(batch=8, steps=1, warmup=1, device="cpu", set=[extra])
        with pytest.raises(SystemExit, match="first-order steps with fixed partial channels"):
            bench._search_step(args, "el-darts", "public", tmp_path / "refused")


@pytest.mark.slow(seconds=25)
def test_bench_eval_profile_calls_tables_where_the_eldarts_step_goes():
    """bench_eval.py --profile-calls: one more eldarts step with each ATen call timed (bench_search.profile_calls),
    printed under the throughput table for each size; every row's process on eldarts' malloc setting."""
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_eval.py"), "--sizes", "8x5", "--batch", "8",
                           "--rounds", "1", "--steps", "1", "--warmup", "1", "--defaults-only", "--profile-calls",
                           "--threads", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "Where eldarts' step goes at C=8, 5 cells" in out
    table = out.split("Where eldarts' step goes", 1)[1]
    by_op, by_shapes = table.split("| op | inputs |")[1:3]
    # which calls rank highest moves with the machine's noise (a 2-core run once left 8x8x32x32's depthwise
    # convolution out of the top 15): the tables hold convolutions, and the second one names their NHWC inputs
    assert re.search(r"^\| convolution(_backward)? \| \(all\) \| \d+ \|", by_op, re.MULTILINE)
    assert re.search(r"^\| convolution(_backward)? \| 8x\d+x\d+x\d+ L, ", by_shapes, re.MULTILINE)
    # every row runs with the malloc setting eldarts evaluate gives a CPU run (runtime.allocator: auto)
    kept = subprocess.run([sys.executable, "-c", "from eldarts_cli.core.allocator import configure; "
                           "print(configure('auto', 'cpu'))"], capture_output=True, text=True, cwd=ROOT, check=True)
    assert "malloc: runtime.allocator=auto in every row (freed memory kept for the next step)." in out
    expected = 3 if kept.stdout.strip() == "True" else 0  # the two references and eldarts' defaults
    assert f"freed memory kept in {expected} of 3 processes" in out


def test_bench_search_profile_calls_times_each_aten_call_by_op_and_shapes():
    """bench_search.py --profile-calls: each ATen call of a step timed on its own, grouped by op, and by op and input
    shapes (channels_last marked), ranked by time, with call counts and shares of the total."""
    import importlib.util

    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "bench_search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(6, 4, 3, 3)

    def step():
        for _ in range(3):
            F.relu(F.conv2d(x, weight, padding=1))
        torch.cat([x, x], dim=1)

    tables = bench.profile_calls(step, top=10)
    table = tables["calls"]
    by_op = {row["op"]: row for row in table}
    ops = {row["op"]: row for row in tables["ops"]}
    assert ops["convolution"]["calls"] == 3 and ops["convolution"]["inputs"] == "(all)"
    assert ops["convolution"]["ms"] == pytest.approx(by_op["convolution"]["ms"])  # one shape: the same time
    assert by_op["convolution"]["calls"] == 3 and by_op["convolution"]["inputs"] == "2x4x8x8 L, 6x4x3x3"
    assert by_op["relu"]["calls"] == 3
    assert by_op["cat"]["inputs"] == "[2: 2x4x8x8 L]"
    assert [row["ms"] for row in table] == sorted((row["ms"] for row in table), reverse=True)
    assert all(row["ms"] > 0 for row in table) and 0 < sum(row["share"] for row in table) <= 100.0 + 1e-6


def _check_cuda_ops():
    import importlib.util

    spec = importlib.util.spec_from_file_location("check_cuda_ops", ROOT / "bench" / "check_cuda_ops.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_OPS_CHECK = ["--device", "cpu", "--quick", "--batch", "4", "--size", "8", "--channels", "8", "--layers", "3"]


def test_check_cuda_ops_compares_every_operator_on_the_cpu(tmp_path):
    """bench/check_cuda_ops.py (device-check's first step) on the CPU: each operator's supernet in fp32 NHWC
    against float64 NCHW, every row ok and written."""
    table = tmp_path / "ops.md"
    assert _check_cuda_ops().main(TINY_OPS_CHECK + ["--write", str(table)]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == [
        "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
        "dil_conv_5x5", "none, skip_connect"]
    assert all(row.split(" | ")[2] == "ok" for row in rows)


def test_check_cuda_ops_catches_a_wrong_gradient(monkeypatch):
    """The comparison finds a wrong gradient in one path: the CPU's NHWC avg pooling of few channels made to
    return 1.5 times its gradient (as PyTorch's CUDA NHWC kernel returned a wrong one) is a mismatch."""
    import argparse

    from eldarts_cli.models import ops

    module = _check_cuda_ops()
    args = argparse.Namespace(device="cpu", batch=4, size=8, channels=8, layers=3, nodes=4, tolerance=0.1)
    config = {"label": "avg_pool_3x3", "ops": ["avg_pool_3x3"], "k": 4}
    assert module.check(config, args)["score"] <= 1
    backward = ops._AvgPool3x3Batched.backward
    monkeypatch.setattr(ops._AvgPool3x3Batched, "backward", staticmethod(
        lambda ctx, grad: (backward(ctx, grad)[0] * 1.5, None)))
    assert module.check(config, args)["score"] > 1


def test_check_cuda_ops_starts_after_a_failed_configuration(monkeypatch, capsys):
    """A configuration that fails (a CUDA error spends the process' context) is a failed row; the failed one is
    rerun alone with CUDA_LAUNCH_BLOCKING=1, its traceback printed, and the next child starts after it."""
    import json
    import subprocess

    module = _check_cuda_ops()  # (puts bench/ on the path)
    import bench_search

    calls = []

    def fake(cmd, timeout, env=None, **kwargs):
        start = int(cmd[cmd.index("--start") + 1])
        calls.append((start, "--one" in cmd, (env or {}).get("CUDA_LAUNCH_BLOCKING")))
        if "--one" in cmd:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback\n  in conv2d: kernel K\n")
        ok = [json.dumps({"index": i, "score": 0.1, "distance": 1e-6, "floor": 1e-6, "tensor": "t", "tensors": 3,
                          "seconds": 0.1})
              for i in range(start, 8 if start else 2)]
        out = "".join(module.MARK + line + "\n" for line in ok)
        if start == 0:
            out += module.MARK + json.dumps({"index": 2, "error": "AcceleratorError: CUDA error: illegal"}) + "\n"
            return subprocess.CompletedProcess(cmd, 1, out, "torch.AcceleratorError: CUDA error: illegal\n")
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr(bench_search, "run_limited", fake)
    assert module.main(TINY_OPS_CHECK) == 1
    assert calls == [(0, False, None), (2, True, "1"), (3, False, None)]
    out, err = capsys.readouterr()
    assert "| avg_pool_3x3 | 4 | ok |" in out and "| skip_connect | 4 | failed: AcceleratorError: CUDA error: " in out
    assert "CUDA_LAUNCH_BLOCKING=1: exit 1; stderr (last 30 lines):\n    Traceback\n      in conv2d: kernel K" in err


@pytest.mark.slow(seconds=15)
def test_count_calls_counts_the_cuda_paths_calls_on_meta(tmp_path):
    """bench/count_calls.py: ATen calls of one forward and backward pass per recipe, on the CPU and on `meta` (the
    CUDA code paths, with cuDNN's channels_last convolution outputs emulated); kernels split from views."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("count_calls", ROOT / "bench" / "count_calls.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    calls = module.count("EL-DARTS", "meta", batch=2, channels=4, layers=3, size=8)
    assert calls["convolution"] > 0 and calls["convolution_backward"] > 0 and calls["view"] > 0
    assert calls == module.count("EL-DARTS", "meta", batch=2, channels=4, layers=3, size=8)  # exact: the same twice
    table = tmp_path / "calls.md"
    assert module.main(["--batch", "2", "--channels", "4", "--layers", "3", "--size", "8", "--write", str(table)]) == 0
    rows = [line for line in table.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [tuple(row.split(" | ")[:2]) for row in rows] == [
        ("| EL-DARTS", "cpu"), ("| EL-DARTS", "meta"), ("| PC-DARTS", "cpu"), ("| PC-DARTS", "meta"),
        ("| DARTS (1st order)", "cpu"), ("| DARTS (1st order)", "meta")]
    assert all(0 < int(row.split(" | ")[3].replace(",", "")) < int(row.split(" | ")[2].replace(",", ""))
               for row in rows)


# -- CUDA graphs of the search step ------------------------------------------------


def test_a_replayed_search_step_makes_the_eager_searchs_updates(tmp_path):
    """``runtime.cuda_graphs``' plumbing, on the CPU: the step recorded once per epoch (the epoch's lr and
    temperature are part of what is recorded), each batch copied into the recorded inputs, an epoch's shorter last
    batch run eagerly. :class:`Replay` reruns the recorded function where a CUDA graph would replay its kernels, so
    two epochs (a warm-up one and one with architecture steps) must end with every weight, buffer, architecture
    parameter and optimiser state equal to the eager search's, bit for bit."""
    from eldarts_cli.engines.graphs import Replay, StepGraph

    data = yaml.safe_load(TINY_SEARCH)
    data["data"]["limit"] = 120  # 60 images a half: batches of 16, 16, 16 and 12
    data["search"]["max_steps"] = None
    recipe = SearchRecipe.model_validate(data)
    eager = Searcher(recipe, tmp_path / "eager")
    replayed = Searcher(recipe, tmp_path / "replayed")
    backend = Replay()
    replayed.graphs = StepGraph(backend, warmup=1)
    rows = {}
    for name, searcher in (("eager", eager), ("replayed", replayed)):
        rows[name] = [searcher.run_epoch(epoch) for epoch in range(2)]
    assert backend.recorded == 2 and replayed.graphs.replays == 2  # 4 batches: warm-up, record + 1 replay, the 12
    for (key, a), (_, b) in zip(eager.model.state_dict().items(), replayed.model.state_dict().items()):
        assert torch.equal(a, b), key
    for opt in ("w_opt", "a_opt"):
        for a, b in zip(getattr(eager, opt).state.values(), getattr(replayed, opt).state.values()):
            assert all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a), opt
    for a, b in zip(rows["eager"], rows["replayed"]):  # the training loss and accuracy come from the replays' outputs
        assert (a.train_loss, a.train_acc) == (b.train_loss, b.train_acc)


def test_step_graph_records_again_only_when_its_key_changes():
    from eldarts_cli.engines.graphs import Replay, StepGraph

    calls = []
    state = torch.zeros(())

    def step(x):
        calls.append(x.clone())
        state.add_(x.sum())
        return (state.clone(),)

    backend = Replay()
    graph = StepGraph(backend, warmup=2)
    outs = [graph("a", step, (torch.tensor([float(i)]),))[0].clone() for i in range(1, 6)]
    assert backend.recorded == 1 and graph.replays == 3  # 2 warm-up steps, then recorded at the third
    assert [float(o) for o in outs] == [1, 3, 6, 10, 15]  # each batch once, read from the recorded input
    assert float(graph("a", step, (torch.tensor([1.0, 1.0]),))[0]) == 17  # another shape: eagerly, graph let go
    assert float(graph("a", step, (torch.tensor([2.0]),))[0]) == 19 and backend.recorded == 2  # again, no warm-up
    graph("b", step, (torch.tensor([1.0]),))  # a new key: warm-up steps again before the next record
    assert backend.recorded == 2
    with pytest.raises(ValueError, match="at least one warm-up step"):
        StepGraph(backend, warmup=0)

    class Refusing(Replay):  # a capture CUDA refuses: one clear error, not PyTorch's traceback
        def record(self, fn, like):
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nmore lines")

    from eldarts_cli.core.errors import GraphCaptureError

    refusing = StepGraph(Refusing(), warmup=1)
    refusing("a", step, (torch.tensor([1.0]),))
    with pytest.raises(GraphCaptureError, match=r"^runtime.cuda_graphs: CUDA could not record the step as a graph "
                                                r"\(CUDA error: operation not permitted when stream is capturing\); "
                                                r"set runtime.cuda_graphs: false"):
        refusing("a", step, (torch.tensor([1.0]),))


@pytest.mark.parametrize("sets, message", [
    ({"search": {"order": "second"}}, "search.order: second"),
    ({"partial_channels": {"ratio": 2, "sampling": "random"}}, "partial_channels.sampling: random"),
    ({"runtime": {"compile": True}}, "runtime.compile (use one or the other)"),
    ({"runtime": {"amp": "fp16"}}, "runtime.amp: fp16"),
])
def test_cuda_graphs_refuse_steps_with_host_work_and_other_devices(tmp_path, sets, message):
    from eldarts_cli.config.base import deep_merge

    data = deep_merge(yaml.safe_load(TINY_SEARCH), {"runtime": {"cuda_graphs": True}})
    with pytest.raises(ValueError, match="runtime.cuda_graphs cannot record a step with") as info:
        SearchRecipe.model_validate(deep_merge(data, sets))
    assert message in str(info.value)
    from eldarts_cli.core.errors import RecipeError

    with pytest.raises(RecipeError, match="runtime.cuda_graphs records CUDA graphs: this search runs on cpu"):
        Searcher(SearchRecipe.model_validate(data), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before its folder
    # the command refuses it before it names a run folder ("run folder: ..." was printed, then the error)
    from typer.testing import CliRunner

    from eldarts_cli.cli import app

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["search", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 2 and "run folder" not in result.output and not (tmp_path / "cli").exists()
    assert result.output.startswith("error: runtime.cuda_graphs records CUDA graphs"), result.output


def _evaluation(tmp_path, name, *sets):
    from eldarts_cli.config.base import apply_overrides
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.engines.distributed import Distributed
    from eldarts_cli.engines.evaluate import Evaluation
    from eldarts_cli.models.genotypes import GENOTYPES

    # 90 training images: batches of 16 and a last one of 10
    data = apply_overrides(yaml.safe_load(TINY_EVAL), ["data.limit=90", "train.max_steps=null", "train.onnx=false",
                                                       "runtime.log_every=20", *sets])
    recipe = EvalRecipe.model_validate(data)
    return Evaluation(recipe, GENOTYPES.get("DARTS_V2"), tmp_path / name, device=torch.device("cpu"),
                      dist=Distributed.from_env(), resume=False, report=lambda event: None)


def test_a_replayed_training_step_makes_the_eager_trainings_updates(tmp_path):
    """``runtime.cuda_graphs`` for training from scratch, on the CPU through :class:`Replay`: recorded again each
    epoch (the lr and drop-path rate change), the shorter last batch (10 of 90 images) run eagerly; two epochs end
    with every weight and buffer equal to the eager training's, bit for bit (drop path's random masks included)."""
    from eldarts_cli.engines.graphs import Replay, StepGraph

    eager, replayed = _evaluation(tmp_path, "eager"), _evaluation(tmp_path, "replayed")
    backend = Replay()
    replayed.graphs = StepGraph(backend, warmup=1)
    rows = {}
    for name, evaluation in (("eager", eager), ("replayed", replayed)):
        torch.manual_seed(5)  # the same drop-path masks
        rows[name] = [evaluation.train_epoch(epoch) for epoch in range(2)]
    assert backend.recorded == 2 and replayed.graphs.replays == 4  # 6 batches: warm-up, record + 3 replays, the 10
    for (key, a), (_, b) in zip(eager.model.state_dict().items(), replayed.model.state_dict().items()):
        assert torch.equal(a, b), key
    for a, b in zip(rows["eager"], rows["replayed"]):
        assert (a.train_loss, a.train_top1) == (b.train_loss, b.train_top1)


def test_training_compiles_the_network_where_the_recipe_asks(tmp_path, monkeypatch):
    """``runtime.compile`` in an evaluation recipe was accepted and ignored: training ran eagerly. The training step
    now calls the compiled network (torch.compile stubbed: inductor takes minutes on a CPU)."""
    calls = []

    def compile_(module, mode=None):
        calls.append(mode)
        return module

    monkeypatch.setattr(torch, "compile", compile_)
    assert _evaluation(tmp_path, "eager").step.model is not None and calls == []
    _evaluation(tmp_path, "default", "runtime.compile=true")
    _evaluation(tmp_path, "graphs", "runtime.compile=reduce-overhead")
    assert calls == [None, "reduce-overhead"]


def test_training_refuses_cuda_graphs_it_cannot_record(tmp_path):
    from eldarts_cli.config.evaluate import EvalRecipe
    from eldarts_cli.core.errors import RecipeError

    data = yaml.safe_load(TINY_EVAL)
    for runtime, message in (({"compile": True}, "use one or the other"), ({"amp": "fp16"}, "runtime.amp: fp16")):
        with pytest.raises(ValueError, match=re.escape(message)):
            EvalRecipe.model_validate({**data, "runtime": {**data["runtime"], "cuda_graphs": True, **runtime}})
    with pytest.raises(RecipeError, match="this evaluation runs on cpu"):
        _evaluation(tmp_path, "run", "runtime.cuda_graphs=true")
    assert not (tmp_path / "run").exists()


def test_compile_on_the_cpu_is_a_warning_in_search_and_evaluate(monkeypatch, tmp_path):
    """``runtime.compile`` on the CPU ran without a word; its minutes of compiling land in the first epoch's time and
    the measured cost. Search and evaluate (dry run or not) say so; on CUDA, or with compile off, nothing."""
    from typer.testing import CliRunner

    from eldarts_cli.cli import app
    from eldarts_cli.core.device import compile_warning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compile_warning(False, "cpu") is None and compile_warning(True, "cuda") is None
    assert compile_warning(True, "auto").startswith("runtime.compile on the CPU: inductor builds")
    assert compile_warning("reduce-overhead", "cpu").endswith("reduce-overhead's CUDA graphs do not apply on a CPU")
    runner = CliRunner()
    for args in (["search", str(ROOT / "recipes" / "quickstart.yaml")],
                 ["evaluate", "DARTS_V2", str(ROOT / "recipes" / "eval-quick.yaml")]):
        result = runner.invoke(app, [*args, "--set", "runtime.compile=true", "--dry-run"])
        assert result.exit_code == 0 and "warning: runtime.compile on the CPU" in result.output, result.output
