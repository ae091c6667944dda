#!/usr/bin/env bash
# The metric files of the erasure-efficacy sweep (tools/device/efficacy_sweep.yaml): base and erased states.
# ROUND=1: the first sweep (cache weights); ROUND=2: identity_5 / identity_100 follow-up; ROUND=3: identity_100, lambda1 0;
# ROUND=4: objects on 5 images per prompt, identity_10; ROUND=5: ship at lower weights;
# ROUND=6: every identity task on 5 images per prompt (with efficacy_precise.yaml), and the closed form alone.
# ROUND=7: the text encoder with name knowledge (t2i.knowledge_spans): every erasure task, 5 images per prompt,
#          and identity_10 / identity_100 at larger in-domain cache weights.
# ROUND=8: identity tasks at MACE's published cache weight and above (identity_100 by the closed form alone:
#          its LoRA stage alone takes 385 s of a 545 s device call).
# ROUND=9: object_5 at lower cache weights (it erased 11% at 400 with the name-knowledge text encoder).
# ROUND=10: the calibrated world (knowledge shared 0.83): identity_1 at x1/x3/x10 (CPU runs it), identity_100
#           by the closed form alone at x10/x30/x100 and by full MACE at x30 (GPU).
# ROUND=11: across concepts (with efficacy_concepts.yaml): every CIFAR-10 object alone at weights 50 and 800,
#           five single identities at x1/x3; identity_100 at x30 (full MACE and the closed form alone).
# ROUND=12: (CPU) the closed forms' null-direction threshold: identity_1 at the old rcond 1e-12 and at
#           refine.NULL_RCOND (default), and the single identities that missed the retained gate at x1.
# ROUND=13: (CPU) dog and horse, which ground's images are judged as, at their mapping "an object".
# ROUND=14: (CPU, with efficacy_one_seed.yaml alone) identity_100 at its default settings after refine.NULL_RCOND.
# ROUND=15: (CPU, with efficacy_sweep.yaml, efficacy_precise.yaml and efficacy_one_seed.yaml) identity_5 at x3.
# ROUND=18: (CPU, with sampler_ddim15.yaml) every erasure task of the default study, base and default erasure,
#           sampled (and MACE's training images drawn) by DDIM at 15 steps instead of 25 (issue 20).
if [ "${ROUND:-1}" = 1 ]; then
  for t in identity_5 identity_100; do
    echo "results/metrics/$t/base/tidy.csv"
    for v in default dws0.05 dws0.2 dws0.4; do echo "results/metrics/$t/$v/erased/tidy.csv"; done
  done
  for t in object_ship object_5; do
    echo "results/metrics/$t/base/tidy.csv"
    for v in default w200 w400 w1600; do echo "results/metrics/$t/$v/erased/tidy.csv"; done
  done
elif [ "${ROUND}" = 2 ]; then
  for v in dws0.3 dws0.4_s100 dws0.6_s100; do echo "results/metrics/identity_5/$v/erased/tidy.csv"; done
  for v in dws0.2 dws0.4; do echo "results/metrics/identity_100/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 4 ]; then
  for t in object_ship object_5; do
    echo "results/metrics/$t/base/tidy.csv"
    for v in w100 w200 w400; do echo "results/metrics/$t/$v/erased/tidy.csv"; done
  done
  echo "results/metrics/identity_10/base/tidy.csv"
  for v in dws0.15 dws0.2; do echo "results/metrics/identity_10/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 5 ]; then
  echo "results/metrics/object_ship/base/tidy.csv"
  for v in w25 w50; do echo "results/metrics/object_ship/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 6 ]; then
  for t in identity_1 identity_5 identity_10 identity_100; do
    echo "results/metrics/$t/base/tidy.csv"
    echo "results/metrics/$t/default/erased/tidy.csv"
  done
  for v in dws0.4 cfr_only; do echo "results/metrics/identity_5/$v/erased/tidy.csv"; done
  for v in dws0.15 dws0.2 cfr_only; do echo "results/metrics/identity_10/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 7 ]; then
  for t in identity_1 identity_5 identity_10 identity_100 object_ship object_automobile object_bird object_5; do
    echo "results/metrics/$t/base/tidy.csv"
    echo "results/metrics/$t/default/erased/tidy.csv"
  done
  for v in dws0.3 dws1; do echo "results/metrics/identity_10/$v/erased/tidy.csv"; done
  echo "results/metrics/identity_100/dws0.3/erased/tidy.csv"
elif [ "${ROUND}" = 8 ]; then
  for t in identity_1 identity_5 identity_10 identity_100; do echo "results/metrics/$t/base/tidy.csv"; done
  for v in dws1 dws10; do echo "results/metrics/identity_1/$v/erased/tidy.csv"; done
  for v in dws1 dws3; do echo "results/metrics/identity_5/$v/erased/tidy.csv"; done
  for v in dws3 dws10; do echo "results/metrics/identity_10/$v/erased/tidy.csv"; done
  for v in dws3_cfr dws10_cfr; do echo "results/metrics/identity_100/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 9 ]; then
  echo "results/metrics/object_5/base/tidy.csv"
  for v in w100 w200; do echo "results/metrics/object_5/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 10 ]; then
  for t in identity_1 identity_100; do echo "results/metrics/$t/base/tidy.csv"; done
  for v in dws1 dws3 dws10; do echo "results/metrics/identity_1/$v/erased/tidy.csv"; done
  for v in dws10_cfr dws30_cfr dws100_cfr dws30; do echo "results/metrics/identity_100/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 11 ]; then
  for o in airplane automobile bird cat deer dog frog horse ship truck; do
    echo "results/metrics/object_$o/base/tidy.csv"
    for v in w50 w800; do echo "results/metrics/object_$o/$v/erased/tidy.csv"; done
  done
  for t in identity_1 identity_1_b identity_1_c identity_1_d identity_1_e; do
    echo "results/metrics/$t/base/tidy.csv"
    for v in dws1 dws3; do echo "results/metrics/$t/$v/erased/tidy.csv"; done
  done
  echo "results/metrics/identity_100/base/tidy.csv"
  for v in dws30 dws30_cfr dws10_cfr; do echo "results/metrics/identity_100/$v/erased/tidy.csv"; done
elif [ "${ROUND}" = 12 ]; then
  for t in identity_1 identity_1_c identity_1_d; do
    echo "results/metrics/$t/base/tidy.csv"
    echo "results/metrics/$t/default/erased/tidy.csv"
  done
  echo "results/metrics/identity_1/rcond_1e-12/erased/tidy.csv"
elif [ "${ROUND}" = 13 ]; then
  for t in object_dog object_horse; do
    echo "results/metrics/$t/base/tidy.csv"
    echo "results/metrics/$t/default/erased/tidy.csv"
  done
elif [ "${ROUND}" = 14 ]; then
  echo "results/metrics/identity_100/base/tidy.csv"
  echo "results/metrics/identity_100/default/erased/tidy.csv"
elif [ "${ROUND}" = 18 ]; then
  for t in identity_1 identity_5 identity_10 identity_100 object_ship object_automobile object_bird object_5; do
    echo "results/metrics/$t/base/tidy.csv"
    echo "results/metrics/$t/default/erased/tidy.csv"
  done
elif [ "${ROUND}" = 15 ]; then
  echo "results/metrics/identity_5/base/tidy.csv"
  echo "results/metrics/identity_5/dws3/erased/tidy.csv"
else
  for v in dws0.15_l0 dws0.2_l0 dws0.3_l0; do echo "results/metrics/identity_100/$v/erased/tidy.csv"; done
fi
