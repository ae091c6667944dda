#!/usr/bin/env bash
# Paper-scale benchmarks on a lent GPU (device tool, carry .devsite or .whl): SD v1.4's architecture at random
# weights. Rows are appended to benchmarks/results.jsonl, which is copied to $OUT.
#   WHAT="generation" bash tools/device/bench_sd14.sh      (generation | baseline | fp8 | erase | finetune | variants, several allowed)
# variants: profiles of one compiled guided step under flash and cuDNN attention, and the whole
# pipeline compiled (PyTorch's attention choice, cuDNN preferred, CUDA graphs); side by side, ~5 min.
# ERASE_ARGS / ERASE_TIMEOUT_S override the erase benchmark's arguments and time limit.
set -uo pipefail
# shellcheck source=tools/device/site.sh
source tools/device/site.sh || exit 1
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
      L=/tmp/gpu.lock; rm -rf $L $L.ready
      P="python3 unet_profile.py --arch sd14 --batch 32 --compile default --lock $L --parties 6"
      G="python3 generation.py --arch sd14 --steps 50 --guidance 7.5 --dtype bfloat16 --channels-last \
        --batch 32 --images 128 --lock $L --parties 6"
      V=(
        "$P --attention flash --label 'compiled, traced under flash attention'"
        "$P --attention cudnn --label 'compiled, traced under cuDNN attention'"
        "$P --attention default --label 'compiled, traced under PyTorch attention choice'"
        "$G --compile default --reference 4 --label 'compiled, PyTorch attention choice'"
        "$G --compile default --attention cudnn --label 'compiled, cuDNN attention preferred'"
        "$G --compile reduce-overhead --label 'compiled with CUDA graphs'"
      )
      i=0
      for v in "${V[@]}"; do i=$((i + 1)); eval "timeout 540 $v" > /tmp/v$i.log 2>&1 & done
      wait
      for f in /tmp/v?.log; do echo "== $f"; grep -E "Error|error:" "$f" | tail -3; done ;;
    baseline | fp8)
      # The engine at the preset's settings against the plain compiled pipeline, one process (issue 22);
      # fp8: with the UNet's linear layers in FP8 ($FP8 scales: row or tensor; resurgence.generate.fp8)
      fp8=none; [ "$what" = fp8 ] && fp8=${FP8:-row}
      timeout 540 python3 generation.py --arch "${ARCH:-sd14}" --steps 50 --guidance 7.5 --dtype bfloat16 --batch 32 \
        --channels-last --compile default --images 128 --reference 4 --baseline --linear-fp8 "$fp8" \
        --label "engine at the preset's settings (linear_fp8 $fp8), beside the plain compiled pipeline" ;;
    erase)
      # shellcheck disable=SC2086
      # 100 concepts, 1 image each at 20 steps, 20 LoRA steps each: ~430 s on an H100, then the FLOP count
      timeout "${ERASE_TIMEOUT_S:-540}" python3 erase.py --arch sd14 --task identity_100 \
        ${ERASE_ARGS:---images-per-concept 1 --data-steps 20 --lora-steps 20} ;;
    finetune)
      # cached encodings (the trainer's): LoRA with peft's input casts and without them (the trainer's), and
      # full, each profiled over 3 steps (issue 22: why a LoRA step is slower than a full one on a GPU);
      # FINETUNE_ARGS="--encodings both" times encoding every step too (the 2026-12-05 run ran out of time)
      # shellcheck disable=SC2086
      timeout 480 python3 finetune.py --arch sd14 --methods lora full --steps 10 --batch 8 --mixed-precision bf16 \
        --profile-steps 3 ${FINETUNE_ARGS:---encodings cached --peft-input-casts both} ;;
  esac
done
tail -n +$((before + 1)) results.jsonl > "$OUT/results_new.jsonl"
wc -l "$OUT/results_new.jsonl"
