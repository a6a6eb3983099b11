"""deploy/*.yaml: valid against the vendored Kubernetes 1.30 schemas (offline) and consistent
with each other and with the server (labels, probe paths, port, CLI flags, metric name)."""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from cupyserve.runtime.metrics import EngineMetrics
from cupyserve.server.app import create_app
from cupyserve.server.cli import build_parser

from test_server_fake_engine import FakeEngine

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMA_BY_KIND = {
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
}


def load_manifests() -> dict[str, dict]:
    """kind -> the one manifest of that kind in deploy/ (each kind appears once)."""
    by_kind: dict[str, dict] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in by_kind, f"{path.name}: a second {doc['kind']}"
            by_kind[doc["kind"]] = doc
    return by_kind


def validator_for(doc: dict) -> jsonschema.Validator:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in SCHEMA_BY_KIND, f"no vendored schema for {key}"
    schema = orjson.loads((DEPLOY / "schemas" / SCHEMA_BY_KIND[key]).read_bytes())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator_for(doc).iter_errors(doc)]


MANIFESTS = load_manifests()
DEPLOYMENT = MANIFESTS["Deployment"]
POD = DEPLOYMENT["spec"]["template"]["spec"]
SERVER = next(c for c in POD["containers"] if c["name"] == "cupyserve")


def test_every_kind_is_present() -> None:
    assert set(MANIFESTS) == {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap",
                              "PersistentVolumeClaim"}


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_manifest_matches_kubernetes_schema(kind: str) -> None:
    assert schema_errors(MANIFESTS[kind]) == []


@pytest.mark.parametrize("break_it, expected", [
    (lambda d: d["spec"].__setitem__("replicas", "two"), "replicas"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("portz", []), "portz"),
    (lambda d: d["spec"].pop("selector"), "selector"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
     .__setitem__("port", 1.5), "port"),
])
def test_schema_rejects_a_broken_deployment(break_it, expected: str) -> None:
    broken = copy.deepcopy(DEPLOYMENT)
    break_it(broken)
    errors = schema_errors(broken)
    assert errors and any(expected in e for e in errors), errors


def test_service_and_deployment_select_the_pods() -> None:
    pod_labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    selector = DEPLOYMENT["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = MANIFESTS["Service"]["spec"]
    assert service["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in SERVER["ports"]}
    assert all(p["targetPort"] in port_names for p in service["ports"])


def entrypoint() -> list[str]:
    text = (ROOT / "Containerfile").read_text()
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert match, "Containerfile has no exec-form ENTRYPOINT"
    return orjson.loads(match.group(1))


def server_command() -> list[str]:
    """What the pod runs: the image's ENTRYPOINT with the container's args appended."""
    assert "command" not in SERVER, "the server container must keep the image's ENTRYPOINT"
    return entrypoint() + SERVER["args"]


def test_container_args_are_valid_cli_flags_and_port_matches() -> None:
    command = server_command()
    assert command[:2] == ["cupyserve", "serve"], shlex.join(command)
    ns = build_parser().parse_args(command[1:])  # argparse exits (SystemExit) on a bad flag
    assert ns.host == "0.0.0.0"
    assert {p["containerPort"] for p in SERVER["ports"]} == {ns.port}
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ns.port)
    assert ns.no_pull, "the init container pulls; the server must not download on its own"
    # The kubelet's SIGKILL must come after the server's drain: preStop + grace + abort settle.
    pre_stop = int(SERVER["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert POD["terminationGracePeriodSeconds"] > pre_stop + ns.shutdown_grace_seconds + 5


def test_init_container_pulls_the_served_model_into_the_mounted_cache() -> None:
    ns = build_parser().parse_args(server_command()[1:])
    (pull,) = POD["initContainers"]
    pull_ns = build_parser().parse_args(pull["command"][1:])
    assert pull_ns.command == "pull" and pull_ns.name == ns.model
    cache = {e["name"]: e["value"] for e in SERVER["env"] if "value" in e}["CUPYSERVE_CACHE_DIR"]
    for container in (pull, SERVER):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["CUPYSERVE_CACHE_DIR"] == cache
        assert any(m["mountPath"] == cache for m in container["volumeMounts"])
    claim = next(v for v in POD["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"]["claimName"] == MANIFESTS["PersistentVolumeClaim"]["metadata"]["name"]


def test_probe_paths_are_server_routes_open_without_api_key() -> None:
    app = create_app(FakeEngine())
    get_paths = {r.path for r in app.routes if "GET" in (r.methods or ())}
    port_names = {p["name"] for p in SERVER["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = SERVER[probe]["httpGet"]
        assert http["path"] in get_paths, (probe, http["path"])
        assert http["path"] in ("/health", "/metrics"), "only these two skip the API key"
        assert http["port"] in port_names
    assert SERVER["readinessProbe"]["httpGet"]["path"] == "/health"


def test_gpu_is_requested() -> None:
    resources = SERVER["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]


def test_autoscaler_targets_the_deployment_on_the_queue_metric() -> None:
    hpa = MANIFESTS["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == (DEPLOYMENT["apiVersion"], DEPLOYMENT["kind"])
    assert target["name"] == DEPLOYMENT["metadata"]["name"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    adapter_name = metric["pods"]["metric"]["name"]
    # The adapter rule must map the server's real gauge name onto the name the HPA asks for.
    from prometheus_client import CollectorRegistry

    (exposed,) = [m.name for m in EngineMetrics(CollectorRegistry()).num_requests_waiting.describe()]
    rules = yaml.safe_load(MANIFESTS["ConfigMap"]["data"]["config.yaml"])["rules"]
    (rule,) = rules
    assert rule["seriesQuery"].startswith(exposed + "{")
    assert re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), exposed) == adapter_name
