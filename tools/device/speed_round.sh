#!/usr/bin/env bash
# On a lent GPU machine (the device tool, carry .devsite), detached with setsid so that it outlives the call that
# starts it: issue 20's measurements one after the other, nothing else on the machine:
#   cu  `benchmarks/cuda_startup.py`: CUDA's per-process start-up in forks, one process and 16 at once;
#   md  `benchmarks/mace_data.py`: identity_100's MACE training images drawn per concept and all together;
#   ft  `benchmarks/finetune.py --arch toy`: the toy world's LoRA and full fine-tune steps alone on the GPU, with a
#       profile of their kernels (a step's wall time against its kernel time: does the host hold it up?);
#   a   the default study timed (`benchmarks/study.py`, `all`) as the README runs it: the default profile, every
#       core (tools/device/study_detached.sh PLAIN=1: gpu_jobs_per_device jobs sharing the GPU at
#       gpu_job_threads threads each);
#   b   the same again, for the spread between two runs on one machine; with SLOTS_B set, SLOTS_B jobs sharing
#       the GPU at ${THREADS_B:-1} thread(s) each instead (tools/device/site.sh's shared_gpu_args); with MPS_B=1,
#       the README's command through a CUDA MPS server of its own (study_detached.sh's MPS=1, row study_mps).
#   k8  `benchmarks/fp8_kernels.py --arch sd14`: SD v1.4's convolutions and linear layers one by one, bf16 against
#       FP8 (issue 22);
#   g8  `benchmarks/generation.py --arch sd14 --baseline` at the preset's settings with CONV_FP8 (default row) and
#       LINEAR_FP8 (default none), G8_IMAGES (default 128) images timed: the engine beside the plain compiled
#       pipeline, one process (issue 22).
# PARTS (default "cu md ft a b") picks the parts and their order.
# Each part runs in its own copy of the checkout (a later call re-copies the one it was started from).
# /tmp/speed_round/stage says where it is.
#   setsid bash tools/device/speed_round.sh > /tmp/speed_round.log 2>&1 < /dev/null &
# A later call: `bash tools/device/speed_round.sh collect` waits up to $WAIT_S for what is not yet packed,
# then packs into $OUT each finished part not packed by an earlier call (at most 4 files a call).
set -uo pipefail
R=/tmp/speed_round
mkdir -p "$R"
if [ "${1:-}" = collect ]; then
  end=$(( $(date +%s) + ${WAIT_S:-0} ))
  while [ "$(date +%s)" -lt "$end" ] && ! grep -q '^done' "$R/stage" 2>/dev/null; do
    # stop waiting as soon as a part finishes that no call has packed
    for part in a md ft b k8 g8; do grep -q "^$part " "$R/stage" 2>/dev/null && [ ! -e "$R/packed.$part" ] && break 2; done
    sleep 5
  done
  cat "$R/stage" "$R"/*/times.log 2>/dev/null
  for part in a b; do
    grep -q "^$part " "$R/stage" 2>/dev/null && [ ! -e "$R/packed.$part" ] || continue
    (cd "$R/$part/repo" && { find results .snakemake/metadata -type f \( -name '*.csv' -o -name '*.json' \
      -o -name '*.tsv' -o -name '*.jsonl' -o -path '*metadata*' \) -size -2048k; \
      find results/metrics results/tables -type f -name '*.csv' -size +2047k; } \
      | tar czf "$OUT/${part}_tables.tgz" -T - logs 2>/dev/null)
    [ "$part" = a ] && tar cf "$OUT/a_figures.tar" -C "$R/a/repo" results/figures results/report* 2>/dev/null
    touch "$R/packed.$part"
  done
  for part in md ft k8 g8; do
    if grep -q "^$part " "$R/stage" 2>/dev/null && [ ! -e "$R/packed.$part" ]; then touch "$R/packed.$part"; fi
  done
  # the benchmark rows and logs of every part so far, each call
  tar cf "$OUT/rows.tar" -C "$R" $(cd "$R" && ls -d stage ./*.log ./*/bench.log ./*/times.log ./*/gpu.txt \
    ./*/repo/benchmarks/results.jsonl ./bench/benchmarks/results.jsonl 2>/dev/null)
  ls -la "$OUT"
  exit 0
fi
stamp() { echo "$1 $(date +%s)" >> "$R/stage"; }
echo "start $(date +%s)" > "$R/stage"
rm -rf "$R/bench" && mkdir -p "$R/bench" && tar cf - --exclude=./.devsite --exclude=./.whl . | tar xf - -C "$R/bench"
bench() {  # bench SECONDS SCRIPT ARGS...: a benchmark script in the copy, with the packed site
  local secs=$1
  shift
  (
    # shellcheck source=tools/device/site.sh
    source tools/device/site.sh && cd "$R/bench" && export PYTHONPATH="$PWD${PYTHONPATH#"$OLDPWD"}" \
      && timeout "$secs" python3 "$@"
  )
}
run_part() {
  case $1 in
    cu) bench 240 benchmarks/cuda_startup.py --procs 1 16 > "$R/cu.log" 2>&1 ;;
    md) bench 300 benchmarks/mace_data.py --task identity_100 > "$R/md.log" 2>&1 ;;
    ft) bench 240 benchmarks/finetune.py --arch toy --methods lora full --steps 100 --batch 8 --profile-steps 5 \
      > "$R/ft.log" 2>&1 ;;
    k8) bench 400 benchmarks/fp8_kernels.py --arch sd14 --batch 32 > "$R/k8.log" 2>&1 ;;
    g8) bench 590 benchmarks/generation.py --arch sd14 --steps 50 --guidance 7.5 --dtype bfloat16 --batch 32 \
      --channels-last --compile default --images "${G8_IMAGES:-128}" --reference 4 --baseline --conv-fp8 "${CONV_FP8:-row}" \
      --linear-fp8 "${LINEAR_FP8:-none}" --label "engine, conv_fp8 ${CONV_FP8:-row}, linear_fp8 ${LINEAR_FP8:-none}, \
beside the plain compiled pipeline" > "$R/g8.log" 2>&1 ;;
    a) W=$R/a PLAIN=1 BENCH=study_default_profile DEADLINE_S=590 bash tools/device/study_detached.sh > "$R/a.log" 2>&1 ;;
    b)
      if [ -n "${SLOTS_B:-}" ]; then
        W=$R/b SLOTS=$SLOTS_B THREADS=${THREADS_B:-1} BENCH="study_${SLOTS_B}x${THREADS_B:-1}" DEADLINE_S=590 \
          bash tools/device/study_detached.sh > "$R/b.log" 2>&1
      elif [ -n "${MPS_B:-}" ]; then
        W=$R/b PLAIN=1 MPS=1 BENCH=study_mps DEADLINE_S=590 bash tools/device/study_detached.sh > "$R/b.log" 2>&1
      else
        W=$R/b PLAIN=1 BENCH=study_default_profile DEADLINE_S=590 bash tools/device/study_detached.sh > "$R/b.log" 2>&1
      fi
      ;;
    *) echo "unknown part $1" >&2 ;;
  esac
  stamp "$1"
}
for part in ${PARTS:-cu md ft a b}; do run_part "$part"; done
stamp done
