"""Least-squares weight repair: refit the layers that read pruned channels (the pipeline's ``"repair"`` slot).

Removing a group's channels takes part of the input away from every layer that reads them — its
*consumers*: the next conv, a linear layer after flatten, an SE block's reduce conv, a MobileNet-v2
projection. :class:`LstsqRepair` refits each such consumer on its kept input channels so that it reproduces,
as well as a linear map can, the unpruned layer's output (pre-BN) on the unpruned network's features
(He et al. 2017, ThiNet; AMC's least-squares step, extended to k×k convs through im2col).

Statistics, computed **once per task** from the unpruned network on ``repair_size`` training images
(disjoint from the reward and calibration splits): for each consumer that can lose input channels, the
second moments ``G = E[x xᵀ]`` of its unfolded input ``x`` (an im2col patch of ``C·k²`` values for a conv,
``torch.nn.functional.unfold`` with the conv's stride / padding / dilation; the flattened features,
``C·flatten_factor`` values, for a linear layer), ``P = G·Wᵀ = E[x yᵀ]`` for its unpruned output ``y = W x``
and, for layers with a bias, the mean ``E[x]``. They depend only on the unpruned net.

Per episode, for a consumer with kept input columns ``K`` and kept output channels ``O`` (``W₀ = W[O, K]``,
the pruned weights) one small system on the kept rows / columns::

    minimise  E‖W' x_K − W[O] x‖² + λ‖W' − W₀‖²     λ = 1e-3 · mean(diag G_KK)
    ⇔         (G_KK + λ I) W'ᵀ = P[K, O] + λ W₀ᵀ

The ridge pulls towards the pruned weights (not towards zero), so on the statistics' own features the refit
is never worse than no repair, and a singular ``G_KK`` (dead, all-zero channels) stays finite. A layer with a
bias also refits its bias (an intercept: the mean of the dropped inputs' contribution moves into it).

Covered: k×k convs with any stride / padding / dilation / padding mode, linear layers after flatten or
pooling, residual streams (``prune_residual=True``: the blocks' first convs and the classifier read the
pruned stream and are refitted like any other consumer). A depthwise conv needs nothing: its channel is its
own group, removed whole. Other grouped convs sit in frozen groups and never lose inputs. Channel mode only:
fine-grained pruning removes no channel, so there is no consumer to refit.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from agmc_env.decisions import ChannelAnalysis, TraceError
from agmc_env.pruning import Pruner

if TYPE_CHECKING:
    from agmc_env.pipeline import EpisodeEnd
    from agmc_env.task import PruningTask

RIDGE = 1e-3  # λ as a fraction of the mean diagonal of the kept Gram block
MAX_FEATURES = 8192  # a consumer with more unfolded inputs (a Gram over 256 MiB) is left unrepaired, with a warning
UNFOLD_BYTES = 256 * 2**20  # images per statistics batch: the largest consumer's unfolded input stays under this


@dataclass
class Consumer:
    """A conv / linear layer that reads channels a decision can remove, with its statistics."""

    node: str  # fx node name in the analysed graph
    target: str  # module name: the same in the pruned model
    in_gid: int  # group of its input channels
    out_gid: int | None  # group of its output channels (None: not in any group)
    unit: int  # unfolded columns per input channel: k² (conv) or the flatten factor (linear)
    gram: torch.Tensor | None = None  # (D, D) E[x xᵀ], float32
    cross: torch.Tensor | None = None  # (D, out) E[x yᵀ] = G Wᵀ, float32
    mean: torch.Tensor | None = None  # (D,) E[x], float32 (layers with a bias only)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.gram, self.cross, self.mean) if t is not None)


def unfold_input(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of unfolded features: (N·L, C·k²) for a conv, (N, D) for a linear layer.
    Column ``c·unit + j`` is input channel ``c`` (the ordering of ``weight.flatten(1)``)."""
    if isinstance(module, nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (N, C·k², L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(x.shape[0], -1)


def _columns(pos: torch.Tensor, unit: int) -> torch.Tensor:
    return (pos[:, None] * unit + torch.arange(unit, device=pos.device)).flatten()


def find_consumers(analysis: ChannelAnalysis, pruner: Pruner) -> list[Consumer]:
    """Every conv / linear layer whose input channels some decision can remove (forward order)."""
    modules = dict(analysis.gm.named_modules())
    probe = {gid: torch.zeros(1, dtype=torch.long) for gid in analysis.decisions}  # every decision down to 1
    consumers, targets = [], set()
    for node in analysis.gm.graph.nodes:
        if node.op != "call_module" or not node.all_input_nodes:
            continue
        mod = modules[node.target]
        if not isinstance(mod, (nn.Conv2d, nn.Linear)):
            continue
        src = node.all_input_nodes[0].name
        gid = analysis.group_of.get(src)
        if gid is None:
            continue
        pos = pruner.positions(gid, probe)
        if pos is None or len(pos) == analysis.groups[gid].width:
            continue  # its input channels are never pruned
        if isinstance(mod, nn.Conv2d) and mod.groups > 1:
            if mod.groups == mod.in_channels == mod.out_channels:
                continue  # depthwise: a channel is removed whole with its input, nothing to refit
            raise TraceError(f"grouped conv {node.target} reads pruned channels; repair='lstsq' cannot refit it "
                             "(use repair='none')")
        if node.target in targets:
            raise TraceError(f"module {node.target} is called at several places; repair='lstsq' cannot refit a "
                             "shared layer (use repair='none')")
        targets.add(node.target)
        if isinstance(mod, nn.Conv2d):
            unit = mod.kernel_size[0] * mod.kernel_size[1]
        else:
            unit = analysis.flatten_factor.get(src, 1)
        consumers.append(Consumer(node.name, node.target, gid, analysis.group_of.get(node.name), unit))
    return consumers


class LstsqRepair:
    """The ``"lstsq"`` repair stage: statistics built once (on the images' device), then ``stage(task, end)``.

    ``consumers`` are the layers it refits, ``skipped`` the ones too wide to hold a Gram matrix for (name →
    reason), ``nbytes`` the statistics' memory, ``num_images`` how many images they came from and ``build_s``
    the seconds the statistics took.
    """

    def __init__(self, analysis: ChannelAnalysis, pruner: Pruner, images: torch.Tensor, ridge: float = RIDGE) -> None:
        start = time.perf_counter()
        if len(images) == 0:
            raise ValueError("repair='lstsq' needs at least one image for its statistics (repair_size ≥ 1)")
        self.analysis, self.pruner, self.ridge = analysis, pruner, ridge
        self.num_images = len(images)
        self.modules = dict(analysis.gm.named_modules())
        self.consumers: list[Consumer] = []
        self.skipped: dict[str, str] = {}
        for c in find_consumers(analysis, pruner):
            width = self.modules[c.target].weight[0].numel()
            if width > MAX_FEATURES:
                self.skipped[c.target] = f"{width} unfolded inputs > {MAX_FEATURES}"
            else:
                self.consumers.append(c)
        if self.skipped:
            warnings.warn(f"repair='lstsq' leaves {len(self.skipped)} layer(s) unrepaired, too wide for a Gram matrix: "
                          + "; ".join(f"{name} ({why})" for name, why in self.skipped.items()), stacklevel=2)
        self._collect(images)
        self.build_s = time.perf_counter() - start

    @classmethod
    def from_task(cls, task: PruningTask, images: torch.Tensor) -> LstsqRepair:
        return cls(task.analysis, task.mode.pruner, images)

    @property
    def nbytes(self) -> int:
        """Memory held by the statistics (bytes)."""
        return sum(c.nbytes() for c in self.consumers)

    def _collect(self, images: torch.Tensor) -> None:
        gm = self.analysis.gm
        if not self.consumers:
            return
        sums: dict[str, list] = {}
        per_image = max(self.modules[c.target].weight[0].numel() * self._positions(c) for c in self.consumers) * 4
        batch = max(1, min(len(images), UNFOLD_BYTES // max(per_image, 1)))

        def hook_for(c: Consumer):
            mod = self.modules[c.target]

            def hook(_module, args):
                x = unfold_input(mod, args[0].float())
                acc = sums.setdefault(c.target, [0, None, None])
                acc[0] += x.shape[0]
                g = (x.T @ x).double()
                acc[1] = g if acc[1] is None else acc[1] + g
                if mod.bias is not None:
                    s = x.sum(0, dtype=torch.float64)
                    acc[2] = s if acc[2] is None else acc[2] + s
            return hook

        handles = [self.modules[c.target].register_forward_pre_hook(hook_for(c)) for c in self.consumers]
        was_training = gm.training
        gm.eval()
        try:
            with torch.no_grad():
                for chunk in torch.split(images, batch):
                    gm(chunk)
        finally:
            for h in handles:
                h.remove()
            gm.train(was_training)
        for c in self.consumers:
            n, g, s = sums[c.target]
            g = g / n
            w = self.modules[c.target].weight.detach().flatten(1).double()
            c.gram = g.float()
            c.cross = (g @ w.T).float()
            c.mean = None if s is None else (s / n).float()

    def _positions(self, c: Consumer) -> int:
        """Unfolded rows per image (output positions of a conv, 1 for a linear layer)."""
        shape = self.analysis.shapes[c.node]
        return shape[2] * shape[3] if len(shape) == 4 else 1

    def __call__(self, task: PruningTask, end: EpisodeEnd) -> None:
        self.repair(end.model, self.pruner.kept(end.counts))

    def repair(self, model: nn.Module, kept: dict[int, torch.Tensor]) -> int:
        """Refit, in place, every consumer of ``model`` (pruned with ``kept``) whose input lost channels;
        returns how many were refitted."""
        pruned = dict(model.named_modules())
        done = 0
        for c in self.consumers:
            in_pos = self.pruner.positions(c.in_gid, kept)
            if in_pos is None or len(in_pos) == self.analysis.groups[c.in_gid].width:
                continue
            out_pos = None if c.out_gid is None else self.pruner.positions(c.out_gid, kept)
            weight, bias = self.solve(c, in_pos, out_pos)
            mod = pruned[c.target]
            with torch.no_grad():
                mod.weight.copy_(weight.view_as(mod.weight))
                if bias is not None:
                    mod.bias.copy_(bias)
            done += 1
        return done

    def solve(self, c: Consumer, in_pos: torch.Tensor, out_pos: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The refitted (weight as (|O|, |K|·unit), bias or None) of consumer ``c`` for kept inputs/outputs."""
        orig = self.modules[c.target]
        device = c.gram.device
        cols = _columns(in_pos.to(device), c.unit)
        out = None if out_pos is None else out_pos.to(device)
        w = orig.weight.detach().flatten(1)
        w = w if out is None else w.index_select(0, out)
        w0 = w.index_select(1, cols).double()  # the pruned weights: the ridge's anchor
        gkk = c.gram[cols][:, cols].double()
        rhs = c.cross.index_select(0, cols)
        rhs = (rhs if out is None else rhs.index_select(1, out)).double()
        lam = self.ridge * float(gkk.diagonal().mean())
        lam = max(lam, 1e-12)  # all-zero inputs: λ alone, and the solution is W₀
        bias = None
        if c.mean is not None and orig.bias is not None:
            # intercept column: x_aug = [x_K; 1], unknowns [W'ᵀ; Δb], anchor [W₀ᵀ; 0]
            m = c.mean.double()
            k = len(cols)
            a = gkk.new_empty(k + 1, k + 1)
            a[:k, :k], a[:k, k], a[k, :k], a[k, k] = gkk, m[cols], m[cols], 1.0
            wfull = w.double()
            rhs = torch.cat([rhs, (m @ wfull.T)[None]], 0)
            anchor = torch.cat([w0.T, w0.new_zeros(1, w0.shape[0])], 0)
        else:
            a, anchor = gkk, w0.T
        a.diagonal().add_(lam)
        sol = _solve_spd(a, rhs + lam * anchor)
        if not torch.isfinite(sol).all():
            sol = anchor  # cannot happen with λ > 0 in exact arithmetic; never let NaN into a network
        if c.mean is not None and orig.bias is not None:
            b = orig.bias.detach()
            b = b if out is None else b.index_select(0, out)
            bias = (b.double() + sol[-1]).to(orig.bias.dtype)
            sol = sol[:-1]
        return sol.T.to(orig.weight.dtype).contiguous(), bias


def _solve_spd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a x = b`` for a symmetric positive (semi-)definite ``a``: Cholesky, else least squares (finite)."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b, chol)
    if a.device.type == "cpu":
        return torch.linalg.lstsq(a, b, driver="gelsd").solution
    return torch.linalg.lstsq(a.cpu(), b.cpu(), driver="gelsd").solution.to(a.device)
