"""``agmc finetune``: SGD + cosine fine-tuning of a pruned checkpoint on the full training split, optionally with
knowledge distillation from the unpruned network; resumable per epoch.

Distillation (``distill=True``, ``agmc finetune --distill``): the teacher is the unpruned network of the task the
checkpoint was searched in (``task.analysis.gm``), run on the same augmented batch, and the loss is

    (1 − α)·CE(z_s, y) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))

(Hinton et al. 2015: the teacher's softened distribution is the target; T² keeps the gradient scale independent of
T), with T = 4 and α = 0.9 by default.

Resume: after every epoch ``finetune_state.pt`` (model, optimizer, scheduler, RNG states, history, settings) is
written atomically into ``out``; running the same command again continues after the last finished epoch and gives
the same result as an uninterrupted run. A larger ``epochs`` than before is refused (the cosine schedule depends on
it): use a new ``out``.
"""
from __future__ import annotations

import copy
import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agents.checkpoint_io import load_pruned, task_for
from agents.run_folder import RunError, atomic_write, save_pruned
from agmc_env.data import ImageDataset, normalised
from agmc_env.evaluate import TRAIN_AMP, bf16_supported
from agmc_env.options import KINDS

STATE = "finetune_state.pt"
TEMPERATURE, ALPHA = 4.0, 0.9
# BN running statistics follow the batches with PyTorch's default momentum. Networks saved by agmc before the
# calibration restored it carry momentum=None (adaptive BN's plain average): trained with that, the running
# statistics average every batch since the start and lag the moving weights — test accuracy then fell epoch after
# epoch (ResNet-56 at 50 % MACs: 87.4 % after epoch 1, 77.4 % after epoch 8) while the training loss fell.
BN_MOMENTUM = 0.1


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard CIFAR augmentation on a normalised batch: random crop (zero pad 4) + horizontal flip."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator).tolist()
    dx = torch.randint(0, 9, (n,), generator=generator).tolist()
    crops = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, crops.flip(3), crops)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
                      temperature: float = TEMPERATURE, alpha: float = ALPHA) -> torch.Tensor:
    """(1 − α)·CE(student, labels) + α·T²·KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean."""
    ce = F.cross_entropy(student, labels)
    kl = F.kl_div(F.log_softmax(student.float() / temperature, 1), F.log_softmax(teacher.float() / temperature, 1),
                  reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * temperature ** 2 * kl


def _write_csv(path: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["epoch", "test_accuracy", "seconds", "precision"])
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, buf.getvalue().encode())


