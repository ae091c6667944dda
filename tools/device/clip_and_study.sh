#!/usr/bin/env bash
# On a lent GPU machine (the device tool, carry .devsite), detached with setsid: choose the toy CLIP's
# knowledge Gram-loss weight on the calibration statistic alone (CLIP trained at each of $WEIGHTS,
# toyworld.train.choose_clip_knowledge_weight), ship the chosen CLIP into a copy of the checkout
# ($W/repo; a later device call re-copies the checkout, so nothing runs in it), measure its quality
# gates, and run the study on the new world:
#   phase 1, while CLIP trains: the jobs of `all` and the exact-unlearning control that read no CLIP
#            (rules' `weights` params keep them valid under the new CLIP), and the geometry sweep's
#            text-to-image models (a second Snakemake, --nolock, on disjoint outputs);
#   phase 2: `all` and the control up to their tables and the reversion stage;
#   phase 3: the geometry sweep up to its table.
# Measured 2026-12-03 (docs/methods_reversion_h200.md): with the variants beside CLIP and the study, all
# of it ran 3-3.5x slower than alone; the variants' models now train only with VARIANTS=1.
# BALANCE=domains trains the CLIPs with the Gram loss averaged per pair of domains (ToyClipTrainConfig.
# knowledge_balance; docs/geometry_calibration.md); the shipped CLIP then enters the choice only if it
# was trained the same way.
# TARGETS (default "all exact_unlearning_control") are phases 1-2's targets; SWEEP=0 leaves out phase 3.
# Every phase stops at $DEADLINE_S after the start (default 1450). $W/stage says where it is;
# tools/device/collect.sh packs what exists into $OUT.
set -uo pipefail
W=${W:-/tmp/clip_and_study}
mkdir -p "$W"
start=$(date +%s)
deadline=$((start + ${DEADLINE_S:-1450}))
stage() { echo "$1 $(( $(date +%s) - start ))" >> "$W/stage"; }
rm -rf "$W/repo" && mkdir -p "$W/repo" && tar cf - --exclude=./.devsite --exclude=./.whl . | tar xf - -C "$W/repo"
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1
cd "$W/repo" || exit 1
export CUDA_VISIBLE_DEVICES=0 PYTHONPATH="$PWD${PYTHONPATH#"$OLDPWD"}"  # this copy's code first
dev=${DEVICE:-cuda}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt"
know=$(study_config toy_knowledge) cal=$(study_config calibration_sets)
left() { echo $(( deadline - $(date +%s) )); }
smk() {  # smk LOG ARGS...: gpu_snakemake (site.sh) until the deadline
  local log=$1; shift
  local t; t=$(left); [ "$t" -gt 20 ] || { echo "no time left" >> "$log"; return 1; }
  gpu_snakemake "$t" "$log" "$@"
  echo "snakemake exit $? at $(( $(date +%s) - start )) s" | tee -a "$log" >> "$W/times.log"
}

stage phase1
targets=${TARGETS:-all exact_unlearning_control}
# shellcheck disable=SC2086
smk "$W/phase1.log" $targets --until tables reversion \
  --omit-from evaluate ftdata_tercile toyworld_quality &
p1=$!
pv=
if [ -n "${VARIANTS:-}" ]; then
  sleep 5
  smk "$W/variants.log" --nolock results/variants/independent/manifest.json results/variants/shared_090/manifest.json &
  pv=$!
fi

stage clip
pids=()
for w in ${WEIGHTS:-3 10 30}; do
  rm -rf "$W/run_$w" && mkdir -p "$W/run_$w" && cp -r resources/toyworld/. "$W/run_$w/"
  python3 -m resurgence toyworld train --out-dir "$W/run_$w" --profile "${PROFILE:-gpu}" --only clip --knowledge "$know" \
    --calibration "$cal" --clip-knowledge-weight "$w" ${BALANCE:+--clip-knowledge-balance "$BALANCE"} --device "$dev" \
    > "$W/train_clip_$w.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "clip sweep done at $(( $(date +%s) - start )) s" >> "$W/times.log"
stage choose
python3 - "$W" "$cal" "$dev" ${WEIGHTS:-3 10 30} <<'PY' > "$W/choose.log" 2>&1
import json, os, sys
from resurgence.io import write_json
from resurgence.toyworld.quality import GATES
from resurgence.toyworld.train import choose_clip_knowledge_weight, import_models, read_manifest, record_geometry
w, cal, dev, weights = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], [float(x) for x in sys.argv[4:]]
runs = {x: read_manifest(f"{w}/run_{x:g}") for x in weights}
shipped = read_manifest("resources/toyworld")
if shipped["models"]["clip"]["config"].get("knowledge_balance", "pairs") == os.environ.get("BALANCE", "pairs"):
    runs[float(shipped["models"]["clip"]["config"]["knowledge_weight"])] = shipped  # the shipped CLIP's run
chosen = choose_clip_knowledge_weight(runs, GATES["clip_zero_shot_top1"])
sweep = {
    f"{x:g}": {
        "clip": {d: {k: s[k] for k in ("min", "median", "max", "inside_paper_range")}
                 for d, s in r["geometry"]["clip"].items()},
        "zero_shot_top1": {k: r["models"]["clip"]["metrics"][f"{k}_zero_shot_top1"] for k in ("identity", "object")},
        "final_knowledge_loss": r["models"]["clip"]["metrics"]["final_knowledge_loss"],
    }
    for x, r in sorted(runs.items())
}
record = {"chosen": chosen, "rule": "smallest weight with every domain's CLIP statistic inside the paper's "
          "range and held-out zero-shot top-1 >= the CLIP gate (toyworld.train.choose_clip_knowledge_weight)",
          "runs": sweep}
write_json(f"{w}/choice.json", record)
print(json.dumps(record, indent=1))
if chosen is not None and runs[chosen] is not shipped:
    import_models(f"{w}/run_{chosen:g}", "resources/toyworld", ["clip"])
    record_geometry("resources/toyworld", cal, device=dev)
    m = read_manifest("resources/toyworld")
    m["geometry"]["clip_knowledge_weight"] = record
    write_json("resources/toyworld/manifest.json", m)
PY
echo "chosen: $(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" "$W/choice.json")" >> "$W/times.log"
stage quality
models=$(study_config model_specs)
python3 -m resurgence toyworld quality --models "$models" --out "$W/quality.json" --device "$dev" --images "${QUALITY_IMAGES:-4}" \
  --generation '{"steps": 25, "guidance_scale": 5.0, "batch_size": 256, "scheduler": "ddim", "dtype": "float32"}' \
  > "$W/quality.log" 2>&1 && python3 -c "import json,sys; from resurgence.toyworld.train import record_quality; \
record_quality('resources/toyworld', json.load(open(sys.argv[1])))" "$W/quality.json" &
pq=$!
wait "$p1"
stage phase2
# shellcheck disable=SC2086
smk "$W/phase2.log" $targets --until tables reversion
wait $pv "$pq"
if [ "${SWEEP:-1}" != 0 ]; then
  stage phase3
  smk "$W/phase3.log" geometry_sweep --until tables
fi
stage done
