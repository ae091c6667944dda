# The toy world's models: shipped under toyworld.weights; retrained only with toyworld.retrain=true.


rule toyworld_train:
    output:
        manifest=layout.manifest_file(layout.TOY_MODELS_DIR),
    log:
        layout.log_file("toyworld", "train"),
    benchmark:
        layout.benchmark_file("toyworld", "train")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    params:
        seed=config["toyworld"]["seed"],
        profile=config["toyworld"]["train_profile"],
        knowledge=as_json(study.toy_knowledge(config)),
        calibration=as_json(study.calibration_sets(config)),
        device=device(),
    shell:
        "python -m resurgence toyworld train --out-dir $(dirname {output.manifest}) --profile {params.profile}"
        " --seed {params.seed} --knowledge {params.knowledge:q} --calibration {params.calibration:q}"
        " --device {params.device} > {log} 2>&1"


rule toyworld_quality:
    input:
        models_input(),
    output:
        quality=layout.TOY_QUALITY,
    log:
        layout.log_file("toyworld", "quality"),
    benchmark:
        layout.benchmark_file("toyworld", "quality")
    priority: scheduler.job_priority("toyworld_quality")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        models=as_json(MODELS),
        weights=weights("pipeline", "clip", "detector", "segmenter"),
        seed=config["toyworld"]["seed"],
        images=config["toyworld"]["quality_images"],
        concepts=lambda wc: (
            f"--concepts {config['toyworld']['quality_concepts']}"
            if "quality_concepts" in config["toyworld"]
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
        manifest=layout.manifest_file(layout.variant_dir("{variant}")),
    log:
        layout.log_file("toyworld", "variant_{variant}"),
    benchmark:
        layout.benchmark_file("toyworld", "variant_{variant}")
    priority: scheduler.job_priority("toyworld_variant")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
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
        seed=config["toyworld"]["seed"],
        steps=lambda wc: study.variant_steps_arg(config, wc.variant),
        profile=config["toyworld"]["train_profile"],
        device=device(),
    shell:
        "python -m resurgence toyworld train --out-dir $(dirname {output.manifest}) --only t2i"
        " --profile {params.profile} --seed {params.seed} --knowledge {params.knowledge:q}"
        " --exclude {params.exclude:q} {params.steps} --device {params.device} > {log} 2>&1"
