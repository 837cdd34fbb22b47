"""Every bad input gets a clear error naming the problem and the fix."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import agmc_env  # noqa: F401  (registers the ids)
from agmc_env import AGMCEnv, zoo
from agmc_env.checkpoints import CheckpointError, load_state_dict, resolve
from agmc_env.data import DataError, load_cifar10
from agmc_env.models import cifar_resnet
from agmc_env.testing import tiny_env


# Every bad action seen so far (issue 14 and since) and what the error must say.
BAD_ACTIONS = [
    (np.array([np.nan], np.float32), "finite"), (np.array([np.inf], np.float32), "finite"),
    (np.array([-np.inf], np.float32), "finite"),
    (np.zeros(2, np.float32), r"shape \(1,\).*got shape \(2,\)"), (np.zeros((1, 1, 2), np.float32), "shape"),
    (np.array([]), "shape"),
    ("0.5", "must be a real number.*got str '0.5'"), (b"0.5", "must be a real number.*got bytes"),
    (["0.5"], "must be a real number.*got list"), (np.array([0.5 + 1j]), "must be a real number.*complex128"),
    (0.5 + 0j, "must be a real number.*got complex"), (True, "must be a real number.*got bool"),
    (np.array([True]), "must be a real number.*of bool"), (None, "must be a real number.*got NoneType"),
    (object(), "must be a real number.*got object"),
]


@pytest.mark.parametrize("action, match", BAD_ACTIONS, ids=[repr(a)[:30] for a, _ in BAD_ACTIONS])
def test_bad_action_is_refused(env, action, match):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


@pytest.mark.parametrize("action", [0.5, 1, np.float64(0.5), np.int64(1), [0.5], np.array([0.5], np.float16)])
def test_real_actions_of_any_numeric_type_are_taken(env, action):
    env.reset(seed=0)
    env.step(action)
    assert len(env.keep_ratios()) == 1


def test_out_of_range_action_is_clipped(env):
    env.reset(seed=0)
    env.step(np.array([7.0], dtype=np.float32))
    env.step(np.array([-3.0], dtype=np.float32))
    assert env.keep_ratios()[0] <= 1.0 and env.keep_ratios()[1] == pytest.approx(0.25)  # lbound on width 8 → 2/8


def test_step_before_reset(env):
    with pytest.raises(RuntimeError, match=r"step\(\) called before reset\(\); call reset\(\) first"):
        env.step(np.array([0.5], dtype=np.float32))


def test_step_after_the_end(env):
    env.run_actions(np.full(env.num_decisions, 0.5))
    with pytest.raises(RuntimeError, match="after the episode ended; call reset"):
        env.step(np.array([0.5], dtype=np.float32))


@pytest.mark.parametrize("count", [-1, 1])
def test_whole_episode_apis_need_one_value_per_decision(env, count):
    n = env.num_decisions + count
    with pytest.raises(ValueError, match=f"need {env.num_decisions} actions \\(one per decision\\), got {n}"):
        env.run_actions(np.full(n, 0.5))
    with pytest.raises(ValueError, match=f"need {env.num_decisions} keep ratios \\(one per decision\\), got {n}"):
        env.run_ratios(np.full(n, 0.5))


@pytest.mark.parametrize("kwargs, match", [
    ({"model": "resnet57"}, r"unknown model 'resnet57': not a preset \(\[.*resnet56.*torchvision"),
    ({"reward_metric": "top3"}, r"unknown reward_metric 'top3'; choose one of \('top1', 'top5'\)"),
    ({"reward": "top5"}, r"unknown reward 'top5'; choose one of \['acc', 'flops', 'params'\]"),
    ({"split": "train"}, r"unknown split"),
    ({"importance": "l3"}, r"unknown importance 'l3'"),
    ({"amp": "fp8"}, r"unknown amp"),
    ({"dataset": "imagenet42"}, r"unknown dataset 'imagenet42'; choose one of \['cifar10', 'imagenet'\]"),
])
def test_unknown_choices_list_the_valid_ones(kwargs, match):
    with pytest.raises(ValueError, match=match):
        if "model" in kwargs or "dataset" in kwargs:
            AGMCEnv(**kwargs)
        else:
            tiny_env(**kwargs)


def test_unknown_kwarg_lists_options():
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['flop_target'\].*flops_target"):
        tiny_env(flop_target=0.5)


def test_unknown_env_id():
    import gymnasium as gym

    with pytest.raises(gym.error.Error):
        gym.make("AGMC-ResNet57-v0")


class _Output(torch.nn.Module):
    """The tiny ResNet with its output changed: a tuple, a dict, a feature map or 3 classes instead of 10."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.net, self.kind, self.head3 = cifar_resnet(14).eval(), kind, torch.nn.Linear(10, 3)

    def forward(self, x):
        y = self.net(x)
        return {"tuple": lambda: (y, y), "dict": lambda: {"logits": y}, "classes3": lambda: self.head3(y),
                "feature_map": lambda: x}[self.kind]()


