#!/bin/bash
# A seed-size New-LLM cell (6 x 768) killed twice with SIGKILL at random
# moments, resumed each time, and compared with an uninterrupted run: the
# result JSON (timings aside) and the checkpoint bytes must be identical.
# Usage: scripts/resume-check.sh [OUT_DIR]   (BIN=path/to/newllm to override)
set -u
BIN=${BIN:-target/release/newllm}
OUT=${1:-runs/resume-check}
ARGS=(train --preset seed --samples 50 --set threads=2
      --set phase1_min_iterations=6 --set phase1_max_iterations=6
      --set phase2_epochs=3 --set phase2_patience=0)
rm -rf "$OUT" && mkdir -p "$OUT"

start=$(date +%s.%N)
"$BIN" "${ARGS[@]}" --out "$OUT/uninterrupted" 2> "$OUT/uninterrupted.err" || exit 1
full=$(echo "$(date +%s.%N) - $start" | bc)
echo "uninterrupted: ${full}s"

for k in 1 2; do
    # a random moment in the middle 80% of a whole run
    delay=$(python3 -c "import random; print(round(random.uniform(0.1, 0.9) * $full, 1))")
    "$BIN" "${ARGS[@]}" --out "$OUT/killed" 2>> "$OUT/killed.err" &
    pid=$!
    sleep "$delay"
    kill -KILL "$pid" 2> /dev/null && echo "kill $k after ${delay}s" || echo "kill $k: run already finished"
    wait "$pid" 2> /dev/null
    grep -o "resuming from .*" "$OUT/killed.err" | tail -1
done
"$BIN" "${ARGS[@]}" --out "$OUT/killed" 2>> "$OUT/killed.err" || exit 1
grep -o "resuming from .*" "$OUT/killed.err"
grep "resume state:" "$OUT/uninterrupted.err" "$OUT/killed.err"

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def load(side):
    r = json.load(open(f"{out}/{side}/cell-50.json"))
    def strip(v):
        if isinstance(v, dict):
            v.pop("seconds", None); v.pop("measured_peak_bytes", None)
            for x in v.values(): strip(x)
        elif isinstance(v, list):
            for x in v: strip(x)
    full = json.loads(json.dumps(r)); strip(r)
    return r, full
a, fa = load("uninterrupted"); b, fb = load("killed")
same_ckpt = open(f"{out}/uninterrupted/cell-50.safetensors", "rb").read() == open(f"{out}/killed/cell-50.safetensors", "rb").read()
print(f"result JSON identical (timings aside): {a == b}; checkpoint bytes identical: {same_ckpt}")
for side, r in (("uninterrupted", fa), ("killed twice", fb)):
    s = r["seconds"]
    print(f"{side}: Val PPL {r['val_ppl']:.4f} Val Acc {100*r['val_acc']:.2f}% Train ER {100*r['train_er']:.2f}% "
          f"phase1 {s['phase1']:.1f}s phase2 {s['phase2']:.1f}s state_write {s['state_write']:.2f}s "
          f"({100*s['state_write']/s['total']:.2f}% of {s['total']:.1f}s)")
sys.exit(0 if a == b and same_ckpt else 1)
PY
