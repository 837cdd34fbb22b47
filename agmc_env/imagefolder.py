"""ImageNet-style datasets in torchvision's ImageFolder layout, decoded lazily and only where needed.

``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG`` (class folders sorted → label ids, as
``torchvision.datasets.ImageFolder`` does). A search reads only the reward and calibration images (a seeded
subset of ``train/``) and, for test scores, ``val/``: those are decoded once (resize the short side, centre
crop: the standard evaluation transform), kept as uint8 tensors, and the env moves them to its device once.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from agmc_env.data import DATA_ENV, DataError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _scan(folder: Path, classes: list[str] | None = None) -> tuple[list[str], list[Path], list[int]]:
    if not folder.is_dir():
        raise DataError(f"ImageFolder split {folder} not found: data_dir must hold train/ and val/, each with one "
                        f"sub-folder of images per class (torchvision ImageFolder layout)")
    found = sorted(d.name for d in os.scandir(folder) if d.is_dir())
    classes = found if classes is None else classes
    if found != classes:
        raise DataError(f"{folder} has class folders {found[:3]}... ({len(found)}) but train/ has "
                        f"{classes[:3]}... ({len(classes)}); both splits need the same class folders")
    files, labels = [], []
    for label, name in enumerate(classes):
        images = sorted(e.path for e in os.scandir(folder / name) if e.name.lower().endswith(EXTENSIONS))
        files += [Path(f) for f in images]
        labels += [label] * len(images)
    if not files:
        raise DataError(f"no images ({', '.join(EXTENSIONS)}) under {folder}/<class>/")
    return classes, files, labels


def decode(path: Path, size: int, resize: int) -> torch.Tensor:
    """uint8 [3, size, size]: short side resized to ``resize`` (antialiased), then centre-cropped."""
    from torchvision.io import ImageReadMode, decode_image, read_file
    from torchvision.transforms.v2 import functional as F

    try:
        img = decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except RuntimeError as exc:
        raise DataError(f"cannot decode image {path}: {exc}; remove or replace the file") from exc
    return F.center_crop(F.resize(img, [resize], antialias=True), [size, size])


class ImageFolderDataset:
    """The env-facing dataset interface (``num_train``, ``train_subset``, ``test_set``) over image files."""

    def __init__(self, root: str | os.PathLike, image_size: int = 224, resize: int = 256, workers: int = 8) -> None:
        self.root = Path(root)
        self.image_size, self.resize, self.workers = image_size, resize, workers
        self.classes, self._train_files, train_labels = _scan(self.root / "train")
        _, self._test_files, test_labels = _scan(self.root / "val", self.classes)
        self.train_labels = torch.tensor(train_labels)
        self.test_labels = torch.tensor(test_labels)
        self.num_classes = len(self.classes)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._cache: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}

    @property
    def num_train(self) -> int:
        return len(self._train_files)

    @property
    def num_test(self) -> int:
        return len(self._test_files)

    def _decode(self, split: str, files: list[Path], idx: list[int]) -> torch.Tensor:
        key = (split, tuple(idx))
        if key not in self._cache:  # decoded once per index set (an env and its test twin share a dataset)
            with ThreadPoolExecutor(self.workers) as pool:  # torchvision's decoders release the GIL
                images = list(pool.map(lambda i: decode(files[i], self.image_size, self.resize), idx))
            self._cache[key] = torch.stack(images)
        return self._cache[key]

    def train_subset(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ids = idx.tolist()
        return self._decode("train", self._train_files, ids), self.train_labels[idx]

    def test_set(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``val/``; with ``limit``, a seeded random subset of that many images (the same for every env)."""
        n = len(self._test_files)
        ids = list(range(n)) if limit is None or limit >= n else \
            sorted(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:limit].tolist())
        return self._decode("val", self._test_files, ids), self.test_labels[ids]


def load_imagenet(data_dir: str | os.PathLike | None = None, download: bool = False) -> ImageFolderDataset:
    """ImageNet (or any ImageFolder tree) from ``data_dir`` / ``$AGMC_DATA_DIR``: the folder holding train/ and
    val/, or its parent's ``imagenet/``. ImageNet cannot be downloaded automatically (licence)."""
    base = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not base:
        raise DataError(f"ImageNet location unknown: set ${DATA_ENV} or data_dir= to the folder holding train/ and "
                        "val/ (ImageFolder layout)")
    base = Path(base).expanduser()
    for candidate in (base, base / "imagenet"):
        if (candidate / "train").is_dir() and (candidate / "val").is_dir():
            return ImageFolderDataset(candidate)
    hint = " (download=True cannot fetch ImageNet: its licence requires a manual download)" if download else ""
    raise DataError(f"no train/ and val/ folders under {base} or {base / 'imagenet'}{hint}")