# Every bad option seen so far (issue 14 and since): the options given to the tiny env, and what the error must
# say (the option, the value, the fix). Add new cases here; the list only grows.
BAD_OPTIONS = [
    ({"flops_target": 0.0}, r"flops_target=0\.0 is out of range: it must be a number in \(0, 1\]"),
    ({"flops_target": -0.1}, r"flops_target=-0\.1 is out of range"),
    ({"flops_target": 1.5}, r"flops_target=1\.5 is out of range"),
    ({"flops_target": "0.5"}, r"flops_target='0\.5' \(str\) must be a number in \(0, 1\] \(flops_target=0\.5, not the str"),
    ({"flops_target": True}, r"flops_target=True \(bool\) must be a number"),
    ({"flops_target": None}, r"flops_target=None \(NoneType\) must be a number"),
    ({"lbound": "0.2"}, r"lbound='0\.2' \(str\) must be a number in \(0, 1\] \(lbound=0\.2"),
    ({"lbound": float("nan")}, r"lbound=nan is out of range"),
    ({"rbound": 1.5}, r"rbound=1\.5 is out of range"),
    ({"lbound": 0.8, "rbound": 0.5}, r"need 0 < lbound ≤ rbound ≤ 1, got lbound=0\.8, rbound=0\.5"),
    ({"granularity": "fine", "params_target": "0.3"}, r"params_target='0\.3' \(str\) must be a number in \(0, 1\] or None"),
    ({"granularity": "fine", "params_target": 0.0}, r"params_target=0\.0 is out of range"),
    ({"batch_size": -8}, r"batch_size=-8 is out of range: it must be an integer ≥ 1 or None"),
    ({"batch_size": 0}, r"batch_size=0 is out of range"),
    ({"batch_size": 2.5}, r"batch_size=2\.5 \(float\) must be an integer ≥ 1"),
    ({"max_nodes": 0}, r"max_nodes=0 is out of range: it must be an integer ≥ 1 or None"),
    ({"max_edges": -1}, r"max_edges=-1 is out of range"),
    ({"max_nodes": 10}, r"max_nodes=10/max_edges=None below this graph's \d+ nodes"),
    ({"channel_round": 2.5}, r"channel_round=2\.5 \(float\) must be an integer ≥ 1"),
    ({"channel_round": 0}, r"channel_round=0 is out of range"),
    ({"channel_round": 32}, r"channel_round=32 makes flops_target=0\.6 unreachable.*lower channel_round"),
    ({"val_size": 0}, r"val_size=0 is out of range: it must be an integer ≥ 1"),
    ({"val_size": True}, r"val_size=True \(bool\) must be an integer ≥ 1"),
    ({"val_size": "64"}, r"val_size='64' \(str\) must be an integer ≥ 1 \(val_size=64, not the string"),
    ({"calib_size": -1}, r"calib_size=-1 is out of range: it must be an integer ≥ 0"),
    ({"calib_size": 0}, r"calib_size=0 leaves no images for BN recalibration; set bn_recalibration=False"),
    ({"val_size": 250, "calib_size": 32}, r"val_size=250 \+ calib_size=32 = 282 images, but the training set has 256"),
    ({"split": "test", "test_size": -3}, r"test_size=-3 is out of range: it must be an integer ≥ 1 or None"),
    ({"split": "test", "test_size": 0}, r"test_size=0 is out of range"),
    ({"split": "test", "test_size": 2.0}, r"test_size=2\.0 \(float\) must be an integer"),
    ({"split": "test", "test_size": 1000}, r"test_size=1000 but the test set has 64 images; give test_size ≤ 64"),
    ({"split_seed": 1.5}, r"split_seed=1\.5 \(float\) must be an integer"),
    ({"prune_residual": "yes"}, r"prune_residual='yes' \(str\) must be True or False"),
    ({"bn_recalibration": 1}, r"bn_recalibration=1 \(int\) must be True or False"),
    ({"download": "no"}, r"download='no' \(str\) must be True or False"),
    ({"data_dir": 3}, r"data_dir=3 \(int\) must be a path"),
    ({"device": "banana"}, r"device='banana' is not a torch device; use 'auto', 'cpu'"),
    ({"granularity": None}, r"unknown granularity None; choose one of \('channel', 'fine'\)"),
    ({"model": _Output("classes3")}, r"model _Output returned shape \(2, 3\) for a batch of 2; it must return logits "
                                     r"\[batch, 10\]"),
    ({"model": _Output("tuple")}, r"model _Output returned a tuple, not a tensor; it must return logits \[batch, 10\]"),
    ({"model": _Output("dict")}, r"model _Output returned a dict, not a tensor"),
    ({"model": _Output("feature_map")}, r"model _Output returned shape \(2, 3, 16, 16\)"),
    ({"model": 123}, r"model=123 must be a preset or torchvision model name \(str\) or an nn.Module"),
    ({"dataset": 42}, r"dataset=42 must be 'cifar10', 'imagenet', an agmc_env.data.ImageDataset"),
    ({"weights": True}, r"weights=True must be a checkpoint path, None \(the preset's checkpoint"),
]


