"""Resolve a validated config into the study's jobs: their specs and their artifact paths.

The Snakefile and the CLI both call these pure functions, so a rule's ``params`` (what
triggers a rerun) are exactly the spec its job runs with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from resurgence import layout
from resurgence.config import ConfigError, deep_merge
from resurgence.generate import UNCONDITIONAL_PROMPT
from resurgence.models.availability import check_available
from resurgence.world import World, get_world

# Experiments with a target of their own, outside `all`: they retrain the toy text-to-image model (GPU).
OPTIONAL_EXPERIMENTS: dict[str, str] = {"control": "exact_unlearning_control", "fig14": "geometry_sweep"}
# Free captions that MACE preserves are drawn with their own seed, apart from the evaluation captions.
PRESERVE_CAPTION_SEED = 7_000_003


# What a run gets for what it does not name: MACE at the task's settings, LoRA, and the task's in-domain
# random fine-tune set (`default_ftset`). The figures hold these fixed while they vary one factor.
DEFAULT_ERASE = "default"
DEFAULT_FTMETHOD = "lora"


@dataclass(frozen=True)
class Run:
    """One erase -> fine-tune run of an experiment."""

    task: str
    erase: str = DEFAULT_ERASE
    ftset: str = ""
    ftmethod: str = DEFAULT_FTMETHOD


# ----------------------------------------------------------------------------- paths (`resurgence.layout`)


def ftset_dir(config: dict[str, Any], ftset: str, task: str) -> str:
    """Random sets are shared by every task; tercile sets depend on the task's erased concepts."""
    if config["finetune_sets"][ftset]["kind"] == "random":
        return layout.random_ftset_dir(ftset)
    return layout.tercile_ftset_dir(task, ftset)


def finetune_dir(run: Run) -> str:
    return layout.finetune_dir(run.task, run.erase, run.ftset, run.ftmethod)


def reversion_csv(run: Run) -> str:
    return layout.reversion_csv(run.task, run.erase, run.ftset, run.ftmethod)


def state_id(run: Run, stage: str, step: int | None = None) -> str:
    """A run's model state (`layout.state_id`): erased, or fine-tuned at ``step``."""
    return layout.state_id(stage, run.erase, run.ftset, run.ftmethod, "" if step is None else step)


def state_fields(config: dict[str, Any], task: str, state: str) -> dict[str, Any]:
    """`parse_state` plus ``is_final``: whether a fine-tuned state is the run's last step."""
    fields = layout.parse_state(task, state)
    final = (
        fields["state"] != "finetuned" or fields["step"] >= finetune_spec(config, fields["ftmethod"])["steps"]
    )
    return dict(fields, is_final=bool(final))


# ----------------------------------------------------------------------------- models


def toy_models_dir(config: dict[str, Any]) -> str:
    tw = config["toyworld"]
    return layout.TOY_MODELS_DIR if tw["retrain"] else tw["weights"]


def toy_knowledge(config: dict[str, Any]) -> dict[str, Any]:
    """``toyworld.knowledge`` completed with `KnowledgeConfig`'s defaults (the shipped world's geometry)."""
    from dataclasses import asdict

    from resurgence.toyworld.knowledge import KnowledgeConfig

    try:
        return asdict(KnowledgeConfig.from_dict(config["toyworld"].get("knowledge")))
    except ValueError as err:
        raise ConfigError(f"config key 'toyworld.knowledge': {err}") from None


def calibration_sets(config: dict[str, Any]) -> dict[str, list[str]]:
    """The erase sets App. C.2's statistic is computed against (`knowledge.CALIBRATION_TASKS`), where configured."""
    from resurgence.toyworld.knowledge import CALIBRATION_TASKS

    tasks = config.get("tasks", {})
    return {d: list(tasks[t]["erase"]) for d, t in CALIBRATION_TASKS.items() if t in tasks}


def check_toy_knowledge(config: dict[str, Any]) -> None:
    """The shipped toy models must have learned the configured concept geometry (else retrain)."""
    if config["world"] != "toy" or config["toyworld"]["retrain"]:
        return
    from resurgence.toyworld.manifest import trained_knowledge

    want = toy_knowledge(config)
    for model, got in trained_knowledge(toy_models_dir(config)).items():
        if got != want:
            raise ConfigError(
                f"config key 'toyworld.knowledge' is {want}, but the {model} model in {toy_models_dir(config)!r} "
                f"learned {got}; set toyworld.knowledge to that, or retrain (toyworld.retrain: true)"
            )


def task_variant(config: dict[str, Any], task: str) -> str | None:
    """The world variant a task runs in (`world_variants`), or None for the study's own world."""
    return config["tasks"][task].get("variant")


def variant_train_spec(config: dict[str, Any], variant: str) -> dict[str, Any]:
    """What a variant's text-to-image model is trained with: the world's knowledge geometry with the
    variant's changes, and the concepts it never sees (``exclude_task``: that task's erase set)."""
    from resurgence.toyworld.knowledge import KnowledgeConfig

    v = config["world_variants"][variant]
    knowledge = asdict(KnowledgeConfig.from_dict({**toy_knowledge(config), **v.get("knowledge", {})}))
    exclude = list(config["tasks"][v["exclude_task"]]["erase"]) if "exclude_task" in v else []
    return {
        "knowledge": knowledge,
        "exclude": exclude,
        "seed": int(config["toyworld"]["seed"]),
        "unet_steps": shipped_unet_steps(config),
    }


