# Metric tables per experiment, the paper's figures, image grids, and the HTML report.


rule tables:
    input:
        lambda wc: study.experiment_metrics(config, wc.experiment),
    output:
        tidy=layout.tidy_table("{experiment}"),
        summary=report(
            layout.summary_table("{experiment}"),
            category="Tables",
            caption="../report/summary.rst",
        ),
        resurgence=report(
            layout.resurgence_table("{experiment}"),
            category="Tables",
            caption="../report/resurgence.rst",
        ),
    log:
        layout.log_file("tables", "{experiment}"),
    conda:
        "../../envs/resurgence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=lambda wc: as_json(study.run_records(config, wc.experiment)),
    shell:
        "python -m resurgence tables --experiment {wildcards.experiment} --runs {params.runs:q} --inputs {input}"
        " --out-dir $(dirname {output.tidy}) > {log} 2>&1"


rule figure:
    input:
        summary=layout.summary_table("{experiment}"),
    output:
        png=report(
            layout.figure("{experiment}"),
            category="Figures",
            caption="../report/figure.rst",
        ),
    log:
        layout.log_file("figures", "{experiment}"),
    conda:
        "../../envs/resurgence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        tasks=lambda wc: as_json(study.figure_tasks(config, wc.experiment)),
    shell:
        "python -m resurgence figure --name {wildcards.experiment} --summary {input.summary} --out {output.png}"
        " --tasks {params.tasks:q} > {log} 2>&1"


rule trajectory_figure:
    input:
        summary=lambda wc: layout.summary_table(config["trajectory"]["experiment"]),
    output:
        png=report(
            layout.figure("trajectory"),
            category="Figures",
            caption="../report/figure.rst",
        ),
    log:
        layout.log_file("figures", "trajectory"),
    conda:
        "../../envs/resurgence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m resurgence figure --name trajectory --summary {input.summary} --out {output.png} > {log} 2>&1"


rule grids_figure:
    input:
        lambda wc: study.grid_inputs(config),
    output:
        png=report(
            layout.figure("grids"),
            category="Figures",
            caption="../report/grids.rst",
        ),
    log:
        layout.log_file("figures", "grids"),
    conda:
        "../../envs/resurgence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m resurgence grids --inputs {input} --out {output.png} > {log} 2>&1"


# Targets outside `all` (study.OPTIONAL_EXPERIMENTS): each retrains the toy text-to-image model on a GPU.
rule exact_unlearning_control:
    input:
        layout.resurgence_table("control"),
        layout.figure("control"),


rule geometry_sweep:
    input:
        layout.resurgence_table("fig14"),
        layout.figure("fig14"),
