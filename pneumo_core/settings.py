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
| PNEUMO_MAX_FILM_MPX,  | the dashboard's memory budget (`MemoryBudget` below and    |
| PNEUMO_REQUEST_MPX,   | README "Memory budget"): megapixels per film and per       |
| PNEUMO_FILES_PER_UPLOAD, | request, files per upload, MB of cached diagnoses, model |
| PNEUMO_CACHE_MB,      | versions loaded at once                                    |
| PNEUMO_MODELS_LOADED  |                                                            |
| KERASTUNER_TUNER_ID,  | distributed tuning (read by Keras Tuner too): `chief` or a |
| KERASTUNER_ORACLE_IP, | worker id, and the chief's address; unset = one machine    |
| KERASTUNER_ORACLE_PORT|                                                            |
"""
from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path

from .augment import Augmentation
from .errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _first_existing(*candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]


@dataclass(frozen=True)
class MemoryBudget:
    """Every limit that bounds what one dashboard process holds in memory (README "Memory budget").

    The class defaults are the library's (io.py reads them); `load_settings` lets a deployment
    override the five named in the module docstring.
    """
    # Per film, from the header before any pixel is decoded: a 43x43 cm detector at 0.1 mm is
    # ~18 Mpx, so 50 Mpx leaves room while a crafted 20000x20000 header is refused.
    max_film_pixels: int = 50_000_000
    # Films are decoded straight down to this longest side (JPEG: DCT scaling, others: box
    # reduction in strips); 2x the largest model input (512) and 2x the displayed film.
    working_side: int = 2048
    # Source pixels decoded per request (one Diagnose run): 20 films at the per-film limit.
    request_pixels: int = 1_000_000_000
    files_per_upload: int = 50
    # Full-size decoder buffers held at once in one process (a film waits for room): a 7000 x 7000
    # RGB PNG holds ~200 MB for ~0.5 s before it is reduced; one film always runs, whatever its size.
    decode_bytes: int = 256 * 2 ** 20
    # Cached diagnoses (display-size film + heatmap, <= 3 MB each), shared by all sessions.
    cache_bytes: int = 256 * 2 ** 20
    cache_ttl_s: int = 3600
    display_side: int = 1024
    models_loaded: int = 2  # model versions held at once (least recently used unloaded first)
    # The Metrics error browser's overlays: a few pages' worth, small, never the diagnosis cache.
    browser_entries: int = 16


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
    budget: MemoryBudget = field(default_factory=MemoryBudget)

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


def os_user() -> str | None:
    """The operating-system user running this process (recorded with jobs, promotions, audit rows)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def load_settings(env: dict | None = None) -> Settings:
    """Build the settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    cwd = Path.cwd()
    data = env.get("PNEUMO_DATA")
    weights_dir = env.get("PNEUMO_WEIGHTS_DIR")
    return Settings(
        data_dir=Path(data) if data else _first_existing(
            cwd / "data" / "chest_xray", REPO_ROOT.parent / "shared" / "data" / "chest_xray"),
        home=Path(env.get("PNEUMO_HOME", cwd / ".pneumo")),
        weights_dir=Path(weights_dir) if weights_dir else _first_existing(
            REPO_ROOT / "weights", REPO_ROOT.parent / "shared" / "weights"),
        weights=env.get("PNEUMO_WEIGHTS", "auto"),
        backbone=env.get("PNEUMO_BACKBONE", "mobilenet_v2"),
        image_size=int(env.get("PNEUMO_IMAGE_SIZE", 224)),
        seed=int(env.get("PNEUMO_SEED", 42)),
        tuner_id=env.get("KERASTUNER_TUNER_ID", ""),
        oracle=f"{env['KERASTUNER_ORACLE_IP']}:{env.get('KERASTUNER_ORACLE_PORT', '')}"
        if env.get("KERASTUNER_ORACLE_IP") else "",
        budget=memory_budget(env),
    )


def memory_budget(env: dict | None = None) -> MemoryBudget:
    """The dashboard's memory budget, with the deployment's overrides from `env` (default: os.environ)."""
    env = os.environ if env is None else env
    default = MemoryBudget()

    def number(name: str, fallback: int, scale: int = 1) -> int:
        if not env.get(name):
            return fallback
        try:
            value = int(float(env[name]) * scale)
        except ValueError:
            value = -1
        if value <= 0:
            raise ConfigError(f"{name}={env[name]!r}: a positive number is needed")
        return value

    return MemoryBudget(
        max_film_pixels=number("PNEUMO_MAX_FILM_MPX", default.max_film_pixels, 1_000_000),
        request_pixels=number("PNEUMO_REQUEST_MPX", default.request_pixels, 1_000_000),
        files_per_upload=number("PNEUMO_FILES_PER_UPLOAD", default.files_per_upload),
        cache_bytes=number("PNEUMO_CACHE_MB", default.cache_bytes, 2 ** 20),
        models_loaded=number("PNEUMO_MODELS_LOADED", default.models_loaded))


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
