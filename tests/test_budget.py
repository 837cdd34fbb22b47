"""The budget wall guarantees the MACs target whatever the actions; counts match independent counters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agmc_env.budget import WINDOW, BudgetWall, CostModel, count_module
from agmc_env.decisions import analyse
from agmc_env.models import cifar_resnet
from agmc_env.testing import tiny_env

X = torch.randn(1, 3, 32, 32)
R56 = CostModel(analyse(cifar_resnet(56), X))
R56_STREAM = CostModel(analyse(cifar_resnet(56), X, prune_residual=True))
ENV = tiny_env(flops_target=0.5, lbound=0.2, channel_round=2)

actions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
edge_cases = st.sampled_from([0.0, 1.0])


def action_lists(T: int):
    """Random actions, all-0, all-1 and alternating 0/1 (either phase)."""
    return st.one_of(st.lists(actions, min_size=T, max_size=T), edge_cases.map(lambda v: [v] * T),
                     edge_cases.map(lambda v: [(v + t) % 2 for t in range(T)]))


def _walk(wall: BudgetWall, ratios: list[float]) -> np.ndarray:
    counts = np.zeros(len(wall.cost.widths), dtype=np.int64)
    for t, r in enumerate(ratios):
        counts[t] = wall.clip(t, wall.desired(t, wall.lbound + r * (wall.rbound - wall.lbound)), counts)
    return counts


@settings(max_examples=300, deadline=None)
@given(data=st.data(), target=st.floats(min_value=0.25, max_value=1.0), stream=st.booleans(),
       round_to=st.sampled_from([1, 2, 4, 8]), budget=st.sampled_from(["window", "ceiling"]))
def test_wall_meets_target_for_any_actions(data, target, stream, round_to, budget):
    cost = R56_STREAM if stream else R56
    try:
        wall = BudgetWall(cost, flops_target=target, lbound=0.2, rbound=1.0, channel_round=round_to, budget=budget)
    except ValueError:  # unreachable targets are rejected up front (tested below)
        assume(False)
    counts = _walk(wall, data.draw(action_lists(len(cost.widths))))
    assert cost.macs(counts) <= target * cost.base_macs
    if budget == "window":  # the floor: within 1 % of the original MACs below the target
        assert cost.macs(counts) >= (target - WINDOW) * cost.base_macs
    assert np.all(counts >= np.ceil(0.2 * cost.widths - 1e-9)) and np.all(counts <= cost.widths)
    assert np.all((counts % round_to == 0) | (counts == cost.widths))


def test_wall_compares_integer_macs_exactly():
    """Found by hypothesis: a target a hair under 1 must not admit the unpruned net (a relative float
    tolerance once did)."""
    target = 1.0 - 2.0 ** -53
    wall = BudgetWall(R56, flops_target=target, lbound=0.2, rbound=1.0)
    counts = _walk(wall, [1.0] * len(R56.widths))
    assert R56.macs(counts) <= target * R56.base_macs < R56.base_macs


@settings(max_examples=30, deadline=None)
@given(action_lists(6))
def test_env_episode_meets_target_and_bounds(raw):
    ENV.reset(seed=0)
    for a in raw:
        *_, info = ENV.step(np.array([a], dtype=np.float32))
    assert 0.5 - WINDOW <= info["flops_ratio"] <= 0.5  # measured on the physically pruned module
    assert all(0.2 - 1e-9 <= r <= 1.0 for r in info["keep_ratios"])


def test_ceiling_wall_leaves_budget_unused_for_timid_actions():
    """AMC's upper-only wall (budget="ceiling") lets all-minimum actions keep far less than the target; the
    default window raises the last decisions until the episode ends inside [target − 1 %, target]."""
    ceiling = BudgetWall(R56, flops_target=0.5, lbound=0.2, rbound=1.0, budget="ceiling")
    window = BudgetWall(R56, flops_target=0.5, lbound=0.2, rbound=1.0)
    timid = [0.0] * len(R56.widths)
    assert R56.macs(_walk(ceiling, timid)) / R56.base_macs < 0.3
    counts = _walk(window, timid)
    assert 0.49 <= R56.macs(counts) / R56.base_macs <= 0.5
    assert counts[0] == window.min_counts[0] and counts[-1] > window.min_counts[-1]  # the extra goes last


def test_wall_is_tight_for_greedy_actions():
    wall = BudgetWall(R56, flops_target=0.5, lbound=0.2, rbound=1.0)
    counts = _walk(wall, [1.0] * len(R56.widths))
    assert 0.49 < R56.macs(counts) / R56.base_macs <= 0.5  # greedy early layers use up the budget


def test_unreachable_target_is_rejected_with_minimum():
    with pytest.raises(ValueError, match=r"minimum reachable MACs ratio 0\.2"):
        BudgetWall(R56, flops_target=0.1, lbound=0.2, rbound=1.0)


def test_resnet56_macs_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model = cifar_resnet(56).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(X)
    assert R56.base_macs == counter.get_total_flops() // 2 == 125_485_696  # FLOPs = 2·MACs (conv + matmul)
    assert R56.base_params == sum(p.numel() for p in model.parameters()) == 853_018


@pytest.mark.parametrize("build", [lambda: torchvision.models.mobilenet_v2(num_classes=10),
                                   lambda: torchvision.models.vgg16(num_classes=10)])
def test_counts_match_torch_pruning(build):
    import torch_pruning as tp

    model = build().eval()
    cost = CostModel(analyse(model, X))
    _, tp_params = tp.utils.count_ops_and_params(model, X)
    assert cost.params(cost.widths) == tp_params
    assert count_module(model, X) == (cost.base_macs, cost.base_params)
