#!/usr/bin/env bash
# Train the toy models on a lent GPU machine (the device tool): its python has torch but not
# diffusers/open_clip/peft, which travel as wheels in .whl/ (see the device README). Trains into
# /tmp/toyworld and packs the result into $OUT (the tool returns files at most 2 folders down and
# 16 MiB each): toyworld.tar.part-*, to be unpacked and copied into resources/toyworld with
#   cat toyworld.tar.part-* | tar x -C /tmp && python tools/device/ship_toyworld.py /tmp/toyworld
# Usage (device tool, carry .whl):  ONLY="t2i" bash tools/device/train_toyworld.sh
# QUALITY=1 then measures the toy world's quality gates with the new models (those not retrained come
# from resources/toyworld) into $OUT/quality.json, after the models are packed.
set -euo pipefail
# shellcheck source=tools/device/site.sh
source tools/device/site.sh
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
# shellcheck disable=SC2086
python3 -m resurgence toyworld train --out-dir /tmp/toyworld --profile gpu --only ${ONLY:-t2i clip detector segmenter} \
  --device cuda 2>&1 | tee "$OUT/train.log"
echo "toyworld training wall time: $(( $(date +%s) - start )) s" | tee -a "$OUT/train.log"
find /tmp/toyworld -name '*_ckpt' -o -name checkpoints | xargs rm -rf
du -sh /tmp/toyworld/*
tar cf - -C /tmp toyworld | split -b 15M - "$OUT/toyworld.tar.part-"
cp /tmp/toyworld/*.png /tmp/toyworld/*.json "$OUT/" 2>/dev/null || true
if [ -n "${QUALITY:-}" ]; then
  models=$(python3 - <<'PY'
import json, os
from resurgence import study
from resurgence.config import load_config
m = study.model_specs(load_config(["config.yaml"]))  # the shipped models; the retrained ones replace them
for key, folder in (("pipeline", "t2i"), ("clip", "clip"), ("detector", "detector"), ("segmenter", "segmenter")):
    if os.path.isdir(f"/tmp/toyworld/{folder}"):
        m[key] = f"/tmp/toyworld/{folder}" if key == "pipeline" else {**m[key], "path": f"/tmp/toyworld/{folder}"}
print(json.dumps(m))
PY
)
  python3 -m resurgence toyworld quality --models "$models" --out "$OUT/quality.json" --device cuda \
    --generation '{"steps": 25, "guidance_scale": 5.0, "batch_size": 256, "scheduler": "ddim", "dtype": "float32"}' \
    2>&1 | tail -3
  echo "wall time with quality: $(( $(date +%s) - start )) s" | tee -a "$OUT/train.log"
fi
