"""Creating AGMC envs for the agents."""
from __future__ import annotations

from typing import Any

import gymnasium as gym

import agmc_env  # noqa: F401  (registers the ids)


def make_env(env_id: str, **kwargs: Any) -> gym.Env:
    """``gym.make`` without the ``TimeLimit``: AGMC envs end their episodes themselves after the last decision,
    and options such as ``prune_residual`` change the decision count a preset's limit was registered with."""
    return gym.make(env_id, max_episode_steps=-1, **kwargs)
