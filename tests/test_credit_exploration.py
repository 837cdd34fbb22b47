"""AMC's credit assignment, the exploration schedule scaled to the search, and the actor's own learning rate."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from stable_baselines3.common.buffers import DictReplayBuffer
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents.algorithms import MIN_UPDATES_PER_EPISODE, AMCReplayBuffer, make_agent
from agents.noise import SCALED_FLOOR, AMCNoise, scaled_decay, success_rule
from agents.run_folder import SearchConfig
from agents.search import run_search
from agmc_env.testing import tiny_env


def _fill(buffer: AMCReplayBuffer, env, episodes: int, T: int, rng) -> list[float]:
    finals = []
    for _ in range(episodes):
        obs = env.trajectory(rng.uniform(0, 1, (T, 1)))
        final = float(rng.uniform())
        finals.append(final)
        for t in range(T):
            done = t == T - 1
            buffer.add({k: v[None] for k, v in obs[t].items()}, {k: v[None] for k, v in obs[t + 1].items()},
                       np.zeros((1, 1), np.float32), np.array([final if done else 0.0], np.float32),
                       np.array([done]), [{}])
    return finals


@pytest.mark.parametrize("credit", ["terminal", "episode"])
def test_episode_credit_gives_every_transition_the_final_reward(credit):
    env = tiny_env()
    T = env.num_decisions
    buffer = AMCReplayBuffer(3 * T - 2, env.observation_space, env.action_space, credit=credit)  # wraps around
    finals = _fill(buffer, env, 3, T, np.random.default_rng(0))
    last = (buffer.pos - 1 - np.arange(T)) % buffer.buffer_size  # the last episode, newest first
    if credit == "episode":
        assert np.all(buffer.rewards[last, 0] == np.float32(finals[-1]))
    else:
        assert buffer.rewards[last[0], 0] == np.float32(finals[-1]) and np.all(buffer.rewards[last[1:], 0] == 0)


def test_baseline_is_subtracted_from_every_rewarded_transition():
    env = tiny_env()
    T = env.num_decisions
    buffer = AMCReplayBuffer(4 * T, env.observation_space, env.action_space, credit="episode", baseline=True)
    _fill(buffer, env, 4, T, np.random.default_rng(1))
    raw = buffer.rewards[: 4 * T, 0].copy()
    data = buffer.sample(16)
    assert buffer.baseline is not None and abs(float(data.rewards.mean())) < abs(raw.mean()) + 1


def test_reward_scale_divides_by_the_warmup_episodes_std_and_then_stays():
    env = tiny_env()
    T = env.num_decisions
    kwargs = dict(credit="episode", baseline=True)
    plain = AMCReplayBuffer(8 * T, env.observation_space, env.action_space, **kwargs)
    scaled = AMCReplayBuffer(8 * T, env.observation_space, env.action_space, scale=True, **kwargs)
    finals = [_fill(b, env, 4, T, np.random.default_rng(2)) for b in (plain, scaled)][0]
    np.random.seed(0)
    a = plain.sample(16)
    np.random.seed(0)
    b = scaled.sample(16)
    assert scaled.reward_std == pytest.approx(np.std(finals))
    torch.testing.assert_close(b.rewards, a.rewards / scaled.reward_std)
    _fill(scaled, env, 3, T, np.random.default_rng(3))  # later episodes do not move the scale
    scaled.sample(16)
    assert scaled.reward_std == pytest.approx(np.std(finals))


def test_scaled_exploration_reaches_its_floor_at_two_thirds():
    episodes, warmup = 300, 25
    noise = AMCNoise(sigma=1.0, decay=scaled_decay(episodes - warmup), warmup_episodes=warmup, floor=SCALED_FLOOR)
    noise.episodes = warmup + int(2 / 3 * (episodes - warmup)) - 5
    assert noise.sigma > SCALED_FLOOR
    noise.episodes = warmup + int(2 / 3 * (episodes - warmup)) + 1
    assert noise.sigma == SCALED_FLOOR
    noise.episodes = warmup + 100  # AMC's 0.95 per episode would be at 0.006 by now
    assert noise.sigma > 0.25


def test_sigma_floor_is_on_the_unit_interval_and_reached_at_two_thirds():
    env = tiny_env()
    model = make_agent("ddpg", DummyVecEnv([lambda: env]), embedding="amc", episodes=100, warmup=10,
                       sigma_floor=0.15)
    noise = model.action_noise
    noise.episodes = 10 + 60
    assert noise.sigma == pytest.approx(0.3) and noise.floor == pytest.approx(0.3)  # SB3 units: twice [0, 1]'s
    noise.episodes = 10 + 55
    assert noise.sigma > 0.3
    with pytest.raises(ValueError, match="sigma_floor"):
        make_agent("ddpg", DummyVecEnv([lambda: env]), embedding="amc", sigma_floor=0.0)


def test_success_rule_shrinks_sigma_on_failures_and_grows_it_back_on_successes():
    d = 1 + 8 / 2
    warmup = [0.5, 0.7, 0.6]
    assert success_rule(warmup, 3, 8) == 0.0  # warm-up episodes never move σ
    fails = warmup + [0.7] * 10  # ties with the best are failures
    assert success_rule(fails, 3, 8) == pytest.approx(-10 / (4 * d))
    assert success_rule(fails + [0.71], 3, 8) == pytest.approx(-10 / (4 * d) + 1 / d)
    assert success_rule(warmup + [0.8, 0.9, 1.0], 3, 8) == 0.0  # never above σ0
    five = warmup + [r for k in range(4) for r in (0.1, 0.2, 0.3, 0.4, 0.8 + k / 100)]  # one in five beats the best
    assert success_rule(five, 3, 8) == pytest.approx(0.0, abs=1e-12)  # so σ holds
    assert success_rule(five[:-1], 3, 8) == pytest.approx(-1 / d)


def test_adaptive_exploration_follows_the_searchs_rewards_above_its_floor():
    env = tiny_env()
    model = make_agent("ddpg", DummyVecEnv([lambda: env]), embedding="amc", episodes=100, warmup=2,
                       exploration="adaptive", sigma_floor=0.05)
    noise = model.action_noise
    assert noise.adaptive and noise.dims == env.num_decisions and noise.sigma == 1.0
    noise.finals = [0.5, 0.6] + [0.1] * 5
    assert 0.1 < noise.sigma < 1 and noise.sigma == pytest.approx(np.exp(success_rule(noise.finals, 2, env.num_decisions)))
    noise.finals = [0.5, 0.6] + [0.1] * 1000
    assert noise.sigma == pytest.approx(0.1)  # the floor, in SB3 units
    model.set_logger(configure(None, []))
    model.learn(total_timesteps=4 * env.num_decisions)  # the algorithm hands the buffer's finals to the noise
    assert noise.finals is model.replay_buffer.finals and len(noise.finals) == 4


def test_adam_is_fused_and_steps_as_the_per_tensor_loop():
    env = tiny_env()
    model = make_agent("ddpg", DummyVecEnv([lambda: env]), embedding="gnn", episodes=4, warmup=1)
    assert all(o.defaults["fused"] for o in (model.actor.optimizer, model.critic.optimizer))
    params = [torch.randn(30, 20, requires_grad=True), torch.randn(20, requires_grad=True)]
    twins = [p.detach().clone().requires_grad_() for p in params]
    fused, loop = torch.optim.Adam(params, lr=1e-3, fused=True), torch.optim.Adam(twins, lr=1e-3, foreach=False)
    for step in range(5):
        for opt, ps in ((fused, params), (loop, twins)):
            opt.zero_grad()
            sum((p * (step + 1)).sin().sum() for p in ps).backward()
            opt.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(params, twins))


def test_actor_learning_rate_is_its_own():
    env = tiny_env()
    model = make_agent("ddpg", DummyVecEnv([lambda: env]), embedding="amc", episodes=4, warmup=1, actor_lr=1e-4)
    model.set_logger(configure(None, [""]))
    model._update_learning_rate([model.actor.optimizer, model.critic.optimizer])
    assert model.actor.optimizer.param_groups[0]["lr"] == 1e-4
    assert model.critic.optimizer.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
@pytest.mark.parametrize("updates", [1, 3])
def test_updates_per_step_multiplies_the_gradient_steps_of_each_episode(algo, updates):
    env = tiny_env()
    T = env.num_decisions
    model = make_agent(algo, DummyVecEnv([lambda: env]), embedding="amc", episodes=4, warmup=1,
                       updates_per_step=updates, min_updates_per_episode=0)
    model.learn(total_timesteps=4 * T)
    # SB3 trains at each episode end once past learning_starts (the warm-up episode): 3 episodes of T steps
    assert model._n_updates == 3 * T * updates


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
@pytest.mark.parametrize("updates", [1, 3])
@pytest.mark.parametrize("floor", [0, 10, 30])
def test_an_episode_takes_at_least_the_floor_of_gradient_steps(algo, updates, floor):
    env = tiny_env()
    T = env.num_decisions  # 6: the floor of 10 lifts one step per transition, not three; 30 lifts both
    model = make_agent(algo, DummyVecEnv([lambda: env]), embedding="amc", episodes=4, warmup=1,
                       updates_per_step=updates, min_updates_per_episode=floor)
    model.learn(total_timesteps=4 * T)
    assert model._n_updates == 3 * max(T * updates, floor)


def test_only_ddpg_has_a_floor_by_default_and_it_is_recorded():
    assert SearchConfig("AGMCTest-Tiny-v0").min_updates_per_episode == MIN_UPDATES_PER_EPISODE
    assert SearchConfig("AGMCTest-Tiny-v0", algo="td3").min_updates_per_episode == 0
    assert SearchConfig("AGMCTest-Tiny-v0", algo="sac").min_updates_per_episode == 0
    model = make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc")
    assert model.min_updates_per_episode == MIN_UPDATES_PER_EPISODE


def test_updates_per_step_refuses_what_is_not_a_count():
    with pytest.raises(ValueError, match="updates_per_step"):
        SearchConfig("AGMCTest-Tiny-v0", updates_per_step=0)
    with pytest.raises(ValueError, match="sigma_floor"):
        SearchConfig("AGMCTest-Tiny-v0", sigma_floor=0.6)
    with pytest.raises(ValueError, match="updates_per_step"):
        make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc", updates_per_step=1.5)
    with pytest.raises(ValueError, match="min_updates_per_episode"):
        SearchConfig("AGMCTest-Tiny-v0", min_updates_per_episode=-1)
    with pytest.raises(ValueError, match="min_updates_per_episode"):
        make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc", min_updates_per_episode=2.5)


def test_amc_settings_search_resumes_and_old_folders_still_match(tmp_path):
    config = SearchConfig("AGMCTest-Tiny-v0", algo="td3", embedding="amc", episodes=4, warmup=1, seed=1,
                          reward_baseline=True, credit="episode", exploration="scaled", actor_lr=1e-4)
    run_search(config, tmp_path, progress=False)
    config.episodes = 5  # extends: the recorded identity matches, new fields included
    run_search(config, tmp_path, progress=False)
    # a run.json written before these fields existed: it ran with a terminal reward, AMC's σ and one rate
    old = SearchConfig("AGMCTest-Tiny-v0", credit="terminal", exploration="amc", actor_lr=None, self_imitation=0.0,
                       min_updates_per_episode=0)
    recorded = {k: v for k, v in old.identity().items()
                if k not in ("credit", "exploration", "actor_lr", "updates_per_step", "sigma_floor", "reward_scale",
                             "self_imitation", "min_updates_per_episode")}
    assert old.same_run(json.loads(json.dumps(recorded)))
    assert not config.same_run(recorded)


def test_static_keys_come_as_one_row_and_a_changed_graph_stops_that():
    env = tiny_env()
    T = env.num_decisions
    buffer = AMCReplayBuffer(4 * T, env.observation_space, env.action_space)
    _fill(buffer, env, 2, T, np.random.default_rng(2))
    data = buffer.sample(8)
    first = env.trajectory(np.ones((T, 1)))[0]
    for key in ("edge_index", "edge_mask", "node_mask", "node_decision"):
        for obs in (data.observations, data.next_observations):
            assert obs[key].stride(0) == 0 and obs[key].dtype == torch.float32
            assert torch.equal(obs[key][3], torch.as_tensor(first[key], dtype=torch.float32))
    assert data.observations["x"].stride(0) != 0  # per-transition keys are gathered as SB3 does
    inds = np.arange(8)
    np.random.seed(3)
    ours = buffer._get_samples(inds)
    np.random.seed(3)
    sb3 = DictReplayBuffer._get_samples(buffer, inds)  # every key gathered row by row
    for a, b in ((ours.observations, sb3.observations), (ours.next_observations, sb3.next_observations)):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k].float()) for k in a)
    assert torch.equal(ours.rewards, sb3.rewards) and torch.equal(ours.actions, sb3.actions)
    obs = {k: v[None] for k, v in first.items()}
    other = {**obs, "edge_mask": obs["edge_mask"].copy()}
    other["edge_mask"][0, 0] = 0.0
    buffer.add(obs, other, np.zeros((1, 1), np.float32), np.zeros(1, np.float32), np.array([False]), [{}])
    data = buffer.sample(4 * T)
    assert data.next_observations["edge_mask"].stride(0) != 0 and data.observations["edge_index"].stride(0) == 0
    assert set(torch.unique(data.next_observations["edge_mask"][:, 0]).tolist()) <= {0.0, 1.0}


def test_sac_actor_loss_skips_the_critic_encoder_backward_with_the_same_actor_gradient():
    model = make_agent("sac", DummyVecEnv([tiny_env]), episodes=4, warmup=1)
    assert model.critic.features_extractor is not model.actor.features_extractor
    env = model.env.envs[0]
    T = env.unwrapped.num_decisions
    _fill(model.replay_buffer, env.unwrapped, 2, T, np.random.default_rng(3))
    obs = model.replay_buffer.sample(8).observations
    grads = []
    for forward in (model.critic.forward, lambda o, a: super(type(model.critic), model.critic).forward(o, a)):
        model.actor.zero_grad(), model.critic.zero_grad()
        torch.manual_seed(0)
        actions, _ = model.actor.action_log_prob(obs)
        torch.cat(forward(obs, actions), 1).min(1).values.mean().backward()
        grads.append(([p.grad.clone() for p in model.actor.parameters()],
                      [p.grad for p in model.critic.features_extractor.parameters()]))
    (actor_new, critic_enc_new), (actor_sb3, critic_enc_sb3) = grads
    assert all(torch.equal(a, b) for a, b in zip(actor_new, actor_sb3))
    assert all(g is None for g in critic_enc_new) and any(g is not None for g in critic_enc_sb3)


def test_gamma_is_the_agents_discount_and_a_number_in_the_unit_interval():
    assert SearchConfig("AGMCTest-Tiny-v0").gamma == 1.0  # AMC's
    assert make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc", gamma=0.0).gamma == 0.0
    for bad in (1.5, -0.1, "1"):
        with pytest.raises(ValueError, match="gamma"):
            SearchConfig("AGMCTest-Tiny-v0", gamma=bad)


@pytest.mark.parametrize("algo, noise, on_bounds", [("ddpg", True, (0.25, 0.55)), ("td3", False, (0.0, 0.0)),
                                                    ("sac", True, (0.0, 0.0))])
def test_warm_up_actions_are_uniform_plus_ddpgs_initial_noise_clipped(algo, noise, on_bounds):
    """What the README says of the warm-up: SAC's actions are SB3's uniform draws; DDPG/TD3 add one draw of the
    initial noise (σ 1 in SB3's units) and clip, which puts ~39 % of them on a bound, unless warmup_noise=False."""
    env = tiny_env()
    T = env.num_decisions
    model = make_agent(algo, DummyVecEnv([lambda: env]), embedding="amc", episodes=40, warmup=40, seed=0,
                       warmup_noise=noise)
    model.set_logger(configure(None, []))
    model.learn(total_timesteps=40 * T)  # warm-up only: no gradient step
    actions = model.replay_buffer.actions[:40 * T].reshape(-1)
    share = float(np.mean(np.abs(actions) == 1.0))
    assert on_bounds[0] <= share <= on_bounds[1], share
    assert np.all(np.abs(actions) <= 1.0)


def test_uniform_warm_up_is_refused_where_it_changes_nothing():
    with pytest.raises(ValueError, match="warmup_noise=False has no effect with SAC"):
        SearchConfig("AGMCTest-Tiny-v0", algo="sac", warmup_noise=False)
    older = {k: v for k, v in SearchConfig("AGMCTest-Tiny-v0").identity().items() if k != "warmup_noise"}
    assert SearchConfig("AGMCTest-Tiny-v0").same_run(older)  # a folder from before the option: it had the noise
    assert not SearchConfig("AGMCTest-Tiny-v0", warmup_noise=False).same_run(older)
