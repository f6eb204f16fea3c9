"""eldarts' BatchNorm2d: the column path for NHWC input is nn.BatchNorm2d's function, gradients and buffers."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eldarts_cli.models import norm
from eldarts_cli.models.norm import BatchNorm2d, column_factor
from eldarts_cli.models.ops import GroupedDilConv, composed_in_nhwc, scaled_batch_norm
from eldarts_cli.models.sizes import thop_macs


@pytest.fixture(autouse=True)
def _small_inputs_take_the_column_path(monkeypatch):
    """The tests' small tensors take the column path (at full size it starts at ``COLUMN_MIN_PIXELS``, or
    ``HALF_VECTOR_MIN_PIXELS`` for odd multiples of 8 channels)."""
    monkeypatch.setattr(norm, "COLUMN_MIN_PIXELS", 4)
    monkeypatch.setattr(norm, "HALF_VECTOR_MIN_PIXELS", 4)


def _nhwc(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g).mul(2.0).add(0.5)  # off-centre, not unit scale
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def _relative(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("channels", [4, 12, 36, 20, 8, 24])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_column_path_matches_nn_batchnorm(channels, affine, momentum):
    x = _nhwc(6, channels, 8, 8)
    assert column_factor(x) > 1
    theirs = nn.BatchNorm2d(channels, affine=affine, momentum=momentum)
    if affine:
        with torch.no_grad():
            theirs.weight.uniform_(0.5, 1.5)
            theirs.bias.uniform_(-0.5, 0.5)
    mine = BatchNorm2d(channels, affine=affine, momentum=momentum)
    mine.load_state_dict(theirs.state_dict())
    grad = _nhwc(6, channels, 8, 8, seed=1)
    for step in range(2):  # twice: the running statistics move as nn.BatchNorm2d's do, step after step
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outs = [theirs(xs[0]), mine(xs[1])]
        assert outs[1].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
        params = [list(theirs.parameters()), list(mine.parameters())]
        grads = [torch.autograd.grad(o, [xi] + p, grad) for o, xi, p in zip(outs, xs, params)]
        for mine_grad, their_grad in zip(grads[1], grads[0]):
            torch.testing.assert_close(mine_grad, their_grad, rtol=1e-4, atol=1e-5)
        for name, buffer in theirs.named_buffers():
            torch.testing.assert_close(dict(mine.named_buffers())[name], buffer, rtol=1e-5, atol=1e-6)
    mine.eval(), theirs.eval()
    torch.testing.assert_close(mine(x), theirs(x))


def test_bf16_column_path_is_as_close_to_fp64_as_pytorchs_kernel():
    x = _nhwc(8, 36, 16, 16, dtype=torch.bfloat16)
    grad = _nhwc(8, 36, 16, 16, dtype=torch.bfloat16, seed=1)
    weight = torch.rand(36, dtype=torch.float64) + 0.5
    bias = torch.rand(36, dtype=torch.float64)

    def run(bn, x):
        x = x.clone().requires_grad_()
        out = bn(x)
        return [out] + list(torch.autograd.grad(out, [x, bn.weight, bn.bias], grad.to(out.dtype)))

    exact = nn.BatchNorm2d(36).double()
    theirs, mine = nn.BatchNorm2d(36), BatchNorm2d(36)
    with torch.no_grad():
        for bn in (exact, theirs, mine):
            bn.weight.copy_(weight), bn.bias.copy_(bias)
    truth = run(exact, x.double())
    for ours, pytorchs, true in zip(run(mine, x), run(theirs, x), truth):
        assert ours.dtype == pytorchs.dtype
        # rounding to bf16 (8 bits) costs ~2e-3; the column path rounds the input gradient twice
        assert _relative(ours, true) <= 2 * _relative(pytorchs, true) + 2e-3
    torch.testing.assert_close(mine.running_mean, theirs.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mine.running_var, theirs.running_var, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["nchw", "multiple_of_16", "eval", "float64", "one_pixel_per_column", "small",
                                  "small_half_vector"])
def test_other_inputs_take_pytorchs_path(case, monkeypatch):
    x = _nhwc(4, 12, 8, 8)
    if case == "nchw":
        x = x.contiguous()
    elif case == "multiple_of_16":
        x = _nhwc(4, 16, 8, 8)
    elif case == "float64":
        x = x.double()
    elif case == "one_pixel_per_column":
        x = _nhwc(1, 12, 1, 3)  # 3 pixels: not a whole number of columns of k = 4
    elif case == "small":
        monkeypatch.setattr(norm, "COLUMN_MIN_PIXELS", 8192)  # the shipped threshold: 4 x 8 x 8 is below it
    elif case == "small_half_vector":  # 8 channels: the shipped threshold for odd multiples of 8 is higher
        x = _nhwc(4, 8, 48, 48)  # 9,216 pixels: enough for 12 channels' shipped threshold, not for 8's
        monkeypatch.setattr(norm, "COLUMN_MIN_PIXELS", 8192)
        monkeypatch.setattr(norm, "HALF_VECTOR_MIN_PIXELS", 16384)
        assert column_factor(_nhwc(4, 12, 48, 48)) > 1
    if case != "eval":
        assert column_factor(x) == 1
    bn = BatchNorm2d(x.shape[1]).to(x.dtype)
    if case == "eval":
        bn.eval()
    reference = copy.deepcopy(bn)
    reference.__class__ = nn.BatchNorm2d
    torch.testing.assert_close(bn(x), reference(x), rtol=0, atol=0)


def test_scaled_batch_norm_of_a_grouped_block_takes_the_column_path():
    """The supernet's op weight folded into the BatchNorm (arch gradient through the scale), at 3 edges x 4
    channels in NHWC: equal to the plain batch norm times the scale."""
    x = _nhwc(4, 12, 8, 8)
    scale = torch.rand(12, requires_grad=True)
    bn, plain = BatchNorm2d(12, affine=False), nn.BatchNorm2d(12, affine=False)
    mine = scaled_batch_norm(bn, x, scale)
    theirs = plain(x) * scale.view(1, -1, 1, 1)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
    grad = _nhwc(4, 12, 8, 8, seed=2)
    torch.testing.assert_close(torch.autograd.grad(mine, scale, grad)[0], torch.autograd.grad(theirs, scale, grad)[0],
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, plain.running_var)
    assert int(bn.num_batches_tracked) == 1


def test_grouped_block_in_nhwc_matches_nchw():
    """A grouped separable block over 3 edges at 32x32 (NCHW input, NHWC inside: ops.composed_in_nhwc;
    12-channel BatchNorms) gives the same outputs and gradients as the block with nn.BatchNorm2d: inside,
    its BatchNorms take the column path."""
    torch.manual_seed(0)
    block = GroupedDilConv(4, 3, 1, 1, num_edges=3, repeats=2)
    x = torch.randn(4, 4, 32, 32)
    assert composed_in_nhwc(x, 1, 1)
    ref = copy.deepcopy(block)
    for m in ref.modules():
        if isinstance(m, BatchNorm2d):
            m.__class__ = nn.BatchNorm2d
    weights = torch.randn(4, 3, 4, 32, 32)  # a loss whose gradient is not zero through the BatchNorms
    outs, grads = [], []
    for b in (block, ref):
        xi = x.clone().requires_grad_()
        out = b(xi)
        outs.append(out)
        grads.append(torch.autograd.grad((out * weights).sum(), [xi] + list(b.parameters())))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for g0, g1 in zip(*grads):  # weight gradients: fp32 sums over 4 x 32 x 32 pixels, in other orders
        torch.testing.assert_close(g0, g1, rtol=1e-3, atol=1e-4)


def test_thop_counts_it_as_a_batchnorm():
    x = torch.zeros(1, 12, 8, 8)
    assert thop_macs(BatchNorm2d(12), x) == thop_macs(nn.BatchNorm2d(12), x) > 0


def test_an_inplace_relu_may_follow_it():
    """The evaluation network's ops apply ReLU(inplace=True) to BatchNorm outputs."""
    x = _nhwc(4, 12, 8, 8)
    grad = _nhwc(4, 12, 8, 8, seed=3)
    results = []
    for bn in (BatchNorm2d(12), nn.BatchNorm2d(12)):
        xi = x.clone().requires_grad_()
        out = F.relu(bn(xi), inplace=True)
        results.append((out, torch.autograd.grad(out, xi, grad)[0]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


def test_compiled_graphs_take_pytorchs_path(monkeypatch):
    """Inside torch.compile the column path steps aside (the compiler fuses batch norm itself)."""
    x = _nhwc(4, 12, 8, 8)
    bn, reference = BatchNorm2d(12), nn.BatchNorm2d(12)

    class Refused:
        @staticmethod
        def apply(*args):
            raise AssertionError("the column path ran inside a compiled graph")

    monkeypatch.setattr(norm, "_ColumnBatchNorm", Refused)
    compiled = torch.compile(bn, backend="aot_eager")
    torch.testing.assert_close(compiled(x), reference(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, reference.running_var)


def test_column_path_double_backward_matches_pytorchs():
    """A double backward (create_graph=True) through the column path equals nn.BatchNorm2d's: the input's and
    the affine weight's second-order terms."""
    torch.manual_seed(0)
    scale, weight = torch.randn(2, 12, 8, 8), torch.randn(12)
    results = []
    for cls in (BatchNorm2d, nn.BatchNorm2d):
        bn = cls(12)
        with torch.no_grad():
            bn.weight.copy_(weight)
        a = torch.randn(2, 12, 8, 8, generator=torch.Generator().manual_seed(1)).requires_grad_()
        x = (a * scale).contiguous(memory_format=torch.channels_last)
        if cls is BatchNorm2d:
            assert column_factor(x) > 1
        y = bn(x)
        g_a, g_w = torch.autograd.grad((y.square() * scale).sum(), [a, bn.weight], create_graph=True)
        results.append(torch.autograd.grad((g_a.square()).sum() + g_w.square().sum(), [a, bn.weight]))
    for ours, theirs in zip(*results):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4)
