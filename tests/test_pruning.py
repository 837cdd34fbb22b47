"""Physical pruning is exact: a pruned net equals the original with the removed channels zeroed."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from agmc_env.budget import CostModel
from agmc_env.decisions import analyse
from agmc_env.models import cifar_resnet
from agmc_env.pruning import Pruner
from agmc_env.testing import randomise_bn

MODELS = {
    "resnet20": lambda: cifar_resnet(20),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(num_classes=10),
    "vgg11": lambda: torchvision.models.vgg11_bn(num_classes=10),
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),  # SE blocks, stochastic depth
}


def _setup(name: str, prune_residual: bool):
    torch.manual_seed(0)
    model = randomise_bn(MODELS[name]())
    x = torch.randn(3, 3, 32, 32)
    analysis = analyse(model, x[:1], prune_residual=prune_residual)
    return model, x, analysis, Pruner(analysis)


@pytest.mark.parametrize("prune_residual", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruned_equals_masked_original(name, prune_residual):
    model, x, analysis, pruner = _setup(name, prune_residual)
    rng = np.random.default_rng(1)
    widths = [analysis.groups[g].width for g in analysis.decisions]
    kept = pruner.kept([int(rng.integers(1, w + 1)) for w in widths])
    pruned = pruner.prune(kept).eval()
    reference = pruner.masked(kept).eval()
    with torch.no_grad():
        out, ref, orig = pruned(x), reference(x), model(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (out - orig).abs().max().item() > 1e-3  # the prune did change the function
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("prune_residual", [False, True])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_keep_all_is_identity(name, prune_residual):
    model, x, analysis, pruner = _setup(name, prune_residual)
    full = pruner.prune(pruner.kept([analysis.groups[g].width for g in analysis.decisions])).eval()
    with torch.no_grad():
        assert torch.equal(full(x), model(x))


def test_option_a_shortcut_keeps_aligned_indices():
    """Stream pruning across the zero-pad shortcut: the remap writes surviving stage-1 channels to their
    stage-2 positions and zeros where the source channel was pruned."""
    model, x, analysis, pruner = _setup("resnet20", True)
    assert len(analysis.remaps) == 2  # the two stage transitions
    remap_groups = {analysis.group_of[r] for r in analysis.remaps}
    assert remap_groups <= set(analysis.decisions)
    kept = pruner.kept([max(1, analysis.groups[g].width // 2) for g in analysis.decisions])
    pruned = pruner.prune(kept)
    remaps = [m for n, m in pruned.named_modules() if n.startswith("agmc_remap")]
    assert remaps and all(len(m.src0) <= m.width for m in remaps)


def test_importance_ranks_by_summed_filter_norm():
    model, x, analysis, pruner = _setup("resnet20", True)
    gid = next(g for g in analysis.decisions if len(analysis.groups[g].producers) > 1)
    modules = dict(analysis.gm.named_modules())
    target = {n.name: n.target for n in analysis.gm.graph.nodes}
    score = sum(modules[target[p]].weight.detach().abs().sum((1, 2, 3)) for p in analysis.groups[gid].producers)
    kept = pruner.kept({gid: 4})[gid]
    assert set(kept.tolist()) == set(torch.topk(score, 4).indices.tolist())


def test_l2_importance_differs_from_l1():
    model = randomise_bn(cifar_resnet(20))
    analysis = analyse(model, torch.randn(1, 3, 32, 32))
    l1, l2 = Pruner(analysis, "l1"), Pruner(analysis, "l2")
    assert any(not torch.equal(l1.order[g], l2.order[g]) for g in analysis.decisions)


def test_cost_model_matches_pruned_module():
    from agmc_env.budget import count_module

    model, x, analysis, pruner = _setup("mobilenet_v2", True)
    cost = CostModel(analysis)
    counts = np.maximum(1, cost.widths // 3)
    pruned = pruner.prune(pruner.kept(counts.tolist()))
    assert count_module(pruned, x) == (cost.macs(counts), cost.params(counts))


def test_pruned_model_code_names_no_string_globals():
    """String annotations (PEP 563) must not reach the pruned module's generated code: torch < 2.12 fails
    to pickle a GraphModule whose globals hold a str (seen on the GPU machine's torch 2.11)."""
    analysis = analyse(cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32))
    pruner = Pruner(analysis)
    pruned = pruner.prune(pruner.kept([8] * len(analysis.decisions)))
    code = pruned.graph.python_code(root_module="self")
    assert not [k for k, v in code.globals.items() if isinstance(v, str)]
