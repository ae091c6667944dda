"""The SD v1.4 preset (config.sd14.yaml): the paper's lists, and the "weights absent" check.

No real model is needed: the preset's dry run must stop with one message naming every missing
model, and with fake local model folders it must list the full DAG of the paper's study.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from snakemake_helpers import job_counts, snakemake

from resurgence import layout, study
from resurgence.config import ConfigError, deep_merge, load_config
from resurgence.models import availability

ROOT = Path(__file__).resolve().parents[1]
PRESET = [ROOT / "config.yaml", ROOT / "config.sd14.yaml"]
MODEL_KEYS = (
    "models.pipeline",
    "models.clip",
    "models.detector",
    "models.segmenter.dino_id_or_path",
    "models.segmenter.sam_id_or_path",
)
FINETUNE_CELEBRITIES = {
    "Amy Winehouse",
    "Elizabeth Taylor",
    "George Takei",
    "Henry Cavill",
    "Jeff Bridges",
    "Jensen Ackles",
    "Jimmy Carter",
    "Kaley Cuoco",
    "Kate Upton",
    "Kristen Stewart",
}


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(PRESET)


# ----------------------------------------------------------------------------- the preset's lists


def test_preset_validates_against_the_schema(config):
    assert config["world"] == "sd14"
    assert config["models"]["pipeline"] == "CompVis/stable-diffusion-v1-4"
    assert config["models"]["clip"] == {"kind": "open_clip", "model": "ViT-L-14", "pretrained": "openai"}
    seg = config["models"]["segmenter"]
    assert seg["kind"] == "grounded_sam" and {"dino_id_or_path", "sam_id_or_path"} <= set(seg)
    g = config["generation"]
    assert (g["steps"], g["guidance_scale"], g["scheduler"], g["height"], g["width"]) == (
        50,
        7.5,
        "ddim",
        512,
        512,
    )
    assert config["evaluation"]["captions"]["n"] == 5000 and len(config["seeds"]) == 3


def test_task_lists_have_the_papers_sizes(config):
    tasks = config["tasks"]
    sizes = {t: len(tasks[t]["erase"]) for t in ("identity_1", "identity_5", "identity_10", "identity_100")}
    assert sizes == {"identity_1": 1, "identity_5": 5, "identity_10": 10, "identity_100": 100}
    # MACE's celebrity retain set ("others" in prompts_csv/celebrity_*_concepts.csv): 100 names.
    for t in sizes:
        assert len(tasks[t]["retain"]) == 100 and not set(tasks[t]["erase"]) & set(tasks[t]["retain"])
    assert tasks["identity_1"]["erase"] == ["Melania Trump"]
    assert (
        tasks["identity_5"]["erase"]
        == tasks["identity_10"]["erase"][:5]
        == tasks["identity_100"]["erase"][:5]
    )
    assert set(tasks["identity_10"]["erase"]) < set(tasks["identity_100"]["erase"])
    cifar10 = {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"}
    for name, erased in [
        ("object_ship", {"ship"}),
        ("object_automobile", {"automobile"}),
        ("object_bird", {"bird"}),
        ("object_5", {"automobile", "ship", "bird", "cat", "truck"}),
    ]:
        t = tasks[name]
        assert set(t["erase"]) == erased and set(t["retain"]) == cifar10 - erased
    assert set(config["synonyms"]) == cifar10 and all(len(v) == 3 for v in config["synonyms"].values())


def test_finetune_sets_are_the_papers(config):
    fs = config["finetune_sets"]
    assert set(fs["random_identity"]["concepts"]) == FINETUNE_CELEBRITIES
    assert fs["random_object"]["concepts"] == [
        "trout",
        "ray",
        "bee",
        "rose",
        "lobster",
        "girl",
        "oak tree",
        "aquarium fish",
    ]
    assert all(s["images_per_prompt"] == 5 and s["kind"] == "random" for s in fs.values())
    assert [len(fs[f"tercile_identity_{i}"]["concepts"]) for i in (1, 2, 3)] == [
        10,
        10,
        9,
    ]  # Table 1 as published
    assert [len(fs[f"tercile_object_{i}"]["concepts"]) for i in (1, 2, 3)] == [10, 10, 10]
    fig9 = study.experiment_runs(config, "fig9")
    assert {r.ftset for r in fig9} == {f"tercile_{d}_{i}" for d in ("identity", "object") for i in (1, 2, 3)}


def test_finetune_celebrities_disjoint_from_every_erase_set(config):
    for name, t in config["tasks"].items():
        assert not FINETUNE_CELEBRITIES & set(t["erase"]), name
        assert not set(config["finetune_sets"]["random_object"]["concepts"]) & set(t["erase"]), name


def test_erase_specs_resolve_mapping_concepts(config):
    ship = study.erase_settings(config, "object_ship", "default")
    assert ship["mapping"] == "ground"
    assert study.erase_settings(config, "object_ship", "mapping_object")["mapping"] == "an object"
    assert study.erase_settings(config, "object_automobile", "default")["mapping"] == "sky"
    assert study.erase_settings(config, "identity_10", "mapping_object")["mapping"] == "an object"
    assert study.erase_settings(config, "identity_1", "default")["mapping"] == "a woman"
    gender = study.erase_settings(config, "identity_10", "mapping_gender")["mapping"]
    assert set(gender) == set(config["tasks"]["identity_10"]["erase"])
    assert set(gender.values()) == {"a male celebrity", "a female celebrity"}
    lambdas = sorted(v["lambda1"] for k, v in config["erase_variants"].items() if k.startswith("lambda1_"))
    assert lambdas == [0, 0.0001, 0.001, 0.01, 0.1, 1]


def test_erase_specs_keep_maces_published_settings(config, tmp_path):
    """The preset overlays config.yaml: none of the toy world's MACE deviations may leak into it."""
    from resurgence.config import deep_merge
    from resurgence.mace.config import EraseConfig

    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(f"a photo of thing number {i} on a table" for i in range(1000)) + "\n")
    config = deep_merge(config, {"evaluation": {"captions": {"file": str(captions)}}})

    for task in ("object_ship", "object_automobile", "object_bird", "object_5"):
        mace = study.erase_spec(config, task, "default")["mace"]
        names = config["tasks"][task]["erase"]
        published = EraseConfig.objects(names)
        assert (mace["lambda1"], mace["fusion_lambda"], mace["domain_weight"], mace["ridge"]) == (
            published.lambda1,
            published.fusion_lambda,
            published.domain_weight,
            published.ridge,
        ), task
        assert mace["domain_preserve"] == [] and mace["preserve"] == []
    for task, n in (("identity_1", 1), ("identity_5", 5), ("identity_10", 10), ("identity_100", 100)):
        mace = study.erase_spec(config, task, "default")["mace"]
        assert mace["domain_weight"] == EraseConfig.celebrity(n).domain_weight, task
        assert mace["lambda1"] == EraseConfig.celebrity(n).lambda1
        assert mace["domain_preserve"] == [], task  # no celebrity cache, no unconditional prompt


