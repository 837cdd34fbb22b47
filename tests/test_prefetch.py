"""The update's helper thread (``agents.prefetch``): the next replay batch, the target pass and the critic's view
run there in the order handed over, so DDPG/TD3's gradient steps reach the same parameters bit for bit; two
threads in all while it runs."""
from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import torch
from stable_baselines3.common.logger import configure

from agents.algorithms import make_agent
from agents.extractors import _Unrolled
from agents.prefetch import helper_thread, prefetch_default
from agmc_env.testing import tiny_env


@pytest.mark.parametrize("enabled", [True, False])
def test_tasks_run_in_the_order_handed_over_in_one_worker_or_at_once(enabled):
    calls, seen = [], []

    def task(i):
        def run_it():
            calls.append(i)
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return i
        return run_it

    before = torch.get_num_threads()
    with helper_thread(enabled) as run:
        futures = [run(task(i)) for i in range(4)]
        assert torch.get_num_threads() == (1 if enabled else before)  # the caller's pool, while the helper works
        assert [f.result() for f in futures] == [0, 1, 2, 3]
    assert calls == [0, 1, 2, 3] and torch.get_num_threads() == before
    names = {name for name, _ in seen}
    assert (names == {threading.current_thread().name}) != enabled and len(names) == 1


@pytest.mark.parametrize("enabled", [True, False])
def test_an_error_in_a_task_is_raised_where_its_result_is_taken_and_threads_are_restored(enabled):
    before = torch.get_num_threads()

    def broken():
        raise ValueError("broken buffer")

    with pytest.raises(ValueError, match="broken buffer"):
        with helper_thread(enabled) as run:
            run(broken).result()
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
def test_gradient_steps_with_a_helper_are_the_plain_loops_bit_for_bit(algo, embedding, imitation):
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


@pytest.mark.parametrize("helper", [False, True])
def test_every_forward_pass_of_a_step_reuses_the_unroll_its_draw_made(helper):
    env = tiny_env()
    model = make_agent("ddpg", env, embedding="gnn", episodes=8, warmup=4, seed=0, batch_size=8, self_imitation=2.0)
    model.learn(total_timesteps=4 * env.unwrapped.num_decisions)
    model.set_logger(configure(None, []))
    model.prefetch_batches = helper
    draws, unrolls = [], []
    draw, init = model._draw, _Unrolled.__init__

    def counted_draw(*args):
        draws.append(1)
        return draw(*args)

    def counted_init(self, *args, **kwargs):
        unrolls.append(args[-1] if len(args) == 6 else kwargs.get("rows"))
        init(self, *args, **kwargs)

    model._draw = counted_draw
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _Unrolled.__init__ = counted_init
        model.train(gradient_steps=5, batch_size=8)
    finally:
        _Unrolled.__init__ = init
        torch.set_num_threads(before)
    # one unroll per draw, of the stored rows: the targets, the critic, the actor and the critic's view all found it
    assert len(unrolls) == len(draws) > 0 and all(rows is not None for rows in unrolls)
