"""The ``agmc`` command line: search, baseline, evaluate, finetune."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import gymnasium as gym

import agmc_env  # noqa: F401
from agents.algorithms import ALGORITHMS, CREDITS, EXPLORATIONS
from agents.checkpoint_io import CheckpointFileError
from agents.extractors import EMBEDDINGS
from agents.run_folder import RunError, SearchConfig
from agents.search import run_search
from agents.searchers import SEARCHERS, MissingPackage, run_baseline
from agmc_env.checkpoints import CheckpointError
from agmc_env.data import DataError
from agmc_env.decisions import TraceError
from agmc_env.evaluate import AMP_CHOICES, TRAIN_AMP
from agmc_env.options import KINDS, OPTIONS


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (the usage itself is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _kind(kind: str, parse=None):
    """An argparse type: ``parse`` the text, then check it against ``agmc_env.options.KINDS[kind]``."""
    rule = KINDS[kind]
    parse = parse or rule.parse

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {rule.what}") from None
        if not rule.fits(value):
            raise argparse.ArgumentTypeError(f"{text} is not {rule.what}")
        return value

    return convert


def _out_problem(out: str) -> str | None:
    """Why ``--out`` cannot be written (a file, under a file, not writable), or None. Creates nothing."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        return f"--out {out} is a file; give a folder"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return f"--out {out} is under the file {existing}; give a folder"
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        return f"--out {out} is not writable ({existing}: {exc.strerror}); give a folder you can write to"
    return None


def _env_id(value: str) -> str:
    if value not in gym.registry:
        agmc_ids = sorted(k for k in gym.registry if "AGMC" in k)
        raise argparse.ArgumentTypeError(f"unknown env id {value!r}; choose one of {agmc_ids}")
    return value


