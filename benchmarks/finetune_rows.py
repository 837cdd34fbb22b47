"""The tables' fine-tuned rows: what training gives back, for the best searched policy and for uniform, started
from repaired and from unrepaired weights, fine-tuned with and without distillation.

A row's start is its policy's keep ratios replayed for one episode through the grid's env with ``repair`` on or
off (same ratios, same BN recalibration), so the two starts of a policy differ in the repair alone. The best
searched policy is the finished search run (any stochastic method on the grid's default reward path) with the
highest reward-split accuracy when the first of its rows starts: chosen without looking at the test split, and
pinned in ``finetune/best-search.json`` so that runs finishing later cannot split the four rows across two
policies. Each fine-tune is
``agents.finetune.finetune`` in its own folder, resumable per epoch, and a table renders whatever epochs are done:
``<runs>/<config>/finetune/<policy>-<repair>[-distill]-e<epochs>/``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEST_SEARCH = "best search"
REPAIRS = ("lstsq", "none")


@dataclass(frozen=True)
class FinetuneRow:
    policy: str  # BEST_SEARCH or a method's name ("uniform")
    repair: str  # the start's weights: "lstsq" (repaired) or "none"
    distill: bool

    @property
    def start_name(self) -> str:
        """The start checkpoint's file name: one per policy and start weights, shared by both distillations."""
        return f"{self.policy.replace(' ', '-')}-{self.repair}"

    @property
    def name(self) -> str:
        """The row's name on the command line (``--finetune-rows``) and its folder's stem."""
        return f"{self.start_name}{'-distill' if self.distill else ''}"

    def folder(self, root: Path, epochs: int) -> Path:
        return root / f"{self.name}-e{epochs}"


def planned(policies: tuple[str, ...]) -> list[FinetuneRow]:
    """Every policy × start weights × with/without distillation."""
    return [FinetuneRow(p, r, d) for p in policies for r in REPAIRS for d in (False, True)]


def best_run(folders: list[Path]) -> Path | None:
    """The run whose best episode has the highest reward-split accuracy (ties: the first)."""
    scored = [(json.loads((f / "best.json").read_text())["accuracy"], -i, f) for i, f in enumerate(folders)]
    return max(scored)[2] if scored else None


def pinned_best_run(folders: list[Path], root: Path) -> Path | None:
    """``best_run(folders)``, its folder name recorded in ``root/best-search.json`` the first time and read back
    ever after."""
    pin = root / "best-search.json"
    if pin.is_file():
        name = json.loads(pin.read_text())["run"]
        pinned = [f for f in folders if f.name == name]
        if not pinned:
            raise FileNotFoundError(f"{pin} names the finished run {name!r}, which is not among "
                                    f"{[f.name for f in folders]}: restore that run folder, or delete {pin} to "
                                    "choose the best search again")
        return pinned[0]
    best = best_run(folders)
    if best is not None:
        root.mkdir(parents=True, exist_ok=True)
        pin.write_text(json.dumps({"run": best.name, "chosen_from": sorted(f.name for f in folders)}, indent=1))
    return best


def start_checkpoint(source: Path, repair: str, path: Path, log=print) -> Path:
    """The source run's best policy replayed with ``repair``, saved as a pruned checkpoint (once). One made from
    another run (the best search re-chosen) is refused: rows resuming from it would mix two policies."""
    if path.exists():
        import torch

        made_from = Path(torch.load(path, weights_only=False)["meta"].get("replayed_from", "?")).name
        if made_from != source.name:
            raise FileExistsError(f"{path} replays {made_from}'s policy, not {source.name}'s: delete it and the rows "
                                  f"fine-tuned from it ({path.parent.parent}/*-e*) to start them from {source.name}")
        return path
    from agents.envs import make_env
    from agents.run_folder import save_pruned

    best = json.loads((source / "best.json").read_text())
    env_kwargs = {**best["env_kwargs"], "repair": repair}
    env = make_env(best["env_id"], **env_kwargs).unwrapped
    info = env.run_ratios(best["keep_ratios"])
    log(f"{source.name} replayed with repair={repair}: reward-split {info['accuracy']:.4f} (run: "
        f"{best['accuracy']:.4f}), MACs kept {info['flops_ratio']:.4f}")
    meta = {**best, "env_kwargs": env_kwargs, "replayed_from": str(source),
            **{k: info[k] for k in ("accuracy", "flops_ratio", "params_ratio", "keep_ratios")}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_pruned(path, env.pruned_model(), meta)
    return path


def run(row: FinetuneRow, source: Path, root: Path, epochs: int, log=print) -> None:
    """Fine-tunes one row (resuming a killed one); a finished row is left as it is."""
    from agents.finetune import finetune

    out = row.folder(root, epochs)
    if (out / "finetuned.pt").exists():
        return
    start = start_checkpoint(source, row.repair, root / "starts" / f"{row.start_name}.pt", log)
    log(f"fine-tuning {row} from {source.name} for {epochs} epochs → {out}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "source.json").write_text(json.dumps({"run": str(source)}))
    finetune(start, out, epochs=epochs, distill=row.distill, log=log)


def precision(history: list[dict[str, Any]]) -> str:
    """The precision the epochs trained in (``amp="auto"`` resolves per machine, and a row resumed on another
    machine may change it): "fp32", "bf16", or each change in order ("bf16 → fp32"); "?" for epochs recorded
    before the precision was."""
    return " → ".join(dict.fromkeys(h.get("precision", "?") for h in history))


def result(row: FinetuneRow, root: Path, epochs: int) -> dict[str, Any] | None:
    """Test accuracy before and after the epochs done so far (None before the first epoch)."""
    import torch

    from agents.finetune import STATE

    out = row.folder(root, epochs)
    if not (out / STATE).is_file():
        return None
    state = torch.load(out / STATE, map_location="cpu", weights_only=False)  # written after every epoch
    history = state["history"]
    return {"before": state["start_accuracy"], "after": history[-1]["test_accuracy"], "epochs": state["epoch"],
            "minutes": sum(h["seconds"] for h in history) / 60, "precision": precision(history),
            "source": Path(json.loads((out / "source.json").read_text())["run"]).name}
