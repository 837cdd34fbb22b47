"""SB3 features extractors for the AGMC env's ``Dict`` observation.

- :class:`GraphEncoderExtractor` — AGMC's encoder: graph convolutions (torch-geometric) over the op graph,
  read out as [embedding of the current decision's nodes, pooled graph embedding]. With
  ``decoder="lstm"`` the paper's decoder is added: per-decision embeddings, conditioned on the pooled
  graph embedding, are unrolled by an LSTM over the decision sequence and the output at the current
  decision is the state. The whole sequence is recomputed per call, so the extractor stays stateless
  from SB3's point of view, and both actor and critic losses train encoder and decoder end to end.
  With ``budget=True`` (``--embedding gnn-budget``) the budget state of AMC's features is appended; with
  ``position=True`` (``--embedding gnn-pos``) the current decision's position in the sequence.
- :class:`LayerFeatureExtractor` — AMC's 11 hand-made features (the ``"layer"`` key): the baseline.

A batch of B observations becomes one disjoint-union graph (node offsets b·N), so there is no Python
loop over samples; padded nodes have no edges and are masked out of every readout.

Fast path (GCN layers): every observation of one env carries the same graph (edge_index, edge_mask,
node_mask, node_decision are static; only x and the decision change), so when all rows of a batch share
it the normalised adjacency Â = D^-1/2 (A+I) D^-1/2 is built once (PyG's own ``gcn_norm``, cached per
topology). The replay buffer (``agents.algorithms.AMCReplayBuffer``) hands the static keys over as one
expanded row, so the check reads no data. On that graph the batch's node rows are mostly repeats: the
per-sample features (keep ratios rounded to channel counts, the current decision) take few values per node,
so a ResNet-56 batch of 64 has ~850 distinct layer-1 and ~1150 distinct layer-2 node states among its
225 × 64 node rows. :class:`_Unrolled` finds them once per batch tensor (exact ids from
``agents.node_states``, which interns each stored observation's states once) and each layer runs on the distinct
states only: one sparse matmul ``S (H Wᵀ) + b`` per layer (layer 1 as ``(S X) Wᵀ + b``,
with ``S X`` computed once per batch tensor), then sparse readout matmuls. Each sparse product (and its transpose in
the backward) runs as torch's weighted ``embedding_bag`` over the CSR arrays, which beats the sparse-dense matmul
on a CPU for these shapes.
The GCNConv modules (and so the state_dict) are the same and every output row is the function PyG's
``Â (H Wᵀ) + b`` computes; only the summation order differs (float noise). Batches with differing graphs,
and the other layer types, take the generic PyG path.
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import torch

# torch-geometric still calls torch.jit.script at import time; the deprecation is not ours to act on.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
# "Sparse CSR tensor support is in beta": matmul with a dense matrix is all we use. One filter at import, not a
# warnings.catch_warnings() per matrix, which rewrites the filter list each time.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
import torch_geometric.nn as gnn  # noqa: E402
from torch_geometric.nn.conv.gcn_conv import gcn_norm  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from torch import nn  # noqa: E402

from agents.node_states import NodeStates, Stored  # noqa: E402
from agmc_env.env import LAYER_FEATURES  # noqa: E402

BUDGET_FEATURES = ("reduced", "rest", "prev_action")  # of the env's LAYER_FEATURES: where the budget stands
CONV_LAYERS = {"gcn": gnn.GCNConv, "sage": gnn.SAGEConv, "graph": gnn.GraphConv, "gat": gnn.GATConv}
DECODERS = ("none", "lstm")


def _rows_equal(t: torch.Tensor) -> bool:
    """Every row of the batch equals row 0. A batch-stride of 0 (the replay buffer hands static keys over as
    one row expanded) says so without reading the data."""
    return t.shape[0] == 1 or t.stride(0) == 0 or bool((t == t[:1]).all())



def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values [B, N, H], weights [B, N] (0/1) → [B, H]; an empty selection gives zeros."""
    total = weights.sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bnh,bn->bh", values, weights) / total


class _Sparse:
    """A constant sparse matrix (CSR) for :class:`_Aggregate`, and its transpose, built on first use: only a
    backward needs it, and the batches the target networks see never go backward."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
                 ordered: bool = False, transposed: Callable[[], tuple[torch.Tensor, ...]] | None = None):
        self.a = _csr(rows, cols, values, shape, ordered)
        self._entries, self._transposed, self._t = (rows, cols, values, shape), transposed, None

    @property
    def t(self) -> torch.Tensor:
        """Aᵀ: from ``transposed()`` (its entries, row-major) when given, else by one sort of A's entries."""
        if self._t is None:
            rows, cols, values, (r, c) = self._entries
            self._t = _csr(*self._transposed(), (c, r), ordered=True) if self._transposed is not None \
                else _csr(cols, rows, values, (c, r))
        return self._t


