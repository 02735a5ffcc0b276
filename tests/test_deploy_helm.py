"""helm/llm-proxy: rendered by Helm's own engine (helm-python-sdk), every manifest validated
against the Kubernetes JSON schemas (kubernetes-validate, offline), and the wiring checked."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from shared.config import parse_duration
from tests.deploy_wiring import (
    CHART_DIR,
    app_paths,
    known_settings,
    management_prefixes,
    served_prefixes,
    unknown_variables,
)

SECRETS = {
    "secret": {
        "values": {
            "DATABASE_URL": "postgres://llmproxy:pw@db.example:5432/llmproxy",
            "ENCRYPTION_KEY": "q2Vx2S0Yf3Qm6l0q6J3g1m8m0E4a4Y2c8cQpVh2bX5Q=",
            "MANAGEMENT_TOKEN": "mgmt-token",
        }
    }
}

# Non-default values exercising every optional part of the chart.
EVERYTHING = {
    "secret": {"existingSecret": "llm-proxy-secrets"},
    "image": {"repository": "registry.example/llm-proxy", "tag": "1.2.3"},
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccount": {"create": False, "name": "llm-proxy-sa"},
    "config": {"LOG_LEVEL": "debug", "REDIS_ADDR": "redis.data:6379", "POOL_WARM": True},
    "proxy": {
        "port": 9000,
        "managementPort": 9001,
        "workers": 4,
        "maxRequestBodyBytes": 10485760,
        "upstreamReadTimeoutSeconds": 120,
        "upstreamTimeoutSeconds": 900,
        "shutdownGracePeriodSeconds": 900,
        "preStopSleepSeconds": 15,
        "terminationGracePeriodSeconds": 960,
        "autoscaling": {"enabled": False},
        "replicaCount": 5,
        "env": {"APIKEY_CACHE_SIZE": "5000", "UPSTREAM_CA_FILE": "/etc/llm-proxy/ca/ca.pem"},
        "extraVolumes": [{"name": "ca", "configMap": {"name": "internal-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/llm-proxy/ca", "readOnly": True}],
        "nodeSelector": {"pool": "proxies"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "proxy"}},
            }
        ],
    },
    "service": {"port": 8443, "type": "LoadBalancer"},
    "managementService": {"port": 9443, "annotations": {"team": "platform"}},
    "ingress": {
        "enabled": True,
        "timeoutSeconds": 900,
        "hosts": [{"host": "llm.example.com"}],
        "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"},
    },
    "dispatcher": {"replicaCount": 3, "batchSize": 500, "buffer": 5000, "metricsPort": 9200},
    "worker": {"replicaCount": 2, "extraArgs": ["--threads=4"]},
    "metrics": {"path": "/prom", "serviceMonitor": {"enabled": True, "labels": {"release": "kp"}}},
    "networkPolicy": {
        "proxyFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
        ],
        "metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
}

MINIMAL = {**SECRETS, "dispatcher": {"enabled": False}, "worker": {"enabled": False},
           "migrations": {"enabled": False}, "networkPolicy": {"enabled": False},
           "proxy": {"podDisruptionBudget": {"enabled": False}},
           "managementService": {"enabled": False}}  # fmt: skip

SCENARIOS = {"defaults": SECRETS, "everything": EVERYTHING, "minimal": MINIMAL}
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.utils.latest_version())
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def render(values: dict[str, Any], *, upgrade: bool = False) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART_DIR) as chart:
        manifests = chart.render(
            values,
            name="prod",
            namespace="llm",
            is_install=not upgrade,
            is_upgrade=upgrade,
        )
    docs = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    values = SCENARIOS[request.param]
    return values, render(values)


def find(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, (
        f"expected one {kind} *{suffix}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def workloads(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(manifest, pod spec) of every Deployment and Job."""
    for doc in docs:
        if doc["kind"] in ("Deployment", "Job"):
            yield doc, doc["spec"]["template"]["spec"]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def merged_values(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.merge_values(values)


# --- rendering and schemas ---


def test_the_chart_refuses_to_render_without_its_required_secrets() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"secret\.values\.DATABASE_URL is required"):
        render({})
    with pytest.raises(helm.HelmRenderError, match="ENCRYPTION_KEY is required"):
        render({"secret": {"values": {"DATABASE_URL": "postgres://u@h/db"}}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"proxy": {"port": "8080"}}, "got string, want integer"),
        ({"proxy": {"replicas": 3}}, "additional properties 'replicas' not allowed"),
        ({"config": {"log_level": "info"}}, "does not match pattern"),
        ({"dispatcher": {"batchSize": 0}}, "minimum"),
    ],
)
def test_values_are_checked_against_the_schema(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        render({**SECRETS, **values})


def test_every_manifest_is_valid_for_kubernetes(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = scenario
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue  # no schema offline: see test_service_monitors_select_the_metrics_ports
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(
                    f"{doc['kind']}/{doc['metadata']['name']} on {version}: {where}: {exc.message}"
                )


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The schema check above can fail: a misspelled probe field is caught."""
    deployment = copy.deepcopy(find(render(SECRETS), "Deployment", "-proxy"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenessProbes"] = container.pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_helm_lint_finds_nothing(name: str) -> None:
    report = helm.lint(str(CHART_DIR), SCENARIOS[name], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == []


# --- wiring ---


def test_every_variable_is_a_setting_of_llm_proxy(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = scenario
    names: set[str] = set()
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            names |= set(doc.get("data") or {})
        if doc["kind"] == "Secret":
            names |= set(doc.get("stringData") or {})
    for _, pod in workloads(docs):
        for container in pod["containers"]:
            names |= set(container_env(container))
    assert names
    assert unknown_variables(names) == []


def test_every_container_reads_the_configuration(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, docs = scenario
    existing = values.get("secret", {}).get("existingSecret")
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc, pod in workloads(docs):
        for container in pod["containers"]:
            refs = container["envFrom"]
            config = [r["configMapRef"]["name"] for r in refs if "configMapRef" in r]
            secret = [r["secretRef"]["name"] for r in refs if "secretRef" in r]
            assert len(config) == 1 and ("ConfigMap", config[0]) in rendered
            assert len(secret) == 1
            if existing:
                assert secret == [existing], "the operator's Secret, not a rendered one"
            else:
                assert ("Secret", secret[0]) in rendered, doc["metadata"]["name"]
    if existing:
        assert not [d for d in docs if d["kind"] == "Secret"]


def test_probe_paths_exist_in_the_app(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _values, docs = scenario
    deployment = find(docs, "Deployment", "-proxy")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = container_env(container)
    paths = app_paths(metrics_path=env["METRICS_PATH"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/live"
    assert {"/live", "/ready", env["METRICS_PATH"]} <= paths
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[kind]["httpGet"]["port"] == "http"


def test_ports_agree_from_container_to_service_to_ingress(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _values, docs = scenario
    deployment = find(docs, "Deployment", "-proxy")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(container_env(container)["PORT"]) == ports["http"]
    service = find(docs, "Service", "prod-llm-proxy")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                assert backend["name"] == service["metadata"]["name"]
                assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    for policy in (d for d in docs if d["kind"] == "NetworkPolicy"):
        selected = [
            pod
            for doc, pod in workloads(docs)
            if policy["spec"]["podSelector"]["matchLabels"].items()
            <= doc["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert selected, f"{policy['metadata']['name']} selects no pod"
        open_ports = {
            p["port"] for rule in policy["spec"].get("ingress", []) for p in rule["ports"]
        }
        named = {
            p["name"] for pod in selected for c in pod["containers"] for p in c.get("ports", [])
        }
        assert open_ports <= named, policy["metadata"]["name"]


def public_settings(env: dict[str, str]) -> dict[str, str]:
    """The proxy container's listener settings, as the app reads them."""
    return known_settings({k: env[k] for k in ("PORT", "MANAGEMENT_LISTEN", "METRICS_PATH")})


def test_the_management_api_listens_on_an_internal_port_of_its_own(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, docs = scenario
    container = find(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = public_settings(container_env(container))
    assert env["MANAGEMENT_LISTEN"] == f"0.0.0.0:{ports['manage']}"
    assert ports["manage"] != ports["http"]
    # the app's two listeners, as the real app assembles them from this environment
    assert served_prefixes(env) == {"/v1/"}
    assert management_prefixes(env) == {"/manage/"}
    # the public Service and the Ingress reach only `http`; `manage` only a ClusterIP Service
    public = find(docs, "Service", "prod-llm-proxy")
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]
    managed = [
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-manage")
    ]
    if merged_values(values)["managementService"]["enabled"]:
        (service,) = managed
        assert service["spec"]["type"] == "ClusterIP"
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["manage"]
        labels = find(docs, "Deployment", "-proxy")["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
    else:
        assert not managed
    for ingress in (d for d in docs if d["kind"] == "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                assert path["backend"]["service"]["name"] == public["metadata"]["name"]
    policies = [
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-proxy")
    ]
    for policy in policies:
        (rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "manage"]
        assert rule["from"] == merged_values(values)["networkPolicy"]["managementFrom"]
        assert rule["from"], "the default admits the release's namespace only"


def test_the_removed_ingress_route_to_the_management_api_is_refused() -> None:
    with pytest.raises(helm.HelmRenderError, match="exposeManagementApi was removed"):
        render({**SECRETS, "ingress": {"enabled": True, "exposeManagementApi": True}})
    with pytest.raises(helm.HelmRenderError, match=r"must differ from proxy\.port"):
        render({**SECRETS, "proxy": {"port": 8081, "managementPort": 8081}})


def test_the_dispatcher_gets_its_batch_settings_and_metrics_port() -> None:
    docs = render(EVERYTHING)
    deployment = find(docs, "Deployment", "-dispatcher")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["dispatcher", "--batch-size=500", "--buffer=5000"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    addr = container_env(container)["DISPATCHER_HTTP_ADDR"]
    assert ports["metrics"] == int(addr.rsplit(":", 1)[1]) == 9200
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert deployment["spec"]["replicas"] == 3
    worker = find(docs, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker", "--threads=4"]


def test_service_monitors_select_the_metrics_ports() -> None:
    docs = render(EVERYTHING)
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    services = [d for d in docs if d["kind"] == "Service"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kp"
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
        assert len(matched) == 1, monitor["metadata"]["name"]
        endpoint = monitor["spec"]["endpoints"][0]
        assert endpoint["port"] in {p["name"] for p in matched[0]["spec"]["ports"]}
        parse_duration(endpoint["interval"])
    proxy_monitor = find(docs, "ServiceMonitor", "-proxy")
    assert proxy_monitor["spec"]["endpoints"][0]["path"] == "/prom"
    assert not [d for d in render(SECRETS) if d["kind"] == "ServiceMonitor"]


def test_the_migration_job_runs_llm_proxy_migrate_before_install_and_upgrade(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    values, docs = scenario
    if not merged_values(values)["migrations"]["enabled"]:
        assert not [d for d in docs if d["kind"] == "Job"]
        return
    job = find(docs, "Job", "-migrate")
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert set(hooks) == {"pre-install", "pre-upgrade"}
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # The image's ENTRYPOINT is llm-proxy (see test_deploy_docker): `llm-proxy migrate`.
    assert "command" not in container and container["args"] == ["migrate"]
    assert pod["restartPolicy"] == "Never"
    # What it reads exists when a pre-install hook runs: hooks of a lower weight, or the
    # operator's own Secret.
    weight = int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    hook_docs = {
        (d["kind"], d["metadata"]["name"]): int(d["metadata"]["annotations"]["helm.sh/hook-weight"])
        for d in docs
        if "helm.sh/hook" in d["metadata"].get("annotations", {}) and d is not job
    }
    for ref in container["envFrom"]:
        kind, name = ("ConfigMap", ref["configMapRef"]["name"]) if "configMapRef" in ref else (
            "Secret", ref["secretRef"]["name"])  # fmt: skip
        if kind == "Secret" and name == values.get("secret", {}).get("existingSecret"):
            continue
        assert hook_docs.get((kind, name), weight) < weight, f"{kind} {name} is not a prior hook"
    if "serviceAccountName" in pod:
        assert not merged_values(values)["serviceAccount"]["create"], "not created yet at install"


def test_the_migration_job_reads_the_same_configuration_as_the_pods() -> None:
    docs = render(SECRETS)
    data = {d["metadata"]["name"]: d.get("data") or d.get("stringData") for d in docs
            if d["kind"] in ("ConfigMap", "Secret")}  # fmt: skip
    assert data["prod-llm-proxy-migrate"] is not None
    configs = [d for d in docs if d["kind"] == "ConfigMap"]
    secrets = [d for d in docs if d["kind"] == "Secret"]
    assert configs[0]["data"] == configs[1]["data"]
    assert secrets[0]["stringData"] == secrets[1]["stringData"]


def test_a_draining_pod_is_never_killed_mid_stream(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = scenario
    pod = find(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_env(container)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    longest = parse_duration(env["UPSTREAM_TIMEOUT"])
    grace = parse_duration(env["SHUTDOWN_GRACE_PERIOD"])
    assert 0 < longest <= grace
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace


@pytest.mark.parametrize(
    ("proxy", "message"),
    [
        ({"terminationGracePeriodSeconds": 300}, "must exceed"),
        ({"shutdownGracePeriodSeconds": 120}, "must be at least proxy.upstreamTimeoutSeconds"),
    ],
)
def test_grace_periods_that_would_cut_streams_are_refused(
    proxy: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render({**SECRETS, "proxy": proxy})


def test_the_ingress_streams(scenario: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    values, docs = scenario
    ingresses = [d for d in docs if d["kind"] == "Ingress"]
    if not merged_values(values)["ingress"]["enabled"]:
        assert not ingresses
        return
    (ingress,) = ingresses
    notes = ingress["metadata"]["annotations"]
    env = container_env(
        find(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]["containers"][0]
    )
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == env["MAX_REQUEST_BODY_BYTES"]
    read_timeout = parse_duration(env["UPSTREAM_READ_TIMEOUT"])
    for key in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{key}"]) >= read_timeout
    assert notes["cert-manager.io/cluster-issuer"] == "letsencrypt"
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/v1/"}
    assert paths <= served_prefixes(public_settings(env))
    with pytest.raises(helm.HelmRenderError, match=r"ingress\.timeoutSeconds"):
        render({**SECRETS, "ingress": {"enabled": True, "timeoutSeconds": 60}})


def test_pods_run_unprivileged_on_a_read_only_root(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = scenario
    for doc, pod in workloads(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            # what the pod can write is scratch space, never a shared or persistent volume
            mounts = {
                m["mountPath"]: m["name"]
                for m in container["volumeMounts"]
                if not m.get("readOnly")
            }
            assert all("emptyDir" in volumes[name] for name in mounts.values())
            env = container_env(container)
            writable = ["/tmp"] + [
                env[k] for k in ("PROMETHEUS_MULTIPROC_DIR", "EVENT_SPOOL_DIR") if k in env
            ]
            for path in writable:
                assert any(path == m or path.startswith(m + "/") for m in mounts), (
                    doc["metadata"]["name"], path)  # fmt: skip


def test_the_spool_volume_holds_every_workers_spool(
    scenario: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, docs = scenario
    pod = find(docs, "Deployment", "-proxy")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_env(container)
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == env["EVENT_SPOOL_DIR"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    size = int(volume["emptyDir"]["sizeLimit"])
    # past sizeLimit the kubelet evicts the pod: the spool caps must give out first
    assert size > int(env["WORKERS"]) * int(env["EVENT_SPOOL_MAX_BYTES"])


def test_autoscaling_owns_the_replica_count() -> None:
    docs = render(SECRETS)
    deployment = find(docs, "Deployment", "-proxy")
    hpa = find(docs, "HorizontalPodAutoscaler", "-proxy")
    assert "replicas" not in deployment["spec"], "the HPA, not each upgrade, sets replicas"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    pdb = find(docs, "PodDisruptionBudget", "-proxy")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    fixed = find(render(EVERYTHING), "Deployment", "-proxy")
    assert fixed["spec"]["replicas"] == 5
    assert not [d for d in render(EVERYTHING) if d["kind"] == "HorizontalPodAutoscaler"]


def test_configuration_changes_roll_the_pods() -> None:
    before = find(render(SECRETS), "Deployment", "-proxy")
    after = find(render({**SECRETS, "config": {"LOG_LEVEL": "debug"}}), "Deployment", "-proxy")
    key = "checksum/config"
    assert before["spec"]["template"]["metadata"]["annotations"][key] != (
        after["spec"]["template"]["metadata"]["annotations"][key])  # fmt: skip


def test_an_upgrade_renders_the_same_resources_as_an_install() -> None:
    install = {(d["kind"], d["metadata"]["name"]) for d in render(SECRETS)}
    upgrade = {(d["kind"], d["metadata"]["name"]) for d in render(SECRETS, upgrade=True)}
    assert install == upgrade
