"""Every option of a pruning task and its env, declared once.

:class:`agmc_env.task.PruningTask` resolves its keyword options against this table, the ``AGMCEnv``
docstring lists it (see :func:`docs`), and the ``agmc`` command line derives its environment flags from
the entries with a ``cli`` type. A new option is one line here plus the code that reads it. Its ``kind``
(``KINDS``: "fraction", "positive int", "count", ...) is the rule :func:`resolve` checks its value against;
the rules between options and the data (:func:`data_fit`) are here too, the model's output is checked by the task.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    cli: type | None = None  # the flag's type in ``agmc search/baseline``; None: Python only
    choices: tuple[str, ...] | None = None
    scope: str = "task"  # "task": fixed for the task (shared by its envs); "env": per env (observation)
    kind: str | None = None  # the value's type and range (``KINDS``); None when the default is, None is allowed too


def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _integer(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class Kind:
    """A value rule: ``what`` the value must be (said in messages), its type and its range."""

    what: str
    type_ok: Callable[[Any], bool]
    range_ok: Callable[[Any], bool] = lambda v: True
    parse: Callable[[str], Any] | None = None  # how a str of the right value reads (for the hint)

    def fits(self, value: Any) -> bool:
        return self.type_ok(value) and bool(self.range_ok(value))


KINDS: dict[str, Kind] = {
    "fraction": Kind("a number in (0, 1]", _real, lambda v: 0.0 < v <= 1.0, float),
    "positive int": Kind("an integer ≥ 1", _integer, lambda v: v >= 1, int),
    "count": Kind("an integer ≥ 0", _integer, lambda v: v >= 0, int),
    "int": Kind("an integer", _integer, parse=int),
    "positive number": Kind("a number > 0", _real, lambda v: math.isfinite(v) and v > 0, float),
    "number ≥ 0": Kind("a number ≥ 0", _real, lambda v: math.isfinite(v) and v >= 0, float),
    "unit interval": Kind("a number in [0, 1]", _real, lambda v: 0.0 <= v <= 1.0, float),
    "bool": Kind("True or False", lambda v: isinstance(v, bool)),
    "path": Kind("a path (str or os.PathLike)", lambda v: isinstance(v, (str, os.PathLike))),
}


OPTIONS: tuple[Option, ...] = (
    Option("model", "resnet56", "a preset name (``agmc_env.zoo.MODELS``), any torchvision classification model name "
           "(``\"resnet18\"``; ImageNet weights when the dataset is ImageNet), or any traceable ``nn.Module``"),
    Option("dataset", None, "``\"cifar10\"``, ``\"imagenet\"`` (None: the preset's), an ``agmc_env.data.ImageDataset`` "
           "or an ``agmc_env.imagefolder.ImageFolderDataset`` (ImageNet: ``train/`` and ``val/`` in ImageFolder layout; "
           "only the reward/calibration/test images are decoded, once)"),
    Option("weights", None, "checkpoint path; None = the preset's published checkpoint (``$AGMC_WEIGHTS_DIR``, else "
           "downloaded with a sha256 check into ``cache_dir`` / ``$AGMC_CACHE_DIR``) or a module's own weights; "
           "False = random init", cli=str),
    Option("data_dir", None, "dataset folder (None: ``$AGMC_DATA_DIR``)", cli=str, kind="path"),
    Option("download", False, "fetch the dataset if it is missing", kind="bool"),
    Option("cache_dir", None, "where downloaded checkpoints go (None: ``$AGMC_CACHE_DIR`` or ``~/.cache/agmc``)",
           kind="path"),
    Option("flops_target", 0.5, "MACs to keep, as a fraction of the original (channel mode)", cli=float,
           kind="fraction"),
    Option("budget", "window", "``\"window\"``: every episode ends with MACs (fine mode: non-zero parameters) in "
           "[target − 1 % of the original, target] — the wall raises the last decisions when earlier ones under-spend; "
           "``\"ceiling\"``: AMC's upper-only wall", cli=str, choices=("window", "ceiling")),
    Option("lbound", 0.2, "smallest keep ratio an action maps to", cli=float, kind="fraction"),
    Option("rbound", 1.0, "largest keep ratio an action maps to", cli=float, kind="fraction"),
    Option("prune_residual", False, "also prune residual-stream groups (indices aligned across adds and option-A "
           "pad shortcuts)", cli=bool, kind="bool"),
    Option("prune_linear", False, "also prune hidden linear layers", cli=bool, kind="bool"),
    Option("granularity", "channel", "``\"channel\"``: coupled channel groups, physically removed, under a MACs budget; "
           "``\"fine\"``: every conv/linear weight is a decision (fraction of its weights kept non-zero, smallest "
           "magnitudes zeroed) under a budget on non-zero parameters (``params_target``)", cli=str,
           choices=("channel", "fine")),
    Option("params_target", None, "fine mode: fraction of parameters left non-zero (biases and BN count in full)",
           cli=float, kind="fraction"),
    Option("importance", "l1", "channel ranking: filter norm, summed over a group", cli=str, choices=("l1", "l2")),
    Option("channel_round", 1, "kept channel counts are multiples of it (or the full width)", cli=int,
           kind="positive int"),
    Option("val_size", 1000, "reward-split images held out from the training set (seed ``split_seed``)", cli=int,
           kind="positive int"),
    Option("calib_size", 128, "other training images for BN recalibration (128 rank random policies as consistently as "
           "a different set of 500 does: benchmarks/results/calibration_size.md)", cli=int, kind="count"),
    Option("bn_recalibration", True, "re-estimate BatchNorm statistics of each pruned net on the calibration images",
           cli=bool, kind="bool"),
    Option("repair", "lstsq", "weight repair after pruning (channel mode): ``\"lstsq\"`` refits every layer that reads "
           "pruned channels to reproduce its unpruned output (ridge least squares on its kept inputs, from statistics "
           "of the unpruned net computed once per task), ``\"none\"`` keeps the sliced weights; fine mode: no-op "
           "(an explicit ``\"lstsq\"`` is refused)", cli=str, choices=("none", "lstsq")),
    Option("repair_size", 500, "training images (seed ``split_seed``, disjoint from the reward and calibration images) "
           "for the repair statistics (all that are left, if fewer)", cli=int, kind="positive int"),
    Option("split", "val", "score the reward split (``\"val\"``) or, when asked, the test set (``\"test\"``; for "
           "reports, never for searching)", choices=("val", "test")),
    Option("split_seed", 0, "seed of the reward / calibration split", cli=int, kind="int"),
    Option("test_size", None, "with ``split=\"test\"``: score only that many test images (CIFAR: the first; "
           "ImageFolder: a seeded subset; None: all)", kind="positive int"),
    Option("reward", "acc", "``\"acc\"`` (accuracy on the scored split), AMC's ``\"flops\"`` (−error·ln MACs) or "
           "``\"params\"`` (−error·ln params), or any callable ``f(info) -> float`` of the episode's final ``info``"),
    Option("reward_metric", "top1", "what ``info[\"accuracy\"]`` (and the ``acc`` reward) is", cli=str,
           choices=("top1", "top5")),
    Option("device", "auto", "``\"auto\"`` (CUDA if available), ``\"cpu\"``, ``\"cuda\"``, ``\"cuda:1\"`` …", cli=str),
    Option("amp", "auto", "scoring precision: ``\"auto\"`` (bf16 on CUDA; on CPU bf16 where native, else oneDNN int8, "
           "whichever first costs ≤ 0.2 pt on the unpruned net, else fp32), ``\"bf16\"``, ``\"int8\"`` (CPU), "
           "``\"off\"`` (fp32)", cli=str, choices=("auto", "bf16", "int8", "off")),
    Option("batch_size", None, "evaluation batch (None: per device)", cli=int, kind="positive int"),
    Option("max_nodes", None, "observation padding: node slots (None: this graph's own size)", scope="env",
           kind="positive int"),
    Option("max_edges", None, "observation padding: edge slots (None: this graph's own size)", scope="env",
           kind="positive int"),
)

BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}
TASK_OPTIONS = tuple(o.name for o in OPTIONS if o.scope == "task")
ENV_OPTIONS = tuple(o.name for o in OPTIONS if o.scope == "env")


def resolve(options: dict[str, Any], scope: str = "task") -> dict[str, Any]:
    """Defaults filled in and every value checked: an unknown name, a value outside its choices or of the wrong
    type or range raises with the option, the value and the fix."""
    names = TASK_OPTIONS if scope == "task" else ENV_OPTIONS
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}; valid options: {list(TASK_OPTIONS + ENV_OPTIONS)}")
    resolved = {name: options.get(name, BY_NAME[name].default) for name in names}
    for name, value in resolved.items():
        check(name, value)
    if scope == "task" and resolved["bn_recalibration"] and resolved["calib_size"] == 0:
        raise ValueError("calib_size=0 leaves no images for BN recalibration; set bn_recalibration=False, or give "
                         "calib_size ≥ 1")
    return resolved


def check(name: str, value: Any) -> None:
    """Raise if ``value`` is not a valid ``name``: outside its choices (ValueError), of the wrong type (TypeError)
    or out of its range (ValueError)."""
    opt = BY_NAME[name]
    if opt.choices is not None and value not in opt.choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {opt.choices}")
    if opt.kind is None or (value is None and opt.default is None):
        return
    kind = KINDS[opt.kind]
    what = kind.what + (" or None" if opt.default is None else "")
    if not kind.type_ok(value):
        raise TypeError(f"{name}={value!r} ({type(value).__name__}) must be {what}{_hint(name, value, kind)}")
    if not kind.range_ok(value):
        raise ValueError(f"{name}={value!r} is out of range: it must be {what}")


def _hint(name: str, value: Any, kind: Kind) -> str:
    """``" (name=0.5, not the string '0.5')"`` when a string holds a valid value."""
    if not isinstance(value, str) or kind.parse is None:
        return ""
    try:
        parsed = kind.parse(value)
    except ValueError:
        return ""
    return f" ({name}={parsed!r}, not the string {value!r})" if kind.fits(parsed) else ""


def data_fit(options: dict[str, Any], num_train: int, num_test: int) -> None:
    """The sizes that depend on the dataset: the held-out splits fit the training images, ``test_size`` the test set."""
    val, calib = options["val_size"], options["calib_size"]
    if val + calib > num_train:
        raise ValueError(f"val_size={val} + calib_size={calib} = {val + calib} images, but the training set has "
                         f"{num_train}; lower val_size or calib_size")
    test_size = options["test_size"]
    if options["split"] == "test" and test_size is not None and test_size > num_test:
        raise ValueError(f"test_size={test_size} but the test set has {num_test} images; give test_size ≤ "
                         f"{num_test}, or None for all of them")


def docs() -> str:
    """The options as a Markdown list, for the env docstring."""
    return "\n".join(f"    - ``{o.name}`` ({o.default!r}{_kind_doc(o)}): {o.help}." for o in OPTIONS)


def _kind_doc(opt: Option) -> str:
    return "" if opt.kind is None else f"; {KINDS[opt.kind].what}"
