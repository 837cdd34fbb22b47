"""Coupled channel groups, discovered from the traced graph: which channels must be kept together.

Every tensor with a channel axis (dim 1) carries a *channel space*. Ops that keep channel identity
(BatchNorm, activations, pooling, depthwise convs, spatial slicing) pass their input's space on;
elementwise ops (``add``, ``mul``) merge their operands' spaces, since both sides must drop the same
indices; conv and linear layers start a new space for their outputs. ``pad`` on the channel axis and
``cat`` are *remaps*: their output is a new space whose positions come from (a source space, an index)
or are constant zero, so the two sides of a remap can be pruned independently and the remap is rebuilt
as an index map (this is how the option-A zero-pad shortcut of CIFAR ResNets is handled exactly).

A merged space is a :class:`ChannelGroup`. A group becomes a *decision* (one RL step) when a conv
(or, optionally, a linear layer) produces it and nothing pins its width: the model input, the model
output and any op the analysis does not understand freeze the groups they touch, and the reason is kept
so that unsupported models fail loudly instead of being pruned wrongly.

By default (``prune_residual=False``) the groups that carry the block-to-block stream are left whole:
groups joined by an elementwise sum (residual adds; an SE gate, which multiplies by a per-channel
scale, couples indices without making a stream) and linear bottlenecks (groups whose channels
reach their consumers through no nonlinearity, as MobileNet-v2's projections). What remains are the
block-internal widths: CIFAR ResNet conv1 outputs, MobileNet-v2 / EfficientNet expansion widths (with
their SE layers), VGG conv outputs.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp


class TraceError(RuntimeError):
    """The model cannot be traced, or its channel coupling cannot be handled safely."""


ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.SiLU, nn.GELU, nn.Sigmoid, nn.Tanh,
                      nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Mish)
PASS_MODULES = (nn.Dropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
ACTIVATION_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.hardtanh, F.hardswish, F.silu, F.gelu, torch.sigmoid,
                        F.sigmoid, torch.tanh, F.leaky_relu, F.elu, F.mish, F.hardsigmoid}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
POOL_FUNCTIONS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d, F.avg_pool2d, F.max_pool2d}
# stochastic_depth (EfficientNet, ConvNeXt) scales whole samples, never mixes channels: identity in eval mode
PASS_FUNCTIONS = POOL_FUNCTIONS | {F.dropout, torch.clone, torchvision.ops.stochastic_depth}
PASS_METHODS = {"contiguous", "clone", "detach"}
MERGE_FUNCTIONS = {operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, torch.add, torch.mul,
                   torch.sub}
MERGE_METHODS = {"add", "add_", "mul", "mul_", "sub"}
GATE_OPS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
RESHAPE_METHODS = {"flatten", "view", "reshape"}
MEAN_FUNCTIONS = {torch.mean}
MEAN_METHODS = {"mean"}


@dataclass
class Remap:
    """A pad/cat node: output positions ``offset .. offset+width`` come from ``source``'s space."""

    node: str
    width: int
    segments: list[tuple[str, int, int]]  # (source node, offset in the output, source width)


@dataclass
class ChannelGroup:
    """Channels that must be kept or dropped together, with the layers that produce and carry them."""

    id: int
    width: int
    nodes: list[str] = field(default_factory=list)  # every node whose output carries the group's channels
    producers: list[str] = field(default_factory=list)  # conv/linear nodes that create them
    remaps: list[str] = field(default_factory=list)  # pad/cat nodes that write into them
    frozen_by: list[str] = field(default_factory=list)  # why the width is pinned (input, output, unknown op)
    merged: bool = False  # a stream: joined by an elementwise sum (residual add; not an SE gate's product)
    activated: bool = False  # passes through a nonlinearity

    @property
    def derived(self) -> bool:
        """Written only by remaps (e.g. a plain ``cat``): its positions follow from the sources' decisions."""
        return not self.producers and len(self.remaps) == 1 and not self.frozen_by


