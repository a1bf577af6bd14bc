"""The public API: every exported name resolves, and importing the package stays TensorFlow-free."""
import subprocess
import sys

import pytest
from conftest import REPO

import pneumo_core


def test_every_exported_name_resolves_to_its_module_object():
    from pneumo_core import settings
    from pneumo_core.imaging import films as io
    from pneumo_core.serve import diagnosis
    assert pneumo_core.Diagnoser is diagnosis.Diagnoser and pneumo_core.read_film is io.read_film
    assert pneumo_core.TrainConfig is settings.TrainConfig
    for name in pneumo_core.__all__:
        assert getattr(pneumo_core, name) is not None, name
    with pytest.raises(AttributeError):
        pneumo_core.no_such_name  # noqa: B018


def test_importing_the_package_and_its_light_names_does_not_load_tensorflow():
    code = ("import sys, pneumo_core; from pneumo_core import TrainConfig, load_settings, list_versions, label_name; "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
