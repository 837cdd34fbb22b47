"""AMC's exploration: a truncated normal around the actor's output, σ decaying per episode after warm-up
(or, with ``adaptive``, set by the search's own success rate).

SB3's ``ActionNoise`` is additive and never sees the actor output, and clipping an additive sample piles
probability mass on the bounds. :class:`AMCNoise` therefore carries the schedule (σ, decay, episode
count, its own RNG) and :class:`TruncatedNormalExploration` — mixed into DDPG/TD3 — samples the
truncated normal centred on the actor output inside SB3's [-1, 1] action scaling.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from stable_baselines3.common.noise import ActionNoise


SCALED_FLOOR = 0.1  # σ's floor with exploration="scaled", in SB3's units (0.05 on [0, 1])


def check_sigma_floor(sigma_floor: float) -> None:
    """``sigma_floor`` is σ's floor on [0, 1] (AMC's σ0 is 0.5 there): refuse one outside (0, 0.5]."""
    if not 0.0 < sigma_floor <= 0.5:
        raise ValueError(f"sigma_floor={sigma_floor!r} must be in (0, 0.5] (σ's floor on [0, 1], AMC's σ0 is 0.5)")


def scaled_decay(episodes: int, sigma: float = 1.0, floor: float = SCALED_FLOOR, at: float = 2 / 3) -> float:
    """The per-episode decay that takes σ from ``sigma`` to ``floor`` at ``at`` of ``episodes`` (after warm-up),
    instead of AMC's fixed 0.95 (σ ≈ 0 after ~100 episodes whatever the search length)."""
    return (floor / sigma) ** (1.0 / max(1.0, at * episodes))


def success_rule(finals: Sequence[float], warmup: int, dims: int) -> float:
    """log(σ / σ0) after the episodes whose final rewards are ``finals``, by the 1/5th success rule of the
    (1+1)-evolution strategy (Rechenberg; in the form of Kern et al. 2004): after ``warmup`` episodes, one that beats
    every earlier episode multiplies σ by exp(1/d), any other by exp(−1/(4d)), d = 1 + dims/2 (``dims``: actions per
    episode). σ then holds where one episode in five improves on the best, shrinks as the search closes in on an
    optimum and grows back while it keeps improving; it never exceeds σ0."""
    d = 1.0 + dims / 2
    log, best = 0.0, max(finals[:warmup], default=-math.inf)
    for final in finals[warmup:]:
        log = min(0.0, log + (1.0 / d if final > best else -0.25 / d))
        best = max(best, final)
    return log


class AMCNoise(ActionNoise):
    """σ = ``sigma`` at the end of warm-up, × ``decay`` per later episode, never below ``floor``.

    ``sigma`` is in SB3's scaled action units ([-1, 1]): AMC's σ = 0.5 on [0, 1] is 1.0 here. The episode
    count comes from the algorithm (``_episode_num``, saved with it) rather than from counting
    :meth:`reset` calls, which SB3 also makes at every ``learn()`` start and would skew a resumed run.

    ``adaptive=True`` replaces the decay by :func:`success_rule` over ``finals`` (the final rewards of the episodes
    so far, also set by the algorithm from its replay buffer, which is saved with it): a function of the search's
    history, so a resumed run draws the same σ.
    """

    floor = 0.0  # class defaults: agents saved before these existed unpickle without them
    adaptive, dims = False, 1

    def __init__(self, sigma: float = 1.0, decay: float = 0.95, warmup_episodes: int = 0, seed: int | None = None,
                 floor: float = 0.0, adaptive: bool = False, dims: int = 1):
        super().__init__()
        self.sigma0, self.decay, self.warmup_episodes, self.floor = sigma, decay, warmup_episodes, floor
        self.adaptive, self.dims = adaptive, dims
        self.episodes = 0  # set by the algorithm before each sample
        self.finals: Sequence[float] = ()  # likewise, with adaptive
        self.rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        if self.adaptive:
            return max(self.floor, self.sigma0 * math.exp(success_rule(self.finals, self.warmup_episodes, self.dims)))
        return max(self.floor, self.sigma0 * self.decay ** max(0, self.episodes - self.warmup_episodes))

    def sample_around(self, mean: np.ndarray) -> np.ndarray:
        """A truncated-normal sample on [-1, 1] centred on ``mean``."""
        mean = np.clip(np.asarray(mean, dtype=np.float64), -1.0, 1.0)
        out = np.empty_like(mean)
        todo = np.ones(mean.shape, dtype=bool)
        while todo.any():  # rejection sampling: acceptance ≥ 1/3 for σ ≤ 1 and a mean inside the bounds
            draw = self.rng.normal(mean[todo], self.sigma)
            ok = np.abs(draw) <= 1.0
            idx = np.flatnonzero(todo)[ok]
            out.flat[idx] = draw[ok]
            todo.flat[idx] = False
        return out.astype(np.float32)

    def __call__(self) -> np.ndarray:  # plain additive use (not AMC's): zero-mean normal
        return self.rng.normal(0.0, self.sigma, size=1).astype(np.float32)

    def reset(self) -> None:
        """Nothing to reset: the schedule follows the algorithm's episode count."""

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        schedule = "adaptive" if self.adaptive else f"decay={self.decay}"
        return f"AMCNoise(sigma={self.sigma:.4f}, {schedule}, episodes={self.episodes})"


class TruncatedNormalExploration:
    """Mixin for SB3 off-policy algorithms: replaces additive noise by AMC's truncated normal."""

    warmup_noise: bool = True  # agents saved before the option added the noise in the warm-up

    def _sample_action(self, learning_starts, action_noise=None, n_envs=1):
        if self.num_timesteps < learning_starts:
            # SB3 draws a uniform action and adds ``action_noise()``, here N(0, σ₀ = 1 in SB3's [-1, 1] units), and
            # clips: ~39 % of warm-up actions land on a bound. ``warmup_noise=False``: uniform only, as AMC's code.
            return super()._sample_action(learning_starts, action_noise if self.warmup_noise else None, n_envs)
        if not isinstance(action_noise, AMCNoise):
            return super()._sample_action(learning_starts, action_noise, n_envs)
        mean, _ = self.predict(self._last_obs, deterministic=True)
        action_noise.episodes = self._episode_num
        action_noise.finals = getattr(self.replay_buffer, "finals", ())
        scaled = action_noise.sample_around(self.policy.scale_action(mean))
        return self.policy.unscale_action(scaled), scaled
