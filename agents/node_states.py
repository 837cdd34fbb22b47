"""Interned node states of one graph: each distinct (node, neighbourhood input) of its observations, numbered once.

A GCN layer's output at node n depends only on the layer's input at n's neighbours in Â (n included), so the states
a batch of observations puts through the layers can be numbered per layer: layer 0 by (node, x row), layer ℓ by
(node, the layer-(ℓ-1) ids at the node's neighbour slots). :class:`NodeStates` keeps these numberings for one
graph across batches (global ids: equal ids, equal states, whichever batch they came from), and remembers the
last-layer ids of each stored observation by its replay-buffer row, so a replay batch is unrolled by gathers
from its rows' ids instead of by sorting its keys (a ResNet-56 update's joint batch: ~4 ms instead of ~11).

The local numbering handed to the layers (:meth:`NodeStates.unroll`) depends only on the batch, not on the order
in which states were first interned: a resumed search computes the same sums in the same order.
"""
from __future__ import annotations

import threading

import torch

BIG = torch.iinfo(torch.long).max
Stored = tuple[int, torch.Tensor, torch.Tensor]  # (source, row, serial): where a batch's rows were stored


def dense_ids(key: torch.Tensor) -> tuple[torch.Tensor, int]:
    """int64 keys [N, B], node-major (each row's keys lie below the next row's) → ids 0..U-1 in key order (equal
    keys, equal ids) in the key's shape, and U. Sorting each row and one pass over the rows laid end to end is
    ``torch.unique``'s global sort, at half the cost."""
    values, perm = torch.sort(key, dim=1)
    unique, inverse = torch.unique_consecutive(values.reshape(-1), return_inverse=True)
    ids = torch.empty(key.shape, dtype=key.dtype, device=key.device)  # key may be an expanded view
    ids.scatter_(1, perm, inverse.view(key.shape))
    return ids, len(unique)


def combine(key: torch.Tensor, bound: int, columns: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, int]:
    """:func:`dense_ids` of the tuples (key, column values…): key < bound, each column's values in [0, radix).
    Packed as key·radix + value, exact; re-densified whenever the next packing could overflow int64."""
    for values, radix in columns:
        if bound * radix >= 2 ** 62:
            key, bound = dense_ids(key)
        key, bound = key * radix + values, bound * radix
    return dense_ids(key)


