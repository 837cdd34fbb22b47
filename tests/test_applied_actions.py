"""Applied actions: the env reports what rounding and the budget wall made of each action, replaying those
plays the same episode, and an agent with ``applied_actions`` stores them instead of its own."""
from __future__ import annotations

import numpy as np
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents.algorithms import make_agent
from agmc_env.testing import tiny_env


def test_applied_actions_replay_the_episode_the_wall_made():
    env = tiny_env()
    T = env.num_decisions
    for actions in (np.ones(T), np.zeros(T), np.random.default_rng(0).random(T)):
        env.reset()
        applied = []
        for a in actions:
            _, _, _, _, info = env.step(np.array([a], np.float32))
            applied.append(info["applied_action"])
        assert all(0.0 <= a <= 1.0 for a in applied)
        ratios = info["keep_ratios"]
        assert env.run_actions(applied)["keep_ratios"] == ratios
    assert applied != list(actions)  # random actions: the wall rewrote some (else the test shows nothing)


def _stored_and_replayed(applied_actions: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two warm-up episodes' stored actions, and the applied actions of those actions replayed (SB3's [-1, 1])."""
    model = make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc", warmup=3, applied_actions=applied_actions,
                       seed=1)
    model.set_logger(configure(None, [""]))
    env = tiny_env()
    T = env.num_decisions
    model.learn(total_timesteps=2 * T)
    stored = model.replay_buffer.actions[:2 * T, 0, 0]
    replayed = []
    for episode in stored.reshape(2, T):
        env.run_actions(model.policy.unscale_action(episode.reshape(-1, 1)).reshape(-1))
        replayed += env.applied_actions()
    return stored, model.policy.scale_action(np.asarray(replayed, np.float32))


def test_the_agent_stores_the_applied_actions_only_when_asked():
    stored, replayed = _stored_and_replayed(False)
    assert not np.allclose(stored, replayed, atol=1e-6)  # its own actions: the wall rewrote some of them
    stored, replayed = _stored_and_replayed(True)
    np.testing.assert_allclose(stored, replayed, atol=1e-6)  # applied actions apply as they are
