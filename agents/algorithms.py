"""DDPG / TD3 / SAC from SB3 with AMC's search settings, swappable by one name.

Defaults (AMC's released code, mapped onto SB3; see ``make_agent``). Chosen on the reward split: on ResNet-20
they beat AGMC's settings (terminal reward, σ × 0.95, one learning rate) by 3.7 pt over 3 seeds, on ResNet-56
by 3.6 pt (1 seed) — benchmarks/results/search_settings_*.md:

- γ = 1 (``gamma``), τ = 0.01, batch 64, actor and critic heads 300-300; learning rates 1e-3 (critic) and ``actor_lr``
  1e-4 (actor), as AMC;
- replay buffer = episodes × decisions transitions (the whole search; SB3's 1e6 default would reserve
  tens of GB for graph observations);
- warm-up episodes of random actions (``learning_starts`` = warm-up × T: SB3's uniform draw, to which DDPG/TD3 add one
  draw of the initial exploration noise, clipped to the bounds: see ``TruncatedNormalExploration``), then at each
  episode end (``train_freq=(1, "episode")``, ``gradient_steps=-1``) ``updates_per_step`` gradient steps (default 1,
  AMC's) per collected transition, and at least ``min_updates_per_episode`` in all (DDPG's default
  ``MIN_UPDATES_PER_EPISODE`` = 27, ResNet-56's one per transition: a short episode gets as many updates per evaluated
  network as ResNet-56's; ResNet-20, 9 decisions, gets 3 per transition). On ResNet-20 it raised GNN+DDPG's best
  reward-split accuracy from 78.73 ± 0.25 to 79.70 ± 0.36 %, every seed higher (search_settings_r20_round11.md); on
  ResNet-56 three steps per transition (81 per episode) were not better (search_settings_r56_round5.md), and the floor
  leaves it as it was. TD3 and SAC keep 0 (AMC's one per transition) until measured;
- DDPG/TD3 explore with AMC's truncated normal, σ 0.5 on [0, 1] after warm-up; ``exploration="scaled"``
  decays it so it reaches its floor (``sigma_floor``, 0.05) at 2/3 of the episodes, ``"amc"`` by ×0.95 per
  episode (≈ 0 after ~100 episodes whatever the search length), ``"adaptive"`` by the 1/5th success rule of
  evolution strategies (σ shrinks while episodes fail to beat the best so far, grows while they do; never below
  ``sigma_floor``; :func:`agents.noise.success_rule`); SAC uses its own entropy bonus;
- credit assignment: ``credit="episode"`` (AMC's amc_search.py): at the end of an episode every one of its
  transitions is given the final reward; ``"terminal"`` keeps the env's reward (0 until the final accuracy);
- AMC's moving-average reward baseline (``reward_baseline``): b ← b + 0.5·(mean rewarded value of the batch − b),
  subtracted from the rewarded transitions (all of them with ``credit="episode"``, else the terminal ones);
- ``reward_scale`` (off by default): rewards (after the baseline) are divided by the standard deviation of the
  warm-up episodes' final rewards, fixed when learning starts. Accuracies of different policies differ by a few
  hundredths, a small target for a critic whose step size (Adam) does not shrink with the target;
- ``self_imitation`` λ (DDPG/TD3; DDPG's default ``SELF_IMITATION`` = 10, 0 turns it off): the actor loss also pulls
  the actor's actions on the best episodes so far towards those episodes' actions, λ·‖π(s) − a‖² (the
  demonstrations are the search's own best, as in Oh et al. 2018, "Self-Imitation Learning"). On ResNet-20 it
  raised GNN+DDPG's best reward-split accuracy from 75.6 ± 0.6 to 77.6 ± 0.2 % (Q-filtered; λ = 1: 77.0 ± 1.3;
  benchmarks/results/search_settings_r20_round3.md). TD3's default stays 0 until it is measured there; SAC keeps
  SB3's update (λ = 0). ``imitation_filter`` (off by default, ``IMITATION_FILTER``) keeps the pull only where the
  critic rates the episode's action above the actor's (the Q-filter of Nair et al. 2018, "Overcoming Exploration
  in RL with Demonstrations"). The critic is smoother than the best episode: it rated the actor's own actions
  higher at most steps, so the filtered pull left the actor ~2.5 pt below the best, its keep ratios nearly
  constant per ResNet stage, and ResNet-56's search froze after episode ~150. Unfiltered, the best reward-split
  accuracy rose from 90.17 ± 0.23 to 90.77 ± 0.38 % on ResNet-56 and from 77.60 ± 0.20 to 77.93 ± 0.57 on
  ResNet-20 (search_settings_r56_round3.md, search_settings_r20_round8.md). ``imitation_elites`` K (default
  ``IMITATION_ELITES`` = 5 with self-imitation): the pull is towards the best K episodes so far, not only the best
  (an average over elites, as CMA-ES recombines its best samples: less tied to one episode's reward-split noise).
  It raised the unfiltered pull's best from 90.77 ± 0.38 to 91.40 ± 0.40 % on ResNet-56 and from 77.93 ± 0.57 to
  78.73 ± 0.25 on ResNet-20 (search_settings_r56_round4.md, search_settings_r20_round9.md);
- ``applied_actions`` (off by default): the replay buffer stores the action the env applied (after channel rounding
  and the budget wall) instead of the agent's own (:class:`AppliedActions`).
"""
from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import numpy as np
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.utils import get_device, polyak_update
from stable_baselines3.sac.policies import MultiInputPolicy as SACMultiInputPolicy
from stable_baselines3.td3.policies import MultiInputPolicy as TD3MultiInputPolicy
from torch import nn
from torch.nn import functional as F

