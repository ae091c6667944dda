#!/usr/bin/env bash
# A device call after tools/device/clip_and_study.sh: wait until its stage is `done` or $WAIT_S seconds
# have passed, then pack into $OUT what it made: study.tar.xz.part-* (results, logs and Snakemake's
# metadata of $W/repo, no weights or images), world.tar (the toy world as shipped there, the CLIP runs'
# manifests, the driver's logs) and grids.tar (the image grids).
set -uo pipefail
W=${W:-/tmp/clip_and_study}
end=$(( $(date +%s) + ${WAIT_S:-0} ))
while [ "$(date +%s)" -lt "$end" ] && ! grep -q '^done' "$W/stage" 2>/dev/null; do sleep 5; done
cat "$W/stage" "$W/times.log" 2>/dev/null
cd "$W/repo" || exit 1
tar cJf - --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' --exclude='*.png' results logs .snakemake/metadata \
  2>/dev/null | split -b 15M - "$OUT/study.tar.xz.part-"
tar cf "$OUT/world.tar" -C "$W" $(cd "$W" && ls -d ./*.log ./*.json ./*.txt ./stage ./run_*/manifest.json ./run_*/clip/metrics.json 2>/dev/null) \
  -C "$W/repo" resources/toyworld/manifest.json resources/toyworld/clip
find results/images -name grid.png 2>/dev/null | tar cf "$OUT/grids.tar" -T -
ls -la "$OUT"; tail -3 "$W"/phase*.log 2>/dev/null
