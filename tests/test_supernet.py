"""The grouped supernet computes exactly the edge-by-edge EL-DARTS/PC-DARTS cell."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_supernets_agree

from eldarts_cli.models.cells import edge_index, num_edges, plan_cells
from eldarts_cli.models.reference import ReferenceSupernet, copy_reference_weights
from eldarts_cli.models.spaces import DARTS_SPACE, ESS_SPACE
from eldarts_cli.models.supernet import Supernet, channel_shuffle, node_softmax


@pytest.mark.parametrize(
    "ops,k,dcss",
    [(ESS_SPACE, 2, True), (DARTS_SPACE, 2, True), (DARTS_SPACE, 1, False), (ESS_SPACE, 1, True)],
)
@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("size", [8, 16])  # 16x16: separable blocks run in NHWC on the CPU (ops.nhwc_detour)
def test_grouped_cell_equals_edge_by_edge(ops, k, dcss, reduction, size):
    """The fused cell against the package's edge-by-edge reference (models/reference.py, eq. 1 and 5)."""
    from eldarts_cli.models.ops import nhwc_detour

    assert nhwc_detour(torch.zeros(1, 2, size, size)) == (size == 16)
    torch.manual_seed(0)
    kwargs = dict(ops=ops, num_classes=10, channels=8, layers=3, partial_channels=k, edge_coefficients=dcss)
    net, reference = Supernet(**kwargs), ReferenceSupernet(**kwargs)
    copy_reference_weights(reference, net)
    cell = net.cells[1 if reduction else 0]
    ref_cell = reference.cells[1 if reduction else 0]
    assert cell.reduction == reduction
    c_in = cell.preprocess1[1].in_channels
    s0 = torch.randn(4, cell.preprocess0.conv_1.in_channels if hasattr(cell.preprocess0, "conv_1") else cell.preprocess0[1].in_channels, size, size)
    s1 = torch.randn(4, c_in, size, size)
    alpha = torch.randn(num_edges(4), len(ops), requires_grad=True)
    gamma = torch.rand(num_edges(4), requires_grad=True)
    op_w = F.softmax(alpha, -1)
    edge_w = node_softmax(gamma, 4) if dcss else None

    fast = cell(s0, s1, op_w, edge_w)
    slow = ref_cell(s0, s1, op_w, edge_w)
    assert fast.shape == slow.shape
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)

    # the architecture gradients agree too
    g = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * g).sum(), [alpha, gamma], allow_unused=True)
    op_w = F.softmax(alpha, -1)
    edge_w = node_softmax(gamma, 4) if dcss else None
    slow = ref_cell(s0, s1, op_w, edge_w)
    grads_slow = torch.autograd.grad((slow * g).sum(), [alpha, gamma], allow_unused=True)
    for a, b in zip(grads_fast, grads_slow):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("ops,k", [(ESS_SPACE, 2), (DARTS_SPACE, 1)])
def test_whole_supernet_equals_reference(ops, k):
    torch.manual_seed(1)
    kwargs = dict(ops=ops, num_classes=10, channels=4, layers=3, partial_channels=k, edge_coefficients=True)
    net, reference = Supernet(**kwargs), ReferenceSupernet(**kwargs)
    copy_reference_weights(reference, net)
    assert_supernets_agree(net, reference, torch.randn(3, 3, 8, 8))


def test_supernet_shapes_and_parameter_groups():
    net = Supernet(ops=ESS_SPACE, num_classes=7, in_channels=1, channels=4, layers=3, partial_channels=2,
                   edge_coefficients=True)
    out = net(torch.randn(2, 1, 8, 8))
    assert out.shape == (2, 7)
    arch = net.arch_parameters()
    assert [tuple(p.shape) for p in arch] == [(14, 4), (14, 4), (14,), (14,)]
    state = net.state_dict()
    for name in ("alpha_normal", "alpha_reduce", "edge_normal", "edge_reduce"):
        assert name in state  # in every checkpoint
    ids = {id(p) for p in arch}
    assert not ids & {id(p) for p in net.weight_parameters()}
    assert len(net.weight_parameters()) + len(arch) == len(list(net.parameters()))


def test_dcss_init_uniform_in_range():
    torch.manual_seed(0)
    net = Supernet(ops=ESS_SPACE, num_classes=10, channels=4, layers=3, partial_channels=2,
                   edge_coefficients=True, edge_init=("uniform", 0.2, 0.3))
    assert net.edge_normal.min() >= 0.2 and net.edge_normal.max() <= 0.3
    assert not torch.equal(net.edge_normal, net.edge_reduce)


def test_node_softmax_sums_to_one_per_node():
    gamma = torch.randn(14)
    w = node_softmax(gamma, 4)
    start = 0
    for node in range(4):
        n = node + 2
        torch.testing.assert_close(w[start : start + n].sum(), torch.tensor(1.0))
        torch.testing.assert_close(w[start : start + n], F.softmax(gamma[start : start + n], 0))
        start += n


def test_channel_shuffle_is_the_pc_darts_permutation():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_partial_channels_bypass_shapes():
    net = Supernet(ops=ESS_SPACE, num_classes=10, channels=8, layers=3, partial_channels=4)
    cell = net.cells[1]
    assert cell.op_channels == 16 // 4  # reduction cell doubles C
    out = cell(torch.randn(2, 24, 8, 8), torch.randn(2, 32, 8, 8), *[F.softmax(torch.zeros(14, 4), -1), None])
    assert out.shape == (2, 4 * 16, 4, 4)


def test_arch_step_computes_no_weight_gradients():
    net = Supernet(ops=ESS_SPACE, num_classes=10, channels=4, layers=3, partial_channels=2, edge_coefficients=True)
    loss = net(torch.randn(2, 3, 8, 8)).sum()
    loss.backward(inputs=net.arch_parameters())
    assert all(p.grad is None for p in net.weight_parameters())
    assert all(p.grad is not None for p in net.arch_parameters())
    net.zero_grad(set_to_none=True)
    net(torch.randn(2, 3, 8, 8), detach_arch=True).sum().backward()
    assert all(p.grad is None for p in net.arch_parameters())


def test_cell_plan_matches_darts():
    plan = plan_cells(8, 16, 48, 4)
    assert [p.reduction for p in plan] == [False, False, True, False, False, True, False, False]
    assert [p.channels for p in plan] == [16, 16, 32, 32, 32, 64, 64, 64]
    assert plan[3].reduction_prev and not plan[4].reduction_prev
    assert num_edges(4) == 14 == len(edge_index(4))
