#!/usr/bin/env bash
# Device check of the GPU pipeline, for a GPU machine without a Rust
# toolchain: runs a binary built elsewhere with --features cuda.
#
#   scripts/device-check.sh [--dry-run] [BIN]
#
# BIN defaults to dist/newllm. Prepare it where Rust is installed:
#   cargo build --release --features cuda
#   mkdir -p dist && cp target/release/newllm dist/ && strip dist/newllm
#
# Steps, each under its own `timeout` (seconds, from the environment) so
# one slow step cannot eat the others' time:
#   0. libraries: pip's nvidia/*/lib folders and /usr/local/cuda*/lib64 are
#      put on LD_LIBRARY_PATH, and the CUDA libraries found are listed
#   1. newllm cuda-check: driver, cuBLAS, NVRTC, kernels (CUBIN), GPU open  T_CHECK=60
#   2. newllm golden --device cuda (TF32 off), one line per quantity       T_GOLDEN=90
#   3. newllm bench on the GPU (seed model)                                 T_BENCH=150
#   4. the seed preset's 4-cell sweep (New-LLM, one seed)                   T_SWEEP=300
#
# Everything is written under WORK (default /tmp/device-check); only these
# come back in OUT (default $OUT, else WORK/out), because the device tool
# returns a few files, two folders deep:
#   summary.md    machine, libraries, each step's seconds and status, the
#                 bench table, per-cell stages and peak GPU memory
#   log.txt       the last lines of every step's output
#   golden.txt  bench.json  results.json  report.md
#
# --dry-run: everything up to the first GPU call (step 0, then cuda-check
# --no-device, which loads the libraries and compiles the kernels for this
# GPU's architecture, or sm_90 where nvidia-smi cannot tell), the commands
# the other steps would run, and the files that would come back.
# (NEWLLM_CUDA_GRAPHS=0 runs the recurrent pass without CUDA graphs.)
# Exit status: non-zero if any step failed or timed out.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
BIN=${1:-dist/newllm}
WORK=${WORK:-/tmp/device-check}
OUT=${OUT:-$WORK/out}
T_CHECK=${T_CHECK:-60}
T_GOLDEN=${T_GOLDEN:-90}
T_BENCH=${T_BENCH:-150}
T_SWEEP=${T_SWEEP:-300}
SEQ_TOKENS=${SEQ_TOKENS:-5000}
rm -rf "$WORK/sweep"
mkdir -p "$WORK" "$OUT"
SUMMARY="$OUT/summary.md"
LOG="$OUT/log.txt"
: > "$LOG"
say() { echo "$*" | tee -a "$SUMMARY"; }
: > "$SUMMARY"

if [ ! -x "$BIN" ]; then
    echo "error: $BIN is not an executable; build it with --features cuda (see the top of $0)" >&2
    exit 2
fi

# 0. Libraries: the loader path first, so every step sees the same ones.
for d in $(python3 -c 'import site,glob;print(" ".join(p for s in site.getsitepackages()+[site.getusersitepackages()] for p in glob.glob(s+"/nvidia/*/lib")))' 2>/dev/null) \
         /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib; do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"

say "# Device check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
[ $DRY = 1 ] && say "(dry run: stops before the first GPU call)"
say
say '```'
say "binary: $("$BIN" --version 2>&1) ($BIN; needs glibc $(objdump -T "$BIN" 2>/dev/null | grep -oE 'GLIBC_[0-9.]+' | sort -uV | tail -1 | sed 's/GLIBC_//'), this machine has $(ldd --version 2>/dev/null | head -1 | grep -oE '[0-9]+\.[0-9]+$'))"
say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>/dev/null || echo 'none (no nvidia-smi)')"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
say "NEWLLM_CUDA_LIB_PATH=${NEWLLM_CUDA_LIB_PATH:-}"
say "CUDA libraries found:"
{
    ldconfig -p 2>/dev/null | grep -oE '=> .*lib(cuda|cublas|cublasLt|nvrtc)\.so\.[0-9]+$' | sed 's/=> //'
    IFS=: read -ra dirs <<< "$LD_LIBRARY_PATH:${NEWLLM_CUDA_LIB_PATH:-}"
    for d in "${dirs[@]}"; do ls "$d"/lib{cuda,cublas,cublasLt,nvrtc}.so.[0-9]* 2>/dev/null; done
} | sort -u | sed 's/^/  /' | tee -a "$SUMMARY"
say '```'
say

arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' .')
arch=${arch:-90}
status=0
rows=()
# step NAME LIMIT CMD...: runs CMD under `timeout`, output in WORK/NAME.txt.
step() {
    local name=$1 limit=$2; shift 2
    local t0 t1 rc res
    echo "== $name (timeout ${limit}s): $*"
    t0=$(date +%s.%N)
    timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.txt" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    case $rc in
        0) res=ok ;;
        124|137) res="timed out after ${limit}s"; status=1 ;;
        *) res="failed (exit $rc)"; status=1 ;;
    esac
    rows+=("| $name | $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') | $res |")
    { echo "== $name: $res"; tail -n 60 "$WORK/$name.txt"; echo; } >> "$LOG"
    tail -n 15 "$WORK/$name.txt"
}

if [ $DRY = 1 ]; then
    step cuda-check "$T_CHECK" "$BIN" cuda-check --no-device --arch "$arch"
    say "## cuda-check --no-device --arch $arch"
    { echo '```'; cat "$WORK/cuda-check.txt"; echo '```'; echo; } >> "$SUMMARY"
    say "## Steps a real run would take"
    say "| step | timeout s | command |"
    say "|---|---|---|"
    say "| cuda-check | $T_CHECK | $BIN cuda-check |"
    say "| golden | $T_GOLDEN | $BIN golden --dir tests/golden --device cuda |"
    say "| bench | $T_BENCH | $BIN bench --preset seed --set device=cuda --seq-tokens $SEQ_TOKENS --out $WORK/bench.json |"
    say "| sweep | $T_SWEEP | $BIN sweep --preset seed --set device=cuda --set 'baselines=[]' --set replicates=1 --out $WORK/sweep |"
    say
    say "Files that would come back in $OUT: summary.md log.txt golden.txt bench.json results.json report.md"
    say "(this dry run wrote: $(cd "$OUT" && ls | tr '\n' ' '))"
    exit $status
fi

# Peak GPU memory over the whole check, sampled every 200 ms.
nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$WORK/mem.txt" 2>/dev/null &
MEMPID=$!

step cuda-check "$T_CHECK" "$BIN" cuda-check
step golden "$T_GOLDEN" "$BIN" golden --dir tests/golden --device cuda
cp "$WORK/golden.txt" "$OUT/golden.txt"
step bench "$T_BENCH" "$BIN" bench --preset seed --set device=cuda --seq-tokens "$SEQ_TOKENS" --out "$WORK/bench.json"
[ -f "$WORK/bench.json" ] && cp "$WORK/bench.json" "$OUT/bench.json"
# New-LLM alone, one seed: the baselines run on the CPU (the transformer at
# the seed's size would take hours there) and seeds multiply the time.
step sweep "$T_SWEEP" "$BIN" sweep --preset seed --set device=cuda --set 'baselines=[]' --set replicates=1 --out "$WORK/sweep"
for f in results.json report.md; do
    [ -f "$WORK/sweep/$f" ] && cp "$WORK/sweep/$f" "$OUT/$f"
done

kill "$MEMPID" 2>/dev/null
wait "$MEMPID" 2>/dev/null
peak=$(sort -n "$WORK/mem.txt" 2>/dev/null | tail -1)

say "## Steps"
say "| step | seconds | result |"
say "|---|---|---|"
for r in "${rows[@]}"; do say "$r"; done
say
{ echo "## cuda-check"; echo '```'; cat "$WORK/cuda-check.txt"; echo '```'; echo; } >> "$SUMMARY"
say "## golden"
say '```'
grep -E "FAIL|^golden:|error" "$WORK/golden.txt" | head -40 | tee -a "$SUMMARY"
say '```'
say
say "## bench"
say '```'
grep -vE "^bench: " "$WORK/bench.txt" | tail -40 | tee -a "$SUMMARY"
say '```'
say
say "## seed sweep: per-cell stages"
say "| cell | data s | phase1 s | train cache s | val cache s | phase2 s | train-cache tokens/s | peak device memory |"
say "|---|---|---|---|---|---|---|---|"
awk '/^cell [0-9]+ samples:/ {cell=$2}
     /: stages data / {
        for (i = 1; i <= NF; i++) {
            if ($i == "data") d=$(i+1); if ($i == "phase1") p1=$(i+1);
            if ($i == "train_cache") tc=$(i+1); if ($i == "val_cache") vc=$(i+1);
            if ($i == "phase2") p2=$(i+1); if ($i == "train" && $(i+1) == "tokens/s") tps=$(i-1);
            if ($i == "memory") mem=$(i+1) " " $(i+2);
        }
        printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", cell, d, p1, tc, vc, p2, tps, mem }' \
    "$WORK/sweep.txt" | tee -a "$SUMMARY"
say
grep -E "^\| (Samples|[0-9]+) \|" "$WORK/sweep.txt" | tee -a "$SUMMARY"
say
say "peak GPU memory (nvidia-smi, whole check): ${peak:-n/a} MiB"
say "outputs: $OUT ($(cd "$OUT" && ls | tr '\n' ' ')); everything under $WORK"
exit $status
