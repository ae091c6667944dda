#!/usr/bin/env bash
# Build .devsite/site312.tar.xz: a Python 3.12 site folder with Snakemake, pandas and the study's
# libraries (from the py3.12 wheels in .whl/, see the device README), for tools/device/study_gpu.sh.
# The lent machine has torch, numpy, safetensors, huggingface_hub but none of these. Plotting
# libraries stay out (figures are drawn here), as do pulp's solvers, pandas' tests
# and most of transformers' model folders, to keep what travels under the device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
pkgs=(snakemake==9.27.1 argparse-dataclass==2.0.0 conda-inject==1.3.2 ConfigArgParse==1.9.0 docutils==0.22.4
  dpath==2.2.0 fastjsonschema==2.22.3 gitdb==4.0.12 GitPython==3.2.1 humanfriendly==10.0 immutables==0.21
  jupyter_core==5.9.1 nbformat==5.11.1 platformdirs==4.14.7 psutil==7.2.2 PuLP==3.3.2 smart_open==7.7.1
  smmap==5.0.3 snakemake-interface-common==1.23.0 snakemake-interface-executor-plugins==9.4.0
  snakemake-interface-logger-plugins==2.1.0 snakemake-interface-report-plugins==1.3.0
  snakemake-interface-scheduler-plugins==2.0.2 snakemake-interface-storage-plugins==4.4.1 tabulate==0.10.0
  throttler==1.2.3 traitlets==5.15.0 wrapt==2.1.2 yte==1.9.4 reretry sqlmodel==0.0.37 tenacity==9.2.1
  SQLAlchemy==2.0.58 pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection greenlet
  typing-extensions requests urllib3 idna charset-normalizer certifi jinja2 markupsafe pyyaml
  pandas==3.1.1 python-dateutil six tzdata
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 attrs==26.1.0)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
work=$(mktemp -d)
for p in "${pkgs[@]}"; do python3 -m pip download -q --no-deps "${plat[@]}" -d "$work/whl" "$p"; done
python3 -m pip wheel -q --no-deps connection_pool==0.0.3 -w "$work/whl"  # published as an sdist only
python3 -m pip install -q --no-deps --no-compile "${plat[@]}" --target "$work/site312" "$work"/whl/*.whl .whl/*.whl
rm -rf "$work"/site312/pulp/solverdir/cbc/{osx,win,linux/arm64,linux/i32} "$work/site312/pandas/tests"
find "$work/site312" -name __pycache__ -prune -exec rm -rf {} +
# transformers' model folders but those the study imports (the toy world and SD's loaders) and pulp's
# solver (study_gpu.sh schedules greedily): with the toy models, what travels stays under 64 MiB.
keep=" align auto bloom clip dinov2_with_registers encoder_decoder siglip vit_mae bert grounding_dino swin sam t5 gpt2 llama "
for d in "$work"/site312/transformers/models/*/; do
  n=$(basename "$d"); [[ "$keep" == *" $n "* ]] || rm -rf "$d"
done
rm -rf "$work/site312/pulp/solverdir"
mkdir -p .devsite
tar -cf - -C "$work" site312 | xz -T0 -6 > .devsite/site312.tar.xz
rm -rf "$work"
ls -la .devsite/site312.tar.xz
