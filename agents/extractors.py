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
"""
from __future__ import annotations

import warnings

import gymnasium as gym
import torch

# torch-geometric still calls torch.jit.script at import time; the deprecation is not ours to act on.
warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated", category=FutureWarning)
import torch_geometric.nn as gnn  # noqa: E402
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402
from torch import nn  # noqa: E402

CONV_LAYERS = {"gcn": gnn.GCNConv, "sage": gnn.SAGEConv, "graph": gnn.GraphConv, "gat": gnn.GATConv}
DECODERS = ("none", "lstm")


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """values [B, N, H], weights [B, N] (0/1) → [B, H]; an empty selection gives zeros."""
    total = weights.sum(1, keepdim=True).clamp_min(1.0)
    return torch.einsum("bnh,bn->bh", values, weights) / total


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
