# Scoring one model state's images: identity accuracy, CLIP accuracy, CLIP score, FID.


rule evaluate:
    input:
        images=f"{study.RESULTS}/images/{{task}}/{{state}}/index.jsonl",
        reference=f"{study.RESULTS}/images/{{task}}/base/index.jsonl",
    output:
        tidy=f"{study.RESULTS}/metrics/{{task}}/{{state}}/tidy.csv",
    params:
        labels=lambda wc: as_json(study.label_spec(config, wc.task)),
        state=lambda wc: as_json(study.parse_state(wc.task, wc.state)),
        models=as_json(MODELS),
        device=device(),
    log:
        "logs/evaluate/{task}/{state}.log",
    benchmark:
        "results/benchmarks/evaluate/{task}/{state}.tsv"
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=30,
    conda:
        "../../envs/resurgence.yaml"
    shell:
        "{PY} evaluate --images $(dirname {input.images}) --reference $(dirname {input.reference})"
        " --labels {params.labels:q} --state {params.state:q} --models {params.models:q}"
        " --out {output.tidy} --device {params.device} > {log} 2>&1"
