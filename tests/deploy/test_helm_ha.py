"""The chart's high-availability mode (``state.postgres.existingSecret``) and the SQLite mode
it leaves as it was: one behaviour per test, on manifests rendered by ``helm template`` and
validated against the Kubernetes 1.30 schemas (``kubernetes-validate``, strict).

- PostgreSQL: the database URL reaches the daemon only as ``RECONCILER_STATE`` from the
  Secret; two replicas, a rolling update that keeps them ready, a PodDisruptionBudget, a
  NetworkPolicy egress rule to the database; no PersistentVolumeClaim, no Lease (no Role,
  no ``RECONCILER_LEASE_*``, no Kubernetes API egress): the advisory lock elects.
- SQLite: one pod, ``Recreate``, the PVC when asked for; more than one replica or a rolling
  update is refused with a message that says what to set.
"""

from __future__ import annotations

import argparse
import subprocess
from typing import Any

import pytest
from deploy_support import container as _container
from deploy_support import kinds as _kinds
from deploy_support import missing_tool

K8S_VERSION = "1.30.0"
HA = ("ha",)  # ci/ha-values.yaml: the built-in git follower, PostgreSQL, a NetworkPolicy
SECRET = "ailake-state-db"


def _deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return _kinds(docs)["Deployment"]


def _env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(docs)["env"]}


def _egress_ports(docs: list[dict[str, Any]]) -> set[int]:
    return {p["port"] for r in _kinds(docs)["NetworkPolicy"]["spec"]["egress"]
            for p in r["ports"]}


@pytest.mark.parametrize("args", [
    (),
    ("--set", "replicaCount=3"),
    ("--set", "networkPolicy.database.to=null", "--set", "git.enabled=false",
     "--set", "manifests.configMap=ailake-manifests"),
])
def test_ha_objects_pass_kubernetes_validate(render: Any, args: tuple[str, ...]) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate (PyPI)")
    docs = render(*args, values=HA)
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message} "
                        f"at {list(exc.path)}")
    assert {"Deployment", "PodDisruptionBudget", "NetworkPolicy"} <= set(_kinds(docs))


# -- the database URL -------------------------------------------------------------------------