def _times(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``a @ x`` for a sparse CSR ``a`` [R, C] and a dense ``x`` [C, H], as one weighted embedding-bag sum of x's rows
    per row of ``a`` (the same products, summed in the row's order): on a CPU torch's embedding_bag kernel takes
    about half the time of the sparse-dense matmul on these matrices (ResNet-56 graph readout of 199 rows: 0.17 ms
    against 0.38 at one thread)."""
    return nn.functional.embedding_bag(a.col_indices(), x.contiguous(), a.crow_indices()[:-1], mode="sum",
                                       per_sample_weights=a.values())


class _Aggregate(torch.autograd.Function):
    """``a @ x (+ bias per feature)`` for a constant sparse ``a`` [R, C] and ``x`` [C, H]; the backward multiplies by
    ``a``'s transpose."""

    @staticmethod
    def forward(ctx, a: _Sparse, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.sparse = a
        out = _times(a.a, x)
        return out if bias is None else out.add_(bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = _times(ctx.sparse.t, grad) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return None, grad_x, grad_bias


def _csr(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int],
         ordered: bool = False) -> torch.Tensor:
    """A sparse CSR matrix from entries without repeats; unless ``ordered`` (row-major already), one sort
    puts them in order (cheaper than COO's coalesce)."""
    if not ordered:
        order = torch.argsort(rows * shape[1] + cols)
        rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)  # valid by construction


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
        adj = torch.sparse_coo_tensor(torch.stack([dst, src]), weight, (N, N), check_invariants=True).coalesce()
        self.adj = adj.to_sparse_csr()  # out[i] += w·h[j] for each edge j → i, self-loops included
        self.node_mask = self.key["node_mask"]
        self.count = self.node_mask.sum().clamp_min(1.0)
        if num_decisions is not None:  # owner[n, t] = node n belongs to decision t (and is real)
            T = num_decisions
            owner = nn.functional.one_hot(self.key["node_decision"].long().clamp(0, T), T + 1)[:, 1:].to(x.dtype)
            self.owner_t = (owner * self.node_mask.unsqueeze(-1)).t().contiguous()  # [T, N]
            self.owner_count = self.owner_t.sum(1).clamp_min(1.0)  # [T]
        # Â's rows as a padded neighbour table [N, D] (self-loop included): what NodeStates keys layers by.
        crow, col = self.adj.crow_indices(), self.adj.col_indices()
        degree = crow.diff()
        slot = torch.arange(int(degree.max()) if N else 0, device=x.device)
        self.valid = slot < degree.unsqueeze(1)
        at = (crow[:-1].unsqueeze(1) + slot).clamp_max(max(len(col) - 1, 0))
        self.padded = torch.where(self.valid, col[at], N)  # empty slots → row N: a zero row appended to the ids
        self.weights = torch.where(self.valid, self.adj.values()[at], 0)
        self._states: dict[int, NodeStates] = {}  # by graph layers: see node_states()

    def matches(self, obs: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(obs[k][0], v) for k, v in self.key.items())

    def node_states(self, layers: int) -> NodeStates:
        """This graph's interned node states for ``layers`` graph layers, one table for all the extractors on the
        same graph (actor, critic and their targets): each state is interned once."""
        if layers not in self._states:
            with _NODE_STATES_LOCK:
                states = next((states for topo, states in _NODE_STATES if states.layers == layers
                               and topo.adj.device == self.adj.device and topo.adj.dtype == self.adj.dtype
                               and self.same_graph(topo)), None)
                if states is None:
                    states = NodeStates(self.padded, self.valid, self.weights, layers)
                    _NODE_STATES.insert(0, (self, states))
                    del _NODE_STATES[4:]  # the graphs met most recently
            self._states[layers] = states
        return self._states[layers]

    def same_graph(self, other: _Topology) -> bool:
        return self is other or (self.key.keys() == other.key.keys()
                                 and all(torch.equal(v, other.key[k]) for k, v in self.key.items())
                                 and torch.equal(self.adj.values(), other.adj.values()))


_NODE_STATES: list[tuple[_Topology, NodeStates]] = []  # newest first
_NODE_STATES_LOCK = threading.Lock()


def _rows_of(t: torch.Tensor, joint: list[torch.Tensor]) -> tuple[torch.Tensor, int, int] | None:
    """(base, first row, end row) when ``t`` is a row range of a tensor marked with :meth:`_Unrolled.joint`."""
    base = t._base
    if base is None or not any(base is m for m in joint) or base.stride() != t.stride() or t.stride(0) == 0:
        return None
    offset = (t.data_ptr() - base.data_ptr()) // t.element_size()
    if offset % t.stride(0):
        return None
    return base, offset // t.stride(0), offset // t.stride(0) + t.shape[0]


@dataclass
class _Readout:
    """Sparse maps from the last layer's distinct states to the rows of one batch: the current decision's node
    mean and the graph's node mean (B rows each), and with the LSTM decoder the per-decision rows (T·B)."""

    current: _Sparse
    graph: _Sparse
    decisions: _Sparse | None


class _Unrolled:
    """A shared-graph batch as one graph over its distinct node states, built once per batch tensor and reused
    by every encoder call on it (actor, critic and both targets see the same batch tensors). When the batches
    are row ranges of one tensor marked with :meth:`joint` (the replay buffer gathers a step's observations,
    next observations and self-imitation's best episode so) they are unrolled together: they share most node
    states, and one unroll of 2B rows costs ~0.8 of one of B rows; each range then has its own readout.

    A node's value after layer ℓ depends only on the features of its ℓ-hop neighbourhood, and these repeat
    across the batch. Each (node, sample) gets an id per layer, equal for two rows iff their inputs to that
    layer are: layer 0 keys on (node, x row), layer ℓ on (node, layer-(ℓ-1) ids of its neighbours in Â)
    (:class:`agents.node_states.NodeStates`; rows of a replay buffer, named with :meth:`joint`'s ``rows``, are
    interned once and then looked up). Layer ℓ then computes one row per id, ``S_ℓ (H_{ℓ-1} W_ℓᵀ) + b_ℓ``, where
    S_ℓ [U_ℓ, U_{ℓ-1}] holds Â's weights between the ids; :meth:`readout` maps the last ids to the rows of a part
    of the batch, with the masks and means folded into the weights."""

    # Per Python thread: the batches it unrolled most recently (newest first), the tensors it last marked with
    # joint() and their rows. A thread that prepares batches ahead (agents.prefetch) hands them over with
    # handover() / adopt().
    _local = threading.local()

    def __init__(self, x: torch.Tensor, decision_nodes: torch.Tensor, topo: _Topology, layers: int,
                 num_decisions: int | None, rows: Stored | None = None) -> None:
        states = topo.node_states(layers)
        self.x, maps, last = states.unroll(states.ids(x, rows))
        self.layers = [_Sparse(*entries, ordered=True) for entries in maps]
        # Layer 1's aggregation of the inputs, Â X (then · W₁ᵀ), holds no weights: computed once here for all the
        # encoder calls on this batch (five per gradient step), and its backward becomes a dense GEMM.
        self.first = _times(self.layers[0].a, self.x)
        self._last = last, self.layers[-1].a.shape[0]  # what the readouts are built from
        self._readouts: dict[tuple[int, int], _Readout] = {}
        self._decision_nodes, self._topo, self._num_decisions = decision_nodes, topo, num_decisions

    def readout(self, rows: tuple[int, int] | None = None) -> _Readout:
        """The readouts of the batch's rows ``rows`` = (first, end) (all by default), built on first use."""
        ids, count = self._last
        low, high = rows or (0, ids.shape[1])
        if (low, high) not in self._readouts:
            ids = ids[:, low:high]  # these samples' columns
            current, graph = self._read(ids, count, self._decision_nodes[low:high], self._topo)
            decisions = None if self._num_decisions is None else self._decisions(ids, count, self._topo,
                                                                                  self._num_decisions)
            self._readouts[low, high] = _Readout(current, graph, decisions)
        return self._readouts[low, high]

    @staticmethod
    def _read(ids: torch.Tensor, count: int, decision_nodes: torch.Tensor, topo: _Topology) -> tuple[_Sparse, _Sparse]:
        """The current decision's node mean and the graph's node mean, B rows each ← last layer's ids. No sort for
        A: a sample's ids grow with the node index; Aᵀ (built only for a backward) sorts each node's ids once,
        which read node after node then grow."""
        B = ids.shape[1]
        weights = decision_nodes * topo.node_mask / decision_nodes.sum(1, keepdim=True).clamp_min(1.0)  # [B, N]
        b, n = weights.nonzero(as_tuple=True)  # by sample, then node
        current = _Sparse(b, ids[n, b], weights[b, n], (B, count), ordered=True)
        real = topo.node_mask.nonzero().view(-1)
        share = topo.node_mask[real] / topo.count  # [R]
        sample = torch.arange(B, device=ids.device)

        def transposed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            ordered, perm = torch.sort(ids[real], dim=1, stable=True)
            return ordered.reshape(-1), perm.reshape(-1), share.repeat_interleave(B)

        graph = _Sparse(sample.repeat_interleave(len(real)), ids[real].t().reshape(-1), share.repeat(B), (B, count),
                        ordered=True, transposed=transposed)
        return current, graph

    @staticmethod
    def _decisions(ids: torch.Tensor, count: int, topo: _Topology, num_decisions: int) -> _Sparse:
        """Per-decision rows (t·B + b) ← last layer's ids, sparse: the mean over decision t's real nodes."""
        B = ids.shape[1]
        t, n = topo.owner_t.nonzero(as_tuple=True)
        rows = t.view(-1, 1) * B + torch.arange(B, device=ids.device)
        values = (topo.owner_t[t, n] / topo.owner_count[t]).view(-1, 1).expand(-1, B)
        return _Sparse(rows.reshape(-1), ids[n].reshape(-1), values.reshape(-1), (num_decisions * B, count))

    @classmethod
    def joint(cls, *tensors: torch.Tensor, rows: Stored | None = None) -> None:
        """Mark tensors (one per observation key the unroll reads: ``x``, ``decision_nodes``) whose row ranges are
        handed over as separate batches: each range's encoder call then reuses one unroll of the whole tensor.
        ``rows``: where their rows were stored (see :meth:`NodeStates.ids`)."""
        cls._local.joint, cls._local.rows = list(tensors), rows

    @classmethod
    def recent(cls) -> list[_Unrolled]:
        """This thread's most recently unrolled batches, newest first."""
        if not hasattr(cls._local, "recent"):
            cls._local.recent = []
        return cls._local.recent

    @classmethod
    def of(cls, x: torch.Tensor, decision_nodes: torch.Tensor, topo: _Topology, layers: int,
           num_decisions: int | None) -> tuple[_Unrolled, _Readout]:
        """The unrolled batch and the readout of ``x``'s rows. Cached for the last two batches seen by any extractor:
        a gradient step uses one (observations, next observations and the best episode as ranges of one marked
        tensor) or two, SAC's in the order obs, next, next, obs, obs. The cache keeps the tensors alive and checks
        their versions, so a tensor changed in place is unrolled again."""
        joint = getattr(cls._local, "joint", [])
        ranges, rows, stored = (_rows_of(x, joint), _rows_of(decision_nodes, joint)), None, None
        if None not in ranges and ranges[0][1:] == ranges[1][1:]:
            (x, *rows), (decision_nodes, *_) = ranges
            rows, stored = tuple(rows), cls._local.rows
        key = (x._version, decision_nodes._version, layers, num_decisions)
        for unrolled in cls.recent():
            if unrolled.inputs[0] is x and unrolled.inputs[1] is decision_nodes and unrolled.key == key \
                    and unrolled.topo.same_graph(topo):
                return unrolled, unrolled.readout(rows)
        unrolled = cls(x, decision_nodes, topo, layers, num_decisions, stored)
        unrolled.inputs, unrolled.key, unrolled.topo = (x, decision_nodes), key, topo
        cls._local.recent = [unrolled] + cls.recent()[:1]
        return unrolled, unrolled.readout(rows)


def gathered_together(*tensors: torch.Tensor, rows: Stored | None = None) -> None:
    """Say that row ranges of these tensors (e.g. a replay batch's ``x`` and ``decision_nodes`` for observations,
    next observations and demonstrations) will be handed over as separate batches: the graph extractor then
    unrolls each tensor once for all of them. Only the calling thread's last call's tensors are remembered.
    ``rows`` = (source, row, serial): which stored observation each row is — a token of its store (a replay buffer),
    and int64 [len] each, its row there and a serial that changes whenever the row is overwritten; the graph
    extractor then interns each stored row's node states once, not once per batch."""
    _Unrolled.joint(*tensors, rows=rows)


def handover() -> tuple[list[torch.Tensor], Any, list[_Unrolled]]:
    """The calling thread's marked tensors, their rows and its recent unrolls, for :func:`adopt` in the thread that
    will run the forward passes on the batches it prepared."""
    local = _Unrolled._local
    return list(getattr(local, "joint", [])), getattr(local, "rows", None), list(_Unrolled.recent())


def adopt(state: tuple[list[torch.Tensor], Any, list[_Unrolled]]) -> None:
    """Make another thread's :func:`handover` the calling thread's own."""
    _Unrolled._local.joint, _Unrolled._local.rows, _Unrolled._local.recent = list(state[0]), state[1], list(state[2])


class GraphEncoderExtractor(BaseFeaturesExtractor):
    """AGMC's graph encoder (+ optional LSTM decoder) as an SB3 features extractor.

    :param observation_space: the env's ``Dict`` space (sizes are read from it, so any env id works).
    :param conv: graph convolution type: ``"gcn"`` (default), ``"sage"``, ``"graph"`` or ``"gat"``.
    :param hidden: width of every graph layer.
    :param layers: number of graph layers.
    :param decoder: ``"none"`` or ``"lstm"`` (the paper's decoder over the decision sequence).
    :param budget: append the budget state AMC's features carry (MACs removed so far, MACs of the decisions still
        to come, the previous keep ratio; the ``"layer"`` key's :data:`BUDGET_FEATURES`) to the graph embedding.
    :param position: append the current decision's position t / T (AMC's first layer feature). The blocks of a
        ResNet stage have the same neighbourhood, so a few graph layers give their decisions nearly the same
        embedding; without the position a GNN+DDPG actor's keep ratio came out constant per stage.
    """

    def __init__(self, observation_space: gym.spaces.Dict, conv: str = "gcn", hidden: int = 64, layers: int = 2,
                 decoder: str = "none", budget: bool = False, position: bool = False) -> None:
        if conv not in CONV_LAYERS:
            raise ValueError(f"unknown graph layer {conv!r}; choose one of {sorted(CONV_LAYERS)}")
        if decoder not in DECODERS:
            raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
        if not (isinstance(layers, int) and layers >= 1):
            raise ValueError(f"layers={layers!r} must be an int ≥ 1 (graph layers in the encoder)")
        super().__init__(observation_space, features_dim=(3 if decoder == "lstm" else 2) * hidden
                         + (len(BUDGET_FEATURES) if budget else 0) + int(position))
        self.budget = torch.tensor([LAYER_FEATURES.index(f) for f in BUDGET_FEATURES]) if budget else None
        self.positions = float(observation_space["decision_index"].high.max()) if position else None
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

    def unroll(self, obs: dict[str, torch.Tensor], backward: bool = True) -> None:
        """Unroll ``obs``'s batch ahead of its forward passes, reading no weight (so another thread may do it while
        this one trains); with ``backward`` also the transposes its backward passes use. Forward passes on the same
        tensors, in this thread or one that :func:`adopt`-s its :func:`handover`, then reuse it. No-op off the
        shared-graph path."""
        topo = self._shared_topology(obs) if self.fast else None
        if topo is None:
            return
        unrolled, readout = _Unrolled.of(obs["x"], obs["decision_nodes"], topo, len(self.convs),
                                         self.num_decisions if self.decoder == "lstm" else None)
        if backward:
            for matrix in (*unrolled.layers[1:], readout.current, readout.graph, readout.decisions):
                if matrix is not None:
                    matrix.t  # noqa: B018  (built on first use)

    def _fast_forward(self, obs: dict[str, torch.Tensor], topo: _Topology) -> torch.Tensor:
        """The shared-graph path: every layer and the readouts on the batch's distinct node states."""
        B = obs["x"].shape[0]
        T = self.num_decisions if self.decoder == "lstm" else None
        unrolled, readout = _Unrolled.of(obs["x"], obs["decision_nodes"], topo, len(self.convs), T)
        first = self.convs[0]
        h = torch.relu_(torch.addmm(first.bias, unrolled.first, first.lin.weight.t()))  # (Â X) W₁ᵀ + b₁
        for conv, a in zip(self.convs[1:], unrolled.layers[1:]):
            # in place: _Aggregate keeps nothing of its output for backward
            h = torch.relu_(_Aggregate.apply(a, conv.lin(h), conv.bias))
        current, graph = _Aggregate.apply(readout.current, h, None), _Aggregate.apply(readout.graph, h, None)
        if T is None:
            return torch.cat([current, graph], 1)
        per_decision = _Aggregate.apply(readout.decisions, h, None).view(T, B, -1)
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
        parts = [self._embed(obs)]
        if self.budget is not None:
            parts.append(obs["layer"][:, self.budget.to(parts[0].device)])
        if self.positions is not None:
            parts.append(obs["decision_index"].to(parts[0].dtype).view(-1, 1) / self.positions)
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def _embed(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
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
    "gnn-budget": (GraphEncoderExtractor, {"budget": True}),
    "gnn-pos": (GraphEncoderExtractor, {"position": True}),
    "amc": (LayerFeatureExtractor, {}),
}
