"""An int8 scoring copy of a pruned network, for CPUs where float32 convolutions are the whole episode.

Built on the float32 scoring graph (``agmc_env.inference``, BN folded, conv + ReLU (+ add) fused): every fused
convolution whose input is non-negative (a ReLU's output, or a slice / zero-pad of one) becomes oneDNN's
int8 convolution with the same ReLU (and residual add) as post-ops, reading and writing uint8 activations.
Weights are quantised per output channel (symmetric int8), activations per tensor (uint8, zero point 0, the
scale from the largest value seen on calibration images in float32); biases and accumulation stay exact
(float32 / int32). Other ops run in float32 on dequantised values (the stem, the pooling and the classifier
in a ResNet). Post-training static quantisation with min/max observers, redone per episode because every
episode's network is new; the maxima are observed during the BN recalibration's pass (``agmc_env.evaluate``),
so calibrating costs no extra forward pass.

Like bf16 it changes the arithmetic, not the images or the network: the env uses it only when asked
(``amp="int8"``) or when ``amp="auto"`` has no native bf16 that passes, and int8 keeps the unpruned model's
reward-split accuracy within the same 0.2-pt tolerance. Over 120 random ResNet-56 policies it moved the reward by
0.48 pt on average and kept the ranking as well as another set of calibration images does
(``benchmarks/results/precision_fidelity_*.md``).
"""
from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from agmc_env.inference import is_relu

_CONV = torch.ops.mkldnn._convolution_pointwise


def int8_supported() -> bool:
    """oneDNN's int8 convolution is compiled in (x86 builds of torch)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops, "onednn") \
        and hasattr(torch.ops.onednn, "qconv2d_pointwise") and hasattr(torch.ops.onednn, "qconv_prepack")


def _scale(amax: float) -> float:
    return max(amax, 1e-8) / 255.0


class Quantize(nn.Module):
    """float32 (non-negative) → uint8 at ``scale`` (re-armed per episode)."""

    scale: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place after the first op: a fresh 4-MB temporary per op costs more than the arithmetic (page faults)
        return x.mul(1.0 / self.scale).round_().clamp_(0, 255).to(torch.uint8)


class Dequantize(nn.Module):
    """uint8 at ``scale`` → float32."""

    scale: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(self.scale)


class QConv2d(nn.Module):
    """uint8 → int8 conv → (+ uint8 residual) → ReLU → uint8, one oneDNN call; weights packed per episode."""

    def __init__(self, stride: list[int], padding: list[int], dilation: list[int], groups: int) -> None:
        super().__init__()
        self.geometry, self.groups = (stride, padding, dilation), groups
        self.x_scale = self.out_scale = self.accum_scale = 1.0
        self.packed = self.w_scales = self.w_zero = self.bias = None

    def arm(self, weight: torch.Tensor, bias: torch.Tensor | None, x_scale: float, out_scale: float,
            accum_scale: float = 1.0) -> None:
        w = weight.detach().float()
        w_scales = (w.flatten(1).abs().amax(1) / 127.0).clamp_min(1e-12)
        qw = torch.round(w / w_scales.view(-1, *[1] * (w.dim() - 1))).clamp_(-128, 127).to(torch.int8)
        self.packed = torch.ops.onednn.qconv_prepack(qw.contiguous(memory_format=torch.channels_last), w_scales,
                                                     x_scale, 0, *self.geometry, self.groups, None)
        self.w_scales, self.w_zero = w_scales, torch.zeros(len(w_scales), dtype=torch.long)
        self.bias = None if bias is None else bias.detach().float()
        self.x_scale, self.out_scale, self.accum_scale = x_scale, out_scale, accum_scale

    def forward(self, x: torch.Tensor, accum: torch.Tensor | None = None) -> torch.Tensor:
        if accum is None:
            return torch.ops.onednn.qconv2d_pointwise(
                x, self.x_scale, 0, self.packed, self.w_scales, self.w_zero, self.bias, *self.geometry, self.groups,
                self.out_scale, 0, None, "relu", [], "")
        # oneDNN's sum post-op writes into the residual: the plan passes a tensor nothing reads afterwards.
        return torch.ops.onednn.qconv2d_pointwise.binary(
            x, self.x_scale, 0, self.packed, self.w_scales, self.w_zero, accum, self.bias, *self.geometry,
            self.groups, self.out_scale, 0, None, self.accum_scale, 0, "sum", 1.0, "relu", [], "")


def _fused_relu_conv(node: fx.Node) -> bool:
    """A oneDNN conv + ReLU or conv + add + ReLU from ``agmc_env.inference``."""
    if node.op != "call_function":
        return False
    if node.target is _CONV.default:
        return node.args[7] == "relu"
    return node.target is _CONV.binary and node.args[8] == "add" and node.args[10] == "relu"


_POOLS = (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _is_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Max / average pooling: run in float32, non-negative in, non-negative out."""
    if node.op == "call_function":
        return node.target in _POOLS
    return node.op == "call_module" and isinstance(modules.get(node.target), _POOL_MODULES)


