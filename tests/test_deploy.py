"""Deployment files checked offline: Kubernetes schemas, names/ports/env/probes cross-checked, compose validated."""

import copy
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.gateway.app import create_app
from shared.state.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
SETTINGS = {name.upper() for name in Settings.model_fields}
EXTRA_ENV = {"CDI_ROLE", "KERAS_BACKEND"}  # read by the image (health probe) and by Keras, not by Settings
ROUTES = set(create_app(Settings(redis_url="redis://127.0.0.1:1/0")).openapi()["paths"])


def documents(folder: Path) -> list[dict]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    docs = []
    for resource in kustomization["resources"]:
        path = folder / resource
        docs += documents(path) if path.is_dir() else [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        base = next(d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"])
        merge(base, yaml.safe_load((folder / patch["path"]).read_text()))
    return docs


def merge(base: dict, patch: dict) -> None:
    """Strategic merge as kustomize does it for these patches: maps recursively, containers/env by name."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        elif isinstance(value, list) and value and isinstance(value[0], dict) and "name" in value[0] \
                and isinstance(base.get(key), list):
            for item in value:
                match = next((b for b in base[key] if b.get("name") == item["name"]), None)
                merge(match, item) if match is not None else base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu", "overlays/autoscale", "overlays/receivers"])
def test_manifests_match_the_kubernetes_schema_and_each_other(overlay):
    docs = documents(K8S / overlay)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
        if doc["kind"] != "ScaledObject":  # a KEDA CRD: checked by hand below
            kubernetes_validate.validate(doc, "1.30", strict=True)
    settings_keys = set(by_kind["ConfigMap"]["cdi-live-settings"]["data"])
    assert settings_keys <= SETTINGS, settings_keys - SETTINGS
    claims = set(by_kind["PersistentVolumeClaim"])
    for name, deployment in by_kind["Deployment"].items():
        pod = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:  # the gateway's ACCESS_FILE
                assert volume["secret"]["secretName"] == "cdi-live-access" and name == "gateway"
                continue
            if "emptyDir" in volume:  # the receivers' shared /dev/shm
                assert volume["emptyDir"]["medium"] == "Memory" and name == "ingest"
                continue
            assert volume["persistentVolumeClaim"]["claimName"] in claims
        for container in pod["spec"]["containers"]:
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert "livenessProbe" in container
            for env in container.get("env", []):
                assert env["name"] in SETTINGS | EXTRA_ENV, env["name"]
            if container["image"].startswith("cdi-live"):
                refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
                assert refs == ["cdi-live-settings"]
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    if "httpGet" in container.get(probe, {}):
                        assert container[probe]["httpGet"]["path"] in ROUTES
                    elif "exec" in container.get(probe, {}):
                        assert container[probe]["exec"]["command"][:3] == ["cdi-live", "health", name]
    for name, service in by_kind["Service"].items():
        pods = [d for d in by_kind["Deployment"].values()
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert len(pods) == 1, name
        ports = {p["name"]: p["containerPort"] for c in pods[0]["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports
    redis_url = by_kind["ConfigMap"]["cdi-live-settings"]["data"]["REDIS_URL"]
    assert re.match(r"redis://redis:6379/", redis_url) and "redis" in by_kind["Service"]
    if overlay == "overlays/gpu":
        infer = by_kind["Deployment"]["infer"]["spec"]["template"]["spec"]["containers"][0]
        assert infer["resources"]["limits"]["nvidia.com/gpu"] == 1 and infer["image"].endswith(":gpu")
        assert {"name": "KERAS_BACKEND", "value": "jax"} in infer["env"]
    if overlay == "overlays/receivers":  # one container per receiver, each told its index
        containers = by_kind["Deployment"]["ingest"]["spec"]["template"]["spec"]["containers"]
        indices = [{e["name"]: e["value"] for e in c["env"]}.get("INGEST_RECEIVER") for c in containers]
        assert indices == ["0", "1"] and len(by_kind["Service"]["ingest"]["spec"]["ports"]) == 2
    if overlay == "overlays/autoscale":
        scaler = by_kind["ScaledObject"]["infer"]
        assert scaler["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
        trigger = scaler["spec"]["triggers"][0]
        assert trigger["type"] == "redis-streams" and trigger["metadata"]["stream"] == "cdi:jobs:infer"
        assert trigger["metadata"]["consumerGroup"] == "infer"  # the group the inference workers join
        refine = by_kind["ScaledObject"]["refine"]
        assert refine["spec"]["scaleTargetRef"]["name"] in by_kind["Deployment"]
        trigger = refine["spec"]["triggers"][0]
        assert trigger["type"] == "metrics-api" and trigger["metadata"]["valueLocation"] == "refined.jobs"
        assert trigger["metadata"]["url"].startswith("http://gateway:8000/api/queue") and "gateway" in by_kind["Service"]


def test_compose_file():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "ingest", "infer", "refine", "gateway"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and services["redis"]["volumes"]
    assert services["infer"]["deploy"]["replicas"] >= 2
    assert "5555:5555" in services["ingest"]["ports"]
    second = services["ingest-1"]  # a second receiver on the stream, with its profile
    assert second["profiles"] == ["receivers"] and second["environment"]["INGEST_RECEIVER"] == "1"
    assert second["ipc"] == "service:ingest"  # the ROI volume in /dev/shm is shared
    assert services["gateway"]["ports"] == ["${CDI_GATEWAY_PUBLISH:-127.0.0.1}:8000:8000"]  # open: loopback only
    for name, service in services.items():
        for key in service.get("environment", {}):
            assert key in SETTINGS | EXTRA_ENV, f"{name}: {key}"
    for tool in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(tool[0]) or subprocess.run(tool + ["version"], capture_output=True).returncode:
            continue  # the docker CLI without its compose plugin
        result = subprocess.run(tool + ["-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return
    pytest.skip("neither `docker compose` nor docker-compose is installed: structure checked only")


def test_dockerfile_is_multistage_non_root_and_healthchecked():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    stages = re.findall(r"^FROM (\S+) AS (\S+)", text, re.M)
    assert {"cpu", "gpu"} <= {name for _, name in stages}
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text).group(1)
    assert re.search(r":\d+\.\d+\.\d+-", base), "the base image is pinned to a patch release"
    assert "USER cdi" in text and "HEALTHCHECK" in text and "cdi-live health" in text
