"""Ed25519 signatures of model versions: who may put a model in front of clinicians.

A version's `signature.json` holds the SHA-256 of `model.keras`, `metadata.json` (the model card)
and `ood.npz` (when there is one) and an Ed25519 signature over those names and hashes. The
private key is kept outside `PNEUMO_HOME` by whoever answers for the models (the ML lead, or a
signing machine); the server needs only the public key (`PNEUMO_VERIFY_KEY`), and with one set it
loads no version whose files do not match a valid signature. Someone who can write `PNEUMO_HOME`
(a swapped `model.keras` with its new hash written into the card) cannot make one without the
private key. Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public): `generate_keys`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pneumo_core.errors import ConfigError, IntegrityError, RegistryError
from pneumo_core.learn.store import file_sha256, write_text_atomic

SIGNATURE_FILE = "signature.json"
SIGNED_FILES = ("model.keras", "metadata.json", "ood.npz")   # ood.npz only where the version has one


def generate_keys(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 key pair: the private key mode 0600 (never overwritten), the public key 0644.

    Args:
        private_path: where the private key goes (keep it off the server, or outside PNEUMO_HOME).
        public_path: the public key the server verifies with (`PNEUMO_VERIFY_KEY`).
    """
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    try:
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{private_path} exists; a signing key is never overwritten") from None
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    Path(public_path).write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))


def _load(path: Path, private: bool):
    what = "signing (private)" if private else "verification (public)"
    try:
        data = Path(path).read_bytes()
        key = serialization.load_pem_private_key(data, None) if private else serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"the model {what} key {path} cannot be read ({type(error).__name__}); "
                          f"make one with: python -m pneumo_core sign --new-key FILE") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise ConfigError(f"the model {what} key {path} is not an Ed25519 key")
    return key


def _digests(version_dir: Path) -> dict[str, str]:
    return {name: file_sha256(version_dir / name) for name in SIGNED_FILES if (version_dir / name).is_file()}


def _message(version_id: str, digests: dict[str, str]) -> bytes:
    return json.dumps({"version": version_id, "files": digests}, sort_keys=True, separators=(",", ":")).encode()


def sign_version(version_dir: Path, private_key: Path) -> dict:
    """Sign a version folder's model, card and OOD statistics; writes and returns `signature.json`.

    Args:
        version_dir: the version folder.
        private_key: the Ed25519 private key (PEM).
    Returns:
        {"version", "files": {name: sha256}, "signature": hex, "public_key": hex}.
    """
    version_dir = Path(version_dir)
    if not (version_dir / "model.keras").is_file():
        raise RegistryError(f"no model version {version_dir.name} in {version_dir.parent}. List them with: "
                            f"python -m pneumo_core models")
    key = _load(private_key, private=True)
    digests = _digests(version_dir)
    record = {"version": version_dir.name, "files": digests,
              "signature": key.sign(_message(version_dir.name, digests)).hex(),
              "public_key": key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw).hex()}
    write_text_atomic(version_dir / SIGNATURE_FILE, json.dumps(record, indent=2) + "\n")
    return record


def verify_version(version_dir: Path, public_key: Path) -> dict[str, str]:
    """Check a version folder against its signature with the server's public key.

    Args:
        version_dir: the version folder.
        public_key: the Ed25519 public key (PEM) of whoever signs the models.
    Returns:
        The signed {file name: sha256}.
    Raises:
        IntegrityError: no signature, a signature made with another key, or a signed file changed.
    """
    version_dir = Path(version_dir)
    key = _load(public_key, private=False)
    refused = f"model version {version_dir.name} refused (integrity check failed)"
    path = version_dir / SIGNATURE_FILE
    if not path.is_file():
        raise IntegrityError(f"{refused}: it is not signed, and this server serves only signed models. The holder "
                             f"of the signing key signs it with: python -m pneumo_core sign {version_dir.name} "
                             f"--key FILE")
    try:
        record = json.loads(path.read_text())
        key.verify(bytes.fromhex(record["signature"]), _message(version_dir.name, record["files"]))
    except (ValueError, KeyError, TypeError, InvalidSignature):
        raise IntegrityError(f"{refused}: its signature is not valid for this server's key "
                             f"({SIGNATURE_FILE} changed, or signed with another key)") from None
    digests = _digests(version_dir)
    for name in SIGNED_FILES:
        if digests.get(name) != record["files"].get(name):
            raise IntegrityError(f"{refused}: {name} is not the file that was signed (changed, added or removed "
                                 f"since). Restore the folder from a backup or activate another version")
    return record["files"]
