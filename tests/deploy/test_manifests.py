"""deploy/k8s and the Containerfile: valid for a named Kubernetes version (kubernetes-validate
ships the schemas, nothing is fetched), and consistent with what `voxwire serve` really has:
its settings (VOXWIRE_* and flags), its port, its probes' answers, its metric names."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import websockets
import yaml

from server.edge.app import CLOSE_ON_EXIT_S, App
from server.runtime import config
from server.runtime.config import Settings
from server.runtime.engines import Engines
from tests.conftest import TEST_SETTINGS
from tests.deploy.conftest import DEPLOY, KEY, Live, get, metric_names

K8S_VERSION = "1.33.0"
K8S = DEPLOY / "k8s"
CONTAINERFILE = DEPLOY.parent / "Containerfile"
# Not applied with the rest (it belongs in prometheus-adapter's namespace).
APART = {"prometheus-adapter.yaml"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> dict[str, list[dict[str, Any]]]:
    return {p.name: documents(p) for p in sorted(K8S.glob("*.yaml"))
            if p.name != "kustomization.yaml"}


def one(kind: str) -> dict[str, Any]:
    """The one manifest of this kind that kustomization.yaml applies."""
    found = [d for name, docs in manifests().items() if name not in APART
             for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} manifests"
    return found[0]


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def serve_parser() -> argparse.ArgumentParser:
    """`voxwire serve`'s own flags, as server/cli.py makes them."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_arguments(parser)
    return parser


def config_env() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def containerfile_env() -> dict[str, str]:
    """The Containerfile's ENV pairs (KEY=value, continued lines joined)."""
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            out.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    return out


def containerfile_json(instruction: str) -> list[str]:
    text = re.sub(r"\\\n", " ", CONTAINERFILE.read_text())
    lines = [ln for ln in text.splitlines() if ln.startswith(instruction + " ")]
    assert len(lines) == 1, f"{len(lines)} {instruction} lines"
    value: list[str] = json.loads(lines[0].split(" ", 1)[1].strip())
    return value


SETTINGS_VARIABLES = {f"VOXWIRE_{f.name.upper()}": f.name for f in fields(Settings)}


@pytest.mark.parametrize("name", sorted(manifests()))
def test_every_manifest_is_valid_for_the_named_kubernetes(name: str) -> None:
    for doc in manifests()[name]:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']} is not valid for "
                        f"Kubernetes {K8S_VERSION}: {exc.message} at {list(exc.path)}")


def test_the_kustomization_applies_every_manifest() -> None:
    kustomization = documents(K8S / "kustomization.yaml")[0]
    assert kustomization["kind"] == "Kustomization"
    listed = set(kustomization["resources"])
    assert listed == set(manifests()) - APART
    assert [i["name"] for i in kustomization["images"]] == [container()["image"]]


