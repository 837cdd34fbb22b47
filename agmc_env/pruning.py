"""Physical channel pruning: importance ranking per group, then slicing every layer into a new module.

Mechanism only: which channels a group keeps comes from :func:`Pruner.kept` (the top-k by importance),
how many from the caller (the env's decisions). The result is a fresh ``fx.GraphModule`` with smaller
``Conv2d`` / ``BatchNorm`` / ``Linear`` modules that runs standalone; the analysed model is never touched.
"""
from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping

import torch
from torch import fx, nn

from agmc_env.decisions import ChannelAnalysis

IMPORTANCE = ("l1", "l2")


class ChannelRemap(nn.Module):
    """A channel ``pad`` or ``cat`` after pruning: output slot ``dst[i]`` takes input channel ``src[i]``;
    slots whose source channel was pruned stay zero, exactly as the pruned channel would have been."""

    def __init__(self, width: int, maps: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.width = width
        self.inputs = len(maps)
        for i, (src, dst) in enumerate(maps):
            self.register_buffer(f"src{i}", src)
            self.register_buffer(f"dst{i}", dst)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        x0 = xs[0]
        out = x0.new_zeros((x0.shape[0], self.width, *x0.shape[2:]))
        for i, x in enumerate(xs):
            out.index_copy_(1, getattr(self, f"dst{i}"), x.index_select(1, getattr(self, f"src{i}")))
        return out


def group_importance(analysis: ChannelAnalysis, gid: int, norm: str = "l1") -> torch.Tensor:
    """Per-channel importance of group ``gid``: the L1 (or L2) norm of each producer's output filter,
    summed over the group's producers."""
    if norm not in IMPORTANCE:
        raise ValueError(f"unknown importance {norm!r}; choose one of {IMPORTANCE}")
    modules = dict(analysis.gm.named_modules())
    target = {n.name: n.target for n in analysis.gm.graph.nodes}
    score = torch.zeros(analysis.groups[gid].width, dtype=torch.float64)
    for name in analysis.groups[gid].producers:
        w = modules[target[name]].weight.detach().double().flatten(1).cpu()  # channel bookkeeping lives on the CPU
        score += w.abs().sum(1) if norm == "l1" else w.pow(2).sum(1).sqrt()
    return score


class Pruner:
    """Builds physically pruned copies of the analysed model for given kept-channel counts."""

    def __init__(self, analysis: ChannelAnalysis, importance: str = "l1") -> None:
        self.analysis = analysis
        self.modules = dict(analysis.gm.named_modules())
        # Channels ranked once: the original weights never change between episodes.
        self.order = {gid: torch.argsort(group_importance(analysis, gid, importance), descending=True, stable=True)
                      for gid in analysis.decisions}
        self._template = self._graph_template()

    def kept(self, counts: Mapping[int, int] | list[int]) -> dict[int, torch.Tensor]:
        """Sorted kept channel indices per decision group; ``counts`` is indexed by decision."""
        if not isinstance(counts, Mapping):
            counts = dict(zip(self.analysis.decisions, counts))
        return {gid: self.order[gid][: int(k)].sort().values for gid, k in counts.items()}

    def positions(self, gid: int, kept: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
        """Original channel positions present in the pruned tensor of group ``gid`` (None: all)."""
        if gid in kept:
            return kept[gid]
        g = self.analysis.groups[gid]
        if not g.derived:
            return None
        parts = []
        for src, offset, width in self.analysis.remaps[g.remaps[0]].segments:
            pos = self.positions(self.analysis.group_of[src], kept)
            parts.append(offset + (torch.arange(width) if pos is None else pos))
        return torch.cat(parts)

    def _node_positions(self, name: str, kept: Mapping[int, torch.Tensor]) -> torch.Tensor | None:
        gid = self.analysis.group_of.get(name)
        return None if gid is None else self.positions(gid, kept)

    def _graph_template(self) -> fx.Graph:
        """The traced graph with every remap (channel pad / cat) turned into a ChannelRemap call."""
        graph = copy.deepcopy(self.analysis.gm.graph)
        by_name = {n.name: n for n in graph.nodes}
        for node in list(graph.nodes):
            if node.name in self.analysis.remaps:
                args = tuple(by_name[src] for src, _, _ in self.analysis.remaps[node.name].segments)
                with graph.inserting_after(node):
                    new = graph.call_module(self._remap_target(node.name), args)
                node.replace_all_uses_with(new)
                graph.erase_node(node)
        return graph

    @staticmethod
    def _remap_target(name: str) -> str:
        return f"agmc_remap_{name}"

    def _remap_module(self, name: str, kept: Mapping[int, torch.Tensor]) -> ChannelRemap:
        remap = self.analysis.remaps[name]
        out_pos = self._node_positions(name, kept)
        out_pos = torch.arange(remap.width) if out_pos is None else out_pos
        maps = []
        for src, offset, width in remap.segments:
            src_pos = self._node_positions(src, kept)
            src_pos = torch.arange(width) if src_pos is None else src_pos
            rank = torch.full((width,), -1, dtype=torch.long)  # original source channel → index in pruned source
            rank[src_pos] = torch.arange(len(src_pos))
            rel = out_pos - offset
            inside = (rel >= 0) & (rel < width)
            dst = torch.nonzero(inside).flatten()
            src_idx = rank[rel[inside]]
            present = src_idx >= 0
            maps.append((src_idx[present], dst[present]))
        return ChannelRemap(len(out_pos), maps)

    def prune(self, kept: Mapping[int, torch.Tensor]) -> fx.GraphModule:
        """A new, standalone module with only the kept channels (see :meth:`kept`)."""
        gm = self.analysis.gm
        new_modules: dict[str, nn.Module] = {}
        for node in gm.graph.nodes:
            if node.op != "call_module":
                continue
            mod = self.modules[node.target]
            out_pos = self._node_positions(node.name, kept)
            src = node.all_input_nodes[0].name if node.all_input_nodes else None
            in_pos = self._node_positions(src, kept) if src is not None else None
            if isinstance(mod, nn.Conv2d):
                new_modules[node.target] = _slice_conv(mod, in_pos, out_pos)
            elif isinstance(mod, nn.Linear):
                factor = self.analysis.flatten_factor.get(src, 1)
                if in_pos is not None and factor > 1:
                    in_pos = (in_pos[:, None] * factor + torch.arange(factor)).flatten()
                new_modules[node.target] = _slice_linear(mod, in_pos, out_pos)
            elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                new_modules[node.target] = _slice_bn(mod, out_pos)
            elif any(True for _ in mod.parameters()) or any(True for _ in mod.buffers()):
                new_modules[node.target] = copy.deepcopy(mod)
            else:
                new_modules[node.target] = mod  # stateless (ReLU, pooling, Identity): safe to share
        device = _device_of(gm)
        for name in self.analysis.remaps:
            new_modules[self._remap_target(name)] = self._remap_module(name, kept).to(device)
        for node in gm.graph.nodes:  # tensors read with get_attr (rare in CNNs) are copied as they are
            if node.op == "get_attr":
                new_modules[node.target] = copy.deepcopy(_fetch_attr(gm, node.target))
        pruned = fx.GraphModule(new_modules, copy.deepcopy(self._template), class_name="PrunedModel")
        return pruned.train(gm.training)

    def masked(self, kept: Mapping[int, torch.Tensor]) -> fx.GraphModule:
        """The unpruned model with every removed channel forced to zero wherever it flows: the reference
        that a physically pruned model must reproduce (used in tests)."""
        gm = copy.deepcopy(self.analysis.gm)
        graph = gm.graph
        for node in list(graph.nodes):
            gid = self.analysis.group_of.get(node.name)
            if gid is None or node.op in ("placeholder", "output"):
                continue
            pos = self.positions(gid, kept)
            if pos is None:
                continue
            width = self.analysis.groups[gid].width
            mask = torch.zeros(width)
            mask[pos] = 1.0
            factor = self.analysis.flatten_factor.get(node.name, 1)
            shape = self.analysis.shapes[node.name]
            mask = mask.repeat_interleave(factor).view(1, -1, *([1] * (len(shape) - 2)))
            buf = f"agmc_mask_{node.name}"
            gm.register_buffer(buf, mask.to(_device_of(gm)))
            with graph.inserting_after(node):
                attr = graph.get_attr(buf)
            with graph.inserting_after(attr):
                mul = graph.call_function(torch.mul, (node, attr))
            node.replace_all_uses_with(mul, delete_user_cb=lambda user: user is not mul)
        gm.recompile()
        return gm


def _device_of(module: nn.Module) -> torch.device:
    """Where the model's tensors live (indices are computed on the CPU and moved there)."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def _fetch_attr(gm: nn.Module, target: str) -> object:
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _take(t: torch.Tensor | None, dim: int, idx: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    t = t.detach()
    return t.clone() if idx is None else t.index_select(dim, idx.to(t.device))


def _slice_conv(conv: nn.Conv2d, in_pos: torch.Tensor | None, out_pos: torch.Tensor | None) -> nn.Conv2d:
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise:
        in_pos = out_pos  # one space: the channel count is also the group count
    elif conv.groups > 1:
        in_pos = out_pos = None  # other grouped convs sit in frozen groups
    weight = _take(_take(conv.weight, 0, out_pos), 1, None if depthwise else in_pos)
    out_ch = weight.shape[0]
    in_ch = out_ch if depthwise else weight.shape[1] * conv.groups
    new = nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    out_ch if depthwise else conv.groups, conv.bias is not None, conv.padding_mode,
                    device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    if conv.bias is not None:
        new.bias = nn.Parameter(_take(conv.bias, 0, out_pos), requires_grad=conv.bias.requires_grad)
    return new


def _slice_linear(lin: nn.Linear, in_pos: torch.Tensor | None, out_pos: torch.Tensor | None) -> nn.Linear:
    weight = _take(_take(lin.weight, 0, out_pos), 1, in_pos)
    new = nn.Linear(weight.shape[1], weight.shape[0], lin.bias is not None, device=weight.device, dtype=weight.dtype)
    new.weight = nn.Parameter(weight, requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        new.bias = nn.Parameter(_take(lin.bias, 0, out_pos), requires_grad=lin.bias.requires_grad)
    return new


def _slice_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d, pos: torch.Tensor | None) -> nn.Module:
    n = bn.num_features if pos is None else len(pos)
    new = type(bn)(n, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight = nn.Parameter(_take(bn.weight, 0, pos), requires_grad=bn.weight.requires_grad)
        new.bias = nn.Parameter(_take(bn.bias, 0, pos), requires_grad=bn.bias.requires_grad)
    if bn.track_running_stats:
        new.running_mean = _take(bn.running_mean, 0, pos)
        new.running_var = _take(bn.running_var, 0, pos)
        new.num_batches_tracked = bn.num_batches_tracked.detach().clone()
    return new.to(bn.running_mean.device if bn.running_mean is not None else "cpu")
