#!/usr/bin/env bash
# One GPU session, as run on a lent machine that gets the repository only (no ../shared, no internet):
# CUDA checks (env step on CUDA, AMP, step timings), then the ResNet-56 grid, many runs sharing the GPU, until
# the deadline. Build the payload here first:
#   AGMC_DATA_DIR=../shared/data/cifar10 AGMC_WEIGHTS_DIR=../shared/weights python -m benchmarks.device_payload --wheels WHEELS
# then, on the GPU machine, from the repository root with device_payload/ beside it:
#   OUT=/some/folder BUDGET_S=540 GPUS_PER_RUN=0.07 bash benchmarks/gpu_session.sh
# The grid runs as Ray Tune trials (1 CPU and GPUS_PER_RUN of the GPU each: 0.07 → 14 runs at once) when the
# machine has Ray. Ray cannot travel in the payload (its wheel alone is ~76 MiB, and Tune needs pyarrow and pandas,
# against 64 MiB in all), so where Ray is missing the script starts one in-process grid per method instead
# (`--sequential --methods M`: disjoint run folders, 12 at once). Everything it produces lands in $OUT: logs,
# step_speed_cuda.md, and the grid's run folders as runs.tgz.part-* (unpack into benchmarks/runs/ and resume
# or render with python -m benchmarks.table resnet56_flops50).
set -u
T0=$(date +%s)
BUDGET_S=${BUDGET_S:-540}
GPUS_PER_RUN=${GPUS_PER_RUN:-0.07}
OUT=${OUT:-/tmp/agmc_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 AGMC_DATA_DIR=/tmp/agmc_data AGMC_WEIGHTS_DIR=$PWD/device_payload/weights
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site device_payload/whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || exit 1
python3 - <<'PY' || exit 1
import lzma, pathlib, shutil
src, dst = pathlib.Path("device_payload/cifar10/cifar-10-batches-py"), pathlib.Path("/tmp/agmc_data/cifar-10-batches-py")
dst.mkdir(parents=True, exist_ok=True)
for f in src.glob("*.xz"):
    with lzma.open(f) as i, open(dst / f.stem, "wb") as o:
        shutil.copyfileobj(i, o)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torch_geometric, gymnasium, stable_baselines3 as sb3; print('torch', torch.__version__, 'pyg', torch_geometric.__version__, 'gymnasium', gymnasium.__version__, 'sb3', sb3.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/gpu.txt"
echo "setup done at $(( $(date +%s) - T0 )) s"

# 0. Pre-flight on CUDA: 3-episode searches (learning from episode 2) and the uniform baseline,
#    so a device bug stops the session in seconds instead of failing every grid cell.
W=$AGMC_WEIGHTS_DIR/resnet56-cifar10jpeg.pt
for combo in ddpg:gnn-lstm sac:gnn; do
  python3 -m agents.cli search AGMC-ResNet56-v0 --algo ${combo%%:*} --embedding ${combo##*:} --episodes 3 --warmup 1 \
    --weights "$W" --device cuda --no-progress --out /tmp/preflight-${combo%%:*} > "$OUT/preflight.log" 2>&1 \
    || { tail -30 "$OUT/preflight.log"; exit 1; }
done
python3 -m agents.cli baseline AGMC-ResNet56-v0 --method uniform --weights "$W" --device cuda --out /tmp/preflight-u \
  >> "$OUT/preflight.log" 2>&1 || { tail -30 "$OUT/preflight.log"; exit 1; }
echo "preflight done at $(( $(date +%s) - T0 )) s"; tail -3 "$OUT/preflight.log"

# 1. CUDA env step + AMP + timings against the reference-style step, same run.
timeout 150 python3 -m benchmarks.step_speed --device cuda --reps 3 --out "$OUT/step_speed_cuda.md" 2>&1 | tail -25
echo "step_speed done at $(( $(date +%s) - T0 )) s"

# 2. The ResNet-56 grid: resumable cells, killed (whole process group) at the deadline.
left=$(( BUDGET_S - ($(date +%s) - T0) - 25 ))
grid=(python3 -m benchmarks.table resnet56_flops50 --skip-finetune --results /tmp/agmc_results)
if python3 -c "import ray.tune" 2>/dev/null; then
  timeout -k 5 "$left" "${grid[@]}" --cpus-per-run 1 --gpus-per-run "$GPUS_PER_RUN" > "$OUT/grid.log" 2>&1
  echo "grid stopped (rc $?) at $(( $(date +%s) - T0 )) s"
  python3 -m ray.scripts.scripts stop --force > /dev/null 2>&1  # trials the deadline cut short
else
  echo "no Ray here: one in-process grid per method"
  mapfile -t methods < <(python3 -c "from benchmarks.table import METHODS; print('\n'.join(m.name for m in METHODS))")
  for m in "${methods[@]}"; do  # in this shell (not a pipe's subshell), so that `wait` waits for them
    OMP_NUM_THREADS=1 timeout -k 5 "$left" "${grid[@]}" --sequential --cpus-per-run 1 --methods "$m" \
      >> "$OUT/grid.log" 2>&1 &
  done
  wait
  echo "grids stopped at $(( $(date +%s) - T0 )) s"
fi
grep -E "→|FAILED|Error" "$OUT/grid.log" | head -40

# 3. Bring the runs back: everything but agent.zip; checkpoint.pt only where a run has not finished.
python3 - "$OUT" <<'PY'
import json, pathlib, sys, tarfile
out = pathlib.Path(sys.argv[1])
root = pathlib.Path("benchmarks/runs")
with tarfile.open(out / "runs.tgz", "w:gz") as tar:
    for f in sorted(root.rglob("*")):
        if not f.is_file() or f.name == "agent.zip":
            continue
        if f.name == "checkpoint.pt":
            run = json.loads((f.parent / "run.json").read_text()) if (f.parent / "run.json").exists() else {}
            if run.get("finished"):
                continue
        tar.add(f, arcname=str(f.relative_to(root)))
print("runs.tgz", (out / "runs.tgz").stat().st_size / 2**20, "MiB")
PY
cd "$OUT" && split -b 15M runs.tgz runs.tgz.part- && rm runs.tgz && ls -la "$OUT"
