"""The scoring copy of a network (``agmc_env.inference``) computes what BN folding with torch's own ``fuse`` computes,
with and without oneDNN's fused conv + ReLU (+ add), re-armed per episode without rebuilding its graph."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import fx, nn
from torch.fx.experimental.optimization import fuse

from agmc_env.inference import InferenceGraph
from agmc_env.models import cifar_resnet
from agmc_env.testing import randomise_bn, tiny_env

POINTWISE = [False] + ([True] if InferenceGraph.for_device(torch.device("cpu"), None).pointwise else [])


class _VGGLinearBN(nn.Module):
    """Conv → BN → ReLU, a padded-mode conv, then flatten → Linear → BN1d → ReLU → Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _randomised(model: nn.Module) -> nn.Module:
    model = randomise_bn(model)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


MODELS = {
    "cifar resnet (F.relu, residual add + relu)": lambda: cifar_resnet(14),
    "torchvision resnet18 (nn.ReLU modules, +=)": lambda: torchvision.models.resnet18(num_classes=10),
    "mobilenet_v2 (ReLU6, depthwise, add without relu)": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "vgg with a linear + BN1d head and a reflect-padded conv": _VGGLinearBN,
}


@pytest.mark.parametrize("pointwise", POINTWISE)
@pytest.mark.parametrize("name", list(MODELS))
def test_scores_what_torch_fuse_scores(name, pointwise):
    torch.manual_seed(0)
    model = _randomised(MODELS[name]())
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        expected = fuse(copy.deepcopy(model)).to(memory_format=torch.channels_last)(x)
        got = InferenceGraph(pointwise)(model, x[:1])(x)
    # the same folded weights and convolutions; oneDNN's post-ops add and clamp the same float32 values
    assert torch.equal(got, expected), (got - expected).abs().max()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is left as it was


@pytest.mark.parametrize("pointwise", POINTWISE)
def test_pruned_networks_reuse_one_graph_with_their_own_weights(pointwise):
    env = tiny_env()
    graph = InferenceGraph(pointwise)
    x = env.task.evaluator.images[:8]
    built = []
    for keep in (0.3, 0.7):
        env.unwrapped.run_ratios([keep] * env.num_decisions)
        pruned = env.pruned_model().eval()
        with torch.inference_mode():
            expected = fuse(copy.deepcopy(pruned), no_trace=True).to(memory_format=torch.channels_last)(x)
            got = graph(pruned, x[:1])(x)
        built.append(graph._plan)
        assert torch.equal(got, expected)
    assert built[0] is built[1]  # same graph, channel counts differ: re-armed, not rebuilt
    fused = [n.target for n in built[0].module.graph.nodes if n.op == "call_function"]
    if pointwise:
        assert torch.ops.mkldnn._convolution_pointwise.binary in fused  # the residual add + ReLU went in


def test_a_different_graph_is_rebuilt():
    graph = InferenceGraph(False)
    x = torch.randn(2, 3, 16, 16)
    first = graph(randomise_bn(cifar_resnet(8)), x)
    plan = graph._plan
    second = graph(fx.symbolic_trace(randomise_bn(cifar_resnet(14))), x)
    assert graph._plan is not plan and first is not second


def test_env_rewards_match_the_unfused_scoring():
    """The env's reward with the inference graph equals top-1 of the recalibrated pruned net, run module by module."""
    env = tiny_env()
    info = env.unwrapped.run_actions(np.linspace(0.1, 0.9, env.num_decisions, dtype=np.float32))
    ev = env.task.evaluator
    with torch.inference_mode():
        logits = env.pruned_model().eval()(ev.images)
    assert info["accuracy"] == pytest.approx((logits.argmax(1) == ev.labels).double().mean().item(), abs=1e-12)
