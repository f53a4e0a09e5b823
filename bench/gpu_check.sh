#!/usr/bin/env bash
# The GPU check of issue 19 (bench/gpu_check.py): physics tests on the device, training- and
# MD-step cost with e3nn and cuEquivariance, two minutes of training. Under 8 minutes on one
# H100/H200; without CUDA it runs its CPU fallback at toy sizes (about 8 minutes on 2 cores).
#
#   bench/gpu_check.sh [OUT]            # OUT: where gpu_check.md, gpu_check.json and logs go
#
# On the device machine (no internet; its python3 has CUDA torch, lightning, and e3nn of another
# version): here, `bench/gpu_wheels.sh` puts what it lacks into .whl/ and .whl-ops/ (git-ignored;
# two folders because one device call carries at most 64 MiB). Then two calls, back to back on
# the warm machine (installed wheels stay in the checkout's .site/ there between calls):
#   device run  carry [".whl-ops"]  command "bash bench/gpu_check.sh --install-only"
#   device run  carry [".whl", ".gpu-data"]  command "bash bench/gpu_check.sh $OUT"
# It uses $PYTHON, else the checkout's .venv, else python3. Copy the tables of OUT/gpu_check.md
# into bench/RESULTS.md, naming the card.
set -euo pipefail
cd "$(dirname "$0")/.."
for wheels in .whl .whl-ops; do  # carried wheels: installed into .site (kept on a warm machine)
  if ls "$wheels"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site "$wheels"/*.whl
  fi
done
[ "${1:-}" = "--install-only" ] && exit 0
OUT=${1:-${OUT:-bench/gpu_check_out}}
if [ -d .site ]; then
  export PYTHONPATH=$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}
  PY=${PYTHON:-python3}
elif [ -x .venv/bin/python ]; then
  PY=${PYTHON:-.venv/bin/python}
else
  PY=${PYTHON:-python3}
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
# the data: ../shared/data beside the checkout, else the files gpu_wheels.sh copied (they travel)
if [ -z "${MF_DATA_DIR:-}" ] && [ ! -d ../shared/data ] && [ -d .gpu-data ]; then export MF_DATA_DIR=$PWD/.gpu-data; fi
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/device.txt" 2>/dev/null || echo "no GPU" > "$OUT/device.txt"
exec "$PY" bench/gpu_check.py --out "$OUT" "${@:2}"
