#!/usr/bin/env bash
# A device call after tools/device/study_detached.sh (or clip_and_study.sh, with W=/tmp/clip_and_study):
# wait until its stage is `done` or $WAIT_S seconds have passed, then pack into $OUT what it made:
# tables.tgz (the results' CSV/JSON/TSV files under 2 MB, every metric table, the logs and Snakemake's
# metadata of $W/repo: seconds to pack, where compressing everything but weights and images outran a
# 10-minute call), world.tar (the toy world as shipped there, the CLIP runs' manifests, the driver's
# logs, the benchmark rows), the retrained world's ship.tar.part-* (WORLD=1), figures.tar (the figures and the report) and grids.tar.part-* (the image grids; cat them into one tar).
set -uo pipefail
W=${W:-/tmp/study_detached}
end=$(( $(date +%s) + ${WAIT_S:-0} ))
while [ "$(date +%s)" -lt "$end" ] && ! grep -q '^done' "$W/stage" 2>/dev/null; do sleep 5; done
cat "$W/stage" "$W/times.log" 2>/dev/null
cd "$W/repo" || exit 1
# Every metric table whatever its size (identity_100's run to 1-4 MB; a size cut lost them on 2026-12-04).
# Sizes in KiB: find rounds sizes up to the unit, so -2M and +2M both skip files of 1-2 MiB (lost that way later
# the same day); -2048k and +2047k split at 2 MiB with nothing in between.
{ find results .snakemake/metadata -type f \( -name '*.csv' -o -name '*.json' -o -name '*.tsv' -o -name '*.jsonl' \
  -o -path '*metadata*' \) -size -2048k; find results/metrics results/tables -type f -name '*.csv' -size +2047k; } \
  | tar czf "$OUT/tables.tgz" -T - logs 2>/dev/null
tar cf "$OUT/world.tar" -C "$W" $(cd "$W" && ls -d ./*.log ./*.json ./*.txt ./stage ./run_*/manifest.json ./run_*/clip/metrics.json 2>/dev/null) \
  -C "$W/repo" resources/toyworld/manifest.json resources/toyworld/clip benchmarks/results.jsonl
cp "$W"/world/ship.tar.part-* "$OUT/" 2>/dev/null
tar cf "$OUT/world_run.tar" -C "$W/world" $(cd "$W/world" 2>/dev/null && ls -d ./*.log ./*.json ./accepted ./stage ./run_*/manifest.json 2>/dev/null) 2>/dev/null
tar cf "$OUT/figures.tar" results/figures results/report* 2>/dev/null
# in parts of 15 MiB (the device tool returns no file over 16 MiB; the study's grids reach 19 MiB)
find results/images -name grid.png 2>/dev/null | tar cf - -T - | split -b 15M - "$OUT/grids.tar.part-"
ls -la "$OUT"; tail -3 "$W"/phase*.log 2>/dev/null
