"""The episode end is an explicit pipeline whose stages can be replaced, and the reward can be any callable."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agmc_env import AGMCEnv
from agmc_env.testing import tiny_options, tiny_task


def test_stages_run_in_order_and_are_timed(env):
    info = env.run_ratios([0.6] * env.num_decisions)
    assert list(info["timing"]) == ["prune_s", "repair_s", "calibrate_s", "evaluate_s", "reward_s"]


def test_a_replaced_repair_stage_sees_the_pruned_model_and_the_calibration_images():
    task = tiny_task()
    seen = {}

    def repair(task, end):
        seen["calib"] = len(task.evaluator.calib)
        seen["width"] = dict(end.model.named_modules())["layer1.0.conv1"].out_channels
        with torch.no_grad():  # a "repair" that breaks the net: the score must see it
            for p in end.model.parameters():
                p.zero_()

    task.pipeline.replace("repair", repair)
    env = AGMCEnv(task=task)
    info = env.run_ratios([0.5] * env.num_decisions)
    assert seen["calib"] == 32 and seen["width"] < 16
    assert all(float(p.detach().abs().sum()) == 0 for p in env.pruned_model().parameters() if p.dim() > 1)
    assert info["timing"]["repair_s"] > 0
    with pytest.raises(ValueError, match="no stage 'fix'"):
        task.pipeline.replace("fix", repair)


def test_reward_accepts_a_callable_of_the_final_info():
    env = AGMCEnv(**tiny_options(reward=lambda info: info["accuracy"] - info["flops_ratio"]))
    info = env.run_ratios([0.5] * env.num_decisions)
    assert info["reward"] == pytest.approx(info["accuracy"] - info["flops_ratio"])


def test_unknown_reward_name_is_refused_before_loading_anything():
    with pytest.raises(ValueError, match="unknown reward 'accuracy'.*callable"):
        AGMCEnv(model="no-such-model", reward="accuracy")


def test_named_rewards_follow_amc(env):
    flops_env = AGMCEnv(task=tiny_task(reward="flops"))
    info = flops_env.run_ratios([0.5] * flops_env.num_decisions)
    assert info["reward"] == pytest.approx(-(1 - info["accuracy"]) * np.log(info["macs"]))