def variant_steps_arg(config: dict[str, Any], variant: str) -> str:
    """The ``toyworld train`` option fixing a variant's UNet step count ("" where none is known)."""
    steps = variant_train_spec(config, variant)["unet_steps"]
    return f"--unet-steps {steps}" if steps else ""


def shipped_unet_steps(config: dict[str, Any]) -> int | None:
    """The UNet step count the study's text-to-image model trained for (its manifest), which a world
    variant replays so that it differs from the study's model in its one change; None when unknown."""
    from resurgence.toyworld.manifest import read_manifest

    if config["world"] != "toy" or config["toyworld"]["retrain"]:
        return None
    t2i = read_manifest(toy_models_dir(config)).get("models", {}).get("t2i", {})
    steps = t2i.get("metrics", {}).get("unet", {}).get("steps")
    return int(steps) if steps else None


def task_models(config: dict[str, Any], task: str) -> dict[str, Any]:
    """`model_specs`, with the task's world variant's text-to-image model as the pipeline."""
    models = model_specs(config)
    variant = task_variant(config, task)
    if variant is not None:
        models = {**models, "pipeline": f"{layout.variant_dir(variant)}/t2i"}
    return models


def check_world_variants(config: dict[str, Any]) -> None:
    """Variants exist only in the toy world; every task's variant and every variant's task must exist."""
    variants = config.get("world_variants") or {}
    toy_knowledge(config)  # the study's own geometry first, under its own key
    for name, t in config["tasks"].items():
        v = t.get("variant")
        if v is None:
            continue
        if config["world"] != "toy":
            raise ConfigError(f"config key 'tasks.{name}.variant': world variants retrain the toy world only")
        if v not in variants:
            raise ConfigError(f"config key 'tasks.{name}.variant': allowed values: {sorted(variants)}")
    for name, v in variants.items():
        if "exclude_task" in v and v["exclude_task"] not in config["tasks"]:
            raise ConfigError(
                f"config key 'world_variants.{name}.exclude_task': allowed values: {sorted(config['tasks'])}"
            )
        try:
            variant_train_spec(config, name)
        except ValueError as err:
            raise ConfigError(f"config key 'world_variants.{name}.knowledge': {err}") from None


# The folder of each model spec key inside a toy-model folder (`model_specs`).
TOY_MODEL_FOLDERS: dict[str, str] = {
    "pipeline": "t2i",
    "clip": "clip",
    "detector": "detector",
    "segmenter": "segmenter",
}


def shipped_weights(config: dict[str, Any], task: str | None, reads: tuple[str, ...]) -> dict[str, str]:
    """Content digests of the shipped toy models a job ``reads`` (keys of `TOY_MODEL_FOLDERS`), from the
    manifest's file hashes: a rule's param, so that new shipped weights rerun the jobs that read them.

    Empty where the DAG tracks the weights otherwise: a retrained world's and a world variant's
    manifests are job inputs, and real models are identified by their specs (the ``models`` param).
    """
    if config["world"] != "toy" or config["toyworld"]["retrain"]:
        return {}
    unknown = [key for key in reads if key not in TOY_MODEL_FOLDERS]
    if unknown:
        raise ValueError(f"reads: {unknown[0]!r} is not one of {sorted(TOY_MODEL_FOLDERS)}")
    manifest = Path(layout.manifest_file(toy_models_dir(config)))
    digests = _model_digests(str(manifest), manifest.stat().st_mtime_ns if manifest.exists() else 0)
    overridden = set(config.get("models", {}))
    variant = task_variant(config, task) if task is not None else None
    return {
        key: digests[key]
        for key in reads
        if key not in overridden and not (key == "pipeline" and variant is not None)
    }


@lru_cache(maxsize=4)
def _model_digests(manifest: str, mtime_ns: int) -> dict[str, str]:
    """Per model key, the sha256 of its folder's manifest file hashes. Parsed once per manifest version
    (``mtime_ns``), not once per job: the DAG asks for it in every job's params."""
    import hashlib

    from resurgence.io import read_json

    files = read_json(manifest).get("files", {}) if mtime_ns else {}
    out = {}
    for key, folder in TOY_MODEL_FOLDERS.items():
        lines = "".join(f"{p}:{files[p]}\n" for p in sorted(files) if p.startswith(f"{folder}/"))
        out[key] = hashlib.sha256(lines.encode()).hexdigest()
    return out


def model_specs(config: dict[str, Any]) -> dict[str, Any]:
    """Where each model comes from; for the toy world, inside the toy-model folder unless overridden."""
    models = dict(config.get("models", {}))
    if config["world"] == "toy":
        root = toy_models_dir(config)
        for key, folder in TOY_MODEL_FOLDERS.items():
            models.setdefault(
                key, f"{root}/{folder}" if key == "pipeline" else {"kind": "toy", "path": f"{root}/{folder}"}
            )
    models.setdefault("dtype", "float32")
    return models


# ----------------------------------------------------------------------------- specs


# Erasure methods (`resurgence.erasure`); "none" is the exact-unlearning control's (the model never learned them).
ERASE_METHODS = ("mace", "uce", "esd", "none")


def erase_work(config: dict[str, Any], task: str) -> int:
    """An erasure's size, for the order in which erasures start (`scheduler.job_priority`): the concepts it
    erases. Every method's work grows with them (MACE draws images and trains a LoRA for each)."""
    return len(config["tasks"][task]["erase"])


