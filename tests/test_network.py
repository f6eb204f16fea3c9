"""Evaluation networks: shapes for every zoo genotype, published parameter counts, MACs, drop path."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eldarts_cli.core.errors import GenotypeError
from eldarts_cli.models.cells import plan_cells
from eldarts_cli.models.genotypes import GENOTYPES, Genotype
from eldarts_cli.models.network import NETWORKS, build_network, drop_path
from eldarts_cli.models.sizes import count_parameters, count_params_macs

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", GENOTYPES.names())
@pytest.mark.parametrize("kind,size", [("cifar", 8), ("imagenet", 32)])
def test_every_zoo_genotype_builds_and_runs(name, kind, size):
    net = build_network(kind, genotype=GENOTYPES.get(name), channels=4, layers=3, num_classes=7)
    net.drop_path_prob = 0.2
    x = torch.randn(2, 3, size, size)
    logits, aux = net.train()(x)
    assert logits.shape == (2, 7) and aux.shape == (2, 7)
    (logits.sum() + aux.sum()).backward()
    assert net.eval()(x).shape == (2, 7)  # no auxiliary output in eval mode


def test_cells_follow_the_shared_plan():
    genotype = GENOTYPES.get("DARTS_V2")
    net = build_network("cifar", genotype=genotype, channels=6, layers=8)
    plan = plan_cells(8, 6, 18, 4)
    assert [c.reduction for c in net.cells] == [p.reduction for p in plan]
    imagenet = build_network("imagenet", genotype=genotype, channels=8, layers=5)
    assert type(imagenet.cells[0].preprocess0).__name__ == "FactorizedReduce"  # after the stride-2 stem


# Published sizes (papers round to 0.1M); the exact figures are those the authors' code prints.
@pytest.mark.parametrize(
    "name,kind,published,exact",
    [
        ("DARTS_V2", "cifar", 3.3, 3.349342),
        ("DARTS_V2", "imagenet", 4.7, 4.718752),
        ("PC_DARTS", "cifar", 3.6, 3.634678),
        ("PC_DARTS", "imagenet", 5.3, None),
        ("PC_DARTS_IMAGENET", "imagenet", 5.3, None),
        ("P_DARTS", "cifar", 3.4, None),
        ("P_DARTS", "imagenet", 4.9, None),
        ("GDAS_V1", "cifar", 3.4, None),
    ],
)
def test_published_parameter_counts(name, kind, published, exact):
    net = build_network(kind, genotype=GENOTYPES.get(name))  # the paper's settings are the defaults
    params_m = count_parameters(net) / 1e6
    assert round(params_m, 1) == published
    if exact is not None:
        assert params_m == pytest.approx(exact, abs=1e-6)
    assert count_parameters(net, include_auxiliary=True) > count_parameters(net)


def test_macs_counted_on_a_python_without_distutils():
    """thop imports distutils' LooseVersion; Python 3.12 has no distutils (nor has a venv without setuptools). The
    count is the same there (a stand-in serves thop's import), and the stand-in does not stay in sys.modules."""
    from eldarts_cli.models.sizes import thop_macs

    code = ("import sys; sys.modules['distutils'] = None\n"  # import distutils now fails, as on Python 3.12
            "import torch\n"
            "from eldarts_cli.models.sizes import thop_macs\n"
            "net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())\n"
            "print(thop_macs(net, torch.zeros(1, 3, 16, 16)), sys.modules['distutils'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    assert proc.stdout.split() == [str(thop_macs(net, torch.zeros(1, 3, 16, 16))), "None"]


def test_macs_of_darts_v2_in_the_mobile_setting():
    net = build_network("imagenet", genotype=GENOTYPES.get("DARTS_V2"))
    sizes = count_params_macs(net, (3, 224, 224))
    # thop: 546.5M (DARTS users report 545M); conv+FC only: 529.9M; published: 574M
    assert 540 < sizes["macs_m"] < 552
    assert 520 < sizes["macs_conv_fc_m"] < sizes["macs_m"]
    assert sizes["params_m"] == pytest.approx(4.718752)
    assert net.auxiliary_head is not None  # counted on a copy


def test_drop_path_drops_whole_samples_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(1000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.view(1000, -1)
    kept = per_sample[(per_sample != 0).any(dim=1)]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.75))
    assert (per_sample == 0).all(dim=1).float().mean().item() == pytest.approx(0.25, abs=0.05)


def test_cells_with_different_output_widths_are_refused():
    g = GENOTYPES.get("DARTS_V2").model_copy(update={"reduce_concat": [4, 5]})
    with pytest.raises(GenotypeError, match="normal_concat"):
        build_network("cifar", genotype=g, channels=4, layers=3)


def test_a_reduction_concat_of_the_cells_inputs_or_twice_a_state_is_refused_by_name():
    """reduce_concat [0, 1, ...] names states at twice the output's resolution: it was accepted, and the network's
    shape error blamed the image size ("another data.image_size may do"); a state named twice went unsaid."""
    from eldarts_cli.models.genotypes import Genotype

    data = GENOTYPES.get("DARTS_V2").model_dump()
    with pytest.raises(ValueError, match=r"reduce_concat \[0, 3, 4, 5\] names the cell's inputs"):
        Genotype.model_validate({**data, "reduce_concat": [0, 3, 4, 5]})
    with pytest.raises(ValueError, match=r"normal_concat \[2, 2, 2, 2\] names a state twice"):
        Genotype.model_validate({**data, "normal_concat": [2, 2, 2, 2]})
    assert Genotype.model_validate({**data, "normal_concat": [1, 3, 4, 5]}).normal_concat == [1, 3, 4, 5]


def test_network_registry():
    assert {"cifar", "imagenet"} <= set(NETWORKS.names())
    with pytest.raises(KeyError, match="did you mean 'cifar'"):
        NETWORKS.get("cifra")


def test_cells_rectify_each_state_once_and_compute_the_same_function():
    """The eval network shares one ReLU per state among the ops that start with one (ops.without_leading_relu);
    it must equal the DARTS formulation, each op with its own ReLU."""
    from eldarts_cli.models.reference import PlainEvalForward

    torch.manual_seed(0)
    for kind, size in (("cifar", 16), ("imagenet", 32)):
        net = build_network(kind, genotype=GENOTYPES.get("DARTS_V2"), channels=8, layers=5, auxiliary=False,
                            num_classes=10).eval()
        x = torch.randn(2, 3, size, size)

        torch.testing.assert_close(net(x), PlainEvalForward(net)(x))


def test_public_modules_network_is_the_same_function_with_darts_module_classes():
    """bench_eval's public-code baseline: eldarts' faster module subclasses swapped for the PyTorch classes the
    public DARTS code uses; outputs, parameter gradients and BatchNorm statistics equal, the network untouched."""
    from eldarts_cli.models import norm, ops
    from eldarts_cli.models.ops import FactorizedReduce
    from eldarts_cli.models.reference import PUBLIC_CLASSES, PlainEvalForward, with_public_modules

    torch.manual_seed(0)
    for name in ("DARTS_V2", "P_DARTS"):  # P_DARTS: a reduction cell's dil_conv too (PixelsReadConv2d)
        net = build_network("cifar", genotype=GENOTYPES.get(name), channels=8, layers=5, auxiliary=False,
                            num_classes=10)
        public = with_public_modules(net)
        swapped = {ops.MaxPool3x3, ops.SubsampledConv1x1, ops.DilatedDepthwiseConv2d, norm.BatchNorm2d} | (
            {ops.PixelsReadConv2d} if name == "P_DARTS" else set()) | (
            {ops.AvgPool3x3} if "avg_pool_3x3" in str(GENOTYPES.get(name)) else set())
        assert {type(m) for m in net.modules()} & set(PUBLIC_CLASSES) == swapped  # the network keeps its classes
        assert not {type(m) for m in public.modules()} & set(PUBLIC_CLASSES)
        assert all(m.plain for m in public.modules() if isinstance(m, FactorizedReduce))
        assert not any(m.plain for m in net.modules() if isinstance(m, FactorizedReduce))
        x = torch.randn(2, 3, 16, 16)  # NCHW: the layout the public code runs
        outs = []
        for model in (net, PlainEvalForward(public)):
            model.train()
            y = model(x)
            grads = torch.autograd.grad((y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum(),
                                        list(model.parameters()))
            outs.append((y, grads))
        torch.testing.assert_close(outs[0][0], outs[1][0])
        for a, b in zip(outs[0][1], outs[1][1]):
            torch.testing.assert_close(a, b)
        for a, b in zip(net.buffers(), public.buffers()):
            torch.testing.assert_close(a, b)  # running statistics moved alike
        net.eval(), public.eval()
        torch.testing.assert_close(net(x), PlainEvalForward(public)(x))


def test_max_pool_through_nhwc_is_the_same_function():
    """MaxPool3x3 routes contiguous CPU input through PyTorch's NHWC kernel, and NHWC input of few channels
    through one image of N * C channels: outputs and gradients bit-identical."""
    from torch import nn

    from eldarts_cli.models.ops import OPS, MaxPool3x3, search_op

    torch.manual_seed(0)
    cases = ((1, (3, 5, 9, 9)), (2, (2, 4, 8, 8)), (1, (2, 1, 6, 6)), (1, (2, 8, 6, 6)), (1, (2, 4, 6, 7)))
    for stride, shape in cases:
        fast, plain = MaxPool3x3(stride), nn.MaxPool2d(3, stride=stride, padding=1)
        for layout in (torch.contiguous_format, torch.channels_last, "slice"):
            if layout == "slice":  # a channel slice of an NCHW tensor, as partial channels give
                x = torch.randn(shape[0], 2 * shape[1], *shape[2:])[:, : shape[1]].detach().requires_grad_()
                assert not x.is_contiguous()
            else:
                x = torch.randn(*shape)
                if shape[-1] == 7:  # rounded: many ties (the first maximum wins, as in PyTorch's kernel)
                    x = x.round()
                x = x.contiguous(memory_format=layout).requires_grad_()
            y = fast(x)
            # NHWC under 8 channels: pooled as one image of N * C channels
            batched = layout is torch.channels_last and 1 < shape[1] < 8
            assert (type(y.grad_fn).__name__ == "_MaxPool3x3BatchedBackward") == batched
            if shape[1] > 1:  # (a single channel takes PyTorch's own kernel)
                # the backward pass keeps the indices only, as int32: not the input
                assert [t.dtype for t in y.grad_fn.saved_tensors] == [torch.int32]
            assert torch.equal(y, plain(x))
            assert y.is_contiguous(memory_format=torch.channels_last if layout is torch.channels_last else
                                   torch.contiguous_format)
            torch.manual_seed(1)
            y_plain = plain(x)
            torch.manual_seed(1)
            (g_plain,) = torch.autograd.grad((y_plain * torch.randn_like(y_plain)).sum(), x)
            torch.manual_seed(1)
            y_fast = fast(x)
            torch.manual_seed(1)
            (g_fast,) = torch.autograd.grad((y_fast * torch.randn_like(y_fast)).sum(), x)
            assert torch.equal(g_fast, g_plain)
    assert type(OPS.get("max_pool_3x3").build(4, 1, True)) is MaxPool3x3
    plain_op = search_op(OPS.get("max_pool_3x3"), 4, 1, plain=True)  # the reference supernet: DARTS' module
    assert type(plain_op[0]) is nn.MaxPool2d


def _assert_same_stride_2_function(fast, plain, x, channels):
    """``fast`` and ``plain`` (same weights) give ``x`` the same stride-2 output (``channels`` of them), the same
    gradients of a fixed weighted sum of it (input and parameters) and the same thop MACs; returns ``fast``'s
    gradients."""
    from eldarts_cli.models.sizes import thop_macs

    outs, grads = [], []
    # the public form runs on NCHW input: PyTorch 2.14.1's NHWC backward of a stride-2 1x1 convolution with 6 -> 4
    # channels on one thread corrupted the heap on an AVX2 CPU (glibc: "free(): invalid pointer"; NCHW, 2 threads
    # or eldarts' SubsampledConv1x1 did not); the function compared does not depend on the layout
    for module, xm in ((fast, x), (plain, x.contiguous())):
        xi = xm.clone().requires_grad_()
        out = module(xi)
        outs.append(out)
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                         [xi] + list(module.parameters())))
    n, _, h, w = x.shape
    assert outs[0].shape == outs[1].shape == (n, channels, (h + 1) // 2, (w + 1) // 2)
    torch.testing.assert_close(outs[0], outs[1])
    for g_fast, g_plain in zip(*grads):
        torch.testing.assert_close(g_fast, g_plain)
    assert thop_macs(fast, x) == thop_macs(plain, x) > 0  # thop counts eldarts' conv subclasses as conv layers
    return grads[0]


_PLAIN_REDUCE_ON_ONE_THREAD = """
import torch
from eldarts_cli.models.ops import FactorizedReduce
torch.set_num_threads(1)
torch.manual_seed(0)
for c_in, c_out in ((4, 4), (6, 8)):
    m = FactorizedReduce(c_in, c_out, plain=True)
    # a network moved to channels_last: NHWC 1x1 weights, which alone send the convolution to the NHWC kernel
    m_nhwc = FactorizedReduce(c_in, c_out, plain=True).to(memory_format=torch.channels_last)
    m_nhwc.load_state_dict(m.state_dict())
    assert m_nhwc.conv_1.weight.stride() != m.conv_1.weight.stride()
    for i in range(30):
        base = torch.randn(2, 2 * c_in, 8, 8).to(memory_format=torch.channels_last)
        for x in (base[:, :c_in], base[:, :c_in].contiguous(memory_format=torch.channels_last),
                  base[:, :c_in].contiguous()):
            xc = x.detach().contiguous().requires_grad_()
            yc = m(xc)
            gc = torch.autograd.grad(yc.sum(), [xc, *m.parameters()])
            for module in (m, m_nhwc):
                x = x.detach().requires_grad_()
                y = module(x)
                g = torch.autograd.grad(y.sum(), [x, *module.parameters()])  # the weights' gradient broke
                torch.testing.assert_close(y, yc)
                torch.testing.assert_close(g, gc)
                assert y.is_contiguous(memory_format=torch.channels_last if x.stride(1) == 1 else torch.contiguous_format)
print("ok")
"""


def test_public_factorized_reduce_survives_nhwc_input_on_one_thread():
    """PyTorch 2.14's CPU backward of a stride-2 1x1 convolution on NHWC tensors of 4 or 6 channels writes past
    its buffers on one thread (oneDNN's AVX2 1x1 backward-weights kernel; glibc aborts the process); it takes that
    kernel for NHWC input or NHWC weights (a module moved to channels_last). The public FactorizedReduce (the
    reference supernet's, and bench_eval's public-module baseline) runs its convolutions on NCHW input with NCHW
    weights on the CPU, the same function, in the input's layout out. In a child process: the failure it guards
    against kills the process."""
    proc = subprocess.run([sys.executable, "-c", _PLAIN_REDUCE_ON_ONE_THREAD], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.parametrize("size", [8, 7, (8, 5)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_subsampled_factorized_reduce_is_the_public_one(size, layout):
    """FactorizedReduce computes its stride-2 1x1 convs on the pixels they read (SubsampledConv1x1): the
    same outputs, shape and gradients as the public DARTS form (nn.Conv2d with stride 2), odd sizes too."""
    from torch import nn

    from eldarts_cli.models.ops import OPS, FactorizedReduce, SubsampledConv1x1, search_op

    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    fast, plain = FactorizedReduce(6, 8), FactorizedReduce(6, 8, plain=True)
    plain.load_state_dict(fast.state_dict())
    assert isinstance(fast.conv_1, SubsampledConv1x1) and type(plain.conv_1) is nn.Conv2d
    x = torch.randn(3, 6, h, w).contiguous(memory_format=layout)
    grads = _assert_same_stride_2_function(fast, plain, x, 8)
    assert grads[0].is_contiguous(memory_format=layout)  # relu_subsampled's gradient keeps the layout
    skip = OPS.get("skip_connect")
    assert isinstance(skip.build(4, 2, True).conv_1, SubsampledConv1x1)
    assert type(search_op(skip, 4, 2, plain=True).conv_1) is nn.Conv2d  # the reference supernet: DARTS' module


def _dil_conv_pair(name, stride):
    """The op's spec, eldarts' DilConv of 6 channels at ``stride`` and the public one with the same weights."""
    from eldarts_cli.models.ops import OPS

    torch.manual_seed(0)
    spec = OPS.get(name)
    fast, plain = spec.build(6, stride, True), spec.build_plain(6, stride, True)
    plain.load_state_dict(fast.state_dict())
    return spec, fast, plain


@pytest.mark.parametrize("name", ["dil_conv_3x3", "dil_conv_5x5"])
@pytest.mark.parametrize("size", [8, 7, (8, 5)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_strided_dil_conv_on_pixels_read_is_the_public_one(name, size, layout):
    """A reduction edge's dil_conv runs its depthwise conv (stride 2 = dilation 2) on the pixels it reads
    (PixelsReadConv2d): the same outputs, shape, gradients and thop MACs as the public DilConv (nn.Conv2d)."""
    from torch import nn

    from eldarts_cli.models.ops import PixelsReadConv2d, search_op

    h, w = (size, size) if isinstance(size, int) else size
    spec, fast, plain = _dil_conv_pair(name, 2)
    assert isinstance(fast[1], PixelsReadConv2d) and type(plain[1]) is nn.Conv2d
    assert not isinstance(spec.build(6, 1, True)[1], PixelsReadConv2d)  # stride 1 reads every pixel
    x = torch.randn(3, 6, h, w).contiguous(memory_format=layout)
    grads = _assert_same_stride_2_function(fast, plain, x, 6)
    assert grads[0].is_contiguous(memory_format=layout)  # the pixels' gradient keeps the layout
    assert type(search_op(spec, 4, 2, plain=True)[1]) is nn.Conv2d  # the reference supernet: DARTS' module


@pytest.mark.parametrize("name", ["dil_conv_3x3", "dil_conv_5x5"])
@pytest.mark.parametrize("size", [8, 7, (8, 5)])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_dilated_dil_conv_backward_on_phases_is_the_public_one(name, size, layout):
    """A normal edge's dil_conv (stride 1, dilation 2) runs its depthwise conv's backward pass on the input's
    phases (DilatedDepthwiseConv2d): the same outputs, gradients and thop MACs as the public DilConv
    (nn.Conv2d), odd sizes too, the input's gradient in the input's layout."""
    from torch import nn

    from eldarts_cli.models.ops import DilatedDepthwiseConv2d, search_op
    from eldarts_cli.models.sizes import thop_macs

    h, w = (size, size) if isinstance(size, int) else size
    spec, fast, plain = _dil_conv_pair(name, 1)
    assert isinstance(fast[1], DilatedDepthwiseConv2d) and type(plain[1]) is nn.Conv2d
    assert type(search_op(spec, 4, 1, plain=True)[1]) is nn.Conv2d  # the reference supernet: DARTS' module
    x = torch.randn(3, 6, h, w).contiguous(memory_format=layout)
    outs, grads = [], []
    for module in (fast, plain):
        xi = x.clone().requires_grad_()
        out = module(xi)
        outs.append(out)
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(),
                                         [xi] + list(module.parameters())))
    assert outs[0].shape == (3, 6, h, w)
    torch.testing.assert_close(outs[0], outs[1])
    for g_fast, g_plain in zip(*grads):  # (the weight's gradient sums the pixels in another order)
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-4, atol=1e-4)
    assert grads[0][0].is_contiguous(memory_format=layout)
    assert thop_macs(fast, x) == thop_macs(plain, x) > 0


def test_phase_split_backward_is_exact_to_second_order_and_under_autocast():
    """The phase-split backward pass of a dilated depthwise conv: gradcheck and gradgradcheck in float64 (dilation
    2 and 3, sizes not multiples of it), and under CPU bf16 autocast the dtypes and values of autocast's conv."""
    import torch.nn.functional as F

    from eldarts_cli.models.ops import DilatedDepthwiseConv2d, _PhaseSplitBackward

    torch.manual_seed(0)
    for kernel, dilation, size in ((3, 2, 7), (5, 2, 6), (3, 3, 8)):
        pad = dilation * (kernel - 1) // 2
        x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)

        def conv(a, b):
            return _PhaseSplitBackward.apply(a, b, pad, dilation)

        assert torch.autograd.gradcheck(conv, (x, weight))
        assert torch.autograd.gradgradcheck(conv, (x, weight))
    module = DilatedDepthwiseConv2d(8, 3, 2, 2)
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    results = []
    for fn in (module, lambda a: F.conv2d(a, module.weight, None, 1, 2, 2, 8)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(x)
        results.append((y, *torch.autograd.grad(y.float().square().sum(), (x, module.weight))))
    for ours, theirs in zip(*results):
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("size", [8, 7, (6, 5)])
@pytest.mark.parametrize("used", ["both", "even", "odd"])
def test_relu_subsampled_equals_autograd_slices(size, used):
    """relu_subsampled = rectify, then FactorizedReduce's two pixel grids (odd sides zero padded), with the
    gradient autograd's slices give, also when only one grid reaches the loss."""
    from eldarts_cli.models.ops import _shifted, relu_subsampled

    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    ours = relu_subsampled(x)
    rect = torch.relu(x)
    theirs = (rect[:, :, ::2, ::2], _shifted(rect)[:, :, ::2, ::2])
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    pick = {"both": [0, 1], "even": [0], "odd": [1]}[used]

    def loss(outs):
        return sum((outs[i] * torch.linspace(-1, 1, outs[i].numel(), dtype=torch.float64).view_as(outs[i])).sum()
                   for i in pick)

    torch.testing.assert_close(torch.autograd.grad(loss(ours), x)[0], torch.autograd.grad(loss(theirs), x)[0])


@pytest.mark.parametrize("size", [28, 20, 14])
def test_auxiliary_head_trains_on_mnist_sized_images(size):
    """28x28 images (MNIST) leave the CIFAR auxiliary head a 7x7 map, which its 5x5 pooling (stride 3) cut to 1x1
    before a 2x2 convolution: a crash, reported as "too small ... set data.image_size=1". Such maps are pooled to
    2x2 now; the paper's 8x8 map takes the head as before."""
    net = build_network("cifar", genotype=GENOTYPES.get("DARTS_V2"), num_classes=10, channels=8, layers=5,
                        auxiliary=True, in_channels=1).train()
    logits, aux = net(torch.zeros(2, 1, size, size))
    assert logits.shape == aux.shape == (2, 10)


def test_a_network_that_fails_on_some_size_is_not_called_too_small():
    """A network failing on the images for another reason than their size (small copies ran on smaller ones) was
    refused with "too small ... need at least 1x1; set data.image_size=1"."""
    from eldarts_cli.core.errors import RecipeError
    from eldarts_cli.engines.resources import check_network_fits

    class FailsAt28(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 1)

        def forward(self, x):
            if x.shape[-1] == 28:
                raise RuntimeError("Kernel size can't be greater than actual input size")
            return self.conv(x)

    with pytest.raises(RecipeError) as info:
        check_network_fits(lambda layers, channels: FailsAt28(), layers=3, channels=4, channel_multiple=4,
                           input_size=(1, 28), batch=2, device=None, what="cifar network")
    message = str(info.value)
    assert message == ("this cifar network cannot run on 28x28 images; it runs on 27x27 and 29x29: set "
                       "data.image_size=27 (the images are resized), or change the network. (PyTorch said: Kernel "
                       "size can't be greater than actual input size)")
    assert "image_size=1" not in message


def test_a_size_between_two_a_supernet_runs_on_names_them():
    """With partial channels a DARTS supernet's bypass is pooled 2x2 at each reduction: 18x18 failed with
    "shape '[2, 1, 16, 5, 5]' is invalid ...; another data.image_size may do", naming no size that does."""
    from typer.testing import CliRunner

    from eldarts_cli.cli import app

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    result = CliRunner().invoke(app, ["search", str(recipe), "--set", "data.image_size=18", "--dry-run"])
    flat = " ".join(result.output.split())
    assert result.exit_code == 2 and flat.count("error:") == 1, result.output
    assert ("error: this supernet cannot run on 18x18 images; it runs on 16x16 and 20x20: set data.image_size=16 "
            "(the images are resized), or change the network (partial_channels.ratio=1, without the bypass pooled "
            "2x2, may run on it). (PyTorch said: shape") in flat
