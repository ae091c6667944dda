"""Randomly initialised stand-ins of the real (sd14) world's models, written where the real ones would be.

No weights can be downloaded here, but the paper-scale code paths (loading from local folders,
shapes, dtypes, memory, the Snakemake jobs of `config.sd14.yaml`) must still run. Each stand-in has
the released model's architecture, built in code from its published sizes, and is saved in the
released layout, so the study loads it through the same loaders as the real model:

- SD v1.4: `build_random_pipeline("sd14")`, saved as a diffusers folder.
- CLIP ViT-L/14: open_clip's own config of the model, its state dict as a weights file.
- Grounded-SAM: Grounding DINO with a Swin-B backbone and BERT-base text encoder (the sizes of
  IDEA-Research/grounding-dino-base) and SAM ViT-H (facebook/sam-vit-huge), as transformers folders;
  the BERT tokenizer's vocabulary is only the words it will be asked to ground.

``scale="tiny"`` writes models of a few 100k parameters with the same classes, for CPU tests.
Random weights draw noise, not the concepts: these exercise the machinery, never the results.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

SCALES = ("full", "tiny")
BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "."]


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale!r}")


def write_random_pipeline(out: str | Path, scale: str = "full", seed: int = 0, arch: str = "sd14") -> Path:
    """A released pipeline's architecture (``arch``: sd14, sd21_base, sd21; "tiny" scale: the test
    architecture) as a diffusers folder."""
    from resurgence.models.pipeline import build_random_pipeline

    _check_scale(scale)
    out = Path(out)
    build_random_pipeline(arch if scale == "full" else "tiny", seed=seed).save_pretrained(out)
    return out


def write_random_open_clip(out: str | Path, model: str = "ViT-L-14", seed: int = 0) -> Path:
    """An open_clip model of the named architecture at random weights, as a safetensors file."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = open_clip.create_model(model, pretrained=None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(out))
    return out


def write_random_grounded_sam(
    root: str | Path, words: Iterable[str], scale: str = "full", seed: int = 0
) -> tuple[Path, Path]:
    """Grounding DINO and SAM folders (``root/dino``, ``root/sam``) at random weights."""
    from transformers import (
        BertConfig,
        BertTokenizerFast,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SamConfig,
        SamImageProcessor,
        SamMaskDecoderConfig,
        SamModel,
        SamProcessor,
        SamPromptEncoderConfig,
        SamVisionConfig,
        SwinConfig,
    )

    _check_scale(scale)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    vocab = list(dict.fromkeys(BERT_SPECIALS + sorted({w.lower() for p in words for w in p.split()})))
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(seed)
    if scale == "full":
        dino_config = GroundingDinoConfig(
            backbone_config=SwinConfig(
                image_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
                out_features=["stage2", "stage3", "stage4"],
            ),
            text_config=BertConfig(),  # bert-base-uncased's sizes
        )  # fmt: skip
        dino_size: dict[str, int] = {"shortest_edge": 800, "longest_edge": 1333}
        sam_config = SamConfig(
            vision_config=SamVisionConfig(
                hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120,
                global_attn_indexes=[7, 15, 23, 31],
            )
        )  # fmt: skip
        sam_processor = SamProcessor(image_processor=SamImageProcessor())
    else:
        dino_config = GroundingDinoConfig(
            backbone_config=SwinConfig(
                image_size=64, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=2,
                out_features=["stage2", "stage3", "stage4"],
            ),
            text_config=BertConfig(
                vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=64,
            ),
            d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
            encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10, num_feature_levels=3,
            encoder_n_points=2, decoder_n_points=2, max_text_len=32,
        )  # fmt: skip
        dino_size = {"shortest_edge": 64, "longest_edge": 64}
        sam_config = SamConfig(
            vision_config=SamVisionConfig(
                hidden_size=16, output_channels=8, num_hidden_layers=1, num_attention_heads=2, image_size=64,
                patch_size=8, window_size=4, global_attn_indexes=[0], num_pos_feats=4, mlp_dim=32,
            ),
            prompt_encoder_config=SamPromptEncoderConfig(hidden_size=8, image_size=64, patch_size=8, mask_input_channels=4),
            mask_decoder_config=SamMaskDecoderConfig(
                hidden_size=8, mlp_dim=16, num_hidden_layers=1, num_attention_heads=2, iou_head_hidden_dim=8
            ),
        )  # fmt: skip
        sam_processor = SamProcessor(
            image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
        )
    dino_dir, sam_dir = root / "dino", root / "sam"
    GroundingDinoForObjectDetection(dino_config).save_pretrained(dino_dir)
    GroundingDinoProcessor(
        image_processor=GroundingDinoImageProcessor(size=dino_size),
        tokenizer=BertTokenizerFast(vocab_file=str(root / "vocab.txt")),
    ).save_pretrained(dino_dir)
    SamModel(sam_config).save_pretrained(sam_dir)
    sam_processor.save_pretrained(sam_dir)
    return dino_dir, sam_dir


