"""DDPG / TD3 / SAC from SB3 with AMC's search settings, swappable by one name.

Defaults (AMC / AGMC, mapped onto SB3; see ``make_agent``):

- γ = 1 (the only reward is the final accuracy, so Q(s_t, a_t) estimates it at every step), τ = 0.01,
  batch 64, lr 1e-3 (SB3 has one rate for actor and critic; AMC used 1e-4 / 1e-3), actor and critic
  heads 300-300;
- replay buffer = episodes × decisions transitions (the whole search; SB3's 1e6 default would reserve
  tens of GB for graph observations);
- warm-up episodes of uniform random actions (``learning_starts`` = warm-up × T), then one gradient step
  per collected transition at each episode end (``train_freq=(1, "episode")``, ``gradient_steps=-1``);
- DDPG/TD3 explore with AMC's truncated normal (σ 0.5 on [0, 1], ×0.95 per episode after warm-up);
  SAC uses its own entropy bonus;
- optional moving-average reward baseline (AMC): b ← b + 0.5·(mean terminal reward of the batch − b),
  subtracted from terminal rewards only (our reward is emitted once, at the last step).
"""
from __future__ import annotations

from typing import Any

from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from agents.extractors import EMBEDDINGS
from agents.noise import AMCNoise, TruncatedNormalExploration


class AMCDDPG(TruncatedNormalExploration, DDPG):
    """SB3 DDPG exploring with AMC's truncated normal."""


class AMCTD3(TruncatedNormalExploration, TD3):
    """SB3 TD3 exploring with AMC's truncated normal."""


ALGORITHMS: dict[str, type[OffPolicyAlgorithm]] = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": SAC}


class BaselineDictReplayBuffer(DictReplayBuffer):
    """DictReplayBuffer that subtracts AMC's moving-average reward baseline from terminal rewards."""

    def __init__(self, *args: Any, baseline_rate: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.baseline_rate = baseline_rate
        self.baseline: float | None = None

    def sample(self, batch_size: int, env=None):
        data = super().sample(batch_size, env)
        terminal = data.dones > 0.5
        if terminal.any():
            mean = float(data.rewards[terminal].mean())
            self.baseline = mean if self.baseline is None else self.baseline + self.baseline_rate * (mean - self.baseline)
        if self.baseline is not None:
            data.rewards.sub_(self.baseline * terminal.float())
        return data


def _choice(name: str, table: dict, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def make_agent(algo: str, env, *, embedding: str = "gnn", episodes: int = 300, warmup: int = 25, seed: int = 0,
               reward_baseline: bool = False, learning_rate: float = 1e-3, batch_size: int = 64,
               extractor_kwargs: dict | None = None, tensorboard_log: str | None = None,
               device: str = "auto", verbose: int = 0) -> OffPolicyAlgorithm:
    """An SB3 agent for ``env`` (a gymnasium AGMC env or a VecEnv over one) with the defaults above."""
    cls = _choice(algo, ALGORITHMS, "algorithm")
    extractor, kwargs = _choice(embedding, EMBEDDINGS, "embedding")
    decisions = int(env.observation_space["decision_index"].high.max())
    policy_kwargs = dict(features_extractor_class=extractor, features_extractor_kwargs={**kwargs, **(extractor_kwargs or {})},
                         net_arch=dict(pi=[300, 300], qf=[300, 300]))
    options: dict[str, Any] = dict(
        learning_rate=learning_rate, buffer_size=max(episodes * decisions, batch_size), learning_starts=warmup * decisions,
        batch_size=batch_size, tau=0.01, gamma=1.0, train_freq=(1, "episode"), gradient_steps=-1,
        policy_kwargs=policy_kwargs, seed=seed, device=device, verbose=verbose, tensorboard_log=tensorboard_log,
    )
    if reward_baseline:
        options["replay_buffer_class"] = BaselineDictReplayBuffer
    if algo in ("ddpg", "td3"):
        options["action_noise"] = AMCNoise(sigma=1.0, decay=0.95, warmup_episodes=warmup, seed=seed)
    return cls("MultiInputPolicy", env, **options)

