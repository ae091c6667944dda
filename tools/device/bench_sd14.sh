#!/usr/bin/env bash
# Paper-scale benchmarks on a lent GPU (device tool, carry .devsite or .whl): SD v1.4's architecture at random
# weights. Rows are appended to benchmarks/results.jsonl, which is copied to $OUT.
#   WHAT="generation" bash tools/device/bench_sd14.sh      (generation | erase | finetune | variants, several allowed)
# variants: the compiled UNet with cuDNN attention kept by the engine's operator and with frozen
# weights (profiles of one guided step), and the whole pipeline with them; run side by side, ~6 min.
# ERASE_ARGS / ERASE_TIMEOUT_S override the erase benchmark's arguments and time limit.
set -uo pipefail
# The packed site (carry .devsite; tools/device/pack_site.sh) fits beside the tracked files where
# the wheels (carry .whl) no longer do.
if [ -f .devsite/site312.tar.xz ]; then
  tar -xJf .devsite/site312.tar.xz -C /tmp && site=/tmp/site312
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  site=/tmp/site
fi
export PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
before=$(wc -l < benchmarks/results.jsonl)
cd benchmarks
for what in ${WHAT:-generation erase finetune}; do
  case $what in
    generation)
      G="python3 generation.py --arch sd14 --steps 50 --guidance 7.5"
      timeout 120 $G --dtype float16 --batch 16 --images 32 --label "plain diffusers settings: fp16, batch 16"
      timeout 120 $G --dtype bfloat16 --batch 32 --channels-last --images 64 --label "bf16, channels-last, eager"
      timeout 240 $G --dtype bfloat16 --batch 32 --channels-last --compile default --images 128 --reference 4 \
        --label "bf16, channels-last, torch.compile"
      timeout 240 $G --dtype bfloat16 --batch 32 --channels-last --compile reduce-overhead --images 128 \
        --label "bf16, channels-last, torch.compile + CUDA graphs" ;;
    variants)
      # Side by side: each compiles with cuDNN autotuning off and waits for the others (--parties),
      # then autotunes and times alone (--lock), so compiles overlap and timings see no other work.
      # SET=engine: the operator and frozen weights in the UNet profile and the pipeline;
      # SET=pipeline: the pipeline with PyTorch's attention choice, the operator, CUDA graphs.
      L=/tmp/gpu.lock; rm -rf $L $L.ready
      N=$([ "${SET:-engine}" = engine ] && echo 6 || echo 5)
      P="python3 unet_profile.py --arch sd14 --batch 32 --compile default --lock $L --parties $N"
      G="python3 generation.py --arch sd14 --steps 50 --guidance 7.5 --dtype bfloat16 --channels-last \
        --images 128 --lock $L --parties $N"
      O="--attention cudnn --operator"
      F="--inductor freezing=True"
      case ${SET:-engine} in
        engine) V=(
          "$P $O --label 'compiled, cuDNN attention through the operator'"
          "$P $O $F --label 'compiled, operator, frozen weights'"
          "$P --attention flash $F --label 'compiled, frozen weights (PyTorch attention choice)'"
          "$G --compile default --batch 32 --attention cudnn --reference 4 --label 'compiled, operator (batch 32)'"
          "$G --compile default --batch 32 --attention cudnn --freeze --reference 4 --label 'compiled, operator, frozen weights (batch 32)'"
          "$G --compile default --batch 64 --attention cudnn --freeze --label 'compiled, operator, frozen weights (batch 64)'"
        ) ;;
        pipeline) V=(
          "$P --attention flash --label 'compiled (PyTorch attention choice)'"
          "$G --compile default --batch 32 --label 'compiled, PyTorch attention choice (batch 32)'"
          "$G --compile default --batch 32 --attention cudnn --label 'compiled, operator (batch 32)'"
          "$G --compile reduce-overhead --batch 32 --attention cudnn --label 'compiled with CUDA graphs, operator (batch 32)'"
          "$G --compile default --batch 32 --attention cudnn --freeze --label 'compiled, operator, frozen weights (batch 32)'"
        ) ;;
      esac
      i=0
      for v in "${V[@]}"; do i=$((i + 1)); eval "timeout 540 $v" > /tmp/v$i.log 2>&1 & done
      wait
      for f in /tmp/v?.log; do echo "== $f"; grep -E "Error|error:" "$f" | tail -3; done ;;
    erase)
      # shellcheck disable=SC2086
      timeout "${ERASE_TIMEOUT_S:-330}" python3 erase.py --arch sd14 --task identity_100 ${ERASE_ARGS:---images-per-concept 2 --data-steps 20} ;;
    finetune)
      timeout 170 python3 finetune.py --arch sd14 --methods lora full --steps 10 --batch 8 --mixed-precision bf16 ;;
  esac
done
tail -n +$((before + 1)) results.jsonl > "$OUT/results_new.jsonl"
wc -l "$OUT/results_new.jsonl"
