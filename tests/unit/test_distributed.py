"""Mixed precision for distributed fine-tuning: the training copy keeps the weights (the
multi-process runs are in integration/test_distributed_training.py)."""


def test_training_copy_in_mixed_precision_keeps_weights_and_a_float32_output():
    import numpy as np

    from pneumo_core.learn.distribute import training_copy
    from pneumo_core.learn.model import assemble, build_classifier, build_embedder, build_head

    backbone = build_embedder("mobilenet_v2", 32, None).get_layer("backbone")
    model = assemble("mobilenet_v2", backbone, build_classifier(backbone.output_shape[1:], [build_head(1280)]))
    copy = training_copy(model, mixed_precision=True)
    assert copy.get_layer("backbone").layers[1].dtype_policy.name == "mixed_float16"
    assert copy.get_layer("probability").dtype_policy.name == "float32"
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), copy.get_weights()))
    out = copy.predict_on_batch(np.full((2, 32, 32, 3), 128, np.float32))
    assert out.dtype == np.float32 and out.shape == (2, 1)
