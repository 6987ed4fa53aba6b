#!/bin/bash
B=${NEWLLM:-target/release/newllm}
for V in 50 100 200 400 800; do
  for N in 20 40 80 200 500 1000; do
    $B train --model kn --samples $N --out ${OUT:-runs/val-samples}/v$V --cache-dir ${OUT:-runs/val-samples}/cache --set val_mode=heldout --set val_samples=$V --set threads=1 2>/dev/null | head -1
  done
done
