"""One vocabulary: the choice lists of `choices` are what the modules implement and what the command
line offers, and a training config survives the trip through a job row and `train`'s command line."""
import numpy as np
import pytest

from pneumo_core import choices
from pneumo_core.cli import main as cli
from pneumo_core.cli.train import train_config
from pneumo_core.explain.cam import METHODS
from pneumo_core.imaging.preprocessing import normalise_intensity
from pneumo_core.jobs.argv import train_argv
from pneumo_core.learn.backbones import BACKBONES
from pneumo_core.learn.tuning import TUNER_CLASSES
from pneumo_core.settings import TrainConfig


def test_the_implementing_modules_offer_exactly_the_choices():
    assert sorted(BACKBONES) == sorted(choices.BACKBONES)
    assert sorted(TUNER_CLASSES) == sorted(choices.TUNERS)
    assert sorted(METHODS) == sorted(choices.CAM_METHODS)
    gray = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
    for name in choices.NORMALISATIONS:
        assert normalise_intensity(gray, name).shape == gray.shape


@pytest.mark.parametrize("argv, names", [
    (["train", "--backbone"], choices.BACKBONES), (["train", "--tuner"], choices.TUNERS),
    (["train", "--normalisation"], choices.NORMALISATIONS), (["train", "--strategy"], choices.STRATEGIES),
    (["jobs", "submit", "--backbone"], choices.BACKBONES),
    (["cam", "film.png", "--out", "x.png", "--method"], choices.CAM_METHODS),
])
def test_the_command_line_offers_the_choices(capsys, argv, names):
    with pytest.raises(SystemExit) as exited:
        cli.parse_args([*argv, "no-such-choice"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "invalid choice" in error and all(name in error for name in names)


def test_labels_have_one_name_each():
    assert [choices.label_name(v) for v in (0, 1, False, True, np.int64(1), np.bool_(False))] == \
        ["NORMAL", "PNEUMONIA", "NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL"]


def test_a_config_survives_a_job_row_and_the_command_line():
    config = TrainConfig(data_dir="/data", backbone="resnet50", weights="none", trials=3, epochs=4,
                         fine_tune_epochs=1, image_size=96, seed=7, tuner="bayesian", normalisation="clahe",
                         augmented_views=2, ensemble=2, strategy="mirrored", xla=True)
    row = TrainConfig.from_dict(config.to_dict())
    assert row == config
    argv = train_argv(row)
    assert argv[:2] == ["--data", "/data"] and "--views" in argv and "--xla" in argv
    assert train_config(cli.parse_args(["train", *argv])) == config
