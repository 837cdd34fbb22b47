"""The RL update runs on one intra-op thread and gives the env its thread count back, even when it fails."""
from __future__ import annotations

import pytest
import torch

from agents.algorithms import make_agent
from agmc_env.testing import tiny_env


@pytest.mark.parametrize("algo", ["ddpg", "sac"])
def test_the_update_runs_on_one_thread_and_restores_the_count(algo, monkeypatch):
    env = tiny_env()
    model = make_agent(algo, env, embedding="amc", episodes=4, warmup=2, seed=0, batch_size=4)
    model.learn(total_timesteps=2 * env.unwrapped.num_decisions)
    seen = []
    sample = model.replay_buffer.sample
    monkeypatch.setattr(model.replay_buffer, "sample",
                        lambda *a, **k: seen.append(torch.get_num_threads()) or sample(*a, **k))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        model.train(gradient_steps=2, batch_size=4)
        assert seen == [1, 1] and torch.get_num_threads() == 2
        monkeypatch.setattr(model.replay_buffer, "sample", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            model.train(gradient_steps=1, batch_size=4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
