"""SB3 features extractors for the AGMC env's ``Dict`` observation.

- :class:`GraphEncoderExtractor` — AGMC's encoder: graph convolutions (torch-geometric) over the op graph,
  read out as [embedding of the current decision's nodes, pooled graph embedding]. With
  ``decoder="lstm"`` the paper's decoder is added: per-decision embeddings, conditioned on the pooled
  graph embedding, are unrolled by an LSTM over the decision sequence and the output at the current
  decision is the state. The whole sequence is recomputed per call, so the extractor stays stateless
  from SB3's point of view, and both actor and critic losses train encoder and decoder end to end.
- :class:`LayerFeatureExtractor` — AMC's 11 hand-made features (the ``"layer"`` key): the baseline.

A batch of B observations becomes one disjoint-union graph (node offsets b·N), so there is no Python
loop over samples; padded nodes have no edges and are masked out of every readout.

Fast path (GCN layers): every observation of one env carries the same graph (edge_index, edge_mask,
node_mask, node_decision are static; only x and the decision change), so when all rows of a batch share
it the normalised adjacency Â = D^-1/2 (A+I) D^-1/2 is built once (PyG's own ``gcn_norm``, cached per
topology) and each layer is ``Â @ (H W) + b`` for the whole batch at once — one sparse matmul on nodes ×
(batch·features) instead of PyG's per-call normalisation and gather/scatter over B·E edges. The GCNConv
modules (and so the state_dict) are the same; only the arithmetic's order differs (float noise). Batches
with differing graphs, and the other layer types, take the generic PyG path. The checks are cheap per call:
the replay buffer (``agents.algorithms.AMCReplayBuffer``) hands the static keys over as one expanded row,
which is equal across the batch by construction, and the split of x's columns into batch-constant and
per-sample ones is computed once per batch tensor, not once per extractor call. Layer 1's output is also
split by nodes: where it is the same in every row (nodes no decision reaches in one hop), layer 2's dense
product with its weight is computed once for the batch (``_layers_1_2``).
"""
from __future__ import annotations

import warnings

import gymnasium as gym
import torch

# torch-geometric still calls torch.jit.script at import time; the deprecation is not ours to act on.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
import torch_geometric.nn as gnn  # noqa: E402
from torch_geometric.nn.conv.gcn_conv import gcn_norm  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from torch import nn  # noqa: E402

CONV_LAYERS = {"gcn": gnn.GCNConv, "sage": gnn.SAGEConv, "graph": gnn.GraphConv, "gat": gnn.GATConv}
DECODERS = ("none", "lstm")


def _rows_equal(t: torch.Tensor) -> bool:
    """Every row of the batch equals row 0. A batch-stride of 0 (the replay buffer hands static keys over as
    one row expanded) says so without reading the data."""
    return t.shape[0] == 1 or t.stride(0) == 0 or bool((t == t[:1]).all())


