#!/usr/bin/env bash
# On a lent GPU machine (the device tool, carry .devsite), detached with setsid so that it outlives the
# call that starts it: run the study on the shipped toy world in a copy of the checkout ($W/repo; a later
# device call re-copies the checkout, so nothing runs in it) with $SLOTS jobs sharing the GPU, and nothing
# else on the machine (measured 2026-12-03: beside model training, everything ran 3-3.5x slower).
# With BENCH=LABEL it runs `benchmarks/study.py` instead (the whole study, `all`, timed; its row is in
# $W/repo/benchmarks/results.jsonl); with PLAIN=1 too, as the README runs it: the default profile and every core,
# none of the options below that share the GPU. Otherwise phases run one after the other, each until the deadline
# ($DEADLINE_S after the start, default 1450):
#   TARGETS (default: the default study up to its tables and the reversion stage),
#   THEN    (default: none; e.g. "exact_unlearning_control --until tables reversion").
# With MPS=1 the README's command is run with `--config gpu_sharing=mps` (the study's own MPS daemon,
# resurgence.mps); $W/times.log then lists the daemon's log (logs/mps) after the run.
# With WORLD=1 it first retrains the toy world at the configured geometry (tools/device/world_retrain.sh, in
# $W/world; nothing else runs beside it) and runs the study on the retrained world, whether or not
# $W/world/accepted says it may be shipped (the study's tables then say why not).
# $W/stage says where it is; tools/device/collect.sh (same W) packs what exists into $OUT.
# A world variant's model alone (to finish its control on the 2-core machine): tools/device/pack_variants.sh.
# Usage:  setsid bash tools/device/study_detached.sh > /tmp/study.log 2>&1 < /dev/null &
set -uo pipefail
W=${W:-/tmp/study_detached}
mkdir -p "$W"
start=$(date +%s)
deadline=$((start + ${DEADLINE_S:-1450}))
stage() { echo "$1 $(( $(date +%s) - start ))" >> "$W/stage"; }
rm -rf "$W/repo" && mkdir -p "$W/repo" && tar cf - --exclude=./.devsite --exclude=./.whl . | tar xf - -C "$W/repo"
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1
cd "$W/repo" || exit 1
export PYTHONPATH="$PWD${PYTHONPATH#"$OLDPWD"}"  # this copy's code first
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$W/gpu.txt"
nproc >> "$W/gpu.txt"
phase() {  # phase NAME ARGS...
  local name=$1 t=$(( deadline - $(date +%s) ))
  shift
  [ "$t" -gt 20 ] || { echo "$name: no time left" >> "$W/times.log"; return 1; }
  stage "$name"
  gpu_snakemake "$t" "$W/$name.log" "$@"
  echo "$name: snakemake exit $? at $(( $(date +%s) - start )) s" >> "$W/times.log"
}
if [ -n "${WORLD:-}" ]; then
  stage world
  W="$W/world" bash tools/device/world_retrain.sh > "$W/world.log" 2>&1
  echo "world: exit $?, accepted: $(cat "$W/world/accepted" 2>/dev/null) at $(( $(date +%s) - start )) s" >> "$W/times.log"
  [ -f "$W/world/toyworld/manifest.json" ] && rm -rf resources/toyworld && cp -r "$W/world/toyworld" resources/toyworld
fi
if [ -n "${BENCH:-}" ]; then  # the whole default study timed by benchmarks/study.py (a row naming the machine)
  stage bench
  if [ -n "${PLAIN:-}" ]; then
    cores=$(nproc) args="--profile workflow/profiles/default${MPS:+ --config gpu_sharing=mps}"
  else
    cores=$(study_cores) args=$(shared_gpu_args)
  fi
  # shellcheck disable=SC2086
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} timeout --signal=INT $(( deadline - $(date +%s) )) \
    python3 benchmarks/study.py --cores "$cores" --label "$BENCH" -- $args > "$W/bench.log" 2>&1
  echo "bench: exit $? at $(( $(date +%s) - start )) s" >> "$W/times.log"
else
  # shellcheck disable=SC2086
  phase study ${TARGETS:-all --until tables reversion}
fi
# shellcheck disable=SC2086
[ -z "${THEN:-}" ] || phase then $THEN
[ -z "${MPS:-}" ] || { echo "mps: logs/mps:"; tail -n 30 logs/mps/control.log; } >> "$W/times.log" 2>&1
stage done
