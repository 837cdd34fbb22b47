"""The scoring copy of a pruned network: BatchNorm folded into its convolutions, channels_last, and on a CPU in
float32 each convolution fused with the ReLU (and residual add) that follows it into one oneDNN call.

Every episode's pruned network has the same graph as the last one (only channel counts change), so the
inference graph is built once per graph and re-armed per episode with the new module's folded weights — no
deepcopy, no re-tracing, no code generation on the hot path (these took ~40–90 ms of a ~2 s CPU episode).

The arithmetic is the one of ``torch.fx.experimental.optimization.fuse`` (``fuse_conv_bn_weights``, then the
same convolution); oneDNN's post-ops apply ReLU and the add to the convolution's float32 output in the same
order as the separate ops did, so scores are unchanged (tests/test_inference.py checks the logits bit for bit on
ResNets, MobileNet-v2 and a VGG with a BN1d head).
The fused ops are oneDNN's (``torch.ops.mkldnn._convolution_pointwise``, what torch.compile's CPU backend emits);
on CUDA, under bf16 autocast or without oneDNN the graph keeps plain ``F.conv2d`` + ReLU + add.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

_RELUS = (F.relu, torch.relu, torch.relu_)
_ADDS = (operator.add, operator.iadd, torch.add)
_BN_AFTER = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d,
             nn.Linear: nn.BatchNorm1d}


def is_relu(node: fx.Node, kinds: dict[str, type]) -> bool:
    """A ReLU call or module (``kinds``: module name → type)."""
    if node.op == "call_function":
        return node.target in _RELUS and len(node.args) == 1
    return node.op == "call_module" and kinds.get(node.target) is nn.ReLU


def _only_user(node: fx.Node) -> fx.Node | None:
    return next(iter(node.users)) if len(node.users) == 1 else None


def _shape(node: fx.Node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta")
    return getattr(meta, "shape", None)


@dataclass
class _Plan:
    """An inference graph for one source graph, and which source modules fill its slots."""

    code: str
    module: fx.GraphModule
    layers: list[tuple[str, str | None]] = field(default_factory=list)  # w<i>/b<i> ← (conv or linear, its BN)
    shared: dict[str, str] = field(default_factory=dict)  # slot → source module used as it is
    origin: dict[str, str] = field(default_factory=dict)  # node → the source node whose value it computes


class InferenceGraph:
    """Builds (once per source graph) and re-arms (per call) the scoring module of a pruned network.

    ``pointwise=True`` fuses conv + ReLU and conv + add + ReLU into oneDNN calls: valid for CPU tensors in
    float32 only (:meth:`for_device` decides)."""

    def __init__(self, pointwise: bool) -> None:
        self.pointwise = pointwise
        self._plan: _Plan | None = None

    @staticmethod
    def for_device(device: torch.device, dtype: torch.dtype | None) -> InferenceGraph:
        return InferenceGraph(pointwise=device.type == "cpu" and dtype is None and torch.backends.mkldnn.is_available()
                              and hasattr(torch.ops.mkldnn, "_convolution_pointwise"))

    def __call__(self, model: nn.Module, example: torch.Tensor) -> fx.GraphModule:
        """The scoring module for ``model`` (in eval mode; ``model`` is left unchanged, its tensors shared);
        ``example`` is an input batch (one image is enough), run once per new graph to learn its shapes."""
        gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
        return self._arm(self.plan(gm, example), gm)

    def plan(self, gm: fx.GraphModule, example: torch.Tensor) -> _Plan:
        """The (unarmed) plan for ``gm``'s graph, built on first use."""
        if self._plan is None or self._plan.code != gm.code:
            self._plan = self._build(gm, example)
        return self._plan

    def _build(self, gm: fx.GraphModule, example: torch.Tensor) -> _Plan:
        """Copies the graph with every conv / linear (and the BN after it) as a functional call on slot tensors."""
        with torch.inference_mode():
            ShapeProp(gm).propagate(example)  # the fused add needs both operands' shapes to be equal
        modules = dict(gm.named_modules())
        graph, env, plan, kinds = fx.Graph(), {}, _Plan(gm.code, None), {}  # type: ignore[arg-type]
        folded: set[fx.Node] = set()
        for node in gm.graph.nodes:
            if node in folded:
                continue
            mod = modules.get(node.target) if node.op == "call_module" else None
            if type(mod) not in _BN_AFTER:
                if node.op == "call_module":
                    slot = f"m{len(plan.shared)}"
                    plan.shared[slot], kinds[slot] = node.target, type(mod)
                    env[node] = graph.call_module(slot, fx.map_arg(node.args, env.__getitem__),
                                                  fx.map_arg(node.kwargs, env.__getitem__))
                    env[node].meta = dict(node.meta)
                else:
                    env[node] = graph.node_copy(node, env.__getitem__)
                plan.origin[env[node].name] = node.name
                continue
            bn, out, i = _only_user(node), node, len(plan.layers)
            if bn is not None and bn.op == "call_module" and type(modules[bn.target]) is _BN_AFTER[type(mod)]:
                folded.add(bn)
                out = bn
            plan.layers.append((node.target, bn.target if out is bn else None))
            args = (env[node.args[0]], graph.get_attr(f"w{i}"), graph.get_attr(f"b{i}"))
            if isinstance(mod, nn.Linear):
                env[out] = graph.call_function(F.linear, args)
            else:
                op, padding = getattr(F, f"conv{mod.weight.dim() - 2}d"), mod.padding
                if mod.padding_mode != "zeros":  # as the module does it: pad first, then an unpadded conv
                    args = (graph.call_function(F.pad, (args[0], mod._reversed_padding_repeated_twice),
                                                {"mode": mod.padding_mode}), *args[1:])
                    padding = (0,) * (mod.weight.dim() - 2)
                env[out] = graph.call_function(op, (*args, mod.stride, padding, mod.dilation, mod.groups))
            env[out].meta = dict(out.meta)
            plan.origin[env[out].name] = out.name
        if self.pointwise:
            _fuse_pointwise(graph, kinds, plan.origin)
        slots = {**{slot: modules[target] for slot, target in plan.shared.items()},
                 **{f"{kind}{i}": torch.empty(0) for i in range(len(plan.layers)) for kind in "wb"}}
        plan.module = fx.GraphModule(slots, graph, class_name="InferenceModel")
        return plan

    @staticmethod
    def _arm(plan: _Plan, gm: fx.GraphModule) -> fx.GraphModule:
        module = plan.module
        for slot, target in plan.shared.items():
            module._modules[slot] = gm.get_submodule(target)
        for i, (target, bn_name) in enumerate(plan.layers):
            mod = gm.get_submodule(target)
            w, b = mod.weight.detach(), None if mod.bias is None else mod.bias.detach()
            if bn_name is not None:
                bn = gm.get_submodule(bn_name)
                fold = fuse_linear_bn_weights if isinstance(mod, nn.Linear) else fuse_conv_bn_weights
                w, b = (t.detach() for t in fold(w, b, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias))
            module.register_buffer(f"w{i}", w.to(memory_format=torch.channels_last) if w.dim() == 4 else w)
            module.register_buffer(f"b{i}", b)
        return module


