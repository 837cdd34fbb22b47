"""Shared fixtures: tiny synthetic data and nets, so unit tests run in seconds on a CPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from agmc_env import AGMCEnv
from agmc_env.data import ImageDataset
from agmc_env.models import cifar_resnet

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and shifts, so a wrongly kept/dropped channel shows in the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def tiny_dataset(n_train: int = 256, n_test: int = 64, size: int = 16, seed: int = 0) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(
        train_images=torch.randint(0, 256, (n_train, 3, size, size), generator=g, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (n_train,), generator=g),
        test_images=torch.randint(0, 256, (n_test, 3, size, size), generator=g, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (n_test,), generator=g),
        num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )


def tiny_env(**kwargs) -> AGMCEnv:
    torch.manual_seed(0)
    options = dict(model=randomise_bn(cifar_resnet(14)), dataset=tiny_dataset(), val_size=64, calib_size=32,
                   device="cpu", amp="off", flops_target=0.6)
    options.update(kwargs)
    return AGMCEnv(**options)


@pytest.fixture
def env() -> AGMCEnv:
    return tiny_env()


def have_shared_data() -> bool:
    return bool(os.environ.get("AGMC_DATA_DIR")) and bool(os.environ.get("AGMC_WEIGHTS_DIR"))


integration = pytest.mark.skipif(
    not have_shared_data(),
    reason="integration test: set AGMC_DATA_DIR (CIFAR-10 folder) and AGMC_WEIGHTS_DIR (akamaster checkpoints)",
)


def tiny_env_factory(**kwargs) -> AGMCEnv:
    """Entry point of the test-only id ``AGMCTest-Tiny-v0`` (JSON-serialisable kwargs, like a real id)."""
    return tiny_env(**kwargs)


import gymnasium as _gym  # noqa: E402

if "AGMCTest-Tiny-v0" not in _gym.registry:
    _gym.register(id="AGMCTest-Tiny-v0", entry_point="tests.conftest:tiny_env_factory")
