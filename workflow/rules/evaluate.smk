# Scoring one model state's images: identity accuracy, CLIP accuracy, CLIP score, FID.


rule evaluate:
    input:
        images=layout.images_index("{task}", "{state}"),
        reference=layout.images_index("{task}", "base"),
    output:
        tidy=layout.metrics_csv("{task}", "{state}"),
    log:
        layout.log_file("evaluate", "{task}/{state}"),
    benchmark:
        layout.benchmark_file("evaluate", "{task}/{state}")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    params:
        labels=lambda wc: as_json(study.label_spec(config, wc.task)),
        state=lambda wc: as_json(study.state_fields(config, wc.task, wc.state)),
        models=task_models,
        weights=weights("clip", "detector"),
        device=device(),
    shell:
        "python -m resurgence evaluate --images $(dirname {input.images}) --reference $(dirname {input.reference})"
        " --labels {params.labels:q} --state {params.state:q} --models {params.models:q}"
        " --out {output.tidy} --device {params.device} > {log} 2>&1"
