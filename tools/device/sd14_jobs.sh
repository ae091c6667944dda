#!/usr/bin/env bash
# The SD v1.4 preset's jobs through Snakemake on random-weight stand-ins of its models
# (resurgence.models.standins: SD v1.4, CLIP ViT-L/14, Grounding DINO + SAM ViT-H; the CLIP zero-shot
# identifier as detector): one erase (object_ship), its fine-tune set, a LoRA fine-tune and the
# fine-tuned model's generation, at the counts of tools/device/sd14_jobs.yaml.
# Usage (device tool, carry .devsite):  bash tools/device/sd14_jobs.sh
# Env: ARCH (default sd14; sd21_base runs the SD v2.1 preset, config.sd21.yaml, on stand-ins of
#      stable-diffusion-2-1-base and OpenCLIP ViT-H/14; sd21 on stand-ins of the 768 px v-prediction
#      stable-diffusion-2-1, with tools/device/sd21_768.yaml), TARGET (default the fine-tuned model's images; results/images/object_ship/default/erased/index.jsonl
#      stops at the erased model's), SCALE=tiny (a CPU rehearsal with tiny models; add EXTRA="configfile" to shrink sampling),
#      MODELS (where the stand-ins go, default /tmp/$ARCH-standins), LIMIT_S (default 480),
#      GPU_JOBS (default 1: how many jobs share the GPU; TARGET may then name several outputs).
set -uo pipefail
if [ "${SCALE:-full}" = full ]; then
  # shellcheck source=tools/device/site.sh
  source tools/device/site.sh || exit 1
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
out=${OUT:-/tmp/sd14-jobs-out}; mkdir -p "$out"
arch=${ARCH:-sd14}
configs="config.yaml config.sd14.yaml"
case $arch in
  sd14) ;;
  sd21_base) configs+=" config.sd21.yaml" ;;
  sd21) configs+=" config.sd21.yaml tools/device/sd21_768.yaml" ;;
  *) echo "ARCH: allowed values: sd14, sd21_base, sd21 (got $arch)" >&2; exit 2 ;;
esac
models=${MODELS:-/tmp/$arch-standins}
target=${TARGET:-results/images/object_ship/default/random_object/lora/step-20/index.jsonl}
start=$(date +%s)
# shellcheck disable=SC2086
python3 -m resurgence.models.standins "$models" --scale "${SCALE:-full}" --arch "$arch" --configfile $configs || exit 1
echo "stand-ins written in $(( $(date +%s) - start )) s"; du -sh "$models"
jobs=${GPU_JOBS:-1}
# shellcheck disable=SC2086
timeout --signal=INT "${LIMIT_S:-480}" python3 -m snakemake $target --profile workflow/profiles/default \
  --configfile $configs tools/device/sd14_jobs.yaml "$models/models.yaml" ${EXTRA:-} \
  --cores $((4 * jobs)) --resources gpu="$jobs" > "$out/snakemake.log" 2>&1
rc=$?
echo "snakemake exit $rc; wall time since start: $(( $(date +%s) - start )) s" | tee -a "$out/snakemake.log"
grep -E "steps \(|Finished job|Error|error" "$out/snakemake.log" | cut -c1-300 | tail -20
# The jobs' timings, reports and logs (the images and grids of noise from random weights are tens of MB: left out)
find results/benchmarks results/erase results/finetune results/ftdata results/images logs -type f -size -2M \
  \( -name '*.tsv' -o -name '*.json' -o -name '*.jsonl' -o -name '*.log' \) 2>/dev/null \
  | tar cf "$out/${arch}_jobs.tar" -T -
ls -la "$out/${arch}_jobs.tar"
exit $rc
