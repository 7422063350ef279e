"""The web view in a real browser: Debian's chromium driven by Playwright, against a real
``reconciler run`` process and the emulator, over the scene of ``tests/web_support.py``
(succeeded, failed, stalled, pending, waiting, suspended and invalid manifests).

What a person sees: every state in words (and in colour), the banners, the history of a
failed command, what a manifest waits for, the live update after a change in the manifests
(without a reload), the filters without JavaScript, keyboard navigation, page titles, and
the security policy (headers present, inline script and style refused, no console error).
Screenshots go to ``tests/artefacts/`` (``docs/web-view.png`` is a copy of the overview's).

One browser and one daemon per module; chromium is ``/usr/bin/chromium`` (``.ci/tools.sh``
installs it): without it the tests are skipped, and fail when ``CI`` is set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from observability_support import Proc, daemon_env, missing_tool, start_daemon
from web_support import (
    ARTEFACTS,
    SETTLED,
    TOKEN,
    add_manifest,
    emulator,
    states,
    wait_settled,
    write_scene,
)

from reconciler.ailake.emulator import RunningEmulator
from reconciler.observe.web import CSP

CHROMIUM = "/usr/bin/chromium"
if not os.access(CHROMIUM, os.X_OK):
    missing_tool(f"{CHROMIUM} (Debian package chromium)")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e '.[dev]')")
expect = sync_api.expect


@pytest.fixture(scope="module")
def lake() -> Iterator[RunningEmulator]:
    with emulator() as emu:
        yield emu


@dataclass
class Scene:
    url: str
    manifests: Path
    state: Path
    daemon: Proc


@pytest.fixture(scope="module")
def scene(lake: RunningEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    root = tmp_path_factory.mktemp("web-view")
    manifests = write_scene(root / "manifests")
    daemon = start_daemon(root / "daemon", manifests=manifests, api_url=lake.url,
                          env=daemon_env(RECONCILER_API_TOKEN=TOKEN), interval="60s")
    try:
        wait_settled(daemon.url)
        yield Scene(daemon.url, manifests, root / "daemon" / "state.db", daemon)
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class View:
    """A page of a fresh browser context, and what went wrong on it (console errors,
    uncaught exceptions, Content-Security-Policy violations)."""

    page: Any
    url: str
    console: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        return self.page.goto(self.url + path, wait_until="load")

    def assert_clean(self) -> None:
        assert self.console == [] and self.violations == [], (self.console, self.violations)


def open_view(browser: Any, url: str, **options: Any) -> View:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, **options)
    view = View(context.new_page(), url)
    context.expose_function("__cspViolation", lambda text: view.violations.append(text))
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', e => "
        "window.__cspViolation(e.violatedDirective + ' ' + (e.blockedURI || 'inline')));")
    view.page.on("console", lambda m: view.console.append(m.text) if m.type == "error"
                 else None)
    view.page.on("pageerror", lambda e: view.console.append(f"uncaught: {e}"))
    return view


@pytest.fixture
def view(browser: Any, scene: Scene) -> Iterator[View]:
    opened = open_view(browser, scene.url)
    yield opened
    opened.page.context.close()


def row(view: View, name: str) -> Any:
    return view.page.locator(f'#manifests tr[data-name="{name}"]')


def cell(view: View, name: str, column: int) -> Any:
    return row(view, name).locator("td").nth(column)


def screenshot(view: View, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    view.page.screenshot(path=str(ARTEFACTS / name), full_page=True)


# ---------------------------------------------------------------- the overview


def test_the_overview_shows_every_manifest_and_its_state_in_words_and_colour(
        view: View) -> None:
    view.goto("/")
    page = view.page
    expect(page).to_have_title("ailake-reconciler — overview")
    for name, state in SETTLED.items():
        expect(row(view, name).locator(".state")).to_have_text(state)
    colours = {s: row(view, n).locator(".state").evaluate(
        "e => getComputedStyle(e).backgroundColor") for n, s in
        (("provision-db", "in_sync"), ("flaky-refresh", "failed"),
         ("nightly-export", "stalled"), ("reindex-vectors", "pending"))}
    assert len(set(colours.values())) == 4, colours
    # pending: how long it runs, its deadline, attempt 1 running
    expect(cell(view, "reindex-vectors", 5)).to_have_text("1")
    expect(cell(view, "reindex-vectors", 6)).to_have_text(re.compile(r"^\d+s$"))
    expect(cell(view, "reindex-vectors", 7)).to_have_text(re.compile(r"^in (59m|1h)"))
    expect(cell(view, "reindex-vectors", 8)).to_have_text("running")
    # stalled after two failed attempts, with the error's title
    expect(cell(view, "nightly-export", 5)).to_have_text("2")
    expect(cell(view, "nightly-export", 8)).to_have_text("failed")
    expect(cell(view, "nightly-export", 10)).to_have_text("Command failed")
    expect(cell(view, "flaky-refresh", 1)).to_contain_text("waiting to retry")
    expect(cell(view, "backfill-orders", 1)).to_contain_text(
        "waiting for dependency 'reindex-vectors' (pending)")
    expect(cell(view, "provision-db", 0)).to_contain_text("team=data")
    expect(cell(view, "nightly-report", 4)).to_have_text("0 3 * * * (UTC)")
    # the banners: invalid manifests with FILE:LINE, the source, leadership
    expect(page.locator("#invalid-list")).to_contain_text(
        re.compile(r"broken-doc\.yaml:\d+: broken-doc: spec\.timeout"))
    expect(page.locator(".source")).to_contain_text("directory")
    expect(page.locator(".source")).to_contain_text(re.compile(r"revision\s*sha256:"))
    expect(page.locator(".leadership")).to_have_text(
        "This replica acts alone (no leader election).")
    # the chains, drawn on the server: a box per manifest, its state in words
    expect(page.locator('svg a.node[data-name="reindex-vectors"]')).to_have_attribute(
        "aria-label", "reindex-vectors: pending")
    expect(page.locator('svg a.node[data-name="backfill-orders"] .node-state')).to_have_text(
        "waiting")
    screenshot(view, "overview.png")
    view.assert_clean()


def test_the_filters_work_without_javascript(browser: Any, scene: Scene) -> None:
    view = open_view(browser, scene.url, java_script_enabled=False)
    try:
        view.goto("/")
        page = view.page
        page.select_option("#f-state", "failed")
        page.get_by_role("button", name="Apply filters").click()
        page.wait_for_url(re.compile(r"\?state=failed(&|$)"))
        names = page.locator("#manifests tbody tr[data-name]")
        expect(names).to_have_count(1)
        expect(names.first).to_have_attribute("data-name", "flaky-refresh")
        page.get_by_role("link", name="Clear filters").click()
        page.wait_for_url(re.compile(r"/$"))
        page.fill("#f-label", "team=data")
        page.press("#f-label", "Enter")
        page.wait_for_url(re.compile(r"label=team%3Ddata"))
        expect(names).to_have_count(1)
        expect(names.first).to_have_attribute("data-name", "provision-db")
        # a state's count link keeps the other filters: stalled with team=data is none
        page.locator('#counts a[data-state="stalled"]').click()
        page.wait_for_url(re.compile(r"state=stalled"))
        expect(page.locator("#manifests .empty")).to_have_text("No manifest matches.")
        page.get_by_role("link", name="Clear filters").click()
        page.wait_for_url(re.compile(r"/$"))
        page.locator('#counts a[data-state="stalled"]').click()
        page.wait_for_url(re.compile(r"/\?state=stalled$"))
        expect(names).to_have_count(1)
        expect(names.first).to_have_attribute("data-name", "nightly-export")
        expect(page.locator("#shown")).to_contain_text("(filtered)")
        screenshot(view, "overview-filtered.png")
        view.assert_clean()
    finally:
        view.page.context.close()


# ---------------------------------------------------------------- one manifest


def test_the_history_of_a_failed_command(view: View, scene: Scene) -> None:
    view.goto("/")
    page = view.page
    row(view, "nightly-export").get_by_role("link", name="nightly-export").click()
    expect(page).to_have_title("nightly-export — ailake-reconciler")
    history = subprocess.run(
        [sys.executable, "-m", "reconciler", "history", "nightly-export", "--state",
         str(scene.state), "--output", "json"], capture_output=True, text=True, check=True,
        env=daemon_env())
    recorded = json.loads(history.stdout)
    lines = page.locator("#history-rows tr")
    expect(lines).to_have_count(2)
    for line, op in zip((lines.nth(0), lines.nth(1)), reversed(recorded), strict=True):
        cells = line.locator("td")
        expect(cells.nth(0)).to_have_text(str(op["attempt"]))
        expect(cells.nth(1)).to_have_text(op["operationId"])
        expect(cells.nth(7)).to_have_text("failed")
        expect(cells.nth(8)).to_have_text(re.compile(
            r"^Command failed: command 'bad' of service \S+ failed \(execution \d+"))
    expect(page.locator("#now [data-field=state]")).to_have_text("stalled")
    expect(page.locator("#retry-command")).to_have_text(
        f"reconciler retry nightly-export --state {scene.state}")
    expect(page.locator("#retry-why")).to_contain_text("It is stalled")
    expect(page.locator("#waits")).to_contain_text("no new attempt comes by itself")
    screenshot(view, "manifest.png")

    view.goto("/manifests/backfill-orders")
    waits = page.locator("#waits")
    expect(waits).to_contain_text("reindex-vectors: pending (not met)")
    waits.get_by_role("link", name="reindex-vectors: pending").click()
    expect(page).to_have_title("reindex-vectors — ailake-reconciler")
    expect(page.locator("#now [data-field=elapsed]")).to_have_text(re.compile(r"^\d+s$"))
    expect(page.locator("#now [data-field=deadline]")).to_have_text(re.compile(r"^in "))
    expect(page.locator("#retry-why")).to_contain_text("nothing to retry")
    expect(page.locator("svg a.node-current")).to_have_attribute("data-name",
                                                                 "reindex-vectors")
    view.goto("/manifests/paused-compaction")
    spec = page.locator(".spec")
    expect(spec).to_contain_text("[REDACTED]")
    assert TOKEN not in spec.inner_text() and "abc123def456" not in spec.inner_text()
    view.assert_clean()


def test_an_unknown_manifest_is_a_404_page(view: View) -> None:
    answer = view.goto("/manifests/no-such-manifest")
    assert answer.status == 404
    expect(view.page).to_have_title("not found — ailake-reconciler")
    expect(view.page.locator("h1")).to_have_text("No manifest named no-such-manifest")
    assert view.violations == []
    # the browser reports the 404 of the page itself, nothing else
    assert all("404" in message for message in view.console), view.console


# ---------------------------------------------------------------- live, keyboard, security


def test_the_overview_updates_itself_after_a_change_in_the_manifests(
        view: View, scene: Scene) -> None:
    view.goto("/")
    page = view.page
    page.evaluate("window.__notReloaded = true")
    kept = '#manifests tr[data-name="provision-db"]'
    page.evaluate(f"document.querySelector('{kept}').__mark = 'same element'")
    expect(page.locator("body")).to_have_attribute("data-script", "live")
    first_running = cell(view, "reindex-vectors", 6).inner_text()
    first_updated = page.locator("#updated").inner_text()
    add_manifest(scene.manifests, "late-arrival")
    expect(row(view, "late-arrival").locator(".state")).to_have_text("in_sync",
                                                                     timeout=25_000)
    assert page.evaluate("window.__notReloaded") is True  # the same document: no reload
    # a row that did not change is the same element (focus and selection stay)
    assert page.evaluate(f"document.querySelector('{kept}').__mark") == "same element"
    assert states(scene.url)["late-arrival"] == "in_sync"
    expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated \d\d:\d\d:\d\d UTC"))
    assert page.locator("#updated").inner_text() != first_updated
    expect(cell(view, "reindex-vectors", 6)).not_to_have_text(first_running)
    expect(page.locator("#shown")).to_contain_text(f"of {len(states(scene.url))} manifests")
    # one manifest's page keeps itself current too (every poll answered in full here,
    # so the script applies what it got)
    def without_etag(route: Any) -> None:
        headers = {k: v for k, v in route.request.headers.items() if k != "if-none-match"}
        route.continue_(headers=headers)

    page.route("**/ui/manifests/*.json", without_etag)
    view.goto("/manifests/reindex-vectors")
    shown = page.locator("#updated").inner_text()
    with page.expect_response(lambda r: "/ui/manifests/reindex-vectors.json" in r.url
                              and r.status == 200, timeout=12_000):
        pass
    expect(page.locator("#updated")).not_to_have_text(shown)
    expect(page.locator("#updated")).to_have_text(re.compile(r"^Updated .* \(live\)$"))
    expect(page.locator("#history-rows tr")).to_have_count(1)
    expect(page.locator("#now [data-field=state]")).to_have_text("pending")
    expect(page.locator("#now [data-field=elapsed]")).to_have_text(re.compile(r"^\d+s$"))
    expect(page.locator("#waits")).to_contain_text("migrate-schema: in_sync (met)")
    view.assert_clean()


def test_keyboard_navigation(view: View) -> None:
    view.goto("/")
    page = view.page
    page.keyboard.press("Tab")
    skip = page.evaluate("document.activeElement.textContent")
    assert skip == "Skip to content"
    box = page.evaluate("(() => { const r = document.activeElement.getBoundingClientRect();"
                        " return [r.top, r.height]; })()")
    assert box[0] >= 0 and box[1] > 0  # shown while focused
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.textContent")
        if focused == "nightly-export":
            break
    else:
        pytest.fail("Tab never reached the nightly-export link")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("none", ""), outline
    screenshot(view, "keyboard-focus.png")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/manifests/nightly-export$"))
    expect(page).to_have_title("nightly-export — ailake-reconciler")
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.closest('.crumbs') !== null"):
            break
    else:
        pytest.fail("Tab never reached the way back to the overview")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/$"))
    expect(page).to_have_title("ailake-reconciler — overview")
    view.assert_clean()


def test_the_security_policy_is_sent_and_enforced(view: View) -> None:
    page = view.page
    for path in ("/", "/manifests/nightly-export", "/ui/static/app.js", "/ui/overview.json"):
        answer = view.goto(path) if not path.startswith("/ui/") else \
            page.request.get(view.url + path)
        headers = answer.headers
        assert headers["content-security-policy"] == CSP, path
        assert headers["x-content-type-options"] == "nosniff", path
    view.goto("/")
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert page.evaluate("document.querySelectorAll('[style], style').length") == 0
    view.assert_clean()
    # what the policy refuses, the browser refuses: an inline script does not run, an
    # inline style does not apply, and each is reported as a violation
    page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.__ran = true'; document.body.appendChild(s);
        document.querySelector('h1').setAttribute('style', 'color: rgb(1, 2, 3)'); }""")
    deadline = time.monotonic() + 5
    while len(view.violations) < 2 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert page.evaluate("window.__ran === undefined")
    assert page.evaluate("getComputedStyle(document.querySelector('h1')).color") != \
        "rgb(1, 2, 3)"
    assert any(v.startswith("script-src") for v in view.violations), view.violations
    assert any(v.startswith("style-src") for v in view.violations), view.violations
