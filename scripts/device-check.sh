#!/usr/bin/env bash
# Device check of the GPU pipeline (issue 6), for the GPU machine, which has
# no Rust toolchain: it runs a binary built elsewhere with --features cuda.
#
#   scripts/device-check.sh [BIN] [GOLDEN_DIR] [OUT_DIR]
#
# defaults: dist/newllm, tests/golden (tracked, so it travels with the
# working tree), $OUT or
# /tmp/device-check. Steps:
#   1. golden parity on the GPU (newllm golden --device cuda, the checks of
#      tests/golden.rs, one line per quantity)
#   2. newllm bench on the GPU (seed model, 6 x 768)
#   3. the seed preset's 4-cell sweep on the GPU (New-LLM, one seed)
# then one table: per-stage seconds per cell, tokens/s, peak GPU memory.
# Exit status: non-zero if any step failed.
#
# Preparing the run from a machine with the Rust toolchain (the binary
# travels as an ignored path):
#   cargo build --release --features cuda
#   mkdir -p dist && cp target/release/newllm dist/ && strip dist/newllm
# then on the GPU machine, from the repository root: scripts/device-check.sh
# (NEWLLM_CUDA_GRAPHS=0 runs the recurrent pass without CUDA graphs.)
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-dist/newllm}
GOLDEN=${2:-tests/golden}
OUT=${3:-${OUT:-/tmp/device-check}}
SEQ_TOKENS=${SEQ_TOKENS:-5000}
mkdir -p "$OUT"

# cuBLAS / NVRTC from pip wheels (e.g. a PyTorch install) when the CUDA
# toolkit's libraries are not on the loader path.
for d in $(python3 -c 'import site,glob;print(" ".join(p for s in site.getsitepackages() for p in glob.glob(s+"/nvidia/*/lib")))' 2>/dev/null) \
         /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$BIN" --version
echo "CUDA libraries the loader can see:"
ldconfig -p 2>/dev/null | grep -oE "lib(cuda|cublas|cublasLt|nvrtc)\.so[.0-9]*" | sort -u | tr '\n' ' '
echo "${LD_LIBRARY_PATH:+(plus LD_LIBRARY_PATH=$LD_LIBRARY_PATH)}"

# Peak GPU memory over the whole check, sampled every 200 ms.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/mem.txt" 2>/dev/null &
MEMPID=$!

status=0
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
t0=$(date +%s.%N)
echo "== 1. golden parity on cuda"
"$BIN" golden --dir "$GOLDEN" --device cuda > "$OUT/golden.txt" 2>&1 || status=1
grep -E "FAIL|^golden:|error" "$OUT/golden.txt" | head -40
t1=$(date +%s.%N)

echo "== 2. bench on cuda"
"$BIN" bench --preset seed --set device=cuda --seq-tokens "$SEQ_TOKENS" --out "$OUT/bench.json" > "$OUT/bench.txt" 2>&1 || status=1
cat "$OUT/bench.txt"
t2=$(date +%s.%N)

echo "== 3. seed sweep on cuda"
rm -rf "$OUT/sweep"
# New-LLM alone, one seed: the baselines run on the CPU (the transformer at
# the seed's size would take hours there) and seeds multiply the time.
"$BIN" sweep --preset seed --set device=cuda --set 'baselines=[]' --set replicates=1 --out "$OUT/sweep" > "$OUT/sweep.txt" 2>&1 || status=1
grep -vE "^  phase(1|2) " "$OUT/sweep.txt" | tail -30
t3=$(date +%s.%N)

kill "$MEMPID" 2>/dev/null
wait "$MEMPID" 2>/dev/null
peak=$(sort -n "$OUT/mem.txt" 2>/dev/null | tail -1)

echo
echo "== summary"
echo "| step | seconds | result |"
echo "|---|---|---|"
echo "| golden | $(secs $t0 $t1) | $(grep -E '^golden:' "$OUT/golden.txt" || echo 'did not finish') |"
echo "| bench | $(secs $t1 $t2) | sequential pass $(grep -oE 'sequential pass: [0-9]+ tokens/s' "$OUT/bench.txt" || echo 'n/a') |"
echo "| seed sweep | $(secs $t2 $t3) | $(grep -cE '^\| [0-9]+ \|' "$OUT/sweep.txt") cells |"
echo
echo "| cell | data s | phase1 s | train cache s | val cache s | phase2 s | train-cache tokens/s | peak device memory |"
echo "|---|---|---|---|---|---|---|---|"
awk '/^cell [0-9]+ samples:/ {cell=$2}
     /: stages data / {
        for (i = 1; i <= NF; i++) {
            if ($i == "data") d=$(i+1); if ($i == "phase1") p1=$(i+1);
            if ($i == "train_cache") tc=$(i+1); if ($i == "val_cache") vc=$(i+1);
            if ($i == "phase2") p2=$(i+1); if ($i == "train" && $(i+1) == "tokens/s") tps=$(i-1);
            if ($i == "memory") mem=$(i+1) " " $(i+2);
        }
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", cell, d, p1, tc, vc, p2, tps, mem }' "$OUT/sweep.txt"
echo
echo "peak GPU memory (nvidia-smi, whole check): ${peak:-n/a} MiB"
grep -E "^\| (Samples|[0-9]+) \|" "$OUT/sweep.txt"
echo "outputs: $OUT (golden.txt, bench.txt, bench.json, sweep.txt, sweep/)"
exit $status
