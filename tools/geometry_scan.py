"""App. C.2's calibration statistic of the toy world's knowledge targets over values of the geometry knob.

    python tools/geometry_scan.py 0 0.5 0.8 0.81 0.82 0.83 0.84 0.85   # -> a markdown table

The statistic of the *targets* (before any model is trained) fixes `KnowledgeConfig.shared`: the
middle of the values whose ranges lie inside both of the paper's (docs/geometry_calibration.md).
"""

import sys

from resurgence import study
from resurgence.config import load_config
from resurgence.toyworld.concepts import toy_world
from resurgence.toyworld.geometry import calibration_statistics, gram_similarity, knowledge_gram
from resurgence.toyworld.knowledge import KnowledgeConfig

config = load_config(["config.yaml"])
world = toy_world(int(config["toyworld"].get("seed", 0)))
erase_sets = study.calibration_sets(config)
base = study.toy_knowledge(config)
print("| shared | identity min-max (paper 0.17-0.80) | object min-max (paper 0.68-0.84) | both inside |")
print("| --- | --- | --- | --- |")
for value in [float(v) for v in sys.argv[1:]]:
    names, gram = knowledge_gram(world, KnowledgeConfig(**{**base, "shared": value}))
    st = calibration_statistics(gram_similarity(names, gram), world, erase_sets)
    cells = [f"{st[d]['min']:.3f} to {st[d]['max']:.3f}" for d in ("identity", "object")]
    inside = all(st[d]["inside_paper_range"] for d in st)
    print(f"| {value:g} | {cells[0]} | {cells[1]} | {'yes' if inside else 'no'} |")
