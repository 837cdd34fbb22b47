"""A pruning task is built once and shared: envs on one task reuse it and behave identically."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import agmc_env
from agmc_env import AGMCEnv, make_task
from agmc_env.modes import MODES, ChannelMode, FineMode, PruningMode
from agmc_env.options import OPTIONS
from agmc_env.testing import tiny_options, tiny_task


def _play(env, actions):
    env.reset(seed=0)
    info = {}
    for a in actions:
        *_, info = env.step(np.array([a], dtype=np.float32))
    return info


def test_two_envs_on_one_task_share_it_and_agree():
    task = tiny_task()
    a, b = AGMCEnv(task=task), gym.make("AGMCTest-Tiny-v0", task=task).unwrapped
    assert a.task is b.task is task
    actions = np.random.default_rng(0).uniform(0, 1, a.num_decisions)
    ia, ib = _play(a, actions), _play(b, actions)
    for key in ("reward", "accuracy", "flops_ratio", "params_ratio", "counts", "keep_ratios"):
        assert ia[key] == ib[key], key
    assert a.pruned_model() is not b.pruned_model()  # per-env episode state, shared task


def test_env_on_a_task_equals_env_that_builds_its_own():
    actions = np.random.default_rng(1).uniform(0, 1, 6)
    own = _play(AGMCEnv(**tiny_options()), actions)
    shared = _play(AGMCEnv(task=tiny_task()), actions)
    assert own["reward"] == shared["reward"] and own["counts"] == shared["counts"]


def test_gym_make_with_a_task_builds_nothing_again(monkeypatch):
    task = tiny_task()
    monkeypatch.setattr(agmc_env.task, "analyse", lambda *a, **k: pytest.fail("traced again"))
    env = gym.make("AGMC-v0", task=task, max_episode_steps=-1)
    assert env.unwrapped.task is task


def test_options_beside_a_task_must_agree():
    task = tiny_task()
    AGMCEnv(task=task, flops_target=0.6, val_size=64)  # the task's own values are fine
    with pytest.raises(ValueError, match="flops_target=0.5 .*task has 0.6"):
        AGMCEnv(task=task, flops_target=0.5)
    with pytest.raises(TypeError, match="unknown option"):
        AGMCEnv(task=task, flops_targte=0.5)


def test_make_task_from_an_env_id_uses_the_ids_options():
    task = make_task("AGMCTest-Tiny-v0", flops_target=0.7)  # an id with its own factory
    assert task.options["flops_target"] == 0.7 and task.options["val_size"] == 64
    direct = make_task(tiny_options()["model"], dataset=tiny_options()["dataset"], device="cpu", amp="off",
                       val_size=32, calib_size=16)
    assert direct.options["flops_target"] == 0.5  # the declared default
    assert direct.num_decisions == task.num_decisions


@pytest.mark.parametrize("granularity, extra, cls", [("channel", {}, ChannelMode),
                                                      ("fine", {"params_target": 0.5, "lbound": 0.1}, FineMode)])
def test_each_granularity_is_one_pruning_mode(granularity, extra, cls):
    assert MODES[granularity] is cls
    task = tiny_task(granularity=granularity, **extra)
    mode = task.mode
    assert isinstance(mode, PruningMode) and type(mode) is cls
    counts = [mode.clip(t, mode.desired(t, 1.0), np.full(len(mode.widths), 0)) for t in range(len(mode.widths))]
    assert mode.kept_cost(np.array(mode.widths)) == mode.base_cost
    model = mode.build([int(w) for w in mode.widths])
    assert mode.kept_params(model, sum(p.numel() for p in model.parameters())) <= task.cost.base_params
    assert all(1 <= c <= w for c, w in zip(counts, mode.widths))


def test_every_declared_option_is_in_the_env_docstring():
    for opt in OPTIONS:
        assert f"``{opt.name}``" in AGMCEnv.__doc__, opt.name
