"""``agmc evaluate``: accuracy, MACs, params and measured latency of a pruned checkpoint."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from agents.checkpoint_io import load_pruned, task_for
from agmc_env.budget import count_module
from agmc_env.evaluate import Evaluator


def _latency_ms(model: torch.nn.Module, x: torch.Tensor, ev: Evaluator, reps: int = 20) -> float:
    fast = ev.scoring_module(model, example=x[:1])  # what scoring runs
    bf16 = ev.dtype is torch.bfloat16
    ctx = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else torch.no_grad
    times = []
    with torch.inference_mode(), ctx():
        for i in range(reps + 3):
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fast(x)
            if x.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up
                times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def evaluate_checkpoint(path: str, split: str = "test", device: str = "auto", amp: str = "off",
                        **env_overrides: Any) -> dict[str, Any]:
    """The report of one pruned checkpoint, scored in float32 unless ``amp`` says otherwise (``"auto"``: as the
    search scored it, bf16 or int8 where those passed their check; the tables compare float32 accuracies)."""
    model, meta = load_pruned(path)
    # scoring only, no episode: no repair statistics unless asked
    task = task_for(meta, split=split, device=device, **{"repair": "none", "amp": amp, **env_overrides})
    ev = task.evaluator
    model = model.to(task.device)
    stored = ev.scores(model)
    recal = copy.deepcopy(model)
    ev.recalibrate(recal)
    recalibrated = ev.scores(recal)
    macs, params = count_module(model, ev.images[:1])
    return {
        "checkpoint": str(path), "split": split, "images": len(ev.images), "device": str(task.device),
        "precision": ev.precision,
        "accuracy": stored["top1"], "top5": stored["top5"], "accuracy_bn_recalibrated": recalibrated["top1"],
        "top5_bn_recalibrated": recalibrated["top5"],
        **task.mode.report(model, params),  # fine mode: non-zero parameters and sparsity (zeros are not speed)
        "macs": macs, "params": params, "flops_ratio": macs / task.cost.base_macs,
        "params_ratio": task.mode.kept_params(model, params) / task.cost.base_params,
        "latency_ms_batch1": _latency_ms(model, ev.images[:1], ev),
        f"latency_ms_batch{ev.batch_size}": _latency_ms(model, ev.images[: ev.batch_size], ev, reps=5),
        "searched": {k: meta.get(k) for k in ("env_id", "algorithm", "embedding", "seed", "accuracy", "episode")},
    }
