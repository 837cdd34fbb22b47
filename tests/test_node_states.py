"""Interned node states (``agents.node_states``): equal ids exactly for equal neighbourhood inputs, whichever batch
they came from; stored rows interned once; a batch's local numbering independent of what was interned before."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.preprocessing import preprocess_obs

from agents.extractors import GraphEncoderExtractor
from agents.node_states import NodeStates, combine, dense_ids, value_ids
from agmc_env.testing import tiny_env

ENV = tiny_env(max_nodes=80, max_edges=100)


def _episode_states(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    obs, _ = ENV.reset(seed=seed)
    states, done = [obs], False
    while not done:
        obs, _, done, _, _ = ENV.step(rng.choice([0.0, 0.5, 1.0], size=1).astype(np.float32))
        states.append(obs)
    return states


def _batch(states):
    obs = {k: torch.as_tensor(np.stack([o[k] for o in states])) for k in states[0]}
    return preprocess_obs(obs, ENV.observation_space)


def _fresh(layers: int = 2) -> tuple[NodeStates, torch.Tensor, torch.Tensor]:
    obs = _batch(_episode_states(0)[:1])
    topo = GraphEncoderExtractor(ENV.observation_space, layers=layers)._shared_topology(obs)
    return NodeStates(topo.padded, topo.valid, topo.weights, layers), topo.padded, topo.valid


def _brute_keys(x: torch.Tensor, neighbours: torch.Tensor, valid: torch.Tensor, layers: int) -> list[list]:
    """Per sample and node, the nested tuple of its layer-``layers`` inputs, built by recursion in plain Python."""
    keys = [[(n, tuple(x[b, n].tolist())) for n in range(x.shape[1])] for b in range(x.shape[0])]
    for _ in range(layers):
        keys = [[(n, tuple(row[int(m)] for m, ok in zip(neighbours[n], valid[n]) if ok)) for n in range(len(row))]
                for row in keys]
    return keys


def test_equal_ids_exactly_for_equal_neighbourhood_inputs_across_batches():
    states, neighbours, valid = _fresh()
    first, second = _batch(_episode_states(1))["x"], _batch(_episode_states(2))["x"]
    ids = torch.cat([states.ids(first), states.ids(second)])  # interned in two calls: global ids
    keys = _brute_keys(torch.cat([first, second]), neighbours, valid, 2)
    flat_ids, flat_keys = ids.reshape(-1).tolist(), [k for row in keys for k in row]
    by_key: dict = {}
    for i, k in zip(flat_ids, flat_keys):
        assert by_key.setdefault(k, i) == i  # equal inputs, equal id
    assert len(set(flat_ids)) == len(by_key)  # and different inputs, different ids
    assert len(set(flat_ids)) < len(flat_ids)  # the episodes' observations share states


def test_stored_rows_are_interned_once_and_again_when_overwritten():
    states, _, _ = _fresh()
    x = _batch(_episode_states(1))["x"]
    rows, serials = torch.arange(len(x)), torch.arange(len(x)) + 100
    first = states.ids(x, (7, rows, serials))
    interned = [len(table) for table in states._keys]
    again = states.ids(x[[2, 0]], (7, rows[[2, 0]], serials[[2, 0]]))
    assert torch.equal(again, first[[2, 0]]) and [len(t) for t in states._keys] == interned  # looked up
    other = _batch(_episode_states(2))["x"][:1]
    overwritten = states.ids(other, (7, rows[:1], serials[:1] + len(x)))  # row 0 stored anew
    assert torch.equal(overwritten, states.ids(other))
    assert torch.equal(states.ids(x[:1], (8, rows[:1], serials[:1])), first[:1])  # another buffer, its own rows


def test_a_batch_is_numbered_the_same_whatever_was_interned_before():
    x = _batch(_episode_states(1) + _episode_states(2))["x"]
    results = []
    for history in ([], [3, 4], [4, 3, 1]):
        states, _, _ = _fresh()
        for seed in history:
            states.ids(_batch(_episode_states(seed))["x"])
        results.append(states.unroll(states.ids(x)))
    for rows, maps, last in results[1:]:
        assert torch.equal(rows, results[0][0]) and torch.equal(last, results[0][2])
        for mine, theirs in zip(maps, results[0][1]):
            assert all(torch.equal(a, b) for a, b in zip(mine[:3], theirs[:3])) and mine[3] == theirs[3]


@pytest.mark.parametrize("B", [1, 7, 64])
def test_dense_ids_are_torch_unique_on_node_major_keys(B):
    g = torch.Generator().manual_seed(B)
    N = 13
    node = torch.arange(N).view(N, 1).expand(N, B)  # an expanded view, as the unroll's first key
    ids, count = dense_ids(node)
    assert torch.equal(ids, node) and count == N
    key = node * 50 + torch.randint(0, 50, (N, B), generator=g)
    ids, count = dense_ids(key)
    unique, inverse = torch.unique(key.reshape(-1), return_inverse=True)
    assert torch.equal(ids.reshape(-1), inverse) and count == len(unique)
    first, second = (torch.randint(0, 4, (N, B), generator=g) * 2 ** 30 for _ in range(2))  # < 2^32
    ids, count = combine(node, N, [(first, 2 ** 32), (second, 2 ** 32)])  # re-densifies before the second
    rows = torch.stack([node.reshape(-1), first.reshape(-1), second.reshape(-1)], 1)
    unique, inverse = torch.unique(rows, dim=0, return_inverse=True)  # lexicographic: node-major
    assert torch.equal(ids, inverse.view(N, B)) and count == len(unique)


@pytest.mark.parametrize("values", [
    [0.203125, 1.0, 0.0, 0.203125, 0.5],  # keep ratios c / 64 and a 0/1 flag: whole multiples of 2^-12
    [1e9, 1e9 + 64.0, -3.0, 1e9],  # integers, but spread over ≥ 2^20 multiples: the bits
    [0.25, 0.25000003, 0.1, 1 / 3, 0.1, -0.0, 0.0],  # not all dyadic: the bits (0.0 and -0.0 may part)
    [float("nan"), 1.0, float("inf"), 1.0],
])
def test_value_ids_give_equal_values_equal_ids_within_their_bound(values):
    column = torch.tensor(values, dtype=torch.float32).view(1, -1).expand(3, -1)  # [N, B] as the unroll's
    ids, bound = value_ids(column)
    assert ids.dtype == torch.long and ids.shape == column.shape and 0 <= int(ids.min()) and int(ids.max()) < bound
    for i in range(len(values)):
        for j in range(len(values)):
            same_bits = column[0, i].view(torch.int32) == column[0, j].view(torch.int32)
            if same_bits:
                assert ids[0, i] == ids[0, j]
            elif column[0, i] != column[0, j]:  # different values (NaN differs from all): different ids
                assert ids[0, i] != ids[0, j]
