"""DDPG/TD3's gradient steps (``agents.algorithms.TD3Update``) are SB3's ``TD3.train``, bit for bit: the same
replay draws, noise, losses, optimizer steps and Polyak-averaged targets."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure

from agents.algorithms import make_agent
from agmc_env.testing import tiny_env


@pytest.mark.parametrize("algo, embedding", [("ddpg", "gnn"), ("td3", "gnn"), ("td3", "amc")])
def test_gradient_steps_are_sb3s(algo, embedding):
    env = tiny_env()
    T = env.unwrapped.num_decisions
    model = make_agent(algo, env, embedding=embedding, episodes=6, warmup=4, seed=0, batch_size=8)
    model.learn(total_timesteps=4 * T)  # warm-up only: random actions fill the replay buffer
    model.set_logger(configure(None, []))
    start = {k: v.clone() for k, v in model.policy.state_dict().items()}
    states = []
    for train in (TD3.train, type(model).train):
        agent = copy.deepcopy(model)  # same weights, optimizers and buffer
        torch.manual_seed(1)
        np.random.seed(1)  # SB3's replay sampling
        train(agent, gradient_steps=5, batch_size=8)
        states.append((agent.policy.state_dict(), agent._n_updates))
    (sb3, sb3_updates), (ours, our_updates) = states
    assert our_updates == sb3_updates == model._n_updates + 5
    assert any(not torch.equal(start[k], ours[k]) for k in start)  # the steps changed something
    assert all(torch.equal(sb3[k], ours[k]) for k in sb3)
