"""Packs what a search grid needs onto a GPU machine that gets the repository only (64 MiB may travel).

CIFAR-10's six batches are 186 MB and barely compress (xz: 76 %), but a search only reads the reward,
calibration and repair-statistics images (seeded split of the training set) and the test batch. This writes the official layout
with every *other* training image zeroed, so the batches xz to almost nothing, keeps the test batch intact,
and copies the checkpoint and the Python wheels the GPU image lacks:

    python -m benchmarks.device_payload --model resnet56 --out device_payload

The zeroed images are never read by a search (``tests`` never see this folder); fine-tuning, which needs the
full training set, cannot run from it and refuses nothing by itself, so do not point ``agmc finetune`` at it.
"""
from __future__ import annotations

import argparse
import lzma
import os
import pickle
import shutil
from pathlib import Path

import numpy as np

from agmc_env.data import CIFAR_FOLDER, _cifar_folder, held_out_split


def write_sparse_cifar(src: Path, dst: Path, val_size: int, calib_size: int, split_seed: int,
                       repair_size: int = 500) -> int:
    """Copies ``src``'s CIFAR folder to ``dst`` (xz), training images outside the held-out splits and the
    ``repair_size`` repair-statistics images (``repair="lstsq"``: the first of ``split.train``) zeroed."""
    dst.mkdir(parents=True, exist_ok=True)
    batches = [src / f"data_batch_{i}" for i in range(1, 6)]
    loaded = []
    for path in batches:
        with open(path, "rb") as f:
            loaded.append(pickle.load(f, encoding="latin1"))
    sizes = [len(b["labels"]) for b in loaded]
    split = held_out_split(sum(sizes), val_size, calib_size, split_seed)
    keep = np.zeros(sum(sizes), dtype=bool)
    keep[np.concatenate([split.reward.numpy(), split.calib.numpy(), split.train[:repair_size].numpy()])] = True
    start = 0
    for path, batch, n in zip(batches, loaded, sizes):
        data = np.asarray(batch["data"], dtype=np.uint8).copy()
        data[~keep[start:start + n]] = 0
        start += n
        batch["data"] = data
        with lzma.open(dst / (path.name + ".xz"), "wb", preset=6) as f:
            pickle.dump(batch, f)
    for name in ("test_batch", "batches.meta"):
        with open(src / name, "rb") as f_in, lzma.open(dst / (name + ".xz"), "wb", preset=6) as f_out:
            shutil.copyfileobj(f_in, f_out)
    return int(keep.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--out", default="device_payload")
    p.add_argument("--val-size", type=int, default=1000)
    p.add_argument("--calib-size", type=int, default=500)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--repair-size", type=int, default=500, help="images kept for the repair statistics")
    p.add_argument("--wheels", default="", help="folder of wheels to copy along (see the device tool's README); "
                   "Ray does not fit the 64 MiB (see gpu_session.sh)")
    args = p.parse_args()
    out = Path(args.out)
    src = _cifar_folder(None)
    if src is None:
        raise SystemExit("set $AGMC_DATA_DIR to the folder holding cifar-10-batches-py")
    kept = write_sparse_cifar(src, out / "cifar10" / CIFAR_FOLDER, args.val_size, args.calib_size, args.split_seed,
                              args.repair_size)
    # the published checkpoint and, where present, its JPEG-adapted fine-tune
    (out / "weights").mkdir(exist_ok=True)
    for weights in Path(os.environ.get("AGMC_WEIGHTS_DIR", "")).glob(f"{args.model}-*"):
        shutil.copy(weights, out / "weights" / weights.name)
    if args.wheels:
        shutil.copytree(args.wheels, out / "whl", dirs_exist_ok=True)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {kept} training images kept, {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
