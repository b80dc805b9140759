#!/usr/bin/env bash
# Which CPU recipe reaches the toy model's quality gate, and after how many steps: the CPU profile's batch
# sizes and step count, on a lent GPU (one H100/H200), several candidates side by side, each gated four
# times (its learning curve in steps, which transfers to the CPU: same recipe, same steps).
# Candidates: the world (full grammar / large sprites / one large sprite), a curriculum, the width; the
# two smaller worlds also with mixed levels (the control). One VAE (the gpu profile's) serves all.
# Usage, from the repository root with wheels for what the GPU image lacks in .whl/ (docs/PERF.md):
#   bash jobs/gpu_sweep.sh OUT_DIR [STEPS]
# OUT_DIR gets log.txt, curves.jsonl (every candidate's gates) and one tar per candidate (the VAE in vae.tar).
set -uo pipefail
out=$1
steps=${2:-6000}
mkdir -p "$out"
work=/tmp/miga-sweep  # outside the repository: a device tool may replace the working tree between calls
mkdir -p "$work"
source jobs/gpu_env.sh
export OMP_NUM_THREADS=1
device=${DEVICE:-cuda}  # DEVICE=cpu EXTRA="small sizes" tries the script on a CPU
extra=${EXTRA:-}
train="python3 jobs/train_toy.py --profile cpu --device $device --threads 1"
candidates=(
  "large-shared|--world large"
  "single-shared|--world single"
  "large-wide-shared|--world large --heads 8"
  "full-curriculum-shared|--world full --curriculum 0.3"
  "large-mixed|--world large --levels mixed"
  "single-mixed|--world single --levels mixed"
)
{
stamp "start: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), $(nproc) cores, $steps steps"
stamp "VAE (gpu profile)"
timeout 150 python3 jobs/train_toy.py --profile gpu --device "$device" --threads 4 --transformer-steps 0 --vae-seconds 60 $extra --out "$work/vae"
tar -C "$work" -cf "$out/vae.tar" vae/vae
stamp "candidates"
pids=()
for entry in "${candidates[@]}"; do
  name=${entry%%|*}
  flags=${entry#*|}
  (timeout "${CANDIDATE_SECONDS:-300}" $train $flags --vae-from "$work/vae" --transformer-steps "$steps" --gate-every $((steps / 4)) $extra --out "$work/$name" \
     > "$work/$name.log" 2>&1
   tar -C "$work" --exclude train_state --exclude vae -cf "$out/$name.tar" "$name"
   grep -h "checkpoint\|saved to\|Error\|error" "$work/$name.log" | sed "s/^/[$name] /") &
  pids+=($!)
done
wait "${pids[@]}"
for entry in "${candidates[@]}"; do
  name=${entry%%|*}
  if [ -f "$work/$name/curve.jsonl" ]; then
    sed "s/^{/{\"candidate\": \"$name\", /" "$work/$name/curve.jsonl" >> "$out/curves.jsonl"
  else
    tail -5 "$work/$name.log"
  fi
done
stamp "curves"
cat "$out/curves.jsonl"
stamp "end"
} 2>&1 | tee -a "$out/log.txt"
