"""Films in: reading PNG, JPEG and DICOM safely, preprocessing, augmentation and the out-of-distribution detector.

No model, no screen, no network: nothing here imports TensorFlow.
"""
