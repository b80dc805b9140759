#!/usr/bin/env bash
# The long-horizon study on a lent GPU: FIFO, TTA only, DCE only and MIGA on a shared-level toy model, and
# FIFO and MIGA on its mixed-level twin (the control), PROMPTS prompts x SEEDS seeds x 1000 latents, the
# six rows side by side. The models are the pair of jobs/gpu_sweep.sh whose shared model gates best
# (min of shape and count at its last gate), from its work folder on a warm machine or from the tars
# carried in .sweep/. Summarise here afterwards: python jobs/toy_ablation.py --report --out DIR --models ...
# Usage: bash jobs/gpu_study.sh OUT_DIR [PROMPTS] [SEEDS]
set -uo pipefail
out=$1
prompts=${2:-12}
seeds=${3:-1}
mkdir -p "$out"
work=/tmp/miga-sweep
source jobs/gpu_env.sh
export OMP_NUM_THREADS=1
device=${DEVICE:-cuda}
{
stamp "start: $prompts prompts x $seeds seeds"
for world in large single; do
  for levels in shared mixed; do
    name=$world-$levels
    if [ ! -f "$work/$name/miga.json" ] && [ -f ".sweep/$name.tar" ]; then
      mkdir -p "$work" && tar -C "$work" -xf ".sweep/$name.tar"
    fi
  done
done
best=$(python3 - "$work" <<'EOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
scores = {}
for world in ("large", "single"):
    curve = work / f"{world}-shared" / "curve.jsonl"
    if curve.is_file() and (work / f"{world}-mixed" / "miga.json").is_file():
        last = json.loads(curve.read_text().splitlines()[-1])
        scores[world] = min(last["shape_rate"], last["count_rate"])
print(max(scores, key=scores.get) if scores else "")
EOF
)
[ -n "$best" ] || { echo "no shared/mixed pair in $work or .sweep/"; exit 1; }
shared=$work/$best-shared
mixed=$work/$best-mixed
stamp "study on $best: $shared and $mixed"
common="--preset toy --prompts $prompts --seeds $seeds --latents ${LATENTS:-1000} --device $device --workers 2"
rows=("$shared fifo" "$shared miga" "$mixed fifo" "$mixed miga" "$shared tta" "$shared dce")
pids=()
for i in "${!rows[@]}"; do
  set -- ${rows[$i]}
  timeout "${STUDY_SECONDS:-300}" python3 jobs/toy_ablation.py --out "$work/study-$i" --models "$1" --variants "$2" $common \
    > "$work/study-$i.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
for i in "${!rows[@]}"; do
  grep "^\[\|done,\|Error" "$work/study-$i.log"
  cat "$work/study-$i/videos.jsonl" >> "$out/videos.jsonl" 2>/dev/null
done
echo "{\"world\": \"$best\", \"shared\": \"$shared\", \"mixed\": \"$mixed\"}" > "$out/study.json"
stamp "end: $(wc -l < "$out/videos.jsonl") videos"
} 2>&1 | tee -a "$out/log.txt"
