"""The hot path of every episode: BatchNorm recalibration and top-1 / top-5 accuracy of a pruned model.

Images live on the evaluation device as normalised channels_last tensors, loaded once. Scoring runs
under ``torch.inference_mode`` on the network's scoring copy (``agmc_env.inference``: BatchNorm folded into
the preceding convolutions, channels_last, on CPU in float32 conv + ReLU (+ add) as one oneDNN call) in the
precision ``amp`` picks:

- bf16 autocast — always on CUDA; on a CPU with native bf16 if the unpruned model's reward-split accuracy
  stays within ``AMP_TOLERANCE`` of float32;
- else, on a CPU, oneDNN int8 (``agmc_env.quantized``; activation scales from the calibration images, observed
  during the BN recalibration) under the same rule;
- else float32.
"""
from __future__ import annotations

import contextlib
import weakref

import torch
from torch import fx, nn

from agmc_env.inference import InferenceGraph
from agmc_env.quantized import Int8Graph, int8_supported, observe_maxima

AMP_CHOICES = ("auto", "bf16", "int8", "off")
TRAIN_AMP = ("auto", "bf16", "off")  # what fine-tuning accepts: int8 is a scoring mode
AMP_TOLERANCE = 0.002  # accuracy as a fraction: 0.2 points
INT8 = torch.int8  # ``Evaluator.dtype`` for oneDNN int8 scoring (not an autocast dtype)
PRECISIONS = {"bf16": torch.bfloat16, "int8": INT8}  # amp / precision name → ``Evaluator.dtype`` (fp32: None)
PRECISION_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}  # ``Evaluator.dtype`` → precision name
AMP_OF = {"fp32": "off", "bf16": "bf16", "int8": "int8"}  # ``Evaluator.precision`` → the ``amp`` that asks for it
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
        self._graphs: dict[torch.dtype | None, InferenceGraph] = {}  # per precision: fused ops are fp32-only
        if amp == "int8" and not self.int8_available():
            raise ValueError(f"amp='int8' needs a CPU device and a torch build with oneDNN's int8 convolution "
                             f"(device {device}); use amp='off' or 'auto'")
        if amp == "int8" and len(calib) == 0:
            raise ValueError("amp='int8' takes its activation scales from the calibration images: calib_size ≥ 1")
        self.dtype: torch.dtype | None = PRECISIONS.get(amp)
        self.amp_check: dict[str, float] = {}
        self._int8 = Int8Graph()
        self._observed: tuple[weakref.ref, dict[str, float]] | None = None  # last recalibration's maxima

    @property
    def precision(self) -> str:
        return PRECISION_NAMES.get(self.dtype, "fp32")

    def _inference(self, dtype: torch.dtype | None) -> InferenceGraph:
        dtype = None if dtype is INT8 else dtype  # int8 is built on the float32 graph
        if dtype not in self._graphs:
            self._graphs[dtype] = InferenceGraph.for_device(self.device, dtype)
        return self._graphs[dtype]

    def int8_available(self) -> bool:
        """Whether this evaluator can score in int8: a CPU with oneDNN's int8 and fused float32 convolutions."""
        return self.device.type == "cpu" and int8_supported() and self._inference(None).pointwise

    def choose_precision(self, model: nn.Module) -> None:
        """Resolve ``amp="auto"``: bf16 on CUDA; on CPU bf16 (native bf16 only), else int8, whichever comes
        first within 0.2 pt of float32 on the unpruned model; else float32."""
        if self.amp != "auto":
            return
        self.dtype = None
        if self.device.type == "cuda":
            self.dtype = torch.bfloat16 if bf16_supported(self.device) else None
            return
        candidates = ([torch.bfloat16] if bf16_supported(self.device) else []) + \
            ([INT8] if self.int8_available() and len(self.calib) else [])
        if not candidates:
            return
        fp32 = self.accuracy(model, dtype=None)
        self.amp_check = {"fp32": fp32}
        for dtype in candidates:
            name = PRECISION_NAMES[dtype]
            self.amp_check[name] = self.accuracy(model, dtype=dtype)
            # rounded: 0.854 − 0.852 is 0.0020000000000000018 in floats, and 2 images in 1000 are within 0.2 pt
            if round(abs(fp32 - self.amp_check[name]), 9) <= AMP_TOLERANCE:
                self.dtype = dtype
                return

    def _autocast(self, dtype: torch.dtype | None):
        if dtype is None or dtype is INT8:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _int8_sources(self, model: nn.Module) -> dict[str, str] | None:
        """Int8 scale roots → the nodes of ``model``'s own graph that compute them (None: not a GraphModule)."""
        if not isinstance(model, fx.GraphModule):
            return None
        plan = self._inference(None).plan(model, self.calib[:1])
        return {root: plan.origin[root] for root in self._int8.roots(plan.module)}

    def scoring_module(self, model: nn.Module, dtype: torch.dtype | None | str = "default",
                       example: torch.Tensor | None = None) -> nn.Module:
        """What scores ``model`` (put in eval mode) at ``dtype``: its scoring copy, int8 or not (``example``: an
        input batch, by default the first scored image). bf16 needs ``torch.autocast`` around the call."""
        dtype = self.dtype if dtype == "default" else dtype
        model.eval()
        fused = self._inference(dtype)(model, self.images[:1] if example is None else example)
        if dtype is not INT8:
            return fused
        observed = self._observed
        if observed is not None and observed[0]() is model:
            maxima = observed[1]
        else:  # not recalibrated by this evaluator: observe the calibration images now
            with torch.inference_mode():
                maxima = observe_maxima(fused, self._int8.roots(fused), self._calib_batches())
        return self._int8(fused, maxima)

    def _calib_batches(self) -> tuple[torch.Tensor, ...]:
        most = CALIB_BATCH.get(self.device.type, CALIB_BATCH["cpu"])
        return torch.tensor_split(self.calib, -(-len(self.calib) // most))

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
        sources = self._int8_sources(model) if self.dtype is INT8 else None  # traced in eval mode, once per graph
        momenta = [bn.momentum for bn in bns]
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
            bn.train()
        with torch.no_grad(), self._autocast(self.dtype):
            if sources is None:
                for batch in self._calib_batches():
                    model(batch)
            else:  # the int8 scales' maxima, from the same pass (BN on batch statistics ≈ the new running ones)
                seen = observe_maxima(model, set(sources.values()), self._calib_batches())
                self._observed = (weakref.ref(model), {root: seen[source] for root, source in sources.items()})
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
        fast = self.scoring_module(model, dtype, images[:1])
        correct = torch.zeros(2, dtype=torch.long, device=self.device)
        with torch.inference_mode(), self._autocast(dtype):
            for start in range(0, len(images), self.batch_size):
                logits = fast(images[start:start + self.batch_size])
                target = labels[start:start + self.batch_size]
                correct[0] += (logits.argmax(1) == target).sum()  # argmax: ties resolve as before top-5 existed
                correct[1] += (logits.topk(min(5, logits.shape[1]), dim=1).indices == target[:, None]).any(1).sum()
        top1, top5 = (correct.double() / len(images)).tolist()
        return {"top1": top1, "top5": top5}
