"""Print the metric tables and reversion CSVs of some experiments' runs (a partial study on a lent GPU).

python tools/device/pilot_targets.py fig8 fig5   # -> snakemake targets
"""

import sys

from resurgence import layout, study
from resurgence.config import load_config

config = load_config(["config.yaml"])
targets: list[str] = []
for experiment in sys.argv[1:] or ["fig8"]:
    for run in study.experiment_runs(config, experiment):
        targets += [layout.metrics_csv(run.task, s) for s in study.run_states(config, run)]
        targets.append(study.reversion_csv(run))
print(" ".join(dict.fromkeys(targets)))
