"""``reconciler validate PATH...``: one line per problem, exit 0 valid / 1 invalid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
BAD = "tests/corpus/bad"
GOOD = "tests/corpus/good"
MIXED = "tests/corpus/mixed"
EXPECTED = (ROOT / BAD / "expected.txt").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(ROOT)
    yield


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "validate", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)


# ------------------------------------------------------------------ end to end


def test_bad_corpus_prints_exactly_the_expected_lines_and_exits_1() -> None:
    done = run(BAD)
    assert done.returncode == 1
    assert done.stdout == EXPECTED
    assert "Traceback" not in done.stderr


def test_valid_manifests_exit_0_and_print_nothing_on_stdout() -> None:
    done = run(GOOD, "manifests")
    assert (done.returncode, done.stdout) == (0, "")
    assert "valid manifest(s)" in done.stderr


# ------------------------------------------------------------------ in process


def test_mixed_directory_reports_only_the_bad_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", MIXED]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out] == [
        "tests/corpus/mixed/nested/cron.yaml", "tests/corpus/mixed/typo.yaml"]


def test_several_paths_files_and_directories(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", f"{GOOD}/minimal.yml", f"{BAD}/unknown-field-paylod.yaml",
                 MIXED]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tests/corpus/bad/unknown-field-paylod.yaml:9: ")
    assert len(out) == 3


def test_single_good_file_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", f"{GOOD}/full.yaml", f"{GOOD}/policies.yaml"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "3 valid manifest(s) in 2 file(s)"


def test_summary_counts_problems(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", MIXED]) == 1
    assert capsys.readouterr().err.strip() == (
        "2 valid manifest(s) in 4 file(s), 2 problem(s)")


def test_json_output_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--output", "json", MIXED]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    assert report["manifests"] == 2
    assert report["files"] == 4
    assert report["problems"][1] == {
        "file": "tests/corpus/mixed/typo.yaml", "line": 8, "name": "mixed-typo",
        "message": "spec.paylod: unknown field 'paylod' (did you mean 'payload'?)"}


def test_json_output_of_valid_manifests(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--output", "json", GOOD]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"valid": True, "manifests": 4, "files": 3, "problems": []}


def test_json_output_of_the_bad_corpus_matches_the_text_lines(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "--output", "json", BAD]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    as_text = [f"{p['file']}:{p['line']}: {p['name']}: {p['message']}" for p in problems]
    assert as_text == EXPECTED.splitlines()


def test_missing_path_is_a_problem_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert main(["validate", str(missing)]) == 1
    assert capsys.readouterr().out == f"{missing}:1: -: no such file or directory\n"


def test_empty_directory_is_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().err.strip() == "0 valid manifest(s) in 0 file(s)"


def test_a_path_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["validate"])
    assert exc.value.code == 2


# ------------------------------------------------------------------ the safe walk


def test_a_symlink_out_of_the_tree_shows_nothing_of_its_target(tmp_path: Path) -> None:
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key.yaml").write_text("PRIVATE-KEY-MATERIAL: [\n")
    root = tmp_path / "manifests"
    root.mkdir()
    (root / "x.yaml").symlink_to(tmp_path / "private" / "key.yaml")
    done = run(str(root))
    assert done.returncode == 1
    assert done.stdout == (f"{root}/x.yaml:1: -: symlink leaves the source root; not read "
                           "(only links to files inside the source are followed)\n")
    assert "PRIVATE" not in done.stdout + done.stderr
    assert "private" not in done.stdout + done.stderr


def test_a_non_utf8_name_is_printed_escaped(tmp_path: Path) -> None:
    import os

    with open(os.path.join(os.fsencode(tmp_path), b"caf\xe9.yaml"), "w") as fh:
        fh.write("x: 1\n")
    done = run("--output", "json", str(tmp_path))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    (problem,) = json.loads(done.stdout)["problems"]
    assert problem["file"] == f"{tmp_path}/caf\\xe9.yaml"


def test_a_folder_of_folders_is_walked(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    for rel in ("team-a/jobs/reindex.yaml", "team-b/x.yml"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True)
        path.write_text("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
                        f"metadata: {{name: {path.stem}}}\nspec: {{service: s, command: c}}\n")
    assert main(["validate", str(tmp_path)]) == 0
    assert capsys.readouterr().err.strip() == "2 valid manifest(s) in 2 file(s)"


# ------------------------------------------------------------------ everything at once


def _document(tmp_path: Path, spec: str) -> Path:
    path = tmp_path / "a.yaml"
    path.write_text("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
                    "metadata: {name: alpha}\nspec:\n  serviceName: sales\n"
                    "  command: reindex\n" + spec)
    return path


def test_a_schema_error_no_longer_hides_the_documents_other_problems(tmp_path: Path) -> None:
    """Behaviour change: the semantic problems (a cron that never fires, a time zone, a
    maxBackoff below backoff, a self-dependency) used to appear only once the schema error
    was fixed."""
    path = _document(tmp_path, "  timeout: 600\n"
                               "  policy: {schedule: '0 3 30 2 *', timezone: Mars/Base}\n"
                               "  retry: {limit: 2, backoff: 10m, maxBackoff: 1m}\n"
                               "  dependsOn: [alpha]\n"
                               "  paylod: {}\n")
    done = run(str(path))
    assert done.returncode == 1
    assert [line.split(": ", 2)[2] for line in done.stdout.splitlines()] == [
        "spec.timeout: 600 has no unit: write a duration with a unit, e.g. 600s (or 10m)",
        "spec.policy.schedule: '0 3 30 2 *' never fires (no such date, e.g. February 30)",
        "spec.policy.timezone: unknown time zone 'Mars/Base' (use an IANA name such as UTC "
        "or Europe/Prague)",
        "spec.retry.maxBackoff: must not be smaller than backoff",
        "spec.dependsOn[0]: a manifest cannot depend on itself",
        "spec.paylod: unknown field 'paylod' (did you mean 'payload'?)",
    ]
    assert [line.split(":")[1] for line in done.stdout.splitlines()] == [
        "7", "8", "8", "9", "10", "11"]


def test_a_rule_never_judges_a_value_the_schema_rejected(tmp_path: Path) -> None:
    """A value the schema rejects is reported once, by the schema: the semantic rules skip
    it (and what depends on it) instead of judging a default in its place."""
    path = _document(tmp_path, "  retry: {limit: three, backoff: soon, maxBackoff: 1s}\n"
                               "  policy: {interval: 0.5}\n")
    done = run(str(path))
    messages = [line.split(": ", 2)[2] for line in done.stdout.splitlines()]
    assert messages == [  # by line: retry (7), then policy (8); no maxBackoff rule
        "spec.retry.backoff: 'soon' is not a valid duration: use a number with a unit, "
        "e.g. 90s, 10m, 1h30m",
        "spec.retry.limit: must be an integer, got 'three'",
        "spec.policy.interval: 0.5 has no unit: write a duration with a unit, e.g. 0.5s "
        "(or 500ms)",
    ]


@pytest.mark.parametrize(("value", "hint"), [
    ("600", "600s (or 10m)"), ("45", "45s"), ('"600"', "600s (or 10m)"),
    ("1.5", "1.5s"), ("3600", "3600s (or 1h)")])
def test_a_duration_without_a_unit_gets_the_promised_hint(tmp_path: Path, value: str,
                                                          hint: str) -> None:
    done = run(str(_document(tmp_path, f"  timeout: {value}\n")))
    assert done.returncode == 1
    shown = value.strip('"')
    quoted = f"'{shown}'" if value.startswith('"') else shown
    assert done.stdout.strip().endswith(
        f"spec.timeout: {quoted} has no unit: write a duration with a unit, e.g. {hint}")


def test_validate_output_works_like_every_other_commands(tmp_path: Path) -> None:
    path = _document(tmp_path, "  timeout: 600\n")
    short = subprocess.run([sys.executable, "-m", "reconciler", "validate", "-o", "json",
                            str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert short.returncode == 1 and json.loads(short.stdout)["valid"] is False
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER")}
    by_env = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(path)],
                            capture_output=True, text=True, timeout=60, check=False,
                            env={**env, "RECONCILER_OUTPUT": "json"})
    assert json.loads(by_env.stdout) == json.loads(short.stdout)


def test_an_unknown_dependency_of_a_document_with_a_schema_error_is_told_at_once(
        tmp_path: Path) -> None:
    path = _document(tmp_path, "  timeout: 600\n  dependsOn: [provision-nothing]\n")
    done = run(str(path))
    assert "no manifest is named 'provision-nothing'" in done.stdout
