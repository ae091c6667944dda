#!/usr/bin/env bash
# On a lent GPU machine (the device tool, carry .devsite): start, detached and side by side, two runs of
# tools/device/study_detached.sh on the one GPU, each in its own copy of the checkout:
#   W=/tmp/controls  the exact-unlearning control and the geometry sweep (each retrains the t2i model; their
#                    trainings first) with the reversion of the sweep's runs, up to the tables;
#   W=/tmp/efficacy  the erasure-efficacy round 11 (tools/device/efficacy_concepts.yaml): the erase settings
#                    across concepts, scored on 5 images per prompt, before any fine-tuning.
# Both stop at $DEADLINE_S after the start (default 1300). Pack each with
#   W=/tmp/controls OUT=$OUT/controls bash tools/device/collect.sh  (and W=/tmp/efficacy)
# at the end of *every* waiting call, not only the last: a machine left idle for over 30 s between calls goes
# back with everything on it (2026-12-04: 990 s of this run were lost that way).
# Env: SLOTS_CONTROLS (default 5), SLOTS_EFFICACY (default 4): jobs each run lets share the GPU.
set -uo pipefail
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1  # unpack the site once, before either run starts importing from it
runs=""
for task in identity_10 identity_10_independent identity_10_shared_090; do
  runs+=" results/reversion/$task/default/random_identity/lora/reversion.csv"
done
for task in object_ship object_ship_independent object_ship_shared_090; do
  runs+=" results/reversion/$task/default/random_object/lora/reversion.csv"
done
variants=""
for v in exact_unlearning independent shared_090; do variants+=" results/variants/$v/manifest.json"; done
export DEADLINE_S=${DEADLINE_S:-1300}
W=/tmp/controls SLOTS=${SLOTS_CONTROLS:-5} \
  TARGETS="exact_unlearning_control geometry_sweep$runs --prioritize$variants --until tables reversion" \
  setsid bash tools/device/study_detached.sh > /tmp/controls.log 2>&1 < /dev/null &
overlays="config.yaml tools/device/efficacy_sweep.yaml tools/device/efficacy_precise.yaml tools/device/efficacy_concepts.yaml"
W=/tmp/efficacy SLOTS=${SLOTS_EFFICACY:-4} \
  TARGETS="$(ROUND=11 bash tools/device/efficacy_targets.sh | tr '\n' ' ') --prioritize \
results/metrics/identity_100/dws30/erased/tidy.csv --configfile $overlays" \
  setsid bash tools/device/study_detached.sh > /tmp/efficacy.log 2>&1 < /dev/null &
sleep 2
echo "started: controls and efficacy (deadline ${DEADLINE_S} s)"
