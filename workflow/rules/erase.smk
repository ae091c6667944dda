# MACE erasure: one erased model (a LoRA onto the base pipeline) per task x erase variant.


rule erase:
    input:
        models_input(),
    output:
        lora=f"{study.RESULTS}/erase/{{task}}/{{erase}}/erased_lora.safetensors",
        report=f"{study.RESULTS}/erase/{{task}}/{{erase}}/report.json",
    params:
        spec=lambda wc: as_json(study.erase_spec(config, wc.task, wc.erase)),
        models=as_json(MODELS),
        generation=as_json(gen_settings()),
        device=device(),
    log:
        "logs/erase/{task}/{erase}.log",
    benchmark:
        "results/benchmarks/erase/{task}/{erase}.tsv"
    resources:
        gpu=1,
        mem_mb=12000,
        runtime=120,
    conda:
        "../../envs/resurgence.yaml"
    shell:
        "{PY} erase --spec {params.spec:q} --models {params.models:q} --generation {params.generation:q}"
        " --out-dir $(dirname {output.lora}) --device {params.device} > {log} 2>&1"
