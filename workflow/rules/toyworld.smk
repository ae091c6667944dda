# The toy world's models: shipped under toyworld.weights; retrained only with toyworld.retrain=true.


rule toyworld_train:
    output:
        manifest="results/toyworld/models/manifest.json",
    log:
        "logs/toyworld/train.log",
    benchmark:
        "results/benchmarks/toyworld/train.tsv"
    conda:
        "../../envs/resurgence.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        seed=config.get("toyworld", {}).get("seed", 0),
        profile=config.get("toyworld", {}).get("train_profile", "auto"),
        knowledge=as_json(study.toy_knowledge(config)),
        calibration=as_json(study.calibration_sets(config)),
        device=device(),
    shell:
        "python -m resurgence toyworld train --out-dir results/toyworld/models --profile {params.profile}"
        " --seed {params.seed} --knowledge {params.knowledge:q} --calibration {params.calibration:q}"
        " --device {params.device} > {log} 2>&1"


rule toyworld_quality:
    input:
        models_input(),
    output:
        quality="results/toyworld/quality.json",
    log:
        "logs/toyworld/quality.log",
    benchmark:
        "results/benchmarks/toyworld/quality.tsv"
    conda:
        "../../envs/resurgence.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        models=as_json(MODELS),
        weights=weights("pipeline", "clip", "detector", "segmenter"),
        seed=config.get("toyworld", {}).get("seed", 0),
        images=config.get("toyworld", {}).get("quality_images", 4),
        concepts=lambda wc: (
            f"--concepts {config['toyworld']['quality_concepts']}"
            if "quality_concepts" in config.get("toyworld", {})
            else ""
        ),
        generation=as_json(gen_settings()),
        device=device(),
    shell:
        "python -m resurgence toyworld quality --models {params.models:q} --seed {params.seed} --images {params.images}"
        " {params.concepts}"
        " --generation {params.generation:q} --out {output.quality} --device {params.device} > {log} 2>&1"


rule toyworld_variant:
    output:
        manifest="results/variants/{variant}/manifest.json",
    log:
        "logs/toyworld/variant_{variant}.log",
    benchmark:
        "results/benchmarks/toyworld/variant_{variant}.tsv"
    conda:
        "../../envs/resurgence.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        knowledge=lambda wc: as_json(
            study.variant_train_spec(config, wc.variant)["knowledge"]
        ),
        exclude=lambda wc: as_json(
            study.variant_train_spec(config, wc.variant)["exclude"]
        ),
        seed=config.get("toyworld", {}).get("seed", 0),
        steps=lambda wc: study.variant_steps_arg(config, wc.variant),
        profile=config.get("toyworld", {}).get("train_profile", "auto"),
        device=device(),
    shell:
        "python -m resurgence toyworld train --out-dir results/variants/{wildcards.variant} --only t2i"
        " --profile {params.profile} --seed {params.seed} --knowledge {params.knowledge:q}"
        " --exclude {params.exclude:q} {params.steps} --device {params.device} > {log} 2>&1"