def erase_method(config: dict[str, Any], task: str, erase: str) -> str:
    """The method of one erasure: the variant's `method`, else the task's `erasure`, else MACE."""
    variant = config["erase_variants"][erase]
    method = variant.get("method") or config["tasks"][task].get("erasure") or "mace"
    if method not in ERASE_METHODS:
        key = f"erase_variants.{erase}.method" if "method" in variant else f"tasks.{task}.erasure"
        raise ConfigError(f"config key '{key}' is {method!r}; allowed values: {list(ERASE_METHODS)}")
    return method


def erase_settings(config: dict[str, Any], task: str, erase: str) -> dict[str, Any]:
    """MACE settings of one erasure: domain defaults < the task's own (`mapping`, `mace`) < the variant."""
    t = config["tasks"][task]
    settings = deep_merge(
        config["erase_defaults"][t["domain"]], {"mapping": t["mapping"]} if "mapping" in t else {}
    )
    settings = deep_merge(settings, t.get("mace", {}))
    variant = {k: v for k, v in config["erase_variants"][erase].items() if k != "method"}
    return deep_merge(settings, variant)


def method_settings(config: dict[str, Any], task: str, erase: str, method: str) -> dict[str, Any]:
    """Settings of a method other than MACE: `erase_methods.<method>` < the task's `<method>` < the variant
    (less its `method` and `mapping`: the guide is the task's mapping, `_mapped_concepts`)."""
    settings = deep_merge(
        config.get("erase_methods", {}).get(method, {}), config["tasks"][task].get(method, {})
    )
    settings = deep_merge(settings, config["erase_variants"][erase])
    return {k: v for k, v in settings.items() if k not in ("method", "mapping")}


# The entry of a {concept: phrase} mapping that maps every concept it does not name.
MAPPING_FALLBACK = "*"


def _mapping_for(world: World, name: str, mapping: Any) -> str:
    if isinstance(mapping, dict):
        if name not in mapping and MAPPING_FALLBACK not in mapping:
            raise ConfigError(
                f"mapping has no entry for erased concept {name!r} and no fallback entry {MAPPING_FALLBACK!r}"
            )
        return _mapping_for(world, name, mapping.get(name, mapping.get(MAPPING_FALLBACK)))
    if mapping == "gender":
        concept = world.concept(name)
        gender = dict(concept.traits).get("gender")
        if gender not in ("male", "female"):
            raise ConfigError(
                f"'gender' maps each erased identity to 'a male celebrity' or 'a female celebrity', but {name!r} "
                f"is {'an' if concept.domain[0] in 'aeiou' else 'a'} {concept.domain} with no male/female trait; "
                "allowed values here: a phrase or a {concept: phrase} mapping"
            )
        return f"a {gender} celebrity"
    return str(mapping)


def mapping_key(config: dict[str, Any], task: str, erase: str) -> str:
    """The config key that sets the mapping concept of one erasure (the last of `erase_settings`' layers)."""
    t = config["tasks"][task]
    key = f"erase_defaults.{t['domain']}.mapping"
    for where, layer in (
        (f"tasks.{task}", t),
        (f"tasks.{task}.mace", t.get("mace", {})),
        (f"erase_variants.{erase}", config["erase_variants"][erase]),
    ):
        if "mapping" in layer:
            key = f"{where}.mapping"
    return key


def world_ref(config: dict[str, Any]) -> dict[str, Any]:
    """The part of the config that defines the world (enough for a job to rebuild it)."""
    ref: dict[str, Any] = {
        "world": config["world"],
        "toyworld": {"seed": int(config["toyworld"]["seed"])},
    }
    if config["world"] != "toy":
        ref.update(
            tasks=config["tasks"], finetune_sets=config["finetune_sets"], evaluation=config["evaluation"]
        )
        ref["synonyms"] = config.get("synonyms") or {}
    return ref


def _domain_retained(
    config: dict[str, Any], world: World, task: str, with_finetune: bool = False
) -> list[Any]:
    """The concepts an erasure keeps in its in-domain cache ("the celebrities you wish to retain"):
    the task's retained concepts and the domain's concepts that no task erases and no fine-tune set names.

    Concepts erased by *another* task stay out, so the nested erase sets (1 ⊂ 5 ⊂ 10 ⊂ 100) keep
    one cache; fine-tune concepts stay out so fine-tuning starts from a model that never saw them
    as constraints, unless ``with_finetune`` (``domain_preserve: auto_with_finetune``, the ablation
    of the paper's setting, where MACE's retained celebrities include the fine-tune ones).
    """
    t = config["tasks"][task]
    erased_anywhere: set[str] = set()
    for other in config["tasks"].values():
        erased_anywhere |= set(other["erase"])
    in_ftsets: set[str] = set()
    if not with_finetune:
        for fs in config["finetune_sets"].values():
            in_ftsets |= set(fs.get("concepts", []))
    keep = [world.concept(n) for n in t.get("retain", [])]
    names = {c.name for c in keep}
    pool = world.by_domain(t["domain"]) if hasattr(world, "by_domain") else []
    return keep + [c for c in pool if c.name not in erased_anywhere | in_ftsets | names]


def _domain_preserve(
    config: dict[str, Any], world: World, task: str, with_finetune: bool = False
) -> list[str]:
    """MACE's in-domain cache: every prompt of the `_domain_retained` concepts."""
    return [
        prompt
        for c in _domain_retained(config, world, task, with_finetune)
        for prompt in world.eval_prompts(c)
    ]


