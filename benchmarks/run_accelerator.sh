#!/usr/bin/env bash
# The accelerator benchmarks in one pass (what benchmarks/RESULTS.md records
# for a GPU): throughput per model x strategy in float32 and bfloat16, and the
# roofline of every model at batch 256 / 1024 / 4096 in both dtypes.
#   bash benchmarks/run_accelerator.sh OUT_DIR
# Each benchmark has its own time limit, so one failure leaves the others'
# results (JSON + Markdown in OUT_DIR).  Budget: XLA:GPU compiles each train
# step in 8-14 s on an H200 (jax 0.11.2), so the throughput rows alone
# (4 models x 2 dtypes x 3 strategies) take about 5 minutes and the whole
# script about 12; split it over two device calls when one is capped at 10.
set -u
out=${1:?usage: run_accelerator.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
platform=$($py -c 'import jax; print(jax.devices()[0].platform)')
run() {  # run NAME SECONDS ARGS...
  local name=$1 limit=$2; shift 2
  echo "=== $name $(date +%T)"
  timeout "$limit" "$py" "$@"
  echo "=== $name rc=$? $(date +%T)"
}
run throughput 420 -m benchmarks.throughput --dtypes float32,bfloat16 \
  --json "$out/throughput_$platform.json"
for dtype in float32 bfloat16; do
  suffix=$([ $dtype = float32 ] && echo "" || echo "_$dtype")
  run roofline_$dtype 240 -m benchmarks.roofline --batch-sizes 256,1024,4096 \
    --matmul-sizes 4096,8192 --dtype $dtype \
    --json "$out/roofline_$platform$suffix.json"
done