@pytest.mark.parametrize("kwargs, match", BAD_OPTIONS, ids=[str(k) for k, _ in BAD_OPTIONS])
def test_bad_option_names_option_value_and_fix(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):
        tiny_env(**kwargs)


@pytest.mark.parametrize("kwargs", [{"split": "test", "test_size": 64}, {"calib_size": 0, "bn_recalibration": False},
                                    {"batch_size": np.int64(16)}, {"flops_target": 1}, {"channel_round": 2}])
def test_edge_values_are_accepted(kwargs):
    env = tiny_env(**kwargs)
    info = env.run_actions(np.full(env.num_decisions, 0.5))
    assert 0.0 <= info["accuracy"] <= 1.0


def test_flops_target_below_reachable_names_minimum():
    with pytest.raises(ValueError, match="minimum reachable MACs ratio"):
        tiny_env(flops_target=0.05)


def test_missing_data_says_how(tmp_path, monkeypatch):
    monkeypatch.delenv("AGMC_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"AGMC_DATA_DIR.*data_dir=.*download=True"):
        load_cifar10(tmp_path)


def test_corrupt_data_batch_names_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_1"):
        load_cifar10(tmp_path)


def test_wrong_sha256_names_file(tmp_path):
    bad = tmp_path / "resnet20-12fca82f.th"
    torch.save({"state_dict": cifar_resnet(20).state_dict()}, bad)
    ck = zoo.MODELS["resnet20"].checkpoint
    with pytest.raises(CheckpointError, match=r"resnet20-12fca82f\.th has sha256"):
        resolve(ck.filename, None, ck.sha256, weights=bad)


def test_checkpoint_env_dir_is_verified(tmp_path, monkeypatch):
    (tmp_path / "resnet20-12fca82f.th").write_bytes(b"truncated download")
    monkeypatch.setenv("AGMC_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(CheckpointError, match="corrupt"):
        zoo.build_model("resnet20", 10)


def test_mismatching_keys_name_file(tmp_path):
    path = tmp_path / "r20.pt"
    torch.save(cifar_resnet(20).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"r20\.pt does not fit CifarResNet.*layer1\.3"):
        load_state_dict(cifar_resnet(32), path)


def test_unreadable_checkpoint_names_file(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"\x00junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_state_dict(cifar_resnet(20), path)


def test_offline_download_failure_explains(tmp_path, monkeypatch):
    monkeypatch.delenv("AGMC_WEIGHTS_DIR", raising=False)
    with pytest.raises(CheckpointError, match=r"could not download .*weights=PATH"):
        resolve("x.th", "http://127.0.0.1:9/x.th", None, download_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # no half-written file left behind
