# Images of each model state (base, erased, fine-tuned at a step) for a task's evaluation
# prompts and seeds, with an image grid for people to look at.


rule generate_base:
    input:
        models_input,
    output:
        index="results/images/{task}/base/index.jsonl",
        grid="results/images/{task}/base/grid.png",
    log:
        "logs/generate/{task}/base.log",
    benchmark:
        "results/benchmarks/generate/{task}/base.tsv"
    conda:
        "../../envs/resurgence.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: as_json(study.generation_spec(config, wc.task)),
        models=task_models,
        weights=weights("pipeline"),
        device=device(),
    shell:
        "python -m resurgence generate --spec {params.spec:q} --models {params.models:q}"
        " --out-dir $(dirname {output.index}) --device {params.device} > {log} 2>&1"


rule generate_erased:
    input:
        erasure="results/erase/{task}/{erase}/erased_lora.safetensors",
    output:
        index="results/images/{task}/{erase}/erased/index.jsonl",
        grid="results/images/{task}/{erase}/erased/grid.png",
    log:
        "logs/generate/{task}/{erase}/erased.log",
    benchmark:
        "results/benchmarks/generate/{task}/{erase}/erased.tsv"
    conda:
        "../../envs/resurgence.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: as_json(study.generation_spec(config, wc.task)),
        models=task_models,
        weights=weights("pipeline"),
        device=device(),
    shell:
        "python -m resurgence generate --spec {params.spec:q} --models {params.models:q} --erasure $(dirname {input.erasure})"
        " --out-dir $(dirname {output.index}) --device {params.device} > {log} 2>&1"


rule generate_finetuned:
    input:
        erasure="results/erase/{task}/{erase}/erased_lora.safetensors",
        finetune="results/finetune/{task}/{erase}/{ftset}/{ftmethod}/train_log.json",
    output:
        index="results/images/{task}/{erase}/{ftset}/{ftmethod}/step-{step}/index.jsonl",
        grid="results/images/{task}/{erase}/{ftset}/{ftmethod}/step-{step}/grid.png",
    log:
        "logs/generate/{task}/{erase}/{ftset}/{ftmethod}/step-{step}.log",
    benchmark:
        "results/benchmarks/generate/{task}/{erase}/{ftset}/{ftmethod}/step-{step}.tsv"
    conda:
        "../../envs/resurgence.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: as_json(
            study.generation_spec(config, wc.task, finetuned_roles(wc))
        ),
        models=task_models,
        weights=weights("pipeline"),
        device=device(),
    shell:
        "python -m resurgence generate --spec {params.spec:q} --models {params.models:q} --erasure $(dirname {input.erasure})"
        " --finetune $(dirname {input.finetune}) --step {wildcards.step}"
        " --out-dir $(dirname {output.index}) --device {params.device} > {log} 2>&1"
