"""The DNN as a typed op graph: one node per traced tensor op, edges along the data flow, node features
that describe the network (not random vectors, unlike the reference code).

Static features per node: op type (one-hot over :data:`OP_TYPES`), in/out channels, kernel, stride,
groups, feature-map size (log scales, normalised by the network's maximum), share of the network's
MACs and parameters, and a prunable flag. Dynamic features: the keep ratio decided so far for the
node's output and input channels (1 while undecided) and a flag on the nodes of the current decision.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agmc_env import decisions as dec
from agmc_env.decisions import ChannelAnalysis

OP_TYPES = ("conv", "dwconv", "linear", "batchnorm", "activation", "add", "concat", "pool", "shortcut",
            "flatten", "other")
STATIC_FEATURES = (*(f"op_{t}" for t in OP_TYPES), "in_channels", "out_channels", "kernel", "stride", "groups",
                   "feature_map", "macs_share", "log_macs", "params_share", "prunable")
DYNAMIC_FEATURES = ("keep_out", "keep_in", "current")
FEATURES = STATIC_FEATURES + DYNAMIC_FEATURES


def _op_type(node: torch.fx.Node, modules: dict[str, nn.Module], analysis: ChannelAnalysis) -> str:
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, nn.Conv2d):
            return "dwconv" if mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels else "conv"
        if isinstance(mod, nn.Linear):
            return "linear"
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            return "batchnorm"
        if isinstance(mod, dec.ACTIVATION_MODULES):
            return "activation"
        if isinstance(mod, dec.POOL_MODULES):
            return "pool"
        if isinstance(mod, nn.Flatten):
            return "flatten"
        return "other"
    t, fn = node.target, node.op == "call_function"
    if (fn and t in dec.ACTIVATION_FUNCTIONS) or (not fn and t in dec.ACTIVATION_METHODS):
        return "activation"
    if (fn and t in dec.MERGE_FUNCTIONS) or (not fn and t in dec.MERGE_METHODS):
        return "add"
    if fn and t is torch.cat:
        return "concat"
    if (fn and t in dec.POOL_FUNCTIONS | dec.MEAN_FUNCTIONS) or (not fn and t in dec.MEAN_METHODS):
        return "pool"
    if node.name in analysis.remaps or (fn and t.__name__ in ("getitem", "pad")):
        return "shortcut"
    if (fn and t in dec.RESHAPE_FUNCTIONS) or (not fn and t in dec.RESHAPE_METHODS):
        return "flatten"
    return "other"


def _lognorm(values: np.ndarray) -> np.ndarray:
    top = np.log2(1.0 + values.max()) if len(values) and values.max() > 0 else 1.0
    return np.log2(1.0 + values) / top


@dataclass
class OpGraph:
    """Node list, edges and static features of the analysed network, plus the per-node decision links."""

    names: list[str]
    op_types: list[str]
    edge_index: np.ndarray  # [2, E] int64, forward data flow
    static: np.ndarray  # [N, len(STATIC_FEATURES)] float32
    out_decision: np.ndarray  # [N] decision index of the node's output channels, −1 if none
    in_decision: np.ndarray  # [N] decision index of the node's (first) input channels, −1 if none

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    def features(self, ratios: np.ndarray, current: int | None) -> np.ndarray:
        """Node features for decided keep ratios ``ratios`` (1 for undecided) while deciding ``current``."""
        pad = np.concatenate([ratios, [1.0]]).astype(np.float32)  # index −1 → "no decision" → 1
        dyn = np.stack([pad[self.out_decision], pad[self.in_decision],
                        (self.out_decision == current).astype(np.float32) if current is not None
                        else np.zeros(self.num_nodes, np.float32)], axis=1)
        return np.concatenate([self.static, dyn], axis=1)

    def retarget(self, decision_of: dict[str, int]) -> OpGraph:
        """The same graph with other decisions (e.g. one per weight layer): node name → decision index;
        the prunable flag follows."""
        out_dec = np.array([decision_of.get(n, -1) for n in self.names], dtype=np.int64)
        static = self.static.copy()
        static[:, STATIC_FEATURES.index("prunable")] = (out_dec >= 0).astype(np.float32)
        return OpGraph(self.names, self.op_types, self.edge_index, static, out_dec, np.full_like(out_dec, -1))

    def to_pyg(self, x: np.ndarray):  # -> torch_geometric.data.Data (imported lazily: heavy import)
        from torch_geometric.data import Data

        return Data(x=torch.from_numpy(x), edge_index=torch.from_numpy(self.edge_index),
                    op_type=[OP_TYPES.index(t) for t in self.op_types], names=self.names)


def build_graph(analysis: ChannelAnalysis) -> OpGraph:
    """One node per traced op that produces a tensor with a channel axis (plus the input)."""
    gm = analysis.gm
    modules = dict(gm.named_modules())
    slot = {gid: t for t, gid in enumerate(analysis.decisions)}
    nodes = [n for n in gm.graph.nodes if n.name in analysis.shapes and len(analysis.shapes[n.name]) >= 2
             and n.op != "output"]
    index = {n.name: i for i, n in enumerate(nodes)}
    edges = [(index[a.name], index[n.name]) for n in nodes for a in n.all_input_nodes if a.name in index]
    n_nodes = len(nodes)
    cin, cout, kernel, stride, groups, fmap, macs, params = (np.zeros(n_nodes) for _ in range(8))
    out_dec = np.full(n_nodes, -1, dtype=np.int64)
    in_dec = np.full(n_nodes, -1, dtype=np.int64)
    types = []
    for i, n in enumerate(nodes):
        shape = analysis.shapes[n.name]
        types.append(_op_type(n, modules, analysis))
        cout[i] = shape[1]
        fmap[i] = math.prod(shape[2:]) if len(shape) > 2 else 1
        src = next((a for a in n.all_input_nodes if a.name in analysis.shapes), None)
        cin[i] = analysis.shapes[src.name][1] if src is not None and len(analysis.shapes[src.name]) >= 2 else 0
        out_dec[i] = slot.get(analysis.group_of.get(n.name, -1), -1)
        if src is not None:
            in_dec[i] = slot.get(analysis.group_of.get(src.name, -1), -1)
        if n.op == "call_module":
            mod = modules[n.target]
            params[i] = sum(p.numel() for p in mod.parameters(recurse=False))
            if isinstance(mod, nn.Conv2d):
                kernel[i], stride[i], groups[i] = mod.kernel_size[0], mod.stride[0], mod.groups
                macs[i] = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1] * math.prod(shape[1:])
            elif isinstance(mod, nn.Linear):
                kernel[i] = stride[i] = groups[i] = 1
                macs[i] = mod.in_features * mod.out_features
    onehot = np.zeros((n_nodes, len(OP_TYPES)))
    onehot[np.arange(n_nodes), [OP_TYPES.index(t) for t in types]] = 1.0
    static = np.column_stack([
        onehot, _lognorm(cin), _lognorm(cout), kernel / max(kernel.max(), 1), stride / max(stride.max(), 1),
        _lognorm(groups), _lognorm(fmap), macs / max(macs.sum(), 1), _lognorm(macs), params / max(params.sum(), 1),
        ((out_dec >= 0) | (in_dec >= 0)).astype(np.float64),
    ]).astype(np.float32)
    edge_index = np.array(edges, dtype=np.int64).T.reshape(2, -1)
    return OpGraph([n.name for n in nodes], types, edge_index, static, out_dec, in_dec)
