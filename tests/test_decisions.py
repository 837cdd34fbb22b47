"""Decisions are discovered from the trace, for any traceable CNN, never from model names."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from agmc_env.decisions import TraceError, analyse, describe_frozen, trace
from agmc_env.graph import OP_TYPES, build_graph
from agmc_env.models import cifar_resnet

X = torch.randn(1, 3, 32, 32)


def test_resnet56_block_internal_decisions():
    a = analyse(cifar_resnet(56), X)
    assert len(a.decisions) == 27
    for gid in a.decisions:
        g = a.groups[gid]
        assert len(g.producers) == 1 and g.producers[0].endswith("conv1") and not g.merged


def test_resnet56_residual_streams_add_one_decision_per_stage():
    a = analyse(cifar_resnet(56), X, prune_residual=True)
    streams = [a.groups[g] for g in a.decisions if a.groups[g].merged]
    assert len(a.decisions) == 30 and len(streams) == 3
    assert [s.width for s in streams] == [16, 32, 64]
    assert len(streams[0].producers) == 1 + 9  # stem + every conv2 of stage 1
    assert all(len(s.remaps) == 1 for s in streams[1:])  # the option-A pad writes into stages 2 and 3


def test_mobilenet_v2_expansion_groups():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    a = analyse(model, X)
    modules = dict(a.gm.named_modules())
    target = {n.name: n.target for n in a.gm.graph.nodes}
    expansion = 0
    for gid in a.decisions:
        g = a.groups[gid]
        dw = [n for n in g.nodes if n in target and isinstance(modules.get(target[n]), nn.Conv2d)
              and modules[target[n]].groups > 1]
        if dw:  # expansion 1×1 → depthwise (same group) → projection consumes it
            expansion += 1
            assert len(dw) == 1 and modules[target[dw[0]]].groups == g.width
    assert expansion == 17  # stem + 16 expansion layers feed the 17 depthwise convs
    assert not any(a.groups[g].merged for g in a.decisions)
    assert len(analyse(model, X, prune_residual=True).decisions) > len(a.decisions)


def test_vgg16_one_decision_per_conv():
    a = analyse(torchvision.models.vgg16(num_classes=10), X)
    assert len(a.decisions) == 13
    last = a.groups[a.decisions[-1]]
    flatten = [n for n in last.nodes if a.flatten_factor[n] > 1]
    assert flatten and a.flatten_factor[flatten[0]] == 49  # 512×7×7 into the classifier


def test_graph_nodes_and_types():
    a = analyse(cifar_resnet(56), X)
    g = build_graph(a)
    assert g.num_nodes == 225
    counts = {t: g.op_types.count(t) for t in OP_TYPES}
    assert counts["conv"] == 55 and counts["batchnorm"] == 55 and counts["add"] == 27 and counts["linear"] == 1
    assert counts["shortcut"] >= 2  # the option-A subsample + pad nodes
    assert g.static.min() >= 0 and g.static.max() <= 1


def test_unsupported_op_pins_its_group_with_a_reason():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.conv2 = nn.Conv2d(8, 8, 3)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            y = torch.roll(y, 1, dims=1)  # mixes channel positions: no safe index map
            return self.fc(torch.relu(self.conv2(y)).mean((2, 3)))

    a = analyse(Odd(), X)
    conv_group = a.group("conv")
    assert conv_group.frozen_by and "roll" in conv_group.frozen_by[0]
    assert a.decisions == [a.group_of["conv2"]]


def test_untraceable_model_names_the_problem():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return self.conv(x)
            return x

    with pytest.raises(TraceError, match="cannot trace Branchy"):
        trace(Branchy(), X)


@pytest.mark.parametrize("name, plain, with_residual", [
    ("mobilenet_v2", 18, 25), ("vgg16", 13, 13), ("resnet18", 8, 12), ("efficientnet_b0", 33, 40)])
def test_torchvision_models_decision_counts(name, plain, with_residual):
    """Any torchvision CNN: decisions found automatically, nothing pinned by an unknown op."""
    model = torchvision.models.get_model(name, num_classes=10)
    for residual, expected in ((False, plain), (True, with_residual)):
        a = analyse(model, X, prune_residual=residual)
        assert len(a.decisions) == expected
        assert describe_frozen(a) == []
