"""The int8 scoring copy (``agmc_env.quantized``): which convolutions go to int8, that it computes what the float32
copy computes up to 8-bit rounding, that a residual it overwrites in place is not read later, and that the scales
observed during BN recalibration are the ones a separate pass over the calibration images finds."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn

from agmc_env.evaluate import INT8, Evaluator
from agmc_env.inference import InferenceGraph
from agmc_env.models import cifar_resnet
from agmc_env.quantized import Int8Graph, QConv2d, int8_supported, observe_maxima
from agmc_env.testing import randomise_bn, tiny_env

pytestmark = pytest.mark.skipif(
    not (int8_supported() and InferenceGraph.for_device(torch.device("cpu"), None).pointwise),
    reason="needs oneDNN's int8 and fused float32 convolutions (an x86 build of torch)")


def _int8(model: nn.Module, x: torch.Tensor, calib: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, fx.GraphModule]:
    """float32 and int8 logits of ``model`` on ``x``, and the int8 module."""
    fused = InferenceGraph(True)(model.eval(), x[:1])
    graph = Int8Graph()
    with torch.inference_mode():
        module = graph(fused, observe_maxima(fused, graph.roots(fused), [calib]))
        return fused(x), module(x), module


def _close(expected: torch.Tensor, got: torch.Tensor) -> float:
    """Largest error relative to the largest logit."""
    return float((got - expected).abs().max() / expected.abs().max())


def test_every_conv_after_a_relu_runs_in_int8_and_agrees_with_float32():
    torch.manual_seed(0)
    model = randomise_bn(cifar_resnet(14))
    x = torch.randn(64, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    expected, got, module = _int8(model, x, x[:32])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(isinstance(m, QConv2d) for m in module.modules()) == len(convs) - 1  # all but the stem
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert _close(expected, got) < 0.05
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9


@pytest.mark.parametrize("make, int8_convs", [
    (lambda: cifar_resnet(14), 12),  # all but the stem (whose input is the signed image)
    # all but the stem, the 3 downsampling 1×1 convs and the 3 convs whose residual is theirs (BN output: signed)
    (lambda: torchvision.models.resnet18(num_classes=10), 13),
    (lambda: torchvision.models.mobilenet_v2(num_classes=10), 0),  # ReLU6 is not fused: float32 throughout
], ids=["cifar resnet", "torchvision resnet18", "mobilenet_v2"])
def test_which_convolutions_run_in_int8(make, int8_convs):
    torch.manual_seed(0)
    model = randomise_bn(make())
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    expected, got, module = _int8(model, x, x)
    assert sum(isinstance(m, QConv2d) for m in module.modules()) == int8_convs
    assert _close(expected, got) < 0.05


class _ReadAfterSum(nn.Module):
    """A residual block whose shortcut value is read again after the add (a dense-style reuse)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(F.relu(self.bn0(self.stem(x))))))  # uint8 in the int8 copy
        b = F.relu(self.bn2(self.conv2(a)) + a)
        return self.head(torch.cat([F.adaptive_avg_pool2d(b, 1), F.adaptive_avg_pool2d(a, 1)], 1).flatten(1))


def test_a_residual_read_after_the_fused_add_is_copied_first():
    torch.manual_seed(0)
    model = randomise_bn(_ReadAfterSum())
    x = torch.randn(16, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    expected, got, module = _int8(model, x, x)
    assert "clone" in module.code  # oneDNN's sum post-op writes into the residual
    assert _close(expected, got) < 0.05


def test_pruned_networks_reuse_one_int8_graph_with_their_own_weights_and_scales():
    env = tiny_env(amp="off")
    ev = env.task.evaluator
    fp32, graph = InferenceGraph(True), Int8Graph()
    x = ev.images
    for keep in (0.3, 0.7):
        env.unwrapped.run_ratios([keep] * env.num_decisions)
        fused = fp32(env.pruned_model().eval(), x[:1])
        with torch.inference_mode():
            reused = graph(fused, observe_maxima(fused, graph.roots(fused), [ev.calib]))(x)
            fresh_graph = Int8Graph()
            fresh = fresh_graph(fused, observe_maxima(fused, fresh_graph.roots(fused), [ev.calib]))(x)
        assert torch.equal(reused, fresh)


def test_scales_observed_in_recalibration_match_a_separate_pass():
    env = tiny_env(amp="off")
    env.unwrapped.run_ratios([0.5] * env.num_decisions)
    model = env.pruned_model()
    task = env.task
    ev = Evaluator(task.evaluator.images, task.evaluator.labels, task.evaluator.calib, task.device, amp="int8")
    ev.recalibrate(model)
    observed = dict(ev._observed[1])
    fused = ev._inference(None)(model.eval(), ev.images[:1])
    with torch.inference_mode():
        separate = observe_maxima(fused, set(observed), ev._calib_batches())
    assert set(observed) == ev._int8.roots(fused)
    # BN on batch statistics (biased variance) during recalibration vs the running ones (unbiased) afterwards:
    # 32 images of 8×8 here, so the n/(n-1) factor and its effect through the layers stay below 0.5 %
    assert all(observed[k] == pytest.approx(separate[k], rel=5e-3) for k in observed)


def test_env_scores_in_int8_close_to_float32():
    ratios = np.linspace(0.3, 0.9, tiny_env().num_decisions)
    infos = {amp: tiny_env(amp=amp).unwrapped.run_ratios(list(ratios)) for amp in ("off", "int8")}
    assert infos["int8"]["counts"] == infos["off"]["counts"]
    assert infos["int8"]["flops_ratio"] == infos["off"]["flops_ratio"]
    assert infos["int8"]["accuracy"] == pytest.approx(infos["off"]["accuracy"], abs=0.1)


def test_auto_takes_int8_only_within_the_tolerance(monkeypatch):
    from agmc_env import evaluate

    monkeypatch.setattr(evaluate, "bf16_supported", lambda device: False)
    empty, calib = torch.zeros(0, 3, 8, 8), torch.zeros(4, 3, 8, 8)
    # 0.852 against 0.854: exactly 0.2 pt (2 images in 1000), which floats put a hair above 0.002
    for fp32_acc, int8_acc, expected in ((0.9, 0.899, INT8), (0.854, 0.852, INT8), (0.9, 0.897, None)):
        ev = Evaluator(empty, torch.zeros(0, dtype=torch.long), calib, torch.device("cpu"), amp="auto")
        monkeypatch.setattr(ev, "accuracy", lambda model, dtype=None, a=int8_acc, f=fp32_acc: a if dtype is INT8 else f)
        ev.choose_precision(nn.Identity())
        assert ev.dtype is expected and ev.amp_check == pytest.approx({"fp32": fp32_acc, "int8": int8_acc})
        assert ev.precision == ("int8" if expected is INT8 else "fp32")


def test_int8_is_refused_off_the_cpu_or_without_calibration_images():
    empty = torch.zeros(0, 3, 8, 8)
    with pytest.raises(ValueError, match="amp='int8' needs a CPU"):
        Evaluator(empty, torch.zeros(0, dtype=torch.long), empty, torch.device("cuda"), amp="int8")
    with pytest.raises(ValueError, match="calib_size ≥ 1"):
        Evaluator(empty, torch.zeros(0, dtype=torch.long), empty, torch.device("cpu"), amp="int8")
