# Fine-tuning an erased model on unrelated concepts (LoRA or full). Checkpoints are kept
# beside train_log.json and are not declared outputs, so a crashed job resumes from them.


def ftdata_manifest(wc):
    return f"{study.ftset_dir(config, wc.ftset, wc.task)}/manifest.json"


rule finetune:
    input:
        erasure=f"{study.RESULTS}/erase/{{task}}/{{erase}}/erased_lora.safetensors",
        data=ftdata_manifest,
    output:
        log=f"{study.RESULTS}/finetune/{{task}}/{{erase}}/{{ftset}}/{{ftmethod}}/train_log.json",
    params:
        spec=lambda wc: as_json(study.finetune_spec(config, wc.ftmethod)),
        models=as_json(MODELS),
        device=device(),
    log:
        "logs/finetune/{task}/{erase}/{ftset}/{ftmethod}.log",
    benchmark:
        "results/benchmarks/finetune/{task}/{erase}/{ftset}/{ftmethod}.tsv"
    resources:
        gpu=1,
        mem_mb=12000,
        runtime=120,
    conda:
        "../../envs/resurgence.yaml"
    shell:
        "{PY} finetune --spec {params.spec:q} --models {params.models:q} --erasure $(dirname {input.erasure})"
        " --data $(dirname {input.data}) --out-dir $(dirname {output.log}) --device {params.device} > {log} 2>&1"
