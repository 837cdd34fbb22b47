"""The speed-ups leave the RL update as it was: SB3 gradient steps with the extractor's fast path and with the
generic PyG path reach the same parameters (float noise), for each algorithm and graph embedding; and DDPG/TD3's
own train loop (``agents.algorithms.TD3Update``) is SB3's ``TD3.train`` bit for bit — the same replay draws,
noise, losses, optimizer steps and Polyak-averaged targets."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from stable_baselines3 import TD3
from stable_baselines3.common.logger import configure

from agents.algorithms import make_agent
from agmc_env.testing import tiny_env


def _warmed_up(algo: str, embedding: str):
    """An agent whose replay buffer holds 4 warm-up episodes, and its parameters before any gradient step."""
    env = tiny_env()
    T = env.unwrapped.num_decisions
    model = make_agent(algo, env, embedding=embedding, episodes=6, warmup=4, seed=0, batch_size=8,
                       self_imitation=0.0, min_updates_per_episode=0)  # SB3's update: no imitation term, no floor
    model.learn(total_timesteps=4 * T)  # warm-up only: random actions fill the replay buffer
    model.set_logger(configure(None, []))
    return model, {k: v.clone() for k, v in model.policy.state_dict().items()}


def _train(agent, train) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    np.random.seed(1)  # SB3's replay sampling
    train(agent, gradient_steps=5, batch_size=8)
    return agent.policy.state_dict()


@pytest.mark.parametrize("algo, embedding", [("ddpg", "gnn"), ("td3", "gnn"), ("sac", "gnn"), ("ddpg", "gnn-lstm")])
def test_gradient_steps_match_the_generic_path(algo, embedding):
    model, start = _warmed_up(algo, embedding)
    params = []
    for fast, agent in ((True, model), (False, copy.deepcopy(model))):  # same weights, optimizers and buffer
        for module in agent.policy.modules():
            if hasattr(module, "fast"):
                module.fast = fast
        params.append(_train(agent, type(agent).train))
    fast, generic = params
    assert any(not torch.equal(start[k], fast[k]) for k in start)  # the steps changed something
    for k in fast:
        assert torch.allclose(fast[k], generic[k], atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("algo, embedding", [("ddpg", "gnn"), ("td3", "gnn"), ("td3", "amc")])
def test_gradient_steps_are_sb3s(algo, embedding):
    model, start = _warmed_up(algo, embedding)
    sb3_agent, our_agent = copy.deepcopy(model), copy.deepcopy(model)
    sb3, ours = _train(sb3_agent, TD3.train), _train(our_agent, type(model).train)
    assert our_agent._n_updates == sb3_agent._n_updates == model._n_updates + 5
    assert any(not torch.equal(start[k], ours[k]) for k in start)  # the steps changed something
    assert all(torch.equal(sb3[k], ours[k]) for k in sb3)
