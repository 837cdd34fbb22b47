"""The hot path of every episode: BatchNorm recalibration and top-1 / top-5 accuracy of a pruned model.

Images live on the evaluation device as normalised channels_last tensors, loaded once. Scoring runs
under ``torch.inference_mode`` on the network's scoring copy (``agmc_env.inference``: BatchNorm folded into
the preceding convolutions, channels_last, on CPU in float32 conv + ReLU (+ add) as one oneDNN call), with
bf16 autocast where it is allowed (always on CUDA; on CPU only if the CPU has native bf16 and the
unpruned model's reward-split accuracy stays within ``BF16_TOLERANCE`` of float32).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from agmc_env.inference import InferenceGraph

AMP_CHOICES = ("auto", "bf16", "off")
BF16_TOLERANCE = 0.002  # accuracy as a fraction: 0.2 points
# Scoring batch: on 2-core AMD EPYC CPUs (AVX2 and AVX-512 kernels alike) 64 images beat 250 by 6-8 % and
# 1000 by 2-4× (activations that fit the caches); on CUDA large batches fill the card.
CPU_BATCH, CUDA_BATCH = 64, 1000
# BN statistics are averaged over equal calibration batches of at most this many images (what the
# calibration-size measurement used; the batching changes the statistics slightly, the scoring batch does not).
CALIB_BATCH = {"cpu": 250, "cuda": 1000}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} asked for CUDA but torch.cuda.is_available() is False; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s); use "
                         f"'cuda' or 'cuda:N' with N < {torch.cuda.device_count()}")
    return dev


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class Evaluator:
    """Recalibrates BN on ``calib`` images and scores top-1 on ``images``/``labels`` (all on ``device``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, calib: torch.Tensor, device: torch.device,
                 batch_size: int | None = None, amp: str = "auto") -> None:
        if amp not in AMP_CHOICES:
            raise ValueError(f"unknown amp={amp!r}; choose one of {AMP_CHOICES}")
        self.images, self.labels, self.calib, self.device = images, labels, calib, device
        self.batch_size = batch_size or (CUDA_BATCH if device.type == "cuda" else CPU_BATCH)
        self.amp = amp
        self.dtype: torch.dtype | None = torch.bfloat16 if amp == "bf16" else None
        self.amp_check: dict[str, float] = {}
        self._graphs: dict[torch.dtype | None, InferenceGraph] = {}  # per precision: fused ops are fp32-only

    def _inference(self, dtype: torch.dtype | None) -> InferenceGraph:
        if dtype not in self._graphs:
            self._graphs[dtype] = InferenceGraph.for_device(self.device, dtype)
        return self._graphs[dtype]

    def choose_precision(self, model: nn.Module) -> None:
        """Resolve ``amp="auto"``: bf16 on CUDA; on CPU only if it costs ≤ 0.2 pt on the unpruned model."""
        if self.amp != "auto":
            return
        if not bf16_supported(self.device):
            self.dtype = None
        elif self.device.type == "cuda":
            self.dtype = torch.bfloat16
        else:
            fp32 = self.accuracy(model, dtype=None)
            bf16 = self.accuracy(model, dtype=torch.bfloat16)
            self.amp_check = {"fp32": fp32, "bf16": bf16}
            self.dtype = torch.bfloat16 if abs(fp32 - bf16) <= BF16_TOLERANCE else None

    def _autocast(self, dtype: torch.dtype | None):
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def recalibrate(self, model: nn.Module) -> None:
        """Adaptive BN (EagleEye): re-estimate every BN's running statistics on the calibration images,
        as a plain average over them (momentum=None), with everything else in eval mode. The images are cut
        into equal batches (at most ``CALIB_BATCH`` images): the average weighs every batch alike, so a small
        remainder batch would count as much as a full one. Each BN's momentum is restored afterwards: left at
        None, a later training run (fine-tuning the saved network) would keep a cumulative average of every
        batch since the calibration, stale statistics that lag further behind the weights at every step."""
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns or len(self.calib) == 0:
            return
        model.eval()
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad(), self._autocast(self.dtype):
            most = CALIB_BATCH.get(self.device.type, CALIB_BATCH["cpu"])
            for batch in torch.tensor_split(self.calib, -(-len(self.calib) // most)):
                model(batch)
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()

    def accuracy(self, model: nn.Module, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 dtype: torch.dtype | None | str = "default") -> float:
        """Top-1 accuracy (fraction) with BN folded into the convs; ``model`` itself is left unchanged."""
        return self.scores(model, images, labels, dtype)["top1"]

    def scores(self, model: nn.Module, images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
               dtype: torch.dtype | None | str = "default") -> dict[str, float]:
        """Top-1 and top-5 accuracy (fractions) in one pass; top-5 = top-1 when there are ≤ 5 classes."""
        images = self.images if images is None else images
        labels = self.labels if labels is None else labels
        dtype = self.dtype if dtype == "default" else dtype
        model.eval()
        fast = self._inference(dtype)(model, images[:1])
        correct = torch.zeros(2, dtype=torch.long, device=self.device)
        with torch.inference_mode(), self._autocast(dtype):
            for start in range(0, len(images), self.batch_size):
                logits = fast(images[start:start + self.batch_size])
                target = labels[start:start + self.batch_size]
                correct[0] += (logits.argmax(1) == target).sum()  # argmax: ties resolve as before top-5 existed
                correct[1] += (logits.topk(min(5, logits.shape[1]), dim=1).indices == target[:, None]).any(1).sum()
        top1, top5 = (correct.double() / len(images)).tolist()
        return {"top1": top1, "top5": top5}
