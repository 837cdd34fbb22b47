"""Least-squares repair: which layers it refits, that a refit never hurts on its own statistics, that it stays
finite on singular statistics, and that it plugs into the env's episode-end pipeline."""
from __future__ import annotations

import pytest
import torch
import torchvision
from gymnasium.utils.env_checker import check_env as gym_check_env
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from agmc_env import AGMCEnv
from agmc_env.decisions import analyse
from agmc_env.models import cifar_resnet
from agmc_env.pruning import Pruner
from agmc_env.repair import LstsqRepair, _solve_spd, find_consumers, unfold_input
from agmc_env.testing import randomise_bn, tiny_env, tiny_task


class VGGish(nn.Module):
    """Plain convs with stride, dilation, reflect padding and a bias, then a linear layer after flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 24, 3, stride=2, padding=1, padding_mode="reflect"), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 12, 3, padding=2, dilation=2), nn.ReLU(),
        )
        self.classifier = nn.Linear(12 * 8 * 8, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


NETS = {
    "resnet14": (lambda: cifar_resnet(14), {}),
    "resnet14-residual": (lambda: cifar_resnet(14), {"prune_residual": True}),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), {}),
    "vggish": (VGGish, {}),
}


def _setup(name: str, size: int = 16, n: int = 24):
    build, kwargs = NETS[name]
    torch.manual_seed(0)
    model = randomise_bn(build())
    images = torch.randn(n, 3, size, size)
    analysis = analyse(model, images[:1], **kwargs)
    pruner = Pruner(analysis)
    return analysis, pruner, LstsqRepair(analysis, pruner, images), images


def _features(analysis, images) -> dict[str, torch.Tensor]:
    """Every conv / linear layer's unfolded input in the unpruned net, straight from a forward pass."""
    modules = dict(analysis.gm.named_modules())
    feats, handles = {}, []
    for name, mod in modules.items():
        if isinstance(mod, (nn.Conv2d, nn.Linear)):
            handles.append(mod.register_forward_pre_hook(
                lambda m, args, name=name: feats.__setitem__(name, unfold_input(m, args[0]).double())))
    with torch.no_grad():
        analysis.gm(images)
    for h in handles:
        h.remove()
    return feats


def _layer_errors(analysis, pruner, repair, images, kept):
    """Per refitted consumer: (unrepaired, repaired) squared error of its output against the unpruned
    layer's, on the statistics' own images, restricted to its kept output channels."""
    feats = _features(analysis, images)
    plain = dict(pruner.prune(kept).named_modules())
    fixed_model = pruner.prune(kept)
    assert repair.repair(fixed_model, kept) >= 1
    fixed = dict(fixed_model.named_modules())
    orig = dict(analysis.gm.named_modules())
    errors = {}
    for c in repair.consumers:
        in_pos = pruner.positions(c.in_gid, kept)
        if in_pos is None:
            continue
        out_pos = None if c.out_gid is None else pruner.positions(c.out_gid, kept)
        x = feats[c.target]
        cols = (in_pos[:, None] * c.unit + torch.arange(c.unit)).flatten()
        w = orig[c.target].weight.detach().flatten(1).double()
        b = orig[c.target].bias
        target = x @ (w if out_pos is None else w[out_pos]).T
        if b is not None:
            target += (b if out_pos is None else b[out_pos]).detach().double()

        def err(mod):
            y = x[:, cols] @ mod.weight.detach().flatten(1).double().T
            if mod.bias is not None:
                y += mod.bias.detach().double()
            return float(((y - target) ** 2).sum())

        errors[c.target] = (err(plain[c.target]), err(fixed[c.target]))
    return errors


def test_consumers_per_architecture():
    analysis, pruner, repair, _ = _setup("resnet14")
    assert [c.target for c in repair.consumers] == [f"layer{s}.{b}.conv2" for s in (1, 2, 3) for b in (0, 1)]
    analysis, pruner, repair, _ = _setup("resnet14-residual")
    names = {c.target for c in repair.consumers}
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer3.1.conv1", "linear"} <= names  # the stream's readers
    analysis, pruner, repair, _ = _setup("mobilenet_v2", size=32, n=8)
    names = [c.target for c in repair.consumers]
    modules = dict(analysis.gm.named_modules())
    convs = [n for n in names if isinstance(modules[n], nn.Conv2d)]
    assert names[-1] == "classifier.1" and len(convs) == len(names) - 1  # + the classifier after the last 1×1 conv
    assert convs and all(modules[n].groups == 1 and modules[n].kernel_size == (1, 1) for n in convs)  # projections
    analysis, pruner, repair, _ = _setup("vggish")
    by_name = {c.target: c for c in repair.consumers}
    assert set(by_name) == {"features.3", "features.6", "classifier"}
    assert by_name["classifier"].unit == 64 and by_name["classifier"].mean is not None  # after flatten, a bias
    assert repair.nbytes == sum(c.gram.numel() * 4 + c.cross.numel() * 4 + (c.mean.numel() * 4 if c.mean is not None
                                                                            else 0) for c in repair.consumers)


