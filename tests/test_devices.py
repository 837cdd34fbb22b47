"""The CUDA-dependent choices, checked without a GPU (CI has none): device resolution, per-device batches,
precision, the agent on the env's device, and a clear refusal when CUDA is asked for but absent."""
from __future__ import annotations

import pytest
import torch

from agmc_env import evaluate
from agmc_env.evaluate import CALIB_BATCH, CPU_BATCH, CUDA_BATCH, Evaluator, resolve_device


def test_auto_picks_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match="device='cuda:2': this machine has 2 CUDA device\\(s\\); use 'cuda' or"):
        resolve_device("cuda:2")


def test_the_agent_runs_on_the_envs_device(tmp_path, monkeypatch):
    """``--device cpu`` on a CUDA machine: SB3's "auto" would have put the agent on the GPU."""
    import agents.search
    from agents.run_folder import SearchConfig

    devices, make_agent = [], agents.search.make_agent
    monkeypatch.setattr(agents.search, "make_agent",
                        lambda *args, **kwargs: devices.append(kwargs["device"]) or make_agent(*args, **kwargs))
    config = SearchConfig("AGMCTest-Tiny-v0", episodes=2, warmup=1, env_kwargs={"device": "cpu"})
    agents.search.run_search(config, tmp_path / "run", progress=False)
    assert devices == [torch.device("cpu")]


def test_cuda_asked_for_but_absent_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False; use device='cpu'"):
        resolve_device("cuda")


def _evaluator(device: str, amp: str = "auto") -> Evaluator:
    empty = torch.zeros(0, 3, 8, 8)
    return Evaluator(empty, torch.zeros(0, dtype=torch.long), empty, torch.device(device), amp=amp)


def test_batches_per_device():
    assert _evaluator("cuda").batch_size == CUDA_BATCH and _evaluator("cpu").batch_size == CPU_BATCH
    assert CALIB_BATCH["cuda"] >= CALIB_BATCH["cpu"]


@pytest.mark.parametrize("supported, expected", [(True, torch.bfloat16), (False, None)])
def test_cuda_uses_bf16_where_the_card_has_it(monkeypatch, supported, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
    ev = _evaluator("cuda")
    ev.choose_precision(torch.nn.Identity())  # no accuracy pass on CUDA: bf16 is exact enough there
    assert ev.dtype is expected and ev.amp_check == {}


def test_cpu_without_native_bf16_or_calibration_images_runs_fp32(monkeypatch):
    monkeypatch.setattr(evaluate, "bf16_supported", lambda device: False)
    ev = _evaluator("cpu")  # no calibration images: no int8 scales
    ev.choose_precision(torch.nn.Identity())
    assert ev.dtype is None
