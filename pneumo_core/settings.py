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
| PNEUMO_MAX_JOBS_PER_USER | 2: unfinished (queued or running) jobs one user may have |
| PNEUMO_MIN_FREE_MB    | 2048: free disk space in PNEUMO_HOME a job needs at submit |
| PNEUMO_FEATURE_CACHE_MB | 4096: feature cache size; least recently used evicted    |
| PNEUMO_JOB_LOG_MB     | 5: a job log rotates at this size (one older part kept)    |
| PNEUMO_JOB_RUNNERS    | `local`: a job's runner starts on the machine that queues  |
|                       | it; `workers`: jobs wait for `jobs runner` processes (any  |
|                       | machine that sees the database and PNEUMO_HOME/models)     |
| PNEUMO_DATABASE_URL   | unset: audit, accounts, jobs, PACS state in SQLite files   |
|                       | under PNEUMO_HOME; `postgresql://user@host/db`: all in one |
|                       | shared PostgreSQL (read by `records.db`)                   |
| PNEUMO_DATABASE_URL_FILE | a file holding that URL on its first line (a secret    |
|                       | kept out of the environment); PGPASSWORD/PGPASSFILE work   |
| PNEUMO_MAX_FILM_MPX,  | the dashboard's memory budget (`MemoryBudget` below and    |
| PNEUMO_REQUEST_MPX,   | docs/memory.md): megapixels per film and per               |
| PNEUMO_FILES_PER_UPLOAD, | request, files per upload, MB of cached diagnoses, model |
| PNEUMO_CACHE_MB,      | versions loaded at once                                    |
| PNEUMO_MODELS_LOADED  |                                                            |
| KERASTUNER_TUNER_ID,  | distributed tuning (read by Keras Tuner too): `chief` or a |
| KERASTUNER_ORACLE_IP, | worker id, and the chief's address; unset = one machine    |
| KERASTUNER_ORACLE_PORT|                                                            |
| PNEUMO_SITE_DATA      | a folder holding sites' labelled films (NORMAL/ and        |
|                       | PNEUMONIA/, itself or one or two levels down), offered on  |
|                       | the Site page; unset = only folders beside PNEUMO_DATA     |
| PNEUMO_TRIAGE_ALPHA,  | triage tiers' promises (`evaluation.triage`): share of       |
| PNEUMO_TRIAGE_BETA    | pneumonias in low (0.05), of normals in high (0.10); the   |
|                       | default of `site validate/adapt --alpha/--beta`            |
| PNEUMO_CLINIC_PREVALENCE | the clinic's share of pneumonia for PPV/NPV (0..1);     |
|                       | unset = readers' verdicts, else estimated from scores     |
| PNEUMO_REVIEWED_RETENTION_DAYS | 365: days the de-identified films with a reader's |
|                       | verdict are kept for adaptation (0: keep none)             |
| PNEUMO_SITE_UPLOAD_DAYS | 7: days an uploaded site zip's films are kept under      |
|                       | PNEUMO_HOME/sites (removed at the next upload after that)  |
| PNEUMO_PACS_URL       | DICOMweb root of the archive, e.g.                         |
|                       | `http://pacs:8042/dicom-web`; unset = no PACS              |
| PNEUMO_PACS_USER,     | HTTP basic auth for the archive; or PNEUMO_PACS_TOKEN for  |
| PNEUMO_PACS_PASSWORD  | a bearer token; none set = no auth header is sent          |
| PNEUMO_PACS_SECRETS   | a JSON file {"url", "user", "password", "token"} read when |
|                       | the variables are unset (default `PNEUMO_HOME/pacs.json`)  |
| PNEUMO_PACS_ALLOW_HTTP_CREDENTIALS | 0: credentials are refused over a plain  |
|                       | `http://` URL (anyone on the path reads them); 1 allows    |
|                       | it (a test archive on this machine)                        |
| PNEUMO_VERIFY_KEY     | Ed25519 public key (PEM) of whoever signs model versions;  |
|                       | set = only signed versions load. Outside PNEUMO_HOME       |
| PNEUMO_SIGNING_KEY    | Ed25519 private key (PEM) that signs each new version at   |
|                       | registration; unset = versions are signed by the key's     |
|                       | holder (`sign`). Outside PNEUMO_HOME                       |
| PNEUMO_ANCHOR_FILE    | append-only file (chattr +a, or another user's) the audit  |
|                       | and promotion chains' heads are appended to; unset = none  |
| PNEUMO_ANCHOR_SYSLOG  | `HOST:PORT` (UDP) or a socket path (`/dev/log`) the heads  |
|                       | are also sent to as syslog lines; unset = none             |
| PNEUMO_TRUSTED_PROXIES| comma-separated addresses or networks of reverse proxies   |
|                       | whose X-Forwarded-For names the client; unset = none       |
| PNEUMO_ARGON2_PROFILE | `RFC_9106_LOW_MEMORY`: the cost of the Argon2id password   |
|                       | and setup-code hashes (argon2-cffi's profile names);       |
|                       | `RFC_9106_HIGH_MEMORY` costs more (2 GiB per hash);        |
|                       | `CHEAPEST` is for test suites only: it barely slows a      |
|                       | guesser. Stored hashes move to the current profile at      |
|                       | their account's next sign-in                               |
"""
from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pneumo_core.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent


def _first_existing(*candidates: Path) -> Path:
    for path in candidates:
        if path.exists():
            return path
    return candidates[0]


@dataclass(frozen=True)
class Augmentation:
    """How strong the random training views are (applied by `imaging.augment.random_view`)."""

    rotation: float = 15.0      # degrees, +-
    zoom: float = 0.2           # scale in [1 - zoom, 1 + zoom]
    shift: float = 0.12         # fraction of the side, +-
    flip: bool = False
    gamma: float = 0.5          # gamma in [1 - gamma, 1 + gamma]
    contrast: float = 0.4       # contrast factor in [1 - contrast, 1 + contrast]
    blur: float = 2.0           # max Gaussian sigma in pixels (at 224 px)
    noise: float = 10.0         # max std of additive Gaussian noise (grey levels)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MemoryBudget:
    """Every limit that bounds what one dashboard process holds in memory (docs/memory.md).

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
    max_jobs_per_user: int = 2
    min_free_mb: int = 2048     # a default job writes ~100 MB (features, tuner, model); 2 GB leaves room for many
    feature_cache_mb: int = 4096   # ~80 MB per seed/size/backbone on the 5216 films: ~50 settings kept
    job_log_mb: float = 5         # a default job's log is ~200 KB
    job_runners: str = "local"    # "workers": only `jobs runner` processes start jobs (PNEUMO_JOB_RUNNERS)
    budget: MemoryBudget = field(default_factory=MemoryBudget)
    site_data_dir: Path | None = None  # sites' labelled films for the Site page (PNEUMO_SITE_DATA)
    # Days the de-identified pixels of films with a reader's verdict are kept for adaptation
    # (PNEUMO_REVIEWED_RETENTION_DAYS; 0: keep none). A year: a few adaptation rounds at a site.
    reviewed_retention_days: int = 365
    triage_alpha: float = 0.05   # triage tiers: share of pneumonias the low tier may hold (95 % confidence)
    triage_beta: float = 0.10    # share of normals the high tier may hold
    clinic_prevalence: float | None = None   # for PPV/NPV; None: estimated from recent scores
    # Days an uploaded site's films (up to 1 GB each, a hospital's) stay under PNEUMO_HOME/sites: a week
    # covers validating, adapting and re-validating (PNEUMO_SITE_UPLOAD_DAYS).
    site_upload_days: float = 7
    pacs_url: str = ""  # DICOMweb root; credentials never shown (repr=False)
    pacs_user: str = field(default="", repr=False)
    pacs_password: str = field(default="", repr=False)
    pacs_token: str = field(default="", repr=False)
    # Basic auth or a token over plain http:// is refused unless this is set (PNEUMO_PACS_ALLOW_HTTP_CREDENTIALS=1).
    pacs_allow_http_credentials: bool = False
    # Integrity and security (docs/security.md): keys outside PNEUMO_HOME, where the service's writer cannot
    # replace them; anchors in a place the service can append to but not rewrite; the proxies trusted for
    # the client's address.
    verify_key: Path | None = None
    signing_key: Path | None = None
    anchor_file: Path | None = None
    anchor_syslog: str = ""
    trusted_proxies: tuple[str, ...] = ()

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
    def train_command(self) -> str:
        """The one wording of "train a model", with this server's data folder filled in (what `make train` runs)."""
        return f"python -m pneumo_core train --data {self.data_dir}"

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
    def reviewed_dir(self) -> Path:
        """De-identified films with a reader's verdict: reviewed/NORMAL|PNEUMONIA/<sha256>.png."""
        return self.home / "reviewed"

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


def _key_outside_home(env, name: str, home: Path) -> Path | None:
    """The key file named by `env[name]`, refused inside PNEUMO_HOME (whoever can write there could replace it)."""
    if not env.get(name):
        return None
    key = Path(env[name]).expanduser()
    if key.resolve().is_relative_to(home.expanduser().resolve()):
        raise ConfigError(f"{name}={env[name]} lies inside PNEUMO_HOME ({home}); keep model keys outside it, where "
                          f"whoever can write PNEUMO_HOME cannot replace them (docs/security.md)")
    return key


def _job_runners(env: dict) -> str:
    value = env.get("PNEUMO_JOB_RUNNERS", "local").strip().lower() or "local"
    if value not in ("local", "workers"):
        raise ConfigError(f"PNEUMO_JOB_RUNNERS={value!r}: use 'local' (a runner per job on the machine that queues "
                          f"it) or 'workers' (jobs wait for `python -m pneumo_core jobs runner` processes)")
    return value


def load_settings(env: dict | None = None) -> Settings:
    """Build the settings from `env` (default: the process environment)."""
    env = os.environ if env is None else env
    cwd, defaults = Path.cwd(), TrainConfig()
    data = env.get("PNEUMO_DATA")
    weights_dir = env.get("PNEUMO_WEIGHTS_DIR")
    home = Path(env.get("PNEUMO_HOME", cwd / ".pneumo"))
    security = {
        "verify_key": _key_outside_home(env, "PNEUMO_VERIFY_KEY", home),
        "signing_key": _key_outside_home(env, "PNEUMO_SIGNING_KEY", home),
        "anchor_file": Path(env["PNEUMO_ANCHOR_FILE"]) if env.get("PNEUMO_ANCHOR_FILE") else None,
        "anchor_syslog": env.get("PNEUMO_ANCHOR_SYSLOG", ""),
        "trusted_proxies": tuple(p.strip() for p in env.get("PNEUMO_TRUSTED_PROXIES", "").split(",") if p.strip()),
    }
    return Settings(
        data_dir=Path(data) if data else _first_existing(
            cwd / "data" / "chest_xray", REPO_ROOT.parent / "shared" / "data" / "chest_xray"),
        home=home,
        weights_dir=Path(weights_dir) if weights_dir else _first_existing(
            REPO_ROOT / "weights", REPO_ROOT.parent / "shared" / "weights"),
        weights=env.get("PNEUMO_WEIGHTS", defaults.weights),
        backbone=env.get("PNEUMO_BACKBONE", defaults.backbone),
        image_size=int(env.get("PNEUMO_IMAGE_SIZE", defaults.image_size)),
        seed=int(env.get("PNEUMO_SEED", defaults.seed)),
        tuner_id=env.get("KERASTUNER_TUNER_ID", ""),
        max_jobs_per_user=int(env.get("PNEUMO_MAX_JOBS_PER_USER", 2)),
        min_free_mb=int(env.get("PNEUMO_MIN_FREE_MB", 2048)),
        feature_cache_mb=int(env.get("PNEUMO_FEATURE_CACHE_MB", 4096)),
        job_log_mb=float(env.get("PNEUMO_JOB_LOG_MB", 5)),
        job_runners=_job_runners(env),
        oracle=f"{env['KERASTUNER_ORACLE_IP']}:{env.get('KERASTUNER_ORACLE_PORT', '')}"
        if env.get("KERASTUNER_ORACLE_IP") else "",
        budget=memory_budget(env),
        site_data_dir=Path(env["PNEUMO_SITE_DATA"]) if env.get("PNEUMO_SITE_DATA") else None,
        reviewed_retention_days=int(env.get("PNEUMO_REVIEWED_RETENTION_DAYS", 365)),
        triage_alpha=_share(env, "PNEUMO_TRIAGE_ALPHA", 0.05),
        triage_beta=_share(env, "PNEUMO_TRIAGE_BETA", 0.10),
        clinic_prevalence=_share(env, "PNEUMO_CLINIC_PREVALENCE", None),
        site_upload_days=float(env.get("PNEUMO_SITE_UPLOAD_DAYS", 7)),
        pacs_allow_http_credentials=env.get("PNEUMO_PACS_ALLOW_HTTP_CREDENTIALS", "").lower() in ("1", "true", "yes"),
        **_pacs_secrets(env, home),
        **security,
    )


# The values a queued training job may ask for: {option: (lowest, highest)}. One place, used by
# `jobs.check_params` (so the Retrain form and `jobs submit` alike) and by the form's inputs. Bounded
# because a job runs on the shared server: 500 trials or 512 px would hold it for hours.
TRAIN_LIMITS: dict[str, tuple[int, int]] = {
    "trials": (1, 100), "epochs": (1, 100), "fine_tune_epochs": (0, 20), "image_size": (32, 384),
    "augmented_views": (0, 5), "ensemble": (1, 5), "seed": (0, 2**31 - 1), "tta_views": (0, 8),
}


def _share(env: dict, name: str, fallback: float | None) -> float | None:
    """A share strictly between 0 and 1 from `env`, or `fallback` when unset."""
    if not env.get(name):
        return fallback
    try:
        value = float(env[name])
    except ValueError:
        value = -1.0
    if not 0 < value < 1:
        raise ConfigError(f"{name}={env[name]!r}: expected a share between 0 and 1, e.g. 0.05")
    return value


# argon2-cffi's profiles (argon2.profiles) a deployment may name in PNEUMO_ARGON2_PROFILE; the first is the default.
ARGON2_PROFILES = ("RFC_9106_LOW_MEMORY", "RFC_9106_HIGH_MEMORY", "CHEAPEST")


def argon2_profile(env: dict | None = None) -> str:
    """The Argon2 profile that new password hashes use, from PNEUMO_ARGON2_PROFILE.

    Args:
        env: the environment (default: os.environ).
    Returns:
        One of `ARGON2_PROFILES`: argon2-cffi's default (RFC 9106's low-memory profile) when unset.
    Raises:
        ConfigError: a name that is not one of them.
    """
    env = os.environ if env is None else env
    name = (env.get("PNEUMO_ARGON2_PROFILE") or ARGON2_PROFILES[0]).strip().upper()
    if name not in ARGON2_PROFILES:
        raise ConfigError(f"PNEUMO_ARGON2_PROFILE={env['PNEUMO_ARGON2_PROFILE']!r}: use one of "
                          f"{', '.join(ARGON2_PROFILES)} (unset: {ARGON2_PROFILES[0]}, the production cost)")
    return name


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



@dataclass
class TrainConfig:
    """Everything `train` needs beyond the paths, under the names the command line, the dashboard and
    job rows use; the defaults of all three (and of `Settings`) come from here."""
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
    # Test-time augmentation of the new version: it scores the mean calibrated logit over the plain film and
    # this many training-style views (threshold and Platt fitted on those validation scores). Default training
    # run, plain vs 3 views: site AUC 0.934 vs 0.959, site specificity 0.554 vs 0.646 (sensitivity 0.962 both),
    # internal test AUC 0.990 vs 0.993; train 56 s vs 262 s on a warm feature cache. 5 views (site AUC 0.963
    # when applied to the plain model) would put a cold-cache `train` past its 10 minutes. The threshold keeps
    # its sensitivity promise through evaluation.THRESHOLD_CONFIDENCE (a plain 0.95 rule gave 0.938 here).
    tta_views: int = 3
    strategy: str = "default"  # fine-tuning: default | mirrored (local GPUs) | multiworker (TF_CONFIG cluster)
    mixed_precision: bool = False  # fine-tuning in float16 compute; GPUs only (ignored, with a note, on CPU)
    xla: bool = False  # fine-tuning step compiled by XLA (jit_compile)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The config `to_dict` wrote (a job row). Raises ConfigError on a name that is not a field."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(unknown)}; known: {', '.join(names)}")
        values = dict(values)
        if isinstance(values.get("augmentation"), dict):
            values["augmentation"] = Augmentation(**values["augmentation"])
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain JSON-ready values, field by field."""
        return asdict(self)

    @property
    def feature_passes(self) -> int:
        """How many feature-cache passes `train` makes: the plain view, each augmented view,
        validation and test (training.cached_features; a job's progress bar splits its band by it)."""
        return 1 + self.augmented_views + 2


# How `train`'s command line spells TrainConfig's fields: `--field-name` unless named here; None for
# fields that only code sets (a job that changes one cannot be run as a command line).
OPTION_NAMES = {"data_dir": "--data", "augmented_views": "--views", "min_sensitivity": None,
                "val_fraction": None, "test_fraction": None, "augmentation": None}


def option_name(field_name: str) -> str | None:
    """The command-line option of a TrainConfig field ("fine_tune_epochs" -> "--fine-tune-epochs")."""
    return OPTION_NAMES.get(field_name, "--" + field_name.replace("_", "-"))
