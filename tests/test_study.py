"""The study resolver: specs, model states and targets derived from the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from resurgence import layout, study
from resurgence.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config([ROOT / "config.yaml"], {"toyworld": {"retrain": True}})


def test_state_ids_round_trip(config):
    run = study.Run(task="identity_10", erase="lambda1_0.001", ftset="tercile_2", ftmethod="full")
    assert layout.parse_state("identity_10", layout.state_id("base")) == dict(
        task="identity_10", erase="none", ftset="none", ftmethod="none", state="base", step=0
    )
    erased = layout.parse_state("identity_10", study.state_id(run, "erased"))
    assert (erased["erase"], erased["state"]) == ("lambda1_0.001", "erased")
    ft = layout.parse_state("identity_10", study.state_id(run, "finetuned", 150))
    assert (ft["erase"], ft["ftset"], ft["ftmethod"], ft["state"], ft["step"]) == (
        "lambda1_0.001",
        "tercile_2",
        "full",
        "finetuned",
        150,
    )
    with pytest.raises(ValueError):
        layout.parse_state("identity_10", "nonsense/state")


def test_erase_spec_resolves_mapping_per_concept(config):
    spec = study.erase_spec(config, "identity_10", "mapping_gender")
    from resurgence.world import get_world

    world = get_world(config)
    assert len(spec["concepts"]) == 10
    for c in spec["concepts"]:
        gender = world.concept(c["name"]).trait("gender")
        assert c["mapping"] == f"a {gender} celebrity"
    # MACE's config is complete as it stands: the job reads it without putting the mapping back
    from resurgence.mace.config import EraseConfig

    cfg = EraseConfig.from_dict(spec["mace"])
    assert {c["name"]: cfg.mapping_for(c["name"]) for c in spec["concepts"]} == {
        c["name"]: c["mapping"] for c in spec["concepts"]
    }
    plain = study.erase_spec(config, "object_ship", "default")
    assert [c["mapping"] for c in plain["concepts"]] == ["ground"]
    lam = study.erase_spec(config, "object_ship", "lambda1_0.01")
    assert lam["mace"]["lambda1"] == 0.01


def test_mapping_fallback_entry_maps_every_concept_the_mapping_does_not_name(config):
    tasks = {
        f"object_{o}": {"domain": "object", "erase": [o], "retain": ["airplane"]}
        for o in ("dog", "horse", "deer")
    }
    cfg = {**config, "tasks": {**config["tasks"], **tasks}}
    got = {t: study.erase_spec(cfg, t, "default")["concepts"][0]["mapping"] for t in tasks}
    # the default object mapping: ground, except the objects the judge sees in ground's images
    assert got == {"object_dog": "an object", "object_horse": "an object", "object_deer": "ground"}
    # a task's own mapping dict still names its concepts; the fallback only fills the rest
    assert [c["mapping"] for c in study.erase_spec(cfg, "object_5", "default")["concepts"]] == [
        config["tasks"]["object_5"]["mapping"][n] for n in config["tasks"]["object_5"]["erase"]
    ]
    no_fallback = {
        **cfg["erase_defaults"],
        "object": {**cfg["erase_defaults"]["object"], "mapping": {"dog": "ground"}},
    }
    with pytest.raises(ConfigError, match=r"no entry for erased concept 'deer' and no fallback entry '\*'"):
        study.erase_spec({**cfg, "erase_defaults": no_fallback}, "object_deer", "default")


def test_domain_cache_holds_retained_and_unused_concepts_not_erased_or_finetuned(config):
    from resurgence.world import get_world

    world = get_world(config)
    cfg = {**config, "erase_defaults": {**config["erase_defaults"], "identity": {"domain_preserve": "auto"}}}
    cache = set(study.erase_spec(cfg, "identity_10", "default", world)["mace"]["domain_preserve"])
    task = config["tasks"]["identity_10"]
    erased_anywhere = {n for t in config["tasks"].values() for n in t["erase"]}
    ftsets = {n for fs in config["finetune_sets"].values() for n in fs.get("concepts", [])}
    for name in task["retain"]:
        assert set(world.eval_prompts(world.concept(name))) <= cache  # every template of a retained concept
    for name in erased_anywhere | ftsets:
        assert not set(world.eval_prompts(world.concept(name))) & cache
    unused = [
        c for c in world.by_domain("identity") if c.name not in erased_anywhere | ftsets | set(task["retain"])
    ]
    assert unused and len(cache) == 5 * (len(task["retain"]) + len(unused))


def test_finetune_in_cache_ablation_adds_exactly_the_finetune_concepts(config):
    from resurgence.world import get_world

    world = get_world(config)
    plain = set(study.erase_spec(config, "identity_10", "default", world)["mace"]["domain_preserve"])
    spec = study.erase_spec(config, "identity_10", "finetune_in_cache", world)
    ablated = set(spec["mace"]["domain_preserve"])
    ft = {n for fs in config["finetune_sets"].values() for n in fs.get("concepts", [])}
    ft_identities = [n for n in ft if world.concept(n).domain == "identity"]
    assert ft_identities and plain < ablated
    assert ablated - plain == {p for n in ft_identities for p in world.eval_prompts(world.concept(n))}
    assert (
        spec["mace"]["domain_weight"]
        == study.erase_spec(config, "identity_10", "default", world)["mace"]["domain_weight"]
    )


def test_domain_weight_scale_multiplies_the_published_weight_per_task_size(config):
    from resurgence.mace.config import EraseConfig

    def weight(task, **identity):
        cfg = {**config, "erase_defaults": {**config["erase_defaults"], "identity": identity}}
        return study.erase_spec(cfg, task, "default")["mace"]["domain_weight"]

    assert weight("identity_1") == EraseConfig.celebrity(1).domain_weight
    assert weight("identity_1", domain_weight_scale=0.1) == pytest.approx(
        0.1 * EraseConfig.celebrity(1).domain_weight
    )
    assert weight("identity_5", domain_weight_scale=0.1) == pytest.approx(5e3)  # 0.1 x MACE's 5e4 for 5
    assert weight("identity_5", domain_weight_scale=0.1, domain_weight=7.0) == 7.0  # explicit wins


def test_task_mace_settings_sit_between_domain_defaults_and_variants(config):
    from resurgence.mace.config import EraseConfig

    base = EraseConfig.celebrity(5).domain_weight
    assert "mace" not in config["tasks"]["identity_5"]
    scale = config["erase_defaults"]["identity"]["domain_weight_scale"]  # x MACE's published weight
    assert study.erase_spec(config, "identity_5", "default")["mace"]["domain_weight"] == pytest.approx(
        scale * base
    )
    assert config["tasks"]["identity_100"]["mace"] == {"domain_weight_scale": 10}
    assert study.erase_spec(config, "identity_100", "default")["mace"]["domain_weight"] == pytest.approx(
        10 * EraseConfig.celebrity(100).domain_weight  # the task's scale beats erase_defaults'
    )
    cfg = {**config, "erase_variants": {**config["erase_variants"], "x": {"domain_weight_scale": 2.0}}}
    assert study.erase_spec(cfg, "identity_5", "x")["mace"]["domain_weight"] == pytest.approx(2.0 * base)
    # Objects: the domain's cache weight holds for every object alone; the 5-object task sets its own.
    mace_tasks = [t for t in config["tasks"] if config["tasks"][t].get("erasure") != "none"]
    assert "identity_10_exact" not in mace_tasks  # the exact-unlearning control erases nothing
    weights = {t: study.erase_spec(config, t, "default")["mace"]["domain_weight"] for t in mace_tasks}
    assert weights["object_5"] == 400
    default = config["erase_defaults"]["object"]["domain_weight"]
    assert weights["object_ship"] == weights["object_automobile"] == weights["object_bird"] == default
    cfg = {
        **config,
        "tasks": {
            **config["tasks"],
            "object_5": {**config["tasks"]["object_5"], "mace": {"domain_weight": 7}},
        },
    }
    assert study.erase_spec(cfg, "object_5", "lambda1_0")["mace"]["domain_weight"] == 7  # variants keep it


def test_runs_fill_defaults(config):
    runs = study.experiment_runs(config, "fig5")
    assert runs[0] == study.Run(task="identity_1", erase="default", ftset="random_identity", ftmethod="lora")
    assert study.Run(task="object_ship", erase="default", ftset="random_object", ftmethod="lora") in runs
    fig10 = study.experiment_runs(config, "fig10")
    assert study.Run(task="identity_10", ftset="random_object") in fig10


def test_expand_records_counts(config):
    spec = study.generation_spec(config, "identity_10")
    records = study.expand_records(spec)
    n_seeds = len(config["seeds"])
    n_erased = 10 * 5 * n_seeds
    n_retained = len(config["tasks"]["identity_10"]["retain"]) * 5 * n_seeds
    n_captions = config["evaluation"]["captions"]["n"]
    roles = [r["role"] for r in records]
    assert roles.count("erased") == n_erased
    assert roles.count("retained") == n_retained
    assert roles.count("caption") == n_captions
    # object tasks are not scored on captions (as in the paper), and prompts include synonyms
    obj = study.expand_records(study.generation_spec(config, "object_ship"))
    assert {r["prompt"] for r in obj if r["role"] == "erased"} == {
        "a photo of the ship",
        "a photo of the boat",
    }
    assert not [r for r in obj if r["role"] == "caption"]
    # each concept record carries its template (the tidy tables' template column), samples too
    assert {r["template"] for r in obj if r["role"] == "erased"} == {"a photo of the {}"}
    world = study.get_world(config)
    for r in records + obj:
        if r["role"] != "caption":
            assert r["prompt"] in {r["template"].format(n) for n in world.concept(r["concept"]).names}
    # trajectory checkpoints are scored on erased concepts only
    traj = study.expand_records(study.generation_spec(config, "identity_10", ("erased",)))
    assert {r["role"] for r in traj} == {"erased"}


def test_images_per_prompt_adds_samples_with_distinct_noise(config):
    one = study.expand_records(study.generation_spec(config, "identity_10"))
    assert config["evaluation"]["images_per_prompt"]["identity"] == 1
    assert "samples" not in study.generation_spec(config, "identity_10")  # one-image specs unchanged
    assert not [r for r in one if "sample" in r or "noise_seed" in r]
    k = config["evaluation"]["images_per_prompt"]["object"]
    assert k > 1
    obj = study.expand_records(study.generation_spec(config, "object_ship"))
    erased = [r for r in obj if r["role"] == "erased"]
    assert len(erased) == 2 * len(config["seeds"]) * k  # 2 prompts (name, synonym) x seeds x samples
    by_prompt: dict[str, list[int]] = {}
    for r in obj:
        by_prompt.setdefault(r["prompt"], []).append(r.get("noise_seed", r["seed"]))
    for seeds in by_prompt.values():
        assert len(set(seeds)) == len(seeds) == len(config["seeds"]) * k
    assert {r["seed"] for r in obj} == set(config["seeds"])  # the interval unit is still the seed


def test_tercile_spec_excludes_task_concepts(config):
    spec = study.ftset_spec(config, "tercile_1", "identity_10")
    task = config["tasks"]["identity_10"]
    assert not set(spec["candidates"]) & (set(task["erase"]) | set(task["retain"]))
    assert spec["erased"] == task["erase"]
    assert (
        study.ftset_dir(config, "tercile_1", "identity_10") == "results/ftdata/tercile/identity_10/tercile_1"
    )
    assert study.ftset_dir(config, "random_object", "identity_10") == "results/ftdata/random/random_object"


def test_trajectory_states_only_for_trajectory_experiment(config):
    fig5 = study.experiment_runs(config, "fig5")[0]
    states = study.run_states(config, fig5)
    assert [s for s in states if s.endswith(("step-50", "step-100", "step-150"))]
    fig8 = study.Run(task="identity_10", ftmethod="full")
    assert study.trajectory_steps(config, fig8) == []


def test_specs_fit_a_command_line(config):
    """Rule params travel as one shell argument; Linux caps one at 128 KiB."""
    import json

    for run in study.all_runs(config):
        assert len(json.dumps(study.erase_spec(config, run.task, run.erase))) < 64_000
    for task in config["tasks"]:
        assert len(json.dumps(study.generation_spec(config, task))) < 64_000


def test_run_summary_prints_where_the_figures_are_and_the_headline_accuracies(config, tmp_path, monkeypatch):
    import pandas as pd

    from resurgence.metrics.tables import headline

    rows = [
        # task, domain, erase, ftset, ftmethod, seed, metric, base, erased, finetuned
        ("identity_10", "identity", "default", "random_identity", "lora", 0, "identity_acc", 0.9, 0.0, 0.2),
        ("identity_10", "identity", "default", "random_identity", "lora", 1, "identity_acc", 0.8, 0.1, 0.4),
        ("identity_10", "identity", "default", "random_identity", "lora", 0, "identity_prob", 0.5, 0.5, 0.5),
        ("object_ship", "object", "default", "random_object", "lora", 0, "clip_acc", 1.0, 0.0, 0.05),
        ("object_ship", "object", "default", "random_object", "lora", 0, "identity_acc", 1.0, 1.0, 1.0),
    ]
    cols = ["task", "domain", "erase", "ftset", "ftmethod", "seed", "metric", "base", "erased", "finetuned"]
    table = pd.DataFrame(rows, columns=cols)
    h = headline(table).set_index("task")
    assert h.loc["identity_10", ["base", "erased", "finetuned", "seeds"]].tolist() == pytest.approx(
        [0.85, 0.05, 0.3, 2]
    )  # the accuracy rows only, mean over the two seeds
    assert h.loc["object_ship", ["base", "erased", "finetuned"]].tolist() == pytest.approx([1.0, 0.0, 0.05])
    monkeypatch.chdir(tmp_path)
    assert len(study.run_summary(config).splitlines()) == 2  # no table yet: where things go, no numbers
    path = Path(layout.resurgence_table(study.HEADLINE_EXPERIMENT))
    path.parent.mkdir(parents=True)
    table.to_csv(path, index=False)
    Path(layout.FIGURES).mkdir()
    Path(layout.figure("fig5")).write_bytes(b"png")
    text = study.run_summary(config)
    assert "1 figures in results/figures/" in text
    assert "mean over 2 seeds" in text
    assert any("identity_10" in line and "85.0 % /   5.0 % ->  30.0 %" in line for line in text.splitlines())


def test_shipped_weights_follow_the_files_each_job_reads(tmp_path):
    import json
    import shutil

    config = load_config([ROOT / "config.yaml"])

    world = tmp_path / "toyworld"
    world.mkdir()
    shutil.copy(ROOT / "resources/toyworld/manifest.json", world / "manifest.json")
    config["toyworld"] = {**config["toyworld"], "weights": str(world)}
    reads = ("pipeline", "clip", "detector", "segmenter")
    before = study.shipped_weights(config, "identity_10", reads)
    assert sorted(before) == sorted(reads) and len(set(before.values())) == 4
    # a new CLIP file changes the CLIP digest only
    manifest = json.loads((world / "manifest.json").read_text())
    clip_file = next(p for p in manifest["files"] if p.startswith("clip/"))
    manifest["files"][clip_file] = "0" * 64
    (world / "manifest.json").write_text(json.dumps(manifest))
    after = study.shipped_weights(config, "identity_10", reads)
    assert after["clip"] != before["clip"]
    assert {k: v for k, v in after.items() if k != "clip"} == {k: v for k, v in before.items() if k != "clip"}
    # a variant task's pipeline is its variant's (a job input), and overridden models are not shipped ones
    assert "pipeline" not in study.shipped_weights(config, "identity_10_exact", ("pipeline", "clip"))
    config["models"] = {"clip": {"kind": "open_clip", "model": "ViT-L-14"}}
    assert study.shipped_weights(config, "identity_10", ("clip", "detector")).keys() == {"detector"}
    with pytest.raises(ValueError, match="text_encoder"):
        study.shipped_weights(config, None, ("text_encoder",))
    config["toyworld"]["retrain"] = True  # the retrained world's manifest is an input instead
    assert study.shipped_weights(config, "identity_10", reads) == {}


def test_preserve_unconditional_adds_the_generations_negative_prompt_to_the_domain_cache(config):
    from resurgence.world import get_world

    world = get_world(config)

    def cache(identity_settings: dict, generation: dict | None = None) -> list[str]:
        cfg = {
            **config,
            "erase_defaults": {**config["erase_defaults"], "identity": identity_settings},
            "generation": {**config["generation"], **(generation or {})},
        }
        return study.erase_spec(cfg, "identity_10", "default", world)["mace"]["domain_preserve"]

    plain = cache({"domain_preserve": "auto", "preserve_unconditional": False})
    assert "" not in plain
    kept = cache({"domain_preserve": "auto", "preserve_unconditional": True})
    assert kept == [*plain, ""]  # the default negative prompt, once, after the concepts' prompts
    negative = cache(
        {"domain_preserve": "auto", "preserve_unconditional": True}, {"negative_prompt": "blurry"}
    )
    assert negative == [*plain, "blurry"]
    assert "preserve_unconditional" not in study.erase_spec(config, "identity_10", "default", world)["mace"]


def key(record: dict) -> tuple[str, int]:
    """An image's identity in the engine (`generate.engine.noise_seed`): its prompt and noise seed."""
    return record["prompt"], record.get("noise_seed", record["seed"])


