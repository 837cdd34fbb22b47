"""Shared fixtures. The tiny synthetic nets, data and envs live in ``agmc_env.testing`` (importable by the
smoke grid and by users); here only the pytest glue and the integration-data switch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.run_folder import RunFolder
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


@pytest.fixture
def killed_after(monkeypatch):
    """``killed_after(n, run)``: calls ``run()`` with the process "killed" (KeyboardInterrupt) right after the
    n-th episode is logged and before its checkpoint is written, the worst moment for resuming."""
    def call(n, run):
        real = RunFolder.log_episode

        def dying(self, *args, **kwargs):
            real(self, *args, **kwargs)
            if self.episodes == n:
                raise KeyboardInterrupt

        with monkeypatch.context() as patch:
            patch.setattr(RunFolder, "log_episode", dying)
            with pytest.raises(KeyboardInterrupt):
                run()
    return call
