"""Fine-grained (unstructured) pruning: per-layer weight sparsities under a budget of non-zero parameters.

The decisions are the network's conv and linear weights in forward order. A decision's count is how many
of that layer's weights stay non-zero; the others, the smallest in magnitude, are set to zero (magnitude
pruning, Han et al. 2015). The wall mirrors the channel one on non-zero parameters: each layer takes the
largest count that still lets ``params_target`` be met if every later layer went to ``lbound``. Biases and
BatchNorm parameters are never zeroed and count in full. Zeros are not speed: dense MACs do not change, so
results are reported as sparsity, and exports can be written in a sparse format.
"""
from __future__ import annotations

import copy
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from agmc_env.budget import BUDGETS, WINDOW
from agmc_env.decisions import ChannelAnalysis

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


class WeightSparsity:
    """Decisions, wall and magnitude masking for ``granularity="fine"``."""

    def __init__(self, analysis: ChannelAnalysis, *, params_target: float, lbound: float, rbound: float,
                 budget: str = "window") -> None:
        if not 0.0 < params_target <= 1.0:
            raise ValueError(f"params_target must be in (0, 1], got {params_target}")
        if not 0.0 < lbound <= rbound <= 1.0:
            raise ValueError(f"need 0 < lbound ≤ rbound ≤ 1, got lbound={lbound}, rbound={rbound}")
        gm = analysis.gm
        modules = dict(gm.named_modules())
        layers = [n for n in gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], WEIGHT_LAYERS)]
        if not layers:
            raise ValueError(f"{type(gm).__name__} has no Conv2d or Linear layer to sparsify")
        self.nodes = [n.name for n in layers]  # graph node per decision
        self.targets = [n.target for n in layers]  # module path per decision
        self.widths = np.array([modules[t].weight.numel() for t in self.targets], dtype=np.int64)
        self.base_params = sum(p.numel() for p in gm.parameters())
        self.fixed = self.base_params - int(self.widths.sum())
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {BUDGETS}")
        self.budget = math.floor(params_target * self.base_params + 1e-9)
        # budget="window": end within WINDOW of the original parameters below the target (see BudgetWall)
        self.floor = max(0, math.ceil((params_target - WINDOW) * self.base_params)) if budget == "window" else 0
        self.min_counts = np.maximum(1, np.ceil(lbound * self.widths - 1e-9)).astype(np.int64)
        self.max_counts = np.maximum(self.min_counts, np.floor(rbound * self.widths + 1e-9)).astype(np.int64)
        floor_params = self.fixed + int(self.min_counts.sum())
        if floor_params > self.budget:
            raise ValueError(
                f"params_target={params_target} is below the minimum reachable non-zero fraction "
                f"{floor_params / self.base_params:.4f} (every layer at lbound={lbound}, biases and BN kept); raise "
                f"params_target to ≥ {math.ceil(floor_params / self.base_params * 1e4) / 1e4} or lower lbound"
            )

    def desired(self, t: int, ratio: float) -> int:
        return int(np.clip(round(ratio * self.widths[t]), self.min_counts[t], self.max_counts[t]))

    def clip(self, t: int, count: int, decided: np.ndarray) -> int:
        """Layer t's non-zero count moved into the range that keeps [floor, budget] reachable (the ceiling if
        every later layer went to its minimum, the floor if to its maximum); ``decided`` holds counts 0 … t−1."""
        spent = self.fixed + int(np.sum(decided[:t]))
        room = self.budget - spent - int(self.min_counts[t + 1:].sum())
        need = self.floor - spent - int(self.max_counts[t + 1:].sum())
        count = min(max(count, need, self.min_counts[t]), self.max_counts[t])
        return int(max(self.min_counts[t], min(count, room)))

    def nonzero(self, counts: np.ndarray) -> int:
        return self.fixed + int(np.sum(counts))

    def apply(self, gm: fx.GraphModule, counts: list[int] | np.ndarray) -> fx.GraphModule:
        """A copy of ``gm`` with, per layer, all but its ``counts[t]`` largest-magnitude weights set to zero."""
        model = copy.deepcopy(gm)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for target, k in zip(self.targets, counts):
                w = modules[target].weight
                flat = w.detach().abs().flatten()
                mask = torch.zeros_like(flat, dtype=torch.bool)
                mask[flat.topk(int(k), sorted=False).indices] = True
                w.mul_(mask.view_as(w))
        return model


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """(non-zero conv/linear weights + every other parameter, conv/linear weights): measured on the module."""
    weights = [m.weight for m in model.modules() if isinstance(m, WEIGHT_LAYERS)]
    ids = {id(w) for w in weights}
    others = sum(p.numel() for p in model.parameters() if id(p) not in ids)
    return others + sum(int(torch.count_nonzero(w)) for w in weights), sum(w.numel() for w in weights)


def save_sparse(model: nn.Module, path: str | os.PathLike | io.BytesIO) -> None:
    """The state dict with conv/linear weights as sparse COO tensors (load with :func:`load_sparse`)."""
    sparse = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    state = {k: (v.detach().cpu().to_sparse() if k in sparse else v.detach().cpu()) for k, v in model.state_dict().items()}
    torch.save({"format": "agmc-sparse-v1", "state_dict": state}, path if isinstance(path, io.BytesIO) else Path(path))


def load_sparse(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Loads a :func:`save_sparse` file into ``model`` (dense tensors, zeros where the weights were pruned)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "agmc-sparse-v1":
        raise ValueError(f"{path} is not an agmc sparse export (written by agmc_env.sparsity.save_sparse)")
    model.load_state_dict({k: v.to_dense() if v.is_sparse else v for k, v in blob["state_dict"].items()})
    return model
