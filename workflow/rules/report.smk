# Metric tables per experiment, the paper's figures, image grids, and the HTML report.


rule tables:
    input:
        lambda wc: study.experiment_metrics(config, wc.experiment),
    output:
        tidy="results/tables/{experiment}/tidy.csv",
        summary=report(
            "results/tables/{experiment}/summary.csv",
            category="Tables",
            caption="../report/summary.rst",
        ),
        resurgence=report(
            study.resurgence_table("{experiment}"),
            category="Tables",
            caption="../report/resurgence.rst",
        ),
    log:
        "logs/tables/{experiment}.log",
    conda:
        "../../envs/resurgence.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        runs=lambda wc: as_json(
            [study.asdict_run(r) for r in study.experiment_runs(config, wc.experiment)]
        ),
    shell:
        "python -m resurgence tables --experiment {wildcards.experiment} --runs {params.runs:q} --inputs {input}"
        " --out-dir $(dirname {output.tidy}) > {log} 2>&1"


rule figure:
    input:
        summary="results/tables/{experiment}/summary.csv",
    output:
        png=report(
            "results/figures/{experiment}.png",
            category="Figures",
            caption="../report/figure.rst",
        ),
    log:
        "logs/figures/{experiment}.log",
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
        summary=lambda wc: f"results/tables/{config['trajectory']['experiment']}/summary.csv",
    output:
        png=report(
            "results/figures/trajectory.png",
            category="Figures",
            caption="../report/figure.rst",
        ),
    log:
        "logs/figures/trajectory.log",
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
            "results/figures/grids.png",
            category="Figures",
            caption="../report/grids.rst",
        ),
    log:
        "logs/figures/grids.log",
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
        study.resurgence_table("control"),
        "results/figures/control.png",


rule geometry_sweep:
    input:
        study.resurgence_table("fig14"),
        "results/figures/fig14.png",