def finetune(checkpoint: str | os.PathLike, out: str | os.PathLike, *, epochs: int = 20, lr: float = 0.01,
             batch_size: int = 128, weight_decay: float = 5e-4, momentum: float = 0.9, seed: int = 0,
             device: str = "auto", data_dir: str | None = None, distill: bool = False,
             temperature: float = TEMPERATURE, alpha: float = ALPHA, amp: str = "auto", progress: bool = False,
             log=print) -> dict[str, Any]:
    """Fine-tune; writes ``finetuned.pt``, ``finetune.csv`` (test accuracy per epoch) and the per-epoch resume state
    ``finetune_state.pt`` into ``out``. Re-running with the same ``out`` resumes after the last finished epoch.

    ``amp="auto"`` trains under bf16 autocast where the device has native bf16 (CUDA, or a CPU with AVX512-BF16 /
    AMX, where it halves the epoch time), fp32 elsewhere; ``"bf16"`` forces it, ``"off"`` keeps fp32."""
    if not KINDS["count"].fits(epochs) or not KINDS["positive int"].fits(batch_size):
        raise ValueError(f"epochs={epochs!r} must be an integer ≥ 0 and batch_size={batch_size!r} an integer ≥ 1")
    if amp not in TRAIN_AMP:
        raise ValueError(f"amp={amp!r}: choose one of {', '.join(TRAIN_AMP)} (training has no int8 mode)")
    if distill and not (temperature > 0 and 0 <= alpha <= 1):
        raise ValueError(f"distillation needs temperature > 0 and 0 ≤ alpha ≤ 1 (got {temperature}, {alpha})")
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "epochs": epochs, "lr": lr, "batch_size": batch_size,
                "weight_decay": weight_decay, "momentum": momentum, "seed": seed, "distill": distill, "amp": amp,
                "bn_momentum": BN_MOMENTUM,
                **({"temperature": temperature, "alpha": alpha} if distill else {})}
    model, meta = load_pruned(checkpoint)
    # the task gives the data, the test evaluator and the teacher; it runs no episode, so no repair statistics.
    # Test accuracy in fp32 whatever ``amp`` trains in: the tables compare it with fp32 scores of the unpruned net.
    options = {"split": "test", "device": device, "bn_recalibration": False, "repair": "none", "amp": "off"}
    if data_dir is not None:
        options["data_dir"] = data_dir
    task = task_for(meta, **options)
    data, dev, ev = task.dataset, task.device, task.evaluator
    use_bf16 = amp == "bf16" or (amp == "auto" and bf16_supported(dev))
    if not isinstance(data, ImageDataset):
        raise ValueError(f"agmc finetune holds the whole training split in memory and supports in-memory datasets "
                         f"(cifar10) only; {type(data).__name__} ({task.model_name}) needs a streaming fine-tuning "
                         "loop, which agmc does not have yet")
    train_x = normalised(data.train_images, data.mean, data.std, dev)
    train_y = data.train_labels.to(dev)
    teacher = task.analysis.gm.eval() if distill else None
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = copy.deepcopy(model).to(dev).train()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
        bn.momentum = BN_MOMENTUM
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=True)
    per_epoch = (len(train_x) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs * per_epoch, 1))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    first = 1
    if (out / STATE).is_file():
        state = torch.load(out / STATE, map_location="cpu", weights_only=False)
        if state["settings"] != settings:
            changed = sorted(k for k in set(settings) | set(state["settings"])
                             if settings.get(k) != state["settings"].get(k))
            raise RunError(f"{out} holds a fine-tune with other settings ({', '.join(changed)}); use another --out "
                           "or delete it")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if dev.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], dev)
        history, start_acc, first = state["history"], state["start_accuracy"], state["epoch"] + 1
        log(f"resuming {out} after epoch {state['epoch']} of {epochs}")
    else:
        start_acc = ev.accuracy(model)
        log(f"epoch 0: test accuracy {start_acc:.4f} (before fine-tuning; training in {'bf16' if use_bf16 else 'fp32'})")
    bar = None
    if progress and first <= epochs:
        from tqdm import tqdm

        bar = tqdm(total=epochs * per_epoch, initial=(first - 1) * per_epoch, unit="batch", dynamic_ncols=True)
    for epoch in range(first, epochs + 1):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train_x), generator=gen).to(dev)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            x = augment(train_x[idx], gen)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = distillation_loss(logits, target, train_y[idx], temperature, alpha)
                else:
                    loss = F.cross_entropy(logits, train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
        acc = ev.accuracy(model)
        history.append({"epoch": epoch, "test_accuracy": acc, "seconds": round(time.perf_counter() - t0, 2),
                        "precision": "bf16" if use_bf16 else "fp32"})  # amp="auto" resolves per machine
        log(f"epoch {epoch}: test accuracy {acc:.4f} ({history[-1]['seconds']} s)")
        buf = io.BytesIO()
        torch.save({"settings": settings, "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None,
                    "history": history, "start_accuracy": start_acc}, buf)
        atomic_write(out / STATE, buf.getvalue())
        _write_csv(out / "finetune.csv", history)
    if bar is not None:
        bar.close()
    if not history:
        _write_csv(out / "finetune.csv", history)
    result = {**meta, "finetune": {**{k: v for k, v in settings.items() if k != "checkpoint"},
                                   "test_accuracy_before": start_acc,
                                   "test_accuracy": history[-1]["test_accuracy"] if history else start_acc}}
    save_pruned(out / "finetuned.pt", copy.deepcopy(model).eval().cpu(), result)
    return result
