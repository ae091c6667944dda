#!/usr/bin/env bash
# On a lent GPU machine (the device tool, carry .devsite): retrain the toy world's text-to-image model
# and CLIP at the configured concept geometry (toyworld.knowledge; the detector and segmenter do not
# depend on it and are kept), record the calibration statistics and the quality gates in the manifest,
# and leave the new world in $W/toyworld, packed as $W/ship.tar.part-* (for tools/device/ship_toyworld.py).
# $W/accepted says whether it may be shipped: "yes" when every quality gate passes and the trained CLIP's
# App. C.2 statistic lies inside the paper's ranges in both domains, else "no" and why.
# Run from a checkout (tools/device/study_detached.sh runs it with WORLD=1 before the study). A CPU rehearsal:
#   W=/tmp/rehearsal PROFILE=smoke DEVICE=cpu QUALITY_ARGS="--concepts 4 --images 1" bash tools/device/world_retrain.sh
set -uo pipefail
W=${W:-/tmp/world_retrain}
mkdir -p "$W"
stage() { echo "$1 $(date +%s)" >> "$W/stage"; }
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1
start=$(date +%s)
know=$(study_config toy_knowledge) cal=$(study_config calibration_sets)
stage train
for m in t2i clip; do
  python3 -m resurgence toyworld train --out-dir "$W/run_$m" --profile "${PROFILE:-gpu}" --only $m --knowledge "$know" \
    --device "${DEVICE:-cuda}" > "$W/train_$m.log" 2>&1 &
done
wait
echo "training wall time (t2i and clip side by side): $(( $(date +%s) - start )) s" | tee -a "$W/times.log"
stage combine
cp -r resources/toyworld "$W/toyworld"
python3 - "$W" "$cal" "${DEVICE:-cuda}" <<'PY' > "$W/combine.log" 2>&1 || { stage failed; exit 1; }
import json, sys
from resurgence.toyworld.train import import_models, record_geometry
w, cal = sys.argv[1], json.loads(sys.argv[2])
for m in ("t2i", "clip"):
    import_models(f"{w}/run_{m}", f"{w}/toyworld", [m])
g = record_geometry(f"{w}/toyworld", cal, device=sys.argv[3])
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
# shellcheck disable=SC2086
python3 -m resurgence toyworld quality --models "$models" --out "$W/quality.json" --device "${DEVICE:-cuda}" ${QUALITY_ARGS:-} \
  --generation '{"steps": 25, "guidance_scale": 5.0, "batch_size": 256, "scheduler": "ddim", "dtype": "float32"}' \
  > "$W/quality.log" 2>&1
python3 -c "import json,sys; from resurgence.toyworld.train import record_quality; \
record_quality(sys.argv[1], json.load(open(sys.argv[2])))" "$W/toyworld" "$W/quality.json"
echo "with quality gates: $(( $(date +%s) - start )) s" | tee -a "$W/times.log"
find "$W/toyworld" -name '*_ckpt' -o -name checkpoints | xargs rm -rf
tar cf - -C "$W" toyworld | split -b 15M - "$W/ship.tar.part-"
python3 - "$W" > "$W/accepted" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/toyworld/manifest.json"))
why = [f"quality gate {k}: {v['value']:.4f} < {v['threshold']}" for k, v in m["quality"]["gates"].items() if not v["pass"]]
why += [f"CLIP {d} statistic {s['min']:.3f}-{s['max']:.3f} outside {s['paper_range']}"
        for d, s in m["geometry"]["clip"].items() if not s["inside_paper_range"]]
print("no: " + "; ".join(why) if why else "yes")
PY
cat "$W/accepted"
stage done
