#!/usr/bin/env bash
# What a lent GPU (one H100/H200, no network) measures for docs/PERF.md and docs/RESULTS.md, in parts:
#   bench  the Wan2.1-1.3B architecture (random weights): s/frame and peak memory of base, FIFO, MIGA
#   train  the toy VAE, then two toy transformers side by side on it: one level per clip (the shipped
#          recipe) and mixed levels (the control); each checkpoint is packed into OUT_DIR as soon as it
#          is saved, then both quality gates run
#   study  FIFO and MIGA on both toy models, 12 prompts x 2 seeds x 1000 frames (needs train first)
# Usage, from the repository root with wheels for what the GPU image lacks in .whl/ (docs/PERF.md):
#   bash jobs/gpu_run.sh OUT_DIR bench train study
set -uo pipefail
out=$1
shift
mkdir -p "$out"
work=/tmp/miga-gpu  # outside the repository: a device tool may replace the working tree between calls
mkdir -p "$work"
source jobs/gpu_env.sh
train="python3 jobs/train_toy.py --profile gpu --device cuda --threads 4"
{
stamp "start: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader), $(nproc) cores"
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
for part in "$@"; do
  case $part in
    bench)
      stamp "bench"
      timeout 170 python3 -m miga_ray.benchmarks.gpu --calls 12 ;;
    train)
      stamp "train: VAE"
      timeout 150 $train --transformer-steps 0 --workers 14 --out "$work/toy-vae"
      stamp "train: transformers"
      pids=()
      for levels in shared mixed; do
        (timeout 240 $train --levels $levels --vae-from "$work/toy-vae" --out "$work/toy-$levels" \
          && tar -C "$work" -cf "$out/toy-$levels.tar" "toy-$levels") &
        pids+=($!)
      done
      wait "${pids[@]}"
      for levels in shared mixed; do
        stamp "gate toy-$levels"
        timeout 60 python3 jobs/train_toy.py --eval --out "$work/toy-$levels" --device cuda > "$out/gate-toy-$levels.json"
        cat "$out/gate-toy-$levels.json"
      done ;;
    study)
      stamp "study"
      timeout 330 python3 jobs/toy_ablation.py --out "$out/study" --models "$work/toy-shared,$work/toy-mixed" --preset toy \
        --variants fifo,miga --prompts 12 --seeds 2 --latents 1000 --device cuda --workers 14 | tail -40 ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
stamp "end"
} 2>&1 | tee -a "$out/log.txt"
