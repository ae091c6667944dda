import json

MODELS = study.model_specs(config)


def as_json(obj):
    """Compact, key-sorted JSON: identical specs give identical params (no spurious reruns)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def job_task(wildcards):
    """The task whose models a job reads: its ``task`` wildcard, or the first task of its base
    image pool (a pool's tasks share its model), or None."""
    if wildcards is None:
        return None
    if hasattr(wildcards, "pool"):
        return study.base_pool_tasks(config, wildcards.pool)[0]
    return getattr(wildcards, "task", None)


def models_input(wildcards=None):
    """The toy models a job reads: the retrained world's, and its task's world variant's."""
    out = []
    if config["world"] == "toy" and config["toyworld"]["retrain"]:
        out.append(layout.manifest_file(study.toy_models_dir(config)))
    task = job_task(wildcards)
    if task is not None and study.task_variant(config, task) is not None:
        out.append(
            layout.manifest_file(layout.variant_dir(study.task_variant(config, task)))
        )
    return out


def task_models(wildcards):
    """The model specs of a job of task ``wildcards.task`` (its world variant's text-to-image model)."""
    return as_json(study.task_models(config, job_task(wildcards)))


def weights(*reads):
    """Param: the digests of the shipped toy models a job reads (new weights rerun it)."""
    return lambda wc: as_json(study.shipped_weights(config, job_task(wc), reads))


def toyworld_quality_target():
    return [layout.TOY_QUALITY] if config["world"] == "toy" else []


def device():
    return config["device"]


def gen_settings():
    g = dict(config["generation"])
    g.setdefault("dtype", MODELS.get("dtype", "float32"))
    return g


def ftdata_manifest(wc):
    return layout.manifest_file(study.ftset_dir(config, wc.ftset, wc.task))


def finetuned_roles(wc):
    """Intermediate checkpoints (trajectory) are scored on the erased concepts only."""
    final = study.finetune_spec(config, wc.ftmethod)["steps"]
    return ("erased", "retained", "caption") if int(wc.step) >= final else ("erased",)
