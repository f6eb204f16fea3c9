import os

import pytest
import torch

# One thread: tiny networks are overhead-bound, and results do not depend on a
# noisy neighbour's load (OpenMP spin-waits on a busy 2-core box are costly).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker("slow")
    return marker.kwargs.get("seconds", 0) if marker is not None else 0


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow(seconds=N)`` first, longest first; the rest keep their order. Under ``--dist
    worksteal`` each worker starts at the front of its share and an idle worker takes the back of another's, so
    no long test starts while the other worker has nothing left to run (a 2-core run ended with one worker
    idle for two minutes behind the device-check test). Marked tests use no module-scoped fixture (moved away
    from their module, it would be set up again); test_distributed.py moves as one block."""
    items.sort(key=lambda item: -_seconds(item))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """The data cache in this session's temporary folder, for the whole session: module-scoped fixtures (tiny
    searches and ablations) are set up before any function-scoped one, and wrote to ~/.cache/eldarts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ELDARTS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


TINY_SEARCH = """
name: tiny
seed: 3
data: {dataset: digits, image_size: 8, batch_size: 16, crop_padding: 1, limit: 128}
search_space: {ops: ess}
network: {channels: 4, layers: 3, nodes: 2, multiplier: 2}
partial_channels: {ratio: 2}
arch_optim: {lr: 0.01}
search: {epochs: 3, warmup_epochs: 1, max_steps: 3, val_batches: 2}
runtime: {threads: 1}
"""


#: A tiny evaluation recipe (C=4, 3 cells, digits): training from scratch in seconds.
TINY_EVAL = """
name: tiny-eval
seed: 1
data: {dataset: digits, batch_size: 16, crop_padding: 1, cutout: 2, limit: 96, test_limit: 40}
network: {channels: 4, layers: 3, drop_path: 0.1}
optim: {lr: 0.05}
train: {epochs: 2, max_steps: 3}
runtime: {threads: 1, log_every: 1}
"""


@pytest.fixture
def tiny_recipe(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SEARCH)
    return path


def assert_supernets_agree(fused, reference, x):
    """The fused supernet and its edge-by-edge reference: same logits, architecture gradients and genotype."""
    out, ref = fused(x), reference(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out.sum().backward(inputs=fused.arch_parameters())
    ref.sum().backward(inputs=reference.arch_parameters())
    for a, b in zip(fused.arch_parameters(), reference.arch_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-5)
    assert fused.genotype() == reference.genotype()
