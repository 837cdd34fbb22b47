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


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_action(env, value):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([value], dtype=np.float32))


@pytest.mark.parametrize("action", [np.zeros(2, np.float32), np.zeros((1, 1, 2), np.float32), np.array([])])
def test_wrong_action_shape(env, action):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(action)


def test_out_of_range_action_is_clipped(env):
    env.reset(seed=0)
    env.step(np.array([7.0], dtype=np.float32))
    env.step(np.array([-3.0], dtype=np.float32))
    assert env.keep_ratios()[0] <= 1.0 and env.keep_ratios()[1] == pytest.approx(0.25)  # lbound on width 8 → 2/8


def test_step_before_reset(env):
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.array([0.5], dtype=np.float32))


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


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5])
def test_flops_target_out_of_range(target):
    with pytest.raises(ValueError, match=r"flops_target must be in \(0, 1\]"):
        tiny_env(flops_target=target)


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
