"""docs/deployment.md's recipes, executed as written where the tools exist here.

Every fenced block of the page is run or checked, none is skipped silently:

- ``kubectl ... create ...`` runs client side (``--dry-run=client -o yaml`` added): the
  Secrets, the namespace and the ConfigMap recipe (``$(python -m reconciler.source.configmap
  manifests/)``; its ``| kubectl apply -f -`` needs a cluster, so its input is parsed instead);
- ``helm upgrade --install`` runs as ``helm template`` with the same arguments and values
  files (the YAML blocks named ``# NAME.yaml``), and every Secret the rendered Deployment
  mounts or reads must have the keys the page's own ``kubectl create secret`` made;
- unnamed YAML blocks are values fragments, rendered on top of the CI defaults;
  ``# prometheus.yml`` is checked with ``promtool check config``;
- what needs a cluster or a Docker daemon (``kubectl rollout/exec/logs``, ``docker``) or is
  this test suite itself (``.ci/tools.sh``, ``pytest``) is listed, and the test fails on any
  command it does not know how to treat.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import CHART, REPO, RULES_FILE, find_tool

DOC = REPO / "docs" / "deployment.md"
DB_PASSWORD = "db-password-for-the-doc-test"  # the doc test's own
#: commands that need a cluster, a Docker daemon, or are this suite itself
NOT_HERE = (
    re.compile(r"^docker "),
    re.compile(r"^kubectl( -n \S+)? (rollout|exec|logs|port-forward) "),
    re.compile(r"^sudo bash \.ci/tools\.sh"),
    re.compile(r"^CI=1 pytest "),
)


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in page order (indented ones included)."""
    found = re.findall(r"^( *)```(\w+)\n(.*?)^\1```", DOC.read_text(), re.M | re.S)
    out = []
    for indent, lang, body in found:
        lines = [line[len(indent):] for line in body.splitlines()]
        out.append((lang, "\n".join(lines) + "\n"))
    return out


def commands(text: str) -> list[str]:
    """The shell commands of a block: continuations joined, comments dropped."""
    out: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        out.append(re.sub(r"\s+#[^'\"]*$", "", current).strip())
        current = ""
    return out