from agents.extractors import EMBEDDINGS, GraphEncoderExtractor, adopt, gathered_together, handover
from agents.noise import SCALED_FLOOR, AMCNoise, TruncatedNormalExploration, check_sigma_floor, scaled_decay
from agents.prefetch import helper_thread, prefetch_default

CREDITS = ("terminal", "episode")
SELF_IMITATION = 10.0  # DDPG's default λ, chosen on ResNet-20's reward split
IMITATION_FILTER = False  # self-imitation's default: every step of the best episodes (reward split, ResNet-20 and -56)
IMITATION_ELITES = 5  # self-imitation's default: the best 5 episodes so far (reward split, ResNet-20 and -56)
MIN_UPDATES_PER_EPISODE = 27  # DDPG's default floor on gradient steps per episode (reward split, ResNet-20)
EXPLORATIONS = ("amc", "scaled", "adaptive")


class Demonstration(NamedTuple):
    """Self-imitation's demonstrations: the best episodes' observations and the actions taken in them."""

    observations: dict[str, torch.Tensor]
    actions: torch.Tensor


class ActorLearningRate:
    """Mixin for SB3 actor-critic algorithms: ``actor_lr`` (saved with the agent) overrides the actor's
    learning rate after SB3 sets every optimizer from its one schedule."""

    actor_lr: float | None = None

    def _update_learning_rate(self, optimizers) -> None:
        super()._update_learning_rate(optimizers)
        if self.actor_lr is not None:
            for group in self.actor.optimizer.param_groups:
                group["lr"] = self.actor_lr


class UpdatesPerStep:
    """Mixin for SB3 off-policy algorithms: ``updates_per_step`` (saved with the agent) gradient steps per
    collected transition, and at least ``min_updates_per_episode`` (saved too) per call. SB3 calls ``train`` once per
    episode here (``train_freq=(1, "episode")``, one env), so the floor is per episode: a short episode (ResNet-20:
    9 decisions) otherwise gets a third of ResNet-56's updates per evaluated network."""

    updates_per_step: int = 1
    min_updates_per_episode: int = 0  # agents saved before the option had no floor

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        super().train(max(gradient_steps * self.updates_per_step, self.min_updates_per_episode), batch_size)


class AppliedActions:
    """Mixin for SB3 off-policy algorithms: with ``applied_actions`` (saved with the agent) each transition is stored
    with the action the env applied (``info["applied_action"]``: the agent's action after channel rounding and the
    budget wall) instead of the agent's own. The wall rewrites many actions, most of all an episode's last ones
    (while learning, ~11 % of ResNet-20's decisions move by more than 0.05), so stored as they came, a range of
    actions leads to the same next state and reward. Off by default: on ResNet-20 it made the search worse (best
    reward-split 76.6 ± 0.4 vs 77.6 ± 0.2 %, benchmarks/results/search_settings_r20_round5.md)."""

    applied_actions: bool = False

    def _store_transition(self, replay_buffer, buffer_action, new_obs, reward, dones, infos) -> None:
        if self.applied_actions:
            applied = np.array([[info["applied_action"]] for info in infos], dtype=np.float32)
            buffer_action = self.policy.scale_action(applied)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)


