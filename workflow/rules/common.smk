import json

PY = "python -m resurgence"
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
