"""``agmc finetune``: distillation from the unpruned net, and a killed fine-tune resumes where it stopped."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import agents.finetune as ft
from agents.cli import main
from agents.run_folder import RunError, save_pruned

QUICK = dict(batch_size=64, log=lambda *_: None)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("uniform")
    assert main(["baseline", "AGMCTest-Tiny-v0", "--no-progress", "--method", "uniform", "--out", str(out)]) == 0
    return out / "best_pruned.pt"


def test_distillation_loss_is_hintons():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    T, a = 4.0, 0.9
    p_t, p_s = F.softmax(t / T, 1), F.softmax(s / T, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    expected = (1 - a) * F.cross_entropy(s, y) + a * T * T * kl
    assert torch.allclose(ft.distillation_loss(s, t, y), expected, atol=1e-6)
    assert torch.allclose(ft.distillation_loss(s, s, y, alpha=1.0), torch.tensor(0.0), atol=1e-6)
    assert torch.allclose(ft.distillation_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))


def test_distill_smoke_from_the_command_line(checkpoint, tmp_path, capsys):
    assert main(["finetune", str(checkpoint), "--distill", "--epochs", "1", "--batch-size", "64", "--no-progress",
                 "--out", str(tmp_path / "ft")]) == 0
    assert "epoch 1: test accuracy" in capsys.readouterr().out
    saved = torch.load(tmp_path / "ft" / "finetuned.pt", weights_only=False)
    assert saved["meta"]["finetune"]["distill"] is True
    assert saved["meta"]["finetune"]["temperature"] == 4.0 and saved["meta"]["finetune"]["alpha"] == 0.9
    assert (tmp_path / "ft" / ft.STATE).exists()


def test_killed_finetune_resumes_after_its_last_epoch(checkpoint, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    ft.finetune(checkpoint, whole, epochs=2, distill=True, **QUICK)

    real = ft.atomic_write

    def killed_after_the_state(path, data):
        real(path, data)
        if path.name == ft.STATE:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(ft, "atomic_write", killed_after_the_state)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        ft.finetune(checkpoint, cut, epochs=2, distill=True, **QUICK)
    assert torch.load(cut / ft.STATE, weights_only=False)["epoch"] == 1
    assert not (cut / "finetuned.pt").exists()
    monkeypatch.undo()

    logs = []
    resumed = ft.finetune(checkpoint, cut, epochs=2, distill=True, batch_size=64, log=logs.append)
    assert logs[0].startswith(f"resuming {cut} after epoch 1 of 2") and len(logs) == 2  # epoch 2 only
    a = torch.load(whole / "finetuned.pt", weights_only=False)["model"].state_dict()
    b = torch.load(cut / "finetuned.pt", weights_only=False)["model"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # as if never killed
    assert resumed["finetune"]["test_accuracy"] == torch.load(whole / "finetuned.pt", weights_only=False)[
        "meta"]["finetune"]["test_accuracy"]
    assert len((cut / "finetune.csv").read_text().splitlines()) == 3  # header + 2 epochs
    with pytest.raises(RunError, match="epochs"):
        ft.finetune(checkpoint, cut, epochs=3, distill=True, **QUICK)


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_amp_is_a_recorded_setting_and_bad_values_are_refused(checkpoint, tmp_path, amp):
    result = ft.finetune(checkpoint, tmp_path / amp, epochs=1, amp=amp, **QUICK)
    assert result["finetune"]["amp"] == amp and 0 <= result["finetune"]["test_accuracy"] <= 1
    with pytest.raises(RunError, match="amp"):  # resuming with another precision would mix two runs
        ft.finetune(checkpoint, tmp_path / amp, epochs=1, amp="off" if amp == "bf16" else "bf16", **QUICK)
    with pytest.raises(ValueError, match="choose one of"):
        ft.finetune(checkpoint, tmp_path / "bad", epochs=1, amp="fp16", **QUICK)


def test_test_accuracy_is_scored_in_fp32_whatever_the_training_precision(checkpoint, tmp_path, monkeypatch):
    """The tables' Δ compares it with the unpruned net's fp32 accuracy; amp="auto" would score in bf16 on CUDA."""
    saved = torch.load(checkpoint, weights_only=False)
    meta = {**saved["meta"], "env_kwargs": {**saved["meta"].get("env_kwargs", {}), "amp": "bf16"}}  # searched in bf16
    save_pruned(tmp_path / "bf16.pt", saved["model"], meta)
    tasks, task_for = [], ft.task_for
    monkeypatch.setattr(ft, "task_for", lambda meta, **options: tasks.append(task_for(meta, **options)) or tasks[-1])
    result = ft.finetune(tmp_path / "bf16.pt", tmp_path / "ft", epochs=1, amp="bf16", **QUICK)
    assert result["finetune"]["amp"] == "bf16" and tasks[0].evaluator.amp == "off" and tasks[0].evaluator.dtype is None


def test_bn_statistics_follow_the_batches_even_from_a_cumulative_average_checkpoint(checkpoint, tmp_path):
    saved = torch.load(checkpoint, weights_only=False)
    for m in saved["model"].modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # what networks saved before the calibration restored momentum carry
    torch.save(saved, tmp_path / "cumulative.pt")
    ft.finetune(tmp_path / "cumulative.pt", tmp_path / "ft", epochs=1, **QUICK)
    tuned = torch.load(tmp_path / "ft" / "finetuned.pt", weights_only=False)["model"]
    momenta = {m.momentum for m in tuned.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert momenta == {ft.BN_MOMENTUM}
