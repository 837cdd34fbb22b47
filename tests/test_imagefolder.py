"""ImageNet-style ImageFolder data and torchvision models through AGMC-v0, on images the test writes itself."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from PIL import Image

import agmc_env  # noqa: F401
from agmc_env.data import DataError
from agmc_env.imagefolder import ImageFolderDataset, load_imagenet

CLASSES = ("n01", "n02", "n03")


def write_imagefolder(root, train_per_class: int = 8, val_per_class: int = 3, seed: int = 0):
    """Random RGB JPEGs/PNGs of varied sizes in train/<class>/ and val/<class>/."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(40, 90, size=2)
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
                img.save(root / split / c / (f"{i}.JPEG" if i % 2 else f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_imagefolder(tmp_path_factory.mktemp("imagenet"))


def test_imagefolder_decodes_only_what_is_asked(folder):
    data = ImageFolderDataset(folder, image_size=32, resize=36)
    assert (data.num_train, data.num_classes, data.classes) == (24, 3, list(CLASSES))
    images, labels = data.train_subset(torch.tensor([0, 9, 23]))
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2]
    assert data.train_subset(torch.tensor([0, 9, 23]))[0] is images  # decoded once, then cached
    test_images, test_labels = data.test_set()
    assert test_images.shape == (9, 3, 32, 32) and torch.bincount(test_labels).tolist() == [3, 3, 3]
    assert len(data.test_set(4)[0]) == 4


def test_load_imagenet_from_env_variable(folder, monkeypatch):
    monkeypatch.setenv("AGMC_DATA_DIR", str(folder))
    assert load_imagenet().num_train == 24
    monkeypatch.setenv("AGMC_DATA_DIR", str(folder.parent))
    with pytest.raises(DataError, match="no train/ and val/ folders"):
        load_imagenet()


def test_missing_class_folder_is_named(tmp_path):
    write_imagefolder(tmp_path, 2, 1)
    for f in (tmp_path / "val" / "n03").iterdir():
        f.unlink()
    (tmp_path / "val" / "n03").rmdir()
    with pytest.raises(DataError, match="same class folders"):
        ImageFolderDataset(tmp_path)


def test_corrupt_image_is_named(tmp_path):
    write_imagefolder(tmp_path, 2, 1)
    bad = tmp_path / "train" / "n01" / "0.png"
    bad.write_bytes(b"not an image")
    data = ImageFolderDataset(tmp_path, image_size=16, resize=16)
    with pytest.raises(DataError, match=r"cannot decode image .*0\.png"):
        data.train_subset(torch.arange(data.num_train))


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18"])
def test_torchvision_model_by_name_runs_an_episode(folder, name):
    data = ImageFolderDataset(folder, image_size=64, resize=72)
    env = gym.make("AGMC-v0", model=name, dataset=data, weights=False, val_size=12, calib_size=6,
                   device="cpu", amp="off", flops_target=0.6, max_episode_steps=-1).unwrapped
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, reward, done, _, info = env.step(np.array([0.3], dtype=np.float32))
    assert info["flops_ratio"] <= 0.6 + 1e-9
    assert 0.0 <= info["top1"] <= info["top5"] <= 1.0 and reward == info["top1"]
    assert env.pruned_model()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_top5_reward_metric(folder):
    data = ImageFolderDataset(folder, image_size=32, resize=36)
    env = gym.make("AGMC-v0", model="resnet18", dataset=data, weights=False, val_size=12, calib_size=6,
                   device="cpu", amp="off", reward_metric="top5", max_episode_steps=-1).unwrapped
    info = env.run_ratios([1.0] * env.num_decisions)
    assert info["reward"] == info["top5"] == 1.0  # 3 classes: the true one is always in the top 5


def test_imagenet_presets_are_registered():
    for env_id, target in (("AGMC-MobileNetV2-v0", 0.7), ("AGMC-VGG16-v0", 0.2)):
        spec = gym.spec(env_id)
        assert spec.kwargs["dataset"] == "imagenet" and spec.kwargs["flops_target"] == target


def test_torchvision_checkpoints_carry_their_hash_prefix():
    from agmc_env import zoo

    ck = zoo.MODELS["mobilenet_v2"].checkpoint
    assert ck.url == "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth" and ck.sha256 == "b0353104"
    assert zoo.model_preset("efficientnet_b0").checkpoint.filename.startswith("efficientnet_b0")


def test_mobilenet_preset_offline_with_weights_path(folder, tmp_path):
    """Offline users pass weights=PATH (a torchvision state dict); the preset's episode length matches."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "mobilenet_v2.pth"
    reference = torchvision.models.mobilenet_v2(num_classes=3)  # the synthetic tree has 3 classes
    torch.save(reference.state_dict(), path)
    env = gym.make("AGMC-MobileNetV2-v0", dataset=ImageFolderDataset(folder, image_size=64, resize=72), weights=str(path),
                   val_size=12, calib_size=6, device="cpu", amp="off")
    base = env.unwrapped
    assert torch.equal(dict(base.task.analysis.gm.named_modules())["features.0.0"].weight, reference.features[0][0].weight)
    env.reset(seed=0)
    steps, done, info = 0, False, {}
    while not done:
        _, _, terminated, truncated, info = env.step(np.array([1.0], dtype=np.float32))
        done, steps = terminated or truncated, steps + 1
    assert terminated and steps == base.num_decisions == 18 and info["flops_ratio"] <= 0.7