def test_ha_passes_the_database_url_as_reconciler_state_from_the_secret(render: Any) -> None:
    env = _env(render(values=HA))
    assert env["RECONCILER_STATE"] == {
        "name": "RECONCILER_STATE",
        "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "url"}}}


def test_ha_takes_the_key_of_the_url_from_the_values(render: Any) -> None:
    env = _env(render("--set", "state.postgres.key=dsn", values=HA))
    assert env["RECONCILER_STATE"]["valueFrom"]["secretKeyRef"] == {"name": SECRET,
                                                                    "key": "dsn"}


def test_ha_passes_no_state_flag_so_the_variable_decides(render: Any) -> None:
    assert "--state" not in _container(render(values=HA))["args"]


def test_ha_args_and_env_make_run_open_the_postgresql_store(
        render: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``reconciler run`` parses from the rendered args, with the Secret's value in
    ``RECONCILER_STATE`` as the kubelet sets it: the PostgreSQL URL."""
    from reconciler.cli.main import build_parser

    dsn = "postgresql://reconciler:pw@db.internal:5432/reconciler"
    monkeypatch.setenv("RECONCILER_STATE", dsn)
    parsed = build_parser().parse_args(_container(render(values=HA))["args"])
    assert parsed.state == dsn


def test_an_inline_database_url_cannot_be_set(helm_template: Any) -> None:
    proc = helm_template("--set", "state.postgres.url=postgresql://u:s3cret-pw@db/x",
                         values=HA)
    assert proc.returncode != 0
    assert "s3cret-pw" not in proc.stdout


def test_ha_keeps_the_git_cache_on_the_data_volume(render: Any) -> None:
    docs = render(values=HA)
    args = _container(docs)["args"]
    assert args[args.index("--git-cache") + 1] == "/data/.reconciler-git"
    assert {"name": "data", "mountPath": "/data"} in _container(docs)["volumeMounts"]


# -- replicas, strategy, disruption budget ----------------------------------------------------


def test_ha_runs_two_replicas_by_default(render: Any) -> None:
    assert _deployment(render(values=HA))["spec"]["replicas"] == 2


def test_ha_replica_count_is_the_value(render: Any) -> None:
    assert _deployment(render("--set", "replicaCount=3", values=HA))["spec"]["replicas"] == 3


def test_ha_rolls_updates_one_pod_at_a_time_never_below_the_replicas(render: Any) -> None:
    assert _deployment(render(values=HA))["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def test_ha_strategy_can_still_be_set(render: Any) -> None:
    docs = render("--set", "strategy.type=Recreate", values=HA)
    assert _deployment(docs)["spec"]["strategy"] == {"type": "Recreate"}


def test_ha_has_a_disruption_budget_keeping_one_pod(render: Any) -> None:
    docs = render(values=HA)
    pdb = _kinds(docs)["PodDisruptionBudget"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    pod_labels = _deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@pytest.mark.parametrize(("args", "values"), [
    ((), ("default",)),
    (("--set", "replicaCount=1"), HA),
    (("--set", "podDisruptionBudget.enabled=false"), HA),
])
def test_no_disruption_budget_for_one_replica_or_when_disabled(
        render: Any, args: tuple[str, ...], values: tuple[str, ...]) -> None:
    assert "PodDisruptionBudget" not in _kinds(render(*args, values=values))


# -- leadership by the advisory lock, not a Lease ---------------------------------------------


def test_ha_grants_no_lease_role(render: Any) -> None:
    kinds = set(_kinds(render(values=HA)))
    assert not kinds & {"Role", "RoleBinding"}, kinds


def test_ha_sets_no_lease_variables(render: Any) -> None:
    env = _env(render(values=HA))
    assert not {"RECONCILER_LEASE_NAME", "RECONCILER_LEASE_NAMESPACE"} & set(env)


def test_ha_opens_no_kubernetes_api_egress(render: Any) -> None:
    assert 6443 not in _egress_ports(render(values=HA))


def test_sqlite_keeps_the_lease(render: Any) -> None:
    docs = render()
    assert {"Role", "RoleBinding"} <= set(_kinds(docs))
    assert "RECONCILER_LEASE_NAME" in _env(docs)


# -- the NetworkPolicy ------------------------------------------------------------------------


def test_ha_network_policy_opens_the_database_port_to_its_peers(render: Any) -> None:
    egress = _kinds(render(values=HA))["NetworkPolicy"]["spec"]["egress"]
    (rule,) = [r for r in egress if r["ports"] == [{"port": 5432, "protocol": "TCP"}]]
    assert rule["to"] == [{"ipBlock": {"cidr": "10.20.0.0/24"}}]


def test_ha_network_policy_takes_the_database_port_and_selectors(render: Any) -> None:
    egress = _kinds(render(
        "--set", "networkPolicy.database.port=6432",
        "--set-json", 'networkPolicy.database.to=[{"namespaceSelector": {"matchLabels": '
        '{"team": "db"}}, "podSelector": {"matchLabels": {"app": "pgbouncer"}}}]',
        values=HA))["NetworkPolicy"]["spec"]["egress"]
    (rule,) = [r for r in egress if r["ports"] == [{"port": 6432, "protocol": "TCP"}]]
    assert rule["to"] == [{"namespaceSelector": {"matchLabels": {"team": "db"}},
                           "podSelector": {"matchLabels": {"app": "pgbouncer"}}}]


def test_ha_network_policy_without_peers_opens_the_port_to_any_destination(
        render: Any) -> None:
    egress = _kinds(render("--set", "networkPolicy.database.to=null",
                           values=HA))["NetworkPolicy"]["spec"]["egress"]
    (rule,) = [r for r in egress if r["ports"] == [{"port": 5432, "protocol": "TCP"}]]
    assert "to" not in rule


def test_sqlite_network_policy_opens_no_database_port(render: Any) -> None:
    assert 5432 not in _egress_ports(render(values=("full",)))


# -- SQLite stays one pod ---------------------------------------------------------------------


def test_ha_renders_no_persistent_volume_claim(render: Any) -> None:
    docs = render(values=HA)
    assert "PersistentVolumeClaim" not in _kinds(docs)
    volumes = {v["name"]: v for v in _deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["data"]


def test_sqlite_defaults_to_one_pod_recreated(render: Any) -> None:
    spec = _deployment(render())["spec"]
    assert (spec["replicas"], spec["strategy"]) == (1, {"type": "Recreate"})


def test_sqlite_with_persistence_keeps_the_claim(render: Any) -> None:
    docs = render(values=("full",))
    claim = _kinds(docs)["PersistentVolumeClaim"]
    volumes = {v["name"]: v for v in _deployment(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert _deployment(docs)["spec"]["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "replicaCount=2"),
     "replicaCount: 2 needs the PostgreSQL store (state.postgres.existingSecret)"),
    (("--set", "strategy.type=RollingUpdate"),
     "strategy.type: RollingUpdate needs the PostgreSQL store"),
    (("--set", "replicas=2"), "replicas is now replicaCount (Helm's convention): "
     "--set replicaCount=2"),
    (("--set", "state.postgres.existingSecret=db", "--set", "persistence.enabled=true"),
     "persistence.enabled is for the SQLite store"),
])
def test_inconsistent_state_values_are_refused_with_what_to_set(
        helm_template: Any, args: tuple[str, ...], message: str) -> None:
    proc: subprocess.CompletedProcess[str] = helm_template(*args)
    assert proc.returncode != 0, f"{args} was accepted"
    assert message in proc.stderr, proc.stderr


def test_the_ha_flags_are_the_cli_flags(render: Any) -> None:
    from reconciler.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    known = {f for a in sub.choices["run"]._actions for f in a.option_strings}
    flags = {a for a in _container(render(values=HA))["args"] if a.startswith("--")}
    assert flags <= known, sorted(flags - known)
