"""The graph features extractors batch correctly and react to the dynamic state."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from stable_baselines3.common.preprocessing import preprocess_obs

from agents.extractors import (EMBEDDINGS, GraphEncoderExtractor, LayerFeatureExtractor, _rows_equal, _Unrolled,
                               gathered_together)
from agmc_env.testing import tiny_env

ENV = tiny_env(max_nodes=80, max_edges=100)


def _batch(*observations):
    obs = {k: torch.as_tensor(np.stack([o[k] for o in observations])) for k in observations[0]}
    return preprocess_obs(obs, ENV.observation_space)  # as SB3 hands them over (floats)


def _two_states():
    first, _ = ENV.reset(seed=0)
    ENV.step(np.array([1.0], dtype=np.float32))
    high, *_ = ENV.step(np.array([1.0], dtype=np.float32))
    ENV.reset(seed=0)
    ENV.step(np.array([0.0], dtype=np.float32))
    low, *_ = ENV.step(np.array([1.0], dtype=np.float32))
    return first, high, low


@pytest.mark.parametrize("kwargs", [{}, {"decoder": "lstm"}, {"conv": "sage", "layers": 3, "hidden": 16},
                                    {"conv": "gat"}, {"conv": "graph"}])
def test_batching_is_per_sample_and_dynamic(kwargs):
    torch.manual_seed(0)
    ext = GraphEncoderExtractor(ENV.observation_space, **kwargs)
    first, high, low = _two_states()
    same = ext(_batch(high, high))
    assert torch.equal(same[0], same[1])
    mixed = ext(_batch(high, low, first))
    assert not torch.allclose(mixed[0], mixed[1])  # decision 0's keep ratio differs
    for i, single in enumerate((high, low, first)):  # no cross-talk between samples of a batch
        assert torch.allclose(mixed[i], ext(_batch(single))[0], atol=1e-5)
    assert mixed.shape[1] == ext.features_dim


def test_gradients_reach_encoder_and_decoder():
    ext = GraphEncoderExtractor(ENV.observation_space, decoder="lstm")
    _, high, low = _two_states()
    ext(_batch(high, low)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ext.convs.parameters() if p.dim() > 1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in ext.lstm.parameters())


def test_layer_extractor_is_amc_state():
    ext = LayerFeatureExtractor(ENV.observation_space)
    first, high, _ = _two_states()
    out = ext(_batch(first, high))
    assert out.shape == (2, 11) and torch.equal(out[1], torch.as_tensor(high["layer"]))


def test_registry_and_bad_options():
    assert set(EMBEDDINGS) == {"gnn", "gnn-lstm", "gnn-budget", "gnn-pos", "amc"}
    with pytest.raises(ValueError, match="unknown graph layer 'gin'"):
        GraphEncoderExtractor(ENV.observation_space, conv="gin")
    with pytest.raises(ValueError, match="unknown decoder"):
        GraphEncoderExtractor(ENV.observation_space, decoder="gru")
    with pytest.raises(ValueError, match="layers=0 must be an int ≥ 1"):
        GraphEncoderExtractor(ENV.observation_space, layers=0)


def _fast_and_generic(ext, obs):
    """Output and parameter gradients of the shared-graph fast path and of the generic PyG path."""
    results = []
    for fast in (True, False):
        ext.fast = fast
        ext.zero_grad()
        out = ext(obs)
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in ext.parameters()]))
    ext.fast = True
    return results


def _other_graph(obs):
    """The same observation on another topology: one data-flow edge dropped."""
    other = {k: v.copy() for k, v in obs.items()}
    other["edge_mask"][3] = 0.0
    return other


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"decoder": "lstm"}, {"layers": 3, "hidden": 16}])
def test_fast_path_equals_pyg_path(kwargs, padded):
    torch.manual_seed(0)
    ext = GraphEncoderExtractor(ENV.observation_space, **kwargs)
    first, high, low = _two_states()
    if not padded:  # the env's own sizes (as the registered ids): no padded node, the fast path skips the mask
        n, e = int(first["node_mask"].sum()), int(first["edge_mask"].sum())
        first, high, low = ({**o, **{k: o[k][:n] for k in ("x", "node_mask", "decision_nodes", "node_decision")},
                             "edge_index": o["edge_index"][:, :e], "edge_mask": o["edge_mask"][:e]}
                            for o in (first, high, low))
        ext = GraphEncoderExtractor(tiny_env().observation_space, **kwargs)
    obs = _batch(high, low, first, high)
    (fast, fast_grads), (generic, generic_grads) = _fast_and_generic(ext, obs)
    unrolled = _Unrolled.recent()[0]
    assert ext._topology is not None and unrolled.topo is ext._topology  # the fast path ran
    # repeated node states computed once: high is in the batch twice, and undecided nodes look alike
    sizes = [s.a.shape[0] for s in unrolled.layers]
    assert unrolled.x.shape[0] <= sizes[0] < 3 * obs["x"].shape[1]
    # built as ordered CSR without a sort (the layers, both readouts and the graph readout's transpose): the
    # invariants (sorted columns in each row) hold, and the transposes are the matrices' own
    for s in unrolled.layers + [unrolled.readout().current, unrolled.readout().graph]:
        for m in (s.a, s.t):
            torch._validate_sparse_csr_tensor_args(m.crow_indices(), m.col_indices(), m.values(), m.shape)
        assert torch.equal(s.t.to_dense(), s.a.to_dense().t())
    assert torch.allclose(fast, generic, atol=1e-5)
    for a, b in zip(fast_grads, generic_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert set(ext.state_dict()) == set(GraphEncoderExtractor(ENV.observation_space, **kwargs).state_dict())


@pytest.mark.parametrize("kwargs", [{}, {"decoder": "lstm"}])
def test_differing_graphs_take_the_pyg_path(kwargs):
    torch.manual_seed(0)
    ext = GraphEncoderExtractor(ENV.observation_space, **kwargs)
    first, high, low = _two_states()
    rows = (high, _other_graph(low), first)
    obs = _batch(*rows)
    assert ext._shared_topology(obs) is None
    (mixed, _), (generic, _) = _fast_and_generic(ext, obs)
    assert torch.equal(mixed, generic)
    for i, single in enumerate(rows):  # each row alone takes the fast path, its graph cached in turn
        alone = ext(_batch(single))
        assert ext._topology.matches(_batch(single))
        assert torch.allclose(mixed[i], alone[0], atol=1e-5)


def test_expanded_static_keys_take_the_fast_path_with_the_same_result_and_gradients():
    torch.manual_seed(0)
    ext = GraphEncoderExtractor(ENV.observation_space)
    first, high, low = _two_states()
    obs = _batch(high, low, first)
    expanded = {k: v[:1].expand_as(v) if k in ("edge_index", "edge_mask", "node_mask", "node_decision") else v
                for k, v in obs.items()}  # as AMCReplayBuffer hands the graph over
    assert _rows_equal(expanded["edge_index"]) and expanded["edge_index"].stride(0) == 0
    (fast, fast_grads), (generic, generic_grads) = _fast_and_generic(ext, expanded)
    assert torch.allclose(fast, generic, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(fast_grads, generic_grads))


@pytest.mark.parametrize("kwargs", [{}, {"decoder": "lstm"}])
def test_row_ranges_of_a_marked_tensor_are_unrolled_together_with_the_results_of_each_alone(kwargs):
    torch.manual_seed(0)
    ext = GraphEncoderExtractor(ENV.observation_space, **kwargs)
    first, high, low = _two_states()
    demo, obs, nxt = _batch(first, first), _batch(high, low, first), _batch(low, first, low)
    # as AMCReplayBuffer gathers x and decision_nodes: demonstrations, observations, next observations
    whole = {k: torch.cat([demo[k], obs[k], nxt[k]]) for k in obs}
    gathered_together(whole["x"], whole["decision_nodes"])
    spans = {"obs": (2, 5), "next": (5, 8), "demo+obs": (0, 5)}
    batches = {"obs": obs, "next": nxt, "demo+obs": {k: torch.cat([demo[k], obs[k]]) for k in obs}}
    alone = {name: _fast_and_generic(ext, b)[0] for name, b in batches.items()}
    for name, (low_row, high_row) in spans.items():
        ranged = {**batches[name], **{k: whole[k][low_row:high_row] for k in ("x", "decision_nodes")}}
        out, grads = alone[name]
        ext.zero_grad()
        got = ext(ranged)
        got.square().sum().backward()
        assert torch.allclose(got, out, atol=1e-6)
        assert all(torch.allclose(p.grad, g, atol=1e-6, rtol=1e-5) for p, g in zip(ext.parameters(), grads))
    unrolled = _Unrolled.recent()[0]
    assert unrolled.inputs[0] is whole["x"] and set(unrolled._readouts) == set(spans.values())  # one unroll
    for rows in spans.values():
        r = unrolled.readout(rows)
        for s in [r.current, r.graph] + ([r.decisions] if r.decisions is not None else []):
            for m in (s.a, s.t):
                torch._validate_sparse_csr_tensor_args(m.crow_indices(), m.col_indices(), m.values(), m.shape)
            assert torch.equal(s.t.to_dense(), s.a.to_dense().t())
    gathered_together()  # unmarked: a row range is unrolled on its own
    obs_range = {**obs, **{k: whole[k][2:5] for k in ("x", "decision_nodes")}}
    ext(obs_range)
    assert _Unrolled.recent()[0].inputs[0] is obs_range["x"]


def test_unrolled_batch_follows_the_tensor_and_its_version():
    torch.manual_seed(0)
    ext = GraphEncoderExtractor(ENV.observation_space)
    first, high, low = _two_states()
    obs = _batch(high, high)
    ext(obs)
    unrolled = _Unrolled.recent()[0]
    assert unrolled.x.shape[0] == obs["x"].shape[1]  # two equal rows: one state per node
    ext(obs)
    assert _Unrolled.recent()[0] is unrolled  # reused by the next call on the same tensors
    ext(_batch(high, low))
    ext(obs)
    assert _Unrolled.recent()[1] is unrolled  # still held while one other batch came in between (SAC's order)
    before = ext(obs)
    obs["x"][1, 0, 2] += 0.5  # in place: the cached structure must not be reused
    after = ext(obs)
    assert _Unrolled.recent()[0] is not unrolled and _Unrolled.recent()[0].x.shape[0] == obs["x"].shape[1] + 1
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])


def test_sparse_products_equal_the_dense_ones_with_empty_rows_and_strided_inputs():
    from agents.extractors import _Aggregate, _Sparse, _times

    g = torch.Generator().manual_seed(0)
    dense = torch.randn(6, 9, generator=g) * (torch.rand(6, 9, generator=g) < 0.3)
    dense[2] = 0.0  # an empty row: zeros out
    rows, cols = dense.nonzero(as_tuple=True)
    m = _Sparse(rows, cols, dense[rows, cols], tuple(dense.shape), ordered=True)
    x = torch.randn(4, 9, generator=g).t()  # [9, 4], not contiguous
    torch.testing.assert_close(_times(m.a, x), dense @ x)
    x = x.clone().requires_grad_()
    bias = torch.randn(4, generator=g, requires_grad=True)
    out = _Aggregate.apply(m, x, bias)
    torch.testing.assert_close(out, dense @ x + bias)
    grad = torch.randn(6, 4, generator=g)
    out.backward(grad)
    torch.testing.assert_close(x.grad, dense.t() @ grad)  # through the transpose, its empty column included
    torch.testing.assert_close(bias.grad, grad.sum(0))


def test_the_budget_state_is_appended_to_the_graph_embedding():
    from agents.extractors import BUDGET_FEATURES
    from agmc_env.env import LAYER_FEATURES

    torch.manual_seed(0)
    plain = GraphEncoderExtractor(ENV.observation_space)
    budget = GraphEncoderExtractor(ENV.observation_space, budget=True)
    budget.load_state_dict(plain.state_dict())  # the same parameters: the budget state adds none
    first, high, low = _two_states()
    obs = _batch(high, low, first)
    out = budget(obs)
    assert budget.features_dim == plain.features_dim + 3 == out.shape[1]
    assert torch.equal(out[:, :plain.features_dim], plain(obs))
    columns = [LAYER_FEATURES.index(f) for f in BUDGET_FEATURES]
    assert torch.equal(out[:, plain.features_dim:], obs["layer"][:, columns])
    assert EMBEDDINGS["gnn-budget"] == (GraphEncoderExtractor, {"budget": True})


def test_the_decision_position_is_appended_to_the_graph_embedding():
    torch.manual_seed(0)
    plain = GraphEncoderExtractor(ENV.observation_space)
    placed = GraphEncoderExtractor(ENV.observation_space, position=True)
    placed.load_state_dict(plain.state_dict())  # the same parameters: the position adds none
    first, high, low = _two_states()
    obs = _batch(high, low, first)
    out = placed(obs)
    assert placed.features_dim == plain.features_dim + 1 == out.shape[1]
    assert torch.equal(out[:, :plain.features_dim], plain(obs))
    T = ENV.num_decisions
    torch.testing.assert_close(out[:, -1], obs["decision_index"].float().view(-1) / T)
    assert EMBEDDINGS["gnn-pos"] == (GraphEncoderExtractor, {"position": True})
