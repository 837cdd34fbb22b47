"""Every option of a pruning task and its env, declared once.

:class:`agmc_env.task.PruningTask` resolves its keyword options against this table, the ``AGMCEnv``
docstring lists it (see :func:`docs`), and the ``agmc`` command line derives its environment flags from
the entries with a ``cli`` type. A new option is one line here plus the code that reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    cli: type | None = None  # the flag's type in ``agmc search/baseline``; None: Python only
    choices: tuple[str, ...] | None = None
    scope: str = "task"  # "task": fixed for the task (shared by its envs); "env": per env (observation)


OPTIONS: tuple[Option, ...] = (
    Option("model", "resnet56", "a preset name (``agmc_env.zoo.MODELS``), any torchvision classification model name "
           "(``\"resnet18\"``; ImageNet weights when the dataset is ImageNet), or any traceable ``nn.Module``"),
    Option("dataset", None, "``\"cifar10\"``, ``\"imagenet\"`` (None: the preset's), an ``agmc_env.data.ImageDataset`` "
           "or an ``agmc_env.imagefolder.ImageFolderDataset`` (ImageNet: ``train/`` and ``val/`` in ImageFolder layout; "
           "only the reward/calibration/test images are decoded, once)"),
    Option("weights", None, "checkpoint path; None = the preset's published checkpoint (``$AGMC_WEIGHTS_DIR``, else "
           "downloaded with a sha256 check into ``cache_dir`` / ``$AGMC_CACHE_DIR``) or a module's own weights; "
           "False = random init", cli=str),
    Option("data_dir", None, "dataset folder (None: ``$AGMC_DATA_DIR``)", cli=str),
    Option("download", False, "fetch the dataset if it is missing"),
    Option("cache_dir", None, "where downloaded checkpoints go (None: ``$AGMC_CACHE_DIR`` or ``~/.cache/agmc``)"),
    Option("flops_target", 0.5, "MACs to keep, as a fraction of the original (channel mode)", cli=float),
    Option("budget", "window", "``\"window\"``: every episode ends with MACs (fine mode: non-zero parameters) in "
           "[target − 1 % of the original, target] — the wall raises the last decisions when earlier ones under-spend; "
           "``\"ceiling\"``: AMC's upper-only wall", cli=str, choices=("window", "ceiling")),
    Option("lbound", 0.2, "smallest keep ratio an action maps to", cli=float),
    Option("rbound", 1.0, "largest keep ratio an action maps to", cli=float),
    Option("prune_residual", False, "also prune residual-stream groups (indices aligned across adds and option-A "
           "pad shortcuts)", cli=bool),
    Option("prune_linear", False, "also prune hidden linear layers", cli=bool),
    Option("granularity", "channel", "``\"channel\"``: coupled channel groups, physically removed, under a MACs budget; "
           "``\"fine\"``: every conv/linear weight is a decision (fraction of its weights kept non-zero, smallest "
           "magnitudes zeroed) under a budget on non-zero parameters (``params_target``)", cli=str,
           choices=("channel", "fine")),
    Option("params_target", None, "fine mode: fraction of parameters left non-zero (biases and BN count in full)",
           cli=float),
    Option("importance", "l1", "channel ranking: filter norm, summed over a group", cli=str, choices=("l1", "l2")),
    Option("channel_round", 1, "kept channel counts are multiples of it (or the full width)", cli=int),
    Option("val_size", 1000, "reward-split images held out from the training set (seed ``split_seed``)", cli=int),
    Option("calib_size", 128, "other training images for BN recalibration (128 rank random policies as consistently as "
           "a different set of 500 does: benchmarks/results/calibration_size.md)", cli=int),
    Option("bn_recalibration", True, "re-estimate BatchNorm statistics of each pruned net on the calibration images",
           cli=bool),
    Option("repair", "lstsq", "weight repair after pruning (channel mode): ``\"lstsq\"`` refits every layer that reads "
           "pruned channels to reproduce its unpruned output (ridge least squares on its kept inputs, from statistics "
           "of the unpruned net computed once per task), ``\"none\"`` keeps the sliced weights; fine mode: no-op "
           "(an explicit ``\"lstsq\"`` is refused)", cli=str, choices=("none", "lstsq")),
    Option("repair_size", 500, "training images (seed ``split_seed``, disjoint from the reward and calibration images) "
           "for the repair statistics (all that are left, if fewer)", cli=int),
    Option("split", "val", "score the reward split (``\"val\"``) or, when asked, the test set (``\"test\"``; for "
           "reports, never for searching)", choices=("val", "test")),
    Option("split_seed", 0, "seed of the reward / calibration split", cli=int),
    Option("test_size", None, "with ``split=\"test\"``: score only that many test images (CIFAR: the first; "
           "ImageFolder: a seeded subset; None: all)"),
    Option("reward", "acc", "``\"acc\"`` (accuracy on the scored split), AMC's ``\"flops\"`` (−error·ln MACs) or "
           "``\"params\"`` (−error·ln params), or any callable ``f(info) -> float`` of the episode's final ``info``"),
    Option("reward_metric", "top1", "what ``info[\"accuracy\"]`` (and the ``acc`` reward) is", cli=str,
           choices=("top1", "top5")),
    Option("device", "auto", "``\"auto\"`` (CUDA if available), ``\"cpu\"``, ``\"cuda\"``, ``\"cuda:1\"`` …", cli=str),
    Option("amp", "auto", "``\"auto\"`` (bf16 on CUDA; on CPU only with native bf16 and ≤ 0.2 pt cost on the unpruned "
           "net), ``\"bf16\"``, ``\"off\"``", cli=str, choices=("auto", "bf16", "off")),
    Option("batch_size", None, "evaluation batch (None: per device)", cli=int),
    Option("max_nodes", None, "observation padding: node slots (None: this graph's own size)", scope="env"),
    Option("max_edges", None, "observation padding: edge slots (None: this graph's own size)", scope="env"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
TASK_OPTIONS = tuple(o.name for o in OPTIONS if o.scope == "task")
ENV_OPTIONS = tuple(o.name for o in OPTIONS if o.scope == "env")


def resolve(options: dict[str, Any], scope: str = "task") -> dict[str, Any]:
    """Defaults filled in; an unknown name or a value outside its choices raises with the valid ones."""
    names = TASK_OPTIONS if scope == "task" else ENV_OPTIONS
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid options: {list(TASK_OPTIONS + ENV_OPTIONS)}")
    resolved = {name: options.get(name, BY_NAME[name].default) for name in names}
    for name, value in resolved.items():
        choices = BY_NAME[name].choices
        if choices is not None and value not in choices:
            raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
    return resolved


def docs() -> str:
    """The options as a Markdown list, for the env docstring."""
    return "\n".join(f"    - ``{o.name}`` ({o.default!r}): {o.help}." for o in OPTIONS)