def unconditional_prompt(config: dict[str, Any]) -> str:
    """The prompt classifier-free guidance pairs with every image of the study (its negative prompt)."""
    return config["generation"].get("negative_prompt", UNCONDITIONAL_PROMPT)


def erase_spec(config: dict[str, Any], task: str, erase: str, world: World | None = None) -> dict[str, Any]:
    """What the erase job runs with: erased concepts with their mapping concept, and every MACE setting.

    MACE's published settings for the domain (`EraseConfig.celebrity` / `.objects`) are the base;
    `erase_defaults`, the task's mapping and the variant override them. The result is complete,
    so a change of any setting reruns exactly the erasures it affects. Prompts are not expanded
    here (the job does it from the world) so the spec fits a command line.
    """
    import dataclasses

    world = world or get_world(config)
    t = config["tasks"][task]
    names = list(t["erase"])
    method = erase_method(config, task, erase)
    if method == "uce":
        return _uce_spec(config, world, task, erase)
    if method == "esd":
        return _esd_spec(config, task, erase)
    if method == "none":  # the exact-unlearning control: the model never learned them
        concepts = [dict(name=n) for n in names]
        return dict(
            world=world_ref(config),
            task=task,
            erase=erase,
            domain=t["domain"],
            concepts=concepts,
            method="none",
        )
    preset = _mace_preset(t)
    settings = erase_settings(config, task, erase)
    settings.pop("mapping", None)  # resolved per concept (`_mapped_concepts`), below
    n_captions = int(settings.pop("preserve_captions", 0))
    domain_preserve = settings.pop("domain_preserve", "none")
    if "domain_weight_scale" in settings:
        scale = float(settings.pop("domain_weight_scale"))
        settings.setdefault("domain_weight", preset.domain_weight * scale)
    preserve = list(settings.pop("preserve", []))
    if n_captions:
        preserve += world.free_captions(n_captions, seed=PRESERVE_CAPTION_SEED)
    if domain_preserve in ("auto", "auto_with_finetune"):
        domain_preserve = _domain_preserve(
            config, world, task, with_finetune=domain_preserve == "auto_with_finetune"
        )
    elif domain_preserve == "none":
        domain_preserve = []
    if settings.pop("preserve_unconditional", False):
        domain_preserve = [*domain_preserve, unconditional_prompt(config)]
    cfg = dataclasses.replace(
        preset, preserve=tuple(preserve), domain_preserve=tuple(domain_preserve), **settings
    )
    concepts = _mapped_concepts(config, world, task, erase)
    # MACE's complete config, the mapping resolved per concept as the concepts carry it: the job builds
    # `EraseConfig.from_dict` from it as it is.
    cfg = dataclasses.replace(cfg, mapping={c["name"]: c["mapping"] for c in concepts})
    mace = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
    return dict(
        world=world_ref(config), task=task, erase=erase, domain=t["domain"], concepts=concepts, mace=mace
    )


def _mace_preset(task: dict[str, Any]) -> Any:
    """MACE's published settings for the task (`EraseConfig.celebrity` / `.objects`), before the config's."""
    from resurgence.mace.config import EraseConfig

    names = list(task["erase"])
    if task["domain"] == "identity":
        return EraseConfig.celebrity(n_erased=len(names))
    return EraseConfig.objects(names)


def _preset_mapping(task: dict[str, Any]) -> Any:
    """MACE's published mapping concept for the task's domain."""
    return _mace_preset(task).mapping


def _mapped_concepts(config: dict[str, Any], world: World, task: str, erase: str) -> list[dict[str, str]]:
    """Each erased concept with its mapping (guide) phrase: the layers of `erase_settings` over the preset's."""
    t = config["tasks"][task]
    mapping = erase_settings(config, task, erase).get("mapping") or _preset_mapping(t)
    try:
        return [dict(name=n, mapping=_mapping_for(world, n, mapping)) for n in t["erase"]]
    except ConfigError as err:
        raise ConfigError(
            f"config key '{mapping_key(config, task, erase)}' (task {task!r}, erase {erase!r}): {err}"
        ) from None


def probe_mappings(config: dict[str, Any], task: str, erase: str) -> dict[str, str]:
    """Each erased concept's mapping phrase, for any method: which text states carry the concept
    (`concept_token_states`). Methods without a mapping (ESD) are probed on the task's preset one, so
    their reversion is measured on the rows MACE and UCE edit."""
    return {c["name"]: c["mapping"] for c in _mapped_concepts(config, get_world(config), task, erase)}


def _uce_spec(config: dict[str, Any], world: World, task: str, erase: str) -> dict[str, Any]:
    """What a UCE erase job runs with: the concepts with their guide phrases and every UCE setting.

    The guide is the task's mapping concept (MACE's, so the methods compare on one target). ``preserve``:
    ``auto`` keeps every name of the concepts MACE's in-domain cache keeps (`_domain_retained`),
    ``auto_with_finetune`` those and the fine-tune sets' concepts, ``none`` nothing; a list is used as given.
    """
    from resurgence.erasure.config import UCEConfig

    where = f"erase_methods.uce, tasks.{task}.uce, erase_variants.{erase}"
    settings = method_settings(config, task, erase, "uce")
    preserve = settings.pop("preserve", "auto")
    if preserve in ("auto", "auto_with_finetune"):
        keep = _domain_retained(config, world, task, with_finetune=preserve == "auto_with_finetune")
        preserve = [n for c in keep for n in c.names]
    elif preserve == "none":
        preserve = []
    elif isinstance(preserve, str):
        raise ConfigError(
            f"UCE preserve of task {task!r}, erase {erase!r} ({where}) is {preserve!r}; allowed values: "
            "auto, auto_with_finetune, none or a list of concept phrases"
        )
    return _method_spec(
        config, task, erase, "uce", UCEConfig, {**settings, "preserve": list(preserve)},
        _mapped_concepts(config, world, task, erase),
    )  # fmt: skip


