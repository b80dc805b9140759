# Sourced by the scripts for a lent GPU (gpu_run.sh, gpu_sweep.sh, gpu_study.sh), from the repository root:
# the wheels in .whl/ for what the GPU image lacks (installed once per machine), unbuffered offline Python,
# and a time stamp for their logs.
if ls .whl/*.whl >/dev/null 2>&1 && [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
if [ -d /tmp/site ]; then
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
stamp() { echo "== $(date -u +%FT%TZ) $*"; }
