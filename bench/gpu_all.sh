#!/usr/bin/env bash
# The three GPU benchmarks of issue 16 part 3, in one go, for one device call:
#   1. bench/score_gpu.py      OPT-125m b16 / 1.3b b8 / 6.7b b4 x 2048, bf16, vs transformers SDPA, MFU
#   2. bench/decode_bench.py   OPT-125m + 6.7b shapes, batch 1 and 32, vs the PyTorch two-model loop
#   3. bench/sweep_bench.py    8 checkpoints of the 1.3b shape, bf16, 16 x 2048 tokens each
#
#   bash bench/gpu_all.sh                  # all three
#   ONLY="score decode" bash bench/gpu_all.sh
#
# Run from anywhere; it works in the repository root. Each benchmark has its own time limit
# (seconds: T_SCORE, T_DECODE, T_SWEEP; defaults sum to 570 s, inside one 600 s device
# command) and a limit that runs out stops that benchmark only. Logs, with the time each
# took, go to $OUT (the device tool's folder) or /tmp/gpu_all. On the device image jax,
# flax, orbax, tensorstore, torch and transformers are installed; ml_collections (for the
# sweep's config) may not be: carry it as a wheel in .whl/ (see /work/.library/device/README.md,
# e.g. `pip download --no-deps ml_collections==1.1.0 -d .whl`), which this script installs.
# Nothing here is tuned to a machine: the figures go to docs/PERFORMANCE.md with the GPU's
# name, the date and each benchmark's own reference run.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${OUT:-/tmp/gpu_all}
mkdir -p "$LOGS"
: >"$LOGS/times.log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
ONLY=${ONLY:-score decode sweep}

{
  date -u +"%Y-%m-%d %H:%M UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
  "$PY" -c 'import jax, torch, transformers, flax; print("jax", jax.__version__, jax.devices(),
"| torch", torch.__version__, "| transformers", transformers.__version__, "| flax", flax.__version__)'
} 2>&1 | tee "$LOGS/env.log"

run() {  # name, time limit (s), command...
  local name=$1 limit=$2
  shift 2
  case " $ONLY " in *" $name "*) ;; *) return 0 ;; esac
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$LOGS/times.log"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$PY" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name rc=$rc in $((SECONDS - t0))s" | tee -a "$LOGS/times.log"
}

run score "${T_SCORE:-240}" bench/score_gpu.py --shapes=125m,1.3b,6.7b --attention=cudnn,default
run decode "${T_DECODE:-150}" bench/decode_bench.py --nocpu_small --batches=1,32
run sweep "${T_SWEEP:-180}" bench/sweep_bench.py --shape=1.3b --ckpts=8 --dtype=bfloat16 \
  --rows=16 --block_len=2048 --dir=/tmp/sweep_bench_1.3b
cat "$LOGS/times.log"
