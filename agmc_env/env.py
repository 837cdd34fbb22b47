"""The AGMC pruning MDP as a gymnasium environment."""
from __future__ import annotations

import inspect
import math
import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from torch import nn

from agmc_env import checkpoints, zoo
from agmc_env.budget import BudgetWall, CostModel, count_module
from agmc_env.data import ImageDataset, held_out_split, normalised
from agmc_env.decisions import TraceError, analyse, describe_frozen
from agmc_env.evaluate import Evaluator, resolve_device
from agmc_env.graph import FEATURES, build_graph
from agmc_env.imagefolder import ImageFolderDataset
from agmc_env.pruning import Pruner
from agmc_env.rewards import REWARDS
from agmc_env.sparsity import WeightSparsity, nonzero_params

LAYER_FEATURES = ("index", "out_channels", "in_channels", "h", "w", "stride", "kernel", "macs", "reduced", "rest",
                  "prev_action")
SPLITS = ("val", "test")
METRICS = ("top1", "top5")
GRANULARITIES = ("channel", "fine")


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
    rounded to an allowed channel count (a multiple of ``channel_round``) and then capped by the budget wall:
    the largest count that still lets the MACs target be met if every later decision took ``lbound``.
    Actions outside [0, 1] are clipped; NaN/inf or a wrong shape raise ``ValueError``. ``info["keep_ratios"]``
    reports the applied (realised) ratios.

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
    0 on every step but the last. Then ``reward="acc"`` (default): accuracy in [0, 1] on the reward split
    (``reward_metric``: top-1 by default, or top-5; ``info`` carries both as ``top1`` / ``top5``); ``"flops"``: −error·ln(MACs); ``"params"``: −error·ln(params). FLOPs means MACs of conv and
    linear layers throughout.

    ## Starting State
    The unpruned network, decision 0. ``reset`` never changes the model: each episode prunes a fresh copy.

    ## Episode End
    ``terminated`` after the last decision (T steps). The preset ids set ``max_episode_steps`` = T for their
    default options; options that change T (``prune_residual``, ``prune_linear``) need ``max_episode_steps=T``
    (or ``-1``: no time limit) in ``gym.make``, else gymnasium's ``TimeLimit`` truncates the episode early. The final network's
    MACs are ≤ ``flops_target`` × the original's in every episode, whatever the actions. Calling ``step``
    after the end raises ``RuntimeError``; call ``reset``.

    ## Arguments
    - ``model``: a preset name (``agmc_env.zoo.MODELS``) or any traceable ``nn.Module``.
    - ``model`` may also name any torchvision classification model (``"resnet18"``, ``"efficientnet_b0"``...):
      ImageNet weights from torchvision's URL (sha256-prefix checked) when the dataset is ``"imagenet"``.
    - ``dataset``: ``"cifar10"``, ``"imagenet"`` (default: the preset's), an ``agmc_env.data.ImageDataset`` or an
      ``agmc_env.imagefolder.ImageFolderDataset``. ImageNet = a folder with ``train/`` and ``val/`` in
      torchvision's ImageFolder layout; only the reward/calibration (and test) images are decoded, once.
    - ``weights``: checkpoint path; ``None`` = the preset's published checkpoint (``$AGMC_WEIGHTS_DIR``,
      else downloaded with a sha256 check into ``cache_dir`` / ``$AGMC_CACHE_DIR``) or a module's own
      weights; ``False`` = random init.
    - ``data_dir`` (else ``$AGMC_DATA_DIR``), ``download`` (fetch the dataset if missing), ``cache_dir``.
    - ``flops_target`` (0.5): MACs to keep, as a fraction. ``lbound`` / ``rbound`` (0.2 / 1.0): keep-ratio range.
    - ``prune_residual`` (False): also prune residual-stream groups (indices aligned across adds and
      option-A pad shortcuts). ``prune_linear`` (False): also prune hidden linear layers.
    - ``granularity`` ("channel" | "fine"). ``"fine"``: the decisions are every conv and linear weight in
      forward order, the action is the fraction of that layer's weights kept non-zero (the smallest
      magnitudes are zeroed), and the wall guarantees ≤ ``params_target`` × the original parameters
      non-zero (biases and BN count in full). ``info`` adds ``nonzero_params`` and ``sparsity``; the reward
      keeps ``params_ratio`` = non-zero fraction and ``flops_ratio`` = 1 (zeros are not dense speed).
    - ``importance`` ("l1" | "l2"): filter norm, summed over a group. ``channel_round`` (1): kept counts are
      multiples of it (or the full width).
    - ``val_size`` (1000): reward-split images held out from the training set (seed ``split_seed``);
      ``calib_size`` (500): disjoint training images for BN recalibration; ``bn_recalibration`` (True).
    - ``split`` ("val" | "test"): score the reward split or, when asked, the test set (``test_size``: a seeded
      subset of that many test images; None = all). ``reward_metric`` ("top1" | "top5").
    - ``reward`` ("acc" | "flops" | "params"). ``device`` ("auto": CUDA if available). ``amp`` ("auto" |
      "bf16" | "off"); ``batch_size`` (None: per device). ``max_nodes`` / ``max_edges``: observation padding.

    ## Version History
    - v0: initial release (channel pruning, CIFAR presets); ImageNet presets, ImageFolder data, any torchvision
      model by name, top-1/top-5 and ``granularity="fine"`` added without changing the channel-mode MDP.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: str | nn.Module = "resnet56", dataset: str | ImageDataset | ImageFolderDataset | None = None, *,
                 weights: str | None | bool = None, data_dir: str | None = None, download: bool = False,
                 cache_dir: str | None = None, flops_target: float = 0.5, lbound: float = 0.2,
                 rbound: float = 1.0, prune_residual: bool = False, prune_linear: bool = False,
                 importance: str = "l1", channel_round: int = 1, val_size: int = 1000, calib_size: int = 500,
                 granularity: str = "channel", params_target: float | None = None,
                 split: str = "val", split_seed: int = 0, test_size: int | None = None,
                 bn_recalibration: bool = True, reward: str = "acc", reward_metric: str = "top1",
                 device: str = "auto", amp: str = "auto", batch_size: int | None = None,
                 max_nodes: int | None = None, max_edges: int | None = None, render_mode: str | None = None,
                 **unknown: Any) -> None:
        if unknown:
            valid = [p for p in inspect.signature(AGMCEnv.__init__).parameters if p not in ("self", "unknown")]
            raise TypeError(f"unknown option(s) {sorted(unknown)} for AGMCEnv; valid options: {valid}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose one of {sorted(REWARDS)}")
        if granularity not in GRANULARITIES:  # checked before any data is loaded or model traced
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {GRANULARITIES}")
        if reward_metric not in METRICS:
            raise ValueError(f"unknown reward_metric {reward_metric!r}; choose one of {METRICS}")
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
        if render_mode is not None:
            raise ValueError(f"render_mode={render_mode!r} is not supported; AGMCEnv renders nothing")
        self.reward_name, self.reward_metric = reward, reward_metric
        self.split, self.bn_recalibration = split, bn_recalibration
        self.device = resolve_device(device)

        # model → data
        if isinstance(model, str):
            dataset = zoo.default_dataset(model) if dataset is None else dataset
        dataset = "cifar10" if dataset is None else dataset
        data = dataset if not isinstance(dataset, str) else zoo.load_dataset(dataset, data_dir, download)
        self.dataset = data  # kept (not copied) for fine-tuning and reports
        if isinstance(model, str):
            self.model_name = model
            net = zoo.build_model(model, data.num_classes, True if weights is None else weights, cache_dir,
                                  dataset if isinstance(dataset, str) else None)
        else:
            self.model_name = type(model).__name__
            net = model
            if weights not in (None, False):
                checkpoints.load_state_dict(net, weights)
        net = net.to(self.device).eval()
        split_idx = held_out_split(data.num_train, val_size, calib_size, split_seed)
        raw, labels = data.test_set(test_size) if split == "test" else data.train_subset(split_idx.reward)
        images, labels = normalised(raw, data.mean, data.std, self.device), labels.to(self.device)
        calib = (normalised(data.train_subset(split_idx.calib)[0], data.mean, data.std, self.device)
                 if bn_recalibration else images[:0])
        example = images[:1].contiguous()

        # graph → decisions → pruning/budget machinery
        self.analysis = analyse(net, example, prune_residual=prune_residual, prune_linear=prune_linear)
        self.cost = CostModel(self.analysis)  # dense MACs / params, also reported in fine mode
        if granularity == "channel":
            if params_target is not None:
                raise ValueError("params_target applies to granularity='fine'; channel pruning budgets MACs "
                                 "(flops_target)")
            if not self.analysis.decisions:
                reasons = describe_frozen(self.analysis)
                raise TraceError(f"no prunable channel group found in {self.model_name}"
                                 + (f"; pinned by: {reasons}" if reasons else
                                    " (try prune_residual=True or prune_linear=True)"))
            self.wall = BudgetWall(self.cost, flops_target=flops_target, lbound=lbound, rbound=rbound,
                                   channel_round=channel_round)
            self.pruner = Pruner(self.analysis, importance)
            self.op_graph = build_graph(self.analysis)
            self.widths = self.cost.widths
            self._decision_cost, self._base_cost = self.cost.decision_macs(), self.cost.base_macs
            producers = [self.analysis.groups[gid].producers[0] for gid in self.analysis.decisions]
        else:  # "fine"
            if params_target is None:
                raise ValueError("granularity='fine' needs params_target= (fraction of parameters left non-zero)")
            self.wall = WeightSparsity(self.analysis, params_target=params_target, lbound=lbound, rbound=rbound)
            self.op_graph = build_graph(self.analysis).retarget({n: t for t, n in enumerate(self.wall.nodes)})
            self.widths = self.wall.widths
            self._decision_cost, self._base_cost = self.widths.astype(np.float64), float(self.wall.base_params)
            producers = self.wall.nodes
        self.granularity, self.params_target = granularity, params_target
        self.evaluator = Evaluator(images, labels, calib, self.device, batch_size, amp)
        self.evaluator.choose_precision(self.analysis.gm)
        self.flops_target, self.lbound, self.rbound = flops_target, lbound, rbound
        self.num_decisions = len(self.widths)
        self._example = example
        self._layer_static = self._layer_table(producers)

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
        self._last_model: nn.Module | None = None

    # ------------------------------------------------------------------ state
    def _layer_table(self, producers: list[str]) -> np.ndarray:
        """AMC's static columns per decision (from the layer that produces it), min–max scaled over decisions
        (a constant column → 0). The cost column is MACs for channels, weights for fine-grained decisions."""
        modules = dict(self.analysis.gm.named_modules())
        target = {nd.name: nd for nd in self.analysis.gm.graph.nodes}
        rows = []
        for t, name in enumerate(producers):
            node = target[name]
            mod = modules[node.target]
            in_shape = self.analysis.shapes[node.all_input_nodes[0].name]
            k = mod.kernel_size[0] if isinstance(mod, nn.Conv2d) else 1
            s = mod.stride[0] if isinstance(mod, nn.Conv2d) else 1
            h, w = (in_shape[2], in_shape[3]) if len(in_shape) == 4 else (1, 1)
            rows.append([t, self.analysis.shapes[name][1], in_shape[1], h, w, s, k, 0.0])
        table = np.array(rows, dtype=np.float64)
        table[:, 7] = self._decision_cost
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

    def kept_cost(self, counts: np.ndarray) -> float:
        """What the budget wall limits, for per-decision counts: MACs (channels) or non-zero params (fine)."""
        return self.cost.macs(counts) if self.granularity == "channel" else float(self.wall.nonzero(counts))

    def keep_ratios(self) -> list[float]:
        """Applied keep ratios of the decisions made so far in this episode."""
        return (self._counts[: self._t] / self.widths[: self._t]).tolist()

    def _ratios_so_far(self) -> np.ndarray:
        r = np.ones(self.num_decisions)
        r[: self._t] = self._counts[: self._t] / self.widths[: self._t]
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
        full = self.widths.copy()
        full[:t] = self._counts[:t]
        base = self._base_cost
        layer = np.zeros(len(LAYER_FEATURES), dtype=np.float32)
        layer[:8] = self._layer_static[min(t, T - 1)]
        if t == T:
            layer[0] = 1.0
        layer[8] = (base - self.kept_cost(full)) / base
        layer[9] = self._decision_cost[t + 1:].sum() / base if t < T else 0.0
        layer[10] = self._counts[t - 1] / self.widths[t - 1] if t > 0 else 1.0
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
        return self._observation(), {"decision": 0, "keep_ratios": []}

    def _check_action(self, action: Any) -> float:
        a = np.asarray(action, dtype=np.float64)
        if a.size != 1 or a.ndim > 1:
            raise ValueError(f"action must have shape (1,) (one keep ratio), got shape {a.shape}")
        value = float(a.reshape(()))
        if not math.isfinite(value):
            raise ValueError(f"action must be a finite keep ratio in [0, 1], got {value}")
        return min(max(value, 0.0), 1.0)

    def _decide(self, action: Any) -> int:
        """Apply one action to the bookkeeping (wall, counts); returns the decision index it fixed."""
        if self._done:
            raise RuntimeError("step() called after the episode ended; call reset() first")
        a = self._check_action(action)
        t = self._t
        ratio = self.lbound + a * (self.rbound - self.lbound)
        self._counts[t] = self.wall.clip(t, self.wall.desired(t, ratio), self._counts)
        self._t += 1
        self._done = self._t == self.num_decisions
        return t

    def step(self, action: Any):
        t = self._decide(action)
        info: dict[str, Any] = {"decision": t, "keep_ratios": self.keep_ratios()}
        if not self._done:
            return self._observation(), 0.0, False, False, info
        info.update(self._finish())
        return self._observation(), float(info["reward"]), True, False, info

    def _finish(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        counts = self._counts.tolist()
        if self.granularity == "channel":
            model = self.pruner.prune(self.pruner.kept(counts))
        else:
            model = self.wall.apply(self.analysis.gm, counts)
        t1 = time.perf_counter()
        if self.bn_recalibration:
            self.evaluator.recalibrate(model)
        t2 = time.perf_counter()
        scores = self.evaluator.scores(model)
        acc = scores[self.reward_metric]
        t3 = time.perf_counter()
        macs, params = count_module(model, self._example)  # measured on the real module
        sizes: dict[str, Any] = {"macs": macs, "params": params}
        if self.granularity == "fine":  # zeros do not shrink dense compute: report sparsity, not speed
            params, weights = nonzero_params(model)
            nonzero_weights = params - (sizes["params"] - weights)  # the rest of the parameters count in full
            sizes.update(nonzero_params=params, sparsity=1.0 - nonzero_weights / weights)
        self._last_model = model
        return {
            "reward": REWARDS[self.reward_name](acc, macs, params),
            "accuracy": acc, **scores, "flops_ratio": macs / self.cost.base_macs, "params_ratio": params / self.cost.base_params,
            **sizes, "counts": counts, **({"channels": counts} if self.granularity == "channel" else {}),
            "timing": {"prune_s": t1 - t0, "calibrate_s": t2 - t1, "evaluate_s": t3 - t2},
        }

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
        self.reset()
        span = max(self.rbound - self.lbound, 1e-12)
        info: dict[str, Any] = {}
        for r in ratios:
            _, _, _, _, info = self.step(np.array([(r - self.lbound) / span], dtype=np.float32))
        return info
