"""The one place where per-model and per-dataset facts live: constructors, checkpoints, input shapes.

Nothing else in the package knows model names; the graph analysis derives everything else.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torchvision
from torch import nn

from agmc_env import checkpoints
from agmc_env.data import ImageDataset, load_cifar10
from agmc_env.models import cifar_resnet

AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"


@dataclass(frozen=True)
class Checkpoint:
    filename: str
    url: str
    sha256: str  # full digest, or the 8-digit prefix the file name carries


@dataclass(frozen=True)
class ModelPreset:
    build: Callable[[int], nn.Module]  # num_classes → untrained module
    dataset: str
    checkpoint: Checkpoint | None  # pretrained weights for ``dataset``; None: random init unless weights=


@dataclass(frozen=True)
class DatasetPreset:
    load: Callable[..., ImageDataset]  # (data_dir, download) → ImageDataset
    input_shape: tuple[int, int, int]


def _akamaster(depth: int, sha256: str) -> ModelPreset:
    name = f"resnet{depth}-{sha256[:8]}.th"
    return ModelPreset(lambda n: cifar_resnet(depth, n), "cifar10", Checkpoint(name, AKAMASTER + name, sha256))


MODELS: dict[str, ModelPreset] = {
    "resnet20": _akamaster(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    "resnet32": _akamaster(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    "resnet44": _akamaster(44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    "resnet56": _akamaster(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
    "resnet110": _akamaster(110, "1d1ed7c2"),  # full digest not published; the name's prefix is checked
    # torchvision constructors on CIFAR-sized inputs; their ImageNet presets are a separate issue.
    "mobilenet_v2": ModelPreset(lambda n: torchvision.models.mobilenet_v2(num_classes=n), "cifar10", None),
    "vgg16": ModelPreset(lambda n: torchvision.models.vgg16(num_classes=n), "cifar10", None),
}

DATASETS: dict[str, DatasetPreset] = {
    "cifar10": DatasetPreset(load_cifar10, (3, 32, 32)),
}


def _choice(name: str, table: dict, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    return _choice(name, DATASETS, "dataset").load(data_dir, download)


def input_shape(name: str) -> tuple[int, int, int]:
    return _choice(name, DATASETS, "dataset").input_shape


def default_dataset(model: str) -> str:
    return _choice(model, MODELS, "model").dataset


def build_model(name: str, num_classes: int, weights: str | os.PathLike | None | bool = True,
                cache_dir: str | os.PathLike | None = None) -> nn.Module:
    """Preset ``name`` with its weights: ``weights=True`` → the preset's checkpoint (``$AGMC_WEIGHTS_DIR``,
    then the cache, then a verified download); a path → that file; ``False``/``None`` → random init."""
    preset = _choice(name, MODELS, "model")
    model = preset.build(num_classes)
    if weights is True and preset.checkpoint is None:
        weights = None  # no published weights for this dataset: random init, as documented
    if weights is None or weights is False:
        return model
    ck = preset.checkpoint
    path = checkpoints.resolve(ck.filename if ck else "", ck.url if ck else None, ck.sha256 if ck else None,
                               weights=None if weights is True else weights, download_dir=cache_dir)
    return checkpoints.load_state_dict(model, path)