def test_every_voxwire_variable_is_a_setting_of_voxwire_serve() -> None:
    named = dict.fromkeys(config_env(), "deploy/k8s/configmap.yaml")
    named |= dict.fromkeys((e["name"] for e in container()["env"]), "deploy/k8s/deployment.yaml")
    named |= dict.fromkeys((k for k in containerfile_env() if k.startswith("VOXWIRE_")),
                           "Containerfile")
    unknown = {n: where for n, where in named.items()
               if n.startswith("VOXWIRE_") and n not in SETTINGS_VARIABLES
               and n != "VOXWIRE_CACHE"}  # read by models/registry.py: where models are laid out
    assert not unknown, f"variables voxwire serve does not read: {unknown}"
    # The secrets come from Secrets, the rest from the ConfigMap.
    secret = {e["name"] for e in container()["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert secret == {"VOXWIRE_API_KEYS", "VOXWIRE_STORE", "VOXWIRE_ICE_SERVERS"}
    assert not secret & set(config_env())


def test_the_settings_load_as_the_pod_gets_them() -> None:
    """The ConfigMap and Secrets (with stand-in values) through the server's own loader,
    and the container's arguments through `voxwire serve`'s own parser."""
    env = {**containerfile_env(), **config_env(),
           "VOXWIRE_API_KEYS": "sk-a,sk-b", "VOXWIRE_STORE": "postgresql://u:p@db/voxwire",
           "VOXWIRE_ICE_SERVERS": json.dumps([{"urls": "turn:turn.example.com:3478",
                                               "username": "u", "credential": "c"}])}
    parser = serve_parser()
    for args in (container()["args"], containerfile_json("CMD")):
        settings = config.from_sources(parser.parse_args(args), env=env)
        assert settings.host == "0.0.0.0"
        assert settings.port == 8765
        assert settings.max_sessions == 8
        assert settings.store.startswith("postgresql://")
        assert config.port_range(settings.rtc_ports) is not None
        assert settings.proxy_networks()  # ingress-nginx's pods
        assert not settings.insecure_public  # beyond loopback, keys are required
    assert containerfile_json("ENTRYPOINT") == ["voxwire", "serve"]


def test_ports_probes_and_grace_match_the_server() -> None:
    c = container()
    port = int(config_env()["VOXWIRE_PORT"])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    for probe in ("readinessProbe", "livenessProbe"):
        assert named[c[probe]["httpGet"]["port"]] == port
    service = one("Service")["spec"]["ports"]
    assert [named[p["targetPort"]] for p in service] == [port]
    backend = one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["port"]["name"] in {p["name"] for p in service}
    # SIGTERM comes after preStop; then the server's grace and its closing handshakes.
    spec = one("Deployment")["spec"]["template"]["spec"]
    grace = float(config_env()["VOXWIRE_SHUTDOWN_GRACE_S"])
    pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > pre_stop + grace + 2 * CLOSE_ON_EXIT_S
    assert spec["securityContext"]["runAsNonRoot"] is True
    text = CONTAINERFILE.read_text()
    assert f"EXPOSE {port}/tcp" in text
    assert f"http://127.0.0.1:{port}/readyz" in text
    assert re.search(r"^USER 10001", text, re.M)
    assert spec["securityContext"]["runAsUser"] == 10001


def test_the_autoscaler_reads_a_metric_the_adapter_makes() -> None:
    hpa_metric = one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    adapter = documents(K8S / "prometheus-adapter.yaml")[0]
    rules = yaml.safe_load(adapter["data"]["config.yaml"])
    names = {r["name"]["as"] for r in rules["rules"]}
    assert hpa_metric in names
    assert all(hpa_metric in r["seriesQuery"] for r in rules["rules"])
    target = one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["target"]
    assert float(target["averageValue"]) <= int(config_env()["VOXWIRE_MAX_SESSIONS"])


async def test_the_probes_and_the_autoscaled_metric_answer_on_a_real_server(
        live: Live, engines: Engines) -> None:
    c = container()
    for probe in ("livenessProbe", "readinessProbe"):
        status, body = await get(live.url + c[probe]["httpGet"]["path"])
        assert status == 200, (probe, body)
    hpa_metric = one("HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    status, text = await get(live.url + "/metrics", KEY)
    assert status == 200
    assert hpa_metric in metric_names(text)
    status, _ = await get(live.url + "/metrics")
    assert status == 401  # VOXWIRE_METRICS_PUBLIC is off: Prometheus passes a key


async def test_readiness_fails_at_max_sessions(engines: Engines) -> None:
    """What the readiness probe sees when a replica is full, and while it drains."""
    app = App(TEST_SETTINGS.replace(max_sessions=1), engines=engines)
    path = container()["readinessProbe"]["httpGet"]["path"]
    async with app.start_server() as server:
        host, port = server.sockets[0].getsockname()[:2]
        url = f"http://{host}:{port}"
        assert (await get(url + path))[0] == 200
        async with websockets.connect(f"ws://{host}:{port}/v1/realtime") as ws:
            await asyncio.wait_for(ws.recv(), 10)  # session.created
            status, body = await get(url + path)
            assert status == 503, body
        for _ in range(100):
            if (await get(url + path))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert (await get(url + path))[0] == 200
        app.draining = True
        status, body = await get(url + path)
        assert status == 503, body
        assert (await get(url + container()["livenessProbe"]["httpGet"]["path"]))[0] == 200
