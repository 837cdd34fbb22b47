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
from agmc_env.imagefolder import ImageFolderDataset, load_imagenet
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
    load: Callable[..., ImageDataset | ImageFolderDataset]  # (data_dir, download) → dataset


def _torchvision(name: str, weights: str = "DEFAULT") -> ModelPreset:
    """A torchvision constructor; its ImageNet checkpoint (URL + the sha256 prefix in the file name) if any."""
    try:
        url = torchvision.models.get_model_weights(name)[weights].url
    except (ValueError, KeyError):
        url = None
    checkpoint = Checkpoint(url.rsplit("/", 1)[1], url, url.rsplit("-", 1)[1].split(".")[0]) if url else None
    return ModelPreset(lambda n: torchvision.models.get_model(name, num_classes=n), "imagenet", checkpoint)


def _akamaster(depth: int, sha256: str) -> ModelPreset:
    name = f"resnet{depth}-{sha256[:8]}.th"
    return ModelPreset(lambda n: cifar_resnet(depth, n), "cifar10", Checkpoint(name, AKAMASTER + name, sha256))


MODELS: dict[str, ModelPreset] = {
    "resnet20": _akamaster(20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    "resnet32": _akamaster(32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    "resnet44": _akamaster(44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    "resnet56": _akamaster(56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
    "resnet110": _akamaster(110, "1d1ed7c2"),  # full digest not published; the name's prefix is checked
    # torchvision's ImageNet weights (IMAGENET1K_V1, the paper's baselines); other torchvision CNNs by name below
    "mobilenet_v2": _torchvision("mobilenet_v2", "IMAGENET1K_V1"),
    "vgg16": _torchvision("vgg16", "IMAGENET1K_V1"),
}

DATASETS: dict[str, DatasetPreset] = {
    "cifar10": DatasetPreset(load_cifar10),
    "imagenet": DatasetPreset(load_imagenet),
}


def model_preset(name: str) -> ModelPreset:
    """``MODELS[name]``, else any torchvision classification model by name (ImageNet weights where it has them)."""
    if name in MODELS:
        return MODELS[name]
    if name in torchvision.models.list_models(module=torchvision.models):
        return _torchvision(name)
    raise ValueError(f"unknown model {name!r}: not a preset ({sorted(MODELS)}) nor a torchvision classification "
                     "model (torchvision.models.list_models()); pass an nn.Module as model= instead")


def _choice(name: str, table: dict, what: str):
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}")
    return table[name]


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    return _choice(name, DATASETS, "dataset").load(data_dir, download)


def default_dataset(model: str) -> str:
    return model_preset(model).dataset


def build_model(name: str, num_classes: int, weights: str | os.PathLike | None | bool = True,
                cache_dir: str | os.PathLike | None = None, dataset: str | None = None) -> nn.Module:
    """Model ``name`` with its weights: ``weights=True`` → the preset's checkpoint (``$AGMC_WEIGHTS_DIR``,
    then the cache, then a verified download) when ``dataset`` is the one it was trained on (else random
    init); a path → that file; ``False``/``None`` → random init."""
    preset = model_preset(name)
    model = preset.build(num_classes)
    if weights is True and (preset.checkpoint is None or (dataset or preset.dataset) != preset.dataset):
        weights = None  # no published weights for this dataset: random init, as documented
    if weights is None or weights is False:
        return model
    ck = preset.checkpoint
    path = checkpoints.resolve(ck.filename if ck else "", ck.url if ck else None, ck.sha256 if ck else None,
                               weights=None if weights is True else weights, download_dir=cache_dir)
    return checkpoints.load_state_dict(model, path)
