import json

MODELS = study.model_specs(config)


def as_json(obj):
    """Compact, key-sorted JSON: identical specs give identical params (no spurious reruns)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def models_input(wildcards=None):
    """The toy models this study reads; a rule's output only when the toy world is retrained."""
    if config["world"] == "toy" and config.get("toyworld", {}).get("retrain", False):
        return [f"{study.toy_models_dir(config)}/manifest.json"]
    return []


def toyworld_quality_target():
    return ["results/toyworld/quality.json"] if config["world"] == "toy" else []


def device():
    return config.get("device", "auto")


def gen_settings():
    g = dict(config["generation"])
    g.setdefault("dtype", MODELS.get("dtype", "float32"))
    return g


def ftdata_manifest(wc):
    return f"{study.ftset_dir(config, wc.ftset, wc.task)}/manifest.json"


def finetuned_roles(wc):
    """Intermediate checkpoints (trajectory) are scored on the erased concepts only."""
    final = study.finetune_spec(config, wc.ftmethod)["steps"]
    return ("erased", "retained", "caption") if int(wc.step) >= final else ("erased",)
