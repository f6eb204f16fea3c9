"""The grouped supernet computes exactly the edge-by-edge EL-DARTS/PC-DARTS cell."""

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_supernets_agree

from eldarts_cli.models.cells import edge_index, num_edges, plan_cells
from eldarts_cli.models.ops import (DilConv, GroupedDilConv, SepConv, composed_in_nhwc, composed_kernel,
                                    composes_per_edge)
from eldarts_cli.models.reference import ReferenceSupernet, copy_reference_weights
from eldarts_cli.models.spaces import DARTS_SPACE, ESS_SPACE
from eldarts_cli.models.supernet import Supernet, channel_shuffle, node_softmax


@pytest.mark.parametrize(
    "ops,k,dcss",
    [(ESS_SPACE, 2, True), (DARTS_SPACE, 2, True), (DARTS_SPACE, 1, False), (ESS_SPACE, 1, True)],
)
@pytest.mark.parametrize("reduction", [False, True])
@pytest.mark.parametrize("size", [8, 16, 32])  # on the CPU, composed blocks run in NHWC: dilated from 16x16, all at 32x32
def test_grouped_cell_equals_edge_by_edge(ops, k, dcss, reduction, size):
    """The fused cell against the package's edge-by-edge reference (models/reference.py, eq. 1 and 5)."""
    probe = torch.zeros(1, 2, size, size)
    assert composed_in_nhwc(probe, 1, 2) == (size >= 16) and composed_in_nhwc(probe, 1, 1) == (size >= 32)
    torch.manual_seed(0)
    kwargs = dict(ops=ops, num_classes=10, channels=8, layers=3, partial_channels=k, edge_coefficients=dcss)
    net, reference = Supernet(**kwargs), ReferenceSupernet(**kwargs)
    copy_reference_weights(reference, net)
    net, reference = net.double(), reference.double()  # the sums over 32x32 maps differ in fp32's last bits
    cell = net.cells[1 if reduction else 0]
    ref_cell = reference.cells[1 if reduction else 0]
    assert cell.reduction == reduction
    c_in = cell.preprocess1[1].in_channels
    s0 = torch.randn(4, cell.preprocess0.conv_1.in_channels if hasattr(cell.preprocess0, "conv_1") else cell.preprocess0[1].in_channels, size, size, dtype=torch.float64)
    s1 = torch.randn(4, c_in, size, size, dtype=torch.float64)
    alpha = torch.randn(num_edges(4), len(ops), dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(num_edges(4), dtype=torch.float64, requires_grad=True)
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


@pytest.mark.parametrize("kernel,dilation,stride", [(3, 1, 1), (3, 2, 1), (5, 2, 2), (5, 1, 2)])
def test_composed_kernel_is_depthwise_then_pointwise(kernel, dilation, stride):
    """One convolution with the product kernel = the depthwise conv, then the pointwise conv, per edge: on
    one input every edge reads (groups=1) and on per-edge inputs (groups=E); values and gradients of the
    input and of both factors."""
    torch.manual_seed(0)
    e, c, pad = 3, 4, dilation * (kernel - 1) // 2
    dw = torch.randn(e * c, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    pw = torch.randn(e * c, c, 1, 1, dtype=torch.float64, requires_grad=True)
    for shared in (True, False):
        x = torch.randn(2, c if shared else e * c, 11, 11, dtype=torch.float64, requires_grad=True)
        wide = torch.cat([x] * e, dim=1) if shared else x
        two = F.conv2d(F.conv2d(wide, dw, None, stride, pad, dilation, groups=e * c), pw, groups=e)
        one = F.conv2d(x, composed_kernel(dw, pw, e), None, stride, pad, dilation, groups=1 if shared else e)
        torch.testing.assert_close(one, two)
        g = torch.randn_like(one)
        for a, b in zip(torch.autograd.grad(one, [x, dw, pw], g), torch.autograd.grad(two, [x, dw, pw], g)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kernel,stride,dilation", [(3, 2, 2), (5, 2, 2), (3, 2, 1), (3, 1, 2), (3, 3, 3)])
@pytest.mark.parametrize("size", [8, 7, 11])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_conv_on_pixels_read_equals_the_strided_dilated_conv(kernel, stride, dilation, size, layout):
    """A convolution whose stride equals its dilation reads every stride-th pixel only, and is computed on
    those (odd sides too); values and gradients of input and weight are those of F.conv2d, in the input's layout."""
    from eldarts_cli.models.ops import conv_on_pixels_read

    torch.manual_seed(0)
    pad = dilation * (kernel - 1) // 2
    x = torch.randn(2, 4, size, size, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    w = torch.randn(6, 4, kernel, kernel, dtype=torch.float64, requires_grad=True)
    ours, plain = conv_on_pixels_read(x, w, stride, pad, dilation), F.conv2d(x, w, None, stride, pad, dilation)
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-12)
    assert ours.is_contiguous(memory_format=layout)
    g = torch.randn_like(plain)
    ours_grads = torch.autograd.grad(ours, [x, w], g)
    for a, b in zip(ours_grads, torch.autograd.grad(plain, [x, w], g)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert ours_grads[0].is_contiguous(memory_format=layout)  # the gradient in the input's layout
    if stride == dilation and size == 7:  # its backward is differentiable: double backward checks out
        assert torch.autograd.gradgradcheck(lambda t, v: conv_on_pixels_read(t, v, stride, pad, dilation),
                                            (x, w))


@pytest.mark.parametrize("kind,stride", [("sep", 1), ("sep", 2), ("dil", 1), ("dil", 2), ("sep5", 1), ("sep5x8", 1)])
@pytest.mark.parametrize("size,layout", [(8, "nchw"), (32, "nchw"), (16, "nhwc")])
def test_grouped_block_equals_its_per_edge_modules(kind, stride, size, layout):
    """A grouped separable/dilated block (composed kernels; NHWC inside at 32x32; on NHWC input a separable
    block's per-edge pair as two convolutions, except 5x5 pairs under 8 channels) against one SepConv or
    DilConv per edge: outputs, input gradient, each edge's weight gradients, and the output's memory format."""
    torch.manual_seed(0)
    e, c = 3, 8 if kind == "sep5x8" else 4
    if kind.startswith("sep"):
        k = 5 if kind.startswith("sep5") else 3
        modules = [SepConv(c, c, k, stride, k // 2, affine=False) for _ in range(e)]
        block = GroupedDilConv(c, k, stride, 1, e, repeats=2)
        probe = torch.zeros(1, e * c, 4, 4).contiguous(memory_format=torch.channels_last)
        assert composes_per_edge(probe, c, k) == (k == 5 and c < 8)
    else:
        modules = [DilConv(c, c, 3, stride, 2, 2, affine=False) for _ in range(e)]
        block = GroupedDilConv(c, 3, stride, 2, e, repeats=1)
    block.load_from(modules)
    block, modules = block.double(), [m.double() for m in modules]  # exact comparison: fp32 sums differ in the last bits
    fmt = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    x = torch.randn(4, c, size, size, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    out = block(x)  # (N, E, C, H', W')
    assert out.flatten(1, 2).is_contiguous(memory_format=fmt)
    per_edge = torch.stack([m(x) for m in modules], dim=1)
    torch.testing.assert_close(out, per_edge)
    g = torch.randn_like(out)
    ours = torch.autograd.grad(out, [x, *block.depthwise, *block.pointwise], g)
    theirs = torch.autograd.grad(per_edge, [x] + [p for m in modules for p in m.parameters()], g)
    torch.testing.assert_close(ours[0], theirs[0])
    repeats = len(block.depthwise)
    for i in range(repeats):  # SepConv: [dw0, pw0, dw1, pw1] per edge; DilConv: [dw, pw]
        dw = torch.cat([theirs[1 + m * 2 * repeats + 2 * i] for m in range(e)])
        pw = torch.cat([theirs[1 + m * 2 * repeats + 2 * i + 1] for m in range(e)])
        torch.testing.assert_close(ours[1 + i], dw)
        torch.testing.assert_close(ours[1 + repeats + i], pw)


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


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_shuffle_concat_is_the_shuffle_of_the_concatenation(layout):
    """The fused cell's join (sampling: fixed): channel_shuffle(cat) in values and gradients, the result in
    the inputs' layout, in NHWC both gradients dense NHWC, and a second derivative that checks out."""
    from eldarts_cli.models.supernet import shuffle_concat

    torch.manual_seed(0)
    searched = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    bypass = torch.randn(2, 9, 4, 5, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    ours, theirs = shuffle_concat(searched, bypass, 4), channel_shuffle(torch.cat([searched, bypass], 1), 4)
    assert torch.equal(ours, theirs) and ours.is_contiguous(memory_format=layout)
    g = torch.randn(ours.shape, dtype=torch.float64).contiguous(memory_format=layout)
    grads = torch.autograd.grad(ours, (searched, bypass), g)
    assert all(torch.equal(a, b) for a, b in zip(grads, torch.autograd.grad(theirs, (searched, bypass), g)))
    if layout == torch.channels_last:
        assert all(a.is_contiguous(memory_format=layout) for a in grads)
    assert torch.autograd.gradgradcheck(lambda s, b: shuffle_concat(s * s, b * b, 4), (searched, bypass))


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


@pytest.mark.parametrize("width", [4, 6, 2])  # powers of two take bit operations for the pixel's place
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_max_pool_2x2_equals_pytorchs(layout, width):
    """The bypass pooling of reduction edges: F.max_pool2d's values and gradients (ties included: the
    same first maximum), on a channel slice as the cell passes it."""
    from eldarts_cli.models.ops import max_pool_2x2

    torch.manual_seed(0)
    full = torch.randn(2, 8, 6, width).round().contiguous(memory_format=layout)  # rounded: many ties
    outs, grads = [], []
    for pool in (max_pool_2x2, lambda t: F.max_pool2d(t, 2, 2)):
        x = full.clone().requires_grad_()
        out = pool(x.split([2, 6], dim=1)[1])
        outs.append(out)
        grads.append(torch.autograd.grad(out, x, torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))[0])
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert max_pool_2x2(torch.randn(1, 2, 5, 4)).shape == (1, 2, 2, 2)  # odd sizes: PyTorch's own pooling
    # the gradient of a channel slice of NHWC input comes back dense NHWC (the split's backward and the
    # BatchNorm below it then keep to their NHWC paths), of NCHW input dense NCHW
    part = full[:, 2:].detach().requires_grad_()
    out = max_pool_2x2(part)
    grad, = torch.autograd.grad(out, part, torch.randn(out.shape).contiguous(memory_format=torch.channels_last))
    assert grad.is_contiguous(memory_format=layout)


def test_gradient_in_layout_is_identity_with_a_dense_gradient():
    """Before the global pooling of the search networks: the values pass unchanged, and the pooling's NCHW
    gradient reaches an NHWC network as a dense NHWC gradient (NCHW input is left alone)."""
    from eldarts_cli.models.ops import gradient_in_layout

    for layout in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(2, 6, 4, 4, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
        y = gradient_in_layout(x)
        assert torch.equal(y, x)
        pooled = F.adaptive_avg_pool2d(y, 1)
        g = torch.randn(pooled.shape, dtype=torch.float64)
        grad, = torch.autograd.grad(pooled, x, g)
        assert grad.is_contiguous(memory_format=layout)
        assert torch.equal(grad, torch.autograd.grad(F.adaptive_avg_pool2d(x, 1), x, g)[0])
        assert torch.autograd.gradgradcheck(lambda t: gradient_in_layout(t * t), (x,))


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (1, 7), (2, 7)])
def test_avg_pool_keeps_no_input_and_equals_pytorchs(stride, size):
    """The supernet's avg_pool_3x3 (ops.AvgPool3x3): nn.AvgPool2d's values and gradients on a channel slice,
    without keeping the slice (and with it the whole state) for the backward pass."""
    from torch import nn

    from eldarts_cli.models.ops import AvgPool3x3

    torch.manual_seed(0)
    full = torch.randn(2, 8, size, size)
    saved = []
    outs, grads = [], []
    for pool in (AvgPool3x3(stride), nn.AvgPool2d(3, stride, 1, count_include_pad=False)):
        x = full.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = pool(x.split([2, 6], dim=1)[0])
        outs.append(out)
        grads.append(torch.autograd.grad(out, x, torch.linspace(-1, 1, out.numel()).view_as(out))[0])
        if isinstance(pool, AvgPool3x3):
            assert saved == []
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("stride", [1, 2])
def test_pooling_of_few_nhwc_channels_as_one_image_equals_pytorchs(stride):
    """NHWC input of few channels (the first cells' partial channels) is pooled as one image of N * C
    channels (ops._MaxPool3x3Batched, _AvgPool3x3Batched): PyTorch's values and gradients, in NHWC."""
    from torch import nn

    from eldarts_cli.models.ops import AvgPool3x3, MaxPool3x3

    torch.manual_seed(0)
    x = torch.randn(3, 4, 7, 6).round().contiguous(memory_format=torch.channels_last)  # rounded: ties
    for ours, theirs, name in ((MaxPool3x3(stride), nn.MaxPool2d(3, stride, 1), "_MaxPool3x3Batched"),
                               (AvgPool3x3(stride), nn.AvgPool2d(3, stride, 1, count_include_pad=False),
                                "_AvgPool3x3Batched")):
        results = []
        for pool in (ours, theirs):
            t = x.clone().requires_grad_()
            out = pool(t)
            g = torch.linspace(-1, 1, out.numel()).view_as(out).contiguous(memory_format=torch.channels_last)
            results.append((out, torch.autograd.grad(out, t, g)[0]))
        (out, grad), (ref_out, ref_grad) = results
        assert type(out.grad_fn).__name__ == name + "Backward"
        torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("stride,size", [(1, 8), (2, 8), (2, 7)])
def test_avg_pool_nhwc_backward_through_nchw_equals_nchw_pooling(stride, size):
    """Off the CPU, NHWC input to avg_pool_3x3 takes ops._AvgPool3x3NCHWBackward: PyTorch's CUDA NHWC backward
    kernel drops the padding (pytorch/pytorch#188344), so the gradient comes from the NCHW kernel. Here on the
    CPU: the Function's values, gradients (NHWC) and second derivatives equal NCHW pooling's; a `meta` tensor
    (not a CPU one, as a CUDA tensor) is routed to it."""
    from torch import nn

    from eldarts_cli.models.ops import AvgPool3x3, _AvgPool3x3NCHWBackward

    torch.manual_seed(0)
    x = torch.randn(2, 5, size, size, dtype=torch.float64)
    reference = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    t = x.clone().requires_grad_()
    ref_out = reference(t)
    g = torch.randn_like(ref_out)
    ref_grad = torch.autograd.grad(ref_out, t, g)[0]
    t = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = _AvgPool3x3NCHWBackward.apply(t, stride)
    grad = torch.autograd.grad(out, t, g.contiguous(memory_format=torch.channels_last))[0]
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-12)
    assert grad.is_contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradgradcheck(lambda v: _AvgPool3x3NCHWBackward.apply(v * v, stride), (t,))
    meta = torch.empty(2, 5, size, size, device="meta").contiguous(memory_format=torch.channels_last)
    assert type(AvgPool3x3(stride)(meta.requires_grad_()).grad_fn).__name__ == "_AvgPool3x3NCHWBackwardBackward"


def test_evaluation_avg_pool_is_the_supernets_and_thop_counts_it():
    """The evaluation network's avg_pool_3x3 is ops.AvgPool3x3 (the CUDA NHWC gradient fix reaches trained
    networks too) and thop counts it as nn.AvgPool2d (its rules go by exact type)."""
    from torch import nn

    from eldarts_cli.models.ops import OPS, AvgPool3x3
    from eldarts_cli.models.sizes import thop_macs

    pool = OPS.get("avg_pool_3x3").build(4, 1, True)
    assert isinstance(pool, AvgPool3x3)
    x = torch.randn(1, 4, 8, 8)
    assert thop_macs(pool, x) == thop_macs(nn.AvgPool2d(3, 1, 1, count_include_pad=False), x) > 0


def test_custom_pooling_and_subsampling_have_second_derivatives():
    """The hand-written backward passes (relu_subsampled, max_pool_2x2, AvgPool3x3, MaxPool3x3's NHWC detour)
    are differentiable themselves: a double backward (create_graph=True, e.g. an exact unrolled DARTS
    gradient) checks out against finite differences."""
    from eldarts_cli.models.ops import AvgPool3x3, MaxPool3x3, max_pool_2x2, relu_subsampled

    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    for fn in (lambda t: relu_subsampled(t)[0] * 2 + relu_subsampled(t)[1] ** 2, max_pool_2x2,
               AvgPool3x3(2), MaxPool3x3(1), MaxPool3x3(2)):
        assert torch.autograd.gradgradcheck(lambda t: fn(t * t), (x,))
    nhwc = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()  # few channels: one image
    for fn in (MaxPool3x3(1), MaxPool3x3(2), AvgPool3x3(1), AvgPool3x3(2), max_pool_2x2):
        assert torch.autograd.gradgradcheck(lambda t: fn(t * t), (nhwc,))
    wide = torch.randn(2, 8, 5, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    for fn in (MaxPool3x3(1), MaxPool3x3(2)):  # NHWC of 8 channels: the NHWC Function keeping indices only
        assert torch.autograd.gradgradcheck(lambda t: fn(t * t), (wide.requires_grad_(),))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_split_and_join_permuted_are_indexing_with_dense_gradients(layout):
    """Random sampling's channel gathers (supernet.split_permuted / join_permuted): ``x[:, perm]`` split, and
    ``cat([a, b])[:, perm]``, in values and gradients; outputs and gradients dense in the input's memory
    format (also where the gradient arrives in another); second derivatives that check out (each one's
    backward is the other)."""
    from eldarts_cli.models.supernet import join_permuted, split_permuted

    torch.manual_seed(0)
    perm = torch.randperm(8)
    inverse = torch.argsort(perm)
    x = torch.randn(2, 8, 5, 3, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    a, b = split_permuted(x, perm, inverse, 3)
    assert torch.equal(a, x[:, perm[:3]]) and torch.equal(b, x[:, perm[3:]])
    assert a.is_contiguous(memory_format=layout) and b.is_contiguous(memory_format=layout)
    ga, gb = torch.randn(a.shape, dtype=torch.float64), torch.randn(b.shape, dtype=torch.float64)  # NCHW
    ours, = torch.autograd.grad((a, b), x, (ga, gb))
    theirs, = torch.autograd.grad((x[:, perm[:3]], x[:, perm[3:]]), x, (ga, gb))
    assert torch.equal(ours, theirs) and ours.is_contiguous(memory_format=layout)

    joined = join_permuted(a, b, inverse, perm)
    assert torch.equal(joined, x) and joined.is_contiguous(memory_format=layout)
    g = torch.randn(x.shape, dtype=torch.float64)
    ours = torch.autograd.grad(joined, (a, b), g)
    theirs = torch.autograd.grad(torch.cat([a, b], 1)[:, inverse], (a, b), g)
    assert all(torch.equal(o, t) and o.is_contiguous(memory_format=layout) for o, t in zip(ours, theirs))

    assert torch.autograd.gradgradcheck(lambda t: split_permuted(t * t, perm, inverse, 3), (x,))
    assert torch.autograd.gradgradcheck(lambda p, q: join_permuted(p * p, q * q, perm, inverse),
                                        (a.detach().requires_grad_(), b.detach().requires_grad_()))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_fused_node_sums_equal_one_addcmul_per_edge(layout):
    """SourceSums.flush through one autograd node (_MixIntoNodes: per-edge chunks, weighted and unweighted shared
    maps, nodes with and without a sum so far) gives the values, gradients and second derivatives of one
    ``add``/``addcmul`` per term; a weight's gradient is the dot product of a node's gradient and the map."""
    from eldarts_cli.models.ops import SourceSums

    torch.manual_seed(0)
    f64 = dict(dtype=torch.float64)
    wide = torch.randn(2, 12, 5, 3, **f64).contiguous(memory_format=layout).requires_grad_()
    pooled = torch.randn(2, 4, 5, 3, **f64).contiguous(memory_format=layout).requires_grad_()
    other = torch.randn(2, 4, 5, 3, **f64).requires_grad_()  # NCHW beside NHWC: the plain product's path
    weights = torch.randn(3, **f64, requires_grad=True)
    total = torch.randn(2, 4, 5, 3, **f64, requires_grad=True)
    probe = torch.randn(2, 4, 5, 3, **f64)
    inputs = (wide, pooled, other, weights, total)
    targets = [0, 2, 3]

    def derivatives(sums):
        loss = sum(((s * probe).sum() ** 2 for s in sums if s is not None), torch.zeros((), **f64))
        grads = torch.autograd.grad(loss, inputs, create_graph=True)
        return [s for s in sums if s is not None], grads, torch.autograd.grad(sum((g ** 2).sum() for g in grads),
                                                                              inputs)

    sums = [total, None, None, None]
    edges = SourceSums(sums, targets, 4)
    edges.add_per_edge(wide)
    edges.add_shared(pooled, weights)
    edges.add_shared(other)
    edges.flush()
    assert sums[1] is None and edges.wide is None and not edges.shared

    plain = [total, None, None, None]
    for e, (node, chunk) in enumerate(zip(targets, wide.split(4, dim=1))):
        plain[node] = chunk if plain[node] is None else plain[node] + chunk
        plain[node] = torch.addcmul(plain[node], pooled, weights[e]) + other

    for ours, theirs in zip(derivatives(sums), derivatives(plain)):
        for o, t in zip(ours, theirs):
            torch.testing.assert_close(o, t, rtol=1e-12, atol=1e-12)


def test_fused_node_sums_keep_their_dtype_under_autocast(monkeypatch):
    """Under autocast, bf16 maps with fp32 edge weights: the node sums stay bf16 and the weights' gradients are
    dot products of an fp32 and a bf16 map. CUDA's autocast makes ``torch.addcmul`` with an fp32 operand fp32 (the
    CPU's does not), which made the backward's ``torch.dot`` refuse mixed dtypes in a bf16 architecture step on a
    GPU: _MixIntoNodes adds with autocast off, and its dot products cast to one dtype."""
    from eldarts_cli.models import ops

    enabled = []
    addcmul = torch.addcmul

    def watched(*args, **kwargs):
        enabled.append(torch.is_autocast_enabled("cpu"))
        return addcmul(*args, **kwargs)

    monkeypatch.setattr(torch, "addcmul", watched)
    torch.manual_seed(0)
    pooled = torch.randn(2, 4, 5, 3, dtype=torch.bfloat16, requires_grad=True)
    total = torch.randn(2, 4, 5, 3, dtype=torch.bfloat16, requires_grad=True)
    weights = torch.randn(2, requires_grad=True)
    sums = [total, None]
    edges = ops.SourceSums(sums, [0, 1], 4)
    edges.add_shared(pooled, weights)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        edges.flush()
    assert enabled and not any(enabled)  # the sums were added with autocast off (on CUDA too)
    assert [s.dtype for s in sums] == [torch.bfloat16, torch.bfloat16]
    loss = (sums[0].float() * 2).sum() + (sums[1].float() ** 2).sum()
    grad_w, grad_p = torch.autograd.grad(loss, (weights, pooled))
    assert grad_w.dtype == torch.float32 and grad_p.dtype == torch.bfloat16
    expected = torch.stack([(2 * pooled.float()).sum(), (2 * sums[1].float() * pooled.float()).sum()])
    torch.testing.assert_close(grad_w, expected, rtol=2e-2, atol=2e-2)
    # the dot product of a gradient and a map of another dtype (what CUDA's fp32 sums produced)
    a, b = torch.randn(2, 4, 5, 3), torch.randn(2, 4, 5, 3, dtype=torch.bfloat16)
    torch.testing.assert_close(ops._dot(a, b), (a * b.float()).sum())
