import io

import cv2
import keras
import numpy as np
import pytest
from PIL import Image

from pneumo_core.imaging.augment import random_view
from pneumo_core.imaging.films import ImageError, read_image
from pneumo_core.imaging.preprocessing import normalise_intensity, prepare
from pneumo_core.learn.backbones import BACKBONES, BackbonePreprocess
from pneumo_core.settings import Augmentation


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_preprocess_layer_is_the_backbones_own(backbone):
    gray = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1)).astype(np.float32)
    image = np.repeat(gray, 3, axis=3)
    module = {"resnet50": "resnet50", "mobilenet_v2": "mobilenet_v2", "efficientnet_b0": "efficientnet"}[backbone]
    expected = getattr(keras.applications, module).preprocess_input(image.copy())
    got = np.asarray(BackbonePreprocess(backbone)(image))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_backbone_scalings_differ_as_documented():
    image = np.full((1, 4, 4, 3), 255.0, np.float32)
    assert np.allclose(BackbonePreprocess("mobilenet_v2")(image), 1.0)               # 0..255 -> -1..1
    assert np.allclose(BackbonePreprocess("resnet50")(image)[..., 0], 255 - 103.939)  # caffe mean, BGR
    assert np.allclose(BackbonePreprocess("efficientnet_b0")(image), 255.0)          # rescales inside


def test_equalisation_removes_exposure_differences():
    rng = np.random.default_rng(1)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (64, 64)).astype(np.uint8), (0, 0), 2)
    darker = np.clip(255 * (gray / 255.0) ** 1.8, 0, 255).astype(np.uint8)
    diff_raw = np.abs(gray.astype(int) - darker).mean()
    diff_eq = np.abs(normalise_intensity(gray).astype(int) - normalise_intensity(darker)).mean()
    assert diff_eq < diff_raw / 5


def test_prepare_gives_three_equal_channels_of_the_model_size():
    x = prepare(np.random.default_rng(0).integers(0, 256, (300, 150)).astype(np.uint8), 64, "equalize")
    assert x.shape == (64, 64, 3) and x.dtype == np.float32
    assert np.array_equal(x[..., 0], x[..., 2]) and 0 <= x.min() and x.max() <= 255


def test_augmentation_is_reproducible_and_varies():
    gray = np.random.default_rng(0).integers(0, 256, (64, 64)).astype(np.uint8)
    aug = Augmentation()
    a, b = random_view(gray, aug, np.random.default_rng(5)), random_view(gray, aug, np.random.default_rng(5))
    c = random_view(gray, aug, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.shape == gray.shape


def _png(array, mode=None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def test_reads_rgb_rgba_and_16_bit_png_as_grayscale():
    rgb = np.zeros((80, 100, 3), np.uint8)
    rgb[...] = 200  # a radiograph saved as RGB (R = G = B); a colour photo is refused (test_io)
    assert read_image(_png(rgb)).shape == (80, 100)
    rgba = np.dstack([rgb, np.full((80, 100), 255, np.uint8)])
    assert read_image(_png(rgba)).shape == (80, 100)
    deep = (np.arange(80 * 100, dtype=np.uint16).reshape(80, 100) * 8)
    gray = read_image(_png(deep))
    assert gray.dtype == np.uint8 and gray.min() == 0 and gray.max() == 255


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"%PDF-1.4 not an image", "not a supported image type"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "damaged or truncated"),
])
def test_bad_files_get_actionable_messages(data, message):
    with pytest.raises(ImageError, match=message) as info:
        read_image(data, name="upload.png")
    assert "upload.png" in str(info.value)


def test_too_small_image_is_rejected():
    with pytest.raises(ImageError, match="at least 64x64"):
        read_image(_png(np.zeros((20, 30), np.uint8)))