def _method_spec(
    config: dict[str, Any],
    task: str,
    erase: str,
    method: str,
    cls: type,
    settings: dict[str, Any],
    concepts: list,
) -> dict[str, Any]:
    """The erase spec of a method other than MACE: ``settings`` made complete by its config dataclass
    (``cls``; a bad key or value is a ConfigError naming where it may be set)."""
    try:
        complete = cls.from_dict(settings).to_dict()
    except (TypeError, ValueError) as err:
        where = f"erase_methods.{method}, tasks.{task}.{method}, erase_variants.{erase}"
        raise ConfigError(
            f"{method.upper()} settings of task {task!r}, erase {erase!r} ({where}): {err}"
        ) from None
    t = config["tasks"][task]
    return dict(
        world=world_ref(config), task=task, erase=erase, domain=t["domain"], concepts=concepts, method=method,
        **{method: complete},
    )  # fmt: skip


def _esd_spec(config: dict[str, Any], task: str, erase: str) -> dict[str, Any]:
    """What an ESD erase job runs with: the concepts (every name of each is a training phrase) and every
    ESD setting."""
    from resurgence.erasure.config import ESDConfig

    concepts = [dict(name=n) for n in config["tasks"][task]["erase"]]
    return _method_spec(
        config, task, erase, "esd", ESDConfig, method_settings(config, task, erase, "esd"), concepts
    )


def ftset_spec(config: dict[str, Any], ftset: str, task: str | None = None) -> dict[str, Any]:
    fs = dict(config["finetune_sets"][ftset])
    spec = dict(name=ftset, **fs)
    if fs["kind"] == "tercile":
        if task is None:
            raise ValueError(f"fine-tune set {ftset!r} is a tercile set and needs a task")
        spec["task"] = task
        spec["domain"] = config["tasks"][task]["domain"]
        spec["erased"] = list(config["tasks"][task]["erase"])
        spec["candidates"] = tercile_candidates(config, task)
    return spec


def tercile_candidates(config: dict[str, Any], task: str, world: World | None = None) -> list[str]:
    """In-domain concepts that are neither erased nor retained by the task (App. C.2's candidate pool)."""
    world = world or get_world(config)
    t = config["tasks"][task]
    excluded = set(t["erase"]) | set(t.get("retain", []))
    pool = [c.name for c in world.by_domain(t["domain"])] if hasattr(world, "by_domain") else []
    return [n for n in pool if n not in excluded]


def finetune_spec(config: dict[str, Any], ftmethod: str) -> dict[str, Any]:
    """A fine-tune method's config entry as the job reads it (`FinetuneConfig.from_dict` fills its defaults)."""
    return dict(config["finetune_methods"][ftmethod])


def generation_spec(
    config: dict[str, Any], task: str, roles: tuple[str, ...] = ("erased", "retained", "caption")
):
    """What a generation job renders for one model state of a task (compact; see `expand_records`)."""
    t = config["tasks"][task]
    caps = config["evaluation"]["captions"]
    with_captions = "caption" in roles and t["domain"] in caps["domains"]
    samples = int(config["evaluation"]["images_per_prompt"][t["domain"]])
    return dict(
        world=world_ref(config),
        task=task,
        domain=t["domain"],
        erase=list(t["erase"]) if "erased" in roles else [],
        retain=list(t.get("retain", [])) if "retained" in roles else [],
        seeds=[int(s) for s in config["seeds"]],
        captions=dict(n=int(caps["n"]), seed=int(caps["seed"])) if with_captions else None,
        generation=dict(config["generation"]),
        # Only when > 1, so that specs (and Snakemake's params) of one-image studies stay as they were.
        **({"samples": samples} if samples > 1 else {}),
    )


def base_pool(config: dict[str, Any], task: str) -> str:
    """The shared pool a task's base-model images come from: one per domain and text-to-image model
    (the study's own world's, or a world variant's), since the base images of a prompt and seed depend
    on nothing else (the generation settings, seeds and samples per prompt are the study's, per domain).
    With ``share_base_images: false``, a pool of the task's own (``task-{task}``)."""
    if not config["share_base_images"]:
        return f"task-{task}"
    domain = config["tasks"][task]["domain"]
    variant = task_variant(config, task)
    return domain if variant is None else f"{domain}-{variant}"


def base_pool_tasks(config: dict[str, Any], pool: str) -> list[str]:
    """The tasks whose base images come from ``pool``, in config order."""
    tasks = [t for t in config["tasks"] if base_pool(config, t) == pool]
    if not tasks:
        allowed = sorted({base_pool(config, t) for t in config["tasks"]})
        raise ConfigError(f"base image pool {pool!r}: allowed values: {allowed}")
    return tasks


