"""The Giphy Celebrity Detector's worker (`resurgence.evaluate.celebrity`): it runs inside GCD's own
environment (Python >= 3.6, so no annotations and no walrus) as ``python gcd_worker.py RES IN OUT CUDA``,
reading IN/*.png (sorted) and writing the list of `predict` to OUT as JSON; or is imported in-process.

load(resources, use_cuda, margin, size) -> models; predict(models, arrays) -> per image None (no face)
or {"top": [[label, prob], ...] of the first face cluster, "faces": n}.
"""

import json
import os
import sys

import numpy as np


def load(resources, use_cuda=False, margin=0.2, size=224):
    os.environ.setdefault("APP_RECOGNITION_WEIGHTS_FILE", "face_recognition/best_model_states.pkl")
    from model_training.helpers.labels import Labels  # noqa: I001  (GCD's own order)
    from model_training.helpers.face_recognizer import FaceRecognizer
    from model_training.preprocessors.face_detection.face_detector import FaceDetector

    labels = Labels(resources_path=resources)
    detector = FaceDetector(resources, margin=margin, use_cuda=use_cuda)
    recognizer = FaceRecognizer(labels=labels, resources_path=resources, use_cuda=use_cuda, top_n=5)
    try:  # GCD's own resize (scipy.misc.imresize, bilinear); gone from recent SciPy
        from model_training.utils import preprocess_image
        from scipy.misc import imresize  # noqa: F401
    except Exception:
        from PIL import Image

        def preprocess_image(img, image_size):
            return np.asarray(
                Image.fromarray(np.asarray(img, dtype=np.uint8)).resize(
                    (image_size, image_size), Image.BILINEAR
                )
            )

    return {"detector": detector, "recognizer": recognizer, "preprocess": preprocess_image, "size": size}


def predict(models, arrays):
    out = []
    for img in arrays:
        faces = models["detector"].perform_single(np.asarray(img)[:, :, :3])
        crops = [models["preprocess"](face, models["size"]) for face, _ in faces]
        clusters = models["recognizer"].perform(crops) if crops else []
        if not clusters:
            out.append(None)
            continue
        top = [[str(label), float(prob)] for label, prob in clusters[0][0]]
        out.append({"top": top, "faces": len(crops)})
    return out


def main(argv):
    resources, in_dir, out_path, use_cuda = argv[1], argv[2], argv[3], argv[4] == "1"
    from PIL import Image

    files = sorted(f for f in os.listdir(in_dir) if f.endswith(".png"))
    arrays = [np.asarray(Image.open(os.path.join(in_dir, f)).convert("RGB")) for f in files]
    models = load(resources, use_cuda=use_cuda)
    result = predict(models, arrays)
    with open(out_path + ".tmp", "w") as f:
        json.dump(result, f)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main(sys.argv)
