# Fine-tuning an erased model on unrelated concepts (LoRA or full). Checkpoints are kept
# beside train_log.json and are not declared outputs, so a crashed job resumes from them; they
# carry the key of their config and inputs, and a rerun under another key starts from step 0.


rule finetune:
    input:
        erasure=layout.erased_lora("{task}", "{erase}"),
        data=ftdata_manifest,
    output:
        log=layout.train_log("{task}", "{erase}", "{ftset}", "{ftmethod}"),
    log:
        layout.log_file("finetune", "{task}/{erase}/{ftset}/{ftmethod}"),
    benchmark:
        layout.benchmark_file("finetune", "{task}/{erase}/{ftset}/{ftmethod}")
    priority: scheduler.job_priority("finetune")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=12000,
        runtime=120,
    params:
        spec=lambda wc: as_json(study.finetune_spec(config, wc.ftmethod)),
        models=task_models,
        weights=weights("pipeline"),
        device=device(),
    shell:
        "python -m resurgence finetune --spec {params.spec:q} --models {params.models:q} --erasure $(dirname {input.erasure})"
        " --data $(dirname {input.data}) --out-dir $(dirname {output.log}) --device {params.device} > {log} 2>&1"
