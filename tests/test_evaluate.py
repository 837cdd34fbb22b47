"""BN recalibration and scoring: what the reward is computed with."""
from __future__ import annotations

import copy

import torch

from agmc_env.evaluate import CALIB_BATCH, Evaluator
from agmc_env.testing import tiny_task


def _bn_stats(model):
    return [torch.cat([m.running_mean, m.running_var]) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_recalibration_weighs_equal_batches():
    """300 images are two batches of 150 (CALIB_BATCH is 250 on CPU), not 250 + 50: the average weighs each
    batch alike, so a small remainder batch would count as much as a full one."""
    task = tiny_task(calib_size=150)
    ev = task.evaluator
    calib = torch.cat([ev.calib, ev.calib.flip(0)])  # 300 images
    model = task.mode.build([int(w) for w in task.mode.widths])
    Evaluator(ev.images, ev.labels, calib, ev.device, amp="off").recalibrate(a := copy.deepcopy(model))
    b = copy.deepcopy(model)
    for m in b.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
            m.train()
    with torch.no_grad():
        b(calib[:150])
        b(calib[150:])
    assert all(torch.allclose(x, y) for x, y in zip(_bn_stats(a), _bn_stats(b)))
    assert CALIB_BATCH["cpu"] == 250


def test_scoring_does_not_depend_on_the_batch():
    task = tiny_task()
    ev = task.evaluator
    model = task.mode.build([int(w) for w in task.mode.widths])
    scores = [Evaluator(ev.images, ev.labels, ev.calib, ev.device, batch_size=b, amp="off").scores(model)
              for b in (7, 64, 1000)]
    assert scores[0] == scores[1] == scores[2]


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


def test_recalibration_leaves_each_bn_momentum_as_it_found_it():
    """A saved pruned network is fine-tuned later: a momentum left at None would average every training batch."""
    task = tiny_task()
    model = task.mode.build([int(w) for w in task.mode.widths])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bns[0].momentum = 0.3
    before = [bn.momentum for bn in bns]
    task.evaluator.recalibrate(model)
    assert [bn.momentum for bn in bns] == before and 0.1 in before
