"""A local Orthanc for development, tests and benchmarks: Debian's `/usr/sbin/Orthanc` with its
DICOMweb plugin, run as a user process from a generated JSON configuration.

HTTP basic auth on, no remote access, the DICOM (C-STORE) port off, storage in a folder of your
choosing; `start()` returns when `/system` answers. Used by tests/conftest.py (the `orthanc`
fixture), bench/pacs.py and scripts/pacs_demo.py.

    python scripts/orthanc_dev.py --folder /tmp/orthanc --port 8042    # runs until Ctrl-C
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import requests

ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def installed() -> bool:
    """Whether Debian's orthanc and orthanc-dicomweb packages are installed."""
    return ORTHANC.exists() and DICOMWEB_PLUGIN.exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """One Orthanc process on 127.0.0.1:`port` storing into `folder` (kept across restarts).

    Attributes:
        url: the REST root (http://127.0.0.1:PORT); dicomweb: the DICOMweb root (url + /dicom-web).
        user, password: the HTTP basic auth account.
    """

    def __init__(self, folder: Path, port: int | None = None, user: str = "pneumo", password: str | None = None):
        self.folder = Path(folder)
        self.port = port or free_port()
        self.user, self.password = user, password or secrets.token_urlsafe(12)
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.process: subprocess.Popen | None = None

    @property
    def auth(self) -> tuple[str, str]:
        return self.user, self.password

    def config(self) -> dict:
        storage = self.folder / "storage"
        return {"Name": "pneumo-dev", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
                "HttpPort": self.port, "RemoteAccessAllowed": False, "AuthenticationEnabled": True,
                "RegisteredUsers": {self.user: self.password}, "DicomServerEnabled": False,
                "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                "HttpTimeout": 60, "StableAge": 1}

    def start(self, timeout: float = 60) -> OrthancServer:
        """Start Orthanc and wait until /system answers with the configured account."""
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "orthanc.json"
        config.write_text(json.dumps(self.config(), indent=1))
        config.chmod(0o600)   # holds the password
        log = (self.folder / "orthanc.log").open("ab")
        self.process = subprocess.Popen([str(ORTHANC), str(config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
            if self.alive():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer on port {self.port} within {timeout:.0f} s; "
                           f"see {self.folder / 'orthanc.log'}")

    def alive(self) -> bool:
        try:
            return requests.get(f"{self.url}/system", auth=self.auth, timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 20 s); the storage folder stays."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def get(self, path: str):
        """GET on the REST API (JSON)."""
        response = requests.get(f"{self.url}{path}", auth=self.auth, timeout=30)
        response.raise_for_status()
        return response.json()

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="storage and configuration folder")
    parser.add_argument("--port", type=int, default=8042)
    parser.add_argument("--user", default="pneumo")
    parser.add_argument("--password", help="default: a random one, printed")
    args = parser.parse_args()
    with OrthancServer(args.folder, args.port, args.user, args.password) as server:
        print(f"Orthanc at {server.url} (DICOMweb {server.dicomweb}), user {server.user}, "
              f"password {server.password}; Ctrl-C stops it", flush=True)
        try:
            server.process.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