def base_pool_spec(config: dict[str, Any], pool: str) -> dict[str, Any]:
    """What a pool's generation job renders: every concept (erased or retained) of its tasks once, and
    the domain's captions once, so that an image a task asks the base model for is drawn once however
    many tasks ask for it (identity_1, 5 and 10 ask for identity_100's; the object tasks share their
    retained objects). Each task's base state then takes its images from here (`generate.engine.copy_from_pool`)."""
    tasks = base_pool_tasks(config, pool)
    concepts: dict[str, None] = {}
    for task in tasks:
        t = config["tasks"][task]
        concepts.update(dict.fromkeys([*t["erase"], *t.get("retain", [])]))
    spec = generation_spec(config, tasks[0])
    return dict(spec, task=pool, erase=[], retain=list(concepts))


# Noise seed of an evaluation image's extra samples: seed + NOISE_STRIDE * sample (sample 0 keeps the
# seed itself, so one-image specs draw exactly the images they always drew).
NOISE_STRIDE = 1_000_003


def expand_records(spec: dict[str, Any], world: World | None = None) -> list[dict[str, Any]]:
    """The prompts a model state is scored on: erased and retained concepts x templates x seeds (x samples,
    each with its own ``noise_seed``; ``seed`` stays the unit of the intervals), and captions."""
    world = world or get_world(spec["world"])
    records = []
    for role, names in (("erased", spec["erase"]), ("retained", spec["retain"])):
        for name in names:
            c = world.concept(name)
            for template, prompt in world.eval_templates(c):
                for seed in spec["seeds"]:
                    records.append(
                        dict(role=role, concept=c.name, prompt=prompt, template=template, seed=int(seed))
                    )
                    for k in range(1, int(spec.get("samples", 1))):
                        noise = int(seed) + NOISE_STRIDE * k
                        records.append(
                            dict(
                                role=role,
                                concept=c.name,
                                prompt=prompt,
                                template=template,
                                seed=int(seed),
                                sample=k,
                                noise_seed=noise,
                            )
                        )
    caps = spec.get("captions")
    if caps:
        for i, caption in enumerate(world.free_captions(caps["n"], caps["seed"])):
            records.append(dict(role="caption", concept="", prompt=caption, seed=caps["seed"] + i))
    return records


# ----------------------------------------------------------------------------- experiments and targets


def experiment_runs(config: dict[str, Any], experiment: str) -> list[Run]:
    """The runs of one experiment, defaults filled in. A run's ``method`` (default mace) names its erasure
    method; without ``erase`` it runs the erase variant named after the method, which must erase by it."""
    runs = []
    for i, r in enumerate(config["experiments"][experiment]["runs"]):
        method = r.get("method", "mace")
        erase = r.get("erase") or (DEFAULT_ERASE if method == "mace" else method)
        if erase not in config["erase_variants"]:
            raise ConfigError(
                f"config key 'experiments.{experiment}.runs[{i}]' names erase variant {erase!r}, which "
                f"erase_variants does not define (defined: {sorted(config['erase_variants'])})"
            )
        if "method" in r and erase_method(config, r["task"], erase) != method:
            raise ConfigError(
                f"config key 'experiments.{experiment}.runs[{i}].method' is {method!r}, but erase variant "
                f"{erase!r} of task {r['task']!r} erases by {erase_method(config, r['task'], erase)!r}"
            )
        ftset = r.get("ftset") or default_ftset(config, r["task"])
        runs.append(
            Run(task=r["task"], erase=erase, ftset=ftset, ftmethod=r.get("ftmethod", DEFAULT_FTMETHOD))
        )
    return runs


def default_ftset(config: dict[str, Any], task: str) -> str:
    domain = config["tasks"][task]["domain"]
    return f"random_{domain}"


def run_settings(config: dict[str, Any], run: Run) -> dict[str, Any]:
    """What a run varies, resolved from the config (`metrics.tables.RUN_SETTINGS`): the tables carry these
    as columns and the figures read them, so a renamed variant keeps its place in every figure."""
    t = config["tasks"][run.task]
    method = erase_method(config, run.task, run.erase)
    lambda1 = None
    if method == "mace":
        lambda1 = float(erase_settings(config, run.task, run.erase).get("lambda1", _mace_preset(t).lambda1))
    fs = config["finetune_sets"][run.ftset]
    return dict(
        method=method,
        mapping="; ".join(sorted(set(probe_mappings(config, run.task, run.erase).values()))),
        lambda1=lambda1,
        is_default_erase=run.erase == DEFAULT_ERASE,
        ftset_kind=fs["kind"],
        ftset_domain=fs.get("domain", t["domain"]),  # tercile sets draw from the task's domain
        tercile=fs.get("tercile"),
        is_default_ftset=run.ftset == default_ftset(config, run.task),
        is_default_ftmethod=run.ftmethod == DEFAULT_FTMETHOD,
    )


def study_experiments(config: dict[str, Any]) -> list[str]:
    """The experiments `all` makes: every configured one but `OPTIONAL_EXPERIMENTS`."""
    return [e for e in config["experiments"] if e not in OPTIONAL_EXPERIMENTS]


def all_runs(config: dict[str, Any]) -> list[Run]:
    """The runs of `study_experiments` (those `all` makes), each once."""
    seen: dict[Run, None] = {}
    for e in study_experiments(config):
        for r in experiment_runs(config, e):
            seen[r] = None
    return list(seen)


