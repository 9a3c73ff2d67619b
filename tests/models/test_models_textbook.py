"""The textbook's Residual block and ResNet-18, checked against the notebook's own code."""

import pytest
import torch
from torch import nn

from resnetlab import models as lab

# The notebook's cells, verbatim, live once in the package: the benchmark's baseline uses them too.
from resnetlab.bench.textbook_baseline import Residual
from resnetlab.bench.textbook_baseline import notebook_resnet18 as notebook_net

pytestmark = pytest.mark.usefixtures("one_thread")


# The notebook's printed output for `for layer in net:` on a 1x1x224x224 input.
NOTEBOOK_WALK = """\
Sequential output shape:\t torch.Size([1, 64, 56, 56])
Sequential output shape:\t torch.Size([1, 64, 56, 56])
Sequential output shape:\t torch.Size([1, 128, 28, 28])
Sequential output shape:\t torch.Size([1, 256, 14, 14])
Sequential output shape:\t torch.Size([1, 512, 7, 7])
AdaptiveAvgPool2d output shape:\t torch.Size([1, 512, 1, 1])
Flatten output shape:\t torch.Size([1, 512])
Linear output shape:\t torch.Size([1, 10])
"""


def test_residual_keeps_shape_and_projection_halves_it():
    X = torch.rand(4, 3, 6, 6)
    assert lab.Residual(3, 3)(X).shape == (4, 3, 6, 6)
    assert lab.Residual(3, 6, use_1x1conv=True, strides=2)(X).shape == (4, 6, 3, 3)


def test_residual_has_the_notebook_layers():
    plain, projected = lab.Residual(3, 3), lab.Residual(3, 6, use_1x1conv=True, strides=2)
    assert plain.conv3 is None
    assert [n for n, _ in projected.named_children()] == ["conv1", "conv2", "conv3", "bn1", "bn2"]
    assert all(c.bias is not None for c in (projected.conv1, projected.conv2, projected.conv3))
    assert projected.conv3.kernel_size == (1, 1) and projected.conv3.stride == (2, 2)


@pytest.mark.parametrize("args", [(3, 3), (3, 6, True, 2)])
def test_residual_computes_what_the_notebook_block_computes(args):
    torch.manual_seed(0)
    ours, theirs = lab.Residual(*args), Residual(*args)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    X = torch.randn(4, 3, 6, 6)
    for mode in (True, False):  # batch statistics, then running statistics
        ours.train(mode), theirs.train(mode)
        torch.testing.assert_close(ours(X.clone()), theirs(X.clone()))


def test_lazy_residual_infers_its_input_channels():
    blk = lab.Residual(None, 6, use_1x1conv=True, strides=2)
    assert isinstance(blk.conv1, nn.LazyConv2d) and isinstance(blk.conv3, nn.LazyConv2d)
    assert blk(torch.rand(4, 3, 6, 6)).shape == (4, 6, 3, 3)
    assert blk.conv1.weight.shape == (6, 3, 3, 3) and blk.conv3.weight.shape == (6, 3, 1, 1)
    # a lazy block without projection keeps the (inferred) channel count
    assert lab.Residual(None, 5)(torch.rand(2, 5, 4, 4)).shape == (2, 5, 4, 4)


def test_resnet_block_is_the_notebook_stage():
    first, rest = lab.resnet_block(64, 64, 2, first_block=True), lab.resnet_block(64, 128, 3)
    assert len(first) == 2 and all(b.conv3 is None for b in first)
    assert len(rest) == 3 and rest[0].conv3.stride == (2, 2) and rest[0].conv1.in_channels == 64
    assert all(b.conv3 is None and b.conv1.in_channels == 128 for b in rest[1:])


def test_resnet18_d2l_is_the_notebook_net_key_for_key():
    notebook = notebook_net()
    ours = lab.create_model("resnet18_d2l")
    assert isinstance(ours, nn.Sequential) and len(ours) == 8
    assert [type(m) for m in ours] == [type(m) for m in notebook]
    theirs_sd, ours_sd = notebook.state_dict(), ours.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert all(ours_sd[k].shape == theirs_sd[k].shape for k in theirs_sd)
    assert sum(p.numel() for p in ours.parameters()) == 11_178_378
    # the notebook's weights load strictly and give the same outputs
    ours.load_state_dict(theirs_sd, strict=True)
    X = torch.rand(2, 1, 64, 64)
    torch.testing.assert_close(ours.eval()(X), notebook.eval()(X))


def test_notebook_shape_walk_prints_the_notebook_output(capsys):
    net = lab.create_model("resnet18_d2l")
    X = torch.rand(size=(1, 1, 224, 224))
    with torch.no_grad():
        for layer in net:
            X = layer(X)
            print(layer.__class__.__name__, "output shape:\t", X.shape)
    assert capsys.readouterr().out == NOTEBOOK_WALK


def test_resnet18_d2l_other_depths_and_inputs():
    net = lab.create_model(
        "resnet18_d2l", in_chans=3, num_classes=5, layers=[3, 4, 6, 3], widths=[8, 16, 32, 64]
    )
    assert [len(stage) for stage in list(net)[1:5]] == [3, 4, 6, 3]
    assert [stage[-1].conv2.out_channels for stage in list(net)[1:5]] == [8, 16, 32, 64]
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5)
