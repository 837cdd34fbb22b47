"""The AGMC pruning MDP as a gymnasium environment."""
from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from torch import nn

from agmc_env import options
from agmc_env.data import ImageDataset
from agmc_env.graph import FEATURES
from agmc_env.imagefolder import ImageFolderDataset
from agmc_env.task import PruningTask

LAYER_FEATURES = ("index", "out_channels", "in_channels", "h", "w", "stride", "kernel", "macs", "reduced", "rest",
                  "prev_action")


class AGMCEnv(gym.Env):
    """
    ## Description
    Channel pruning of a trained CNN as a sequential decision process (AMC, He et al. 2018) whose state is
    the network's computational graph (AGMC, Yu et al. 2021). The model is traced with ``torch.fx``; its
    coupled channel groups (channels that must be dropped together because of BatchNorm, depthwise convs
    or residual adds) are the *decisions*, visited in forward order. Each step fixes one decision's keep
    ratio; after the last one the network is pruned physically (a new, smaller module), its BatchNorm
    statistics are re-estimated on held-out training images, and its top-1 accuracy is the reward.

    ## Action Space
    ``Box(0, 1, shape=(1,), float32)``: a keep ratio in [0, 1], mapped linearly to ``[lbound, rbound]``,
    rounded to an allowed channel count (a multiple of ``channel_round``) and then moved into the budget wall's
    range: at most the largest count that still lets the MACs target be met if every later decision took
    ``lbound`` (AMC's ceiling) and, with ``budget="window"``, at least the smallest count that still lets the
    floor (target − 1 % of the original MACs) be reached if every later decision took ``rbound``.
    Actions outside [0, 1] are clipped; NaN/inf, a wrong shape or anything but a real number (bool, str, bytes,
    complex, None) raise ``ValueError``. ``info["keep_ratios"]``
    reports the applied (realised) ratios, ``info["applied_action"]`` the action that gives this step's applied
    ratio as it is.

    ## Observation Space
    A ``Dict`` of fixed-shape ``Box``es (SB3's ``MultiInputPolicy`` accepts it; ``spaces.Graph`` is not
    supported by SB3), padded to ``max_nodes`` / ``max_edges`` (default: this graph's own sizes):

    - ``x`` [N, F] float32 node features in [0, 1] (names in ``agmc_env.graph.FEATURES``): op type, channels,
      kernel, stride, groups, feature-map size, MACs/params shares, prunable flag; dynamic keep ratios
      decided so far (1 while undecided) and a flag on the current decision's nodes.
    - ``node_mask`` [N] 1 for real nodes; ``edge_index`` [2, E] int64 data-flow edges; ``edge_mask`` [E].
    - ``decision_index`` [1] int64 current decision t (T after the last step); ``decision_nodes`` [N]
      the current decision's nodes; ``node_decision`` [N] int64 1 + the decision a node's output belongs
      to (0: none), so an encoder can read per-decision embeddings.
    - ``layer`` [11] float32: AMC's hand-made state (index, out-channels, in-channels, h, w, stride, kernel,
      MACs; min–max scaled over decisions) plus MACs reduced so far and MACs still to decide (fractions
      of the original MACs) and the previous applied ratio.

    ``env.unwrapped.graph`` gives the current graph as a ``torch_geometric.data.Data``.

    ## Rewards
    0 on every step but the last. Then the task's episode-end pipeline runs (prune → repair → BN recalibration →
    score → reward; ``env.unwrapped.task.pipeline``) and ``reward="acc"`` (default) gives the accuracy in [0, 1]
    on the reward split (``reward_metric``: top-1 by default, or top-5; ``info`` carries both as ``top1`` /
    ``top5``); ``"flops"``: −error·ln(MACs); ``"params"``: −error·ln(params); or any callable ``f(info) -> float``
    of the final ``info`` (``accuracy``, ``top1``, ``top5``, ``flops_ratio``, ``params_ratio``, ``macs``,
    ``params``, ``counts``, ...). FLOPs means MACs of conv and linear layers throughout.

    ## Starting State
    The unpruned network, decision 0. ``reset`` never changes the model: each episode prunes a fresh copy.

    ## Episode End
    ``terminated`` after the last decision (T steps). The preset ids set ``max_episode_steps`` = T for their
    default options; options that change T (``prune_residual``, ``prune_linear``) need ``max_episode_steps=T``
    (or ``-1``: no time limit) in ``gym.make``, else gymnasium's ``TimeLimit`` truncates the episode early. The final network's
    MACs are in [``flops_target`` − 1 %, ``flops_target``] × the original's in every episode, whatever the actions
    (``budget="window"``; the wall raises the last decisions when earlier ones under-spend; ``budget="ceiling"``:
    ≤ ``flops_target`` only, as AMC). Calling ``step``
    after the end raises ``RuntimeError``; call ``reset``.

    ## Arguments
    ``AGMCEnv(model, dataset, *, task=None, **options)``. Every option but ``max_nodes`` / ``max_edges`` belongs to
    the :class:`~agmc_env.task.PruningTask` the env builds, or is given: ``task=agmc_env.make_task(...)`` shares one
    task (data, traced model, evaluator) between envs; options given beside a task must agree with it.

{options}

    ## Version History
    - v0: initial release (channel pruning, CIFAR presets); ImageNet presets, ImageFolder data, any torchvision
      model by name, top-1/top-5, ``granularity="fine"``, shared tasks (``task=``) and callable rewards added
      without changing the channel-mode MDP.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: str | nn.Module | None = None,
                 dataset: str | ImageDataset | ImageFolderDataset | None = None, *, task: PruningTask | None = None,
                 max_nodes: int | None = None, max_edges: int | None = None, render_mode: str | None = None,
                 **task_options: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r} is not supported; AGMCEnv renders nothing")
        given = {k: v for k, v in (("model", model), ("dataset", dataset)) if v is not None}
        if task is None:
            task = PruningTask(**given, **task_options)
        else:
            options.resolve({**given, **task_options})  # unknown names fail as without a task
            bad = task.conflicts({**given, **task_options})
            if bad:
                raise ValueError(f"options given with task= differ from the task's: {', '.join(bad)}; build another "
                                 "task (agmc_env.make_task) or leave them out")
        options.resolve({"max_nodes": max_nodes, "max_edges": max_edges}, scope="env")
        self.task, self.mode = task, task.mode
        self.op_graph = self.mode.graph
        self.num_decisions = task.num_decisions
        self._layer_static = self._layer_table(self.mode.producers)
        n = max_nodes or self.op_graph.num_nodes
        e = max_edges or self.op_graph.edge_index.shape[1]
        if n < self.op_graph.num_nodes or e < self.op_graph.edge_index.shape[1]:
            raise ValueError(f"max_nodes={max_nodes}/max_edges={max_edges} below this graph's "
                             f"{self.op_graph.num_nodes} nodes / {self.op_graph.edge_index.shape[1]} edges")
        T = self.num_decisions
        self.action_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.observation_space = spaces.Dict({
            "x": spaces.Box(0.0, 1.0, shape=(n, len(FEATURES)), dtype=np.float32),
            "node_mask": spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32),
            "edge_index": spaces.Box(0, n - 1, shape=(2, e), dtype=np.int64),
            "edge_mask": spaces.Box(0.0, 1.0, shape=(e,), dtype=np.float32),
            "decision_index": spaces.Box(0, T, shape=(1,), dtype=np.int64),
            "decision_nodes": spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32),
            "node_decision": spaces.Box(0, T, shape=(n,), dtype=np.int64),
            "layer": spaces.Box(0.0, 1.0, shape=(len(LAYER_FEATURES),), dtype=np.float32),
        })
        self._static_obs = self._padded_static(n, e)
        self._t = 0
        self._counts = np.zeros(T, dtype=np.int64)
        self._done = True
        self._started = False  # step() before the first reset() is refused
        self._last_model: nn.Module | None = None

    @property
    def lbound(self) -> float:
        return self.task.options["lbound"]

    @property
    def rbound(self) -> float:
        return self.task.options["rbound"]

    # ------------------------------------------------------------------ state
    def _layer_table(self, producers: list[str]) -> np.ndarray:
        """AMC's static columns per decision (from the layer that produces it), min–max scaled over decisions
        (a constant column → 0). The cost column is the mode's: MACs for channels, weights for fine-grained."""
        gm = self.task.analysis.gm
        shapes = self.task.analysis.shapes
        modules = dict(gm.named_modules())
        target = {nd.name: nd for nd in gm.graph.nodes}
        rows = []
        for t, name in enumerate(producers):
            node = target[name]
            mod = modules[node.target]
            in_shape = shapes[node.all_input_nodes[0].name]
            k = mod.kernel_size[0] if isinstance(mod, nn.Conv2d) else 1
            s = mod.stride[0] if isinstance(mod, nn.Conv2d) else 1
            h, w = (in_shape[2], in_shape[3]) if len(in_shape) == 4 else (1, 1)
            rows.append([t, shapes[name][1], in_shape[1], h, w, s, k, 0.0])
        table = np.array(rows, dtype=np.float64)
        table[:, 7] = self.mode.decision_cost
        lo, hi = table.min(0), table.max(0)
        return np.where(hi > lo, (table - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)

    def _padded_static(self, n: int, e: int) -> dict[str, np.ndarray]:
        g = self.op_graph
        edge_index = np.zeros((2, e), dtype=np.int64)
        edge_index[:, : g.edge_index.shape[1]] = g.edge_index
        edge_mask = np.zeros(e, dtype=np.float32)
        edge_mask[: g.edge_index.shape[1]] = 1.0
        node_mask = np.zeros(n, dtype=np.float32)
        node_mask[: g.num_nodes] = 1.0
        node_decision = np.zeros(n, dtype=np.int64)
        node_decision[: g.num_nodes] = g.out_decision + 1
        return {"node_mask": node_mask, "edge_index": edge_index, "edge_mask": edge_mask,
                "node_decision": node_decision}

    def keep_ratios(self) -> list[float]:
        """Applied keep ratios of the decisions made so far in this episode."""
        return (self._counts[: self._t] / self.mode.widths[: self._t]).tolist()

    def applied_actions(self) -> list[float]:
        """The actions in [0, 1] that give the applied ratios as they are: what channel rounding and the budget
        wall made of this episode's actions so far (replayed, they play the same episode)."""
        return np.clip(self._actions_for(self.keep_ratios()), 0.0, 1.0).tolist()

    def _actions_for(self, ratios: Any) -> np.ndarray:
        """The actions that map linearly onto these keep ratios (the inverse of ``_decide``'s mapping)."""
        return (np.asarray(ratios, dtype=np.float64) - self.lbound) / max(self.rbound - self.lbound, 1e-12)

    def _ratios_so_far(self) -> np.ndarray:
        r = np.ones(self.num_decisions)
        r[: self._t] = self._counts[: self._t] / self.mode.widths[: self._t]
        return r

    def _observation(self) -> dict[str, np.ndarray]:
        t, T = self._t, self.num_decisions
        current = t if t < T else None
        n = self._static_obs["node_mask"].shape[0]
        feats = self.op_graph.features(self._ratios_so_far(), current)
        x = np.zeros((n, len(FEATURES)), dtype=np.float32)
        x[: len(feats)] = feats
        decision_nodes = np.zeros(n, dtype=np.float32)
        decision_nodes[: len(feats)] = feats[:, -1]
        full = self.mode.widths.copy()
        full[:t] = self._counts[:t]
        base = self.mode.base_cost
        layer = np.zeros(len(LAYER_FEATURES), dtype=np.float32)
        layer[:8] = self._layer_static[min(t, T - 1)]
        if t == T:
            layer[0] = 1.0
        layer[8] = (base - self.mode.kept_cost(full)) / base
        layer[9] = self.mode.decision_cost[t + 1:].sum() / base if t < T else 0.0
        layer[10] = self._counts[t - 1] / self.mode.widths[t - 1] if t > 0 else 1.0
        return {"x": x, "decision_index": np.array([t], dtype=np.int64), "decision_nodes": decision_nodes,
                "layer": np.clip(layer, 0.0, 1.0), **{k: v.copy() for k, v in self._static_obs.items()}}

    @property
    def graph(self):
        """The current graph as a ``torch_geometric.data.Data`` (x, edge_index, op_type, names)."""
        current = self._t if self._t < self.num_decisions else None
        return self.op_graph.to_pyg(self.op_graph.features(self._ratios_so_far(), current))

    # ------------------------------------------------------------------ dynamics
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._t = 0
        self._counts[:] = 0
        self._done = False
        self._started = True
        return self._observation(), {"decision": 0, "keep_ratios": []}

    def _check_action(self, action: Any) -> float:
        a = np.asarray(action)
        if a.dtype.kind not in "fiu":  # bool, str, bytes, complex, None and other objects are not keep ratios
            raise ValueError(f"action must be a real number (a keep ratio in [0, 1]), got {type(action).__name__} "
                             f"{action!r}" + (f" of {a.dtype}" if isinstance(action, np.ndarray) else ""))
        a = a.astype(np.float64)
        if a.size != 1 or a.ndim > 1:
            raise ValueError(f"action must have shape (1,) (one keep ratio), got shape {a.shape}")
        value = float(a.reshape(()))
        if not math.isfinite(value):
            raise ValueError(f"action must be a finite keep ratio in [0, 1], got {value}")
        return min(max(value, 0.0), 1.0)

    def _decide(self, action: Any) -> int:
        """Apply one action to the bookkeeping (wall, counts); returns the decision index it fixed."""
        if not self._started:
            raise RuntimeError("step() called before reset(); call reset() first")
        if self._done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        a = self._check_action(action)
        t = self._t
        ratio = self.lbound + a * (self.rbound - self.lbound)
        self._counts[t] = self.mode.clip(t, self.mode.desired(t, ratio), self._counts)
        self._t += 1
        self._done = self._t == self.num_decisions
        return t

    def step(self, action: Any):
        t = self._decide(action)
        ratios = self.keep_ratios()
        info: dict[str, Any] = {"decision": t, "keep_ratios": ratios,
                                "applied_action": float(np.clip(self._actions_for(ratios[t]), 0.0, 1.0))}
        if not self._done:
            return self._observation(), 0.0, False, False, info
        end = self.task.finish(self._counts.tolist())
        self._last_model = end.model
        info.update(end.info)
        return self._observation(), float(info["reward"]), True, False, info

    def trajectory(self, actions: list | np.ndarray) -> list[dict[str, np.ndarray]]:
        """The T+1 observations an episode with these actions visits, without pruning or scoring it
        (cheap: used to rebuild a replay buffer from a logged search). Leaves the env needing a reset."""
        self.reset()
        observations = [self._observation()]
        for a in actions:
            self._decide(a)
            observations.append(self._observation())
        self._done = True
        return observations

    def pruned_model(self) -> nn.Module:
        """The physically pruned (and BN-recalibrated) network of the last finished episode."""
        if self._last_model is None:
            raise RuntimeError("no finished episode yet: run an episode to the end before asking for its model")
        return self._last_model

    def run_ratios(self, keep_ratios: list[float] | np.ndarray) -> dict[str, Any]:
        """Play one whole episode with the given per-decision keep ratios (through the same wall); returns
        the final ``info``. The per-layer-ratio API for rule-based baselines and replays."""
        ratios = np.asarray(keep_ratios, dtype=np.float64).reshape(-1)
        if len(ratios) != self.num_decisions:
            raise ValueError(f"need {self.num_decisions} keep ratios (one per decision), got {len(ratios)}")
        return self.run_actions(self._actions_for(ratios))

    def run_actions(self, actions: list[float] | np.ndarray) -> dict[str, Any]:
        """Play one whole episode with these actions (one in [0, 1] per decision); returns the final ``info``."""
        actions = np.asarray(actions, dtype=np.float64).reshape(-1)
        if len(actions) != self.num_decisions:
            raise ValueError(f"need {self.num_decisions} actions (one per decision), got {len(actions)}")
        self.reset()
        info: dict[str, Any] = {}
        for a in actions:
            _, _, _, _, info = self.step(np.array([a], dtype=np.float32))
        return info


AGMCEnv.__doc__ = AGMCEnv.__doc__.replace("{options}", options.docs())