def trajectory_steps(config: dict[str, Any], run: Run) -> list[int]:
    """Intermediate checkpoints scored for the trajectory figure (only for the trajectory experiment's runs)."""
    traj = config.get("trajectory") or {}
    exp = traj.get("experiment")
    if not exp or exp not in config["experiments"] or run not in experiment_runs(config, exp):
        return []
    final = finetune_spec(config, run.ftmethod)["steps"]
    return sorted(s for s in traj.get("steps", []) if s < final)


def resurgence_states(config: dict[str, Any], run: Run) -> list[str]:
    """The states a run's resurgence compares: base, erased, and fine-tuned at the final step."""
    final = finetune_spec(config, run.ftmethod)["steps"]
    return ["base", state_id(run, "erased"), state_id(run, "finetuned", final)]


def run_states(config: dict[str, Any], run: Run) -> list[str]:
    states = resurgence_states(config, run)
    states += [state_id(run, "finetuned", s) for s in trajectory_steps(config, run)]
    return states


def experiment_metrics(config: dict[str, Any], experiment: str) -> list[str]:
    paths: dict[str, None] = {}
    for run in experiment_runs(config, experiment):
        for s in run_states(config, run):
            paths[layout.metrics_csv(run.task, s)] = None
    return list(paths)


TOY_MODEL_FILES = {
    "t2i": "t2i/model_index.json",
    "clip": "clip/open_clip_config.json",
    "detector": "detector/detector.json",
    "segmenter": "segmenter/segmenter.json",
}


def missing_toy_models(config: dict[str, Any]) -> list[str]:
    """Toy models absent from the configured weights folder (none when they will be retrained)."""
    if config["world"] != "toy" or config["toyworld"]["retrain"]:
        return []
    root = Path(toy_models_dir(config))
    return [name for name, rel in TOY_MODEL_FILES.items() if not (root / rel).is_file()]


def check_study(config: dict[str, Any]) -> None:
    """Cross-reference checks the JSON schema cannot express; raise `ConfigError` naming the key."""
    check_available(config)  # sd14: every missing model and input in one message, before any job
    missing = missing_toy_models(config)
    if missing:
        raise ConfigError(
            f"config key 'toyworld.weights': {toy_models_dir(config)!r} lacks the toy model(s) {missing}; "
            "train them with --config toyworld.retrain=true (a GPU takes minutes), or point toyworld.weights "
            "at a folder written by `python -m resurgence toyworld train`"
        )
    check_toy_knowledge(config)
    world = get_world(config)
    for tname, t in config["tasks"].items():
        for role in ("erase", "retain"):
            for name in t.get(role, []):
                try:
                    c = world.concept(name)
                except KeyError:
                    raise ConfigError(
                        f"config key 'tasks.{tname}.{role}': unknown concept {name!r}"
                    ) from None
                if c.domain != t["domain"]:
                    raise ConfigError(
                        f"config key 'tasks.{tname}.{role}': {name!r} is a {c.domain}, task domain is {t['domain']}"
                    )
        both = set(t["erase"]) & set(t.get("retain", []))
        if both:
            raise ConfigError(
                f"config key 'tasks.{tname}': concepts both erased and retained: {sorted(both)}"
            )
    for fname, fs in config["finetune_sets"].items():
        for name in fs.get("concepts", []):
            try:
                world.concept(name)
            except KeyError:
                raise ConfigError(
                    f"config key 'finetune_sets.{fname}.concepts': unknown concept {name!r}"
                ) from None
    for ename, e in config["experiments"].items():
        for i, r in enumerate(e["runs"]):
            where = f"experiments.{ename}.runs[{i}]"
            if r["task"] not in config["tasks"]:
                raise ConfigError(
                    f"config key '{where}.task': {r['task']!r} not in tasks {sorted(config['tasks'])}"
                )
            if r.get("erase", DEFAULT_ERASE) not in config["erase_variants"]:
                raise ConfigError(
                    f"config key '{where}.erase': allowed values: {sorted(config['erase_variants'])}"
                )
            ftset = r.get("ftset") or default_ftset(config, r["task"])
            if ftset not in config["finetune_sets"]:
                raise ConfigError(
                    f"config key '{where}.ftset': {ftset!r} not in {sorted(config['finetune_sets'])}"
                )
            if r.get("ftmethod", DEFAULT_FTMETHOD) not in config["finetune_methods"]:
                raise ConfigError(
                    f"config key '{where}.ftmethod': allowed values: {sorted(config['finetune_methods'])}"
                )
            fs = config["finetune_sets"][ftset]
            overlap = set(fs.get("concepts", [])) & set(config["tasks"][r["task"]]["erase"])
            if overlap:
                raise ConfigError(
                    f"config key 'finetune_sets.{ftset}': fine-tunes on erased concepts {sorted(overlap)}"
                )
    for e in config["experiments"]:
        for run in experiment_runs(config, e):
            erase_spec(config, run.task, run.erase, world)  # e.g. mapping 'gender' on an object task
    check_world_variants(config)
    traj = config.get("trajectory") or {}
    if traj.get("experiment") and traj["experiment"] not in config["experiments"]:
        raise ConfigError(
            f"config key 'trajectory.experiment': allowed values: {sorted(config['experiments'])}"
        )
    check_checkpoints(config)


