#!/usr/bin/env bash
# On a lent GPU machine (the device tool, carry .devsite): retrain the toy world's text-to-image model
# and CLIP at the configured concept geometry (toyworld.knowledge; the detector and segmenter do not
# depend on it and are kept), record the calibration statistics and the quality gates in the manifest,
# put the new models into this copy's resources/toyworld, then run the default study on them.
# Meant to run detached (setsid), across several calls of the device tool; W=/tmp/world_and_study
# holds ship.tar.part-* (the models, for tools/device/ship_toyworld.py), quality.json, the logs, and
# study/ (tools/device/study_gpu.sh's $OUT) and partial.tar.xz (the study so far, refreshed each minute).
# $W/stage says where it is.
# Env: STUDY_LIMIT_S (default 1000), TARGETS (study targets, default: tables and reversion).
set -uo pipefail
W=${W:-/tmp/world_and_study}
mkdir -p "$W/study"
stage() { echo "$1 $(date +%s)" >> "$W/stage"; }
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1
start=$(date +%s)
know=$(study_config toy_knowledge) cal=$(study_config calibration_sets)
stage train
for m in t2i clip; do
  python3 -m resurgence toyworld train --out-dir "$W/run_$m" --profile gpu --only $m --knowledge "$know" \
    --device cuda > "$W/train_$m.log" 2>&1 &
done
wait
echo "training wall time (t2i and clip side by side): $(( $(date +%s) - start )) s" | tee -a "$W/times.log"
stage combine
cp -r resources/toyworld "$W/toyworld"
python3 - "$W" "$cal" <<'PY' > "$W/combine.log" 2>&1 || { stage failed; exit 1; }
import json, sys
from resurgence.toyworld.train import import_models, record_geometry
w, cal = sys.argv[1], json.loads(sys.argv[2])
for m in ("t2i", "clip"):
    import_models(f"{w}/run_{m}", f"{w}/toyworld", [m])
g = record_geometry(f"{w}/toyworld", cal, device="cuda")
print(json.dumps({k: g[k] for k in ("target", "clip", "t2i_text_states")}, indent=1))
PY
stage quality
models=$(python3 - "$W" <<'PY'
import json, sys
from resurgence import study
from resurgence.config import load_config
m = study.model_specs(load_config(["config.yaml"]))
w = sys.argv[1]
m["pipeline"] = f"{w}/toyworld/t2i"
for key in ("clip", "detector", "segmenter"):
    m[key] = {**m[key], "path": f"{w}/toyworld/{key}"}
print(json.dumps(m))
PY
)
python3 -m resurgence toyworld quality --models "$models" --out "$W/quality.json" --device cuda \
  --generation '{"steps": 25, "guidance_scale": 5.0, "batch_size": 256, "scheduler": "ddim", "dtype": "float32"}' \
  > "$W/quality.log" 2>&1
python3 -c "import json,sys; from resurgence.toyworld.train import record_quality; \
record_quality(sys.argv[1], json.load(open(sys.argv[2])))" "$W/toyworld" "$W/quality.json"
echo "with quality gates: $(( $(date +%s) - start )) s" | tee -a "$W/times.log"
find "$W/toyworld" -name '*_ckpt' -o -name checkpoints | xargs rm -rf
tar cf - -C "$W" toyworld | split -b 15M - "$W/ship.tar.part-"
stage study
rm -rf resources/toyworld && cp -r "$W/toyworld" resources/toyworld
# Every minute, what the study has made so far (no weights or images) in $W/partial.tar.xz: a poll call
# returns it, so a machine that goes back early loses at most a minute of results.
( while sleep 60; do
    tar cJf "$W/partial.tmp.tar.xz" --exclude='*.safetensors' --exclude='*.pt' --exclude='*.png' --exclude='*.bin' \
      results logs 2>/dev/null && mv "$W/partial.tmp.tar.xz" "$W/partial.tar.xz"
  done ) &
snap=$!
OUT="$W/study" LIMIT_S=${STUDY_LIMIT_S:-1000} TARGETS=${TARGETS:-all --until tables reversion} \
  bash tools/device/study_gpu.sh > "$W/study.log" 2>&1
kill "$snap" 2>/dev/null
echo "study done: $(( $(date +%s) - start )) s" | tee -a "$W/times.log"
stage done
