"""Single-image predict + Grad-CAM latency (warm), p50/p95: one pass gives the call and the map."""
import numpy as np
from common import report, timed

from pneumo_core.explain.cam import make_cam, to_original_size
from pneumo_core.imaging.preprocessing import prepare
from pneumo_core.learn.model import PneumoModel, assemble, build_classifier, build_embedder, build_head

film = np.random.default_rng(0).integers(0, 255, (1024, 860)).astype(np.uint8)
for backbone in ("resnet50", "mobilenet_v2"):
    embedder = build_embedder(backbone, 224, None)
    base = embedder.get_layer("backbone")
    model = assemble(backbone, base, build_classifier(base.output_shape[1:], [build_head(base.output_shape[-1])]))
    scorer = PneumoModel(model, {"image_size": 224, "normalisation": "equalize", "threshold": 0.5})
    for method, repeat in (("gradcam", 40), ("gradcam++", 40), ("scorecam", 5)):
        cam = make_cam(model, method)

        def diagnose():
            maps, probability = cam.explain(prepare(film, 224, "equalize")[None])
            return to_original_size(maps[0], film.shape), probability[0]

        diagnose(), diagnose()
        seconds = timed(diagnose, repeat) * 1000
        target = "<= 100 ms" if (backbone, method) == ("resnet50", "gradcam") else ""
        report(f"{backbone}@224 predict + {method} p50", float(np.percentile(seconds, 50)), "ms", target)
        report(f"{backbone}@224 predict + {method} p95", float(np.percentile(seconds, 95)), "ms")
    scorer.predict([film])
    report(f"{backbone}@224 predict only p50",
           float(np.percentile(timed(lambda: scorer.predict([film]), 40) * 1000, 50)), "ms")
    # What Diagnose adds for a version with test-time augmentation (train's default, 3 views): the views'
    # logits after the Grad-CAM pass (PneumoModel.tta_adjust reuses that pass's plain-view probability).
    with_tta = PneumoModel(model, {"image_size": 224, "normalisation": "equalize", "threshold": 0.5,
                                   "tta": {"views": 3, "seed": 42}})
    with_tta.tta_adjust([film], [0.5])
    report(f"{backbone}@224 test-time augmentation after Grad-CAM (3 views) p50",
           float(np.percentile(timed(lambda: with_tta.tta_adjust([film], [0.5]), 40) * 1000, 50)), "ms")
