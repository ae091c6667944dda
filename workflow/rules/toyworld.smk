# The toy world's models: shipped under toyworld.weights; retrained only with toyworld.retrain=true.


rule toyworld_train:
    output:
        manifest=f"{study.RESULTS}/toyworld/models/manifest.json",
    params:
        seed=config.get("toyworld", {}).get("seed", 0),
        profile=config.get("toyworld", {}).get("train_profile", "gpu"),
        device=device(),
    log:
        "logs/toyworld/train.log",
    benchmark:
        "results/benchmarks/toyworld/train.tsv"
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=60,
    conda:
        "../../envs/resurgence.yaml"
    shell:
        "{PY} toyworld train --out-dir {study.RESULTS}/toyworld/models --profile {params.profile}"
        " --seed {params.seed} --device {params.device} > {log} 2>&1"


rule toyworld_quality:
    input:
        models_input(),
    output:
        quality=f"{study.RESULTS}/toyworld/quality.json",
    params:
        models=as_json(MODELS),
        seed=config.get("toyworld", {}).get("seed", 0),
        images=config.get("toyworld", {}).get("quality_images", 4),
        generation=as_json(gen_settings()),
        device=device(),
    log:
        "logs/toyworld/quality.log",
    benchmark:
        "results/benchmarks/toyworld/quality.tsv"
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/resurgence.yaml"
    shell:
        "{PY} toyworld quality --models {params.models:q} --seed {params.seed} --images {params.images}"
        " --generation {params.generation:q} --out {output.quality} --device {params.device} > {log} 2>&1"
