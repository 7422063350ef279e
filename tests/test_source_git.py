"""The built-in git follower against real git: a bare repository in tmp_path, reached by
``file://``, ``git daemon`` on loopback and smart HTTP with a token; commits, force-pushes
and reverts made by the tests."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from git_support import GitDaemon, Remote, SmartHttp, git_daemon, manifest

from reconciler.errors import SourceError
from reconciler.source.git import GitSettings, GitSource

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")


def names(source: GitSource) -> list[str]:
    return sorted(c.name for c in source.load().commands)


def follower(remote_url: str, cache: Path, **kwargs: object) -> GitSource:
    return GitSource(GitSettings(url=remote_url, cache_dir=cache, timeout=30,
                                 **kwargs))  # type: ignore[arg-type]


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path / "srv")
    r.commit({"manifests/a.yaml": manifest("a"), "README.md": "# repo\n"}, "first")
    return r


@pytest.fixture
def daemon(tmp_path: Path, remote: Remote) -> Iterator[GitDaemon]:
    with git_daemon(remote.base) as d:
        yield d


@pytest.fixture(params=["file", "git-daemon"])
def url(request: pytest.FixtureRequest, remote: Remote) -> Iterator[str]:
    if request.param == "file":
        yield remote.url
    else:
        with git_daemon(remote.base) as d:
            yield d.url()


# ------------------------------------------------------------------ following the ref


def test_the_follower_follows_the_ref(tmp_path: Path, remote: Remote, url: str) -> None:
    source = follower(url, tmp_path / "cache", path="manifests/")
    assert source.fetch() is True
    first = remote.head()
    assert source.revision == first
    result = source.load()
    assert result.revision == first
    assert [(c.name, c.file) for c in result.commands] == [("a", "manifests/a.yaml")]
    assert source.fetch() is False  # nothing new
    second = remote.commit({"manifests/team/b.yaml": manifest("b")})
    assert not source.changed()
    assert source.fetch() is True
    assert source.changed()
    assert names(source) == ["a", "b"] and source.revision == second
    assert not source.changed()
    status = source.status()
    assert (status.kind, status.revision, status.errors, status.last_error) == (
        "git", second, 0, None)
    assert status.last_success is not None


def test_a_force_push_to_an_older_tree_is_followed(
    tmp_path: Path, remote: Remote, url: str
) -> None:
    first = remote.head()
    source = follower(url, tmp_path / "cache", path="manifests")
    source.fetch()
    for i in range(3):
        remote.commit({f"manifests/n{i}.yaml": manifest(f"n{i}")})
        source.fetch()
    assert names(source) == ["a", "n0", "n1", "n2"]
    remote.force_push(first)
    assert source.fetch() is True
    assert source.revision == first and names(source) == ["a"]


def test_a_revert_is_followed(tmp_path: Path, remote: Remote, url: str) -> None:
    source = follower(url, tmp_path / "cache", path="manifests")
    source.fetch()
    remote.commit({"manifests/a.yaml": manifest("a", command="vacuum")})
    source.fetch()
    assert source.load().commands[0].command == "vacuum"
    reverted = remote.revert()
    assert source.fetch() is True and source.revision == reverted
    assert source.load().commands[0].command == "reindex"


def test_git_path_selects_a_subfolder(tmp_path: Path, remote: Remote) -> None:
    remote.commit({"other/x.yaml": "{ not a manifest", "manifests/deep/c.yml": manifest("c")})
    source = follower(remote.url, tmp_path / "cache", path="manifests")
    source.fetch()
    result = source.load()
    assert result.problems == ()
    assert [c.file for c in result.commands] == ["manifests/a.yaml", "manifests/deep/c.yml"]
    whole = follower(remote.url, tmp_path / "cache2")
    whole.fetch()
    assert [p.file for p in whole.load().problems] == ["other/x.yaml"]


def test_a_commit_without_the_git_path_keeps_the_last_tree(
    tmp_path: Path, remote: Remote
) -> None:
    source = follower(remote.url, tmp_path / "cache", path="manifests")
    source.fetch()
    served = source.revision
    remote.commit({"manifests/a.yaml": None, "elsewhere.txt": "moved away"})
    with pytest.raises(SourceError, match="--git-path 'manifests' is not a folder"):
        source.fetch()
    assert source.revision == served and names(source) == ["a"]
    assert source.errors == 1


def test_another_branch_and_a_tag(tmp_path: Path, remote: Remote) -> None:
    from git_support import git

    git("-C", str(remote.work), "tag", "v1")
    git("-C", str(remote.work), "push", "--quiet", "origin", "v1")
    remote.commit({"manifests/b.yaml": manifest("b")})
    tagged = follower(remote.url, tmp_path / "t", ref="v1", path="manifests")
    tagged.fetch()
    assert names(tagged) == ["a"]
    missing = follower(remote.url, tmp_path / "m", ref="nope")
    with pytest.raises(SourceError, match="the ref is not on the remote"):
        missing.fetch()


def test_old_trees_are_removed_after_the_switch(tmp_path: Path, remote: Remote) -> None:
    source = follower(remote.url, tmp_path / "cache")
    shas = []
    for i in range(4):
        remote.commit({f"manifests/n{i}.yaml": manifest(f"n{i}")})
        source.fetch()
        shas.append(source.revision)
    trees = sorted(os.listdir(tmp_path / "cache" / "trees"))
    assert trees == sorted(shas[-2:])  # the current one and the previous one
    assert os.readlink(tmp_path / "cache" / "current") == f"trees/{shas[-1]}"


def test_a_cache_that_survives_a_restart_is_served_before_any_fetch(
    tmp_path: Path, remote: Remote
) -> None:
    follower(remote.url, tmp_path / "cache").fetch()
    again = follower("git://127.0.0.1:9/unreachable.git", tmp_path / "cache")
    assert again.revision == remote.head()
    assert names(again) == ["a"]


# ------------------------------------------------------------------ an unreachable remote


def test_an_unreachable_remote_keeps_the_last_tree_and_counts_errors(
    tmp_path: Path, remote: Remote, daemon: GitDaemon
) -> None:
    source = follower(daemon.url(), tmp_path / "cache", path="manifests")
    assert source.refresh() is True
    served = source.revision
    last_success = source.last_success
    daemon.stop()
    remote.commit({"manifests/b.yaml": manifest("b")})
    assert source.refresh() is False
    with pytest.raises(SourceError, match=r"Connection refused|unable to connect"):
        source.fetch()
    status = source.status()
    assert status.errors == 2 and status.revision == served
    assert status.last_success == last_success
    assert status.last_error is not None and daemon.url() in status.last_error
    assert names(source) == ["a"]
    daemon.start()
    assert source.refresh() is True and names(source) == ["a", "b"]
    assert source.status().last_error is None


def test_a_fetch_that_hangs_is_cut_by_the_timeout(tmp_path: Path) -> None:
    import socket

    with socket.socket() as server:  # accepts, never answers
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        source = GitSource(GitSettings(url=f"git://127.0.0.1:{port}/x.git",
                                       cache_dir=tmp_path / "c", timeout=1))
        with pytest.raises(SourceError, match="timed out after 1s"):
            source.fetch()
    assert source.errors == 1


# ------------------------------------------------------------------ credentials


def test_a_token_is_sent_as_a_header_and_never_shown(tmp_path: Path, remote: Remote) -> None:
    token = "tok-3c8f1e5d0a"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    basic = base64.b64encode(f"x-access-token:{token}".encode()).decode()
    with SmartHttp(remote.base, f"Basic {basic}") as server:
        source = follower(server.url(), tmp_path / "cache", path="manifests",
                          token_file=token_file)
        assert source.fetch() is True
        assert names(source) == ["a"]
        assert f"Basic {basic}" in server.seen
        token_file.write_text("rotated-but-wrong\n")  # re-read at every fetch
        with pytest.raises(SourceError) as exc:
            source.fetch()
    message = str(exc.value)
    assert "refused the credentials" in message
    for secret in (token, basic, "rotated-but-wrong"):
        assert secret not in message
        assert not any(secret in arg for argv in source.commands for arg in argv)
        assert secret not in (source.last_error or "")
    assert source.revision is not None and names(source) == ["a"]


def test_an_unreachable_https_remote_with_a_token_has_no_token_in_the_error(
    tmp_path: Path,
) -> None:
    from git_support import free_port

    token_file = tmp_path / "token"
    token_file.write_text("very-secret-token")
    source = follower(f"http://127.0.0.1:{free_port()}/x.git", tmp_path / "c",
                      token_file=token_file)
    assert source.refresh() is False
    assert source.errors == 1
    assert source.last_error is not None and "very-secret-token" not in source.last_error
    assert "very-secret-token" not in repr(source.status())
    assert not any("very-secret-token" in a for argv in source.commands for a in argv)


def test_no_prompt_without_credentials(tmp_path: Path, remote: Remote) -> None:
    with SmartHttp(remote.base, "Basic nothing-matches") as server:
        source = follower(server.url(), tmp_path / "cache")
        with pytest.raises(SourceError, match="give --git-token-file"):
            source.fetch()


# ------------------------------------------------------------------ the follow loop


async def test_follow_fetches_on_a_poke_debounced(tmp_path: Path, remote: Remote) -> None:
    source = follower(remote.url, tmp_path / "cache", interval=3600, debounce=0.2)
    source.fetch()
    source.load()
    calls = 0
    real = source.refresh

    def counting() -> bool:
        nonlocal calls
        calls += 1
        return real()

    source.refresh = counting  # type: ignore[method-assign]
    reasons: list[str] = []
    task = asyncio.ensure_future(source.follow(reasons.append))
    await asyncio.sleep(0.05)
    second = remote.commit({"manifests/b.yaml": manifest("b")})
    for _ in range(5):  # a burst of webhooks: one fetch
        source.poke()
    for _ in range(200):
        if reasons:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    task.cancel()
    assert reasons == [f"git {second[:12]}"]
    assert calls == 1
    assert source.changed() and names(source) == ["a", "b"]


async def test_follow_fetches_every_interval(tmp_path: Path, remote: Remote) -> None:
    source = follower(remote.url, tmp_path / "cache", interval=0.1, debounce=0)
    source.fetch()
    reasons: list[str] = []
    task = asyncio.ensure_future(source.follow(reasons.append))
    remote.commit({"manifests/b.yaml": manifest("b")})
    for _ in range(200):
        if reasons:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert reasons == [f"git {remote.head()[:12]}"]


def test_a_second_process_on_the_same_cache_is_refused(tmp_path: Path, remote: Remote) -> None:
    import fcntl

    cache = tmp_path / "cache"
    cache.mkdir()
    with open(cache / "lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(SourceError, match="in use by another process"):
            follower(remote.url, cache).fetch()
