#!/usr/bin/env bash
# Multi-GPU scaling of the study's generation jobs (issue #6). The same Snakemake jobs (the SD v1.4
# preset's base-model generation for $TASKS, on random-weight stand-ins of its models, counts of
# tools/device/sd14_jobs.yaml but 5 images per object prompt; each task's base images drawn by a job of
# its own, share_base_images: false) run with --resources gpu=1 and then gpu=$NGPU on one node. Each job claims a GPU of its own (resurgence.gpus) and logs it; every run
# starts from empty outputs and an empty inductor cache, so both compile alike.
# Usage (device tool, a multi-GPU kind, carry .devsite):  bash tools/device/scaling.sh
# Env: TASKS (default "object_ship object_automobile"), NGPU (default: the GPUs nvidia-smi lists),
#      SCALE=tiny with EXTRA=<overlay> for a CPU rehearsal, MODELS (stand-ins folder).
set -uo pipefail
if [ "${SCALE:-full}" = full ]; then
  # shellcheck source=tools/device/site.sh
  source tools/device/site.sh || exit 1
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-/tmp/scaling-out}; mkdir -p "$out"
models=${MODELS:-/tmp/sd14-standins}
tasks=${TASKS:-object_ship object_automobile}
ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
[ "$ngpu" -ge 2 ] || { echo "scaling needs NGPU >= 2 (found $ngpu)"; exit 2; }
[ -f "$models/models.yaml" ] || python3 -m resurgence.models.standins "$models" --scale "${SCALE:-full}" \
  > "$out/standins.log" 2>&1 || { tail -5 "$out/standins.log"; exit 1; }
printf 'share_base_images: false\nevaluation:\n  images_per_prompt: {identity: 1, object: 5}\n' > /tmp/scaling-counts.yaml
targets=""; for t in $tasks; do targets="$targets results/images/$t/base/index.jsonl"; done
for g in 1 "$ngpu"; do
  for t in $tasks; do
    rm -rf "results/images/$t/base" "results/base_pool/task-$t" "results/benchmarks/generate/base_pool/task-$t.tsv" \
      "logs/generate/base_pool/task-$t.log"
  done
  export TORCHINDUCTOR_CACHE_DIR; TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
  start=$(date +%s%N)
  # shellcheck disable=SC2086
  python3 -m snakemake $targets --profile workflow/profiles/default --configfile config.yaml config.sd14.yaml \
    tools/device/sd14_jobs.yaml /tmp/scaling-counts.yaml "$models/models.yaml" ${EXTRA:-} \
    --cores $((4 * g)) --resources gpu="$g" > "$out/snakemake_gpu$g.log" 2>&1 || { tail -20 "$out/snakemake_gpu$g.log"; exit 1; }
  wall=$(( ($(date +%s%N) - start) / 1000000 ))  # ms, in shell arithmetic (no bc on a bare machine)
  echo "gpu=$g: $wall ms"
  grep -h "pinned to GPU" logs/generate/base_pool/*.log 2>/dev/null | sed "s/^/  gpu=$g /" | cut -c1-120
  python3 - "$g" "$wall" $tasks <<'PY' >> "$out/runs.jsonl"
import json, sys
from pathlib import Path
g, wall, tasks = int(sys.argv[1]), int(sys.argv[2]) / 1000, sys.argv[3:]
images = sum(len(Path(f"results/images/{t}/base/index.jsonl").read_text().splitlines()) for t in tasks)
job_s = {t: float(Path(f"results/benchmarks/generate/base_pool/task-{t}.tsv").read_text().splitlines()[1].split()[0])
         for t in tasks}
print(json.dumps(dict(gpus=g, wall_s=round(wall, 1), images=images, job_seconds=job_s)))
PY
done
cat "$out/runs.jsonl"
cd benchmarks && python3 - "$out/runs.jsonl" "$tasks" <<'PY'
import json, sys
from common import record  # noqa: E402  (benchmarks/ is the working directory)
runs = [json.loads(line) for line in open(sys.argv[1])]
one, many = runs[0], runs[-1]
record("scaling", dict(arch="sd14", jobs=sys.argv[2].split(), runs=runs,
                       speedup=round(one["wall_s"] / many["wall_s"], 3), gpus=many["gpus"]))
PY
cp results.jsonl "$out/results.jsonl"
