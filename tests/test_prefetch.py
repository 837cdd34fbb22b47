"""Replay batches drawn one step ahead in a worker thread (``agents.prefetch``): the same draws in the same order,
so DDPG/TD3's gradient steps reach the same parameters bit for bit; two threads in all while it runs."""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure

from agents.algorithms import make_agent
from agents.prefetch import prefetch_default, prefetched
from agmc_env.testing import tiny_env


def test_prefetched_yields_the_plain_loops_results_in_order_drawn_ahead_in_one_worker():
    calls, threads_seen = [], []

    def draw():
        calls.append(len(calls))
        threads_seen.append((threading.current_thread().name, torch.get_num_threads()))
        return calls[-1]

    before = torch.get_num_threads()
    items = prefetched(draw, 4)
    assert next(items) == 0
    assert torch.get_num_threads() == 1  # the caller's intra-op pool, while the worker draws
    assert list(items) == [1, 2, 3] and calls == [0, 1, 2, 3]  # no draw beyond the count
    assert torch.get_num_threads() == before
    assert {name for name, _ in threads_seen} == {threads_seen[0][0]} != {threading.current_thread().name}
    assert list(prefetched(draw, 0)) == []


def test_an_error_in_a_draw_is_raised_where_its_result_is_taken_and_threads_are_restored():
    before = torch.get_num_threads()

    def draw():
        raise ValueError("broken buffer")

    with pytest.raises(ValueError, match="broken buffer"):
        list(prefetched(draw, 3))
    assert torch.get_num_threads() == before


def test_default_is_on_for_a_cpu_with_two_threads_only():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert prefetch_default(torch.device("cpu"))
        assert not prefetch_default(torch.device("cuda"))
        torch.set_num_threads(1)  # e.g. one of several searches side by side
        assert not prefetch_default(torch.device("cpu"))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("embedding, expected", [("gnn", True), ("gnn-lstm", False), ("amc", False)])
def test_agents_prefetch_by_default_with_the_plain_graph_encoder_only(embedding, expected):
    env = tiny_env()
    model = make_agent("ddpg", env, embedding=embedding, episodes=3, warmup=2, seed=0, batch_size=8)
    assert model.prefetch_batches is None  # decided at each update, from the threads torch has then
    model.learn(total_timesteps=2 * env.unwrapped.num_decisions)
    model.set_logger(configure(None, []))
    sample, samplers = model.replay_buffer.sample, set()

    def recorded(*args, **kwargs):
        samplers.add(threading.current_thread().name)
        return sample(*args, **kwargs)

    model.replay_buffer.sample = recorded
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model.train(gradient_steps=3, batch_size=8)
    finally:
        torch.set_num_threads(before)
    assert (samplers != {threading.current_thread().name}) == expected


@pytest.mark.parametrize("algo, embedding, imitation", [("ddpg", "gnn", 2.0), ("td3", "gnn", 0.0),
                                                         ("ddpg", "gnn-lstm", 2.0), ("ddpg", "amc", 2.0)])
def test_prefetched_gradient_steps_are_the_plain_loops_bit_for_bit(algo, embedding, imitation):
    env = tiny_env()
    T = env.unwrapped.num_decisions
    model = make_agent(algo, env, embedding=embedding, episodes=8, warmup=4, seed=0, batch_size=8,
                       self_imitation=imitation)
    model.learn(total_timesteps=4 * T)  # warm-up: the replay buffer holds 4 episodes (and an elite)
    model.set_logger(configure(None, []))
    results, before = [], torch.get_num_threads()
    for prefetch in (False, True):
        agent = copy.deepcopy(model)
        agent.prefetch_batches = prefetch
        torch.manual_seed(1)
        np.random.seed(1)  # SB3's replay sampling
        torch.set_num_threads(1)  # the thread count prefetching trains at: some kernels sum per thread
        try:
            agent.train(gradient_steps=7, batch_size=8)
        finally:
            torch.set_num_threads(before)
        results.append((agent.policy.state_dict(), agent.replay_buffer.baseline, np.random.randint(1 << 30)))
    (plain, baseline, draw), (ahead, baseline_ahead, draw_ahead) = results
    assert all(torch.equal(plain[k], ahead[k]) for k in plain)
    assert baseline == baseline_ahead and draw == draw_ahead  # the same draws: the RNG ends where it did
