"""Paths and defaults, read once from environment variables.

Every knob a deployment may need to change lives here, so the rest of the library never reads
`os.environ` itself.

| variable              | default                                                    |
|-----------------------|------------------------------------------------------------|
| PNEUMO_DATA           | `data/chest_xray`, else `../shared/data/chest_xray`        |
| PNEUMO_HOME           | `.pneumo/` (models, feature cache, tuner runs, databases,  |
|                       | the audit trail `audit.sqlite`)                            |
| PNEUMO_WEIGHTS_DIR    | `weights/`, else `../shared/weights`                       |
| PNEUMO_WEIGHTS        | `auto`: a local file for the backbone if one is found in   |
|                       | the weights dir, else `imagenet` (needs internet)          |
| PNEUMO_BACKBONE       | `mobilenet_v2`                                             |
| PNEUMO_IMAGE_SIZE     | 224                                                        |
| PNEUMO_SEED           | 42                                                         |
| KERASTUNER_TUNER_ID,  | distributed tuning (read by Keras Tuner too): `chief` or a |
| KERASTUNER_ORACLE_IP, | worker id, and the chief's address; unset = one machine    |
| KERASTUNER_ORACLE_PORT|                                                            |
| PNEUMO_PACS_URL       | DICOMweb root of the archive, e.g.                         |
|                       | `http://pacs:8042/dicom-web`; unset = no PACS              |
| PNEUMO_PACS_USER,     | HTTP basic auth for the archive; or PNEUMO_PACS_TOKEN for  |
| PNEUMO_PACS_PASSWORD  | a bearer token; none set = no auth header is sent          |
| PNEUMO_PACS_SECRETS   | a JSON file {"url", "user", "password", "token"} read when |
|                       | the variables are unset (default `PNEUMO_HOME/pacs.json`)  |
"""
from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .augment import Augmentation

REPO_ROOT = Path(__file__).resolve().parent.parent


def _first_existing(*candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    home: Path
    weights_dir: Path
    weights: str
    backbone: str
    image_size: int
    seed: int
    tuner_id: str = ""
    oracle: str = ""  # HOST:PORT of the chief's oracle
    pacs_url: str = ""  # DICOMweb root; credentials never shown (repr=False)
    pacs_user: str = field(default="", repr=False)
    pacs_password: str = field(default="", repr=False)
    pacs_token: str = field(default="", repr=False)

    @property
    def tuning_role(self) -> str | None:
        """'chief' or 'worker' when Keras Tuner's distribution variables are set, else None."""
        if not self.oracle:
            return None
        return "chief" if "chief" in self.tuner_id else "worker"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def cache_dir(self) -> Path:
        return self.home / "features"

    @property
    def tuner_dir(self) -> Path:
        return self.home / "tuner"

    @property
    def audit_path(self) -> Path:
        return self.home / "audit.sqlite"

    @property
    def pacs_state_path(self) -> Path:
        """The PACS watcher's state: which film was scored by which model, what reached the archive."""
        return self.home / "pacs.sqlite"


def os_user() -> str | None:
    """The operating-system user running this process (recorded with jobs, promotions, audit rows)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def _pacs_secrets(env, home: Path) -> dict:
    """The archive's URL and credentials: environment variables first, then the secrets file."""
    path = Path(env.get("PNEUMO_PACS_SECRETS") or home / "pacs.json")
    try:
        stored = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        stored = {}
    keys = {"url": "PNEUMO_PACS_URL", "user": "PNEUMO_PACS_USER", "password": "PNEUMO_PACS_PASSWORD",
            "token": "PNEUMO_PACS_TOKEN"}
    return {f"pacs_{key}": env.get(variable) or str(stored.get(key) or "") for key, variable in keys.items()}


def load_settings(env: dict | None = None) -> Settings:
    """Build the settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    cwd = Path.cwd()
    data = env.get("PNEUMO_DATA")
    weights_dir = env.get("PNEUMO_WEIGHTS_DIR")
    home = Path(env.get("PNEUMO_HOME", cwd / ".pneumo"))
    return Settings(
        data_dir=Path(data) if data else _first_existing(
            cwd / "data" / "chest_xray", REPO_ROOT.parent / "shared" / "data" / "chest_xray"),
        home=home,
        weights_dir=Path(weights_dir) if weights_dir else _first_existing(
            REPO_ROOT / "weights", REPO_ROOT.parent / "shared" / "weights"),
        weights=env.get("PNEUMO_WEIGHTS", "auto"),
        backbone=env.get("PNEUMO_BACKBONE", "mobilenet_v2"),
        image_size=int(env.get("PNEUMO_IMAGE_SIZE", 224)),
        seed=int(env.get("PNEUMO_SEED", 42)),
        tuner_id=env.get("KERASTUNER_TUNER_ID", ""),
        oracle=f"{env['KERASTUNER_ORACLE_IP']}:{env.get('KERASTUNER_ORACLE_PORT', '')}"
        if env.get("KERASTUNER_ORACLE_IP") else "",
        **_pacs_secrets(env, home),
    )


STRATEGIES = ("default", "mirrored", "multiworker")  # tf.distribute choices for fine-tuning (distribute.py)


@dataclass
class TrainConfig:
    """Everything `train` needs beyond the paths; the command line's defaults come from here."""
    data_dir: str = ""
    backbone: str = "mobilenet_v2"
    weights: str = "auto"
    trials: int = 20
    epochs: int = 12
    fine_tune_epochs: int = 0
    image_size: int = 224
    seed: int = 42
    tuner: str = "random"
    normalisation: str = "equalize"
    augmented_views: int = 3
    ensemble: int = 3
    min_sensitivity: float = 0.95
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    augmentation: Augmentation = field(default_factory=Augmentation)
    strategy: str = "default"  # fine-tuning: default | mirrored (local GPUs) | multiworker (TF_CONFIG cluster)
    mixed_precision: bool = False  # fine-tuning in float16 compute; GPUs only (ignored, with a note, on CPU)
    xla: bool = False  # fine-tuning step compiled by XLA (jit_compile)
