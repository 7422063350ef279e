"""The ``Source`` kinds: the directory source, ``--manifests`` URL hints, git settings checks,
URL and message scrubbing (no git process needed here; real git is in test_source_git)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from reconciler.errors import ConfigError, ReconcilerError, SourceError
from reconciler.source.git import (
    GitSettings,
    GitSource,
    default_cache_dir,
    safe_url,
    scrub,
)
from reconciler.source.kinds import (
    DirectorySource,
    Source,
    check_manifests_path,
    looks_like_git_url,
    open_source,
)


def manifest(name: str) -> str:
    return ("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\nspec:\n  serviceName: sales\n  command: go\n")


# ------------------------------------------------------------------ --manifests URL hint


@pytest.mark.parametrize("value", [
    "https://github.com/acme/manifests.git", "http://git.local/x", "ssh://git@host/x.git",
    "git@github.com:acme/manifests.git", "file:///srv/git/x.git", "git://host/x",
    "manifests.git", "../nowhere/x.git/",
])
def test_a_git_url_given_to_manifests_says_use_git_url(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        check_manifests_path(value)
    assert "use --git-url" in str(exc.value)


def test_the_hint_never_shows_a_password() -> None:
    with pytest.raises(ConfigError) as exc:
        check_manifests_path("https://bob:hunter2@github.com/acme/x.git")
    assert "hunter2" not in str(exc.value) and "bob" not in str(exc.value)
    assert "use --git-url https://github.com/acme/x.git" in str(exc.value)


@pytest.mark.parametrize("value", ["manifests", "./manifests/", "/etc/manifests", "a:b",
                                   "C:/x", "team@2024"])
def test_paths_are_not_urls(value: str) -> None:
    assert not looks_like_git_url(value)
    check_manifests_path(value)


def test_a_checkout_folder_named_dot_git_is_a_path_but_a_bare_repo_is_not(
    tmp_path: Path,
) -> None:
    clone = tmp_path / "manifests.git"
    clone.mkdir()
    (clone / "a.yaml").write_text(manifest("a"))
    assert not looks_like_git_url(str(clone))
    bare = tmp_path / "bare.git"
    (bare / "objects").mkdir(parents=True)
    (bare / "HEAD").write_text("ref: refs/heads/main\n")
    assert looks_like_git_url(str(bare))


# ------------------------------------------------------------------ the directory source


def test_directory_source_loads_watches_and_reports(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a"))
    source = DirectorySource(tmp_path, watch_period=0.01)
    assert isinstance(source, Source)
    assert source.kind == "directory"
    result = source.load()
    assert [c.name for c in result.commands] == ["a"]
    assert not source.changed()
    (tmp_path / "b.yaml").write_text(manifest("b"))
    assert source.changed() and source.refresh() is False  # changed() saw it already
    status = source.status()
    assert (status.kind, status.location, status.errors) == ("directory", str(tmp_path), 0)
    assert status.revision == result.revision and status.last_success is not None
    assert source.snapshot().root == tmp_path


def test_directory_source_counts_a_missing_root(tmp_path: Path) -> None:
    source = DirectorySource(tmp_path / "nope")
    result = source.load()
    assert not result.clean
    assert source.status().errors == 1


def test_a_git_sync_checkout_is_its_own_kind(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    tree = tmp_path / ".worktrees" / sha / "manifests"
    tree.mkdir(parents=True)
    (tree / "a.yaml").write_text(manifest("a"))
    (tmp_path / "current").symlink_to(tmp_path / ".worktrees" / sha)
    source = DirectorySource(tmp_path / "current" / "manifests")
    assert source.kind == "git-sync"
    assert source.load().revision == sha


async def test_directory_follow_calls_back_on_a_change(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a"))
    source = DirectorySource(tmp_path, watch_period=0.01)
    source.load()
    reasons: list[str] = []
    task = asyncio.ensure_future(source.follow(reasons.append))
    await asyncio.sleep(0.05)
    assert reasons == []
    (tmp_path / "a.yaml").write_text(manifest("b"))
    for _ in range(100):
        if reasons:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert reasons and reasons[0] == "manifests changed"


def test_open_source_takes_exactly_one(tmp_path: Path) -> None:
    assert isinstance(open_source(tmp_path), DirectorySource)
    git = open_source(git=GitSettings(url="https://h/x.git", cache_dir=tmp_path / "c"))
    assert isinstance(git, GitSource) and isinstance(git, Source)
    with pytest.raises(ConfigError):
        open_source()
    with pytest.raises(ConfigError):
        open_source(tmp_path, git=GitSettings(url="https://h/x.git"))
    with pytest.raises(ConfigError, match="use --git-url"):
        open_source("https://h/x.git")


# ------------------------------------------------------------------ git settings


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"url": "https://u:pw@h/x.git"}, "password"),
    ({"url": "ext::sh%-c%touch"}, "refused"),
    ({"url": "--upload-pack=touch /tmp/x"}, "not a URL"),
    ({"url": "ftp://h/x"}, "unsupported scheme"),
    ({"url": "nothing"}, "not a git URL"),
    ({"url": "https://h/x", "ref": "-x"}, "--git-ref"),
    ({"url": "https://h/x", "ref": "a..b"}, "--git-ref"),
    ({"url": "https://h/x", "ref": "a b"}, "--git-ref"),
    ({"url": "https://h/x", "path": "../etc"}, "--git-path"),
    ({"url": "https://h/x", "path": "a/./b"}, "--git-path"),
    ({"url": "ssh://h/x", "token_file": Path("t")}, "https"),
    ({"url": "http://example.com/x", "token_file": Path("t")}, "in clear"),
    ({"url": "https://h/x", "ssh_key_file": Path("k"), "known_hosts_file": Path("k")},
     "ssh"),
    ({"url": "git@h:x.git", "ssh_key_file": Path("k")}, "known-hosts"),
    ({"url": "https://h/x", "token_file": Path("t"), "ssh_key_file": Path("k")}, "exclude"),
    ({"url": "https://h/x", "interval": 0}, "interval"),
])
def test_bad_git_settings_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        GitSettings(**kwargs)  # type: ignore[arg-type]


def test_good_git_settings() -> None:
    s = GitSettings(url="https://bot@github.com/acme/m.git", ref="release/v2", path="/m/")
    assert s.subpath == "m" and s.scheme == "https"
    assert s.location == "https://github.com/acme/m.git@release/v2:m"
    assert GitSettings(url="git@github.com:acme/m.git").scheme == "ssh"
    assert GitSettings(url="http://127.0.0.1:1/x", token_file=Path("t")).scheme == "http"


def test_safe_url() -> None:
    assert safe_url("https://user:pw@h:8443/x.git") == "https://h:8443/x.git"
    assert safe_url("https://h/x.git") == "https://h/x.git"
    assert safe_url("git@h:x.git") == "git@h:x.git"


def test_scrub_removes_tokens_headers_and_user_info() -> None:
    text = ("fatal: unable to access 'https://x-access-token:tok123@h/x.git/': 401\n"
            "Authorization: Basic dG9rMTIz\nsaw tok123 again")
    out = scrub(text, ["tok123"])
    assert "tok123" not in out and "dG9rMTIz" not in out
    assert "\n" not in out
    assert len(scrub("x" * 5000, [])) <= 600


def test_default_cache_dir(tmp_path: Path) -> None:
    state = tmp_path / "state" / "db.sqlite"
    a = default_cache_dir(str(state), "https://h/x.git", "main", "m")
    assert a.parent == tmp_path / "state" / ".reconciler-git"
    assert a != default_cache_dir(str(state), "https://h/x.git", "dev", "m")
    assert a == default_cache_dir(str(state), "https://bob@h/x.git", "main", "m/")
    pg = default_cache_dir("postgresql://db/x", "https://h/x.git")
    assert str(pg).startswith(os.path.join(os.environ.get("TMPDIR", "/tmp"), "reconciler-git-"))


def test_a_source_error_is_a_reconciler_error() -> None:
    assert issubclass(SourceError, ReconcilerError)


def test_no_tree_yet_is_a_source_error(tmp_path: Path) -> None:
    source = GitSource(GitSettings(url="https://h/x.git", cache_dir=tmp_path))
    with pytest.raises(SourceError, match="no tree yet"):
        source.load()
    assert source.revision is None and source.changed() is False


def test_the_environment_carries_the_token_and_the_argv_does_not(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("ghp_secretvalue\n")
    source = GitSource(GitSettings(url="https://github.com/a/b.git", token_file=token,
                                   cache_dir=tmp_path / "c"))
    env = source._env()
    basic = base64.b64encode(b"x-access-token:ghp_secretvalue").decode()
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"] == f"Authorization: Basic {basic}"
    argv = source.argv("fetch", "--", source.settings.url, git_dir=source.repo)
    assert not any("ghp_secretvalue" in a or basic in a for a in argv)
    assert "http.followRedirects=false" in argv and "credential.helper=" in argv
    base = source.base_env()
    assert base["GIT_TERMINAL_PROMPT"] == "0" and base["GIT_CONFIG_GLOBAL"] == os.devnull
    assert set(source.secrets()) == {"ghp_secretvalue", basic}


def test_the_ssh_command(tmp_path: Path) -> None:
    source = GitSource(GitSettings(url="git@github.com:a/b.git",
                                   ssh_key_file=tmp_path / "id key",
                                   known_hosts_file=tmp_path / "known_hosts",
                                   cache_dir=tmp_path / "c"))
    command = source._env()["GIT_SSH_COMMAND"]
    assert f"-i '{tmp_path}/id key'" in command
    for option in ("IdentitiesOnly=yes", "StrictHostKeyChecking=yes", "BatchMode=yes",
                   f"UserKnownHostsFile={tmp_path}/known_hosts"):
        assert option in command


async def test_directory_follow_sees_a_new_file_by_its_event_not_the_poll(
        tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(manifest("a"))
    source = DirectorySource(tmp_path, watch_period=30.0)  # the poll alone: 30 s away
    source.load()
    reasons: list[str] = []
    task = asyncio.ensure_future(source.follow(reasons.append))
    await asyncio.sleep(0.3)  # the watch is set up
    (tmp_path / "b.yaml").write_text(manifest("b"))
    for _ in range(300):
        if reasons:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    assert reasons == ["manifests changed"]
