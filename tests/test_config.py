"""The config is validated before any job: errors name the key and the allowed values."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from resurgence import study
from resurgence.config import ConfigError, deep_merge, load_config, validate_config
from resurgence.study import check_study

ROOT = Path(__file__).resolve().parents[1]


# Cross-reference checks without requiring the shipped toy weights (checked on their own below).
RETRAIN = {"toyworld": {"retrain": True}}


@pytest.fixture(scope="module")
def default_config() -> dict:
    return load_config([ROOT / "config.yaml"], RETRAIN)


@pytest.fixture
def check_chain(tmp_path, monkeypatch):
    """`check_study` of the config layered from ``chain`` (paths under the repository). Real-model presets
    need weights and a caption file on disk, checked in test_sd14_preset.py: stand in here."""
    monkeypatch.setattr("resurgence.study.check_available", lambda config: None)
    captions = tmp_path / "captions.txt"
    captions.write_text("a caption\nanother caption\n")

    def check(chain: list[str]) -> None:
        cfg = load_config([ROOT / "config.yaml", *(ROOT / c for c in chain)], RETRAIN)
        if cfg["world"] != "toy":
            cfg["evaluation"]["captions"]["file"] = str(captions)
        check_study(cfg)

    return check


def test_default_and_presets_validate(default_config, check_chain):
    check_study(default_config)
    bases = {"config.sd21.yaml": ["config.sd14.yaml"]}  # the SD v2.1 preset overlays the SD v1.4 one
    for preset in sorted(ROOT.glob("config.*.yaml")):
        check_chain([*bases.get(preset.name, []), preset.name])


# The device drivers' overlays (tools/device/*.yaml) with the configs each is layered on: a newer check
# of the study must not stop a driver before any job on the lent GPU (it stopped sd14_jobs.yaml once).
DEVICE_OVERLAYS = {
    "sd14_jobs.yaml": [["config.sd14.yaml"], ["config.sd14.yaml", "config.sd21.yaml"]],
    "sd21_768.yaml": [["config.sd14.yaml", "config.sd21.yaml", "tools/device/sd14_jobs.yaml"]],
    "efficacy_sweep.yaml": [[]],
    "efficacy_precise.yaml": [["tools/device/efficacy_sweep.yaml"]],
    "efficacy_concepts.yaml": [["tools/device/efficacy_sweep.yaml", "tools/device/efficacy_precise.yaml"]],
    "efficacy_one_seed.yaml": [[], ["tools/device/efficacy_sweep.yaml"]],
    "sampler_ddim15.yaml": [[]],
    "sd21_methods.yaml": [["config.sd14.yaml", "config.sd21.yaml", "tools/device/sd14_jobs.yaml"]],
}


def test_device_overlays_validate(check_chain):
    assert sorted(DEVICE_OVERLAYS) == sorted(p.name for p in (ROOT / "tools/device").glob("*.yaml"))
    for overlay, chains in DEVICE_OVERLAYS.items():
        for bases in chains:
            check_chain([*bases, f"tools/device/{overlay}"])


def test_missing_toy_weights_are_named(tmp_path):
    cfg = load_config([ROOT / "config.yaml"], {"toyworld": {"weights": str(tmp_path), "retrain": False}})
    with pytest.raises(
        ConfigError, match=r"toyworld.weights.*\['t2i', 'clip', 'detector', 'segmenter'\].*retrain=true"
    ):
        check_study(cfg)


def _broken(cfg: dict, path: list, value) -> dict:
    cfg = copy.deepcopy(cfg)
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return cfg


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["world"], "mars", ["'world'", "'toy'", "'sd14'"]),
        (["device"], "tpu", ["'device'", "'cuda'"]),
        (["finetune_methods", "lora", "method"], "dreambooth", ["finetune_methods.lora.method", "'full'"]),
        (["finetune_methods", "lora", "learning_rate"], -1.0, ["finetune_methods.lora.learning_rate"]),
        (["generation", "steps"], "many", ["generation.steps", "integer"]),
        (["erase_variants", "default", "lamda1"], 0.1, ["erase_variants.default", "lamda1", "lambda1"]),
        (["seeds"], [], ["'seeds'"]),
        (["tasks", "identity_100", "mace", "lambda_1"], 0.1, ["tasks.identity_100.mace", "lambda_1"]),
        (["generation", "conv_fp8"], "block", ["generation.conv_fp8", "'row'"]),
    ],
)
def test_bad_values_name_the_key(default_config, path, value, expected):
    with pytest.raises(ConfigError) as err:
        validate_config(_broken(default_config, path, value))
    for fragment in expected:
        assert fragment in str(err.value), str(err.value)


def test_unknown_top_level_key_is_named(default_config):
    cfg = dict(default_config, colour="blue")
    with pytest.raises(ConfigError, match="colour"):
        validate_config(cfg)


def test_cross_references_are_checked(default_config):
    cfg = copy.deepcopy(default_config)
    first = next(iter(cfg["experiments"]))
    cfg["experiments"][first]["runs"][0]["task"] = "no_such_task"
    with pytest.raises(ConfigError, match=r"experiments\.\w+\.runs\[0\]\.task"):
        check_study(cfg)
    cfg = copy.deepcopy(default_config)
    task = next(iter(cfg["tasks"]))
    cfg["tasks"][task]["erase"] = ["Nobody Atall"]
    with pytest.raises(ConfigError, match=f"tasks.{task}.erase"):
        check_study(cfg)


def test_finetuning_on_erased_concepts_is_rejected(default_config):
    cfg = copy.deepcopy(default_config)
    first = next(iter(cfg["experiments"]))
    run = cfg["experiments"][first]["runs"][0]
    task = cfg["tasks"][run["task"]]
    ftset = run.get("ftset") or f"random_{task['domain']}"
    cfg["finetune_sets"][ftset]["concepts"] = [task["erase"][0], *cfg["finetune_sets"][ftset]["concepts"][1:]]
    with pytest.raises(ConfigError, match="fine-tunes on erased concepts"):
        check_study(cfg)


def test_deep_merge_overlays_nested_keys():
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 5}})
    assert merged == {"a": {"b": 5, "c": 2}, "d": 1}


def test_config_files_are_mappings(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="mapping"):
        load_config([bad])


def test_command_line_strings_are_coerced_to_schema_types(default_config):
    from resurgence.config import coerce_strings

    cfg = copy.deepcopy(default_config)
    cfg["toyworld"]["retrain"] = "false"
    cfg["finetune_methods"]["lora"]["learning_rate"] = "0.001"
    cfg["seeds"] = ["0", "1"]
    cfg["erase_variants"]["default"]["lambda1"] = "1e-3"
    coerce_strings(cfg)
    assert cfg["toyworld"]["retrain"] is False
    assert cfg["finetune_methods"]["lora"]["learning_rate"] == 0.001
    assert cfg["seeds"] == [0, 1]
    assert cfg["erase_variants"]["default"]["lambda1"] == 1e-3
    cfg["finetune_methods"]["lora"]["method"] = "lora"  # strings stay strings
    coerce_strings(cfg)
    assert cfg["finetune_methods"]["lora"]["method"] == "lora"
    cfg["generation"]["steps"] = "many"  # uncoercible: left for validation to reject
    coerce_strings(cfg)
    with pytest.raises(ConfigError, match="generation.steps"):
        validate_config(cfg)


# ----------------------------------------------------------------------------- checkpoints and the trajectory


@pytest.mark.parametrize(
    ("lora", "steps", "key", "fragment"),
    [
        (
            {"steps": 200, "checkpoint_every": 300},
            [50],
            "finetune_methods.lora.checkpoint_every",
            "300 is more than its steps",
        ),
        (
            {"steps": 200, "checkpoint_every": 50},
            [60],
            "trajectory.steps",
            "no checkpoint is kept at step 60",
        ),
        ({"steps": 200, "checkpoint_every": 50}, [250], "trajectory.steps", "step 250 is beyond"),
    ],
    ids=["checkpoint_every_beyond_steps", "step_between_checkpoints", "step_beyond_the_run"],
)
def test_impossible_checkpoint_settings_are_rejected_before_any_job(
    default_config, lora, steps, key, fragment
):
    cfg = copy.deepcopy(default_config)
    cfg["finetune_methods"]["lora"].update(lora)
    cfg["trajectory"]["steps"] = steps
    with pytest.raises(ConfigError, match=rf"config key '{re.escape(key)}'.*{fragment}.*allowed values"):
        check_study(cfg)


def test_trajectory_at_the_final_step_and_at_checkpoints_is_allowed(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["trajectory"]["steps"] = [50, 150, 200]
    check_study(cfg)


def test_gender_mapping_on_an_object_task_names_the_key(default_config):
    cfg = copy.deepcopy(default_config)
    cfg["experiments"]["fig6"]["runs"].append({"task": "object_ship", "erase": "mapping_gender"})
    with pytest.raises(ConfigError) as err:
        check_study(cfg)
    text = str(err.value)
    assert text.startswith("config key 'erase_variants.mapping_gender.mapping' (task 'object_ship'"), text
    assert "'ship' is an object" in text and "allowed values" in text
    cfg["tasks"]["object_ship"]["mapping"] = "gender"
    with pytest.raises(ConfigError, match=r"config key 'tasks\.object_ship\.mapping'"):
        study.erase_spec(cfg, "object_ship", "default")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        ("tasks: [a\n", "is not valid YAML at line 2"),
        (b"\xff\xfe", "cannot be read"),
    ],
    ids=["missing", "malformed", "not_text"],
)
def test_unreadable_config_files_are_named(tmp_path, content, fragment):
    path = tmp_path / "overlay.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=rf"config file '{re.escape(str(path))}' {fragment}"):
        load_config([ROOT / "config.yaml", path])


# Settings sections the code reads through a dataclass: the dataclass holds their defaults, the schema
# names the same fields and gives no default. Extra schema keys are study-level ones the study resolves
# before the dataclass is built (`study.erase_spec`), or the method selector.
DATACLASS_SECTIONS = {
    ("generation",): ("resurgence.generate.engine", "GenerationConfig", set()),
    ("finetune_methods", "*"): ("resurgence.finetune.config", "FinetuneConfig", set()),
    ("toyworld", "knowledge"): ("resurgence.toyworld.knowledge", "KnowledgeConfig", set()),
    ("erase_defaults", "identity"): (
        "resurgence.mace.config",
        "EraseConfig",
        {"domain_weight_scale", "preserve_captions", "preserve_unconditional", "method"},
    ),
    ("erase_methods", "uce"): ("resurgence.erasure.config", "UCEConfig", {"mapping", "method"}),
    ("erase_methods", "esd"): ("resurgence.erasure.config", "ESDConfig", {"method"}),
}


@pytest.mark.parametrize("path", sorted(DATACLASS_SECTIONS))
def test_schema_sections_and_their_dataclasses_stay_in_step(path):
    import dataclasses
    import importlib

    from resurgence.config import _resolve, load_schema

    module, name, study_keys = DATACLASS_SECTIONS[path]
    root = load_schema()
    section = root
    for key in path:
        section = _resolve(section, root)
        section = section["additionalProperties"] if key == "*" else section["properties"][key]
    props = {k: _resolve(v, root) for k, v in _resolve(section, root)["properties"].items()}
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    assert set(props) - study_keys == fields, f"schema {'.'.join(path)} vs {name}"
    assert not [k for k in fields if "default" in props[k]], "a default in both the schema and the dataclass"


def test_schema_defaults_are_filled_once_where_unset(tmp_path):
    from resurgence.config import apply_defaults

    config = load_config([ROOT / "config.yaml"])
    trimmed = load_config([ROOT / "config.yaml"])
    del (
        trimmed["toyworld"],
        trimmed["evaluation"]["images_per_prompt"],
        trimmed["evaluation"]["captions"]["seed"],
    )
    apply_defaults(trimmed)
    assert trimmed["toyworld"] == {k: v for k, v in config["toyworld"].items() if k != "knowledge"}
    assert trimmed["toyworld"]["weights"] == "resources/toyworld" and trimmed["toyworld"]["seed"] == 0
    assert trimmed["evaluation"]["images_per_prompt"] == {"identity": 1, "object": 1}
    assert trimmed["evaluation"]["captions"]["seed"] == config["evaluation"]["captions"]["seed"] == 1000
    assert config["finetune_sets"]["tercile_1"]["seed"] == 0  # inside a named entry too
    assert apply_defaults(config) == load_config([ROOT / "config.yaml"])  # set values stay as they are


@pytest.mark.parametrize("key", ["linear_fp8", "conv_fp8"])
def test_fp8_layers_need_bf16_sampling(default_config, key):
    cfg = copy.deepcopy(default_config)
    cfg["generation"].update({key: "row", "dtype": "float32"})
    with pytest.raises(ConfigError, match="generation"):
        validate_config(cfg)
    cfg["generation"]["dtype"] = "bfloat16"
    validate_config(cfg)
