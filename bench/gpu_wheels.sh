#!/usr/bin/env bash
# Prepare, here, the wheels the GPU machine lacks (it has python3 3.12 with CUDA 13 torch,
# lightning, torch-geometric, scipy, matplotlib, pandas, h5py, but no internet). A device call
# carries at most 64 MiB, so they come in two folders (both git-ignored):
#   .whl/      mace-torch, e3nn 0.4.4, ase, hydra, cuEquivariance and its torch kernels (~34 MB)
#   .whl-ops/  cuEquivariance's CUDA 13 kernel library (~45 MB)
# and the three data files the check reads into .gpu-data/ (~8 MB; ../shared does not travel).
# bench/gpu_check.sh says how the two calls carry them. Versions: this project's pins.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .whl-ops
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() { local dest=$1; shift; python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
          --implementation cp "${PLAT[@]}" -d "$dest" "$@"; }
get .whl mace-torch==0.3.16 e3nn==0.4.4 "ase>=3.23" hydra-core==1.3.2 omegaconf==2.3.0 matscipy torch-ema \
    prettytable wcwidth configargparse lmdb orjson gitpython gitdb smmap \
    cuequivariance==0.13.0 cuequivariance-torch==0.13.0 cuequivariance-ops-torch-cu13==0.13.0
get .whl-ops cuequivariance-ops-cu13==0.13.0
# published as source archives only (pure Python): their wheels are built here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3 python-hostlist
DATA=${MF_DATA_DIR:-../shared/data}
for f in md/SiO2.xyz md/BaTiO3.xyz mp_dielectric/dielectric-valid.xyz; do
  mkdir -p ".gpu-data/$(dirname "$f")" && cp "$DATA/$f" ".gpu-data/$f"
done
du -sh .whl .whl-ops .gpu-data
