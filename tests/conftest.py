"""Shared fixtures. The tiny synthetic nets, data and envs live in ``agmc_env.testing`` (importable by the
smoke grid and by users); here only the pytest glue and the integration-data switch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from agmc_env import AGMCEnv
from agmc_env.testing import tiny_env

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def env() -> AGMCEnv:
    return tiny_env()


def have_shared_data() -> bool:
    return bool(os.environ.get("AGMC_DATA_DIR")) and bool(os.environ.get("AGMC_WEIGHTS_DIR"))


integration = pytest.mark.skipif(
    not have_shared_data(),
    reason="integration test: set AGMC_DATA_DIR (CIFAR-10 folder) and AGMC_WEIGHTS_DIR (akamaster checkpoints)",
)
