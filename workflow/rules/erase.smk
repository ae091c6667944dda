# Erasure (MACE, UCE or ESD, by erase variant): one erased model (a LoRA onto the base pipeline, with
# dense deltas for ESD) per task x erase variant.


rule erase:
    input:
        models_input,
    output:
        lora=layout.erased_lora("{task}", "{erase}"),
        report=layout.erase_report("{task}", "{erase}"),
    log:
        layout.log_file("erase", "{task}/{erase}"),
    benchmark:
        layout.benchmark_file("erase", "{task}/{erase}")
    priority: lambda wc: scheduler.job_priority("erase", study.erase_work(config, wc.task))
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=12000,
        runtime=120,
    params:
        spec=lambda wc: as_json(study.erase_spec(config, wc.task, wc.erase)),
        models=task_models,
        weights=weights("pipeline", "segmenter"),
        generation=as_json(gen_settings()),
        device=device(),
    shell:
        "python -m resurgence erase --spec {params.spec:q} --models {params.models:q} --generation {params.generation:q}"
        " --out-dir $(dirname {output.lora}) --device {params.device} > {log} 2>&1"
