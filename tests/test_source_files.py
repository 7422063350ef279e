"""The safe walk (``reconciler.source.files``), shared by the loader and the watcher: odd names,
vanishing entries, permissions, symlinks, sizes, bounds, and the ConfigMap layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.cli.main import main as cli_main
from reconciler.source import configmap, files, loader
from reconciler.source.files import (
    FileEntry,
    configmap_key,
    configmap_path,
    escaped,
    is_configmap_mount,
    list_files,
    read_bounded,
)
from reconciler.source.loader import MAX_FILE_BYTES, load_manifests
from reconciler.source.watcher import SourceWatcher

SECRET = "TOPSECRET-do-not-show-3f9a"


def manifest(name: str, extra: str = "") -> str:
    return ("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\nspec:\n  serviceName: sales\n  command: go\n{extra}")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def lines(result: Any) -> list[str]:
    return [str(p) for p in result.problems]


def shown(result: Any) -> str:
    """Everything a load shows anywhere (problems, files of commands)."""
    return "\n".join([*lines(result), *(c.file for c in result.commands)])


# ------------------------------------------------------------------ names


def test_a_non_utf8_file_name_is_a_problem_printed_escaped(tmp_path: Path) -> None:
    write(tmp_path / "ok.yaml", manifest("ok"))
    bad = os.path.join(os.fsencode(tmp_path), b"bad\xff.yaml")
    with open(bad, "w") as fh:
        fh.write(manifest("bad"))
    result = load_manifests(tmp_path)
    assert lines(result) == [f"{tmp_path}/bad\\xff.yaml:1: -: file name is not valid UTF-8; "
                             "not read (rename it)"]
    assert [c.name for c in result.commands] == ["ok"]
    assert result.clean is False
    assert result.broken_files == (f"{tmp_path}/bad\\xff.yaml",)
    lines(result)[0].encode("utf-8")  # printable: never a UnicodeEncodeError


def test_a_non_utf8_folder_name_is_a_problem_and_not_searched(tmp_path: Path) -> None:
    folder = os.path.join(os.fsencode(tmp_path), b"dir\xfe")
    os.mkdir(folder)
    with open(os.path.join(folder, b"a.yaml"), "w") as fh:
        fh.write(manifest("a"))
    result = load_manifests(tmp_path)
    assert lines(result) == [f"{tmp_path}/dir\\xfe:1: -: folder name is not valid UTF-8; "
                             "not searched (rename it)"]


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path: Path) -> None:
    write(tmp_path / "two\nlines.yaml", "{ broken")
    (problem,) = load_manifests(tmp_path).problems
    assert problem.file == f"{tmp_path}/two\\nlines.yaml"
    assert "\n" not in str(problem)


def test_escaped() -> None:
    assert escaped("plain/a.yaml") == "plain/a.yaml"
    assert escaped(os.fsdecode(b"a\xff")) == "a\\xff"
    assert escaped("a\x1bb") == "a\\x1bb"
    assert escaped("ünïcode.yaml") == "ünïcode.yaml"


def test_watcher_and_validate_survive_a_non_utf8_name(tmp_path: Path) -> None:
    write(tmp_path / "ok.yaml", manifest("ok"))
    with open(os.path.join(os.fsencode(tmp_path), b"x\xff.yaml"), "w") as fh:
        fh.write("x: 1\n")
    watcher = SourceWatcher(tmp_path)
    watcher.mark()
    assert watcher.changed() is False
    done = subprocess.run([sys.executable, "-m", "reconciler", "validate", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stdout == (f"{tmp_path}/x\\xff.yaml:1: -: file name is not valid UTF-8; "
                           "not read (rename it)\n")


def test_dot_files_and_folders_are_skipped(tmp_path: Path) -> None:
    write(tmp_path / ".git" / "x.yaml", "{")
    write(tmp_path / "a" / ".hidden" / "x.yaml", "{")
    write(tmp_path / ".x.yaml", "{")
    write(tmp_path / "a" / "b.yaml", manifest("b"))
    assert [e.display for e in list_files(tmp_path).entries] == [f"{tmp_path}/a/b.yaml"]


def test_order_is_by_path_parts_as_before(tmp_path: Path) -> None:
    for rel in ("a-b.yaml", "a/b.yaml", "a.yaml", "z.yml", "a/a/a.yaml"):
        write(tmp_path / rel, "")
    listed = [os.path.relpath(e.path, tmp_path) for e in list_files(tmp_path).entries]
    assert listed == [str(p.relative_to(tmp_path)) for p in sorted(
        tmp_path / r for r in ("a-b.yaml", "a/b.yaml", "a.yaml", "z.yml", "a/a/a.yaml"))]


def test_a_relative_dot_root_shows_paths_as_pathlib_did(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "sub" / "a.yaml", "{")
    monkeypatch.chdir(tmp_path)
    assert [p.file for p in load_manifests(".").problems] == ["sub/a.yaml"]
    assert [p.file for p in load_manifests("./sub/").problems] == ["sub/a.yaml"]


# ------------------------------------------------------------------ vanishing, permissions


class _Scandir:
    """``os.scandir`` that runs ``action`` on the listing of ``when`` (after listing it)."""

    def __init__(self, when: Path, action: Any) -> None:
        self.real = os.scandir
        self.when = str(when)
        self.action = action

    def __call__(self, path: Any) -> Any:
        if isinstance(path, int):  # shutil.rmtree's own fd-based walk
            return self.real(path)
        with self.real(path) as it:
            entries = list(it)
        if os.fspath(path) == self.when:
            self.action()
        return _Entries(entries)


class _Entries:
    def __init__(self, entries: list[os.DirEntry[str]]) -> None:
        self.entries = entries

    def __enter__(self) -> Iterator[os.DirEntry[str]]:
        return iter(self.entries)

    def __exit__(self, *exc: object) -> None:
        pass


def test_a_folder_removed_during_the_walk_is_a_problem_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    write(tmp_path / "gone" / "deep" / "b.yaml", manifest("b"))
    monkeypatch.setattr(files.os, "scandir",
                        _Scandir(tmp_path, lambda: shutil.rmtree(tmp_path / "gone")))
    result = load_manifests(tmp_path)
    assert [c.name for c in result.commands] == ["a"]
    assert result.clean is False
    assert any("vanished" in line for line in lines(result)), lines(result)


def test_a_file_removed_during_the_walk_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    write(tmp_path / "b.yaml", manifest("b"))
    monkeypatch.setattr(files.os, "scandir",
                        _Scandir(tmp_path, lambda: (tmp_path / "b.yaml").unlink()))
    result = load_manifests(tmp_path)
    assert [c.name for c in result.commands] == ["a"]
    assert lines(result) == [f"{tmp_path}/b.yaml:1: -: vanished while it was listed (the "
                             "source is changing); not loaded"]
    assert not result.clean


def test_a_file_removed_between_listing_and_reading_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    real = loader.list_files

    def list_then_delete(*args: Any, **kwargs: Any) -> Any:
        listing = real(*args, **kwargs)
        (tmp_path / "a.yaml").unlink()
        return listing

    monkeypatch.setattr(loader, "list_files", list_then_delete)
    result = load_manifests(tmp_path)
    assert lines(result) == [f"{tmp_path}/a.yaml:1: -: vanished while it was read (the "
                             "source is changing); not loaded"]


def test_an_unreadable_folder_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    write(tmp_path / "locked" / "b.yaml", manifest("b"))
    real = os.scandir

    def scandir(path: Any) -> Any:
        if not isinstance(path, int) and os.fspath(path) == str(tmp_path / "locked"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(files.os, "scandir", scandir)
    result = load_manifests(tmp_path)
    assert lines(result) == [f"{tmp_path}/locked:1: -: cannot read the folder: permission "
                             "denied; its files are not loaded"]
    assert [c.name for c in result.commands] == ["a"]
    assert result.broken_files == (f"{tmp_path}/locked",) and not result.clean


def test_an_unreadable_file_is_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    real = os.open

    def fake_open(path: Any, flags: int, *args: Any) -> int:
        if not isinstance(path, int) and os.fspath(path).endswith("a.yaml"):
            raise PermissionError(13, "Permission denied")
        return real(path, flags, *args)

    monkeypatch.setattr(files.os, "open", fake_open)
    assert lines(load_manifests(tmp_path)) == [
        f"{tmp_path}/a.yaml:1: -: cannot read: Permission denied"]


def test_a_missing_root_is_the_same_problem_as_before(tmp_path: Path) -> None:
    result = load_manifests(tmp_path / "nope")
    assert lines(result) == [f"{tmp_path}/nope:1: -: no such file or directory"]
    assert not result.clean


def test_a_fifo_named_yaml_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.yaml")
    write(tmp_path / "a.yaml", manifest("a"))
    result = load_manifests(tmp_path)
    assert lines(result) == [f"{tmp_path}/pipe.yaml:1: -: not a regular file; not read"]
    watcher = SourceWatcher(tmp_path)
    watcher.mark()
    assert not watcher.changed()


# ------------------------------------------------------------------ symlinks


def test_a_symlink_to_a_file_outside_the_root_is_refused_and_nothing_of_it_shown(
    tmp_path: Path,
) -> None:
    outside = write(tmp_path / "private" / "secret.yaml", f"{SECRET}: [\n")
    root = tmp_path / "root"
    write(root / "ok.yaml", manifest("ok"))
    (root / "leak.yaml").symlink_to(outside)
    result = load_manifests(root)
    assert lines(result) == [f"{root}/leak.yaml:1: -: symlink leaves the source root; not read "
                             "(only links to files inside the source are followed)"]
    assert SECRET not in shown(result) and "private" not in shown(result)
    assert [c.name for c in result.commands] == ["ok"]
    assert not result.clean


def test_a_symlink_to_a_folder_outside_the_root_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "private" / "secret.yaml", manifest("secret"))
    root = tmp_path / "root"
    root.mkdir()
    (root / "shared").symlink_to(tmp_path / "private")
    (root / "notes.md").symlink_to(tmp_path / "private" / "secret.yaml")  # not ours: silent
    result = load_manifests(root)
    assert lines(result) == [f"{root}/shared:1: -: symlink leaves the source root; not read "
                             "(only links to files inside the source are followed)"]
    assert result.commands == ()


def test_a_relative_symlink_escaping_with_dotdot_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "secret.yaml", f"{SECRET}\n")
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.yaml").symlink_to("../../secret.yaml")
    result = load_manifests(root)
    assert SECRET not in shown(result)
    assert [p.message.split(";")[0] for p in result.problems] == [
        "symlink leaves the source root"]


def test_symlinks_inside_the_root_are_followed(tmp_path: Path) -> None:
    write(tmp_path / "real" / "a.yaml", manifest("a"))
    (tmp_path / "alias.yaml").symlink_to("real/a.yaml")
    result = load_manifests(tmp_path / "alias.yaml")
    assert [c.name for c in result.commands] == ["a"]
    root = tmp_path / "tree"
    write(root / "data" / "b.yaml", manifest("b"))
    (root / "b-link.yml").symlink_to("data/b.yaml")
    listed = [e.display for e in list_files(root).entries]
    assert listed == [f"{root}/b-link.yml", f"{root}/data/b.yaml"]


def test_a_root_reached_through_a_symlink_is_the_root(tmp_path: Path) -> None:
    # git-sync: --manifests /git/current/manifests, current -> .worktrees/<sha>
    write(tmp_path / "wt" / "manifests" / "a.yaml", manifest("a"))
    (tmp_path / "current").symlink_to(tmp_path / "wt")
    result = load_manifests(tmp_path / "current" / "manifests")
    assert result.problems == ()
    assert [c.file for c in result.commands] == [f"{tmp_path}/current/manifests/a.yaml"]


def test_a_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    (tmp_path / "loop").symlink_to(".")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to("..")
    (tmp_path / "self.yaml").symlink_to("self.yaml")
    result = load_manifests(tmp_path)
    assert [c.name for c in result.commands] == ["a"]
    assert [p.file for p in result.problems] == [f"{tmp_path}/self.yaml"]


def test_a_broken_symlink_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "gone.yaml").symlink_to("nowhere.yaml")
    assert lines(load_manifests(tmp_path)) == [
        f"{tmp_path}/gone.yaml:1: -: broken symlink (its target does not exist); not loaded"]


# ------------------------------------------------------------------ sizes and bounds


def test_a_huge_file_is_refused_by_stat_and_never_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(400 * 1024 * 1024)  # sparse: 400 MB on paper, nothing on disk
    write(tmp_path / "a.yaml", manifest("a"))
    opened: list[str] = []
    real = os.open

    def spy(path: Any, flags: int, *args: Any) -> int:
        opened.append(os.fspath(path))
        return real(path, flags, *args)

    monkeypatch.setattr(files.os, "open", spy)
    result = load_manifests(tmp_path)
    assert lines(result) == [f"{big}:1: -: file too large: 419430400 bytes, the limit is "
                             f"{MAX_FILE_BYTES} bytes (1 MiB); not parsed"]
    watcher = SourceWatcher(tmp_path)
    watcher.mark()
    assert not watcher.changed()
    assert str(big) not in opened
    assert opened.count(str(tmp_path / "a.yaml")) == 2  # the loader and the watcher


def test_read_bounded_checks_the_open_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.yaml", "x" * 100)
    entry = FileEntry(str(path), "a.yaml", 1, 0)  # the listing's size is stale
    assert read_bounded(entry, 10) == 100
    assert read_bounded(entry, 100) == b"x" * 100


def test_a_file_that_grows_after_listing_is_still_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "a.yaml", manifest("a"))
    real = loader.list_files

    def list_then_grow(*args: Any, **kwargs: Any) -> Any:
        listing = real(*args, **kwargs)
        path.write_bytes(b"#" * (MAX_FILE_BYTES + 10))
        return listing

    monkeypatch.setattr(loader, "list_files", list_then_grow)
    (problem,) = load_manifests(tmp_path).problems
    assert problem.message.startswith(f"file too large: {MAX_FILE_BYTES + 10} bytes")


def test_the_number_of_files_is_bounded(tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path / f"m{i}.yaml", manifest(f"m{i}"))
    listing = list_files(tmp_path, max_files=3)
    assert len(listing.entries) == 3
    assert [p.message for p in listing.problems] == [
        "more than 3 manifest files under the source root; the rest is not read"]
    result = load_manifests(tmp_path, max_files=3)
    assert len(result.commands) == 3 and not result.clean


def test_the_number_of_entries_is_bounded(tmp_path: Path) -> None:
    for i in range(10):
        write(tmp_path / f"n{i}.txt", "")
    listing = list_files(tmp_path, max_entries=4)
    assert listing.entries == ()
    assert [p.message for p in listing.problems] == [
        "more than 4 entries under the source root; the rest is not listed"]


# ------------------------------------------------------------------ the watcher


def test_the_watcher_sees_edits_additions_and_removals(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", manifest("a"))
    watcher = SourceWatcher(tmp_path)
    watcher.mark()
    assert not watcher.changed()
    a.write_text(manifest("a", "  rerun: '2'\n"))
    assert watcher.changed()
    watcher.mark()
    write(tmp_path / "n" / "b.yaml", manifest("b"))
    assert watcher.changed()
    watcher.mark()
    (tmp_path / "n" / "b.yaml").unlink()
    assert watcher.changed()


def test_the_watcher_ignores_a_touch_without_a_change(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", manifest("a"))
    watcher = SourceWatcher(tmp_path)
    watcher.mark()
    os.utime(a, ns=(1, 1))
    assert not watcher.changed()


def test_the_watcher_survives_a_vanishing_root(tmp_path: Path) -> None:
    root = tmp_path / "m"
    write(root / "a.yaml", manifest("a"))
    watcher = SourceWatcher(root)
    watcher.mark()
    shutil.rmtree(root)
    assert watcher.changed()


# ------------------------------------------------------------------ the ConfigMap layout


def configmap_mount(mount: Path, data: dict[str, str], stamp: str = "..2024_05_01_10_00_00.1"
                    ) -> None:
    """The layout a kubelet writes for a ConfigMap volume (atomic writer)."""
    mount.mkdir(exist_ok=True)
    (mount / stamp).mkdir()
    for key, text in data.items():
        (mount / stamp / key).write_text(text)
    tmp = mount / "..data_tmp"
    tmp.symlink_to(stamp)
    os.replace(tmp, mount / "..data")
    for key in data:
        if not (mount / key).is_symlink():
            (mount / key).symlink_to(f"..data/{key}")


def test_a_configmap_mount_with_path_encoded_keys(tmp_path: Path) -> None:
    mount = tmp_path / "manifests"
    configmap_mount(mount, {
        "team-a__jobs__reindex.yaml": manifest("reindex", "  paylod: {}\n"),
        "team-a__provision.yaml": manifest("provision"),
        "top.yml": manifest("top"),
    })
    assert is_configmap_mount(mount)
    result = load_manifests(mount)
    assert result.files == 3  # the ..data and ..2024 folders are not listed again
    assert sorted(c.name for c in result.commands) == ["provision", "top"]
    assert [c.file for c in result.commands] == [
        f"{mount}/team-a/provision.yaml", f"{mount}/top.yml"]
    assert lines(result) == [f"{mount}/team-a/jobs/reindex.yaml:8: reindex: spec.paylod: "
                             "unknown field 'paylod' (did you mean 'payload'?)"]
    assert result.invalid_names["reindex"].file == f"{mount}/team-a/jobs/reindex.yaml"


def test_a_configmap_update_is_seen_by_the_watcher(tmp_path: Path) -> None:
    mount = tmp_path / "m"
    configmap_mount(mount, {"a.yaml": manifest("a")})
    watcher = SourceWatcher(mount)
    watcher.mark()
    assert not watcher.changed()
    configmap_mount(mount, {"a.yaml": manifest("a", "  rerun: '2'\n")},
                    stamp="..2024_05_01_10_05_00.2")
    assert watcher.changed()
    assert load_manifests(mount).commands[0].rerun == "2"


def test_keys_are_not_decoded_outside_a_configmap_mount(tmp_path: Path) -> None:
    write(tmp_path / "a__b.yaml", "{")
    assert [p.file for p in load_manifests(tmp_path).problems] == [f"{tmp_path}/a__b.yaml"]
    assert [e.display for e in list_files(tmp_path, path_keys=True).entries] == [
        f"{tmp_path}/a/b.yaml"]


def test_configmap_key_round_trip() -> None:
    assert configmap_key("team-a/jobs/reindex.yaml") == "team-a__jobs__reindex.yaml"
    assert configmap_path("team-a__jobs__reindex.yaml") == "team-a/jobs/reindex.yaml"
    for bad in ("a__b/c.yaml", ".hidden/a.yaml", "a b.yaml", "x" * 250 + "/a.yaml"):
        with pytest.raises(ValueError):
            configmap_key(bad)


def test_the_recipe_prints_kubectl_from_file_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "team-a" / "jobs" / "reindex.yaml", manifest("r"))
    write(tmp_path / "top.yml", manifest("t"))
    write(tmp_path / "README.md", "")
    assert configmap.main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"--from-file=team-a__jobs__reindex.yaml={tmp_path}/team-a/jobs/reindex.yaml",
        f"--from-file=top.yml={tmp_path}/top.yml"]
    write(tmp_path / "a__b" / "c.yaml", "")
    assert configmap.main([str(tmp_path)]) == 1


def test_validate_cli_on_a_configmap_mount(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mount = tmp_path / "m"
    configmap_mount(mount, {"team-a__x.yaml": "{ broken"})
    assert cli_main(["validate", str(mount)]) == 1
    assert capsys.readouterr().out.startswith(f"{mount}/team-a/x.yaml:1: -: YAML syntax error")


def test_shown_as_and_an_explicit_revision(tmp_path: Path) -> None:
    write(tmp_path / "sub" / "a.yaml", manifest("a"))
    write(tmp_path / "b.yaml", "{")
    result = load_manifests(tmp_path, revision="abc", shown_as="manifests")
    assert result.revision == "abc"
    assert [c.file for c in result.commands] == ["manifests/sub/a.yaml"]
    assert [p.file for p in result.problems] == ["manifests/b.yaml"]
    bare = load_manifests(tmp_path, shown_as="")
    assert [c.file for c in bare.commands] == ["sub/a.yaml"]
    with pytest.raises(ValueError):
        load_manifests(tmp_path, tmp_path, shown_as="x")


def test_the_configmap_recipe_works_on_a_folder_reached_through_a_symlink(tmp_path, capsys):
    from reconciler.source.configmap import main

    real = tmp_path / "real" / "team-a" / "jobs"
    real.mkdir(parents=True)
    (real / "x.yaml").write_text("a: 1\n")
    (tmp_path / "current").symlink_to(tmp_path / "real")  # git-sync's /git/current
    assert main([str(tmp_path / "current")]) == 0
    assert capsys.readouterr().out.startswith("--from-file=team-a__jobs__x.yaml=")
