"""Tune the text tower of the toy world's trained CLIP against its frozen image tower (`TextCalibrationConfig`)
in a copy of the shipped world, and print the calibration statistics and the zero-shot accuracies it gives.

    python tools/calibrate_clip_text.py OUT --steps 600 --weight 100 [--lr 1e-3] [--balance domains]

OUT becomes a copy of resources/toyworld with the calibrated CLIP in it and its manifest rewritten
(`toyworld.train.calibrate_clip_text`); ship it with `python tools/device/ship_toyworld.py OUT clip`.
"""

import argparse
import json
import shutil
from pathlib import Path

from resurgence import study
from resurgence.config import load_config
from resurgence.layout import MANIFEST
from resurgence.toyworld.clip import TextCalibrationConfig
from resurgence.toyworld.train import calibrate_clip_text

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--weight", type=float, required=True, help="knowledge Gram-loss weight")
    p.add_argument("--lr", type=float, default=TextCalibrationConfig.lr)
    p.add_argument("--balance", default=TextCalibrationConfig.knowledge_balance)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2, help="render workers")
    args = p.parse_args()
    config = load_config(["config.yaml"])
    shutil.copytree(study.toy_models_dir(config), args.out)
    tc = TextCalibrationConfig(
        steps=args.steps, lr=args.lr, knowledge_weight=args.weight, knowledge_balance=args.balance
    )
    metrics = calibrate_clip_text(args.out, tc, study.calibration_sets(config), args.device, args.workers)
    manifest = json.loads((Path(args.out) / MANIFEST).read_text())
    print(
        json.dumps(
            {
                "text_calibration": metrics["text_calibration"],
                "geometry_clip": manifest["geometry"]["clip"],
                "zero_shot": {k: metrics[k] for k in ("identity_zero_shot_top1", "object_zero_shot_top1")},
            },
            indent=1,
        )
    )