def test_maces_training_images_are_sampled_uncompiled_in_the_erased_models_dtype(config):
    """The preset compiles generation in bf16; MACE's images come from the model it trains (fp32), whose
    UNet changes between concepts: compiling it would recompile per concept and run the LoRA training
    through the compiled module (the erase benchmark once did: 145 s for its first concept's LoRA on an H200)."""
    from resurgence.generate.engine import GenerationConfig
    from resurgence.stages import erase_generation_config

    preset = GenerationConfig.from_dict(config["generation"])
    assert preset.compile != "none"  # else this test checks nothing
    cfg = erase_generation_config(config["generation"], config["models"]["dtype"])
    assert (cfg.compile, cfg.dtype) == ("none", "float32")
    assert (cfg.steps, cfg.guidance_scale, cfg.batch_size) == (
        preset.steps,
        preset.guidance_scale,
        preset.batch_size,
    )


def test_world_carries_object_synonyms(config):
    from resurgence.world import get_world

    world = get_world(study.world_ref(config))
    ship = world.concept("ship")
    assert ship.synonyms == ("vessel", "boat", "watercraft")
    assert "a photo of the watercraft" in world.eval_prompts(ship)
    assert world.concept("Melania Trump").synonyms == ()


# ----------------------------------------------------------------------------- availability


def _touch(root: Path, files) -> None:
    for f in files:
        name = f if isinstance(f, str) else f[0]
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def fake_models(tmp: Path) -> dict:
    """Local folders with the marker files each model loader reads, and a tiny caption file."""
    _touch(tmp / "sd14", availability.PIPELINE_FILES)
    _touch(tmp / "dino", availability.TRANSFORMERS_FILES)
    _touch(tmp / "sam", availability.TRANSFORMERS_FILES)
    _touch(tmp / "gcd", availability.GCD_FILES)
    (tmp / "clip.safetensors").write_bytes(b"x")
    captions = tmp / "captions.txt"
    captions.write_text("\n".join(f"a photo of thing number {i} on a table" for i in range(40)) + "\n")
    return {
        "models": {
            "pipeline": str(tmp / "sd14"),
            "clip": {"kind": "open_clip", "model": "ViT-L-14", "pretrained": str(tmp / "clip.safetensors")},
            "detector": {"kind": "gcd", "path": str(tmp / "gcd")},
            "segmenter": {
                "kind": "grounded_sam",
                "dino_id_or_path": str(tmp / "dino"),
                "sam_id_or_path": str(tmp / "sam"),
            },
        },
        "evaluation": {"captions": {"file": str(captions)}},
    }


