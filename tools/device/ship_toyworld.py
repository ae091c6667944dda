"""Copy toy models trained on the GPU machine (unpacked from toyworld.tar.part-*) into resources/toyworld.

python tools/device/ship_toyworld.py /tmp/toyworld [t2i clip ...]
"""

import sys

from resurgence.toyworld.train import import_models, verify_manifest

if __name__ == "__main__":
    names = import_models(sys.argv[1], "resources/toyworld", sys.argv[2:] or None)
    bad = verify_manifest("resources/toyworld")
    print(f"imported {names}; manifest {'OK' if not bad else f'MISMATCH {bad}'}")
    sys.exit(1 if bad else 0)