def write_random_models(
    root: str | Path,
    words: Iterable[str],
    scale: str = "full",
    captions: int = 200,
    seed: int = 0,
    arch: str = "sd14",
) -> dict[str, Any]:
    """Every model of a real world (pipeline ``arch``) under ``root``; returns the config overlay that
    points at them.

    The detector is the built-in CLIP zero-shot identifier (the Giphy detector's network cannot be
    built here); the caption file holds ``captions`` generated lines standing in for COCO's.
    """
    _check_scale(scale)
    root = Path(root)
    words = list(words)
    pipeline = write_random_pipeline(root / "pipeline", scale, seed, arch)
    clip_model = "ViT-L-14" if scale == "full" else "ViT-B-32"
    clip = write_random_open_clip(root / "clip" / f"{clip_model}.safetensors", clip_model, seed)
    dino, sam = write_random_grounded_sam(root / "grounded_sam", words, scale, seed)
    caption_file = root / "captions.txt"
    things = words or ["thing"]
    caption_file.write_text(
        "".join(f"a photo of a {things[i % len(things)]} number {i} on a table\n" for i in range(captions))
    )
    return {
        "models": {
            "pipeline": str(pipeline),
            "clip": {"kind": "open_clip", "model": clip_model, "pretrained": str(clip)},
            "detector": {"kind": "clip_zero_shot"},
            "segmenter": {"kind": "grounded_sam", "dino_id_or_path": str(dino), "sam_id_or_path": str(sam)},
        },
        "evaluation": {"captions": {"file": str(caption_file)}},
    }


def preset_words(config: Mapping[str, Any]) -> list[str]:
    """Every concept name, synonym and fine-tune concept of a config: what the segmenter may be asked."""
    words = {n for t in config["tasks"].values() for n in (*t["erase"], *t.get("retain", []))}
    words |= {s for v in (config.get("synonyms") or {}).values() for s in v}
    words |= {c for f in config["finetune_sets"].values() if f for c in f.get("concepts", [])}
    return sorted(words)


def main(argv: list[str] | None = None) -> None:
    import yaml

    from resurgence.config import load_config

    p = argparse.ArgumentParser(
        description="Write random-weight stand-ins of a preset's models and "
        "the config overlay pointing at them (ROOT/models.yaml)."
    )
    p.add_argument("root")
    p.add_argument("--scale", default="full", choices=SCALES)
    p.add_argument("--configfile", nargs="+", default=["config.yaml", "config.sd14.yaml"])
    p.add_argument(
        "--arch", default="sd14", choices=["sd14", "sd21_base", "sd21"], help="the pipeline's architecture"
    )
    args = p.parse_args(argv)
    root = Path(args.root)
    words = preset_words(load_config(args.configfile))
    overlay = write_random_models(root, words, scale=args.scale, arch=args.arch)
    (root / "models.yaml").write_text(yaml.safe_dump(overlay))
    print(yaml.safe_dump(overlay))


if __name__ == "__main__":
    main()
