"""Scaling out on localhost: a shared Keras Tuner search (chief + 2 workers) and `train` under
MultiWorkerMirroredStrategy with two CPU workers. Each process is the real command line."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_dataset

# No augmented views: what is shared (the search, the fine-tuning step) is the point, not the features.
TINY = ["--weights", "none", "--image-size", "64", "--views", "0"]


def free_ports(n: int) -> list[int]:
    """`n` free TCP ports below the kernel's ephemeral range.

    A port from that range (what binding port 0 returns) can be handed to any other process asking the
    kernel for one (a listener on port 0, an outgoing connection) between this check and our server
    binding it; a port below it is only ever taken by explicit choice. Random, so concurrent runs of
    this test differ.
    """
    ranges = Path("/proc/sys/net/ipv4/ip_local_port_range")
    first_ephemeral = int(ranges.read_text().split()[0]) if ranges.exists() else 32768
    rng, ports = random.SystemRandom(), []
    while len(ports) < n:
        port = rng.randrange(max(1024, first_ephemeral - 10_000), first_ephemeral)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


def start(args, home, log, env_extra=None) -> subprocess.Popen:
    env = {**os.environ, "PNEUMO_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "2", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "pneumo_core", *map(str, args)], cwd=REPO, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def finish(processes, timeout=400) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()


def test_chief_and_two_workers_share_one_search(tmp_path, synthetic_data, trained_home):
    (port,) = free_ports(1)
    # The workers find the films' features in the cache of the session's model (trained on the same films, the
    # same backbone and size): the search is the point here, and each worker embedding them itself cost ~3 s of CPU.
    shutil.copytree(trained_home / "features", tmp_path / "home" / "features")
    search, trials = tmp_path / "search", 6
    common = ["--trials", trials, "--epochs", 3, "--directory", search, "--oracle", f"127.0.0.1:{port}"]
    chief = start(["tune", "--distributed", "chief", *common], tmp_path / "home", tmp_path / "chief.log")
    # The second worker joins through Keras Tuner's own environment variables instead of options.
    workers = [start(["tune", "--data", synthetic_data, *TINY, "--distributed", "worker", "--tuner-id", "tuner0",
                      *common], tmp_path / "home", tmp_path / "tuner0.log"),
               start(["tune", "--data", synthetic_data, *TINY, "--trials", trials, "--epochs", 3,
                      "--directory", search], tmp_path / "home", tmp_path / "tuner1.log",
                     {"KERASTUNER_TUNER_ID": "tuner1", "KERASTUNER_ORACLE_IP": "127.0.0.1",
                      "KERASTUNER_ORACLE_PORT": str(port)})]
    codes = finish([*workers, chief])
    logs = {name: (tmp_path / f"{name}.log").read_text() for name in ("chief", "tuner0", "tuner1")}
    assert codes == [0, 0, 0], {k: v[-2000:] for k, v in logs.items()}
    hits = [sum(line.startswith("progress: caching") and line.endswith(" cached") for line in logs[w].splitlines())
            for w in ("tuner0", "tuner1")]
    assert hits == [3, 3], "the workers did not find the session model's features (train, val, test) in their cache"

    ran = [json.loads(logs[w].strip().splitlines()[-1])["trials_run_here"] for w in ("tuner0", "tuner1")]
    assert all(ran) and not set(ran[0]) & set(ran[1])  # each worker ran some, none twice
    summary = json.loads((search / "summary.json").read_text())
    assert summary["trials_run"] == trials and sorted(ran[0] + ran[1]) == sorted(t["trial"] for t in summary["best"])

    from pneumo_core.learn.tuning import best_head
    dim = 1280  # MobileNetV2's pooled features
    head = best_head(search, summary, dim)
    assert head.output_shape == (None, 1)
    assert head.get_layer(index=1).units == summary["best"][0]["hyperparameters"]["units"]


@pytest.fixture
def few_films(tmp_path):
    """40 films of 20 patients at the model's input size: ~28 training films (one fine-tuning step), val, test."""
    return make_dataset(tmp_path / "data", {"train": (20, 20)}, shape=(64, 64))


def test_train_under_multiworker_mirrored_strategy_on_two_cpu_workers(tmp_path, few_films):
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    args = ["train", "--data", few_films, *TINY, "--trials", 1, "--epochs", 1, "--ensemble", 1, "--tta-views", 0,
            "--fine-tune-epochs", 1, "--strategy", "multiworker", "--mixed-precision", "--xla"]
    processes = [start(args, tmp_path / "home", tmp_path / f"worker{i}.log",
                       {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
                 for i in range(2)]
    codes = finish(processes)
    logs = [(tmp_path / f"worker{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [log[-2000:] for log in logs]
    assert all("strategy: multiworker, 2 replicas in sync, 2 worker(s)" in log for log in logs)
    assert "waiting for the chief to register the model" in logs[1]
    assert "unhealthy" not in logs[0]   # the other worker waited for the chief: no lost heartbeats
    # GPU-only options on CPU workers: ignored, with a note, rather than 10x slower
    assert all("mixed precision ignored" in log and "XLA ignored" in log for log in logs)
    from pneumo_core.records.registry import list_versions
    models = tmp_path / "home" / "models"
    (registered,) = list_versions(models)  # one version: the chief's
    assert logs[0].strip().splitlines()[-1] == registered["id"]
    version = models / registered["id"]
    history = (version / "history.csv").read_text()
    assert "fine-tune" in history