class TD3Update:
    """Mixin for SB3's TD3 and DDPG (a TD3 with one critic, no target noise and no policy delay): ``TD3.train``
    step for step, the same draws and arithmetic, but the target networks' Polyak averaging is two foreach ops
    over all their tensors instead of SB3's two ops per tensor (0.42 → 0.06 ms per gradient step on a CPU core
    for the graph agents' 20 tensors; tests/test_update_equivalence.py checks the parameters bit for bit). With
    ``prefetch_batches`` the parts of a step that wait for no other part run in a helper thread (the next draw,
    the target pass, the critic's view for the actor loss; ``agents.prefetch``), the same calls in the same order.
    ``self_imitation`` (saved with the agent) adds the imitation term to the actor loss, at every step of the best
    episodes or, with ``imitation_filter``, only where the critic rates their actions higher (the Q-filter)."""

    self_imitation: float = 0.0
    imitation_filter: bool = True  # class default: agents saved before the option existed filtered
    prefetch_batches: bool | None = None  # a helper thread; None: see _helper (a run-time choice, not learning)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        online = [*self.critic.parameters(), *self.actor.parameters()]
        target = [*self.critic_target.parameters(), *self.actor_target.parameters()]
        actor_losses, critic_losses = [], []
        self.replay_buffer.imitate = bool(self.self_imitation)  # gather the best episodes with each batch
        # run(task): in a helper thread (the next batch, the target pass, the critic's view), or at once
        with helper_thread(self._helper()) as run:
            batch = run(partial(self._draw, batch_size))
            for step in range(gradient_steps):
                data, elite, unrolls = batch.result()
                adopt(unrolls)
                self._n_updates += 1
                with torch.no_grad():  # drawn here, in the same order as without a helper
                    noise = data.actions.clone().normal_(0, self.target_policy_noise)
                    noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                target_q = run(partial(_adopting, unrolls, self._target_q, data, noise))
                q_values = self.critic(data.observations, data.actions)  # while the helper computes the target
                critic_loss = sum(F.mse_loss(q, target_q.result()) for q in q_values)
                critic_losses.append(critic_loss.item())
                self.critic.optimizer.zero_grad()
                critic_loss.backward()
                self.critic.optimizer.step()
                update_actor = self._n_updates % self.policy_delay == 0
                view = run(partial(_adopting, unrolls, self._critic_view, data.observations, elite)) \
                    if update_actor else None
                if step + 1 < gradient_steps:  # after the view: the helper runs its tasks in order
                    batch = run(partial(self._draw, batch_size))
                if update_actor:
                    actor_loss = self._actor_loss(data.observations, elite, view.result)
                    actor_losses.append(actor_loss.item())
                    self.actor.optimizer.zero_grad()
                    actor_loss.backward()
                    self.actor.optimizer.step()
                    with torch.no_grad():  # SB3's polyak_update: target ← target·(1 − τ), then + τ·online
                        torch._foreach_mul_(target, 1 - self.tau)
                        torch._foreach_add_(target, online, alpha=self.tau)
                    polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                    polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if actor_losses:
            self.logger.record("train/actor_loss", np.mean(actor_losses))
        self.logger.record("train/critic_loss", np.mean(critic_losses))

    def _helper(self) -> bool:
        """Whether the update uses a helper thread (``prefetch_batches``; None: where
        :func:`agents.prefetch.prefetch_default` says so, for the graph encoder without the LSTM decoder: with it,
        the update gains more from two intra-op threads (ResNet-56, 2 threads: 1.87 s per update without a helper,
        2.40 s with one; gnn: 0.98 s → 0.84 s)."""
        if self.prefetch_batches is not None:
            return self.prefetch_batches
        extractor = self.actor.features_extractor
        return isinstance(extractor, GraphEncoderExtractor) and extractor.decoder == "none" \
            and prefetch_default(self.device)

    def _draw(self, batch_size: int) -> tuple[Any, Demonstration | None, Any]:
        """A replay batch, the best episodes gathered with it (or None), and the graph unrolls its forward passes
        will look up (targets, critic, actor with the best episodes), prepared ahead: they read no weight. Handed
        over for :func:`adopt`; the calling thread's own unrolls stay those of the step it may be running."""
        running = handover()
        data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
        elite = self.replay_buffer.elite() if self.self_imitation else None
        extractor = self.actor.features_extractor
        if isinstance(extractor, GraphEncoderExtractor):
            extractor.unroll(data.next_observations, backward=False)
            extractor.unroll(data.observations)
            if elite is not None:
                extractor.unroll(_joined(elite.observations, data.observations))
        prepared = handover()
        adopt(running)
        return data, elite, prepared

    def _target_q(self, data: Any, noise: torch.Tensor) -> torch.Tensor:
        """The critic's target: reward + discounted smaller target-critic Q of the smoothed next action."""
        discounts = data.discounts if data.discounts is not None else self.gamma
        with torch.no_grad():
            next_actions = (self.actor_target(data.next_observations) + noise).clamp(-1, 1)
            next_q = torch.cat(self.critic_target(data.next_observations, next_actions), dim=1)
            return data.rewards + (1 - data.dones) * discounts * next_q.min(dim=1, keepdim=True).values

    def _critic_view(self, obs: dict[str, torch.Tensor],
                     elite: Demonstration | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the actor loss needs of the critic as just stepped, without gradient: its features of the states
        (the best episodes' and the batch's, as one batch, when imitating) and, for the Q-filter, its Q of the best
        episodes' own actions (else None)."""
        with torch.no_grad():
            if elite is None or not self.self_imitation:
                return self.critic.extract_features(obs, self.critic.features_extractor), None
            features = self.critic.extract_features(_joined(elite.observations, obs), self.critic.features_extractor)
            theirs = self.critic.q_networks[0](torch.cat([features[:len(elite.actions)], elite.actions], dim=1)) \
                if self.imitation_filter else None
            return features, theirs

    def _actor_loss(self, obs: dict[str, torch.Tensor], elite: Demonstration | None,
                    view: Callable[[], tuple[torch.Tensor, torch.Tensor | None]] | None = None) -> torch.Tensor:
        """−Q(s, π(s)) over the batch, plus λ × the behaviour cloning towards ``elite``, the best episodes so far
        (``replay_buffer.elite()``; None before there is one or without self-imitation; with ``imitation_filter``
        Q-filtered). The batch and the best episodes' states go through the actor, and through the critic's
        features, as one batch: one encoder pass each instead of two, the same values. ``view()``: the
        :meth:`_critic_view` of these states, taken after the actor's forward pass (a helper may compute it
        meanwhile); by default computed then."""
        view = view or partial(self._critic_view, obs, elite)
        q1 = self.critic.q_networks[0]
        if elite is None or not self.self_imitation:
            actions = self.actor(obs)
            return -_input_grad_only(q1, torch.cat([view()[0], actions], dim=1)).mean()
        B = len(elite.actions)
        actions = self.actor(_joined(elite.observations, obs))
        mine, own = actions[:B], actions[B:]
        features, theirs = view()
        with torch.no_grad():
            better = theirs > q1(torch.cat([features[:B], mine], dim=1)) if self.imitation_filter else 1.0
        q = _input_grad_only(q1, torch.cat([features[B:], own], dim=1))
        return -q.mean() + self.self_imitation * (better * (mine - elite.actions) ** 2).sum(dim=1).mean()


def _adopting(unrolls: Any, task: Callable[..., Any], *args: Any) -> Any:
    """``task(*args)`` with a batch's prepared ``unrolls`` adopted first: its forward passes find them in whichever
    thread runs it."""
    adopt(unrolls)
    return task(*args)


def _joined(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Two observation batches as one; a key both hand over as one row expanded (the shared graph) stays so, and
    one whose two batches are consecutive rows of one tensor (as the replay buffer gathers the best episode
    and the batch) is the view over both, so the graph extractor reuses that tensor's unroll."""
    joined = {}
    for k, a in first.items():
        b = second[k]
        if a.stride(0) == 0 and b.stride(0) == 0 and torch.equal(a[0], b[0]):
            joined[k] = a[:1].expand(len(a) + len(b), *a.shape[1:])
        elif a._base is not None and a._base is b._base and a.stride() == b.stride() \
                and a.data_ptr() + len(a) * a.stride(0) * a.element_size() == b.data_ptr():
            first_row = (a.data_ptr() - a._base.data_ptr()) // (a.stride(0) * a.element_size())
            joined[k] = a._base[first_row:first_row + len(a) + len(b)]
        else:
            joined[k] = torch.cat([a, b])
    return joined


class AMCDDPG(ActorLearningRate, AppliedActions, UpdatesPerStep, TD3Update,
              TruncatedNormalExploration, DDPG):
    """SB3 DDPG exploring with AMC's truncated normal."""


class AMCTD3(ActorLearningRate, AppliedActions, UpdatesPerStep, TD3Update,
             TruncatedNormalExploration, TD3):
    """SB3 TD3 exploring with AMC's truncated normal."""


def _input_grad_only(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net(x)`` with autograd reaching ``x`` only: the linear layers' parameters enter detached (SB3's Q-networks
    are linear layers and activations; ``torch.func.functional_call`` costs ~0.3 ms more per call)."""
    for layer in net:
        x = F.linear(x, layer.weight.detach(), None if layer.bias is None else layer.bias.detach()) \
            if isinstance(layer, nn.Linear) else layer(x)
    return x


class ActorLossCritic(ContinuousCritic):
    """SB3's critic, but in an actor loss (SAC's ``forward`` with the policy's actions, which carry a gradient;
    DDPG/TD3's ``q1_forward``) neither the features extractor nor the Q-networks' weights are differentiated:
    gradients of the actor loss reach the critic's parameters only to be discarded (the critic's optimizer
    zeroes them before its next step). SB3's own ``q1_forward`` already skips the extractor. The actor's
    gradient is unchanged: the Q-networks still pass it back to the actions."""

    def forward(self, obs, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.share_features_extractor or not actions.requires_grad:
            return super().forward(obs, actions)
        qvalue_input = self._actor_loss_input(obs, actions)
        return tuple(_input_grad_only(q_net, qvalue_input) for q_net in self.q_networks)

    def q1_forward(self, obs, actions: torch.Tensor) -> torch.Tensor:
        return _input_grad_only(self.q_networks[0], self._actor_loss_input(obs, actions))

    def _actor_loss_input(self, obs, actions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            features = self.extract_features(obs, self.features_extractor)
        return torch.cat([features, actions], dim=1)


class AMCTD3Policy(TD3MultiInputPolicy):
    """DDPG/TD3's policy for Dict observations with :class:`ActorLossCritic` as critic (and target critic)."""

    def make_critic(self, features_extractor=None) -> ContinuousCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return ActorLossCritic(**critic_kwargs).to(self.device)


class AMCSACPolicy(SACMultiInputPolicy):
    """SAC's policy for Dict observations with :class:`ActorLossCritic` as critic (and target critic)."""

    def make_critic(self, features_extractor=None) -> ContinuousCritic:
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return ActorLossCritic(**critic_kwargs).to(self.device)


class AMCSAC(ActorLearningRate, AppliedActions, UpdatesPerStep, SAC):
    """SB3 SAC (its own entropy-driven exploration) with :class:`AMCSACPolicy`."""


ALGORITHMS: dict[str, type[OffPolicyAlgorithm]] = {"ddpg": AMCDDPG, "td3": AMCTD3, "sac": AMCSAC}


class AMCReplayBuffer(DictReplayBuffer):
    """DictReplayBuffer with AMC's credit assignment and reward baseline.

    ``credit="episode"``: when an episode's last transition arrives, the rewards of all its transitions are
    set to its final reward. ``baseline=True``: a moving average of the rewarded transitions' rewards in each
    sampled batch is subtracted from them. ``scale=True``: then they are divided by ``reward_std``, the standard
    deviation of the final rewards of the episodes stored when the first batch is sampled (the warm-up's).

    Observation keys that have been the same in every transition so far (the graph: edge_index, edge_mask,
    node_mask, node_decision) are handed over as one float32 row expanded to the batch (batch-stride 0, the
    dtype SB3's preprocessing converts Box observations to anyway), so the graph extractor sees that the whole
    batch shares one topology without comparing rows."""

    def __init__(self, *args: Any, credit: str = "terminal", baseline: bool = False, baseline_rate: float = 0.5,
                 scale: bool = False, elites: int = 1, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if credit not in CREDITS:
            raise ValueError(f"unknown credit {credit!r}; choose one of {CREDITS}")
        self.credit, self.use_baseline, self.baseline_rate = credit, baseline, baseline_rate
        self.baseline: float | None = None
        self.use_scale, self.reward_std = scale, None  # reward_std: fixed at the first sample
        self._finals: list[float] = []  # the final reward of each stored episode
        if not (isinstance(elites, int) and elites >= 1):
            raise ValueError(f"elites={elites!r} must be an int ≥ 1 (how many best episodes self-imitation pulls towards)")
        self.elites = elites
        # (final reward, buffer rows) of the best `elites` episodes so far, best first (first of equals first)
        self._elite: list[tuple[float, np.ndarray]] = []
        self._elite_version = 0  # counts changes of _elite
        self.imitate = False  # set by an update that imitates: sample() then gathers the elite with the batch
        self._include: np.ndarray | None = None  # elite rows for the sample being gathered
        self._demo: tuple[int, Demonstration] | None = None  # (_elite_version, elite) gathered with the last sample
        self._episode_len = 0
        self._static: dict[str, np.ndarray] | None = None  # key → its value in every transition so far
        self._static_rows: dict[str, torch.Tensor] = {}
        self._serial = np.full(self.buffer_size, -1, dtype=np.int64)  # per row: which add() stored it
        self._added = 0
        self._token = secrets.randbits(62)  # names this buffer's rows to the graph extractor; new in each copy

    def add(self, obs, next_obs, action, reward, done, infos) -> None:
        kept = [(f, rows) for f, rows in self._elite if self.pos not in rows]  # dropped when overwritten
        if len(kept) < len(self._elite):
            self._elite, self._elite_version = kept, self._elite_version + 1
        self._serial[self.pos], self._added = self._added, self._added + 1
        super().add(obs, next_obs, action, reward, done, infos)
        self._track_static(obs)
        self._track_static(next_obs)
        self._episode_len += 1
        if bool(np.asarray(done).reshape(-1)[0]):
            final = float(np.asarray(reward).reshape(-1)[0])
            # the episode's transitions, newest first, around the ring buffer
            idx = (self.pos - 1 - np.arange(min(self._episode_len, self.buffer_size))) % self.buffer_size
            # among the best `elites` of every episode so far (overwritten ones included), after its equals
            if sum(f >= final for f in self._finals) < self.elites:
                self._elite.insert(sum(f >= final for f, _ in self._elite), (final, idx[::-1].copy()))
                del self._elite[self.elites:]
                self._elite_version += 1
            self._finals.append(final)
            if self.credit == "episode":
                self.rewards[idx] = np.float32(final)
            self._episode_len = 0

    def _track_static(self, obs: dict[str, np.ndarray]) -> None:
        """Drop the keys whose value in ``obs`` (rows: envs) differs from the one seen so far."""
        if self._static is None:
            self._static = {k: np.array(v[0]) for k, v in obs.items()}
        for k in [k for k, v in self._static.items() if not (obs[k] == v).all()]:
            del self._static[k]
            self._static_rows.pop(k, None)

    def _share_static(self, obs: dict[str, torch.Tensor], batch: int) -> None:
        for k, value in (self._static or {}).items():
            if k not in self._static_rows:
                self._static_rows[k] = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            obs[k] = self._static_rows[k].expand(batch, *value.shape)

    def _get_samples(self, batch_inds: np.ndarray, env=None):
        """SB3's, but the static keys are not gathered row by row (then copied and converted): they come as
        one row expanded; and with one env, each other key's observations and next observations are gathered
        into one tensor [2B, …] and handed over as its two halves, which the graph extractor unrolls together.
        While ``imitate`` is set, the best episodes' observations are gathered in front of them, [E + 2B, …], and
        kept for :meth:`elite`: one unroll serves the step's critic, target and actor (imitation) passes.
        Same batch, same RNG draws."""
        if env is not None or not self._static:  # VecNormalize: the stored values are not what the policy sees
            self._include = None
            return super()._get_samples(batch_inds, env)
        joint = [k for k in self.observations if k not in self._static] if self.n_envs == 1 else []
        full = self.observations, self.next_observations
        self.observations, self.next_observations = ({k: v for k, v in d.items() if k not in self._static
                                                      and k not in joint} for d in full)
        try:
            data = super()._get_samples(batch_inds, env)
        finally:
            self.observations, self.next_observations = full
        elite, self._include = self._include, None
        B, E = len(batch_inds), 0 if elite is None else len(elite)
        rows = torch.as_tensor(batch_inds)
        first = rows if elite is None else torch.as_tensor(np.concatenate([elite, batch_inds]))
        gathered, demo = [], {}
        for k in joint:
            sources = [torch.from_numpy(d[k][:, 0]) for d in full]  # observations, next observations (one env)
            both = sources[0].new_empty((E + 2 * B, *sources[0].shape[1:]))
            torch.index_select(sources[0], 0, first, out=both[:E + B])
            torch.index_select(sources[1], 0, rows, out=both[E + B:])
            both = both.to(self.device)
            gathered.append(both)
            data.observations[k], data.next_observations[k], demo[k] = both[E:E + B], both[E + B:], both[:E]
        # which stored observation each gathered row is: its buffer row (next observations after all observations)
        # and the add() that stored it, so the graph extractor interns each row's node states once
        stored = np.concatenate([first.numpy(), batch_inds + self.buffer_size])
        gathered_together(*gathered, rows=(self._token, torch.from_numpy(stored),
                                           torch.from_numpy(self._serial[stored % self.buffer_size])))
        self._share_static(data.observations, B)
        self._share_static(data.next_observations, B)
        if elite is not None:
            self._share_static(demo, E)
            self._demo = self._elite_version, Demonstration(demo, self.to_torch(self.actions[elite, 0]))
        return data

    def sample(self, batch_size: int, env=None):
        self._include = np.concatenate([rows for _, rows in self._elite]) if self.imitate and self._elite else None
        data = super().sample(batch_size, env)
        if self.use_scale and self.reward_std is None:
            self.reward_std = max(float(np.std(self._finals)), 1e-3)  # 1e-3: warm-up episodes all alike
        if not self.use_baseline:
            return self._scaled(data)
        rewarded = data.dones > 0.5 if self.credit == "terminal" else torch.ones_like(data.dones, dtype=torch.bool)
        if rewarded.any():
            mean = float(data.rewards[rewarded].mean())
            self.baseline = mean if self.baseline is None else self.baseline + self.baseline_rate * (mean - self.baseline)
        if self.baseline is not None:
            data.rewards.sub_(self.baseline * rewarded.float())
        return self._scaled(data)

    @property
    def finals(self) -> list[float]:
        """The final reward of every episode stored so far (overwritten ones included), in order."""
        return self._finals

    def elite(self) -> Demonstration | None:
        """The observations and actions of the best ``elites`` episodes so far, best first, or None while there is
        none: the ones gathered with the last sample when ``imitate`` is set, else gathered now. An episode the
        ring buffer has begun to overwrite is dropped, and only a later episode that ranks among the best
        ``elites`` of all episodes so far takes a place."""
        if not self._elite:
            return None
        if self._demo is not None and self._demo[0] == self._elite_version:
            return self._demo[1]
        data = self._get_samples(np.concatenate([rows for _, rows in self._elite]))
        return Demonstration(data.observations, data.actions)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_demo": None, "_include": None}  # tensors of the last sample: not state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Buffers pickled before ``elites`` existed kept the best episode's rows only (or None)."""
        if not isinstance(state.get("_elite", []), list):
            rows = state["_elite"]
            state["_elite"] = [] if rows is None else [(max(state["_finals"]), rows)]
        size = state["buffer_size"]  # before rows had serials: each row's own, new rows' above them
        state = {"elites": 1, "imitate": False, "_elite_version": 0, "_demo": None, "_include": None,
                 "_serial": np.arange(size, dtype=np.int64), "_added": size, **state}
        self.__dict__.update(state)
        self._token = secrets.randbits(62)  # a copy's rows may change apart from the original's

    def _scaled(self, data):
        if self.use_scale:
            data.rewards.div_(self.reward_std)
        return data


def default_self_imitation(algo: str) -> float:
    """λ when none is given: ``SELF_IMITATION`` for DDPG (measured); 0 for TD3 (not measured yet) and SAC (its
    update is SB3's own, without the term)."""
    return SELF_IMITATION if algo == "ddpg" else 0.0


def default_min_updates(algo: str) -> int:
    """The floor on gradient steps per episode when none is given: ``MIN_UPDATES_PER_EPISODE`` for DDPG
    (measured), 0 for TD3 and SAC (not measured: AMC's one per transition)."""
    return MIN_UPDATES_PER_EPISODE if algo == "ddpg" else 0


def default_imitation_elites(self_imitation: float) -> int:
    """K when none is given: ``IMITATION_ELITES`` with self-imitation, else 1 (no pull: K has no meaning)."""
    return IMITATION_ELITES if self_imitation else 1


def _choice(name: str, table: dict, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def _adam_kwargs(device: str) -> dict[str, Any]:
    """torch's fused Adam (one kernel over all parameters instead of ~10 ops per tensor: about 1 ms less per
    gradient step on a CPU core) where this torch has it for the device; the same update up to float rounding."""
    try:
        torch.optim.Adam([torch.zeros(1, device=get_device(device), requires_grad=True)], fused=True)
    except (RuntimeError, ValueError):
        return {}
    return {"fused": True}


def make_agent(algo: str, env, *, embedding: str = "gnn", episodes: int = 300, warmup: int = 25, seed: int = 0,
               reward_baseline: bool = True, credit: str = "episode", exploration: str = "scaled",
               learning_rate: float = 1e-3, actor_lr: float | None = 1e-4, updates_per_step: int = 1,
               min_updates_per_episode: int | None = None, warmup_noise: bool = True,
               reward_scale: bool = False, self_imitation: float | None = None, imitation_elites: int | None = None,
               applied_actions: bool = False, gamma: float = 1.0, imitation_filter: bool | None = None,
               sigma_floor: float = SCALED_FLOOR / 2, batch_size: int = 64,
               extractor_kwargs: dict | None = None, tensorboard_log: str | None = None,
               device: str = "auto", verbose: int = 0) -> OffPolicyAlgorithm:
    """An SB3 agent for ``env`` (a gymnasium AGMC env or a VecEnv over one) with the defaults above."""
    cls = _choice(algo, ALGORITHMS, "algorithm")
    extractor, kwargs = _choice(embedding, EMBEDDINGS, "embedding")
    if credit not in CREDITS or exploration not in EXPLORATIONS:
        raise ValueError(f"credit must be one of {CREDITS} and exploration one of {EXPLORATIONS}; "
                         f"got {credit!r}, {exploration!r}")
    decisions = int(env.observation_space["decision_index"].high.max())
    policy_kwargs = dict(features_extractor_class=extractor, features_extractor_kwargs={**kwargs, **(extractor_kwargs or {})},
                         net_arch=dict(pi=[300, 300], qf=[300, 300]), optimizer_kwargs=_adam_kwargs(device))
    options: dict[str, Any] = dict(
        learning_rate=learning_rate, buffer_size=max(episodes * decisions, batch_size), learning_starts=warmup * decisions,
        batch_size=batch_size, tau=0.01, gamma=gamma, train_freq=(1, "episode"), gradient_steps=-1,
        policy_kwargs=policy_kwargs, seed=seed, device=device, verbose=verbose, tensorboard_log=tensorboard_log,
    )
    options["replay_buffer_class"] = AMCReplayBuffer  # credit="terminal", no baseline: SB3's + the shared graph
    self_imitation = default_self_imitation(algo) if self_imitation is None else self_imitation
    if imitation_elites is None:
        imitation_elites = default_imitation_elites(self_imitation)
    options["replay_buffer_kwargs"] = {"credit": credit, "baseline": reward_baseline, "scale": reward_scale,
                                       "elites": imitation_elites}
    if algo in ("ddpg", "td3"):
        check_sigma_floor(sigma_floor)
        floor = 0.0 if exploration == "amc" else 2 * sigma_floor  # SB3's action units span [-1, 1]
        decay = 0.95 if exploration == "amc" else scaled_decay(episodes - warmup, floor=floor)
        options["action_noise"] = AMCNoise(sigma=1.0, decay=decay, warmup_episodes=warmup, seed=seed, floor=floor,
                                           adaptive=exploration == "adaptive", dims=decisions)
    model = cls(AMCSACPolicy if algo == "sac" else AMCTD3Policy, env, **options)
    if not (isinstance(updates_per_step, int) and updates_per_step >= 1):
        raise ValueError(f"updates_per_step={updates_per_step!r} must be an int ≥ 1 (gradient steps per transition)")
    if min_updates_per_episode is None:
        min_updates_per_episode = default_min_updates(algo)
    if not (isinstance(min_updates_per_episode, int) and min_updates_per_episode >= 0):
        raise ValueError(f"min_updates_per_episode={min_updates_per_episode!r} must be an int ≥ 0 (a floor on the "
                         "gradient steps per episode; 0: none)")
    if (self_imitation and algo == "sac") or not (isinstance(self_imitation, (int, float)) and self_imitation >= 0):
        raise ValueError(f"self_imitation={self_imitation!r} must be a weight ≥ 0, and 0 with SAC (its update is "
                         "SB3's own)")
    model.actor_lr, model.updates_per_step, model.applied_actions = actor_lr, updates_per_step, applied_actions
    model.min_updates_per_episode = min_updates_per_episode
    if not warmup_noise and algo == "sac":
        raise ValueError("warmup_noise=False has no effect with SAC (its warm-up is uniform already): leave it on")
    if algo != "sac":
        model.warmup_noise = bool(warmup_noise)
        model.self_imitation = float(self_imitation)
        model.imitation_filter = IMITATION_FILTER if imitation_filter is None else bool(imitation_filter)
    return model
