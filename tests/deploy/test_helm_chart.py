"""The Helm chart: lint, render, validate against the Kubernetes OpenAPI schemas, and pin the
properties the design relies on (hardening, probes, flags, secrets, one rule file)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from deploy_support import CHART, CHART_DASHBOARD, RULES_FILE, missing_tool, run

K8S_VERSION = "1.30.0"
CRD_GROUPS = ("monitoring.coreos.com/",)
SCENARIOS = {
    "default": {"values": ("default",), "args": ()},
    "full": {"values": ("full",), "args": ()},
    "standby": {
        "values": ("default",),
        "args": ("--set", "replicas=2", "--set", "strategy.type=RollingUpdate"),
    },
    "ssh": {
        "values": ("full",),
        "args": (
            "--set",
            "gitSync.https.existingSecret=",
            "--set",
            "gitSync.ssh.existingSecret=git-ssh",
            "--set",
            "gitSync.repo=git@github.com:example/ailake-manifests.git",
        ),
    },
}


def _kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in by_kind, f"two {doc['kind']} objects"
        by_kind[doc["kind"]] = doc
    return by_kind


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _kinds(docs)["Deployment"]


def _container(docs: list[dict[str, Any]], name: str = "reconciler") -> dict[str, Any]:
    spec = _deployment(docs)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


# -- lint and render --------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "full"])
def test_helm_lint_strict(helm: str, values: str) -> None:
    proc = run(
        [helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{values}-values.yaml")]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_default_render(render: Any) -> None:
    kinds = set(_kinds(render()))
    assert kinds == {"ServiceAccount", "Role", "RoleBinding", "Service", "Deployment"}


def test_full_render(render: Any) -> None:
    kinds = set(_kinds(render(values=("full",))))
    assert kinds == {
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "ConfigMap",
        "PersistentVolumeClaim",
    }


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_objects_pass_kubernetes_validate(render: Any, scenario: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate (PyPI)")
    s = SCENARIOS[scenario]
    docs = render(*s["args"], values=s["values"])
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # CRDs: no schema in kubernetes-validate; see test_crd_objects_structure
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )
        checked += 1
    assert checked >= 5


def test_crd_objects_structure(render: Any) -> None:
    kinds = _kinds(render(values=("full",)))
    service = kinds["Service"]
    sm = kinds["ServiceMonitor"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"]["matchNames"] == ["ailake"]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in sm["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
    # job label = app.kubernetes.io/name = "ailake-reconciler": matched by AiLakeReconcilerDown
    assert service["metadata"]["labels"][sm["spec"]["jobLabel"]] == "ailake-reconciler"

    pr = kinds["PrometheusRule"]
    assert pr["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(pr["spec"]) == {"groups"}
    for group in pr["spec"]["groups"]:
        assert isinstance(group["name"], str)
        for rule in group["rules"]:
            assert isinstance(rule["expr"], str)
            assert ("alert" in rule) != ("record" in rule)


def test_prometheus_rule_embeds_the_plain_rule_file(render: Any) -> None:
    rule = _kinds(render(values=("full",)))["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]


def test_runbook_base_url(render: Any) -> None:
    base = "https://git.example.com/ailake-reconciler/blob/main/"
    rule = _kinds(render("--set", f"prometheusRule.runbookBaseUrl={base}", values=("full",)))[
        "PrometheusRule"
    ]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["annotations"]["runbook_url"] == (
                f"https://git.example.com/ailake-reconciler/blob/main/docs/alerts.md#{r['alert'].lower()}"
            )


def test_grafana_dashboard_configmap(render: Any) -> None:
    cm = _kinds(render(values=("full",)))["ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "GitOps"
    (content,) = cm["data"].values()
    assert json.loads(content) == json.loads(CHART_DASHBOARD.read_text())


# -- the Deployment ---------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_security_context_hardened(render: Any, scenario: str) -> None:
    s = SCENARIOS[scenario]
    spec = _deployment(render(*s["args"], values=s["values"]))["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    containers = spec["containers"] + spec.get("initContainers", [])
    for c in containers:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert "add" not in sc["capabilities"], c["name"]
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", c["name"]
        assert "resources" in c and c["resources"]["limits"]["memory"], c["name"]
    reconciler = next(c for c in spec["containers"] if c["name"] == "reconciler")
    assert reconciler["securityContext"]["runAsUser"] == 10001


def test_probes_and_port(render: Any) -> None:
    c = _container(render())
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    service = _kinds(render())["Service"]
    assert service["spec"]["ports"][0]["name"] == "http"
    assert service["spec"]["ports"][0]["port"] == 8080


def test_args_carry_the_cli_flags(render: Any) -> None:
    args = _container(render())["args"]
    assert args[0] == "run"
    assert _flag(args, "--manifests") == "/manifests"
    assert _flag(args, "--api-url") == "https://example.cloud.gooddata.com"
    assert _flag(args, "--state") == "/data/reconciler-state.db"
    assert _flag(args, "--listen") == "0.0.0.0:8080"
    assert _flag(args, "--interval") == "60s"
    assert _flag(args, "--token-file") == "/var/run/secrets/ailake/token"
    assert "--webhook-secret-file" not in args

    full = _container(render(values=("full",)))["args"]
    assert _flag(full, "--interval") == "2m"
    assert _flag(full, "--manifests") == "/git/current/manifests/prod"
    assert _flag(full, "--webhook-secret-file") == "/var/run/secrets/ailake-webhook/secret"


def test_token_comes_from_the_secret_never_inlined(render: Any) -> None:
    docs = render(values=("full",))
    assert "Secret" not in _kinds(docs), "the chart must not create or inline secrets"
    deployment = _deployment(docs)
    spec = deployment["spec"]["template"]["spec"]
    c = _container(docs)
    token_path = _flag(c["args"], "--token-file")
    mount = next(m for m in c["volumeMounts"] if token_path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == "ailake-api-token"
    assert volume["secret"]["items"] == [{"key": "token", "path": "token"}]
    for container in spec["containers"] + spec.get("initContainers", []):
        for env in container.get("env", []):
            if any(w in env["name"].upper() for w in ("TOKEN", "SECRET", "PASSWORD")):
                assert "value" not in env, f"{env['name']} inlined as a literal"
    # no literal token-ish flag value either
    assert "--token" not in c["args"]


def test_token_value_cannot_be_set(helm_template: Any) -> None:
    proc = helm_template("--set", "token.value=s3cret")
    assert proc.returncode != 0
    assert "s3cret" not in proc.stdout


def test_volumes_default_and_persistent(render: Any) -> None:
    spec = _deployment(render())["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in vols["data"]
    assert "emptyDir" in vols["tmp"]
    assert vols["manifests"]["configMap"]["name"] == "ailake-manifests"
    mounts = {m["mountPath"]: m for m in _container(render())["volumeMounts"]}
    assert {"/data", "/tmp", "/manifests"} <= set(mounts)
    assert mounts["/manifests"]["readOnly"] is True

    docs = render(values=("full",))
    vols = {v["name"]: v for v in _deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    pvc = _kinds(docs)["PersistentVolumeClaim"]
    assert vols["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"


def test_strategy_and_replicas_defaults(render: Any) -> None:
    spec = _deployment(render())["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}


def test_git_sync(render: Any) -> None:
    spec = _deployment(render(values=("full",)))["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    sidecar = next(c for c in spec["containers"] if c["name"] == "git-sync")
    for c in (init, sidecar):
        assert c["image"].startswith("registry.k8s.io/git-sync/git-sync:v4.")
        assert "--repo=https://github.com/example/ailake-manifests.git" in c["args"]
        assert "--ref=main" in c["args"]
        assert "--period=30s" in c["args"]
        assert "--link=current" in c["args"]
        assert {"name": "git", "mountPath": "/git"} in c["volumeMounts"]
        user = next(e for e in c["env"] if e["name"] == "GITSYNC_USERNAME")
        assert user["valueFrom"]["secretKeyRef"]["name"] == "ailake-git-credentials"
    assert "--one-time" in init["args"]
    assert "--one-time" not in sidecar["args"]
    mount = next(
        m for m in _container(render(values=("full",)))["volumeMounts"] if m["name"] == "git"
    )
    assert mount == {"name": "git", "mountPath": "/git", "readOnly": True}


def test_git_sync_ssh_opens_port_22(render: Any) -> None:
    s = SCENARIOS["ssh"]
    docs = render(*s["args"], values=s["values"])
    sidecar = _container(docs, "git-sync")
    assert "--ssh-key-file=/etc/git-secret/ssh" in sidecar["args"]
    egress_ports = {
        p["port"] for rule in _kinds(docs)["NetworkPolicy"]["spec"]["egress"] for p in rule["ports"]
    }
    assert 22 in egress_ports


def test_leader_election_rbac(render: Any) -> None:
    kinds = _kinds(render())
    role, binding, sa = kinds["Role"], kinds["RoleBinding"], kinds["ServiceAccount"]
    verbs = set()
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"]
        assert rule["resources"] == ["leases"]
        verbs |= set(rule["verbs"])
    assert verbs == {"get", "create", "update"}
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    spec = _deployment(render())["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == sa["metadata"]["name"]
    env = {e["name"]: e for e in _container(render())["env"]}
    lease = next(r for r in role["rules"] if "resourceNames" in r)["resourceNames"]
    assert lease == [env["RECONCILER_LEASE_NAME"]["value"]]


def test_network_policy(render: Any) -> None:
    np = _kinds(render(values=("full",)))["NetworkPolicy"]
    assert set(np["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (ingress,) = np["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert ingress["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    ports = {(p["port"], p["protocol"]) for r in np["spec"]["egress"] for p in r["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")}


def test_extra_args_and_env_passthrough(render: Any) -> None:
    c = _container(
        render(
            "--set",
            "extraArgs[0]=--verbose",
            "--set",
            "extraEnv[0].name=FOO",
            "--set",
            "extraEnv[0].value=bar",
        )
    )
    assert c["args"][-1] == "--verbose"
    assert {"name": "FOO", "value": "bar"} in c["env"]


# -- values validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "replicas=abc"), "replicas"),
        (("--set", "apiUrl=null"), "apiUrl"),
        (("--set", "apiUrl="), "apiUrl"),
        (("--set", "apiUrl=ftp://example.com"), "apiUrl"),
        (("--set", "interval=soon"), "interval"),
        (("--set", "strategy.type=BlueGreen"), "strategy.type"),
        (("--set", "image.pullPolicy=Sometimes"), "pullPolicy"),
        (("--set", "service.port=70000"), "service.port"),
        (("--set", "replicaCount=2"), "replicaCount"),
    ],
)
def test_schema_rejects_bad_values(helm_template: Any, args: tuple[str, ...], message: str) -> None:
    proc = helm_template(*args)
    assert proc.returncode != 0, f"{args} was accepted"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--set", "manifests.configMap="), "no manifests source"),
        (("--set", "gitSync.enabled=true", "--set", "gitSync.repo=https://x/y.git"), "not both"),
        (("--set", "manifests.configMap=", "--set", "gitSync.enabled=true"), "gitSync.repo"),
        (("--set", "persistence.enabled=true", "--set", "replicas=2"), "replicas: 1 only"),
        (("--set", "persistence.enabled=true", "--set", "strategy.type=RollingUpdate"), "Recreate"),
    ],
)
def test_template_rejects_inconsistent_values(
    helm_template: Any, args: tuple[str, ...], message: str
) -> None:
    proc = helm_template(*args)
    assert proc.returncode != 0, f"{args} was accepted"
    assert message in proc.stderr, proc.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert "apiUrl" in schema["required"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicas"] == 1
    assert values["strategy"]["type"] == "Recreate"
