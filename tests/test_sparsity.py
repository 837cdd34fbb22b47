"""Fine-grained mode: per-layer magnitude sparsity under a non-zero-parameter budget."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import agmc_env  # noqa: F401
from agmc_env.budget import WINDOW
from agmc_env.sparsity import WEIGHT_LAYERS, load_sparse, nonzero_params, save_sparse
from agmc_env.testing import tiny_dataset

TARGET = 0.4


@pytest.fixture(scope="module")
def env():
    return gym.make("AGMC-v0", model="resnet20", dataset=tiny_dataset(size=32), weights=False, val_size=32,
                    calib_size=16, device="cpu", amp="off", granularity="fine", params_target=TARGET,
                    lbound=0.05, max_episode_steps=-1).unwrapped


def test_decisions_are_the_weight_layers(env):
    layers = [m for m in env.task.analysis.gm.modules() if isinstance(m, WEIGHT_LAYERS)]
    assert env.num_decisions == len(layers) == 20  # ResNet-20: 19 convs + the classifier
    assert env.observation_space["x"].shape[0] == env.op_graph.num_nodes
    assert env.op_graph.out_decision.max() == env.num_decisions - 1


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.lists(st.floats(0.0, 1.0), min_size=20, max_size=20),
                 st.sampled_from([[0.0] * 20, [1.0] * 20, [t % 2 for t in range(20)], [(t + 1) % 2 for t in range(20)]])))
def test_budget_window_holds_for_any_actions(env, actions):
    env.reset()
    for a in actions:
        env._decide(np.array([a], dtype=np.float32))
    nonzero, base = env.mode.sparsity.nonzero(env._counts), env.mode.sparsity.base_params
    assert (TARGET - WINDOW) * base <= nonzero <= TARGET * base


def test_sparsity_matches_the_decided_counts(env):
    """Measured on the module: each layer keeps exactly its count (the largest magnitudes), so the
    non-zero fraction equals the target to within one layer's rounding."""
    info = env.run_ratios([0.05] + [1.0] * (env.num_decisions - 1))
    model = env.pruned_model()
    nonzero, weights = nonzero_params(model)
    decided = env.mode.sparsity.nonzero(np.array(info["counts"]))
    # weights that were exactly zero already (random init draws a few now and then) stay zero when kept
    zeros_before = sum(int((m.weight == 0).sum()) for m in env.task.analysis.gm.modules() if isinstance(m, WEIGHT_LAYERS))
    assert nonzero == info["nonzero_params"] and 0 <= decided - nonzero <= zeros_before
    assert nonzero <= decided <= TARGET * env.mode.sparsity.base_params
    assert TARGET * env.mode.sparsity.base_params - decided <= env.mode.widths.max()  # the wall used the budget up
    assert info["flops_ratio"] == 1.0  # zeros are not speed: dense MACs unchanged
    original = dict(env.task.analysis.gm.named_modules())
    for (name, m), k in zip([(n, m) for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)], info["counts"]):
        w0 = original[name].weight.detach().abs().flatten()
        kept = m.weight.detach().flatten() != 0
        assert k - int((w0 == 0).sum()) <= int(kept.sum()) <= k
        if k < len(w0):  # the largest magnitudes survive
            assert w0[kept].min() >= w0[~kept].max()


def test_sparse_export_round_trips(env, tmp_path):
    env.run_ratios([0.3] * env.num_decisions)
    model = env.pruned_model()
    save_sparse(model, tmp_path / "sparse.pt")
    blob = torch.load(tmp_path / "sparse.pt", weights_only=True)
    assert blob["state_dict"]["conv1.weight"].is_sparse
    fresh = load_sparse(gym.make("AGMC-v0", model="resnet20", dataset=tiny_dataset(size=32), weights=False,
                                 val_size=32, calib_size=16, device="cpu", amp="off").unwrapped.task.analysis.gm,
                        tmp_path / "sparse.pt")
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_fine_mode_options_are_checked():
    kwargs = {"model": "resnet20", "dataset": tiny_dataset(size=32), "weights": False, "val_size": 32,
              "calib_size": 16, "device": "cpu", "amp": "off"}
    with pytest.raises(ValueError, match="needs params_target"):
        gym.make("AGMC-v0", granularity="fine", **kwargs)
    with pytest.raises(ValueError, match="params_target applies to granularity='fine'"):
        gym.make("AGMC-v0", params_target=0.5, **kwargs)
    with pytest.raises(ValueError, match=r"below the minimum reachable non-zero fraction .* raise params_target"):
        gym.make("AGMC-v0", granularity="fine", params_target=0.01, **kwargs)
    with pytest.raises(ValueError, match="unknown granularity 'coarse'"):
        gym.make("AGMC-v0", granularity="coarse", **kwargs)
