"""Invalid manifests keep their state; only a manifest absent from a clean load is orphaned;
an empty source orphans nothing without ``allow_empty`` (``reconciler.source.continuity``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.errors import Problem
from reconciler.model.manifest import LoadResult
from reconciler.source.continuity import (
    HoldReason,
    SourceMemory,
    continuity,
    held_names,
    with_held,
)
from reconciler.source.loader import load_manifests, parse_documents


def manifest(name: str, extra: str = "") -> str:
    return ("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\nspec:\n  serviceName: sales\n  command: go\n{extra}")


def load(files: dict[str, str]) -> LoadResult:
    return parse_documents(sorted(files.items()))


GOOD = {"x.yaml": manifest("a") + "---\n" + manifest("b"), "y.yaml": manifest("c")}


# ------------------------------------------------------------------ what the loader reports


def test_a_clean_load_reports_nothing_held() -> None:
    result = load(GOOD)
    assert result.clean and result.broken_files == () and dict(result.invalid_names) == {}


def test_an_invalid_document_with_a_readable_name_is_reported_with_file_and_line() -> None:
    result = load({**GOOD, "y.yaml": manifest("c", "  paylod: {}\n")})
    problem = result.invalid_names["c"]
    assert (problem.file, problem.line) == ("y.yaml", 8)
    assert "paylod" in problem.message
    assert result.clean  # every document is attributed to a name
    assert result.broken_files == ()


def test_compose_level_errors_keep_the_name_readable_from_the_nodes() -> None:
    result = load({"x.yaml": manifest("a", "  command: twice\n")})  # a duplicate key
    assert list(result.invalid_names) == ["a"]
    assert result.clean


def test_a_syntax_error_breaks_its_file() -> None:
    result = load({**GOOD, "x.yaml": "apiVersion: [\n"})
    assert result.broken_files == ("x.yaml",)
    assert not result.clean


def test_a_document_without_a_name_breaks_its_file() -> None:
    result = load({"x.yaml": manifest("a") + "---\n- a list\n"})
    assert result.broken_files == ("x.yaml",)
    assert [c.name for c in result.commands] == ["a"]


def test_dependency_problems_make_the_dependent_invalid() -> None:
    result = load({"x.yaml": manifest("a", "  dependsOn: [nope]\n")})
    assert list(result.invalid_names) == ["a"] and result.commands == ()


def test_unreadable_files_are_broken(tmp_path: Path) -> None:
    (tmp_path / "ok.yaml").write_text(manifest("ok"))
    (tmp_path / "bad.yaml").write_bytes(b"\xff\xfe")
    result = load_manifests(tmp_path)
    assert result.broken_files == (f"{tmp_path}/bad.yaml",) and not result.clean


def test_a_legacy_load_result_still_builds() -> None:
    legacy = LoadResult(commands=(), problems=(), revision="r")
    assert legacy.clean and legacy.broken_files == () and dict(legacy.invalid_names) == {}


# ------------------------------------------------------------------ continuity


def test_a_clean_load_holds_nothing_and_may_orphan() -> None:
    verdict = continuity(SourceMemory.of(load(GOOD)), load({"x.yaml": manifest("a")}))
    assert verdict.names == frozenset()
    assert verdict.may_orphan and not verdict.suspicious_empty
    assert set(verdict.memory.names) == {"a"}


def test_an_invalid_manifest_keeps_its_state() -> None:
    memory = SourceMemory.of(load(GOOD))
    current = load({**GOOD, "y.yaml": manifest("c", "  paylod: {}\n")})
    verdict = continuity(memory, current)
    assert verdict.names == {"c"}
    hold = verdict.held["c"]
    assert hold.reason is HoldReason.INVALID and hold.shows_invalid
    assert hold.problem is not None and (hold.problem.file, hold.problem.line) == ("y.yaml", 8)
    assert "y.yaml:8" in hold.message
    assert verdict.may_orphan  # the load is clean: an absent manifest would be orphaned


def test_an_invalid_manifest_never_valid_before_is_held_too() -> None:
    verdict = continuity(None, load({"x.yaml": manifest("new", "  paylod: {}\n")}))
    assert verdict.names == {"new"}


def test_a_broken_file_keeps_every_name_it_held() -> None:
    memory = SourceMemory.of(load(GOOD))
    verdict = continuity(memory, load({**GOOD, "x.yaml": "apiVersion: [\n"}))
    assert verdict.names == {"a", "b"}
    assert {h.reason for h in verdict.held.values()} == {HoldReason.BROKEN_FILE}
    assert all(h.shows_invalid for h in verdict.held.values())
    problem = verdict.held["a"].problem
    assert problem is not None and problem.file == "x.yaml"
    assert not verdict.may_orphan


def test_a_name_moved_to_a_valid_file_is_not_held() -> None:
    memory = SourceMemory.of(load(GOOD))
    current = load({"x.yaml": "apiVersion: [\n", "y.yaml": manifest("c"),
                    "z.yaml": manifest("a")})
    verdict = continuity(memory, current)
    assert verdict.names == {"b"}


def test_while_the_source_is_not_clean_nothing_absent_is_orphaned() -> None:
    memory = SourceMemory.of(load(GOOD))
    # y.yaml deleted in the same commit that broke x.yaml: c is absent, but not orphaned
    current = load({"x.yaml": "apiVersion: [\n"})
    verdict = continuity(memory, current, recorded={"a", "b", "c", "old"})
    assert verdict.names == {"a", "b", "c", "old"}
    assert verdict.held["c"].reason is HoldReason.UNCLEAN_SOURCE
    assert not verdict.held["c"].shows_invalid
    assert verdict.held["a"].reason is HoldReason.BROKEN_FILE
    assert "did not load cleanly" in verdict.reason


def test_the_memory_survives_unclean_loads_until_a_clean_one() -> None:
    memory = SourceMemory.of(load(GOOD))
    broken = continuity(memory, load({"x.yaml": "apiVersion: [\n", "y.yaml": manifest("c")}))
    again = continuity(broken.memory, load({"x.yaml": "apiVersion: [\n",
                                            "y.yaml": manifest("c", "  rerun: '2'\n")}))
    assert again.names == {"a", "b"}
    assert again.memory.revision == memory.revision
    fixed = continuity(again.memory, load({"x.yaml": manifest("a"), "y.yaml": manifest("c")}))
    assert fixed.names == frozenset() and fixed.may_orphan
    assert set(fixed.memory.names) == {"a", "c"}  # b is gone for good: orphaned now


def test_an_empty_source_after_a_good_one_is_suspicious() -> None:
    memory = SourceMemory.of(load(GOOD))
    verdict = continuity(memory, load({}))
    assert verdict.suspicious_empty and not verdict.may_orphan
    assert verdict.names == {"a", "b", "c"}
    assert {h.reason for h in verdict.held.values()} == {HoldReason.EMPTY_SOURCE}
    assert "--allow-empty" in verdict.reason
    assert verdict.memory == memory  # the next empty load is still suspicious
    assert continuity(verdict.memory, load({})).suspicious_empty


def test_an_empty_source_with_only_non_manifest_files_is_suspicious_too() -> None:
    memory = SourceMemory.of(load(GOOD))
    assert continuity(memory, load({"x.yaml": "# nothing here\n"})).suspicious_empty


def test_allow_empty_accepts_an_empty_source() -> None:
    memory = SourceMemory.of(load(GOOD))
    verdict = continuity(memory, load({}), allow_empty=True)
    assert verdict.names == frozenset() and verdict.may_orphan
    assert dict(verdict.memory.names) == {}


def test_after_a_restart_the_store_stands_for_the_memory() -> None:
    verdict = continuity(None, load({}), recorded={"a", "b"})
    assert verdict.suspicious_empty and verdict.names == {"a", "b"}
    assert not continuity(None, load({}), recorded=()).suspicious_empty  # a fresh start
    unclean = continuity(None, load({"x.yaml": "apiVersion: [\n"}), recorded={"a", "b"})
    assert unclean.names == {"a", "b"} and not unclean.may_orphan


def test_a_broken_file_in_an_otherwise_empty_source_is_unclean_not_empty() -> None:
    memory = SourceMemory.of(load(GOOD))
    verdict = continuity(memory, load({"x.yaml": "apiVersion: [\n"}))
    assert not verdict.suspicious_empty and not verdict.may_orphan
    assert verdict.names == {"a", "b", "c"}


def test_a_valid_name_is_never_held_even_when_also_invalid_elsewhere() -> None:
    current = load({"x.yaml": manifest("a"), "y.yaml": manifest("a")})  # a duplicate
    assert "a" in current.invalid_names
    assert continuity(None, current).names == frozenset()


def test_invalid_view_filters_the_source_wide_reasons() -> None:
    memory = SourceMemory.of(load(GOOD))
    verdict = continuity(memory, load({"x.yaml": "apiVersion: [\n"}))
    assert set(verdict.invalid) == {"a", "b"}


def test_held_names_shorthand() -> None:
    good = load(GOOD)
    assert held_names(good, load({**GOOD, "x.yaml": "{"})) == {"a", "b"}
    assert held_names(good, load({})) == {"a", "b", "c"}
    assert held_names(good, load({}), allow_empty=True) == frozenset()
    assert held_names(None, load(GOOD)) == frozenset()


def test_problems_of_held_names_point_at_their_files(tmp_path: Path) -> None:
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "a.yaml").write_text(manifest("a"))
    memory = SourceMemory.of(load_manifests(tmp_path))
    (tmp_path / "team" / "a.yaml").write_text(manifest("a", "  timeout: forever\n"))
    verdict = continuity(memory, load_manifests(tmp_path))
    problem = verdict.held["a"].problem
    assert problem == Problem(f"{tmp_path}/team/a.yaml", 8, "a", problem.message)


# ------------------------------------------------------------------ properties


NAMES = st.sampled_from(["a", "b", "c", "d", "e"])
STATES = st.sampled_from(["valid", "invalid", "broken", "absent"])


@st.composite
def trees(draw: st.DrawFn) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in draw(st.lists(NAMES, unique=True)):
        state = draw(STATES)
        file = f"{name}.yaml"
        if state == "valid":
            out[file] = manifest(name)
        elif state == "invalid":
            out[file] = manifest(name, "  paylod: {}\n")
        elif state == "broken":
            out[file] = "apiVersion: [\n"
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(trees(), min_size=1, max_size=6), st.booleans())
def test_properties_over_sequences_of_loads(sequence: list[dict[str, str]],
                                            allow_empty: bool) -> None:
    memory: SourceMemory | None = None
    ever: set[str] = set()
    for files in sequence:
        current = load(files)
        verdict = continuity(memory, current, allow_empty=allow_empty)
        desired = {c.name for c in current.commands}
        # a valid name is never held; an invalid name always is
        assert not verdict.names & desired
        assert set(current.invalid_names) - desired <= verdict.names
        # orphaning only on a clean, trusted load; then only invalid names are held
        if verdict.may_orphan:
            assert current.clean and not verdict.suspicious_empty
            assert verdict.names == set(current.invalid_names) - desired
        else:
            # nothing known before is lost: every earlier name is desired now or held
            assert ever - desired <= verdict.names | set(current.invalid_names)
        if verdict.may_orphan:
            ever = set(desired) | set(current.invalid_names)
        else:
            ever |= desired | set(current.invalid_names)
        memory = verdict.memory


@pytest.mark.parametrize("allow_empty", [False, True])
def test_an_empty_first_load_is_never_suspicious(allow_empty: bool) -> None:
    verdict = continuity(None, load({}), allow_empty=allow_empty)
    assert not verdict.suspicious_empty and verdict.may_orphan


def test_with_held_attaches_the_verdict_to_the_load() -> None:
    memory = SourceMemory.of(load(GOOD))
    current = load({**GOOD, "x.yaml": "{"})
    verdict = continuity(memory, current)
    carried = with_held(current, verdict)
    assert set(carried.held) == {"a", "b"} and carried.commands == current.commands
    assert dict(current.held) == {}
