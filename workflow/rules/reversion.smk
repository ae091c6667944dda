# Why erased concepts come back: how far each fine-tune undoes its erasure edit, beside its resurgence.


rule reversion:
    input:
        erasure=layout.erased_lora("{task}", "{erase}"),
        finetune=layout.train_log("{task}", "{erase}", "{ftset}", "{ftmethod}"),
    output:
        csv=layout.reversion_csv("{task}", "{erase}", "{ftset}", "{ftmethod}"),
    log:
        layout.log_file("reversion", "{task}/{erase}/{ftset}/{ftmethod}"),
    benchmark:
        layout.benchmark_file("reversion", "{task}/{erase}/{ftset}/{ftmethod}")
    conda:
        "../../envs/resurgence.yaml"
    threads: JOB_THREADS
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=30,
    params:
        run=lambda wc: as_json(
            dict(task=wc.task, erase=wc.erase, ftset=wc.ftset, ftmethod=wc.ftmethod)
        ),
        models=task_models,
        weights=weights("pipeline"),
        mapping=lambda wc: as_json(study.probe_mappings(config, wc.task, wc.erase)),
        device=device(),
    shell:
        "python -m resurgence reversion --run {params.run:q} --models {params.models:q} --mapping {params.mapping:q} --erasure $(dirname {input.erasure})"
        " --finetune $(dirname {input.finetune}) --out {output.csv} --device {params.device} > {log} 2>&1"


rule reversion_summary:
    input:
        unpack(lambda wc: study.reversion_inputs(config)),
    output:
        table=report(
            layout.REVERSION_TABLE,
            category="Tables",
            caption="../report/reversion.rst",
        ),
        png=report(
            layout.REVERSION_FIGURE,
            category="Figures",
            caption="../report/reversion.rst",
        ),
    log:
        layout.log_file("figures", "reversion"),
    conda:
        "../../envs/resurgence.yaml"
    resources:
        mem_mb=4000,
        runtime=10,
    shell:
        "python -m resurgence reversion-summary --reversion {input.reversion} --metrics {input.metrics}"
        " --table {output.table} --figure {output.png} > {log} 2>&1"
