#!/usr/bin/env bash
# Every GPU measurement of the project, for a machine lent for a few minutes: the compiled-kernel tests,
# the attention table with attention_impl="auto", the training MFU of a ~1B-backbone HAT, the Block
# Transformer table and the generation benchmark. Each part writes its log / JSON under $OUT (default
# ./gpu_out) and a failing or slow part (each has a time limit) does not stop the others.
#
#   OUT=/tmp/gpu_out bash tools/gpu_check.sh                         # all parts, about 11 minutes
#   PARTS="tests attention mfu" bash tools/gpu_check.sh              # about 5 minutes
#   PARTS="block generate" BLOCK_WORKDIR=... bash tools/gpu_check.sh # about 5 minutes
#
# Measured on an H200 (2026-11-29): the compiled-kernel tests take ~10 s each (compiles), the attention
# part 71 s, the MFU part ~70 s to its first step (build, compile) then 1.6 s per step, the Block Transformer part over 150 s even with
# CPU-trained params (it did not finish its last row in 150 s), so the limits below are the ones that fit.
#
# Needs the processed English corpus (data_cache/processed/english, `python -m hat_jax.data prepare
# english`) for the Block Transformer part; the MFU part trains on the built-in toy corpus (the step's
# cost depends only on the row shapes, which are full).
set -uo pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PLATFORMS=cuda,cpu
PY="${PYTHON:-python3}"
PARTS="${PARTS:-tests attention mfu block generate}"
start=$(date +%s)
want() { [[ " $PARTS " == *" $1 "* ]]; }
part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s, at $(( $(date +%s) - start ))s)"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name: exit $? after $(( $(date +%s) - start ))s"
  tail -n 40 "$OUT/$name.log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.txt" 2>&1
"$PY" -c "import jax; print(jax.__version__, jax.devices())" >> "$OUT/device.txt" 2>&1
cat "$OUT/device.txt"

want tests && part gpu_tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/kernels/test_gpu_compiled.py \
  -k "auto or tiles1"

want attention && part attention 100 "$PY" tools/bench_attention.py --backward --reps 5 --lengths 16384 \
  --masks causal,window:2048,chunk:256 --kernel_configs "64,64,4,2;128,128,8,2" --json "$OUT/attention.json"

# steps=1000 never finishes inside the limit: the MFU is read from the log lines (every 4 steps), and no
# 20 GB final checkpoint is written. If "auto" fails to compile, the same run with our kernel instead.
mfu() {
  rm -rf /tmp/mfu_run
  part "mfu_$1" "$2" "$PY" -m hat_jax.main --config=configs/hat_paper.py:1b,corpus=toy --workdir=/tmp/mfu_run \
    --mode=train --config.data.toy_docs=1200 --config.train.batch_size=16 --config.train.steps=1000 \
    --config.train.log_every=4 --config.train.eval_every=100000 --config.train.checkpoint_every=100000 \
    --config.model.attention_impl="$1"
  cp /tmp/mfu_run/metrics.jsonl "$OUT/mfu_$1_metrics.jsonl" 2>/dev/null
}
if want mfu; then
  mfu auto 110
  grep -q '"mfu"' "$OUT/mfu_auto_metrics.jsonl" 2>/dev/null || mfu pallas 110
fi

# Trained parameters come from BLOCK_WORKDIR when it holds them (trained on a CPU: same code, same
# budget), so the GPU time goes to the measurement.
want block && part block_throughput 220 "$PY" -m experiments.block_throughput.benchmark --workdir="${BLOCK_WORKDIR:-/tmp/block_bench}" \
  --cache_dir=data_cache --memory_mib=8192 --max_batch=4096 --repeats=2
want block && cp "${BLOCK_WORKDIR:-/tmp/block_bench}/results.json" "$OUT/block_throughput.json" 2>/dev/null

want generate && part generate 100 "$PY" tools/bench_generate.py --quick
echo "=== all done after $(( $(date +%s) - start ))s"
