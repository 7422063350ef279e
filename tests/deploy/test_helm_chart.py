"""The Helm chart: lint, render, validate against the Kubernetes OpenAPI schemas, and pin the
properties the design relies on (hardening, probes, flags, secrets, one rule file)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, CHART_DASHBOARD, RULES_FILE, missing_tool, run
from deploy_support import container as _container
from deploy_support import kinds as _kinds

K8S_VERSION = "1.30.0"
CRD_GROUPS = ("monitoring.coreos.com/",)
SCENARIOS = {
    "default": {"values": ("default",), "args": ()},
    "full": {"values": ("full",), "args": ()},
    "ha": {"values": ("ha",), "args": ()},
    "ha-configmap": {
        "values": ("default",),
        "args": ("--set", "state.postgres.existingSecret=ailake-state-db", "--set",
                 "networkPolicy.enabled=true"),
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
    "git": {
        "values": ("full",),
        "args": (
            "--set",
            "gitSync.enabled=false",
            "--set",
            "git.enabled=true",
            "--set",
            "git.url=https://github.com/example/ailake-manifests.git",
            "--set",
            "git.path=manifests/prod",
            "--set",
            "git.token.existingSecret=ailake-git-token",
        ),
    },
    "git-values": {"values": ("git",), "args": ()},
    "git-ssh": {
        "values": ("full",),
        "args": (
            "--set",
            "gitSync.enabled=false",
            "--set",
            "git.enabled=true",
            "--set",
            "git.url=git@github.com:example/ailake-manifests.git",
            "--set",
            "git.ssh.existingSecret=ailake-git-ssh",
            "--set",
            "git.interval=5m",
        ),
    },
}


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _kinds(docs)["Deployment"]


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


# -- lint and render --------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "full", "git", "ha"])
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
                if env["name"].endswith("_FILE"):  # the path of a mounted Secret, no more
                    assert env["value"].startswith("/var/run/secrets/"), env
                    continue
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


def test_builtin_git_follower_with_a_token(render: Any) -> None:
    s = SCENARIOS["git"]
    docs = render(*s["args"], values=s["values"])
    spec = _deployment(docs)["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["reconciler"]  # no sidecar
    assert "initContainers" not in spec
    args = _container(docs)["args"]
    assert "--manifests" not in args
    assert _flag(args, "--git-url") == "https://github.com/example/ailake-manifests.git"
    assert _flag(args, "--git-ref") == "main"
    assert _flag(args, "--git-path") == "manifests/prod"
    assert _flag(args, "--git-interval") == "60s"
    assert _flag(args, "--git-timeout") == "120s"
    assert _flag(args, "--git-token-user") == "x-access-token"
    token = _flag(args, "--git-token-file")
    assert "--git-ssh-key-file" not in args
    assert _flag(args, "--state") == "/data/reconciler-state.db"  # the cache: /data too
    mounts = {m["name"]: m for m in _container(docs)["volumeMounts"]}
    mount = mounts["git-credentials"]
    assert token.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True
    assert {"data", "tmp"} <= set(mounts) and "manifests" not in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["git-credentials"]["secret"] == {
        "secretName": "ailake-git-token", "defaultMode": 0o440,
        "items": [{"key": "token", "path": "token"}]}
    assert "manifests" not in volumes and "git" not in volumes
    egress = {p["port"] for r in _kinds(docs)["NetworkPolicy"]["spec"]["egress"]
              for p in r["ports"]}
    assert 443 in egress and 22 not in egress


def test_builtin_git_follower_with_an_ssh_key(render: Any) -> None:
    s = SCENARIOS["git-ssh"]
    docs = render(*s["args"], values=s["values"])
    args = _container(docs)["args"]
    assert _flag(args, "--git-url") == "git@github.com:example/ailake-manifests.git"
    assert _flag(args, "--git-interval") == "5m"
    assert "--git-path" not in args and "--git-token-file" not in args
    key, known = _flag(args, "--git-ssh-key-file"), _flag(args, "--git-known-hosts-file")
    volume = next(v for v in _deployment(docs)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "git-credentials")
    assert volume["secret"]["secretName"] == "ailake-git-ssh"
    paths = {i["path"] for i in volume["secret"]["items"]}
    assert {key.rsplit("/", 1)[1], known.rsplit("/", 1)[1]} == paths
    egress = {p["port"] for r in _kinds(docs)["NetworkPolicy"]["spec"]["egress"]
              for p in r["ports"]}
    assert 22 in egress


def test_the_chart_flags_are_the_cli_flags(render: Any) -> None:
    """Every flag the chart passes to `reconciler run` exists (in every scenario)."""
    import argparse

    from reconciler.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = {f for a in sub.choices["run"]._actions for f in a.option_strings}
    for name, scenario in SCENARIOS.items():
        args = _container(render(*scenario["args"], values=scenario["values"]))["args"]
        flags = {a for a in args if a.startswith("--")}
        assert flags <= known, (name, sorted(flags - known))


# -- the ConfigMap recipe for nested folders --------------------------------------------------


def _kubelet_mount(mount: Path, data: dict[str, str], stamp: str) -> None:
    """Lay ``data`` (a ConfigMap's keys) out as the kubelet mounts a ConfigMap volume: the
    files in a timestamped folder, ``..data`` pointing at it, one symlink per key; an update
    swaps ``..data`` atomically."""
    mount.mkdir(parents=True, exist_ok=True)
    folder = mount / f"..{stamp}"
    folder.mkdir()
    for key, text in data.items():
        (folder / key).write_text(text)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(folder.name)
    tmp.replace(mount / "..data")
    for key in data:
        link = mount / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")


def _recipe_configmap(tmp_path: Path, folder: str) -> dict[str, Any]:
    """The docs' recipe: ``python -m reconciler.source.configmap DIR`` gives the
    ``--from-file=KEY=PATH`` arguments of ``kubectl create configmap`` (run for real when
    kubectl is on PATH, client side only: --dry-run=client -o yaml)."""
    import shutil
    import subprocess
    import sys

    listed = subprocess.run([sys.executable, "-m", "reconciler.source.configmap", folder],
                            cwd=tmp_path, capture_output=True, text=True, check=False,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    from_files = listed.stdout.split()  # as $(...) splits it
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        made = subprocess.run([kubectl, "create", "configmap", "ailake-manifests",
                               "--dry-run=client", "-o", "yaml", *from_files],
                              cwd=tmp_path, capture_output=True, text=True, check=False,
                              timeout=60)
        assert made.returncode == 0, made.stderr
        configmap: dict[str, Any] = yaml.safe_load(made.stdout)
        return configmap
    data = {}
    for arg in from_files:
        key, _, path = arg.removeprefix("--from-file=").partition("=")
        data[key] = (tmp_path / path).read_text()
    return {"kind": "ConfigMap", "metadata": {"name": "ailake-manifests"}, "data": data}


def test_the_configmap_recipe_works_for_nested_folders_in_the_rendered_volume(
    render: Any, tmp_path: Path
) -> None:
    from reconciler.source.kinds import open_source  # what the daemon reads its source with

    files = {
        "team-a/jobs/x.yaml": "x",
        "team-a/reindex.yaml": "reindex",
        "team-b/nightly/deep/y.yml": "y",
        "top.yaml": "top",
    }
    for rel, name in files.items():
        path = tmp_path / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\nspec:\n  service: svc\n  command: reindex\n"
        )
    (tmp_path / "manifests" / "team-a" / "jobs" / "README.md").write_text("not a manifest\n")
    configmap = _recipe_configmap(tmp_path, "manifests/")
    assert set(configmap["data"]) == {
        "team-a__jobs__x.yaml", "team-a__reindex.yaml", "team-b__nightly__deep__y.yml",
        "top.yaml"}

    # the chart's rendered volume: that ConfigMap, mounted where --manifests points
    docs = render()
    spec = _deployment(docs)["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "manifests")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    assert "items" not in volume["configMap"]  # every key is mounted
    container = _container(docs)
    mount = next(m for m in container["volumeMounts"] if m["name"] == "manifests")
    assert _flag(container["args"], "--manifests") == mount["mountPath"]
    root = tmp_path / "pod" / mount["mountPath"].lstrip("/")
    _kubelet_mount(root, configmap["data"], "2026_01_01_00_00_00.000000001")

    source = open_source(root)
    load = source.load()
    assert load.problems == ()
    shown = {c.name: os.path.relpath(c.file, root) for c in load.commands}
    assert shown == {name: rel for rel, name in files.items()}

    # an update, as the kubelet makes it: a new folder, ..data swapped; a broken manifest
    # shows FILE:LINE under its own path
    updated = dict(configmap["data"])
    updated["team-a__jobs__x.yaml"] = updated["team-a__jobs__x.yaml"].replace(
        "command: reindex", "command: 7")
    _kubelet_mount(root, updated, "2026_01_01_00_05_00.000000002")
    assert source.changed()
    load = source.load()
    (problem,) = load.problems
    assert os.path.relpath(problem.file, root) == "team-a/jobs/x.yaml"
    assert problem.line == 7 and problem.name == "x"
    validated = run([sys.executable, "-m", "reconciler", "validate", str(root)])
    assert validated.returncode == 1
    assert f"{root}/team-a/jobs/x.yaml:7: x: " in validated.stdout


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
        (("--set", "replicaCount=-1"), "replicaCount"),
        (("--set", "replicaCount=two"), "replicaCount"),
        (("--set", "state.postgres.url=postgresql://u:pw@db/x"), "state.postgres"),
        (("--set", "state.postgres.existingSecret=Not_A_Name"), "existingSecret"),
        (("--set", "networkPolicy.database.port=0"), "networkPolicy.database.port"),
        (("--set", "podDisruptionBudget.maxUnavailable=1"), "podDisruptionBudget"),
        (("--set", "git.interval=often"), "git.interval"),
        (("--set", "git.url=ext::sh -c id"), "git.url"),
        (("--set", "git.token.user=a:b"), "git.token.user"),
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
        (("--set", "git.enabled=true", "--set", "git.url=https://x/y.git"),
         "either git.enabled or manifests.configMap, not both"),
        (("--set", "manifests.configMap=", "--set", "git.enabled=true", "--set",
          "git.url=https://x/y.git", "--set", "gitSync.enabled=true", "--set",
          "gitSync.repo=https://x/y.git"), "git.enabled (the built-in git follower) or "
         "gitSync.enabled (the git-sync sidecar), not both"),
        (("--set", "manifests.configMap=", "--set", "git.enabled=true"), "git.url"),
        (("--set", "manifests.configMap=", "--set", "git.enabled=true", "--set",
          "git.url=https://user:pw@x/y.git"), "holds a password"),
        (("--set", "manifests.configMap=", "--set", "git.enabled=true", "--set",
          "git.url=https://x/y.git", "--set", "git.token.existingSecret=a", "--set",
          "git.ssh.existingSecret=b"), "not both"),
        (("--set", "manifests.configMap=", "--set", "git.enabled=true", "--set",
          "git.url=git@x:y.git", "--set", "git.token.existingSecret=a"), "https://"),
        (("--set", "manifests.configMap=", "--set", "git.enabled=true", "--set",
          "git.url=https://x/y.git", "--set", "git.ssh.existingSecret=b"), "ssh://"),
        (("--set", "manifests.configMap=", "--set", "gitSync.enabled=true"), "gitSync.repo"),
        (("--set", "persistence.enabled=true", "--set", "replicaCount=2"),
         "replicaCount: 2 needs the PostgreSQL store (state.postgres.existingSecret)"),
        (("--set", "persistence.enabled=true", "--set", "strategy.type=RollingUpdate"), "Recreate"),
    ],
)
def test_template_rejects_inconsistent_values(
    helm_template: Any, args: tuple[str, ...], message: str
) -> None:
    proc = helm_template(*args)
    assert proc.returncode != 0, f"{args} was accepted"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("scenario", ["default", "full", "git", "git-ssh", "ha"])
def test_the_pods_variables_say_what_its_args_say_so_check_runs_in_the_pod(
        render: Any, scenario: str) -> None:
    """``kubectl exec ... -- reconciler check`` (and ``plan``, ``status``) take their
    settings from ``RECONCILER_*`` variables; the chart sets each to its arg's value."""
    docs = render(*SCENARIOS[scenario]["args"], values=SCENARIOS[scenario]["values"])
    c = _container(docs)
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    args = c["args"]
    for flag in ("--manifests", "--git-url", "--git-ref", "--git-path", "--git-token-file",
                 "--git-token-user", "--git-ssh-key-file", "--git-known-hosts-file",
                 "--api-url", "--state", "--listen", "--token-file"):
        variable = "RECONCILER_" + flag[2:].upper().replace("-", "_")
        if flag in args:
            assert env.get(variable) == _flag(args, flag), (scenario, flag)
        else:
            assert variable not in env, (scenario, variable)


def _install_without(helm: str, *values: str) -> subprocess.CompletedProcess[str]:
    """``helm template`` (what ``helm install`` renders) with only ``values`` set."""
    return run([helm, "template", "rel", str(CHART), "--namespace", "ailake",
                "--set", "manifests.configMap=ailake-manifests", *values])


def test_install_without_a_token_secret_says_it_is_required(helm: str) -> None:
    proc = _install_without(helm, "--set", "apiUrl=https://example.cloud.gooddata.com")
    assert proc.returncode != 0
    assert "a token secret is required" in proc.stderr
    assert "token.existingSecret" in proc.stderr and "kubectl create secret" in proc.stderr


def test_an_api_url_ending_in_api_v1_is_refused_with_the_reason(helm: str) -> None:
    proc = _install_without(helm, "--set", "apiUrl=https://example.cloud.gooddata.com/api/v1",
                            "--set", "token.existingSecret=t")
    assert proc.returncode != 0
    assert "apiUrl must be the organisation's root URL, without /api/v1" in proc.stderr
    assert _install_without(helm, "--set", "apiUrl=https://example.cloud.gooddata.com",
                            "--set", "token.existingSecret=t").returncode == 0


def test_the_api_url_is_required_in_words_by_the_templates(helm: str, tmp_path: Path) -> None:
    """The templates' own message, on a copy of the chart whose schema lets an empty
    apiUrl through to them (the real schema's pattern refuses it first: see the next
    test)."""
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    schema = json.loads((chart / "values.schema.json").read_text())
    schema["properties"]["apiUrl"]["pattern"] = "^$|" + schema["properties"]["apiUrl"]["pattern"]
    (chart / "values.schema.json").write_text(json.dumps(schema))
    proc = run([helm, "template", "rel", str(chart), "--set",
                "manifests.configMap=ailake-manifests", "--set", "token.existingSecret=t"])
    assert proc.returncode != 0
    assert "apiUrl is required" in proc.stderr and "Does not match pattern" not in proc.stderr


def test_install_without_an_api_url_says_it_is_required(helm: str) -> None:
    proc = _install_without(helm, "--set", "token.existingSecret=t")
    assert proc.returncode != 0
    assert "apiUrl is required" in proc.stderr
    assert "Does not match pattern" not in proc.stderr


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert "apiUrl" in schema["required"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["replicaCount"] is None  # 1 with SQLite, 2 with PostgreSQL
    assert "replicas" not in values
    assert values["strategy"] == {}  # Recreate with SQLite, RollingUpdate with PostgreSQL
    assert values["state"]["postgres"] == {"existingSecret": "", "key": "url"}


def test_the_web_view_is_on_by_default_and_ui_enabled_false_turns_it_off(render: Any) -> None:
    assert "--no-ui" not in _container(render())["args"]
    off = _container(render("--set", "ui.enabled=false"))["args"]
    assert "--no-ui" in off


def test_the_chart_s_no_ui_arg_is_one_the_cli_parses(render: Any) -> None:
    from reconciler.cli.main import build_parser

    args = _container(render("--set", "ui.enabled=false"))["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.ui is False
