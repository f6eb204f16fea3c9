"""The search step replayed as one CUDA graph (``runtime.cuda_graphs: true``).

On a GPU the supernet's search step is many small kernels (about 12,000 ATen calls a step), and the host's work
to launch them, not the GPU's arithmetic, sets the step's time: on an H200 the EL-DARTS step at batch 256 ran at
603 GFLOP/s (``bench/results-search-cuda.md``). A CUDA graph records the whole step once (both phases'
forward and backward passes and both optimisers' updates) and launches it again with one call per batch.
``torch.compile(mode="reduce-overhead")`` does the same after compiling, which did not finish in five minutes on
that GPU; this module records PyTorch's eager kernels as they are, with nothing to compile.

What a graph holds is fixed when it is recorded: every tensor's address and every Python number the step reads.
So :class:`StepGraph`

* copies each batch into the same input tensors (the recorded step reads them) and hands back the same output
  tensors, overwritten by each replay (read them before the next step, as the search loop does);
* records the step again whenever its ``key`` changes: the Python numbers the step reads (the epoch's learning
  rate, temperature, whether architecture steps run), which change once per epoch;
* runs a batch of another shape (an epoch's shorter last batch) without the graph;
* runs ``warmup`` steps without the graph, on a side stream, before it records (CUDA's rule: libraries set up
  their workspaces and the optimisers their state outside the recording).

Those steps are the search's own steps: no batch is run twice or left out, and a replayed step runs the kernels
the eager one runs (``tests/test_speed.py`` replays through :class:`Replay`, a stand-in that reruns the recorded
function, and compares every weight after a search with the eager search's). On a GPU the architecture
optimiser is Adam with ``capturable`` step counters, whose bias correction is computed on the device in another
order than eager Adam's: the same updates, not bit for bit.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..core.errors import GraphCaptureError, RecipeError

Step = Callable[[], Sequence[torch.Tensor]]


class CudaGraphs:
    """Recording and running on CUDA ``device``: warm-up steps and the recording on one side stream of that device
    (streams and graphs belong to the current device, which is not the run's unless made so: a step on
    ``cuda:1`` recorded from ``cuda:0`` records nothing), in ``thread_local`` capture mode (a data loader's
    pin-memory thread may allocate while the step is recorded)."""

    def __init__(self, device: torch.device):
        self.device = device
        self._stream: Optional[torch.cuda.Stream] = None

    def _side(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def warm(self, fn: Step) -> Sequence[torch.Tensor]:
        with torch.cuda.device(self.device):
            side = self._side()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = fn()
            torch.cuda.current_stream().wait_stream(side)
        return out

    def record(self, fn: Step, like: Sequence[torch.Tensor]):
        """``(graph, outputs)``: the graph of ``fn`` (not run yet) and the outputs each replay overwrites."""
        with torch.cuda.device(self.device):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._side(), capture_error_mode="thread_local"):
                out = fn()
        return graph, out


class Replay:
    """A stand-in for :class:`CudaGraphs` on any device: "recording" keeps the function, each replay reruns it
    and copies its results into the same output tensors. It runs what a graph would run in the same order, so a
    search replayed through it must equal the eager search bit for bit; what it checks is the plumbing (inputs
    read only from the recorded tensors, new records when the key changes, other shapes run eagerly)."""

    recorded = 0  # how many times a step was recorded (for tests)

    def warm(self, fn: Step) -> Sequence[torch.Tensor]:
        return fn()

    def record(self, fn: Step, like: Sequence[torch.Tensor]):
        self.recorded += 1
        out = [torch.empty_like(t) for t in like]

        class _Graph:
            def replay(self) -> None:
                for target, value in zip(out, fn()):
                    target.copy_(value)

        return _Graph(), out


class StepGraph:
    """One step (of a search or a training) recorded as a graph and replayed; see the module's docstring."""

    def __init__(self, backend: object, warmup: int = 2):
        if warmup < 1:
            raise ValueError("a step graph needs at least one warm-up step (its outputs' shapes come from it)")
        self.warmup = warmup
        self.backend = backend  # CudaGraphs(device), or Replay() in tests
        self.key: object = None
        self._graph = None
        self._inputs: list[torch.Tensor] = []
        self._outputs: Sequence[torch.Tensor] = ()
        self._warm_left = warmup
        self._like: Sequence[torch.Tensor] = ()
        self.replays = 0  # replayed steps since the last record (for tests and benchmarks)
        self.replayed = 0  # replayed steps in all

    def __call__(self, key: object, step: Callable[..., Sequence[torch.Tensor]],
                 inputs: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """``step(*inputs)``, through the graph recorded for ``key`` where there is one (or once it is warm)."""
        if key != self.key:
            self.key, self._graph, self._inputs, self._outputs = key, None, [], ()  # the old graph's memory goes
            self._warm_left = self.warmup
        if self._graph is not None and [t.shape for t in inputs] != [t.shape for t in self._inputs]:
            # another shape (an epoch's shorter last batch): eagerly, with the graph and its memory let go (the
            # step's activations twice over otherwise); the next full batch records again, without warm-up
            self._graph, self._inputs, self._outputs, self._warm_left = None, [], (), 0
            return step(*inputs)
        if self._graph is not None:
            for target, value in zip(self._inputs, inputs):
                target.copy_(value)
            self._graph.replay()
            self.replays += 1
            self.replayed += 1
            return self._outputs
        if self._warm_left > 0:
            self._warm_left -= 1
            self._like = self.backend.warm(lambda: step(*inputs))
            return self._like
        recorded = [t.clone() for t in inputs]  # the tensors every replay reads
        try:
            graph, outputs = self.backend.record(lambda: step(*recorded), self._like)
        except RuntimeError as error:  # (torch's CUDA errors are RuntimeErrors)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise GraphCaptureError(f"runtime.cuda_graphs: CUDA could not record the step as a graph ({first}); "
                                    f"set runtime.cuda_graphs: false to run it eagerly (checkpoints so far are "
                                    f"kept: --resume continues)") from None
        self._graph, self._inputs, self._outputs, self.replays = graph, recorded, outputs, 0
        graph.replay()  # recording runs nothing: this batch's step is the first replay
        self.replays = 1
        self.replayed += 1
        return outputs


