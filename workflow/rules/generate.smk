# Images of each model state (base, erased, fine-tuned at a step) for a task's evaluation
# prompts and seeds, with an image grid for people to look at.


rule generate_base_pool:
    input:
        models_input,
    output:
        index=layout.base_pool_index("{pool}"),
        grid=layout.base_pool_grid("{pool}"),
    log:
        layout.log_file("generate", "base_pool/{pool}"),
    benchmark:
        layout.benchmark_file("generate", "base_pool/{pool}")
    priority: scheduler.job_priority("generate_base_pool")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    params:
        spec=lambda wc: as_json(study.base_pool_spec(config, wc.pool)),
        models=task_models,
        weights=weights("pipeline"),
        device=device(),
    shell:
        "python -m resurgence generate --spec {params.spec:q} --models {params.models:q}"
        " --out-dir $(dirname {output.index}) --device {params.device} > {log} 2>&1"


rule generate_base:
    input:
        pool=lambda wc: layout.base_pool_index(study.base_pool(config, wc.task)),
    output:
        index=layout.images_index("{task}", "base"),
        grid=layout.images_grid("{task}", "base"),
    log:
        layout.log_file("generate", "{task}/base"),
    conda:
        "../../envs/resurgence.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        spec=lambda wc: as_json(study.generation_spec(config, wc.task)),
        models=task_models,
    shell:
        "python -m resurgence generate --spec {params.spec:q} --models {params.models:q}"
        " --pool $(dirname {input.pool}) --out-dir $(dirname {output.index}) > {log} 2>&1"


rule generate_erased:
    input:
        erasure=layout.erased_lora("{task}", "{erase}"),
    output:
        index=layout.images_index("{task}", "{erase}/erased"),
        grid=layout.images_grid("{task}", "{erase}/erased"),
    log:
        layout.log_file("generate", "{task}/{erase}/erased"),
    benchmark:
        layout.benchmark_file("generate", "{task}/{erase}/erased")
    priority: scheduler.job_priority("generate_erased")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
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
        erasure=layout.erased_lora("{task}", "{erase}"),
        finetune=layout.train_log("{task}", "{erase}", "{ftset}", "{ftmethod}"),
    output:
        index=layout.images_index("{task}", "{erase}/{ftset}/{ftmethod}/step-{step}"),
        grid=layout.images_grid("{task}", "{erase}/{ftset}/{ftmethod}/step-{step}"),
    log:
        layout.log_file("generate", "{task}/{erase}/{ftset}/{ftmethod}/step-{step}"),
    benchmark:
        layout.benchmark_file(
            "generate", "{task}/{erase}/{ftset}/{ftmethod}/step-{step}"
        )
    priority: scheduler.job_priority("generate_finetuned")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
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
