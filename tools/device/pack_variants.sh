#!/usr/bin/env bash
# A device call after tools/device/study_detached.sh ran a world variant (`snakemake
# results/variants/<name>/manifest.json`, or a control that needs one): pack into $OUT what the 2-core
# machine needs to run the rest of that control itself, as variants.tar.part-* (cat them into one tar and
# untar it in a clone of the same commit; Snakemake then reuses the variant). The device returns at most
# 8 files of 16 MiB, 64 MiB in all: a variant's folder with its training checkpoints is 456 MiB
# (2026-12-06: a pack of everything came back cut at 60 MiB, its manifest lost), the model alone 27 MiB.
# So the checkpoints stay behind, and the small files go first (manifest, training log, Snakemake's
# metadata and the job's log), so that a pack cut short still holds the provenance.
set -uo pipefail
W=${W:-/tmp/study_detached}
cd "$W/repo" || exit 1
{
  find results/variants -maxdepth 2 -type f \( -name '*.json' -o -name '*.png' \)
  find .snakemake/metadata -type f
  find logs/toyworld results/benchmarks/toyworld -type f -name 'variant_*'
  find results/variants -mindepth 2 -type f -path '*/t2i/*'
} 2>/dev/null | tar cf - -T - | split -b 15M - "$OUT/variants.tar.part-"
n=$(find "$OUT" -name 'variants.tar.part-*' | wc -l)
ls -la "$OUT"
[ "$n" -le 4 ] || echo "pack_variants: $n parts of 15 MiB: more than the 64 MiB the device returns" >&2
