"""The real thing: akamaster ResNet-56 on the shared (JPEG-derived) CIFAR-10 copy."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import agmc_env  # noqa: F401
from tests.conftest import integration

pytestmark = [integration, pytest.mark.integration]


def test_unpruned_resnet56_test_accuracy():
    """83.20 % on this copy's test split (93.39 % on real CIFAR-10), float32, no recalibration."""
    env = gym.make("AGMC-ResNet56-v0", split="test", flops_target=1.0, amp="off", bn_recalibration=False,
                   device="cpu").unwrapped
    info = env.run_ratios([1.0] * env.num_decisions)
    assert info["flops_ratio"] == 1.0
    assert info["accuracy"] == pytest.approx(0.8320, abs=0.0005)


def test_uniform_half_episode_meets_budget():
    env = gym.make("AGMC-ResNet56-v0", val_size=500, calib_size=250).unwrapped
    assert env.num_decisions == 27
    info = env.run_ratios([0.5] * 27)
    assert info["flops_ratio"] <= 0.5
    assert 0.1 < info["accuracy"] <= 1.0  # better than chance after BN recalibration
    assert len(info["keep_ratios"]) == 27


def test_checkers_on_resnet56():
    env = gym.make("AGMC-ResNet56-v0", val_size=50, calib_size=50).unwrapped
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env, warn=False)


def test_resnet56_residual_option_prunes_streams():
    env = gym.make("AGMC-ResNet56-v0", prune_residual=True, val_size=100, calib_size=100, flops_target=0.3,
                   max_episode_steps=30)
    assert env.unwrapped.num_decisions == 30
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    for t in range(30):
        _, _, terminated, truncated, info = env.step(rng.uniform(0, 1, 1).astype(np.float32))
        assert terminated == (t == 29)
        assert not truncated or t == 29  # gymnasium's TimeLimit also flags the step that reaches the limit
    assert info["flops_ratio"] <= 0.3