def adam_capturable(optimizer: torch.optim.Optimizer, on: bool, device: torch.device) -> None:
    """Adam's step counters on the device (``capturable``: a recorded step reads them there) or back on the CPU;
    the option and the counters together, since a checkpoint's optimiser state brings its own."""
    for group in optimizer.param_groups:
        group["capturable"] = on
    # its warm-up steps run outside the graph on purpose: no warning that capturable Adam runs uncaptured
    optimizer._warned_capturable_if_run_uncaptured = on
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].to(device if on else "cpu", torch.float32)


def check_graphs_device(cuda_graphs: bool, device: torch.device, what: str, amp: str = "none") -> None:
    """``runtime.cuda_graphs`` records CUDA graphs: refused for a ``what`` (search, evaluation) on another device,
    and with fp16 autocast (its gradient scaler checks for overflow on the host; a training's ``runtime.amp: auto``
    resolves to it on GPUs without bf16)."""
    if not cuda_graphs:
        return
    if device.type != "cuda":
        raise RecipeError(f"runtime.cuda_graphs records CUDA graphs: this {what} runs on {device.type}; "
                          f"use runtime.device: cuda, or runtime.cuda_graphs: false")
    if amp == "fp16":
        raise RecipeError("runtime.cuda_graphs cannot record fp16 autocast (this GPU has no bf16, so runtime.amp: "
                          "auto chose fp16); set runtime.amp: none, or runtime.cuda_graphs: false")


def step_graph(cuda_graphs: bool, device: torch.device, what: str, amp: str, distributed: bool) -> Optional[StepGraph]:
    """The :class:`StepGraph` of a run where ``runtime.cuda_graphs`` asks (refused where it cannot record), else
    ``None``."""
    if not cuda_graphs:
        return None
    check_graphs_device(cuda_graphs, device, what, amp)
    if distributed:
        raise RecipeError("runtime.cuda_graphs runs in one process, not under torchrun; launch without torchrun, or "
                          "set runtime.cuda_graphs: false")
    return StepGraph(CudaGraphs(device))
