"""Datasets as in-memory uint8 tensors, the fixed held-out splits, and their normalised device copies.

CIFAR-10 is read from the official ``cifar-10-batches-py`` pickle layout with our own reader (no md5
check, so re-made copies such as ``../shared/data/cifar10`` load). Location: ``data_dir=``, else
``$AGMC_DATA_DIR``; a missing folder is downloaded through torchvision only when ``download=True``.
"""
from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

DATA_ENV = "AGMC_DATA_DIR"
CIFAR_FOLDER = "cifar-10-batches-py"


class DataError(RuntimeError):
    """The dataset is missing or unreadable."""


@dataclass(frozen=True)
class ImageDataset:
    """Images as uint8 NCHW tensors (or already-float tensors for synthetic data) plus labels."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.train_images) != len(self.train_labels) or len(self.test_images) != len(self.test_labels):
            raise ValueError("ImageDataset: images and labels differ in length")

    # The interface the env reads (shared with the lazily decoded ImageFolderDataset).
    @property
    def num_train(self) -> int:
        return len(self.train_images)

    @property
    def num_test(self) -> int:
        return len(self.test_images)

    def train_subset(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_images[idx], self.train_labels[idx]

    def test_set(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.test_images[:limit], self.test_labels[:limit]


@dataclass(frozen=True)
class Split:
    """Disjoint index sets into the training images: the reward split, the BN-calibration images, the rest."""

    reward: torch.Tensor
    calib: torch.Tensor
    train: torch.Tensor


def held_out_split(num_train: int, val_size: int, calib_size: int, seed: int = 0) -> Split:
    """A seeded permutation of the training set: first ``val_size`` → reward, next ``calib_size`` → calibration."""
    if val_size < 1 or calib_size < 0 or val_size + calib_size > num_train:
        raise ValueError(
            f"val_size={val_size} and calib_size={calib_size} must be ≥1 and ≥0 and fit in the {num_train} training images"
        )
    perm = torch.randperm(num_train, generator=torch.Generator().manual_seed(seed))
    return Split(perm[:val_size], perm[val_size:val_size + calib_size], perm[val_size + calib_size:])


def normalised(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
               device: torch.device | str = "cpu", channels_last: bool = True) -> torch.Tensor:
    """uint8 (0–255) or float (0–1) images → normalised float32 on ``device``, once, in the layout evaluation uses."""
    x = images.to(device)
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    m = torch.tensor(mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, -1, 1, 1)
    x = (x - m) / s
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (OSError, pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}; re-download it (download=True)") from exc
    return data, labels


def _cifar_folder(data_dir: str | os.PathLike | None) -> Path | None:
    base = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not base:
        return None
    base = Path(base).expanduser()
    for candidate in (base, base / CIFAR_FOLDER, base / "cifar10" / CIFAR_FOLDER):
        if (candidate / "test_batch").is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _load_cifar10_folder(folder: Path) -> ImageDataset:
    train = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_batch(folder / "test_batch")
    return ImageDataset(
        train_images=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_labels=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_images=torch.from_numpy(test_x),
        test_labels=torch.from_numpy(test_y),
        num_classes=10,
        # The akamaster checkpoints were trained with ImageNet statistics; the zoo may override per model.
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )


def load_cifar10(data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageDataset:
    """CIFAR-10 from ``data_dir`` / ``$AGMC_DATA_DIR`` (the folder or its parent); downloaded only if asked."""
    folder = _cifar_folder(data_dir)
    if folder is None and download:
        import torchvision

        root = Path(data_dir or os.environ.get(DATA_ENV) or Path.home() / ".cache" / "agmc" / "data").expanduser()
        torchvision.datasets.CIFAR10(root=str(root), train=True, download=True)
        folder = _cifar_folder(root)
    if folder is None:
        where = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
        raise DataError(
            f"CIFAR-10 not found (looked for {CIFAR_FOLDER}/test_batch under {where!r}): set ${DATA_ENV} or "
            f"data_dir= to the folder holding {CIFAR_FOLDER}, or pass download=True to fetch it"
        )
    return _load_cifar10_folder(folder.resolve())