def _fuse_pointwise(graph: fx.Graph, kinds: dict[str, type], origin: dict[str, str]) -> None:
    """conv2d → ReLU and conv2d → add → ReLU (each value used only by the next op) become one oneDNN call
    (whose ``origin`` is the ReLU's)."""
    for conv in [n for n in graph.nodes if n.op == "call_function" and n.target is F.conv2d]:
        x, w, b, stride, padding, dilation, groups = conv.args
        if isinstance(padding, str):
            continue
        geometry = (list(padding), list(stride), list(dilation), groups)
        user = _only_user(conv)
        if user is None:
            continue
        if is_relu(user, kinds):
            with graph.inserting_before(user):
                fused = graph.call_function(torch.ops.mkldnn._convolution_pointwise.default,
                                            (x, w, b, *geometry, "relu", [], ""))
            relu, dead = user, (user, conv)
        elif user.target in _ADDS and len(user.args) == 2 and not user.kwargs \
                and _only_user(user) is not None and is_relu(_only_user(user), kinds):
            other = user.args[1] if user.args[0] is conv else user.args[0]
            if not isinstance(other, fx.Node) or _shape(other) is None or _shape(other) != _shape(conv):
                continue  # a broadcast add is not a oneDNN binary post-op
            relu = _only_user(user)
            with graph.inserting_before(relu):
                fused = graph.call_function(torch.ops.mkldnn._convolution_pointwise.binary,
                                            (x, other, w, b, *geometry, "add", 1.0, "relu", [], ""))
            dead = (relu, user, conv)
        else:
            continue
        relu.replace_all_uses_with(fused)
        fused.meta, origin[fused.name] = dict(relu.meta), origin[relu.name]  # its shape: a later add may fuse it
        for node in dead:
            graph.erase_node(node)