def test_missing_models_names_each_model_once(config, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache is ~/.cache/clip
    lines = availability.missing_models(config)
    assert [line.split(":", 1)[0] for line in lines] == list(MODEL_KEYS)
    assert "huggingface-cli download CompVis/stable-diffusion-v1-4" in lines[0]
    assert "open_clip.create_model('ViT-L-14', pretrained='openai')" in lines[1]
    with pytest.raises(ConfigError) as e:
        availability.check_available(config)
    assert all(k in str(e.value) for k in (*MODEL_KEYS, "evaluation.captions.file"))
    assert availability.missing_models(load_config([ROOT / "config.yaml"])) == []  # toy world: not checked


def test_local_folders_and_hub_cache_count_as_present(config, tmp_path, monkeypatch):
    overlay = fake_models(tmp_path)
    assert availability.missing_models(deep_merge(config, overlay)) == []
    availability.check_available(deep_merge(config, overlay))
    # a folder lacking a weight file is reported with what it lacks
    (tmp_path / "sd14" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    lines = availability.missing_models(deep_merge(config, overlay))
    assert len(lines) == 1 and "unet/diffusion_pytorch_model" in lines[0]
    # hub ids resolve through the Hugging Face cache layout (refs/main -> snapshots/<rev>/file)
    cache = tmp_path / "hub"
    for repo, files in [
        ("CompVis/stable-diffusion-v1-4", availability.PIPELINE_FILES),
        ("timm/vit_large_patch14_clip_224.openai", ["open_clip_model.safetensors"]),
    ]:
        d = cache / ("models--" + repo.replace("/", "--"))
        (d / "refs").mkdir(parents=True)
        (d / "refs" / "main").write_text("0" * 40)
        _touch(d / "snapshots" / ("0" * 40), files)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path))
    lines = availability.missing_models(config)
    assert [line.split(":", 1)[0] for line in lines] == list(MODEL_KEYS[2:]), lines


# ----------------------------------------------------------------------------- the workflow


def _state(path: str) -> tuple[str, str]:
    """(task, state) of results/{metrics,images}/<task>/<state>/<file>."""
    _, _, task, state = path.rsplit("/", 1)[0].split("/", 3)
    return task, state


def expected_counts(config: dict) -> dict[str, int]:
    """Jobs of the full study, derived from the config the way the Snakefile's targets are."""
    runs = study.all_runs(config)
    scored = {_state(p) for e in config["experiments"] for p in study.experiment_metrics(config, e)}
    rendered = scored | {_state(p) for p in study.grid_inputs(config)}
    kinds = [layout.parse_state(t, s)["state"] for t, s in rendered]
    n_exp = len(config["experiments"])
    return {
        "all": 1,
        "erase": len({(r.task, r.erase) for r in runs}),
        "ftdata_random": len({r.ftset for r in runs}),
        "finetune": len(set(runs)),
        "reversion": len(set(runs)),
        "reversion_summary": 1,
        "generate_base": kinds.count("base"),
        "generate_base_pool": len({study.base_pool(config, t) for t, s in rendered if s == "base"}),
        "generate_erased": kinds.count("erased"),
        "generate_finetuned": kinds.count("finetuned"),
        "evaluate": len(scored),
        "tables": n_exp,
        "figure": n_exp,
        "trajectory_figure": 1,
        "grids_figure": 1,
    }


def test_dry_run_stops_with_one_message_naming_every_missing_model(tmp_path):
    # An empty Hugging Face cache: what this machine may have cached does not count.
    out = snakemake("-n", "--configfile", "config.sd14.yaml", check=False, HF_HUB_CACHE=str(tmp_path))
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert text.count("the sd14 study cannot start") == 1, text[-3000:]
    for key in (*MODEL_KEYS, "evaluation.captions.file"):
        assert f"  - {key}:" in text, (key, text[-3000:])
    assert "Job stats" not in text


def test_dry_run_with_local_models_lists_the_full_dag(config, tmp_path):
    overlay = tmp_path / "local_models.yaml"
    overlay.write_text(yaml.safe_dump(fake_models(tmp_path)))
    out = snakemake(
        "-n",
        "--forceall",
        "--rerun-incomplete",
        "--configfile",
        "config.sd14.yaml",
        str(overlay),
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    counts = job_counts(out.stdout)
    print("sd14 dry run job counts:", counts)
    expected = expected_counts(config)
    assert counts == {**expected, "total": sum(expected.values())}, (counts, expected)
    assert counts["erase"] == 35 and counts["figure"] == 10  # 23 MACE + 8 UCE + 4 ESD; Figs. 5-13 + methods
    assert "ftdata_tercile" not in counts and "toyworld_quality" not in counts
