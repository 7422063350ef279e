"""Manifest loading: safe and bounded YAML, schema and semantic rules, exact problem lines.

The corpus under ``tests/corpus/bad`` holds one problem per file, named for the rule it
breaks; ``tests/corpus/bad/expected.txt`` is the exact ``FILE:LINE: NAME: message``
output, with paths as these tests pass them (relative to the repository root).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.model.manifest import (
    MAX_PAYLOAD_CHARS,
    Interval,
    LoadResult,
    Once,
    RetryPolicy,
    Schedule,
    ServiceRef,
)
from reconciler.source.loader import MAX_FILE_BYTES, load_manifests, parse_documents
from reconciler.source.schema import load_schema

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path("tests/corpus")
BAD = CORPUS / "bad"
EXPECTED = (ROOT / BAD / "expected.txt").read_text(encoding="utf-8").splitlines()
BAD_FILES = sorted(p.name for p in (ROOT / BAD).glob("*.yaml"))

HEADER = """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata:
  name: {name}
spec:
  serviceName: sales-db
  command: analyze
"""


def manifest(name: str = "a", extra: str = "") -> str:
    return HEADER.format(name=name) + extra


def load_text(text: str, file: str = "m.yaml") -> LoadResult:
    return parse_documents([(file, text)])


def lines(result: LoadResult) -> list[str]:
    return [str(p) for p in result.problems]


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    yield


# ------------------------------------------------------------------ the corpus


def test_bad_corpus_has_at_least_35_files_each_with_an_expected_line() -> None:
    assert len(BAD_FILES) >= 35
    for name in BAD_FILES:
        assert any(line.startswith(f"{BAD / name}:") for line in EXPECTED), name


def test_bad_corpus_directory_gives_exactly_the_expected_lines() -> None:
    assert lines(load_manifests(BAD)) == EXPECTED


@pytest.mark.parametrize("name", BAD_FILES)
def test_each_bad_file_alone_gives_exactly_its_expected_lines(name: str) -> None:
    path = BAD / name
    expected = [line for line in EXPECTED if line.startswith(f"{path}:")]
    assert lines(load_manifests(path)) == expected


def test_every_bad_file_but_the_duplicate_name_one_yields_no_valid_manifest() -> None:
    for name in BAD_FILES:
        commands = load_manifests(BAD / name).commands
        if name == "metadata-name-duplicate.yaml":
            assert [c.name for c in commands] == ["metadata-name-duplicate"]
        else:
            assert commands == (), name


def test_good_corpus_is_valid() -> None:
    result = load_manifests(CORPUS / "good")
    assert result.problems == ()
    assert sorted(c.name for c in result.commands) == [
        "good-full", "good-interval", "good-minimal", "good-schedule"]


def test_sample_manifests_are_valid() -> None:
    result = load_manifests("manifests")
    assert result.problems == ()
    assert len(result.commands) >= 1


def test_mixed_directory_reports_only_the_bad_files() -> None:
    result = load_manifests(CORPUS / "mixed")
    assert lines(result) == [
        "tests/corpus/mixed/nested/cron.yaml:8: mixed-cron: spec.policy.schedule: "
        "'every night' is not a valid 5-field cron expression (e.g. \"0 3 * * *\")",
        "tests/corpus/mixed/typo.yaml:8: mixed-typo: spec.paylod: unknown field 'paylod' "
        "(did you mean 'payload'?)",
    ]
    assert sorted(c.name for c in result.commands) == ["mixed-migrate", "mixed-provision"]


# ------------------------------------------------------------------ error locations


def test_unknown_field_is_reported_at_its_key_line() -> None:
    result = load_text(manifest(extra="  paylod: {}\n"))
    assert lines(result) == [
        "m.yaml:8: a: spec.paylod: unknown field 'paylod' (did you mean 'payload'?)"]


def test_yaml_syntax_error_is_a_problem_not_a_traceback() -> None:
    (problem,) = load_text(manifest(extra="  payload: {a: 1\n")).problems
    assert (problem.line, problem.name) == (8, "-")
    assert problem.message.startswith("YAML syntax error: a flow mapping is never closed")


def test_tab_indentation_is_explained() -> None:
    (problem,) = load_text("a:\n\tb: 1\n").problems
    assert (problem.line, problem.message) == (
        2, "YAML syntax error: a tab character; indent YAML with spaces, not tabs")


def test_duplicate_key_names_both_lines() -> None:
    assert lines(load_text(manifest(extra="  command: other\n"))) == [
        "m.yaml:8: a: spec.command: duplicate key 'command' (first at line 7)"]


def test_a_document_that_is_not_a_mapping_is_a_problem() -> None:
    assert lines(load_text("- a\n- b\n")) == [
        "m.yaml:1: -: document must be a mapping (apiVersion, kind, metadata, spec), got a list"]


def test_wrong_api_version_is_reported_alone() -> None:
    text = manifest(extra="  bogus: 1\n").replace("ailake.reconciler/v1", "v1")
    assert lines(load_text(text)) == [
        "m.yaml:1: a: apiVersion: must be 'ailake.reconciler/v1', got 'v1'"]


def test_a_syntax_error_does_not_hide_the_next_document_of_the_file() -> None:
    text = manifest("a", "  payload: {x: 1\n") + "---\n" + manifest("b", "  paylod: {}\n")
    assert [(p.line, p.name) for p in load_text(text).problems] == [(8, "-"), (17, "b")]


def test_one_bad_document_does_not_hide_the_others() -> None:
    text = "---\n".join([manifest("a", "  timeout: soon\n"), manifest("b"),
                         manifest("c", "  retry: {limit: -1}\n")])
    result = load_text(text)
    assert [(p.line, p.name) for p in result.problems] == [(8, "a"), (25, "c")]
    assert [c.name for c in result.commands] == ["b"]
    assert result.invalid == 2


def test_problem_in_an_expanded_alias_is_located_where_the_alias_is_used() -> None:
    text = manifest(extra="  payload: {tables: &t [orders]}\n  context: {a: *t}\n")
    (problem,) = load_text(text).problems
    assert (problem.line, problem.message) == (
        9, 'spec.context.a: must be a string or null, got ["orders"]')


# ------------------------------------------------------------------ safe and bounded


def test_python_object_tag_is_refused() -> None:
    text = manifest(extra="  payload: !!python/object/apply:os.system ['true']\n")
    (problem,) = load_text(text).problems
    assert problem.line == 8
    assert "YAML tag !!python/object/apply:os.system is not allowed" in problem.message


def test_alias_bomb_is_refused_quickly() -> None:
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        bomb += f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    started = time.monotonic()
    (problem,) = load_text(bomb).problems
    assert time.monotonic() - started < 2
    assert "refusing a possible alias bomb" in problem.message


def test_recursive_alias_is_refused() -> None:
    (problem,) = load_text("a: &a [1, *a]\n").problems
    assert problem.message == "a[1]: recursive YAML alias (a value that contains itself)"


def test_deep_nesting_is_refused_without_a_traceback() -> None:
    for depth in (150, 5000):
        (problem,) = load_text("a: " + "[" * depth + "]" * depth + "\n").problems
        assert "nest" in problem.message


def test_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * (MAX_FILE_BYTES // 10 + 1))
    (problem,) = load_manifests(big).problems
    assert (problem.line, problem.name) == (1, "-")
    assert problem.message.startswith("file too large:")
    assert "1 MiB" in problem.message


def test_text_over_the_size_limit_is_refused_by_parse_documents() -> None:
    (problem,) = load_text("#" * (MAX_FILE_BYTES + 1)).problems
    assert problem.message.startswith("file too large:")


def test_non_utf8_file_is_a_problem_at_the_line_of_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(manifest(extra="  payload: {city: Zürich}\n").encode("latin-1"))
    (problem,) = load_manifests(path).problems
    assert problem.line == 8
    assert problem.message.startswith("not UTF-8 text: byte 0xfc")


def test_control_character_is_a_problem() -> None:
    (problem,) = load_text("a: 1\nb: \x07\n").problems
    assert problem.line == 2
    assert "U+0007" in problem.message


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_text_gives_problems_never_an_exception(text: str) -> None:
    result = load_text(text)
    assert all(p.line >= 1 for p in result.problems)
    assert all("\n" not in str(p) and "\r" not in str(p) for p in result.problems)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(
    ["apiVersion: x\n", "  - a\n", "- b\n", ": c\n", "{d: [\n", "e: *f\n", "g: &h 1\n",
     "---\n", "  i: j\n", "'k\n", "l: !!binary aGk=\n", "m:\n", "\t\n", "n: {o: p}\n",
     manifest()]), max_size=12))
def test_any_arrangement_of_yaml_fragments_never_raises(parts: list[str]) -> None:
    for problem in load_text("".join(parts)).problems:
        assert "\n" not in str(problem)


def test_odd_keys_and_names_keep_each_problem_on_one_line() -> None:
    text = manifest(name='"a\\nb"')
    assert lines(load_text(text)) == [
        "m.yaml:4: -: metadata.name: 'a\\nb' is not a valid name: use a DNS-1123 label "
        "(lowercase letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63)"]
    (problem,) = load_text(manifest(extra='  payload: {"x\\ny": .nan}\n')).problems
    assert str(problem) == 'm.yaml:8: a: spec.payload["x\\ny"]: \'.nan\' is not a finite number'


# ------------------------------------------------------------------ documents and files


def test_empty_documents_are_ignored() -> None:
    result = load_text("---\n---\n" + manifest() + "---\n...\n---\n")
    assert result.problems == ()
    assert [c.name for c in result.commands] == ["a"]


def test_several_documents_per_file() -> None:
    result = load_text(manifest("a") + "---\n" + manifest("b") + "---\n" + manifest("c"))
    assert [(c.name, c.line) for c in result.commands] == [("a", 1), ("b", 9), ("c", 17)]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_directory_walk_is_recursive_and_sorted(tmp_path: Path) -> None:
    write(tmp_path / "z.yaml", manifest("z"))
    write(tmp_path / "a" / "b" / "deep.yaml", manifest("deep"))
    write(tmp_path / "a" / "x.yml", manifest("x"))
    write(tmp_path / "m.yaml", manifest("m"))
    result = load_manifests(tmp_path)
    assert [Path(c.file).relative_to(tmp_path).as_posix() for c in result.commands] == [
        "a/b/deep.yaml", "a/x.yml", "m.yaml", "z.yaml"]
    assert result.files == 4


def test_dot_folders_such_as_git_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / ".git" / "hooks.yaml", "{ broken")
    write(tmp_path / ".github" / "workflows" / "ci.yaml", "on: push\n")
    write(tmp_path / ".hidden.yaml", "{ broken")
    write(tmp_path / "ok.yaml", manifest())
    result = load_manifests(tmp_path)
    assert result.problems == ()
    assert result.files == 1


def test_non_yaml_files_are_ignored(tmp_path: Path) -> None:
    write(tmp_path / "README.md", "{ not yaml")
    write(tmp_path / "values.json", "{")
    write(tmp_path / "ok.yml", manifest())
    result = load_manifests(tmp_path)
    assert (result.problems, result.files, len(result.commands)) == ((), 1, 1)


def test_missing_path_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert lines(load_manifests(missing)) == [f"{missing}:1: -: no such file or directory"]


def test_several_paths_are_one_source(tmp_path: Path) -> None:
    a = write(tmp_path / "one" / "a.yaml", manifest("a"))
    b = write(tmp_path / "two" / "b.yaml", manifest("b", "  dependsOn: [a]\n"))
    result = load_manifests(a, b.parent)
    assert result.problems == ()
    assert [c.name for c in result.commands] == ["a", "b"]


def test_revision_is_a_content_hash_outside_git(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest())
    first = load_manifests(tmp_path).revision
    assert first.startswith("sha256:")
    assert load_manifests(tmp_path).revision == first
    write(tmp_path / "a.yaml", manifest(extra="  rerun: '2'\n"))
    assert load_manifests(tmp_path).revision != first


# ------------------------------------------------------------------ semantic rules


def test_names_are_unique_across_files(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest("same"))
    write(tmp_path / "b.yaml", manifest("same", "  command: other\n").replace(
        "  command: analyze\n", ""))
    result = load_manifests(tmp_path)
    assert lines(result) == [
        f"{tmp_path / 'b.yaml'}:4: same: metadata.name: duplicate name "
        f"(first defined at {tmp_path / 'a.yaml'}:4)"]
    assert [c.file for c in result.commands] == [str(tmp_path / "a.yaml")]


def test_depends_on_an_unknown_name_suggests_a_close_one() -> None:
    text = manifest("provision-db") + "---\n" + manifest("b", "  dependsOn: [provision-dbs]\n")
    assert lines(load_text(text)) == [
        "m.yaml:16: b: spec.dependsOn[0]: no manifest is named 'provision-dbs' "
        "(did you mean 'provision-db'?)"]


def test_dependency_cycle_is_named_for_each_member() -> None:
    text = "---\n".join([manifest("a", "  dependsOn: [b]\n"),
                         manifest("b", "  dependsOn: [c]\n"),
                         manifest("c", "  dependsOn: [a]\n"),
                         manifest("d", "  dependsOn: [a]\n")])
    result = load_text(text)
    assert lines(result) == [
        "m.yaml:8: a: spec.dependsOn[0]: dependency cycle a -> b -> c -> a",
        "m.yaml:17: b: spec.dependsOn[0]: dependency cycle b -> c -> a -> b",
        "m.yaml:26: c: spec.dependsOn[0]: dependency cycle c -> a -> b -> c",
    ]
    assert [c.name for c in result.commands] == ["d"]


def test_depending_on_an_invalid_manifest_is_not_an_error() -> None:
    text = manifest("a", "  timeout: soon\n") + "---\n" + manifest("b", "  dependsOn: [a]\n")
    result = load_text(text)
    assert [p.name for p in result.problems] == ["a"]
    assert [c.name for c in result.commands] == ["b"]


def test_payload_limit_counts_compact_json_characters() -> None:
    # {"x":"..."} is 8 characters around the value
    at_limit = manifest(extra=f"  payload: {{x: {'é' * (MAX_PAYLOAD_CHARS - 8)}}}\n")
    assert load_text(at_limit).problems == ()
    over = manifest(extra=f"  payload: {{x: {'é' * (MAX_PAYLOAD_CHARS - 7)}}}\n")
    (problem,) = load_text(over).problems
    assert problem.message == (
        "spec.payload: is 15001 characters as compact JSON; the API accepts at most 15000")


def test_exactly_one_of_service_and_service_name() -> None:
    both = manifest(extra="  service: abc\n")
    assert lines(load_text(both)) == [
        "m.yaml:8: a: spec: set either 'service' (an id) or 'serviceName', not both"]
    neither = manifest().replace("  serviceName: sales-db\n", "")
    (problem,) = load_text(neither).problems
    assert problem.line == 5


def test_context_values_are_strings_or_null() -> None:
    ok = load_text(manifest(extra="  context: {a: x, b: null, c: ''}\n"))
    assert ok.problems == ()
    assert dict(ok.commands[0].context or {}) == {"a": "x", "b": None, "c": ""}
    (problem,) = load_text(manifest(extra="  context: {a: [x]}\n")).problems
    assert problem.message == 'spec.context.a: must be a string or null, got ["x"]'


def test_empty_name_is_reported_once() -> None:
    assert lines(load_text(manifest(name="''"))) == [
        "m.yaml:4: -: metadata.name: must not be empty"]


def test_yaml_boolean_key_is_explained() -> None:
    (problem,) = load_text(manifest(extra="  payload: {yes: 1}\n")).problems
    assert problem.message == (
        'spec.payload: key yes is read by YAML as a boolean; quote it ("yes") to use it as '
        "a text key")


# ------------------------------------------------------------------ the typed model


def test_defaults() -> None:
    (command,) = load_text(manifest()).commands
    assert command.policy == Once()
    assert command.timeout == timedelta(hours=1)
    assert command.retry == RetryPolicy(limit=3, backoff=timedelta(seconds=30),
                                        max_backoff=timedelta(minutes=10))
    assert (command.rerun, command.depends_on, command.suspend) == ("", (), False)
    assert (command.payload, command.context, dict(command.labels)) == (None, None, {})
    assert command.service == ServiceRef(name="sales-db")


def test_rerun_integer_equals_rerun_string() -> None:
    (as_int,) = load_text(manifest(extra="  rerun: 2\n")).commands
    (as_str,) = load_text(manifest(extra='  rerun: "2"\n')).commands
    assert as_int.rerun == as_str.rerun == "2"
    assert as_int.spec_hash() == as_str.spec_hash()


def test_interval_policy() -> None:
    (command,) = load_text(manifest(extra="  policy: {interval: 1h30m}\n")).commands
    assert command.policy == Interval(every=timedelta(minutes=90))


def test_schedule_policy_with_defaults() -> None:
    (command,) = load_text(manifest(extra="  policy: {schedule: '0 3 * * *'}\n")).commands
    assert command.policy == Schedule(cron="0 3 * * *", timezone="UTC",
                                      starting_deadline=timedelta(hours=1))


def test_schedule_policy_with_timezone_and_starting_deadline() -> None:
    extra = ("  policy:\n    schedule: '*/15 8-18 * * 1-5'\n    timezone: Europe/Prague\n"
             "    startingDeadline: 90s\n")
    (command,) = load_text(manifest(extra=extra)).commands
    assert command.policy == Schedule(cron="*/15 8-18 * * 1-5", timezone="Europe/Prague",
                                      starting_deadline=timedelta(seconds=90))


def test_every_field_is_read() -> None:
    extra = """\
  payload: {tables: [orders], since: 2025-01-01}
  context: {requestedBy: analytics}
  rerun: "7"
  timeout: 45m
  retry: {limit: 0, backoff: 5s, maxBackoff: 1m}
  dependsOn: [b]
  suspend: true