def check_checkpoints(config: dict[str, Any]) -> None:
    """Every fine-tune keeps a checkpoint at each trajectory step: settings that cannot are rejected here,
    before any job, instead of failing after the erase and fine-tune jobs have run."""
    from resurgence.finetune.config import FinetuneConfig

    for name in config["finetune_methods"]:
        spec = FinetuneConfig.from_dict(finetune_spec(config, name))
        if spec.checkpoint_every > spec.steps:
            raise ConfigError(
                f"config key 'finetune_methods.{name}.checkpoint_every': {spec.checkpoint_every} is more than "
                f"its steps ({spec.steps}), so no checkpoint would be kept; allowed values: 1 to {spec.steps}"
            )
    traj = config.get("trajectory") or {}
    if not traj.get("experiment"):
        return
    for name in sorted({run.ftmethod for run in experiment_runs(config, traj["experiment"])}):
        spec = FinetuneConfig.from_dict(finetune_spec(config, name))
        steps, every = spec.steps, spec.checkpoint_every
        for step in traj.get("steps", []):
            if step > steps:
                raise ConfigError(
                    f"config key 'trajectory.steps': step {step} is beyond finetune_methods.{name}.steps ({steps}) "
                    f"of the runs of {traj['experiment']}; allowed values: multiples of {every} up to {steps}"
                )
            if step < steps and step % every:
                raise ConfigError(
                    f"config key 'trajectory.steps': no checkpoint is kept at step {step} (finetune_methods.{name}"
                    f".checkpoint_every is {every}); allowed values: multiples of {every} up to {steps}"
                )


def figure_targets(config: dict[str, Any]) -> list[str]:
    targets = [layout.figure(e) for e in study_experiments(config)]
    if (config.get("trajectory") or {}).get("experiment"):
        targets.append(layout.figure("trajectory"))
    targets += [layout.figure("grids"), layout.REVERSION_FIGURE]
    return targets


def figure_tasks(config: dict[str, Any], experiment: str) -> dict[str, dict[str, Any]]:
    """What the geometry figure (fig14) needs to know of its runs' tasks beside their settings: their world
    variant and its knowledge ``shared`` value (the study's own world for tasks without a variant)."""
    out: dict[str, dict[str, Any]] = {}
    for run in experiment_runs(config, experiment):
        variant = config["tasks"][run.task].get("variant")
        knowledge = variant_train_spec(config, variant)["knowledge"] if variant else toy_knowledge(config)
        out[run.task] = {"variant": variant, "shared": knowledge["shared"]}
    return out


def reversion_inputs(config: dict[str, Any]) -> dict[str, list[str]]:
    """What the reversion summary reads: every run's reversion CSV, and the metrics its resurgence needs."""
    runs = all_runs(config)
    metrics: dict[str, None] = {}
    for run in runs:
        for s in resurgence_states(config, run):
            metrics[layout.metrics_csv(run.task, s)] = None
    return {"reversion": [reversion_csv(r) for r in runs], "metrics": list(metrics)}


def run_records(config: dict[str, Any], experiment: str) -> list[dict[str, Any]]:
    """An experiment's runs for the tables stage: each run's keys and `run_settings`."""
    return [dict(asdict(run), **run_settings(config, run)) for run in experiment_runs(config, experiment)]


def label_spec(config: dict[str, Any], task: str) -> dict[str, Any]:
    """What an evaluation job scores against: the task's domain and label set (erased + retained)."""
    t = config["tasks"][task]
    return dict(
        world=world_ref(config), task=task, domain=t["domain"], labels=[*t["erase"], *t.get("retain", [])]
    )


def grid_inputs(config: dict[str, Any]) -> list[str]:
    """Image grids of base, erased and fine-tuned states for the runs of the first experiment."""
    first = study_experiments(config)[0]
    paths: dict[str, None] = {}
    for run in experiment_runs(config, first):
        for s in resurgence_states(config, run):
            paths[layout.images_grid(run.task, s)] = None
    return list(paths)


# The experiment whose numbers the end-of-run summary prints (the paper's headline figure).
HEADLINE_EXPERIMENT = "fig5"


def run_summary(config: dict[str, Any]) -> str:
    """What a finished `snakemake all` prints: where the figures are, how to build the report, and the
    headline experiment's erased -> fine-tuned accuracy on the erased concepts (mean over seeds)."""
    from resurgence.metrics.tables import headline

    figures = [t for t in figure_targets(config) if Path(t).is_file()]
    lines = [
        f"resurgence: {len(figures)} figures in {layout.FIGURES}/, tables in {layout.TABLES}/",
        "resurgence: the HTML report: snakemake --report report.html (same config options as this run)",
    ]
    table = Path(layout.resurgence_table(HEADLINE_EXPERIMENT))
    if HEADLINE_EXPERIMENT in config.get("experiments", {}) and table.is_file():
        import pandas as pd

        rows = headline(pd.read_csv(table))
        lines.append(
            f"resurgence: {HEADLINE_EXPERIMENT}, top-1 accuracy on the erased concepts, base / erased -> "
            f"fine-tuned (mean over {int(rows['seeds'].max()) if len(rows) else 0} seeds):"
        )
        for r in rows.itertuples():
            lines.append(
                f"  {r.task:<18} {r.erase:<10} {r.ftset:<16} {r.ftmethod:<5} "
                f"{100 * r.base:5.1f} % / {100 * r.erased:5.1f} % -> {100 * r.finetuned:5.1f} %"
            )
    return "\n".join(lines)
