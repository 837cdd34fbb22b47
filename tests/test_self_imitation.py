"""Self-imitation: the replay buffer keeps the best episodes' transitions (5 by default), and the actor loss's pull
towards them is λ·‖π(s) − a‖² at every step of them (the default), or with the Q-filter exactly where the critic
rates the episode's action above the actor's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents.algorithms import AMCReplayBuffer, Demonstration, _joined, make_agent
from agents.extractors import _Unrolled
from agents.run_folder import SearchConfig
from agmc_env.testing import tiny_env


def _episode(buffer, env, T: int, final: float, action: float) -> None:
    obs = env.trajectory(np.full((T, 1), 0.5))
    for t in range(T):
        done = t == T - 1
        buffer.add({k: v[None] for k, v in obs[t].items()}, {k: v[None] for k, v in obs[t + 1].items()},
                   np.full((1, 1), action, np.float32), np.array([final if done else 0.0], np.float32),
                   np.array([done]), [{}])


def test_the_elite_is_the_first_best_episode_until_it_is_overwritten():
    env = tiny_env()
    T = env.num_decisions
    buffer = AMCReplayBuffer(4 * T, env.observation_space, env.action_space, credit="episode")
    assert buffer.elite() is None
    for final, action in ((0.3, -0.5), (0.7, 0.25), (0.7, 0.75), (0.1, 0.0)):
        _episode(buffer, env, T, final, action)
    elite = buffer.elite()
    assert elite.actions.shape == (T, 1) and torch.all(elite.actions == 0.25)  # ties keep the first
    _episode(buffer, env, T, 0.2, 0.0)  # wraps around onto the first episode: the elite (second) survives
    assert torch.all(buffer.elite().actions == 0.25)
    _episode(buffer, env, T, 0.2, 0.0)  # now onto the second
    assert buffer.elite() is None


def test_several_elites_are_the_best_episodes_best_first():
    env = tiny_env()
    T = env.num_decisions
    buffer = AMCReplayBuffer(5 * T, env.observation_space, env.action_space, credit="episode", elites=2)
    for final, action in ((0.3, -0.5), (0.7, 0.25), (0.5, 0.5), (0.7, 0.75), (0.1, 0.0)):
        _episode(buffer, env, T, final, action)
    actions = buffer.elite().actions.view(2, T)
    assert torch.all(actions[0] == 0.25) and torch.all(actions[1] == 0.75)  # 0.7 then the later 0.7; 0.5 is out
    _episode(buffer, env, T, 0.6, 0.0)  # overwrites the first episode (0.3), below the best two: no change
    assert torch.all(buffer.elite().actions.view(2, T)[1] == 0.75)
    _episode(buffer, env, T, 0.2, 0.0)  # overwrites the best: only the other one is left
    assert torch.all(buffer.elite().actions == 0.75) and len(buffer.elite().actions) == T
    with pytest.raises(ValueError, match="elites"):
        AMCReplayBuffer(T, env.observation_space, env.action_space, elites=0)


def test_a_buffer_pickled_before_elites_existed_loads_as_one_elite():
    env = tiny_env()
    T = env.num_decisions
    buffer = AMCReplayBuffer(2 * T, env.observation_space, env.action_space, credit="episode")
    _episode(buffer, env, T, 0.4, 0.25)
    state = dict(buffer.__dict__)
    state["_elite"] = state["_elite"][0][1]  # what older code kept: the best episode's rows
    del state["elites"]
    old = AMCReplayBuffer.__new__(AMCReplayBuffer)
    old.__setstate__(state)
    assert old.elites == 1 and torch.all(old.elite().actions == 0.25)


@pytest.mark.parametrize("embedding", ["amc", "gnn"])
def test_the_imitation_loss_is_q_filtered_behaviour_cloning(embedding):
    torch.manual_seed(0)
    model = make_agent("ddpg", DummyVecEnv([tiny_env]), embedding=embedding, self_imitation=2.0, warmup=1,
                       imitation_filter=True)
    env = tiny_env()
    T = env.num_decisions
    _episode(model.replay_buffer, env, T, 0.1, -0.5)
    batch = model.replay_buffer.sample(4).observations
    plain = -model.critic.q1_forward(batch, model.actor(batch)).mean()
    model.replay_buffer._elite = []  # no best episode yet: the plain actor loss
    torch.testing.assert_close(model._actor_loss(batch, model.replay_buffer.elite()), plain, rtol=0, atol=0)
    _episode(model.replay_buffer, env, T, 0.9, 0.5)
    elite = model.replay_buffer.elite()
    mine = model.actor(elite.observations)
    better = model.critic.q1_forward(elite.observations, elite.actions) > model.critic.q1_forward(elite.observations, mine)
    expected = plain + 2.0 * (better.float() * (mine - 0.5) ** 2).sum(1).mean()
    # one joint pass over the batch and the elite's states: the separate passes' value up to float rounding
    torch.testing.assert_close(model._actor_loss(batch, elite), expected)
    model.set_logger(configure(None, [""]))
    model.train(gradient_steps=3, batch_size=4)  # runs inside the actor loss


def test_without_the_filter_every_step_of_the_best_episode_is_imitated():
    torch.manual_seed(0)
    model = make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc", self_imitation=2.0, warmup=1)
    assert model.imitation_filter is False  # the default
    env = tiny_env()
    T = env.num_decisions
    _episode(model.replay_buffer, env, T, 0.9, 0.5)
    batch = model.replay_buffer.sample(4).observations
    elite = model.replay_buffer.elite()
    plain = -model.critic.q1_forward(batch, model.actor(batch)).mean()
    expected = plain + 2.0 * ((model.actor(elite.observations) - 0.5) ** 2).sum(1).mean()
    torch.testing.assert_close(model._actor_loss(batch, elite), expected)


def test_the_best_episode_is_gathered_with_the_batch_and_unrolled_with_it():
    torch.manual_seed(0)
    model = make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="gnn", self_imitation=2.0, warmup=1,
                       imitation_elites=1)
    env = tiny_env()
    T = env.num_decisions
    for final, action in ((0.1, -0.5), (0.9, 0.5), (0.4, 0.0)):
        _episode(model.replay_buffer, env, T, final, action)
    buffer = model.replay_buffer
    np.random.seed(0)
    separate = model._actor_loss(buffer.sample(4).observations, buffer.elite())  # the best episode gathered on its own
    buffer.imitate = True
    np.random.seed(0)
    data = buffer.sample(4)
    elite = buffer.elite()
    assert torch.all(elite.actions == 0.5) and len(elite.actions) == T
    joined = _joined(elite.observations, data.observations)
    base = data.observations["x"]._base
    assert joined["x"]._base is base and elite.observations["x"]._base is base  # views of one tensor, no copy
    assert torch.equal(joined["x"], torch.cat([elite.observations["x"], data.observations["x"]]))
    torch.testing.assert_close(model._actor_loss(data.observations, elite), separate)
    assert _Unrolled.recent()[0].inputs[0] is base  # the actor's pass reused the batch's unroll
    _episode(buffer, env, T, 0.95, 0.25)  # a new best: the demonstration of the last sample is stale
    assert torch.all(buffer.elite().actions == 0.25)


def test_training_with_the_gathered_best_episode_equals_training_with_it_gathered_apart():
    env = tiny_env()
    T = env.num_decisions
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="gnn", self_imitation=2.0, warmup=1)
        for final, action in ((0.1, -0.5), (0.9, 0.5), (0.4, 0.0)):
            _episode(model.replay_buffer, env, T, final, action)
        model.set_logger(configure(None, [""]))
        models.append(model)
    apart = models[1].replay_buffer

    def elite_gathered_apart():  # the path before: its own gather, its own unroll
        data = apart._get_samples(np.concatenate([rows for _, rows in apart._elite]))
        return Demonstration(data.observations, data.actions)

    apart.elite = elite_gathered_apart
    for model in models:
        np.random.seed(0)
        torch.manual_seed(1)
        model.train(gradient_steps=8, batch_size=4)
    for a, b in zip(models[0].policy.parameters(), models[1].policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_default_is_ten_for_ddpg_only():
    assert SearchConfig("AGMCTest-Tiny-v0", algo="ddpg").self_imitation == 10.0
    assert SearchConfig("AGMCTest-Tiny-v0", algo="td3").self_imitation == 0.0
    assert SearchConfig("AGMCTest-Tiny-v0", algo="sac").self_imitation == 0.0
    assert make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc").self_imitation == 10.0
    assert make_agent("td3", DummyVecEnv([tiny_env]), embedding="amc").self_imitation == 0.0
    assert not hasattr(make_agent("sac", DummyVecEnv([tiny_env]), embedding="amc"), "self_imitation")


def test_the_default_imitates_five_elites_with_self_imitation_only():
    assert SearchConfig("AGMCTest-Tiny-v0", algo="ddpg").imitation_elites == 5
    assert SearchConfig("AGMCTest-Tiny-v0", algo="ddpg", self_imitation=0.0).imitation_elites == 1
    assert SearchConfig("AGMCTest-Tiny-v0", algo="td3").imitation_elites == 1
    assert SearchConfig("AGMCTest-Tiny-v0", algo="td3", self_imitation=1.0).imitation_elites == 5
    assert SearchConfig("AGMCTest-Tiny-v0", algo="ddpg", imitation_elites=1).imitation_elites == 1
    assert make_agent("ddpg", DummyVecEnv([tiny_env]), embedding="amc").replay_buffer.elites == 5
    assert make_agent("td3", DummyVecEnv([tiny_env]), embedding="amc").replay_buffer.elites == 1
    # a run folder of the one-elite default is not resumed as a 5-elite run (its identity names its K)
    one = SearchConfig("AGMCTest-Tiny-v0", imitation_elites=1)
    assert not SearchConfig("AGMCTest-Tiny-v0").same_run(one.identity()) and one.same_run(one.identity())


def test_runs_recorded_before_the_filter_option_resume_as_what_they_were():
    default, filtered = SearchConfig("AGMCTest-Tiny-v0"), SearchConfig("AGMCTest-Tiny-v0", imitation_filter=True)
    assert default.imitation_filter is False and SearchConfig("AGMCTest-Tiny-v0", algo="td3").imitation_filter is None
    before = {k: v for k, v in filtered.identity().items() if k != "imitation_filter"}  # a DDPG run: Q-filtered
    assert filtered.same_run(before) and not default.same_run(before)
    td3 = SearchConfig("AGMCTest-Tiny-v0", algo="td3")  # no self-imitation: nothing to filter
    assert td3.same_run({k: v for k, v in td3.identity().items() if k != "imitation_filter"})


def test_self_imitation_is_refused_where_it_has_no_meaning():
    with pytest.raises(ValueError, match="imitation_elites"):
        SearchConfig("AGMCTest-Tiny-v0", algo="td3", imitation_elites=3)
    with pytest.raises(ValueError, match="imitation_filter"):
        SearchConfig("AGMCTest-Tiny-v0", algo="td3", imitation_filter=False)
    with pytest.raises(ValueError, match="SAC"):
        SearchConfig("AGMCTest-Tiny-v0", algo="sac", self_imitation=1.0)
    with pytest.raises(ValueError, match="self_imitation"):
        SearchConfig("AGMCTest-Tiny-v0", self_imitation=-1.0)
    with pytest.raises(ValueError, match="SAC"):
        make_agent("sac", DummyVecEnv([tiny_env]), embedding="amc", self_imitation=1.0)
