#!/usr/bin/env bash
# Every benchmark, in the order bench/RESULTS.md reports them (about an hour on 2 CPU cores).
# Run on an otherwise idle machine: two processes sharing two cores distort every timing.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
$PY train_step.py --title "Training step, headline (targets)" --kinds a b c --repeats 3
$PY train_step.py --title "Training step, glibc malloc defaults" --kinds a c --malloc default --repeats 2
$PY train_step.py --title "Training step, grid" --grid --repeats 1
$PY train_step.py --title "Training step, what the split-backward tensor products buy" --kinds c c-e3nn --batch 1 --repeats 3
$PY md_step.py --dtype float64 --malloc tuned default
$PY md_step.py --dtype float32
$PY scaling.py
$PY scaling.py --dtype float32 --channels 32
$PY data_pipeline.py
$PY profile_response.py
$PY screening.py
$PY ionic_memory.py
