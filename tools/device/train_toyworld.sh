#!/usr/bin/env bash
# Train the toy models on a lent GPU machine (the device tool): its python has torch but not
# diffusers/open_clip/peft, which travel as wheels in .whl/ (see the device README). Writes the
# trained models and the manifest under $OUT/toyworld, to be copied into resources/toyworld.
#   ONLY="t2i" bash tools/device/train_toyworld.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# shellcheck disable=SC2086
python3 -m resurgence toyworld train --out-dir "$OUT/toyworld" --profile gpu --only ${ONLY:-t2i clip detector segmenter} --device cuda
find "$OUT/toyworld" -name '*_ckpt' -o -name checkpoints | xargs rm -rf
du -sh "$OUT"/toyworld/*
