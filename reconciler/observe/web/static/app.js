// ailake-reconciler web view: live updates without a reload.
//
// The page names its JSON in <body data-live="..."> (the same query string as the page, so
// the filters hold) and the ETag of what it was rendered from (data-etag). Every
// data-poll-ms the script asks again with If-None-Match: an unchanged state costs a 304.
// It only reads; it builds every element with the DOM API (textContent), never from HTML
// text, and the page works without it.
(function () {
  "use strict";

  var body = document.body;
  var live = body.getAttribute("data-live");
  if (!live) { return; }
  var pollMs = parseInt(body.getAttribute("data-poll-ms") || "5000", 10);
  var etag = body.getAttribute("data-etag");
  var offset = 0; // the daemon's clock minus this browser's (from the Date header)
  var updated = document.getElementById("updated");
  var lastGood = new Date();
  var seen = {}; // row name -> its JSON, as last shown

  // ---------------------------------------------------------------- durations

  function goDuration(seconds) { // as reconciler.model.durations.format_duration
    if (seconds < 0) { return "-" + goDuration(-seconds); }
    var whole = Math.floor(seconds);
    var h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
    var out = (h ? h + "h" : "") + (m ? m + "m" : "");
    if (s || !out) { out += s + "s"; }
    return out;
  }

  function approx(seconds) { // as reconciler.observe.status.approx
    var sign = seconds < 0 ? "-" : "";
    seconds = Math.abs(seconds);
    if (seconds >= 600) { seconds = Math.round(seconds / 60) * 60; }
    return sign + goDuration(Math.round(seconds));
  }

  function now() { return Date.now() + offset; }

  function recount(root) {
    var i, el, t;
    var since = (root || document).querySelectorAll("[data-since]");
    for (i = 0; i < since.length; i++) {
      el = since[i];
      t = Date.parse(el.getAttribute("data-since"));
      if (!isNaN(t)) { el.textContent = approx(Math.max(0, (now() - t) / 1000)); }
    }
    var until = (root || document).querySelectorAll("[data-until]");
    for (i = 0; i < until.length; i++) {
      el = until[i];
      t = Date.parse(el.getAttribute("data-until"));
      if (isNaN(t)) { continue; }
      var left = (t - now()) / 1000;
      el.textContent = left >= 0 ? "in " + approx(left) : "passed " + approx(-left) + " ago";
    }
  }

  // ---------------------------------------------------------------- building blocks

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) { node.textContent = text; }
    if (cls) { node.className = cls; }
    return node;
  }

  function timed(attr, iso, text) {
    if (!iso) { return document.createTextNode(text); }
    var span = el("span", text);
    span.setAttribute(attr, iso);
    return span;
  }

  function field(name, text) {
    var nodes = document.querySelectorAll('[data-field="' + name + '"]');
    for (var i = 0; i < nodes.length; i++) { nodes[i].textContent = text; }
  }

  function cell(tr, child) {
    var td = el("td");
    if (child) { td.appendChild(child); }
    tr.appendChild(td);
    return td;
  }

  function text(value) { return document.createTextNode(value); }

  // ---------------------------------------------------------------- the overview

  function rowElement(r) {
    var tr = el("tr");
    tr.setAttribute("role", "row");
    tr.setAttribute("data-name", r.name);
    var first = cell(tr, null);
    var link = el("a", r.name);
    link.href = r.href;
    first.appendChild(link);
    r.labels.forEach(function (l) {
      first.appendChild(text(" "));
      first.appendChild(el("span", l, "label"));
    });
    var badge = cell(tr, el("span", r.state, "state state-" + r.state));
    if (r.reason) {
      badge.appendChild(text(" "));
      var why = el("span", r.reason, "reason");
      why.title = r.reason_full;
      badge.appendChild(why);
    }
    cell(tr, text(r.service));
    cell(tr, text(r.command));
    cell(tr, text(r.policy));
    cell(tr, text(r.attempt));
    cell(tr, timed("data-since", r.started_at, r.elapsed));
    cell(tr, timed("data-until", r.deadline_at, r.deadline));
    cell(tr, text(r.outcome));
    var rev = el("code", r.revision);
    rev.title = r.revision_full;
    cell(tr, rev);
    var err = null;
    if (r.error) { err = el("span", r.error, "error"); err.title = r.error_detail; }
    cell(tr, err);
    return tr;
  }

  var CHUNK = 100; // rows per <tbody> (reconciler.observe.web.render.CHUNK)

  function emptyBody() {
    var tbody = el("tbody", null, "chunk");
    tbody.setAttribute("role", "rowgroup");
    return tbody;
  }

  // the texts of a row's cells, as the daemon renders them (the moving ones, elapsed
  // time and deadline, are counted here and left out)
  function cellTexts(r) {
    var name = r.name + r.labels.map(function (l) { return " " + l; }).join("");
    return [name, r.state + (r.reason ? " " + r.reason : ""), r.service, r.command, r.policy,
            r.attempt, null, null, r.outcome, r.revision, r.error];
  }

  // whether the shown row ``tr`` already is ``r``: the same JSON as last applied or, for
  // a row as the page was rendered, the same texts in its cells
  function unchanged(r, json, tr) {
    if (seen[r.name] !== undefined) { return seen[r.name] === json; }
    var cells = tr.children, want = cellTexts(r);
    if (cells.length !== want.length) { return false; }
    for (var i = 0; i < want.length; i++) {
      if (want[i] !== null && cells[i].textContent !== want[i]) { return false; }
    }
    return true;
  }

  function applyRows(rows) {
    var table = document.getElementById("manifests");
    if (!table) { return; }
    var existing = {}, i, tr;
    var trs = table.querySelectorAll("tbody tr[data-name]");
    for (i = 0; i < trs.length; i++) { existing[trs[i].getAttribute("data-name")] = trs[i]; }
    var order = rows.map(function (r) { return r.name; }).join("\n");
    var shown = Array.prototype.map.call(trs, function (t) {
      return t.getAttribute("data-name");
    }).join("\n");
    var next = {};
    if (order === shown) { // the same rows: replace only those that changed
      rows.forEach(function (r) {
        var json = JSON.stringify(r), old = existing[r.name];
        next[r.name] = json;
        if (!unchanged(r, json, old)) { old.parentNode.replaceChild(rowElement(r), old); }
      });
      seen = next;
      return;
    }
    // rows came or went: rebuild the chunks in order
    var bodies = table.querySelectorAll("tbody");
    for (i = 0; i < bodies.length; i++) { table.removeChild(bodies[i]); }
    var tbody = null;
    rows.forEach(function (r, index) {
      var json = JSON.stringify(r);
      next[r.name] = json;
      if (index % CHUNK === 0) { tbody = emptyBody(); table.appendChild(tbody); }
      tr = existing[r.name];
      if (!tr || !unchanged(r, json, tr)) { tr = rowElement(r); }
      tbody.appendChild(tr);
    });
    if (!rows.length) {
      tbody = emptyBody();
      tr = el("tr", null, "empty");
      tr.setAttribute("role", "row");
      tr.appendChild(el("td", "No manifest matches."));
      tbody.appendChild(tr);
      table.appendChild(tbody);
    }
    seen = next;
  }

  function applyCounts(counts, total) {
    var list = document.getElementById("counts");
    if (!list) { return; }
    var params = new URLSearchParams(location.search);
    var current = params.get("state") || "";
    var first = list.querySelector("li");
    var allCount = first && first.querySelector(".count");
    if (allCount) { allCount.textContent = String(total); }
    while (first && first.nextSibling) { list.removeChild(first.nextSibling); }
    Object.keys(counts).forEach(function (state) {
      params.set("state", state);
      var li = el("li");
      var a = el("a", null, "state-link");
      a.href = "/?" + params.toString();
      a.setAttribute("data-state", state);
      if (state === current) { a.setAttribute("aria-current", "true"); }
      a.appendChild(el("span", state, "state state-" + state));
      a.appendChild(text(" "));
      a.appendChild(el("span", String(counts[state]), "count"));
      li.appendChild(a);
      list.appendChild(li);
    });
  }

  function applyBanners(data) {
    field("leadership", data.leadership);
    var lead = document.querySelector(".leadership");
    if (lead) { lead.className = "banner leadership leadership-" + data.leadershipKind; }
    if (data.source) {
      field("source-revision", data.source.revision);
      field("source-last-fetch", data.source.last_fetch);
      field("source-errors", String(data.source.errors));
      field("source-last-error", data.source.last_error || "none");
    }
    var withheld = document.querySelector('[data-field="withheld"]');
    if (withheld) {
      withheld.textContent = data.withheld ? "Orphaning withheld: " + data.withheld : "";
      withheld.classList.toggle("hidden", !data.withheld);
    }
    var box = document.getElementById("invalid"), list = document.getElementById("invalid-list");
    if (box && list) {
      list.textContent = "";
      data.invalid.forEach(function (p) {
        var li = el("li");
        li.appendChild(el("code", p));
        list.appendChild(li);
      });
      field("invalid-count", String(data.invalid.length));
      box.classList.toggle("hidden", data.invalid.length === 0);
    }
  }

  function applyChains(rows) {
    var byName = {};
    rows.forEach(function (r) { byName[r.name] = r.state; });
    var nodes = document.querySelectorAll("a.node[data-name]");
    for (var i = 0; i < nodes.length; i++) {
      var name = nodes[i].getAttribute("data-name"), state = byName[name];
      if (!state) { continue; }
      var cls = nodes[i].getAttribute("class").replace(/state-\S+/, "state-" + state);
      nodes[i].setAttribute("class", cls);
      nodes[i].setAttribute("aria-label", name + ": " + state);
      var label = nodes[i].querySelector(".node-state");
      if (label) { label.textContent = state; }
    }
  }

  function applyOverview(data) {
    applyRows(data.rows);
    applyCounts(data.counts, data.total);
    applyBanners(data);
    applyChains(data.rows);
    var filtered = location.search.length > 1 ? " (filtered)" : "";
    field("shown", "Showing " + data.rows.length + " of " + data.total + " manifests" +
          filtered + ".");
  }

  // ---------------------------------------------------------------- one manifest

  function applyManifest(data) {
    var r = data.row;
    var state = document.querySelector('#now [data-field="state"]');
    if (state) {
      state.textContent = r.state;
      state.className = "state state-" + r.state;
    }
    ["reason", "service", "command", "policy", "attempt", "outcome", "revision"].forEach(
      function (name) { field(name, r[name] || "—"); });
    var elapsed = document.querySelector('#now [data-field="elapsed"]');
    if (elapsed) { elapsed.textContent = ""; elapsed.appendChild(timed("data-since", r.started_at, r.elapsed)); }
    var deadline = document.querySelector('#now [data-field="deadline"]');
    if (deadline) { deadline.textContent = ""; deadline.appendChild(timed("data-until", r.deadline_at, r.deadline)); }
    field("error", r.error ? r.error + (r.error_detail ? ": " + r.error_detail : "") : "none");
    applyHistory(data.history);
    applyWaits(data.waits);
    var why = document.getElementById("retry-why");
    if (why) { why.textContent = data.retry.why; }
  }

  function applyHistory(history) {
    var tbody = document.getElementById("history-rows");
    if (!tbody) { return; }
    var frag = document.createDocumentFragment();
    history.forEach(function (a) {
      var tr = el("tr", null, a.current ? "" : "previous-spec");
      cell(tr, text(String(a.attempt)));
      cell(tr, el("code", a.operation_id));
      var spec = cell(tr, el("code", a.spec));
      if (!a.current) { spec.appendChild(text(" (earlier spec)")); }
      cell(tr, text(a.window));
      cell(tr, text(a.submitted));
      cell(tr, text(a.finished));
      cell(tr, text(a.took));
      cell(tr, el("span", a.outcome, "outcome outcome-" + a.outcome));
      var err = cell(tr, null);
      if (a.error) {
        err.appendChild(el("strong", a.error));
        if (a.error_detail) { err.appendChild(text(": " + a.error_detail)); }
      }
      var rev = el("code", a.revision);
      rev.title = a.revision_full;
      cell(tr, rev);
      frag.appendChild(tr);
    });
    if (!history.length) {
      var tr = el("tr", null, "empty"), td = el("td", "No attempt was sent yet.");
      td.colSpan = 10;
      tr.appendChild(td);
      frag.appendChild(tr);
    }
    tbody.textContent = "";
    tbody.appendChild(frag);
    field("history-count", String(history.length));
  }

  function applyWaits(waits) {
    var list = document.getElementById("waits");
    if (!list) { return; }
    list.textContent = "";
    waits.forEach(function (w) {
      var li = el("li", null, "wait" + (w.met ? " wait-met" : ""));
      li.appendChild(el("span", w.kind, "wait-kind"));
      li.appendChild(text(" "));
      if (w.target) {
        var a = el("a", w.text);
        a.href = "/manifests/" + encodeURIComponent(w.target);
        li.appendChild(a);
        li.appendChild(text(w.met ? " (met)" : " (not met)"));
      } else {
        li.appendChild(text(w.text));
      }
      list.appendChild(li);
    });
    if (!waits.length) { list.appendChild(el("li", "Nothing.")); }
  }

  // ---------------------------------------------------------------- polling

  function clock(d) { return d.toISOString().slice(11, 19) + " UTC"; }

  function say(ok, why) {
    if (!updated) { return; }
    var at = new Date(now());
    if (ok) {
      lastGood = at;
      updated.textContent = "Updated " + clock(at) + " (live)";
      updated.classList.remove("stale");
    } else {
      updated.textContent = "Not updated since " + clock(lastGood) + ": " + why;
      updated.classList.add("stale");
    }
  }

  function poll() {
    var headers = etag ? { "If-None-Match": etag } : {};
    fetch(live + location.search, { headers: headers, cache: "no-store",
                                    credentials: "same-origin" })
      .then(function (response) {
        var date = response.headers.get("date");
        if (date && !isNaN(Date.parse(date))) { offset = Date.parse(date) - Date.now(); }
        if (response.status === 304) { return null; }
        if (!response.ok) { throw new Error("the daemon answered HTTP " + response.status); }
        etag = response.headers.get("etag");
        return response.json();
      })
      .then(function (data) {
        if (data) { (data.rows ? applyOverview : applyManifest)(data); }
        recount();
        say(true);
      })
      .catch(function (error) {
        say(false, error && error.message ? error.message : "the daemon did not answer");
      })
      .then(function () { window.setTimeout(poll, pollMs); });
  }

  body.setAttribute("data-script", "live");
  recount();
  say(true);
  window.setTimeout(poll, pollMs);
})();