def value_ids(column: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Exact integer ids of a column's values, and their bound; no sort for float32. Values that are all whole
    multiples of 2^-12 (keep ratios c / C of power-of-two channel counts, 0/1 flags), spanning fewer than 2^20 of
    them, become those integers less the smallest: three such columns and the node index pack into one int64 key,
    so layer 0 needs one sort. Other float32 columns: the bits less the smallest (equal bits, equal values; 0.0 and
    -0.0 get two ids). Other dtypes: the rank among the distinct values."""
    if column.dtype == torch.float32:
        scaled = column * 4096.0  # exact: a power of two
        low, high = torch.aminmax(scaled)
        # below 2^20 the differences are exact in float32; NaN and inf fail the comparison
        if bool(high - low < 2 ** 20) and torch.equal(scaled, scaled.round()):
            return (scaled - low).long(), int(high - low) + 1
        bits = column.view(torch.int32).long() & 0xFFFFFFFF
        low, high = torch.aminmax(bits)
        return bits - low, int(high - low) + 1
    values, inverse = torch.unique(column, return_inverse=True)
    return inverse, len(values)


def representatives(ids: torch.Tensor, count: int) -> torch.Tensor:
    """For each id, the flat index of one position holding it (any: they are equal by construction)."""
    flat = ids.reshape(-1)
    return flat.new_empty(count).scatter_(0, flat, torch.arange(len(flat), device=flat.device))


class _Rows:
    """A tensor grown by appending rows (capacity doubled as needed); ``data`` is the rows so far."""

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None
        self.size = 0

    def append(self, rows: torch.Tensor) -> None:
        if self._buffer is None:
            self._buffer = rows.new_empty((max(1024, len(rows)), *rows.shape[1:]))
        elif self.size + len(rows) > len(self._buffer):
            grown = self._buffer.new_empty((max(2 * len(self._buffer), self.size + len(rows)), *rows.shape[1:]))
            grown[:self.size] = self._buffer[:self.size]
            self._buffer = grown
        self._buffer[self.size:self.size + len(rows)] = rows
        self.size += len(rows)

    @property
    def data(self) -> torch.Tensor:
        return self._buffer[:self.size]


class NodeStates:
    """The node states of one graph, interned per layer. ``padded`` [N, D]: each node's neighbour slots in Â (self
    included), N in empty slots; ``valid`` [N, D]: the slots that hold one; ``weights`` [N, D]: Â's entries there;
    ``layers``: graph layers.

    Per layer ℓ: ``node[g]`` is id g's node; layer 0 keeps ``x[g]``, its input row; layer ℓ ≥ 1 keeps
    ``parents[g]`` [D], the layer-(ℓ-1) ids at the node's neighbour slots (0 in empty ones)."""

    def __init__(self, padded: torch.Tensor, valid: torch.Tensor, weights: torch.Tensor, layers: int) -> None:
        self.padded, self.valid, self.weights, self.layers = padded, valid, weights, layers
        self._keys: list[dict[bytes, int]] = [{} for _ in range(layers + 1)]
        self._node = [_Rows() for _ in range(layers + 1)]
        self._x = _Rows()
        self._parents = [_Rows() for _ in range(layers + 1)]  # [0] unused
        self._first: list[torch.Tensor | None] = [None] * (layers + 1)  # per layer: BIG, or a position while in use
        # per source of stored rows (a replay buffer), newest first: its rows' last-layer ids and their serials
        self._stored: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self._lock = threading.Lock()

    def ids(self, x: torch.Tensor, rows: Stored | None = None) -> torch.Tensor:
        """Last-layer ids [B, N] of a batch's node rows ``x`` [B, N, F]. With ``rows`` = (source, row, serial) —
        e.g. a replay buffer's token, and per sample its buffer row and a count of the observations stored so far
        there — ids are remembered per (source, row) and interned again only when the row's serial changed."""
        with self._lock:
            if rows is None:
                return self._intern(x)
            source, row, serial = rows
            row, serial = row.to(self.padded.device), serial.to(self.padded.device)
            _, ids, serials = next((entry for entry in self._stored if entry[0] == source),
                                   (source, serial.new_empty(0, len(self.padded)), serial[:0]))
            needed = int(row.max()) + 1 if len(row) else 0
            if needed > len(serials):  # capacity doubled: a filling buffer's rows arrive a few at a time
                grow = max(needed, 2 * len(serials)) - len(serials)
                serials = torch.cat([serials, serials.new_full((grow,), -1)])
                ids = torch.cat([ids, ids.new_zeros(grow, ids.shape[1])])
            miss = (serials[row] != serial).nonzero().view(-1)
            if len(miss):
                ids[row[miss]] = self._intern(x[miss.to(x.device)])
                serials[row[miss]] = serial[miss]
            self._stored = [(source, ids, serials)] + [e for e in self._stored if e[0] != source][:3]
            return ids[row]

    def _intern(self, x: torch.Tensor) -> torch.Tensor:
        """Global last-layer ids [B, N] of ``x``'s node rows, new states added. Each layer's distinct states in the
        batch are found by sorting packed keys (as many rows repeat), then looked up by their bytes."""
        B, N, F = x.shape
        x = x.to(self.padded.device)
        node = torch.arange(N, device=x.device).view(N, 1).expand(N, B)
        varying = (x.amax(0) != x.amin(0)).any(0).nonzero().view(-1).tolist()  # columns not equal in every row
        ids, count = combine(node, N, [value_ids(x[:, :, c].t().contiguous()) for c in varying])
        rep = representatives(ids, count)
        n, b = rep // B, rep % B
        rows = x[b, n]  # [count, F]
        global_ids = self._lookup(0, torch.cat([n.view(-1, 1).view(torch.uint8), rows.contiguous().view(torch.uint8)
                                                .view(count, -1)], 1), n, rows)[ids]  # [N, B]
        for layer in range(1, self.layers + 1):
            # [N, D, B], 0 in empty slots (the node in the key tells them apart); a gather from the ids padded with a
            # zero row, as a broadcasting torch.where over [N, D, B] costs ~10x the gather on a CPU
            around = torch.cat([global_ids, global_ids.new_zeros(1, B)])[self.padded]
            bound = self._node[layer - 1].size
            ids, count = combine(node, N, [(around[:, d], bound) for d in range(around.shape[1])])
            rep = representatives(ids, count)
            n, b = rep // B, rep % B
            parents = around[n, :, b]  # [count, D]
            key = torch.cat([n.view(-1, 1), parents], 1)
            global_ids = self._lookup(layer, key.view(torch.uint8).view(count, -1), n, parents)[ids]
        return global_ids.t()

    def _lookup(self, layer: int, keys: torch.Tensor, node: torch.Tensor, payload: torch.Tensor) -> torch.Tensor:
        """Global ids of distinct states given as byte rows ``keys``; the new ones get the next ids, in order."""
        table = self._keys[layer]
        rows = keys.cpu().numpy()
        rows = rows.view(f"V{rows.shape[1]}").ravel().tolist()  # one bytes object per row, made in C
        found = list(map(table.get, rows))
        new = [i for i, f in enumerate(found) if f is None]
        for i in new:
            found[i] = table[rows[i]] = len(table)
        new = torch.tensor(new, dtype=torch.long, device=node.device)
        self._node[layer].append(node[new])
        (self._x if layer == 0 else self._parents[layer]).append(payload[new])
        return torch.tensor(found, dtype=torch.long, device=node.device)

    def unroll(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[tuple[torch.Tensor, ...]], torch.Tensor]:
        """The distinct states behind last-layer ids [B, N], numbered locally: (input rows [U_0, F]; per layer
        ℓ = 1…L Â between layer-(ℓ-1) and layer-ℓ states as entries (rows, cols, values, shape), row-major with
        sorted columns; the local last-layer ids [N, B]). Layer-L states are numbered node by node, in order of
        first appearance across the batch; a lower layer's in order of first appearance among the parents of the
        layer above. So the numbering is the batch's own: where its states were first interned does not matter."""
        with self._lock:
            B, N = ids.shape
            states, local = self._local(self.layers, ids.t().reshape(-1))
            last = local.view(N, B)
            maps = []
            for layer in range(self.layers, 0, -1):
                node = self._node[layer].data.index_select(0, states)
                parents = self._parents[layer].data.index_select(0, states)  # [U, D]
                keep = self.valid.index_select(0, node)  # a prefix of each row's slots
                at = keep.view(-1).nonzero().view(-1)
                below, cols = self._local(layer - 1, parents.view(-1).index_select(0, at))
                table = parents.new_full((parents.numel(),), BIG).index_copy_(0, at, cols).view(parents.shape)
                cols, slots = torch.sort(table, dim=1)  # each row's columns in order; empty slots stay last
                rows = at.div(parents.shape[1], rounding_mode="floor")
                values = self.weights[node.index_select(0, rows), slots.view(-1).index_select(0, at)]
                maps.insert(0, (rows, cols.view(-1).index_select(0, at), values, (len(states), len(below))))
                states = below
            return self._x.data.index_select(0, states), maps, last

    def _local(self, layer: int, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the distinct global ids in ``flat`` in order of first appearance, each entry's index among them)."""
        size = self._node[layer].size
        first = self._first[layer]
        if first is None or len(first) < size:
            grown = torch.full((max(2 * size, 1024),), BIG, dtype=torch.long, device=flat.device)
            if first is not None:
                grown[:len(first)] = first
            first = self._first[layer] = grown
        position = torch.arange(len(flat), device=flat.device)
        first.scatter_reduce_(0, flat, position, "amin")
        states = flat[first.index_select(0, flat) == position]
        first.index_copy_(0, states, torch.arange(len(states), device=flat.device))
        local = first.index_select(0, flat)
        first.index_fill_(0, states, BIG)  # back to unused, for the next batch
        return states, local
