"""Checkpoint and dataset loading: formats, hashes, splits."""
from __future__ import annotations

import torch

from agmc_env import zoo
from agmc_env.checkpoints import load_state_dict, resolve, sha256_of
from agmc_env.data import held_out_split, normalised
from agmc_env.models import cifar_resnet
from tests.conftest import SHARED, integration


def test_plain_and_dataparallel_state_dicts_load(tmp_path):
    src = cifar_resnet(20)
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "dp.th"
    torch.save(src.state_dict(), plain)
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, wrapped)
    for path in (plain, wrapped):
        dst = load_state_dict(cifar_resnet(20), path)
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_resolve_prefers_explicit_path_then_env_dir(tmp_path, monkeypatch):
    f = tmp_path / "custom.pt"
    f.write_bytes(b"x")
    assert resolve("resnet20-12fca82f.th", None, "12fca82f", weights=f) == f  # other names: not hash-checked
    env_dir = tmp_path / "w"
    env_dir.mkdir()
    good = env_dir / "blob.th"
    good.write_bytes(b"payload")
    monkeypatch.setenv("AGMC_WEIGHTS_DIR", str(env_dir))
    assert resolve("blob.th", None, sha256_of(good)[:8]) == good


def test_held_out_split_is_disjoint_and_seeded():
    a, b = held_out_split(1000, 100, 50, seed=0), held_out_split(1000, 100, 50, seed=0)
    assert torch.equal(a.reward, b.reward)
    assert not set(a.reward.tolist()) & set(a.calib.tolist())
    assert len(set(a.reward.tolist()) | set(a.calib.tolist()) | set(a.train.tolist())) == 1000
    assert not torch.equal(held_out_split(1000, 100, 50, seed=1).reward, a.reward)


def test_normalised_is_channels_last_float():
    x = normalised(torch.full((2, 3, 4, 4), 255, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3)
    assert x.dtype == torch.float32 and torch.allclose(x, torch.ones_like(x))
    assert x.is_contiguous(memory_format=torch.channels_last)


@integration
def test_shared_cifar10_loads_without_md5():
    data = zoo.load_dataset("cifar10")
    assert data.train_images.shape == (50000, 3, 32, 32) and data.test_images.shape == (10000, 3, 32, 32)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10


@integration
def test_shared_akamaster_checkpoint_verifies_and_loads():
    model = zoo.build_model("resnet56", 10)
    ref = torch.load(SHARED / "weights" / "resnet56-4bfd9763.th", map_location="cpu", weights_only=True)["state_dict"]
    assert torch.equal(model.conv1.weight, ref["module.conv1.weight"])