@dataclass
class ChannelAnalysis:
    """Result of :func:`analyse`: the traced module, per-node spaces and the groups."""

    gm: fx.GraphModule
    groups: list[ChannelGroup]
    group_of: dict[str, int]  # node name → group id of its output's channel axis
    flatten_factor: dict[str, int]  # node name → spatial positions per channel after a flatten (1 if none)
    remaps: dict[str, Remap]
    shapes: dict[str, tuple[int, ...]]
    decisions: list[int]  # group ids, forward order

    def group(self, node: str) -> ChannelGroup | None:
        gid = self.group_of.get(node)
        return None if gid is None else self.groups[gid]


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


def trace(model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
    """Symbolic trace plus shape propagation, with an error that names the failing operation."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, AssertionError... depending on the op
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}: {exc}. Data-dependent control flow is not supported; "
            f"wrap the offending submodule as a leaf or rewrite it without Python branches on tensor values"
        ) from exc
    # Annotations written under `from __future__ import annotations` arrive as strings; older torch.fx
    # cannot pickle a module whose generated code names them, so the pruned model could not be saved.
    for node in gm.graph.nodes:
        if isinstance(node.type, str):
            node.type = None
    gm.recompile()
    was_training = gm.training
    gm.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise TraceError(f"shape propagation through {type(model).__name__} failed: {exc}") from exc
    gm.train(was_training)
    return gm


def _shape(node: object) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _op_name(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{node.name} ({node.op} {target})"


def _channel_pad(node: fx.Node) -> tuple[int, int] | None:
    """(before, after) channel padding of an ``F.pad`` on a 4-D tensor, else None."""
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", 0.0)
    if not isinstance(pad, (tuple, list)) or len(pad) < 6 or mode != "constant" or value not in (0, 0.0, None):
        return None
    if any(p != 0 for p in pad[6:]):
        return None
    return int(pad[4]), int(pad[5])


def analyse(model: nn.Module, example: torch.Tensor, *, prune_residual: bool = False,
            prune_linear: bool = False) -> ChannelAnalysis:
    """Trace ``model`` on ``example`` and find its channel groups and decisions."""
    gm = trace(model, example)
    spaces = _Spaces(gm)
    for node in gm.graph.nodes:
        spaces.visit(node)
    return spaces.resolve(prune_residual, prune_linear)


class _Spaces:
    """The channel-space bookkeeping of one traced graph, filled node by node in graph order."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm, self.modules, self.uf = gm, dict(gm.named_modules()), _UnionFind()
        self.space: dict[str, int] = {}  # node → space id (before union-find resolution)
        self.factor: dict[str, int] = {}  # node → positions per channel (C·H·W after a flatten)
        self.frozen: dict[int, list[str]] = {}
        self.merged: set[int] = set()
        self.activated: set[int] = set()
        self.producers: dict[int, list[str]] = {}
        self.remap_nodes: dict[str, Remap] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    # ------------------------------------------------------------------ bookkeeping
    def freeze(self, sid: int, why: str) -> None:
        self.frozen.setdefault(sid, []).append(why)

    def new_space(self, node: fx.Node) -> int:
        sid = self.uf.new()
        self.space[node.name], self.factor[node.name] = sid, 1
        return sid

    def produce(self, node: fx.Node) -> None:
        self.producers.setdefault(self.new_space(node), []).append(node.name)

    def inherit(self, node: fx.Node, src: fx.Node, activation: bool = False) -> None:
        self.space[node.name], self.factor[node.name] = self.space[src.name], self.factor[src.name]
        if activation:
            self.activated.add(self.space[src.name])

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if a.name in self.space]

    def unknown(self, node: fx.Node) -> None:
        why = f"unsupported op {_op_name(node, self.modules)}"
        for a in self.tensor_inputs(node):
            self.freeze(self.space[a.name], why)
        if _shape(node) is not None and len(_shape(node)) >= 2:
            self.freeze(self.new_space(node), why)

    def remap(self, node: fx.Node, segments: list[tuple[str, int, int]]) -> None:
        self.new_space(node)
        self.remap_nodes[node.name] = Remap(node.name, self.shapes[node.name][1], segments)

    # ------------------------------------------------------------------ ops
    def visit(self, node: fx.Node) -> None:
        shape = _shape(node)
        if shape is not None:
            self.shapes[node.name] = shape
        if node.op == "placeholder":
            if shape is not None:
                self.freeze(self.new_space(node), "model input")
            return
        if node.op == "output":
            for a in node.all_input_nodes:
                if a.name in self.space:
                    self.freeze(self.space[a.name], "model output")
            return
        if node.op == "get_attr":
            return
        inputs = self.tensor_inputs(node)
        if shape is None or len(shape) < 2 or not inputs:
            # sizes, ints, non-tensor results: they carry no channels, but a channel tensor consumed by an op
            # that returns a tensor without our bookkeeping would escape the analysis, so be strict.
            if shape is not None and inputs:
                self.unknown(node)
        elif node.op == "call_module":
            self.module_op(node, self.modules[node.target], inputs[0])
        else:
            self.function_op(node, inputs)

    def module_op(self, node: fx.Node, mod: nn.Module, x: fx.Node) -> None:
        in_shape, plain = self.shapes.get(x.name), self.factor[x.name] == 1
        if isinstance(mod, nn.Conv2d) and plain and mod.groups == 1:
            self.produce(node)
        elif isinstance(mod, nn.Conv2d) and plain and mod.groups == mod.in_channels == mod.out_channels:
            self.inherit(node, x)  # depthwise: output channel i is input channel i
        elif isinstance(mod, nn.Linear) and in_shape is not None and len(in_shape) == 2:
            self.produce(node)
        elif isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)) and plain:
            self.inherit(node, x)
        elif isinstance(mod, ACTIVATION_MODULES + PASS_MODULES):
            self.inherit(node, x, activation=isinstance(mod, ACTIVATION_MODULES))
        elif isinstance(mod, nn.Flatten) and mod.start_dim == 1 and in_shape is not None:
            self.flatten(node, x)
        else:
            self.unknown(node)

    def function_op(self, node: fx.Node, inputs: list[fx.Node]) -> None:
        x, target, is_fn = inputs[0], node.target, node.op == "call_function"
        in_shape, plain = self.shapes.get(x.name), self.factor[x.name] == 1

        def kind(functions: set, methods: set) -> bool:
            return target in functions if is_fn else target in methods

        if kind(ACTIVATION_FUNCTIONS, ACTIVATION_METHODS) or kind(PASS_FUNCTIONS, PASS_METHODS):
            self.inherit(node, x, activation=kind(ACTIVATION_FUNCTIONS, ACTIVATION_METHODS))
        elif kind(MERGE_FUNCTIONS, MERGE_METHODS):
            self.merge(node, inputs)
        elif kind(RESHAPE_FUNCTIONS, RESHAPE_METHODS):
            self.flatten(node, x)
        elif kind(MEAN_FUNCTIONS, MEAN_METHODS):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            if dims and all(d % len(in_shape) >= 2 for d in dims) and plain:
                self.inherit(node, x)
            else:
                self.unknown(node)
        elif is_fn and target is operator.getitem:
            idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
            full = slice(None)  # spatial slicing keeps channels, e.g. the option-A subsampling x[:, :, ::2, ::2]
            if len(idx) >= 2 and idx[0] == full and idx[1] == full and plain:
                self.inherit(node, x)
            else:
                self.unknown(node)
        elif is_fn and target is F.pad and _channel_pad(node) is not None and plain:
            before, after = _channel_pad(node)
            if before == after == 0:
                self.inherit(node, x)
            else:
                self.remap(node, [(x.name, before, in_shape[1])])
        elif is_fn and target is torch.cat and _cat_dim(node) == 1 and all(self.factor[a.name] == 1 for a in inputs):
            offsets = [0]
            for a in node.args[0]:
                offsets.append(offsets[-1] + self.shapes[a.name][1])
            self.remap(node, [(a.name, o, self.shapes[a.name][1]) for a, o in zip(node.args[0], offsets)])
        else:
            self.unknown(node)

    def flatten(self, node: fx.Node, x: fx.Node) -> None:
        """[N, C, H, W] → [N, C·H·W] keeps channel c at positions c·H·W … (c+1)·H·W − 1."""
        in_shape, shape = self.shapes.get(x.name), self.shapes[node.name]
        if in_shape is None or self.factor[x.name] != 1:
            self.unknown(node)
        elif len(in_shape) == 4 and len(shape) == 2 and shape[1] == in_shape[1] * in_shape[2] * in_shape[3]:
            self.space[node.name], self.factor[node.name] = self.space[x.name], in_shape[2] * in_shape[3]
        elif shape[:2] == in_shape[:2] and all(s == 1 for s in shape[2:]) and all(s == 1 for s in in_shape[2:]):
            self.space[node.name], self.factor[node.name] = self.space[x.name], 1  # [N, C] ↔ [N, C, 1, 1]
        else:
            self.unknown(node)

    def merge(self, node: fx.Node, inputs: list[fx.Node]) -> None:
        """Elementwise ops: operands with the full channel extent must share indices; broadcast ones do not."""
        channels, shapes = self.shapes[node.name][1], self.shapes
        coupled = [a for a in inputs if len(shapes[a.name]) >= 2 and shapes[a.name][1] == channels and channels > 1]
        if not coupled:
            self.inherit(node, inputs[0])
            return
        op = _op_name(node, self.modules)
        if any(self.factor[a.name] != 1 for a in coupled):
            for a in coupled:
                self.freeze(self.space[a.name], f"elementwise op on flattened channels {op}")
        sid = self.space[coupled[0].name]
        for a in coupled[1:]:
            sid = self.uf.union(sid, self.space[a.name])
        # Tensor constants with a channel extent (get_attr operands) cannot be pruned with the group.
        for a in node.all_input_nodes:
            if a.op == "get_attr":
                self.freeze(sid, f"elementwise op with a constant {op}")
        # A stream is summed (residual add); a product is a gate (SE: x * scale[N, C, 1, 1]) that couples the
        # indices but leaves the group a block-internal width. Decided by the op, not by shapes: on 1×1 maps
        # the gate has the full shape.
        if node.target not in GATE_OPS:
            self.merged.add(sid)
        self.space[node.name], self.factor[node.name] = sid, self.factor[coupled[0].name]

    # ------------------------------------------------------------------ result
    def groups(self) -> list[ChannelGroup]:
        """One group per union-find root, with everything recorded against its spaces."""
        roots: dict[int, ChannelGroup] = {}

        def group_for(sid: int) -> ChannelGroup:
            root = self.uf.find(sid)
            if root not in roots:
                roots[root] = ChannelGroup(len(roots), width=-1)
            return roots[root]

        for name, sid in self.space.items():
            g = group_for(sid)
            width = self.shapes[name][1] // self.factor[name]
            if g.width not in (-1, width):
                raise TraceError(f"channel bookkeeping mismatch at node {name}: {width} vs {g.width} channels")
            g.width = width
            g.nodes.append(name)
        for sid, why in self.frozen.items():
            group_for(sid).frozen_by.extend(why)
        for sid in self.merged:
            group_for(sid).merged = True
        for sid in self.activated:
            group_for(sid).activated = True
        for sid, names in self.producers.items():
            group_for(sid).producers.extend(names)
        for name in self.remap_nodes:
            group_for(self.space[name]).remaps.append(name)
        groups = sorted(roots.values(), key=lambda g: g.id)
        for g in groups:
            if not g.producers and len(g.remaps) > 1:
                g.frozen_by.append(f"several remaps write one group: {g.remaps}")
        return groups

    def resolve(self, prune_residual: bool, prune_linear: bool) -> ChannelAnalysis:
        groups = self.groups()
        group_of = {name: g.id for g in groups for name in g.nodes}
        nodes = {n.name: (i, n.target) for i, n in enumerate(self.gm.graph.nodes)}
        decisions = []
        for g in groups:
            if g.frozen_by or not g.producers:
                continue
            if not prune_linear and any(isinstance(self.modules[nodes[p][1]], nn.Linear) for p in g.producers):
                continue
            if not prune_residual and (g.merged or not g.activated):
                continue
            decisions.append(g.id)
        decisions.sort(key=lambda gid: min(nodes[p][0] for p in groups[gid].producers))
        return ChannelAnalysis(self.gm, groups, group_of, dict(self.factor), self.remap_nodes, self.shapes, decisions)


def _cat_dim(node: fx.Node) -> int | None:
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return dim if isinstance(dim, int) else None


def describe_frozen(analysis: ChannelAnalysis) -> list[str]:
    """Reasons why prunable-looking groups were pinned, for error messages."""
    reasons = []
    for g in analysis.groups:
        if g.producers and g.frozen_by:
            reasons.extend(r for r in g.frozen_by if r not in ("model input", "model output"))
    return sorted(set(reasons))