@pytest.mark.parametrize("name", sorted(NETS))
def test_refit_is_never_worse_on_its_statistics_and_better_somewhere(name):
    size, n = (32, 8) if name == "mobilenet_v2" else (16, 24)
    analysis, pruner, repair, images = _setup(name, size, n)
    widths = [analysis.groups[g].width for g in analysis.decisions]
    kept = pruner.kept([max(1, w // 2) for w in widths])
    errors = _layer_errors(analysis, pruner, repair, images, kept)
    assert errors
    for layer, (before, after) in errors.items():
        assert after <= before * (1 + 1e-6) + 1e-9, layer
    assert sum(a for _, a in errors.values()) < 0.9 * sum(b for b, _ in errors.values())
    model = pruner.prune(kept).eval()
    repair.repair(model, kept)
    with torch.no_grad():
        assert torch.isfinite(model(images)).all()


@settings(max_examples=20, deadline=None)
@given(st.data())
def test_property_random_keep_sets(data):
    analysis, pruner, repair, images = _SHARED
    kept = {}
    for gid in analysis.decisions:
        width = analysis.groups[gid].width
        chosen = data.draw(st.sets(st.integers(0, width - 1), min_size=1, max_size=width), label=f"group {gid}")
        kept[gid] = torch.tensor(sorted(chosen), dtype=torch.long)
    if all(len(k) == analysis.groups[g].width for g, k in kept.items()):
        return
    for layer, (before, after) in _layer_errors(analysis, pruner, repair, images, kept).items():
        assert after <= before * (1 + 1e-6) + 1e-9, layer


_SHARED = _setup("resnet14")


def test_keep_all_is_bit_identical_to_no_repair():
    analysis, pruner, repair, images = _setup("vggish")
    kept = pruner.kept([analysis.groups[g].width for g in analysis.decisions])
    model = pruner.prune(kept)
    assert repair.repair(model, kept) == 0
    with torch.no_grad():
        assert torch.equal(model(images), pruner.prune(kept)(images))
    # and through the env: a whole episode at keep ratio 1
    with_repair = AGMCEnv(task=tiny_task(flops_target=1.0))
    without = AGMCEnv(task=tiny_task(flops_target=1.0, repair="none"))
    a, b = with_repair.run_ratios([1.0] * with_repair.num_decisions), without.run_ratios([1.0] * without.num_decisions)
    assert a["accuracy"] == b["accuracy"]
    x = with_repair.task.evaluator.images
    with torch.no_grad():
        assert torch.equal(with_repair.pruned_model()(x), without.pruned_model()(x))


def test_a_consumer_too_wide_for_a_gram_matrix_is_named_in_a_warning(monkeypatch):
    """A VGG16's Linear(25088, …) after flatten reads a pruned conv's channels but is not refitted: say so."""
    import agmc_env.repair

    torch.manual_seed(0)
    model = randomise_bn(cifar_resnet(14))
    images = torch.randn(8, 3, 16, 16)
    analysis = analyse(model, images[:1])
    monkeypatch.setattr(agmc_env.repair, "MAX_FEATURES", 16 * 9 - 1)  # the 16-channel 3×3 consumers are too wide
    too_wide = r"leaves \d+ layer\(s\) unrepaired, too wide .*layer1\.0\.conv2 \(144 unfolded"
    with pytest.warns(UserWarning, match=too_wide):
        repair = LstsqRepair(analysis, Pruner(analysis), images)
    assert "layer1.0.conv2" in repair.skipped and all(c.target not in repair.skipped for c in repair.consumers)


def test_singular_statistics_stay_finite():
    torch.manual_seed(0)
    model = randomise_bn(cifar_resnet(14))
    with torch.no_grad():  # half of layer1.0's inner channels dead: ReLU(0·x − 1) = 0 on every input
        model.layer1[0].bn1.weight[:8] = 0
        model.layer1[0].bn1.bias[:8] = -1
    images = torch.randn(16, 3, 16, 16)
    analysis = analyse(model, images[:1])
    pruner = Pruner(analysis)
    repair = LstsqRepair(analysis, pruner, images)
    gram = next(c for c in repair.consumers if c.target == "layer1.0.conv2").gram
    assert float(gram[: 8 * 9, : 8 * 9].abs().max()) == 0  # singular: zero rows and columns
    gid = analysis.group_of["layer1_0_conv1"]
    for keep in (torch.arange(0, 8), torch.arange(4, 12), torch.arange(16)[::3]):  # all dead, mixed, spread
        kept = {g: torch.arange(analysis.groups[g].width) for g in analysis.decisions}
        kept[gid] = keep
        pruned = pruner.prune(kept).eval()
        repair.repair(pruned, kept)
        assert all(torch.isfinite(p).all() for p in pruned.parameters())
        with torch.no_grad():
            assert torch.isfinite(pruned(images)).all()
    # the all-dead keep set leaves the sliced weights as they were (nothing to fit: λ alone)
    kept[gid] = torch.arange(0, 8)
    plain, fixed = pruner.prune(kept), pruner.prune(kept)
    repair.repair(fixed, kept)
    conv2 = "layer1.0.conv2"
    assert torch.allclose(plain.get_submodule(conv2).weight, fixed.get_submodule(conv2).weight, atol=1e-6)
    # the least-squares fallback when Cholesky fails on a singular matrix
    a = torch.zeros(5, 5, dtype=torch.float64)
    a[:2, :2] = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    sol = _solve_spd(a, torch.ones(5, 3, dtype=torch.float64))
    assert torch.isfinite(sol).all()


def test_residual_streams_are_handled_in_the_env():
    env = tiny_env(prune_residual=True)
    assert any(c.target == "linear" for c in env.task.repair.consumers)
    info = env.run_ratios([0.6] * env.num_decisions)
    assert 0 <= info["accuracy"] <= 1 and info["flops_ratio"] <= 0.6 + 1e-9
    with torch.no_grad():
        assert torch.isfinite(env.pruned_model()(env.task.evaluator.images)).all()


def test_env_with_repair_passes_the_gymnasium_checker():
    env = tiny_env(repair="lstsq")
    assert env.task.repair is not None and env.task.repair.nbytes > 0
    gym_check_env(env, skip_render_check=True)
    info = env.run_ratios([0.5] * env.num_decisions)
    assert info["timing"]["repair_s"] > 0


def test_repair_changes_the_scored_network_and_none_does_not():
    task = tiny_task()
    env = AGMCEnv(task=task)
    env.run_ratios([0.5] * env.num_decisions)
    repaired = env.pruned_model()
    plain = task.mode.build(env._counts.tolist())
    def weight(model, name):
        return model.get_submodule(name).weight

    assert not torch.equal(weight(repaired, "layer1.0.conv2"), weight(plain, "layer1.0.conv2"))
    assert torch.equal(weight(repaired, "layer1.0.conv1"), weight(plain, "layer1.0.conv1"))  # producers untouched
    assert tiny_task(repair="none").repair is None


def test_repair_images_are_disjoint_from_reward_and_calibration(monkeypatch):
    from agmc_env import task as task_module

    seen = {}
    original = task_module.PruningTask._repair_images

    def spy(self, split, size):
        seen["split"], seen["size"] = split, size
        return original(self, split, size)

    monkeypatch.setattr(task_module.PruningTask, "_repair_images", spy)
    task = tiny_task(repair_size=40)
    split = seen["split"]
    used = set(split.train[:40].tolist())
    assert task.repair.num_images == 40 and len(used) == 40
    assert not used & set(split.reward.tolist()) and not used & set(split.calib.tolist())
    assert tiny_task(repair_size=10_000).repair.num_images == len(split.train)  # all that are left
    with pytest.raises(ValueError, match="repair_size"):
        tiny_task(repair_size=0)


def test_fine_mode_refuses_an_explicit_lstsq_and_ignores_the_default():
    with pytest.raises(ValueError, match="repair='none'"):
        tiny_task(granularity="fine", params_target=0.5, repair="lstsq")
    task = tiny_task(granularity="fine", params_target=0.5)
    assert task.repair is None and task.options["repair"] == "none"
    with pytest.raises(ValueError, match="unknown repair"):
        tiny_task(repair="ridge")