class _SharedColumns:
    """Which parts of ``x`` [B, N, F] are equal in every row of its batch, for the last ``x`` seen by any
    extractor: in one SB3 gradient step actor, critic and their targets receive the same two batch tensors
    (observations, next observations) five times, so the [B, N, F] comparison runs twice, not five times.
    The cache keeps ``x`` alive and checks its version, so a tensor changed in place is compared again."""

    _x: torch.Tensor | None = None
    _version = -1
    _split: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def of(cls, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(shared column indices, per-sample column indices, [N] bool: the node's per-sample columns are
        equal in every row)."""
        if x is not cls._x or x._version != cls._version:
            same = (x == x[:1]).all(0)  # [N, F]
            own = (~same.all(0)).nonzero().view(-1)
            cls._x, cls._version = x, x._version
            cls._split = (same.all(0).nonzero().view(-1), own, same.index_select(1, own).all(1))
        return cls._split


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values [B, N, H], weights [B, N] (0/1) → [B, H]; an empty selection gives zeros."""
    total = weights.sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bnh,bn->bh", values, weights) / total


class _Aggregate(torch.autograd.Function):
    """``a @ x (+ bias per feature)`` for a constant sparse ``a`` [N, N] (CSR) and node-major ``x`` [N, B·H];
    the bias add is fused into the sparse addmm, and the backward uses the cached CSR transpose ``a_t``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.a_t = a_t
        if bias is None:
            return a @ x
        ctx.features = bias.numel()
        return torch.addmm(bias.repeat(x.shape[1] // bias.numel()).unsqueeze(0), a, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = ctx.a_t @ grad if ctx.needs_input_grad[2] else None
        grad_bias = grad.sum(0).view(-1, ctx.features).sum(0) if ctx.needs_input_grad[3] else None
        return None, None, grad_x, grad_bias


class _AggregateNodeBias(torch.autograd.Function):
    """``a @ x + node_bias`` for a constant sparse ``a`` [N, M] (CSR), node-major ``x`` [M, B·H] and a
    per-node bias [N, H] broadcast over the batch; ``a_t`` is the cached CSR transpose."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, a_t: torch.Tensor, x: torch.Tensor, node_bias: torch.Tensor) -> torch.Tensor:
        ctx.a_t, ctx.features = a_t, node_bias.shape[1]
        out = a @ x
        out.view(out.shape[0], -1, ctx.features).add_(node_bias.unsqueeze(1))
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = ctx.a_t @ grad if ctx.needs_input_grad[2] else None
        grad_bias = grad.view(grad.shape[0], -1, ctx.features).sum(1) if ctx.needs_input_grad[3] else None
        return None, None, grad_x, grad_bias


class _FirstLayer(torch.autograd.Function):
    """``own @ w.t() + shared[:, None]``: own [N, B, K] (per-sample inputs, no gradient, K small), w [H, K],
    shared [N, H] broadcast over the batch. One baddbmm: a [N·B, K] @ [K, H] matmul with K ≈ 3 is 10× slower
    on CPU, and so is autograd's gᵀ x for the weight gradient, computed here as (xᵀ g)ᵀ."""

    @staticmethod
    def forward(ctx, own: torch.Tensor, w: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(own)
        N, _, K = own.shape
        return torch.baddbmm(shared.unsqueeze(1), own, w.t().expand(N, K, -1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (own,) = ctx.saved_tensors
        grad_w = (own.reshape(-1, own.shape[2]).t() @ grad.reshape(-1, grad.shape[2])).t() \
            if ctx.needs_input_grad[1] else None
        grad_shared = grad.sum(1) if ctx.needs_input_grad[2] else None
        return None, grad_w, grad_shared


class _Topology:
    """One graph's static arrays (row 0 of a batch) and what the fast path derives from them."""

    def __init__(self, obs: dict[str, torch.Tensor], keys: tuple[str, ...], conv: gnn.GCNConv,
                 num_decisions: int | None) -> None:
        self.key = {k: obs[k][0].clone() for k in keys}
        x = obs["x"]
        N = x.shape[1]
        edges = self.key["edge_index"].long()[:, self.key["edge_mask"] > 0.5]
        edges = torch.cat([edges, edges.flip(0)], 1)  # as the PyG path: both ways along the data flow
        edges, weight = gcn_norm(edges, None, N, conv.improved, conv.add_self_loops, conv.flow, x.dtype)
        src, dst = (edges[0], edges[1]) if conv.flow == "source_to_target" else (edges[1], edges[0])
        with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul with a dense matrix is all we use
            warnings.simplefilter("ignore", UserWarning)
            adj = torch.sparse_coo_tensor(torch.stack([dst, src]), weight, (N, N), check_invariants=True).coalesce()
            self.adj = adj.to_sparse_csr()  # out[i] += w·h[j] for each edge j → i, self-loops included
            self.adj_t = adj.t().coalesce().to_sparse_csr()
        self.node_mask = self.key["node_mask"]
        self.count = self.node_mask.sum().clamp_min(1.0)
        self.all_real = bool((self.node_mask == 1).all())  # no padded node: the node-mask product is a no-op
        if num_decisions is not None:  # owner[n, t] = node n belongs to decision t (and is real)
            T = num_decisions
            owner = nn.functional.one_hot(self.key["node_decision"].long().clamp(0, T), T + 1)[:, 1:].to(x.dtype)
            self.owner_t = (owner * self.node_mask.unsqueeze(-1)).t().contiguous()  # [T, N]
            self.owner_count = self.owner_t.sum(1).clamp_min(1.0).view(T, 1, 1)

        self._splits: dict[bytes, _NodeSplit] = {}

    def matches(self, obs: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(obs[k][0], v) for k, v in self.key.items())

    def reaches_only(self, same: torch.Tensor) -> torch.Tensor:
        """[N] bool: every node of the node's neighbourhood in Â (itself included) has ``same`` set."""
        return (self.adj @ (~same).to(self.adj.dtype).unsqueeze(1)).squeeze(1) == 0

    def split(self, constant: torch.Tensor) -> _NodeSplit:
        """The column blocks of Â for a node split (constant [N] bool), cached: the split is the same for
        almost every batch (the nodes no decision reaches in one hop)."""
        key = constant.cpu().numpy().tobytes()
        if key not in self._splits:
            if len(self._splits) >= 16:  # unusual batches: keep the cache small
                self._splits.clear()
            self._splits[key] = _NodeSplit(self.adj, constant)
        return self._splits[key]


class _NodeSplit:
    """Nodes whose layer-1 output is the same in every row of the batch (``const``) and the others (``var``),
    with Â's columns for each as sparse CSR matrices and their transposes (None when a block is empty)."""

    def __init__(self, adj: torch.Tensor, constant: torch.Tensor) -> None:
        self.var, self.const = (~constant).nonzero().view(-1), constant.nonzero().view(-1)
        dense = adj.to_dense()
        self.a_var, self.a_var_t = self._columns(dense, self.var)
        self.a_const, self.a_const_t = self._columns(dense, self.const)

    @staticmethod
    def _columns(dense: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not len(idx):
            return None, None
        cols = dense.index_select(1, idx)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return cols.to_sparse_csr(), cols.t().contiguous().to_sparse_csr()


class GraphEncoderExtractor(BaseFeaturesExtractor):
    """AGMC's graph encoder (+ optional LSTM decoder) as an SB3 features extractor.

    :param observation_space: the env's ``Dict`` space (sizes are read from it, so any env id works).
    :param conv: graph convolution type: ``"gcn"`` (default), ``"sage"``, ``"graph"`` or ``"gat"``.
    :param hidden: width of every graph layer.
    :param layers: number of graph layers.
    :param decoder: ``"none"`` or ``"lstm"`` (the paper's decoder over the decision sequence).
    """

    def __init__(self, observation_space: gym.spaces.Dict, conv: str = "gcn", hidden: int = 64, layers: int = 2,
                 decoder: str = "none") -> None:
        if conv not in CONV_LAYERS:
            raise ValueError(f"unknown graph layer {conv!r}; choose one of {sorted(CONV_LAYERS)}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
        super().__init__(observation_space, features_dim=(3 if decoder == "lstm" else 2) * hidden)
        in_dim = observation_space["x"].shape[1]
        self.convs = nn.ModuleList(CONV_LAYERS[conv](in_dim if i == 0 else hidden, hidden) for i in range(layers))
        self.act = nn.ReLU()
        self.decoder = decoder
        if decoder == "lstm":
            self.num_decisions = int(observation_space["decision_index"].high.max())
            self.lstm = nn.LSTM(2 * hidden, hidden, batch_first=True)
        self.fast = conv == "gcn"  # set False to force the generic PyG path (tests compare the two)
        self._topology: _Topology | None = None  # plain attribute, not a buffer: the state_dict is unchanged

    def _shared_topology(self, obs: dict[str, torch.Tensor]) -> _Topology | None:
        """The cached topology if every row of the batch has row 0's graph, else None (generic path)."""
        keys = ("edge_index", "edge_mask", "node_mask") + (("node_decision",) if self.decoder == "lstm" else ())
        if not all(_rows_equal(obs[k]) for k in keys):
            return None
        topo = self._topology
        if topo is None or topo.adj.device != obs["x"].device or topo.adj.dtype != obs["x"].dtype \
                or not topo.matches(obs):
            with torch.no_grad():
                topo = self._topology = _Topology(obs, keys, self.convs[0],
                                                  self.num_decisions if self.decoder == "lstm" else None)
        return topo

    def _layer1_inputs(self, x: torch.Tensor, topo: _Topology) -> tuple[torch.Tensor, torch.Tensor | None,
                                                                          torch.Tensor]:
        """Layer 1's pre-activation in two parts, split by feature columns. Those equal in every row of the
        batch (the op graph's static features) go through Â and W once for the whole batch: ``shared`` [N, H],
        bias included. The others (keep ratios, current decision) are aggregated per sample: ``own`` = Â X_own
        [N, B, K] (None if there are none), with their weight columns ``w_own`` [H, K]. Layer 1 is
        relu(shared + own w_ownᵀ), the same function as Â (X Wᵀ) + b; x needs no gradient, so Â X doesn't."""
        conv = self.convs[0]
        B, N, _ = x.shape
        weight = conv.lin.weight  # [H, F]
        shared_cols, own_cols, _ = _SharedColumns.of(x)
        shared = conv.bias.view(1, -1).expand(N, -1) if conv.bias is not None else x.new_zeros(N, weight.shape[0])
        if len(shared_cols):
            part = _Aggregate.apply(topo.adj, topo.adj_t, x[0].index_select(1, shared_cols), None)
            shared = part @ weight.index_select(1, shared_cols).t() + shared
        if not len(own_cols):
            return shared, None, weight[:, :0]
        own = x.index_select(2, own_cols).transpose(0, 1).reshape(N, -1)  # [N, B·K]
        own = _Aggregate.apply(topo.adj, topo.adj_t, own, None).view(N, B, -1)
        return shared, own, weight.index_select(1, own_cols)

    def _layers_1_2(self, x: torch.Tensor, shared: torch.Tensor, own: torch.Tensor, w_own: torch.Tensor,
                    topo: _Topology) -> torch.Tensor:
        """Layers 1 and 2 with their ReLUs → [N, B, H]. Nodes whose one-hop neighbourhood has its per-sample
        features equal in every row, so ``own`` too (those no decision reaches in one hop: 63 of ResNet-56's
        225), have one layer-1 output for the whole batch, so layer 2's dense product H₁ W₂ᵀ — the largest
        matmul, forward and backward — runs on the other nodes only, and the constant nodes enter layer 2 as a
        per-node bias Â[:, const] (H₁ W₂ᵀ)[const].
        Same function as Â (H₁ W₂ᵀ) + b₂ over all nodes."""
        conv = self.convs[1]
        N, B, _ = own.shape
        split = topo.split(topo.reaches_only(_SharedColumns.of(x)[2]))
        node_bias = conv.bias.view(1, -1).expand(N, -1) if conv.bias is not None else own.new_zeros(N, w_own.shape[0])
        if len(split.const):
            h_const = torch.relu(shared[split.const] + own[split.const, 0] @ w_own.t())  # [N_const, H]
            node_bias = _Aggregate.apply(split.a_const, split.a_const_t, conv.lin(h_const), None) + node_bias
        if not len(split.var):
            return torch.relu(node_bias).unsqueeze(1).expand(N, B, -1)
        # ReLUs in place (no second [N, B, H] tensor): _FirstLayer keeps its input for backward, not its output,
        # and _AggregateNodeBias nothing; before the view, as in place on a view autograd would copy it back.
        h_var = torch.relu_(_FirstLayer.apply(own[split.var], w_own, shared[split.var]))
        y = conv.lin(h_var).view(len(split.var), -1)
        return torch.relu_(_AggregateNodeBias.apply(split.a_var, split.a_var_t, y, node_bias)).view(N, B, -1)

    def _fast_layers(self, x: torch.Tensor, topo: _Topology) -> torch.Tensor:
        """All graph layers with their ReLUs → node-major [N, B, H]; each layer is one sparse matmul."""
        B, N, _ = x.shape
        shared, own, w_own = self._layer1_inputs(x, topo)
        if own is None:  # every row of the batch is the same state
            h, rest = torch.relu(shared).unsqueeze(1).expand(N, B, -1), self.convs[1:]
        elif len(self.convs) == 1:
            return torch.relu_(_FirstLayer.apply(own, w_own, shared))
        else:
            h, rest = self._layers_1_2(x, shared, own, w_own, topo), self.convs[2:]
        for conv in rest:
            h = torch.relu_(_Aggregate.apply(topo.adj, topo.adj_t, conv.lin(h).view(N, -1), conv.bias)).view(N, B, -1)
        return h

    def _fast_forward(self, obs: dict[str, torch.Tensor], topo: _Topology) -> torch.Tensor:
        """The shared-graph path: node-major activations [N, B, H], so each layer is one sparse matmul."""
        x = obs["x"]
        B, N, F = x.shape
        h = self._fast_layers(x, topo)
        if not topo.all_real:
            h = h * topo.node_mask.view(N, 1, 1)
        H = h.shape[-1]
        # Readouts. Their backward writes a gradient for every node: a sum's is a broadcast view, and the
        # current decision's few nodes are gathered, so neither makes a dense outer product.
        if topo.all_real:
            graph = h.sum(0) / topo.count
        else:
            graph = (topo.node_mask @ h.reshape(N, -1)).view(B, H) / topo.count
        dn = obs["decision_nodes"]
        b_idx, n_idx = dn.nonzero(as_tuple=True)
        picked = h[n_idx, b_idx] * dn[b_idx, n_idx].unsqueeze(1)  # [K, H]
        current = h.new_zeros(B, H).index_add_(0, b_idx, picked) / dn.sum(1, keepdim=True).clamp_min(1.0)
        if self.decoder == "none":
            return torch.cat([current, graph], 1)
        T = self.num_decisions
        per_decision = (topo.owner_t @ h.reshape(N, -1)).view(T, B, H) / topo.owner_count  # [T, B, H]
        seq = torch.cat([per_decision, graph.unsqueeze(0).expand(T, -1, -1)], 2).transpose(0, 1)
        out, _ = self.lstm(seq)
        t = obs["decision_index"].long().view(-1).clamp(0, T - 1)
        state = out[torch.arange(len(t), device=out.device), t]
        return torch.cat([state, current, graph], 1)

    def _encode(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        x = obs["x"]
        B, N, _ = x.shape
        edge_index = obs["edge_index"].long()  # SB3 hands Box observations over as floats
        edge_mask = obs["edge_mask"] > 0.5
        offsets = (torch.arange(B, device=x.device) * N).view(B, 1, 1)
        edges = (edge_index + offsets).permute(1, 0, 2).reshape(2, -1)[:, edge_mask.reshape(-1)]
        edges = torch.cat([edges, edges.flip(0)], 1)  # message passing both ways along the data flow
        h = x.reshape(B * N, -1)
        for conv in self.convs:
            h = self.act(conv(h, edges))
        return h.view(B, N, -1) * obs["node_mask"].unsqueeze(-1)

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        topo = self._shared_topology(obs) if self.fast else None
        if topo is not None:
            return self._fast_forward(obs, topo)
        h = self._encode(obs)
        graph = _masked_mean(h, obs["node_mask"])
        current = _masked_mean(h, obs["decision_nodes"])
        if self.decoder == "none":
            return torch.cat([current, graph], 1)
        # Per-decision embeddings [B, T, H] from node_decision (1 + decision id, 0 = none), one matmul.
        T = self.num_decisions
        owner = nn.functional.one_hot(obs["node_decision"].long().clamp(0, T), T + 1)[..., 1:].float()
        owner = owner * obs["node_mask"].unsqueeze(-1)
        per_decision = torch.einsum("bnh,bnt->bth", h, owner) / owner.sum(1).clamp_min(1.0).unsqueeze(-1)
        seq = torch.cat([per_decision, graph.unsqueeze(1).expand(-1, T, -1)], 2)
        out, _ = self.lstm(seq)
        t = obs["decision_index"].long().view(-1).clamp(0, T - 1)
        state = out[torch.arange(len(t), device=out.device), t]
        return torch.cat([state, current, graph], 1)


class LayerFeatureExtractor(BaseFeaturesExtractor):
    """AMC's rule-based state: the 11 hand-made features of the current decision, as they are."""

    def __init__(self, observation_space: gym.spaces.Dict) -> None:
        super().__init__(observation_space, features_dim=int(observation_space["layer"].shape[0]))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        return obs["layer"].float()


# The CLI's --embedding names: (extractor class, its kwargs).
EMBEDDINGS: dict[str, tuple[type[BaseFeaturesExtractor], dict]] = {
    "gnn": (GraphEncoderExtractor, {}),
    "gnn-lstm": (GraphEncoderExtractor, {"decoder": "lstm"}),
    "amc": (LayerFeatureExtractor, {}),
}
