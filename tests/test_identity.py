"""Identity of an intent: canonical form, spec hash and operation ids (DESIGN section 3).

The golden values below are the contract with every user's state: the operation ids
computed from them are the ones already recorded on the AI Lake server. If a golden test
fails, the identity scheme changed, and upgrading the reconciler would RE-RUN EVERY
COMMAND OF EVERY USER. Do not "fix" such a failure by updating the literals; revert the
change to ``reconciler/identity.py`` (or to how ``reconciler/manifests.py`` feeds it).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.model.identity import (
    OPERATION_NAMESPACE,
    canonical_intent,
    canonical_json,
    operation_id,
    spec_hash,
)
from reconciler.model.manifest import ServiceCommand
from reconciler.source.loader import parse_documents

# ------------------------------------------------------------------ golden values
# !!! LOUD: these literals pin the identity scheme. Changing any of them re-runs every
# !!! command of every user. Never update them to make a test pass.

GOLDEN_ONCE_BY_ID = {
    "yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: reindex-sales-vectors, labels: {team: analytics}}
spec:
  service: 6f1c2a4e-0000-4000-8000-000000000001
  command: reindex
  payload: {tables: [orders, customers], batchSize: 500}
""",
    "window": "",
    "canonical": '{"command":"reindex","context":null,"name":"reindex-sales-vectors",'
    '"payload":{"batchSize":500,"tables":["orders","customers"]},"rerun":"",'
    '"service":"6f1c2a4e-0000-4000-8000-000000000001","window":""}',
    "hash": "3856ed5a10d9fda026e8476b68595d2676d173188db7dec24f22e838988f6dec",
    "ids": [
        "4536fd65-05b1-51ee-882e-839950f64868",
        "377ce7be-8a67-57e1-8375-5c346594f8d4",
        "d35fb0c3-d21d-5cab-adf8-4743a2667d95",
    ],
}

GOLDEN_SERVICE_NAME_WITH_CONTEXT = {
    "yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata:
  name: provision-sales-db
spec:
  serviceName: sales-db
  command: provision
  payload:
    engine: starrocks
    size: small
  context: {requestedBy: analytics, ticket: null}
  rerun: 1
""",
    "window": "",
    "canonical": '{"command":"provision","context":{"requestedBy":"analytics","ticket":null},'
    '"name":"provision-sales-db","payload":{"engine":"starrocks","size":"small"},'
    '"rerun":"1","serviceName":"sales-db","window":""}',
    "hash": "a0c6f8ee7e6afd53a3c33fc9c65b19ee7e3bf12027935d9fc6cceb806d4490bd",
    "ids": [
        "9f0ea593-29f6-5d33-a270-69276022fffa",
        "2a3779a2-545e-5554-8cd5-0be5d3a40420",
        "9a0542d1-9260-53ee-a23f-4e0b37f48de8",
    ],
}

GOLDEN_SCHEDULE_WINDOW = {
    "yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata:
  name: nightly-compact-vectors
spec:
  serviceName: sales-vectors
  command: compact
  policy: {schedule: "0 3 * * *", timezone: UTC}
""",
    "window": "2026-11-28T03:00:00Z",
    "canonical": '{"command":"compact","context":null,"name":"nightly-compact-vectors",'
    '"payload":null,"rerun":"","serviceName":"sales-vectors",'
    '"window":"2026-11-28T03:00:00Z"}',
    "hash": "c92198d95a623f196fcff796feb6fa7b36dfda94c47b2a0ada0fba10912805b4",
    "ids": [
        "ed749c9a-f005-5edf-8c71-d601db79ecd6",
        "539ea5d8-b971-56a4-8c63-6385a3778085",
        "bce73bea-d46d-5728-abec-078ff4baf02b",
    ],
}

GOLDEN = [GOLDEN_ONCE_BY_ID, GOLDEN_SERVICE_NAME_WITH_CONTEXT, GOLDEN_SCHEDULE_WINDOW]
GOLDEN_IDS = ["once-by-service-id", "service-name-with-context", "schedule-window"]


def load_one(text: str) -> ServiceCommand:
    result = parse_documents([("golden.yaml", text)])
    assert result.problems == ()
    (command,) = result.commands
    return command


def intent_of(command: ServiceCommand, window: str = "") -> str:
    """The intent exactly as DESIGN section 3 defines it (MappingProxyType -> dict)."""
    return canonical_intent(
        name=command.name,
        service=command.service.as_written,
        command=command.command,
        payload=dict(command.payload) if command.payload is not None else None,
        context=dict(command.context) if command.context is not None else None,
        rerun=command.rerun,
        window=window,
    )


def test_operation_namespace_never_changes() -> None:
    # LOUD: changing the namespace changes every operation id ever computed.
    assert str(OPERATION_NAMESPACE) == "8a0e5f4c-3b7d-5c1e-9f2a-6d4b3c2a1e0f"


