#!/usr/bin/env bash
# Run the default study (up to its metric tables) with Snakemake on a lent GPU machine (the device
# tool) and time it. That machine has torch but no Snakemake/diffusers/...: they travel as one
# archive of a Python 3.12 site folder, .devsite/site312.tar.xz (built by tools/device/pack_site.sh).
# Everything but the model weights and images comes back in $OUT as study.tar.part-* (the tool
# returns files of at most 16 MiB); unpack with  cat study.tar.part-* | tar x -C /tmp/gpu-study
# Usage (device tool, carry .devsite):  bash tools/device/study_gpu.sh
# Env: SLOTS (concurrent jobs sharing the GPU, default 8), LIMIT_S (stop Snakemake after, default 500),
#      TARGETS (default: every metric table of the study, i.e. `all --until tables`).
set -uo pipefail
[ -f .devsite/site312.tar.xz ] || { echo "carry .devsite (tools/device/pack_site.sh)"; exit 1; }
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1
export CUDA_VISIBLE_DEVICES=0
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
nproc
start=$(date +%s)
# shellcheck disable=SC2086
gpu_snakemake "${LIMIT_S:-500}" "$OUT/snakemake.log" ${TARGETS:-all --until tables}
rc=$?
echo "snakemake exit $rc; study wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/snakemake.log"
tail -5 "$OUT/snakemake.log"
tar cf - --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='results/ftdata/*/*/*.png' \
  --exclude='results/ftdata/*/*/*/*.png' --exclude='results/images/*/*/*.png' --exclude='results/images/*/*/*/*.png' \
  --exclude='results/images/*/*/*/*/*.png' --exclude='results/images/*/*/*/*/*/*.png' results logs .snakemake/metadata 2>/dev/null \
  | split -b 15M - "$OUT/study.tar.part-"
find results/images -name grid.png | tar cf "$OUT/grids.tar" -T -
ls -la "$OUT"
exit $rc
