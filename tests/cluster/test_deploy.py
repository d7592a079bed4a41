"""The deployment artefacts under deploy/, checked offline: what CI can prove without a cluster or a registry."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from conduit.config.loader import load_config
from conduit.upstream.credential_store import new_key

ROOT = Path(__file__).parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
CONTAINERFILE = ROOT / "deploy" / "Containerfile"
VALIDATE = str(Path(sys.executable).parent / "kubernetes-validate")


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_manifest_validates_strictly_against_the_kubernetes_schemas() -> None:
    assert MANIFESTS
    answer = subprocess.run([VALIDATE, "--strict", *map(str, MANIFESTS)], capture_output=True, text=True, check=False)
    assert answer.returncode == 0, answer.stdout + answer.stderr
    assert answer.stdout.count("passed") == len(documents())


def test_the_manifests_hold_what_a_replica_set_needs() -> None:
    kinds = {doc["kind"] for doc in documents()}
    assert {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "RuntimeClass",
        "ConfigMap",
        "Secret",
    } <= kinds
    [conduit] = [doc for doc in documents() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "conduit"]
    pod = conduit["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["runtimeClassName"] == "gvisor"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_configmaps_conduit_yaml_is_a_valid_cluster_config(tmp_path: Path) -> None:
    [configmap] = [doc for doc in documents() if doc["kind"] == "ConfigMap"]
    path = tmp_path / "conduit.yaml"
    path.write_text(configmap["data"]["conduit.yaml"])
    env = {
        "CONDUIT_REDIS_URL": "redis://conduit-redis:6379/0",
        "CONDUIT_CLUSTER_KEY": new_key(),
        "CONDUIT_STORE_KEY": new_key(),
        "CONDUIT_STATE_URL": "postgresql://conduit:pw@conduit-postgres:5432/conduit",
    }
    config = load_config(str(path), env, tmp_path).config
    assert config.cluster.redis_url is not None and config.stateless_http
    assert config.keeps_state and not config.state.is_sqlite  # replicas share one PostgreSQL
    deployment = next(
        doc for doc in documents() if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "conduit"
    )
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > (config.http.drain_delay_ms + config.http.drain_timeout_ms) / 1000


def test_the_container_build_copies_only_what_exists_and_runs_as_a_non_root_user() -> None:
    lines = [
        line.strip() for line in CONTAINERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    stages = [index for index, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) == 2, "multi-stage: a build stage and a runtime stage"
    for line in lines:
        if line.startswith("COPY ") and "--from=" not in line:
            *sources, _ = shlex.split(line)[1:]
            for source in sources:
                assert (ROOT / source).exists(), f"{line}: {source} is not in the repository"
    runtime = lines[stages[1] :]
    user = next(line.split()[1] for line in runtime if line.startswith("USER "))
    assert user.isdigit() and int(user) != 0
    fetching = [
        line for line in runtime if line.startswith("RUN ") and any(w in line for w in ("pip", "npm", "curl", "apt"))
    ]
    assert fetching == [], "the runtime stage installs nothing"