@pytest.mark.parametrize("golden", GOLDEN, ids=GOLDEN_IDS)
def test_golden_canonical_intent_of_a_manifest(golden: dict[str, Any]) -> None:
    command = load_one(golden["yaml"])
    assert intent_of(command, golden["window"]) == golden["canonical"]


@pytest.mark.parametrize("golden", GOLDEN, ids=GOLDEN_IDS)
def test_golden_spec_hash(golden: dict[str, Any]) -> None:
    assert spec_hash(golden["canonical"]) == golden["hash"]


@pytest.mark.parametrize("golden", GOLDEN, ids=GOLDEN_IDS)
def test_golden_operation_ids_of_attempts_0_1_2(golden: dict[str, Any]) -> None:
    assert [operation_id(golden["hash"], n) for n in range(3)] == golden["ids"]


@pytest.mark.parametrize("golden", GOLDEN, ids=GOLDEN_IDS)
def test_service_command_helpers_agree_with_the_golden_values(golden: dict[str, Any]) -> None:
    command = load_one(golden["yaml"])
    assert command.canonical_intent(golden["window"]) == golden["canonical"]
    assert command.spec_hash(golden["window"]) == golden["hash"]


def test_canonical_json_sorts_keys_and_drops_whitespace() -> None:
    assert canonical_json({"b": [1, {"d": None, "c": "é"}], "a": True}) == (
        '{"a":true,"b":[1,{"c":"é","d":null}]}'
    )


def test_canonical_json_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_operation_id_refuses_a_negative_attempt() -> None:
    with pytest.raises(ValueError):
        operation_id(GOLDEN_ONCE_BY_ID["hash"], -1)


def test_operation_ids_differ_per_attempt() -> None:
    ids = {operation_id(GOLDEN_ONCE_BY_ID["hash"], n) for n in range(100)}
    assert len(ids) == 100


# ------------------------------------------------------------------ what is not identity

BASE = """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata:
  name: reindex-sales-vectors
  labels: {team: analytics}
spec:
  service: 6f1c2a4e-0000-4000-8000-000000000001
  command: reindex
  payload: {tables: [orders]}
  context: {requestedBy: analytics}
  rerun: "1"
"""


OPERATIONAL = {
    "timeout": "  timeout: 5m\n",
    "retry": "  retry: {limit: 0, backoff: 1s, maxBackoff: 1s}\n",
    "dependsOn": "  dependsOn: [other-manifest]\n",
    "suspend": "  suspend: true\n",
}


@pytest.mark.parametrize("field", OPERATIONAL)
def test_operational_fields_do_not_change_the_hash(field: str) -> None:
    """timeout, retry, dependsOn and suspend never re-run a command."""
    other = BASE + OPERATIONAL[field]
    if field == "dependsOn":
        other += "---\n" + BASE.replace("reindex-sales-vectors", "other-manifest")
    result = parse_documents([("b.yaml", other)])
    assert result.problems == ()
    assert result.by_name["reindex-sales-vectors"].spec_hash() == load_one(BASE).spec_hash()


def test_labels_do_not_change_the_hash() -> None:
    relabelled = BASE.replace("{team: analytics}", "{team: platform, tier: gold}")
    assert load_one(relabelled).spec_hash() == load_one(BASE).spec_hash()


def test_rerun_integer_and_string_forms_are_one_identity() -> None:
    assert load_one(BASE.replace('rerun: "1"', "rerun: 1")).spec_hash() == (
        load_one(BASE).spec_hash()
    )


def test_service_id_and_service_name_are_different_identities() -> None:
    by_name = BASE.replace("service: 6f1c2a4e-0000-4000-8000-000000000001",
                           "serviceName: 6f1c2a4e-0000-4000-8000-000000000001")
    assert load_one(by_name).spec_hash() != load_one(BASE).spec_hash()


def test_missing_payload_differs_from_an_empty_payload() -> None:
    without = BASE.replace("  payload: {tables: [orders]}\n", "")
    empty = BASE.replace("{tables: [orders]}", "{}")
    assert load_one(without).spec_hash() != load_one(empty).spec_hash()


def test_the_window_is_part_of_the_identity() -> None:
    command = load_one(BASE)
    assert command.spec_hash("2026-11-28T03:00:00Z") != command.spec_hash("2026-11-29T03:00:00Z")
    assert command.spec_hash("") != command.spec_hash("2026-11-28T03:00:00Z")


# ------------------------------------------------------------------ properties

# PyYAML's emitter does not round-trip every line break in every quoting style (a dumper
# limitation, not a loader one), so generated text has no control or line-break chars.
TEXT = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"))


