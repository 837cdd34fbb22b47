#!/usr/bin/env bash
# The quick start: everything a fresh clone needs, set up on first use.
#   ./run.sh search AGMC-ResNet56-v0 --out runs/r56   any `agmc` command (search, baseline, evaluate, finetune)
#   ./run.sh test [pytest args]                      the test suite
# First use creates .venv (or $AGMC_VENV) with torch==2.14.1, torchvision==0.29.1 and this package (-e .[test],
# which brings the grid and bench extras: Ray and matplotlib, for the benchmark grid's tests);
# later runs reuse it. CIFAR-10 and the checkpoints are taken from ../shared when it is there and
# AGMC_DATA_DIR / AGMC_WEIGHTS_DIR are not set (else: see "Data and weights" in README.md).
set -euo pipefail
cd "$(dirname "$0")"
venv="${AGMC_VENV:-.venv}"
if [ ! -f "$venv/.agmc-installed" ]; then
    echo "run.sh: first use — creating $venv and installing torch, torchvision and agmc (a few minutes)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
    "$venv/bin/pip" install -q -e ".[test]"
    touch "$venv/.agmc-installed"  # only after every step succeeded: an interrupted install starts over
fi
. "$venv/bin/activate"
if [ -z "${AGMC_DATA_DIR:-}" ] && [ -d ../shared/data/cifar10 ]; then export AGMC_DATA_DIR=../shared/data/cifar10; fi
if [ -z "${AGMC_WEIGHTS_DIR:-}" ] && [ -d ../shared/weights ]; then export AGMC_WEIGHTS_DIR=../shared/weights; fi
case "${1:-}" in
    test) shift; exec python -m pytest -q "$@" ;;
    "") echo "usage: ./run.sh test [pytest args] | ./run.sh search|baseline|evaluate|finetune ... (agmc --help)" >&2
        exit 2 ;;
    *) exec agmc "$@" ;;
esac
