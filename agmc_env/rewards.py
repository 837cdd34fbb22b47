"""Episode rewards: functions of the episode's final ``info``. ``acc`` is the default: the accuracy on the
scored split (``info["accuracy"]``, top-1 unless ``reward_metric="top5"``), in [0, 1]. ``reward=`` also takes
any callable ``f(info) -> float``."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Reward = Callable[[dict[str, Any]], float]


def acc_reward(info: dict[str, Any]) -> float:
    """R_err up to a constant: accuracy as a fraction (the budget is enforced by the wall)."""
    return info["accuracy"]


def flops_reward(info: dict[str, Any]) -> float:
    """AMC's R_FLOPs = −error · ln(MACs): at equal error the smaller network wins."""
    return -(1.0 - info["accuracy"]) * math.log(info["macs"])


def params_reward(info: dict[str, Any]) -> float:
    """AMC's R_Param = −error · ln(#params) (non-zero parameters in fine mode)."""
    return -(1.0 - info["accuracy"]) * math.log(info.get("nonzero_params", info["params"]))


REWARDS: dict[str, Reward] = {"acc": acc_reward, "flops": flops_reward, "params": params_reward}


def make_reward(reward: str | Reward) -> Reward:
    """A reward name (``REWARDS``) or a callable of the final ``info``."""
    if callable(reward):
        return reward
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(REWARDS)} or pass a callable f(info) -> float")
    return REWARDS[reward]