def text(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    return st.text(TEXT, min_size=min_size, max_size=max_size)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(text(max_size=10), children, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(text(max_size=12), json_values, max_size=5)
contexts = st.none() | st.dictionaries(
    text(max_size=12), st.none() | text(max_size=20), max_size=4
)
names = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
commands = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,15}\Z")
reruns = text(max_size=8) | st.integers(min_value=0, max_value=10**6).map(str)


@st.composite
def manifests(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"command": draw(commands)}
    if draw(st.booleans()):
        spec["service"] = draw(text(min_size=1, max_size=20))
    else:
        spec["serviceName"] = draw(text(min_size=1, max_size=20))
    if draw(st.booleans()):
        spec["payload"] = draw(payloads)
    context = draw(contexts)
    if context is not None:
        spec["context"] = context
    spec["rerun"] = draw(reruns)
    return {
        "apiVersion": "ailake.reconciler/v1",
        "kind": "ServiceCommand",
        "metadata": {"name": draw(names)},
        "spec": spec,
    }


styles = st.fixed_dictionaries({
    "default_flow_style": st.sampled_from([False, True, None]),
    "sort_keys": st.booleans(),
    "indent": st.integers(min_value=2, max_value=6),
    "allow_unicode": st.booleans(),
    "default_style": st.sampled_from([None, '"', "'"]),
    "width": st.sampled_from([80, 4096]),
})


def render(doc: dict[str, Any], style: dict[str, Any], comment: bool) -> str:
    text = yaml.safe_dump(doc, explicit_start=comment, **style)
    if comment:
        text = "# a comment line that must not matter\n" + text + "# trailing comment\n"
    return text


def expected_intent(doc: dict[str, Any]) -> str:
    spec = doc["spec"]
    service = ({"service": spec["service"]} if "service" in spec
               else {"serviceName": spec["serviceName"]})
    return canonical_intent(
        name=doc["metadata"]["name"], service=service, command=spec["command"],
        payload=spec.get("payload"), context=spec.get("context"),
        rerun=str(spec.get("rerun", "")), window="",
    )


PROPERTY_SETTINGS = settings(max_examples=80, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(doc=manifests(), style_a=styles, style_b=styles, comment=st.booleans())
def test_yaml_style_never_changes_the_hash(
    doc: dict[str, Any], style_a: dict[str, Any], style_b: dict[str, Any], comment: bool
) -> None:
    """Key order, indentation, flow vs block, quoting and comments are not identity."""
    first = parse_documents([("a.yaml", render(doc, style_a, comment))])
    second = parse_documents([("b.yaml", render(doc, style_b, not comment))])
    assert first.problems == () and second.problems == ()
    (a,), (b,) = first.commands, second.commands
    assert intent_of(a) == intent_of(b) == expected_intent(doc)
    assert a.spec_hash() == b.spec_hash() == spec_hash(expected_intent(doc))


def test_json_text_is_yaml_and_hashes_the_same() -> None:
    doc = yaml.safe_load(BASE)
    as_json = parse_documents([("a.yaml", json.dumps(doc, indent=3))])
    assert as_json.problems == ()
    assert as_json.commands[0].spec_hash() == load_one(BASE).spec_hash()


MUTATIONS = ["payload", "context", "service", "command", "name", "rerun"]


def mutate(doc: dict[str, Any], field: str, data: st.DataObject) -> dict[str, Any]:
    new = json.loads(json.dumps(doc))
    spec = new["spec"]
    if field == "payload":
        old = spec.get("payload")
        spec["payload"] = data.draw(payloads.filter(lambda p: p != old))
    elif field == "context":
        old = spec.get("context")
        spec["context"] = data.draw(
            st.dictionaries(text(max_size=12), st.none() | text(max_size=20),
                            max_size=4).filter(lambda c: c != old))
    elif field == "service":
        key = "service" if "service" in spec else "serviceName"
        spec[key] = spec[key] + data.draw(text(min_size=1, max_size=5))
    elif field == "command":
        spec["command"] = data.draw(commands.filter(lambda c: c != spec["command"]))
    elif field == "name":
        old_name = new["metadata"]["name"]
        new["metadata"]["name"] = data.draw(names.filter(lambda n: n != old_name))
    else:
        spec["rerun"] = data.draw(reruns.filter(lambda r: r != spec.get("rerun")))
    return new


@PROPERTY_SETTINGS
@given(doc=manifests(), field=st.sampled_from(MUTATIONS), data=st.data())
def test_any_identity_field_change_changes_the_hash(
    doc: dict[str, Any], field: str, data: st.DataObject
) -> None:
    changed = mutate(doc, field, data)
    style = {"default_flow_style": False, "sort_keys": False}
    before = parse_documents([("a.yaml", render(doc, style, False))])
    after = parse_documents([("a.yaml", render(changed, style, False))])
    assert before.problems == () and after.problems == ()
    assert before.commands[0].spec_hash() != after.commands[0].spec_hash()
