"""``reconciler validate PATH...``: one line per problem, exit 0 valid / 1 invalid."""

from __future__ import annotations

import json
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