class Workspace:
    """A folder laid out as the page assumes (the repository's ``helm/`` and
    ``manifests/``, a deploy key, a known_hosts), the environment variables it uses, and
    what its commands made."""

    def __init__(self, root: Path, helm: str, kubectl: str) -> None:
        self.root = root
        self.helm = helm
        self.kubectl = kubectl
        (root / "helm").symlink_to(REPO / "helm")
        # a copy, not a link: the recipe's lister reads a linked folder's real path
        shutil.copytree(REPO / "manifests", root / "manifests")
        (root / "deploy_key").write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nx\n")
        (root / "known_hosts").write_text("github.com ssh-ed25519 AAAAC3Nza\n")
        self.env = {**os.environ, "GOODDATA_API_TOKEN": "api-token-for-the-doc-test",
                    "GIT_READ_TOKEN": "git-token-for-the-doc-test",
                    "STATE_DB_PASSWORD": DB_PASSWORD,
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.secrets: dict[str, set[str]] = {}
        self.configmaps: dict[str, dict[str, Any]] = {}
        self.renders: list[list[dict[str, Any]]] = []
        self.ran: list[str] = []
        self.not_here: list[str] = []

    def sh(self, command: str) -> str:
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.root,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def run(self, command: str) -> None:
        if any(p.search(command) for p in NOT_HERE):
            self.not_here.append(command)
            return
        words = shlex.split(command.split("|")[0])
        if words[0] == "kubectl" and "create" in words:
            self.kubectl_create(command)
        elif words[:3] == ["helm", "upgrade", "--install"]:
            self.helm_template(command)
        else:
            pytest.fail(f"docs/deployment.md: no rule for running {command!r}")
        self.ran.append(command)

    def kubectl_create(self, command: str) -> None:
        left = command.split("|")[0].strip()  # `| kubectl apply -f -` needs a cluster
        if "--dry-run=client" not in left:
            left += " --dry-run=client -o yaml"
        left = re.sub(r"^kubectl\b", shlex.quote(self.kubectl), left)
        made = yaml.safe_load(self.sh(left))
        kind, name = made["kind"], made["metadata"]["name"]
        if kind == "Secret":
            self.secrets[name] = set(made.get("data") or {}) | set(made.get("stringData") or {})
        elif kind == "ConfigMap":
            self.configmaps[name] = made

    def helm_template(self, command: str) -> None:
        words = shlex.split(command)[3:]  # after `helm upgrade --install`
        out = self.sh(shlex.join([self.helm, "template", *words]))
        self.renders.append([d for d in yaml.safe_load_all(out) if d])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    helm = find_tool("helm")
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the page's kubectl recipes cannot run here")
    ws = Workspace(tmp_path_factory.mktemp("deployment-doc"), helm, kubectl)
    for lang, text in blocks():
        first = text.splitlines()[0] if text.strip() else ""
        named = re.fullmatch(r"# (\S+\.ya?ml)", first.strip())
        if lang == "yaml" and named:
            (ws.root / named.group(1)).write_text(text)
        elif lang == "sh":
            for command in commands(text):
                ws.run(command)
    return ws


def test_every_shell_recipe_ran_or_needs_a_cluster(workspace: Workspace) -> None:
    assert len(workspace.ran) >= 10, workspace.ran
    for command in workspace.not_here:  # what cannot run here, and nothing else
        assert command.startswith(("docker ", "kubectl", "sudo ", "CI=1 ")), command
    assert {"ailake-api-token", "ailake-webhook", "ailake-git-token", "ailake-git-ssh",
            "ailake-git", "ailake-state-db"} <= set(workspace.secrets)
    assert len(workspace.renders) == 4  # the git follower, git-sync, the ConfigMap, HA


def test_the_configmap_recipe_holds_the_nested_manifests(workspace: Workspace) -> None:
    configmap = workspace.configmaps["ailake-manifests"]
    assert set(configmap["data"]) == {
        "__".join(p.relative_to(REPO / "manifests").parts)
        for p in (REPO / "manifests").rglob("*.yaml")}
    assert "sales__vectors.yaml" in configmap["data"]
    (render,) = [r for r in workspace.renders
                 if "--manifests" in _args(r)
                 and _args(r)[_args(r).index("--manifests") + 1] == "/manifests"]
    volume = next(v for v in _deployment(render)["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "manifests")
    assert volume["configMap"]["name"] == "ailake-manifests"


def test_every_secret_the_charts_read_was_made_by_the_page_with_its_keys(
        workspace: Workspace) -> None:
    for render in workspace.renders:
        spec = _deployment(render)["spec"]["template"]["spec"]
        for volume in spec["volumes"]:
            secret = volume.get("secret")
            if secret is None:
                continue
            name = secret["secretName"]
            assert name in workspace.secrets, f"the page never creates Secret {name}"
            keys = {item["key"] for item in secret.get("items", [])}
            assert keys <= workspace.secrets[name], (name, keys, workspace.secrets[name])
        for container in spec["containers"] + spec.get("initContainers", []):
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["key"] in workspace.secrets[ref["name"]], ref


def test_the_three_sources_render_as_the_page_says(workspace: Workspace) -> None:
    by_source: dict[str, list[str]] = {}
    for render in workspace.renders:
        if _postgres(render):
            continue  # the HA recipe: see the next test
        args = _args(render)
        names = [c["name"] for c in
                 _deployment(render)["spec"]["template"]["spec"]["containers"]]
        if "--git-url" in args:
            by_source["git"] = args
            assert names == ["reconciler"]
        elif "git-sync" in names:
            by_source["git-sync"] = args
        else:
            by_source["configmap"] = args
    git = by_source["git"]
    assert git[git.index("--git-url") + 1] == "https://github.com/example/ailake-manifests.git"
    assert git[git.index("--git-path") + 1] == "manifests/prod"
    assert "--git-token-file" in git and "--webhook-secret-file" in git
    sync = by_source["git-sync"]
    assert sync[sync.index("--manifests") + 1] == "/git/current/manifests/prod"
    assert by_source["configmap"][by_source["configmap"].index("--manifests") + 1] == \
        "/manifests"


def test_the_ha_recipe_renders_two_replicas_on_the_database_secret(
        workspace: Workspace) -> None:
    (render,) = [r for r in workspace.renders if _postgres(r)]
    kinds = {d["kind"] for d in render}
    assert "PodDisruptionBudget" in kinds and not {"Role", "PersistentVolumeClaim"} & kinds
    deployment = _deployment(render)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert _postgres(render) == {"name": "ailake-state-db", "key": "url"}
    assert "--state" not in _args(render)
    assert DB_PASSWORD not in yaml.safe_dump_all(render)


@pytest.mark.parametrize("index", range(len([b for b in blocks() if b[0] == "yaml"])))
def test_every_yaml_block_is_a_valid_values_file_or_prometheus_config(
        workspace: Workspace, index: int, tmp_path: Path) -> None:
    _, text = [b for b in blocks() if b[0] == "yaml"][index]
    first = text.splitlines()[0].strip()
    path = tmp_path / "block.yaml"
    if first == "# prometheus.yml":
        promtool = find_tool("promtool")
        rules = tmp_path / "ailake-reconciler.yaml"
        shutil.copy(RULES_FILE, rules)
        path.write_text(text.replace("/etc/prometheus/rules/ailake-reconciler.yaml",
                                     str(rules)))
        done = subprocess.run([promtool, "check", "config", str(path)], capture_output=True,
                              text=True, timeout=60, check=False)
        if "field kubernetes_sd_configs not found" in done.stdout + done.stderr:
            # Debian's promtool is built without Kubernetes service discovery: check the
            # rest of the config (rule file, relabelling) with the discovery swapped out
            config = yaml.safe_load(path.read_text())
            for job in config["scrape_configs"]:
                assert job.pop("kubernetes_sd_configs")[0]["role"] == "endpoints"
                job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
            path.write_text(yaml.safe_dump(config))
            done = subprocess.run([promtool, "check", "config", str(path)],
                                  capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "SUCCESS" in done.stdout + done.stderr
        return
    path.write_text(text)
    values = ["-f", str(path)]
    if not re.fullmatch(r"# \S+\.ya?ml", first):  # a fragment: on top of the CI defaults
        values = ["-f", str(CHART / "ci" / "default-values.yaml"), *values]
    done = subprocess.run([workspace.helm, "template", "rel", str(CHART), "-n", "ailake",
                           *values], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(done.stdout) if d}
    for key, kind in (("serviceMonitor", "ServiceMonitor"), ("prometheusRule",
                      "PrometheusRule"), ("networkPolicy", "NetworkPolicy")):
        if f"{key}:" in text:
            assert kind in kinds, (key, kinds)


def _deployment(render: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in render if d["kind"] == "Deployment")


def _postgres(render: list[dict[str, Any]]) -> dict[str, str] | None:
    """The Secret key the render's RECONCILER_STATE comes from (None: SQLite)."""
    spec = _deployment(render)["spec"]["template"]["spec"]
    container = next(c for c in spec["containers"] if c["name"] == "reconciler")
    env = {e["name"]: e for e in container["env"]}
    ref: dict[str, str] | None = (env["RECONCILER_STATE"].get("valueFrom") or {}).get(
        "secretKeyRef")
    return ref


def _args(render: list[dict[str, Any]]) -> list[str]:
    spec = _deployment(render)["spec"]["template"]["spec"]
    args: list[str] = next(c for c in spec["containers"] if c["name"] == "reconciler")["args"]
    return args
