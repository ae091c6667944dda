#!/usr/bin/env bash
# Paper-scale benchmarks on a lent GPU (device tool, carry .whl): SD v1.4's architecture at random
# weights. Rows are appended to benchmarks/results.jsonl, which is copied to $OUT.
#   WHAT="generation" bash tools/device/bench_sd14.sh      (generation | erase | finetune | inductor, several allowed)
# inductor: where the compiled UNet loses to eager kernels (docs/generation_speed.md): does cuDNN
# attention run inside the compiled graph, and do inductor's layout and 1x1-convolution settings
# bring its convolutions to eager cuDNN's rate. Profiles of one guided step, about 2 min each.
# ERASE_ARGS / ERASE_TIMEOUT_S override the erase benchmark's arguments and time limit.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
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
    inductor)
      P="python3 unet_profile.py --arch sd14 --batch 32 --compile default"
      timeout 170 $P --attention cudnn --label "compiled, traced under cuDNN attention"
      timeout 170 $P --attention flash --inductor layout_optimization=False --label "compiled, no layout optimisation"
      timeout 170 $P --attention flash --inductor conv_1x1_as_mm=True --label "compiled, 1x1 convolutions as matmuls" ;;
    erase)
      # shellcheck disable=SC2086
      timeout "${ERASE_TIMEOUT_S:-330}" python3 erase.py --arch sd14 --task identity_100 ${ERASE_ARGS:---images-per-concept 2 --data-steps 20} ;;
    finetune)
      timeout 170 python3 finetune.py --arch sd14 --methods lora full --steps 10 --batch 8 --mixed-precision bf16 ;;
  esac
done
tail -n +$((before + 1)) results.jsonl > "$OUT/results_new.jsonl"
wc -l "$OUT/results_new.jsonl"