def _is_view(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A slice, or an identity module: the output shares the input's storage."""
    if node.op == "call_module":
        return type(modules.get(node.target)) is nn.Identity
    return node.op == "call_function" and node.target is operator.getitem


def _is_layout(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Ops that move uint8 values without changing them (a zero pad keeps zero point 0 at zero)."""
    if _is_view(node, modules):
        return True
    return node.op == "call_function" and node.target is F.pad and len(node.args) == 2 \
        and node.kwargs.get("mode", "constant") == "constant" and not node.kwargs.get("value")


def _aliases(node: fx.Node, modules: dict[str, nn.Module]) -> list[fx.Node]:
    """``node`` and the nodes whose storage it views."""
    chain = [node]
    while _is_view(chain[-1], modules):
        chain.append(chain[-1].args[0])
    return chain


def observe_maxima(module: fx.GraphModule, names: set[str], batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """The largest value each named node of ``module``'s graph outputs over ``batches`` (run as ``module`` would)."""
    maxima: dict[str, float] = {}

    class Observer(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            if n.name in names:
                maxima[n.name] = max(maxima.get(n.name, 0.0), float(out.amax()))
            return out

    observer = Observer(module)
    for batch in batches:
        observer.run(batch)
    return maxima


class Int8Graph:
    """Builds (once per float32 scoring graph) and re-arms (per call) the int8 scoring module.

    ``roots(fused)`` names the float32 nodes whose largest calibration value sets a scale; ``__call__`` takes
    those maxima (from :func:`observe_maxima` on ``fused``, or observed on the source network during BN
    recalibration) and returns the armed int8 module."""

    def __init__(self) -> None:
        self._key: str | None = None
        self._module: fx.GraphModule | None = None
        self._convs: list[tuple[str, int, str, str, str | None]] = []  # slot, layer i (w<i>), x / out / accum roots
        self._scaled: list[tuple[str, str]] = []  # Quantize / Dequantize slot → the root whose scale it uses
        self._roots: set[str] = set()
        self._shared: list[str] = []  # attributes of the float32 module the int8 one reads as they are

    def roots(self, fused: fx.GraphModule) -> set[str]:
        if self._key != fused.code:
            self._build(fused)
            self._key = fused.code
        return self._roots

    def __call__(self, fused: fx.GraphModule, maxima: dict[str, float]) -> fx.GraphModule:
        """The int8 module for ``fused`` (an armed ``InferenceGraph`` module) at the scales ``maxima`` give."""
        roots = self.roots(fused)
        if missing := roots - set(maxima):
            raise ValueError(f"no calibration maximum for {sorted(missing)[:3]}…: observe the roots of this graph")
        module = self._module
        for name in self._shared:
            if name in fused._modules:
                module._modules[name] = fused._modules[name]
            else:
                setattr(module, name, getattr(fused, name))
        scale = {name: _scale(maxima[name]) for name in roots}
        for slot, source in self._scaled:
            module.get_submodule(slot).scale = scale[source]
        for slot, i, x_root, out_root, accum_root in self._convs:
            module.get_submodule(slot).arm(getattr(fused, f"w{i}"), getattr(fused, f"b{i}"), scale[x_root],
                                           scale[out_root], scale[accum_root] if accum_root else 1.0)
        return module

    def _build(self, fused: fx.GraphModule) -> None:
        modules = dict(fused.named_modules())
        kinds = {name: type(module) for name, module in modules.items()}
        order = {n: i for i, n in enumerate(fused.graph.nodes)}
        graph, env, slots = fx.Graph(), {}, {}
        root: dict[fx.Node, str] = {}  # a node computed in uint8 → the float32 node its scale comes from
        nonneg: set[fx.Node] = set()
        dequantized: dict[fx.Node, fx.Node] = {}
        quantized: dict[fx.Node, fx.Node] = {}
        self._convs, self._scaled, self._roots = [], [], set()

        def scaled(module: nn.Module, prefix: str, source: str, arg: fx.Node) -> fx.Node:
            slot = f"{prefix}{len(slots)}"
            slots[slot] = module
            self._scaled.append((slot, source))
            self._roots.add(source)
            return graph.call_module(slot, (arg,))

        def as_float(node: fx.Node) -> fx.Node:
            if node not in root:
                return env[node]
            if node not in dequantized:
                dequantized[node] = scaled(Dequantize(), "dq", root[node], env[node])
            return dequantized[node]

        def as_uint8(node: fx.Node) -> tuple[fx.Node, str]:
            """``node``'s value in uint8 and the root of its scale (one Quantize per float32 value)."""
            while node not in root and node.op == "call_module" and _is_view(node, modules):
                node = node.args[0]  # an identity module: quantise what it passes on
            if node in root:
                return env[node], root[node]
            if node not in quantized:
                quantized[node] = scaled(Quantize(), "q", node.name, env[node])
            return quantized[node], node.name

        def overwritable(accum: fx.Node, conv: fx.Node) -> bool:
            """Nothing reads ``accum``'s storage after ``conv``, and ``conv`` does not read it as its input."""
            chain = _aliases(accum, modules)
            return all(order[user] <= order[conv] for alias in chain for user in alias.users) \
                and not set(chain) & set(_aliases(conv.args[0], modules))

        for node in fused.graph.nodes:
            binary = node.target is _CONV.binary
            if _fused_relu_conv(node) and node.args[0] in nonneg and (not binary or node.args[1] in nonneg):
                padding, stride, dilation, groups = node.args[4:8] if binary else node.args[3:7]
                slot = f"qc{len(slots)}"
                slots[slot] = QConv2d(list(stride), list(padding), list(dilation), groups)
                x, x_root = as_uint8(node.args[0])
                args, accum_root = (x,), None
                if binary:
                    accum, accum_root = as_uint8(node.args[1])
                    if not overwritable(node.args[1], node):  # the sum post-op writes into it
                        accum = graph.call_method("clone", (accum,))
                    args = (x, accum)
                env[node], root[node] = graph.call_module(slot, args), node.name
                self._roots.update(r for r in (node.name, x_root, accum_root) if r)
                self._convs.append((slot, int(node.args[2 if binary else 1].target[1:]), x_root, node.name,
                                    accum_root))
            elif _is_layout(node, modules) and node.args[0] in root:
                env[node], root[node] = graph.node_copy(node, lambda n: env[n]), root[node.args[0]]
            else:
                env[node] = graph.node_copy(node, as_float)
            if _fused_relu_conv(node) or is_relu(node, kinds) or (
                    (_is_layout(node, modules) or _is_pool(node, modules)) and node.args[0] in nonneg):
                nonneg.add(node)
        for node in [n for n in graph.nodes if n.op == "get_attr" and not n.users]:  # the int8 convs' w<i>, b<i>
            graph.erase_node(node)
        self._shared = sorted({n.target for n in graph.nodes if n.op in ("get_attr", "call_module")} - set(slots))
        slots.update({name: fused.get_submodule(name) if name in fused._modules else getattr(fused, name)
                      for name in self._shared})
        self._module = fx.GraphModule(slots, graph, class_name="Int8InferenceModel")
