"""The env as gymnasium and SB3 see it: spaces, checkers, registration, episode protocol."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import agmc_env  # noqa: F401  (registers the ids)
from agmc_env.graph import FEATURES
from agmc_env.testing import tiny_dataset, tiny_env


def test_gymnasium_checker(env):
    gym_check_env(env, skip_render_check=True)


def test_sb3_checker(env):
    sb3_check_env(env, warn=False)


def test_checkers_pass_in_fine_grained_mode():
    fine = tiny_env(granularity="fine", params_target=0.5, lbound=0.1)
    gym_check_env(fine, skip_render_check=True)
    sb3_check_env(fine, warn=False)


def test_registered_ids():
    for env_id in ("AGMC-v0", "AGMC-ResNet20-v0", "AGMC-ResNet56-v0"):
        assert env_id in gym.registry
    assert gym.registry["AGMC-ResNet56-v0"].kwargs["flops_target"] == 0.5
    assert gym.registry["AGMC-ResNet56-v0"].max_episode_steps == 27  # its decision count
    assert gym.registry["AGMC-ResNet20-v0"].max_episode_steps == 9


def test_generic_id_takes_a_module_and_dataset():
    env = gym.make("agmc_env:AGMC-v0", model=torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)),
        dataset=tiny_dataset(), val_size=32, calib_size=16, device="cpu", amp="off", flops_target=0.8)
    assert env.unwrapped.num_decisions == 2
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_episode_protocol(env):
    obs, info = env.reset(seed=1)
    assert obs["decision_index"][0] == 0 and info["keep_ratios"] == []
    T = env.num_decisions
    for t in range(T):
        obs, reward, terminated, truncated, info = env.step(np.array([0.5], dtype=np.float32))
        assert env.observation_space.contains(obs)
        assert not truncated
        assert terminated == (t == T - 1)
        if t < T - 1:
            assert reward == 0.0
    assert reward == info["accuracy"] and 0.0 <= reward <= 1.0
    assert len(info["keep_ratios"]) == T
    assert info["flops_ratio"] <= env.task.options["flops_target"] + 1e-9
    assert set(info["timing"]) == {"prune_s", "repair_s", "calibrate_s", "evaluate_s", "reward_s"}  # the pipeline's stages
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.5], dtype=np.float32))


def test_observation_tracks_decisions(env):
    obs0, _ = env.reset(seed=0)
    obs1, *_ = env.step(np.array([0.0], dtype=np.float32))
    keep_out = FEATURES.index("keep_out")
    current = FEATURES.index("current")
    assert obs0["x"][:, current].sum() > 0
    assert not np.array_equal(obs0["x"][:, current], obs1["x"][:, current])  # the current decision moved on
    assert obs1["x"][:, keep_out].min() < 1.0  # decision 0's ratio is now visible
    assert obs1["layer"][10] == pytest.approx(env.keep_ratios()[0])
    assert 0 < obs1["layer"][8] < 1  # MACs reduced so far
    assert np.array_equal(obs0["x"][:, :current - 2], obs1["x"][:, :current - 2])  # static part unchanged


def test_pruned_model_runs_standalone_and_is_smaller(env):
    env.reset(seed=0)
    info = env.run_ratios([0.3] * env.num_decisions)
    model = env.pruned_model()
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == info["params"] < env.task.cost.base_params
    out = model(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 10)


def test_original_model_is_never_modified(env):
    before = {k: v.clone() for k, v in env.task.analysis.gm.state_dict().items()}
    env.run_ratios([0.2] * env.num_decisions)
    env.run_ratios([0.7] * env.num_decisions)
    after = env.task.analysis.gm.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_graph_is_pyg_data(env):
    env.reset(seed=0)
    data = env.graph
    assert data.x.shape == (env.op_graph.num_nodes, len(FEATURES))
    assert data.edge_index.shape[0] == 2 and int(data.edge_index.max()) < data.num_nodes


def test_padding_to_max_nodes():
    env = tiny_env(max_nodes=200, max_edges=300)
    obs, _ = env.reset(seed=0)
    assert obs["x"].shape[0] == 200 and obs["edge_index"].shape[1] == 300
    assert obs["node_mask"].sum() == env.op_graph.num_nodes
    assert obs["edge_mask"].sum() == env.op_graph.edge_index.shape[1]


def test_reward_variants():
    acc = tiny_env(reward="acc").run_ratios([0.5] * 6)
    flops = tiny_env(reward="flops").run_ratios([0.5] * 6)
    assert flops["reward"] == pytest.approx(-(1 - flops["accuracy"]) * np.log(flops["macs"]))
    assert acc["reward"] == acc["accuracy"]
