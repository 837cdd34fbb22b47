"""Pruning modes: what a decision is, how its count is budgeted, built into a network and reported.

:class:`PruningMode` is the interface the env, the baselines and the searchers share; ``MODES`` maps the
``granularity`` option to an implementation, and :func:`make_mode` is the one place that picks one.

- :class:`ChannelMode` — coupled channel groups (the traced analysis's decisions), physically removed,
  under AMC's wall on exact MACs.
- :class:`FineMode` — one decision per conv / linear weight (fraction kept non-zero, smallest magnitudes
  zeroed) under a wall on non-zero parameters; reported as sparsity, exported as a sparse state dict too.
"""
from __future__ import annotations

import io
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from torch import nn

from agmc_env.budget import BudgetWall, CostModel
from agmc_env.decisions import ChannelAnalysis, TraceError, describe_frozen
from agmc_env.graph import OpGraph, build_graph
from agmc_env.pruning import Pruner
from agmc_env.sparsity import WeightSparsity, nonzero_params, save_sparse


class PruningMode(ABC):
    """One granularity of decisions. Counts are integers per decision, in ``[1, widths[t]]``."""

    widths: np.ndarray  # per decision: channels (channel mode) or weights (fine mode)
    decision_cost: np.ndarray  # AMC's per-decision cost column: MACs or weights that depend on the decision
    base_cost: float  # what the wall budgets, for the unpruned net
    budget: int  # the wall's limit on ``kept_cost``
    producers: list[str]  # the graph node whose layer makes each decision (for AMC's layer features)
    graph: OpGraph  # the op graph with this mode's decisions marked
    repairable: bool = True  # whether layers lose input channels, so a repair stage has something to refit

    @abstractmethod
    def desired(self, t: int, ratio: float) -> int:
        """The allowed count nearest to ``ratio`` of decision t's width."""

    @abstractmethod
    def clip(self, t: int, count: int, decided: np.ndarray) -> int:
        """Decision t's count capped by the wall; ``decided`` holds the counts of decisions 0 … t−1."""

    @abstractmethod
    def kept_cost(self, counts: np.ndarray) -> float:
        """What the wall limits (MACs or non-zero parameters) for a full vector of counts."""

    @abstractmethod
    def build(self, counts: list[int]) -> nn.Module:
        """The pruned network for these counts (a new module; the analysed one is never changed)."""

    def kept_params(self, model: nn.Module, params: int) -> int:
        """The parameters ``params_ratio`` and the params reward count (``params``: all of the module's)."""
        return params

    def report(self, model: nn.Module, params: int) -> dict[str, Any]:
        """Mode-specific measurements of a built network for ``info`` (``params``: its parameter count)."""
        return {}

    def exports(self, model: nn.Module) -> dict[str, bytes]:
        """Extra files a search writes for its best network: file-name suffix → content."""
        return {}


class ChannelMode(PruningMode):
    """Channel pruning: decisions are coupled channel groups; the wall limits MACs."""

    def __init__(self, analysis: ChannelAnalysis, cost: CostModel, options: dict[str, Any]) -> None:
        if options["params_target"] is not None:
            raise ValueError("params_target applies to granularity='fine'; channel pruning budgets MACs (flops_target)")
        if not analysis.decisions:
            reasons = describe_frozen(analysis)
            raise TraceError(f"no prunable channel group found in {type(analysis.gm).__name__}"
                             + (f"; pinned by: {reasons}" if reasons else
                                " (try prune_residual=True or prune_linear=True)"))
        self.cost = cost
        self.wall = BudgetWall(cost, flops_target=options["flops_target"], lbound=options["lbound"],
                               rbound=options["rbound"], channel_round=options["channel_round"],
                               budget=options["budget"])
        self.pruner = Pruner(analysis, options["importance"])
        self.widths, self.budget = cost.widths, self.wall.budget
        self.decision_cost, self.base_cost = cost.decision_macs(), cost.base_macs
        self.producers = [analysis.groups[gid].producers[0] for gid in analysis.decisions]
        self.graph = build_graph(analysis)

    def desired(self, t: int, ratio: float) -> int:
        return self.wall.desired(t, ratio)

    def clip(self, t: int, count: int, decided: np.ndarray) -> int:
        return self.wall.clip(t, count, decided)

    def kept_cost(self, counts: np.ndarray) -> float:
        return self.cost.macs(counts)

    def build(self, counts: list[int]) -> nn.Module:
        return self.pruner.prune(self.pruner.kept(counts))


class FineMode(PruningMode):
    """Fine-grained (unstructured) pruning: a decision per weight layer; the wall limits non-zero parameters."""

    repairable = False  # zeros inside layers: no channel is removed, no consumer loses inputs

    def __init__(self, analysis: ChannelAnalysis, cost: CostModel, options: dict[str, Any]) -> None:
        if options["params_target"] is None:
            raise ValueError("granularity='fine' needs params_target= (fraction of parameters left non-zero)")
        self.analysis = analysis
        self.sparsity = WeightSparsity(analysis, params_target=options["params_target"], lbound=options["lbound"],
                                       rbound=options["rbound"], budget=options["budget"])
        self.widths, self.budget = self.sparsity.widths, self.sparsity.budget
        self.decision_cost, self.base_cost = self.widths.astype(np.float64), float(self.sparsity.base_params)
        self.producers = self.sparsity.nodes
        self.graph = build_graph(analysis).retarget({n: t for t, n in enumerate(self.sparsity.nodes)})

    def desired(self, t: int, ratio: float) -> int:
        return self.sparsity.desired(t, ratio)

    def clip(self, t: int, count: int, decided: np.ndarray) -> int:
        return self.sparsity.clip(t, count, decided)

    def kept_cost(self, counts: np.ndarray) -> float:
        return float(self.sparsity.nonzero(counts))

    def build(self, counts: list[int]) -> nn.Module:
        return self.sparsity.apply(self.analysis.gm, counts)

    def kept_params(self, model: nn.Module, params: int) -> int:
        return nonzero_params(model)[0]

    def report(self, model: nn.Module, params: int) -> dict[str, Any]:
        # Zeros do not shrink dense compute: report sparsity, not speed.
        nonzero, weights = nonzero_params(model)
        nonzero_weights = nonzero - (params - weights)  # every other parameter counts in full
        return {"nonzero_params": nonzero, "sparsity": 1.0 - nonzero_weights / weights}

    def exports(self, model: nn.Module) -> dict[str, bytes]:
        buf = io.BytesIO()
        save_sparse(model, buf)
        return {"sparse": buf.getvalue()}


MODES: dict[str, type[PruningMode]] = {"channel": ChannelMode, "fine": FineMode}


def make_mode(analysis: ChannelAnalysis, cost: CostModel, options: dict[str, Any]) -> PruningMode:
    """The mode the ``granularity`` option names, built from the task's options."""
    return MODES[options["granularity"]](analysis, cost, options)
