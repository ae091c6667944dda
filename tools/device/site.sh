# Sourced by the device scripts: puts the Python packages a lent machine lacks on PYTHONPATH, after the
# checkout: the packed site (carry .devsite; tools/device/pack_site.sh), else the wheels (carry .whl).
# Where neither travelled the installed environment is used as it is. The site is unpacked once per machine
# (its marker file), so that drivers started side by side never rewrite files another one is importing.
_site=""
if [ -f /tmp/site312/.unpacked ]; then
  _site=/tmp/site312
elif [ -f .devsite/site312.tar.xz ]; then
  # compiled to bytecode once, as pip does at install: otherwise the first run's imports compile it (the fork
  # server's preload took 20.5 s on an H100 so, inside the timed study)
  tar -xJf .devsite/site312.tar.xz -C /tmp && { python3 -m compileall -q -j 0 /tmp/site312 > /dev/null || true; } \
    && touch /tmp/site312/.unpacked && _site=/tmp/site312 || return 1
elif compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && _site=/tmp/site || return 1
fi
export PYTHONPATH="$PWD${_site:+:$_site}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# study_config NAME: the JSON of resurgence.study.NAME(config) for this checkout's config.yaml.
study_config() {
  python3 -c "import json; from resurgence import study; from resurgence.config import load_config; \
print(json.dumps(study.$1(load_config(['config.yaml']))))"
}

# shared_gpu_args: the Snakemake options (after --cores) with which ${SLOTS:-8} jobs share the machine's one
# GPU, ${THREADS:-2} threads each. Memory is set so that it never binds before the slots do: the rules declare up
# to 16 GB a job (for the SD presets); with the 110 GB of 2026-12-06 a run of 16 slots held 12 jobs at most.
shared_gpu_args() {
  local t=${THREADS:-2} rule sets=""
  for rule in erase finetune generate_base generate_base_pool generate_erased generate_finetuned ftdata_random \
    ftdata_tercile evaluate reversion toyworld_quality toyworld_variant; do sets="$sets $rule=$t"; done
  # shellcheck disable=SC2086
  echo --profile workflow/profiles/default --scheduler greedy --set-threads $sets \
    --resources gpu="${SLOTS:-8}" mem_mb=$((${SLOTS:-8} * 16000))
}

# study_cores: the --cores that give each of the ${SLOTS:-8} jobs its ${THREADS:-2} threads.
study_cores() { echo $((${SLOTS:-8} * ${THREADS:-2})); }

# gpu_snakemake SECONDS LOG ARGS...: Snakemake on ARGS with `shared_gpu_args` (CUDA_VISIBLE_DEVICES set so
# no job claims a device of its own), stopped with SIGINT after SECONDS (Snakemake then removes its
# incomplete outputs); appends to LOG and returns its status.
gpu_snakemake() {
  local secs=$1 log=$2
  shift 2
  # shellcheck disable=SC2046
  CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0} timeout --signal=INT "$secs" python3 -m snakemake "$@" \
    --cores "$(study_cores)" $(shared_gpu_args) --keep-going >> "$log" 2>&1
}
