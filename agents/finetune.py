"""``agmc finetune``: SGD + cosine fine-tuning of a pruned checkpoint on the full training split."""
from __future__ import annotations

import copy
import csv
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agents.checkpoint_io import load_pruned, task_for
from agents.run_folder import save_pruned
from agmc_env.data import ImageDataset, normalised


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation on a normalised batch: random crop (zero pad 4) + horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    crops = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, crops.flip(3), crops)


def finetune(checkpoint: str | os.PathLike, out: str | os.PathLike, *, epochs: int = 20, lr: float = 0.01,
             batch_size: int = 128, weight_decay: float = 5e-4, momentum: float = 0.9, seed: int = 0,
             device: str = "auto", data_dir: str | None = None, log=print) -> dict[str, Any]:
    """Fine-tune; writes ``finetuned.pt`` and ``finetune.csv`` (test accuracy per epoch) into ``out``."""
    model, meta = load_pruned(checkpoint)
    options = {"split": "test", "device": device, "bn_recalibration": False}
    if data_dir is not None:
        options["data_dir"] = data_dir
    task = task_for(meta, **options)
    data, dev, ev = task.dataset, task.device, task.evaluator
    if not isinstance(data, ImageDataset):
        raise ValueError(f"agmc finetune holds the whole training split in memory and supports in-memory datasets "
                         f"(cifar10) only; {type(data).__name__} ({task.model_name}) needs a streaming fine-tuning "
                         "loop, which agmc does not have yet")
    train_x = normalised(data.train_images, data.mean, data.std, dev)
    train_y = data.train_labels.to(dev)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    steps = epochs * ((len(train_x) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history = []
    start_acc = ev.accuracy(model)
    log(f"epoch 0: test accuracy {start_acc:.4f} (before fine-tuning)")
    for epoch in range(1, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train_x), generator=gen).to(dev)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            x = augment(train_x[idx], gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = F.cross_entropy(model(x), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = ev.accuracy(model)
        history.append({"epoch": epoch, "test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 2)})
        log(f"epoch {epoch}: test accuracy {acc:.4f} ({history[-1]['seconds']} s)")
    with open(out / "finetune.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["epoch", "test_accuracy", "seconds"])
        writer.writeheader()
        writer.writerows(history)
    result = {**meta, "finetune": {"epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
                                   "test_accuracy_before": start_acc,
                                   "test_accuracy": history[-1]["test_accuracy"] if history else start_acc}}
    save_pruned(out / "finetuned.pt", model.eval().cpu(), result)
    return result
