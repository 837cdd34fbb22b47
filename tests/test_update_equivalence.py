"""The extractor's fast path leaves the RL update as it was: SB3 gradient steps with it and with the generic
PyG path reach the same parameters (float noise), for each algorithm and graph embedding."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure

from agents.algorithms import make_agent
from agmc_env.testing import tiny_env


@pytest.mark.parametrize("algo, embedding", [("ddpg", "gnn"), ("td3", "gnn"), ("sac", "gnn"), ("ddpg", "gnn-lstm")])
def test_gradient_steps_match_the_generic_path(algo, embedding):
    env = tiny_env()
    T = env.unwrapped.num_decisions
    model = make_agent(algo, env, embedding=embedding, episodes=6, warmup=4, seed=0, batch_size=8)
    model.learn(total_timesteps=4 * T)  # warm-up only: random actions fill the replay buffer
    model.set_logger(configure(None, []))
    start = {k: v.clone() for k, v in model.policy.state_dict().items()}
    params = []
    for fast, agent in ((True, model), (False, copy.deepcopy(model))):  # same weights, optimizers and buffer
        for module in agent.policy.modules():
            if hasattr(module, "fast"):
                module.fast = fast
        torch.manual_seed(1)
        np.random.seed(1)  # SB3's replay sampling
        agent.train(gradient_steps=5, batch_size=8)
        params.append(agent.policy.state_dict())
    fast, generic = params
    assert any(not torch.equal(start[k], fast[k]) for k in start)  # the steps changed something
    for k in fast:
        assert torch.allclose(fast[k], generic[k], atol=1e-5, rtol=1e-4), k
