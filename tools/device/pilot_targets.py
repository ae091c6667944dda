from resurgence import study
from resurgence.config import load_config
c = load_config(["config.yaml"])
runs = study.experiment_runs(c, "fig8")
t = []
for r in runs:
    t += [study.metrics_csv(r.task, s) for s in study.run_states(c, r)] + [study.reversion_csv(r)]
print(" ".join(dict.fromkeys(t)))