def test_base_pools_draw_each_base_image_once_for_every_task(config):
    """Tasks of one domain and model share one pool of base images; each task's records are in it."""
    pools: dict[str, list[str]] = {}
    for task in config["tasks"]:
        pools.setdefault(study.base_pool(config, task), []).append(task)
    assert pools["identity"] == ["identity_1", "identity_5", "identity_10", "identity_100"]
    assert set(pools["object"]) == {"object_ship", "object_automobile", "object_bird", "object_5"}
    # A world variant's text-to-image model draws other images: its own pool.
    assert pools["identity-exact_unlearning"] == ["identity_10_exact"]
    for pool, tasks in pools.items():
        assert study.base_pool_tasks(config, pool) == tasks
        drawn = [key(r) for r in study.expand_records(study.base_pool_spec(config, pool))]
        assert len(set(drawn)) == len(drawn), pool  # nothing drawn twice
        asked = [key(r) for t in tasks for r in study.expand_records(study.generation_spec(config, t))]
        assert set(asked) == set(drawn), pool  # every image a task asks for, and nothing else
        if len(tasks) > 1:
            assert len(drawn) < len(asked)
    with pytest.raises(ConfigError, match="allowed values: .*'identity'"):
        study.base_pool_tasks(config, "identity-nonexistent")


def test_unshared_base_images_give_each_task_a_pool_of_its_own(config):
    own = dict(config, share_base_images=False)
    for task in ("identity_1", "object_ship"):
        pool = study.base_pool(own, task)
        assert pool == f"task-{task}" and study.base_pool_tasks(own, pool) == [task]
        drawn = [key(r) for r in study.expand_records(study.base_pool_spec(own, pool))]
        assert sorted(drawn) == sorted(key(r) for r in study.expand_records(study.generation_spec(own, task)))