def _add_env_options(p: argparse.ArgumentParser) -> None:
    """One flag per env option with a CLI type in ``agmc_env.options.OPTIONS`` (unset flags keep the env's default)."""
    g = p.add_argument_group("environment options (passed to gym.make; defaults: the env id's)")
    for opt in OPTIONS:
        if opt.cli is None:
            continue
        flag = "--" + opt.name.replace("_", "-")
        help_text = f"{opt.help} (default {opt.default})".replace("``", "").replace("%", "%%")
        if opt.cli is bool:
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = opt.cli if opt.kind is None else _kind(opt.kind, opt.cli)
            g.add_argument(flag, type=kind, choices=opt.choices, default=None, help=help_text)


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {o.name: getattr(args, o.name) for o in OPTIONS if o.cli is not None and getattr(args, o.name) is not None}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """What every search command takes: seed, output folder, threads, then the env options."""
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--force", action="store_true", help="overwrite whatever run --out holds")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--threads", type=_kind("positive int"), help="torch threads (default: torch's, one per core); with several "
                   "searches at once keep processes × threads ≤ cores")
    _add_env_options(p)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="agmc", description="Automated channel pruning with RL on the AGMC env.")
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="RL search for per-layer keep ratios")
    s.add_argument("env_id", type=_env_id)
    s.add_argument("--algo", choices=sorted(ALGORITHMS) + sorted(SEARCHERS), default="ddpg",
                   help="an SB3 agent (ddpg, td3, sac) or a whole-episode searcher (cmaes, tpe, random, uniform)")
    s.add_argument("--embedding", choices=sorted(EMBEDDINGS), default="gnn")
    s.add_argument("--episodes", type=_kind("positive int"), default=300)
    s.add_argument("--warmup", type=_kind("count"), default=25, help="episodes of random actions before learning "
                   "(uniform; DDPG/TD3 add one draw of the initial exploration noise, clipped: --warmup-noise)")
    s.add_argument("--warmup-noise", action=argparse.BooleanOptionalAction, default=True,
                   help="DDPG/TD3: add one draw of the initial exploration noise (σ 0.5 on [0, 1]) to the warm-up's "
                   "uniform actions and clip, so ~39 %% of them sit on a bound (default on: every committed run); "
                   "--no-warmup-noise: uniform, as AMC's code")
    # RL defaults: AMC's released code, chosen on the reward split (benchmarks/results/search_settings_*.md)
    s.add_argument("--reward-baseline", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract AMC's moving-average reward baseline (default on)")
    s.add_argument("--credit", choices=CREDITS, default="episode", help="episode (default, AMC's code): every "
                   "transition of an episode gets its final reward; terminal: the env's reward, 0 until the last step")
    s.add_argument("--exploration", choices=EXPLORATIONS, default="scaled", help="DDPG/TD3 σ schedule: scaled "
                   "(default; σ reaches its floor at 2/3 of --episodes), amc (×0.95 per episode) or adaptive (the 1/5th "
                   "success rule of evolution strategies: σ shrinks while episodes fail to beat the best so far)")
    s.add_argument("--actor-lr", type=_kind("positive number"), default=1e-4,
                   help="actor learning rate (default 1e-4, AMC's; the critic's is 1e-3)")
    s.add_argument("--updates-per-step", type=_kind("positive int"), default=1,
                   help="gradient steps per collected transition (default 1, AMC's)")
    s.add_argument("--min-updates-per-episode", type=_kind("count"), default=None, metavar="N",
                   help="at least N gradient steps per episode in all (DDPG's default 27, ResNet-56's one per "
                   "transition, chosen on ResNet-20's reward split: 3 per transition there; TD3/SAC: 0, no floor)")
    s.add_argument("--sigma-floor", type=_kind("positive number"), default=0.05,
                   help="DDPG/TD3 with --exploration scaled or adaptive: σ's floor on [0, 1] (default 0.05)")
    s.add_argument("--reward-scale", action=argparse.BooleanOptionalAction, default=False,
                   help="divide rewards (after the baseline) by the warm-up episodes' reward std (default off)")
    s.add_argument("--self-imitation", type=_kind("number ≥ 0"), default=None, metavar="WEIGHT",
                   help="DDPG/TD3: weight of the pull of the actor towards the best episodes' actions (behaviour "
                   "cloning of the search's own best; DDPG's default 10, chosen on ResNet-20's reward split; "
                   "0: off, TD3's default, not measured yet; SAC: 0)")
    s.add_argument("--imitation-elites", type=_kind("positive int"), default=None, metavar="K",
                   help="DDPG/TD3 self-imitation: pull towards the best K episodes so far (default 5 with "
                   "self-imitation, chosen on the reward split of ResNet-20 and ResNet-56; 1: the best only)")
    s.add_argument("--imitation-filter", action=argparse.BooleanOptionalAction, default=None,
                   help="DDPG/TD3 self-imitation: imitate only where the critic rates the best episodes' actions "
                   "above the actor's (the Q-filter of Nair et al.); default off: every step of the best episodes, "
                   "chosen on the reward split of ResNet-20 and ResNet-56")
    s.add_argument("--gamma", type=_kind("unit interval"), default=1.0,
                   help="RL discount (default 1, AMC's: with --credit episode every step's target adds the next "
                   "step's value to the final reward; 0: each step's critic regresses the final reward alone)")
    s.add_argument("--applied-actions", action=argparse.BooleanOptionalAction, default=False,
                   help="store each transition with the action the env applied (after channel rounding and the "
                   "budget wall) instead of the agent's (default off)")
    s.add_argument("--resume", action="store_true", help="continue the run in --out (also automatic)")
    _add_run_options(s)

    b = sub.add_parser("baseline", help="a whole-episode searcher (uniform, random, cmaes, tpe) through the same wall")
    b.add_argument("env_id", type=_env_id)
    b.add_argument("--method", choices=sorted(SEARCHERS), required=True)
    b.add_argument("--episodes", type=_kind("positive int"), default=300,
                   help="evaluations for random, cmaes and tpe (uniform makes one)")
    _add_run_options(b)

    e = sub.add_parser("evaluate", help="accuracy, MACs, params and latency of a pruned checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--split", choices=("val", "test"), default="test")
    e.add_argument("--device", default="auto")
    e.add_argument("--amp", default="off", choices=AMP_CHOICES,
                   help="scoring precision (default off: float32; auto: as a search scores, bf16 / int8 where "
                        "they pass)")
    e.add_argument("--data-dir")

    f = sub.add_parser("finetune", help="fine-tune a pruned checkpoint (SGD + cosine, CIFAR augmentation; "
                       "--distill: from the unpruned net; resumable per epoch)")
    f.add_argument("checkpoint")
    f.add_argument("--epochs", type=_kind("count"), default=20)
    f.add_argument("--lr", type=_kind("positive number"), default=0.01)
    f.add_argument("--batch-size", type=_kind("positive int"), default=128)
    f.add_argument("--weight-decay", type=_kind("number ≥ 0"), default=5e-4)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.add_argument("--data-dir")
    f.add_argument("--distill", action="store_true",
                   help="knowledge distillation from the unpruned network: loss = (1 - alpha)*CE + "
                        "alpha*T^2*KL(softmax(teacher/T) || softmax(student/T))")
    f.add_argument("--temperature", type=float, default=4.0, help="distillation temperature T (default 4)")
    f.add_argument("--alpha", type=float, default=0.9, help="distillation weight alpha (default 0.9)")
    f.add_argument("--amp", default="auto", choices=TRAIN_AMP,
                   help="bf16 autocast for training: auto = where the device has native bf16 (default)")
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--out", required=True, help="output folder; the same command again resumes an interrupted run "
                   "after its last finished epoch")
    return parser


