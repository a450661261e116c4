#!/usr/bin/env bash
# Every throughput target, each measured against the hand-written baseline in one invocation,
# appended to docs/throughput.md. Run on one H100 80GB (or H200):
#   BASELINE=path/to/hf_baseline.py bash bench/gpu_targets.sh
# (on a machine with only torch, transformers, peft and accelerate: see bench/device_wheels.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASELINE:?set BASELINE to the hand-written baseline script}"
PY=${PYTHON:-python3}
OUT=${OUT:-docs/throughput.md}
run() { "$PY" bench/throughput.py --device cuda --baseline "$BASELINE" --write "$OUT" "$@"; }

run --shape 8b --method lora --bs 4 --ablate                 # 8B LoRA SFT: >= 14,000 real tokens/s
run --shape 8b --method lora --bs 4                          # 8B LoRA within 24 GB: peak <= 22 GiB at >= 9,000
run --shape 8b --method lora --bs 16 --micro-batch-tokens 16384   # the same, 16 samples per step in passes of <= 16k tokens
run --shape 8b --method lora --bs 16 --micro-batch-tokens 16384 --memory-cap 21   # and checkpointing chosen for a 24 GB card
run --shape 1b --method full --bs 8 --no-ckpt                # 1.5B full SFT: >= 60,000 tokens/s
run --shape 8b --method qlora --bs 1 --max-len 2048 --fixed-len   # 8B QLoRA: peak <= 6.5 GiB at >= 4,500
run --shape 8b --method lora --bs 1 --max-len 65536 --fixed-len --steps 8   # fits in 80 GB
run --shape 8b --method lora --bs 1 --max-len 131072 --fixed-len --steps 6 --memory-cap 76   # 131,072 tokens: the cap chooses offloading
