"""BN recalibration and scoring: what the reward is computed with."""
from __future__ import annotations

import copy

import torch

from agmc_env.evaluate import Evaluator
from agmc_env.testing import tiny_task


def _bn_stats(model):
    return [torch.cat([m.running_mean, m.running_var]) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_recalibration_weighs_equal_batches():
    """300 images at batch 250 are two batches of 150, not 250 + 50 (the average weighs each batch alike)."""
    task = tiny_task(calib_size=150)
    ev = task.evaluator
    calib = torch.cat([ev.calib, ev.calib.flip(0)])  # 300 images
    model = task.mode.build([int(w) for w in task.mode.widths])
    split = Evaluator(ev.images, ev.labels, calib, ev.device, batch_size=250, amp="off")
    split.recalibrate(a := copy.deepcopy(model))
    halves = Evaluator(ev.images, ev.labels, calib, ev.device, batch_size=150, amp="off")
    halves.recalibrate(b := copy.deepcopy(model))
    assert all(torch.allclose(x, y) for x, y in zip(_bn_stats(a), _bn_stats(b)))


def test_recalibration_on_a_single_batch_is_the_batch_statistics():
    task = tiny_task()
    ev = task.evaluator
    model = task.mode.build([int(w) for w in task.mode.widths])
    ev.recalibrate(model)
    first_bn = model.bn1  # the stem's BN sees the images through the unchanged stem conv
    with torch.no_grad():
        feats = model.conv1(ev.calib)
    assert torch.allclose(first_bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(first_bn.running_var, feats.var((0, 2, 3), unbiased=True), atol=1e-4)