"""
    text = manifest("a", extra).replace("  name: a\n", "  name: a\n  labels: {team: x}\n")
    result = load_text(text + "---\n" + manifest("b"))
    assert result.problems == ()
    command = result.by_name["a"]
    assert dict(command.payload or {}) == {"tables": ["orders"], "since": "2025-01-01"}
    assert dict(command.context or {}) == {"requestedBy": "analytics"}
    assert command.rerun == "7"
    assert command.timeout == timedelta(minutes=45)
    assert command.retry == RetryPolicy(0, timedelta(seconds=5), timedelta(minutes=1))
    assert command.depends_on == ("b",)
    assert command.suspend is True
    assert dict(command.labels) == {"team": "x"}
    assert (command.file, command.line) == ("m.yaml", 1)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    retry = RetryPolicy(limit=5, backoff=timedelta(seconds=30),
                        max_backoff=timedelta(minutes=2))
    assert [retry.delay(n).total_seconds() for n in range(1, 6)] == [30, 60, 120, 120, 120]


def test_commands_are_immutable() -> None:
    (command,) = load_text(manifest(extra="  payload: {a: 1}\n")).commands
    with pytest.raises(TypeError):
        command.payload["a"] = 2  # type: ignore[index]


# ------------------------------------------------------------------ the schema


def test_schema_copies_are_byte_identical() -> None:
    assert (ROOT / "schemas/servicecommand.schema.json").read_bytes() == (
        ROOT / "reconciler/data/servicecommand.schema.json").read_bytes()


def test_packaged_schema_is_the_one_loaded() -> None:
    on_disk = json.loads((ROOT / "schemas/servicecommand.schema.json").read_text())
    assert load_schema() == on_disk


@pytest.mark.parametrize("field", [
    "  timeout: 99999999999999h\n",
    "  policy: {interval: 99999999999999h}\n",
    "  retry: {backoff: 1s, maxBackoff: 99999999999999h}\n",
    "  policy: {schedule: '0 3 * * *', startingDeadline: 99999999999999999h}\n",
])
def test_absurdly_long_durations_are_one_problem_not_an_overflow(field: str) -> None:
    (problem,) = load_text(manifest(extra=field)).problems
    assert problem.message.endswith("is too long: at most 87600h (10 years)")


def test_a_git_sync_worktree_names_the_revision_without_a_git_binary(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    tree = tmp_path / "git" / ".worktrees" / sha / "manifests"
    tree.mkdir(parents=True)
    link = tmp_path / "git" / "current"
    link.symlink_to(tmp_path / "git" / ".worktrees" / sha)
    (tree / "a.yaml").write_text(
        "apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
        "metadata: {name: a}\nspec: {service: s, command: c}\n")
    assert load_manifests(link / "manifests").revision == sha


# ------------------------------------------------------------------ dependsOn of rejected documents


def test_an_unknown_target_of_a_schema_rejected_document_is_told_with_its_line() -> None:
    result = load_text(manifest("a", "  tiemout: 10m\n  dependsOn: [missing, a-peer]\n")
                       + "---\n" + manifest("a-peer"))
    assert "m.yaml:9: a: spec.dependsOn[0]: no manifest is named 'missing'" in lines(result)
    assert [c.name for c in result.commands] == ["a-peer"]


def test_an_unknown_target_of_a_semantically_rejected_document_is_told() -> None:
    result = load_text(manifest("a", "  timeout: 10 minutes\n  dependsOn: [a-peer]\n"))
    assert any("no manifest is named 'a-peer'" in line for line in lines(result))


def test_a_repeated_unknown_target_of_a_rejected_document_is_told_once() -> None:
    result = load_text(manifest("a", "  dependsOn: [gone, gone]\n"))
    told = [line for line in lines(result) if "no manifest is named 'gone'" in line]
    assert len(told) == 1