# `agmc search` options that only the RL agents read: every SearchConfig field but the run's task, length and seed
RL_OPTIONS = tuple(f.name for f in dataclasses.fields(SearchConfig)
                   if f.name not in ("env_id", "algo", "episodes", "seed", "env_kwargs"))


def _ignored_rl_options(args: argparse.Namespace) -> str | None:
    """A whole-episode searcher given RL settings would silently run without them: say so instead."""
    if args.command != "search" or args.algo not in SEARCHERS:
        return None
    defaults = _parser().parse_args(["search", args.env_id, "--out", args.out])
    given = [f"--{name.replace('_', '-')}" for name in RL_OPTIONS if getattr(args, name) != getattr(defaults, name)]
    return (f"{', '.join(given)}: RL settings, which --algo {args.algo} (a whole-episode searcher) ignores; drop them "
            f"or choose --algo {', '.join(sorted(ALGORITHMS))}") if given else None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = (_out_problem(args.out) if getattr(args, "out", None) else None) or _ignored_rl_options(args)
    if problem:
        print(f"agmc {args.command}: error: {problem}", file=sys.stderr)
        return 2
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        if args.command in ("search", "baseline"):
            method = args.algo if args.command == "search" else args.method
            if method in SEARCHERS:
                best = run_baseline(method, args.env_id, args.out, episodes=args.episodes, seed=args.seed,
                                    env_kwargs=_env_kwargs(args), force=args.force, progress=not args.no_progress)
            else:
                config = SearchConfig(args.env_id, method, args.embedding, args.episodes, args.warmup, args.seed,
                                      args.reward_baseline, _env_kwargs(args), args.credit, args.exploration,
                                      args.actor_lr, args.updates_per_step, args.sigma_floor, args.reward_scale,
                                      args.self_imitation, args.applied_actions, args.imitation_elites,
                                      args.gamma, args.imitation_filter, args.min_updates_per_episode,
                                      args.warmup_noise)
                best = run_search(config, args.out, force=args.force, progress=not args.no_progress)
            print(json.dumps({k: best[k] for k in ("episode", "accuracy", "flops_ratio", "params_ratio")}))
        elif args.command == "evaluate":
            from agents.evaluation import evaluate_checkpoint

            extra = {"data_dir": args.data_dir} if args.data_dir else {}
            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.split, args.device, args.amp, **extra),
                             indent=2))
        elif args.command == "finetune":
            from agents.finetune import finetune

            finetune(args.checkpoint, args.out, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                     weight_decay=args.weight_decay, seed=args.seed, device=args.device, data_dir=args.data_dir,
                     distill=args.distill, temperature=args.temperature, alpha=args.alpha, amp=args.amp,
                     progress=not args.no_progress)
    except (RunError, CheckpointFileError, CheckpointError, DataError, TraceError, MissingPackage, ValueError,
            TypeError) as exc:
        print(f"agmc {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
