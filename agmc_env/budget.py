"""MACs and parameter counts of a pruned network, and AMC's budget wall.

FLOPs here means multiply-accumulates (MACs) of conv and linear layers, as in the pruning literature
(a 3×3 conv from c to n channels on an h×w output costs 9·c·n·h·w); BatchNorm, activations, pooling
and adds are not counted. Parameters count every learnable tensor.

The cost of a pruned net is exact in the kept channel counts k (one per decision): every conv or linear
layer costs coef · (channels in) · (channels out), and each of those is a linear form in k (a decision's
count, a fixed width, or a sum of them behind a ``cat``). :class:`CostModel` evaluates it vectorised,
so the budget wall can search integer counts directly instead of trusting an affine approximation.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from agmc_env.decisions import ChannelAnalysis


class CostModel:
    """MACs(k) and params(k) for kept-channel counts ``k`` of the analysis's decisions."""

    def __init__(self, analysis: ChannelAnalysis) -> None:
        self.analysis = analysis
        self.widths = np.array([analysis.groups[g].width for g in analysis.decisions], dtype=np.int64)
        self._slot = {gid: t for t, gid in enumerate(analysis.decisions)}
        self._forms: dict[int, np.ndarray] = {}
        modules = dict(analysis.gm.named_modules())
        mac_terms, param_terms = [], []
        counted = 0
        for node in analysis.gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = modules[node.target]
            out = self.form(analysis.group_of[node.name]) if node.name in analysis.group_of else None
            if isinstance(mod, nn.Conv2d) and out is not None:
                src = node.all_input_nodes[0].name
                k = mod.kernel_size[0] * mod.kernel_size[1]
                hw = math.prod(analysis.shapes[node.name][2:])
                bias = self._const(1.0 if mod.bias is not None else 0.0)
                if mod.groups == 1:
                    cin = self.form(analysis.group_of[src])
                    mac_terms.append((k * hw, cin, out))
                    param_terms += [(k, cin, out), (1.0, bias, out)]
                elif mod.groups == mod.in_channels == mod.out_channels:
                    mac_terms.append((k * hw, out, self._const(1.0)))
                    param_terms += [(k, out, self._const(1.0)), (1.0, bias, out)]
                else:  # frozen grouped conv: both sides fixed
                    mac_terms.append((k * hw * mod.in_channels // mod.groups * mod.out_channels, *self._ones()))
                    param_terms.append((float(sum(p.numel() for p in mod.parameters())), *self._ones()))
            elif isinstance(mod, nn.Linear) and out is not None:
                src = node.all_input_nodes[0].name
                cin = self.form(analysis.group_of[src]) * analysis.flatten_factor[src]
                bias = self._const(1.0 if mod.bias is not None else 0.0)
                mac_terms.append((1.0, cin, out))
                param_terms += [(1.0, cin, out), (1.0, bias, out)]
            elif isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)) and out is not None and mod.affine:
                param_terms.append((2.0, out, self._const(1.0)))
            else:
                continue
            counted += sum(p.numel() for p in mod.parameters())
        total_params = sum(p.numel() for p in analysis.gm.parameters())
        param_terms.append((float(total_params - counted), *self._ones()))
        self._macs = self._stack(mac_terms)
        self._params = self._stack(param_terms)
        self.base_macs = self.macs(self.widths)
        self.base_params = self.params(self.widths)

    def _const(self, value: float) -> np.ndarray:
        v = np.zeros(len(self.widths) + 1)
        v[-1] = value
        return v

    def _ones(self) -> tuple[np.ndarray, np.ndarray]:
        return self._const(1.0), self._const(1.0)

    def form(self, gid: int) -> np.ndarray:
        """Kept-channel count of group ``gid`` as a linear form over [k_0 … k_{T−1}, 1]."""
        if gid not in self._forms:
            g = self.analysis.groups[gid]
            if gid in self._slot:
                v = np.zeros(len(self.widths) + 1)
                v[self._slot[gid]] = 1.0
            elif g.derived:
                remap = self.analysis.remaps[g.remaps[0]]
                v = sum(self.form(self.analysis.group_of[src]) for src, _, _ in remap.segments)
            else:
                v = self._const(float(g.width))
            self._forms[gid] = v
        return self._forms[gid]

    @staticmethod
    def _stack(terms: list[tuple[float, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (np.array([t[0] for t in terms], dtype=np.float64), np.stack([t[1] for t in terms]),
                np.stack([t[2] for t in terms]))

    @staticmethod
    def _eval(terms: tuple[np.ndarray, np.ndarray, np.ndarray], counts: np.ndarray) -> np.ndarray:
        coef, u, v = terms
        k = np.atleast_2d(np.asarray(counts, dtype=np.float64))
        k = np.hstack([k, np.ones((len(k), 1))])
        return ((k @ u.T) * (k @ v.T)) @ coef

    def macs(self, counts: np.ndarray) -> float:
        """MACs of the net with these kept counts (one per decision)."""
        return float(self._eval(self._macs, counts)[0])

    def macs_batch(self, counts: np.ndarray) -> np.ndarray:
        """MACs for a batch of count vectors [B, T] at once (the wall's candidate search)."""
        return self._eval(self._macs, counts)

    def params(self, counts: np.ndarray) -> float:
        return float(self._eval(self._params, counts)[0])

    def decision_macs(self) -> np.ndarray:
        """MACs that depend on each decision in the unpruned net (AMC's FLOPs[t] for a channel group)."""
        full = self.macs(self.widths)
        out = np.empty(len(self.widths))
        for t in range(len(self.widths)):
            zero = self.widths.copy()
            zero[t] = 0
            out[t] = full - self.macs(zero)
        return out


WINDOW = 0.01  # budget="window": episodes end within this fraction of the original MACs below the target

BUDGETS = ("window", "ceiling")


class BudgetWall:
    """AMC's action wall on channel counts, with a floor. Each decision takes the count nearest its action
    that still lets the episode end within [floor, budget] MACs: at most the largest count with which the
    budget can be met if every later decision went to its minimum (AMC's ceiling), and — with
    ``budget="window"`` — at least the smallest count with which the floor (``WINDOW`` of the original MACs
    below the target) can be reached if every later decision went to its maximum. Under-spent budget thus
    goes to the latest decisions: they are raised just enough for the episode to end inside the window.
    ``budget="ceiling"`` is AMC's upper-only wall."""

    def __init__(self, cost: CostModel, *, flops_target: float, lbound: float, rbound: float,
                 channel_round: int = 1, budget: str = "window") -> None:
        if not 0.0 < flops_target <= 1.0:
            raise ValueError(f"flops_target must be in (0, 1], got {flops_target}")
        if not 0.0 < lbound <= rbound <= 1.0:
            raise ValueError(f"need 0 < lbound ≤ rbound ≤ 1, got lbound={lbound}, rbound={rbound}")
        if channel_round < 1:
            raise ValueError(f"channel_round must be ≥ 1, got {channel_round}")
        if budget not in BUDGETS:
            raise ValueError(f"unknown budget {budget!r}; choose one of {BUDGETS}")
        self.cost = cost
        # MAC counts are integers (exact in float64): the budget is too, so the wall compares exactly.
        self.budget = math.floor(flops_target * cost.base_macs)
        self.floor = max(0, math.ceil((flops_target - WINDOW) * cost.base_macs)) if budget == "window" else 0
        self.lbound, self.rbound, self.round = lbound, rbound, channel_round
        self.allowed = [self._allowed(w, channel_round) for w in cost.widths]
        self.min_counts = np.array([a[0] for a in self.allowed], dtype=np.int64)
        self.max_counts = np.array([a[-1] for a in self.allowed], dtype=np.int64)
        if cost.macs(self.min_counts) > self.budget:
            raise ValueError(self._unreachable(flops_target))

    def _allowed(self, w: int, channel_round: int) -> np.ndarray:
        """Allowed counts of a decision of width w: multiples of channel_round (or w) within [lbound, rbound]."""
        lo = max(1, math.ceil(self.lbound * w - 1e-9))
        hi = max(lo, math.floor(self.rbound * w + 1e-9))
        counts = [c for c in range(lo, hi + 1) if c % channel_round == 0 or c == w]
        if not counts:  # the round does not fit in [lo, hi]: take the nearest multiple above lo
            counts = [min(w, math.ceil(lo / channel_round) * channel_round)]
        return np.array(counts, dtype=np.int64)

    def _unreachable(self, flops_target: float) -> str:
        """Why no episode can meet the target: channel_round when unrounded counts could, else lbound / the target."""
        floor_ratio = self.cost.macs(self.min_counts) / self.cost.base_macs
        unrounded = np.array([self._allowed(w, 1)[0] for w in self.cost.widths], dtype=np.int64)
        if self.round > 1 and self.cost.macs(unrounded) <= self.budget:
            return (f"channel_round={self.round} makes flops_target={flops_target} unreachable: with counts rounded to "
                    f"multiples of {self.round} (or the full width) the smallest network keeps {floor_ratio:.4f} of "
                    f"the MACs; lower channel_round (1 reaches {self.cost.macs(unrounded) / self.cost.base_macs:.4f}) "
                    f"or raise flops_target to ≥ {math.ceil(floor_ratio * 1e4) / 1e4}")
        return (f"flops_target={flops_target} is below the minimum reachable MACs ratio {floor_ratio:.4f} "
                f"(every decision at lbound={self.lbound}); raise flops_target to ≥ "
                f"{math.ceil(floor_ratio * 1e4) / 1e4}, lower lbound, or prune more layers (e.g. prune_residual=True)")

    def desired(self, t: int, ratio: float) -> int:
        """The allowed count nearest to ``ratio`` × width of decision t."""
        allowed = self.allowed[t]
        return int(allowed[np.abs(allowed - ratio * self.cost.widths[t]).argmin()])

    def clip(self, t: int, count: int, decided: list[int]) -> int:
        """Decision t's count moved into the range that keeps [floor, budget] reachable; ``decided`` holds
        counts 0 … t−1. The ceiling is a guarantee; the floor holds whenever the remaining decisions' channel
        steps are finer than the window (always on the CIFAR ResNets, even with channel_round=8)."""
        allowed = self.allowed[t]
        k = np.tile(self.min_counts, (len(allowed), 1))
        k[:, :t] = decided[:t]
        k[:, t] = allowed
        under = self.cost.macs_batch(k) <= self.budget  # a prefix: MACs grow with every count
        if self.floor:
            k[:, t + 1:] = self.max_counts[t + 1:]
            reach = self.cost.macs_batch(k) >= self.floor  # a suffix
            both = under & reach
            if both.any():
                return int(np.clip(count, allowed[both][0], allowed[both][-1]))
            if under.any():  # the floor is out of reach: as close to it as the ceiling allows
                return int(allowed[under][-1])
        # The minimum count is always under (it reproduces the previous step's projection).
        return int(min(count, allowed[under][-1])) if under.any() else int(allowed[0])


def count_module(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    """(MACs, params) of a real module, measured with forward hooks on its conv and linear layers:
    the independent check of :class:`CostModel` on the physically pruned net."""
    total = [0]

    def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(mod, nn.Conv2d):
            per_out = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            total[0] += out[0].numel() * per_out
        elif isinstance(mod, nn.Linear):
            total[0] += out[0].numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example[:1])
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total[0], sum(p.numel() for p in model.parameters())

