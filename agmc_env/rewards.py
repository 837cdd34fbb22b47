"""Episode rewards (AMC's variants). ``acc`` is the default: top-1 on the reward split, in [0, 1]."""
from __future__ import annotations

import math
from collections.abc import Callable


def acc_reward(accuracy: float, macs: float, params: float) -> float:
    """R_err up to a constant: accuracy as a fraction (the budget is enforced by the wall)."""
    return accuracy


def flops_reward(accuracy: float, macs: float, params: float) -> float:
    """AMC's R_FLOPs = −error · ln(MACs): at equal error the smaller network wins."""
    return -(1.0 - accuracy) * math.log(macs)


def params_reward(accuracy: float, macs: float, params: float) -> float:
    """AMC's R_Param = −error · ln(#params)."""
    return -(1.0 - accuracy) * math.log(params)


REWARDS: dict[str, Callable[[float, float, float], float]] = {
    "acc": acc_reward,
    "flops": flops_reward,
    "params": params_reward,
}
