// The Sluice dashboard: polls the admin API and /metrics every two seconds. No build
// step, no external assets; the token (when the API needs one) stays in this tab.
"use strict";

const POLL_MS = 2000;
let token = sessionStorage.getItem("sluice-admin-token") || "";
let previous = null; // the last /metrics sample, for rates and recent percentiles

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function call(path, options = {}) {
  const headers = { accept: "application/json" };
  if (options.body) headers["content-type"] = "application/json";
  if (token) headers.authorization = "Bearer " + token;
  const r = await fetch(path, { ...options, headers });
  if (r.status === 401) {
    $("#login").hidden = false;
    throw new Error("the admin API needs a token");
  }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// Prometheus text format -> [{name, labels, value}].
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$/);
    if (!m) continue;
    const labels = {};
    for (const l of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

// Per route: total requests, 5xx, and the duration histogram's cumulative buckets.
function routeStats(samples) {
  const routes = {};
  const route = (name) => (routes[name] ??= { total: 0, errors: 0, buckets: {} });
  for (const s of samples) {
    if (s.name === "http_server_requests_total") {
      const r = route(s.labels.http_route);
      r.total += s.value;
      if ((s.labels.http_response_status_code || "").startsWith("5")) r.errors += s.value;
    } else if (s.name === "http_server_request_duration_seconds_bucket") {
      const r = route(s.labels.http_route);
      r.buckets[s.labels.le] = (r.buckets[s.labels.le] || 0) + s.value;
    }
  }
  return routes;
}

// The q-quantile, interpolated within its bucket (as PromQL's histogram_quantile), from
// cumulative bucket counts keyed by their `le` bound.
function quantile(q, buckets) {
  const sorted = Object.entries(buckets)
    .map(([le, count]) => [le === "+Inf" ? Infinity : Number(le), count])
    .sort((a, b) => a[0] - b[0]);
  const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (!total) return null;
  let lower = 0, below = 0;
  for (const [bound, count] of sorted) {
    if (count >= q * total) {
      if (bound === Infinity) return lower;
      return lower + (bound - lower) * ((q * total - below) / Math.max(count - below, 1));
    }
    lower = bound;
    below = count;
  }
  return lower;
}

const ms = (s) => (s == null ? "–" : s < 0.001 ? (s * 1e6).toFixed(0) + " µs" : (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms");

function renderRoutes(routes, routeNames) {
  const body = $("#routes tbody");
  body.replaceChildren();
  const now = performance.now();
  const names = [...new Set([...routeNames, ...Object.keys(routes)])];
  for (const name of names) {
    const r = routes[name] || { total: 0, errors: 0, buckets: {} };
    const before = previous?.routes[name];
    const dt = previous ? (now - previous.at) / 1000 : 0;
    const rps = before && dt > 0 ? (r.total - before.total) / dt : null;
    // Percentiles over the last interval when there was traffic, else since start.
    let buckets = r.buckets;
    if (before && r.total > before.total) {
      buckets = Object.fromEntries(Object.entries(r.buckets).map(([b, c]) => [b, c - (before.buckets[b] || 0)]));
    }
    const errShare = r.total ? r.errors / r.total : 0;
    body.append(el("tr", { "data-route": name },
      el("td", {}, name || "(no route)"),
      el("td", { class: "num total" }, r.total),
      el("td", { class: "num rps" }, rps == null ? "–" : rps.toFixed(1)),
      el("td", { class: "num errors " + (errShare > 0.01 ? "bad" : "") }, r.errors ? `${r.errors} (${(errShare * 100).toFixed(1)}%)` : "0"),
      el("td", { class: "num p50" }, ms(quantile(0.5, buckets))),
      el("td", { class: "num p99" }, ms(quantile(0.99, buckets)))));
  }
  return now;
}

async function act(path, body, question) {
  if (!confirm(question)) return;
  try {
    await call(path, { method: "POST", body: JSON.stringify(body) });
    await refresh();
  } catch (e) {
    $("#status").textContent = "failed: " + e.message;
  }
}

function renderUpstreams(upstreams) {
  const body = $("#upstreams tbody");
  body.replaceChildren();
  for (const u of upstreams) {
    for (const e of u.endpoints) {
      const base = `/api/v1/upstreams/${encodeURIComponent(u.name)}/endpoints/${encodeURIComponent(e.address)}`;
      const drained = e.override === "drain" || e.override === "down";
      const actions = el("td", {},
        drained
          ? el("button", { class: "undrain", onclick: () => act(base + "/state", { state: "config" }, `Put ${e.address} back in rotation?`) }, "Undrain")
          : el("button", { class: "drain", onclick: () => act(base + "/state", { state: "drain" }, `Drain ${e.address}? New requests stop going to it.`) }, "Drain"));
      if (e.breaker) {
        actions.append(e.breaker.mode === "auto"
          ? el("button", { class: "force-open", onclick: () => act(base + "/breaker", { mode: "open" }, `Force the breaker of ${e.address} open?`) }, "Open breaker")
          : el("button", { class: "auto", onclick: () => act(base + "/breaker", { mode: "auto" }, `Hand the breaker of ${e.address} back to automatic?`) }, "Auto breaker"));
      }
      const state = e.override ? `${e.state} (override)` : e.state;
      const healthy = e.health_override ? e.health_override === "healthy" : e.healthy;
      const health = (healthy ? "healthy" : "unhealthy") + (e.health_override ? " (override)" : "");
      const r = e.recent;
      const errors = r && r.attempts ? (r.error_rate * 100).toFixed(1) + "%" : "–";
      body.append(el("tr", { "data-endpoint": e.address },
        el("td", {}, u.name),
        el("td", {}, e.address),
        el("td", { class: "state " + (e.state === "up" ? "" : "warn") }, state),
        el("td", { class: "health " + (healthy ? "good" : "bad") }, health),
        el("td", { class: e.breaker?.state === "open" ? "bad" : "" }, e.breaker ? e.breaker.state + (e.breaker.mode === "auto" ? "" : " (forced)") : "–"),
        el("td", { class: "num", title: e.weight_override ? `config: ${e.config_weight}` : "" }, e.weight + (e.weight_override ? " *" : "")),
        el("td", { class: "num" }, e.in_flight),
        el("td", { class: "num recent-rate", title: r ? `last ${r.window_seconds} s` : "" }, r ? r.per_second.toFixed(1) : "–"),
        el("td", { class: "num " + (r && r.error_rate > 0.01 ? "bad" : "") }, errors),
        el("td", { class: "num" }, r && r.p99_ms != null ? "≤ " + ms(r.p99_ms / 1000) : "–"),
        actions));
    }
  }
}

function renderPlugins(plugins) {
  const body = $("#plugins tbody");
  body.replaceChildren();
  for (const p of plugins) {
    let calls = 0, traps = 0, timeouts = 0, seconds = 0, count = 0;
    for (const phase of Object.values(p.calls)) {
      for (const [outcome, n] of Object.entries(phase.calls || {})) {
        calls += n;
        if (outcome === "trap") traps += n;
        if (outcome === "timeout") timeouts += n;
      }
      seconds += phase.seconds_sum || 0;
      count += phase.count || 0;
    }
    const rollout = p.rollout ? `${p.rollout.state.replace("_", " ")} · ${p.rollout.percent}%` : "–";
    const base = `/api/v1/plugins/${encodeURIComponent(p.name)}/rollout`;
    const actions = el("td", {});
    if (p.rollout?.state === "active") {
      actions.append(
        el("button", { class: "promote", onclick: () => act(base, { action: "promote" }, `Promote the new version of ${p.name} to all traffic?`) }, "Promote"),
        el("button", { class: "abort", onclick: () => act(base, { action: "abort" }, `Abort the rollout of ${p.name}? The old version takes all traffic.`) }, "Abort"));
    }
    body.append(el("tr", { "data-plugin": p.name },
      el("td", {}, p.name),
      el("td", { class: "muted", title: p.module }, p.sha256.slice(0, 12)),
      el("td", { class: "num calls" }, calls),
      el("td", { class: "num traps " + (traps ? "bad" : "") }, traps),
      el("td", { class: "num " + (timeouts ? "warn" : "") }, timeouts),
      el("td", { class: "num" }, ms(count ? seconds / count : null)),
      el("td", {}, `${p.instances.busy} busy / ${p.instances.idle} idle`),
      el("td", {}, rollout),
      actions));
  }
}

let diffShown = null; // the version whose diff is on the page

async function renderDiff(history) {
  const last = history[history.length - 1];
  if (history.length < 2 || diffShown === last.version) return;
  const d = await call("/api/v1/config/diff");
  const pre = $("#diff");
  pre.replaceChildren(...d.diff.replace(/\n$/, "").split("\n").map((line) => {
    const kind = line.startsWith("@@") ? "hunk" : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : "";
    return el("span", { class: kind }, line + "\n");
  }));
  $("#diff-title").textContent = `The last change: version ${d.from} → ${d.to} (${last.cause})`;
  pre.hidden = $("#diff-title").hidden = false;
  diffShown = last.version;
}

function renderEvents(events) {
  const body = $("#events tbody");
  body.replaceChildren();
  const tone = { reload_refused: "bad", rollout: "warn", admin: "accent" };
  for (const e of events.slice(0, 12)) {
    body.append(el("tr", { "data-event": e.id },
      el("td", { class: "muted" }, new Date(e.at).toLocaleTimeString()),
      el("td", { class: tone[e.kind] || "" }, e.kind.replace("_", " ")),
      el("td", { class: "message" }, e.message)));
  }
  if (!events.length) body.append(el("tr", {}, el("td", { class: "muted", colspan: 3 }, "nothing yet")));
}

function renderHistory(history) {
  const body = $("#history tbody");
  body.replaceChildren();
  for (const a of [...history].reverse()) {
    body.append(el("tr", {},
      el("td", {}, a.version),
      el("td", {}, new Date(a.applied_at).toLocaleString()),
      el("td", { class: "muted" }, a.sha256),
      el("td", {}, a.cause)));
  }
}

async function refresh() {
  try {
    const [server, routes, upstreams, plugins, history, events, metrics] = await Promise.all([
      call("/api/v1/server"), call("/api/v1/routes"), call("/api/v1/upstreams"),
      call("/api/v1/plugins"), call("/api/v1/config/history"), call("/api/v1/events"),
      fetch("/metrics").then((r) => r.text()),
    ]);
    $("#login").hidden = true;
    $("#server").textContent = `v${server.version} · ${server.commit} · config version ${server.config_version} · ${server.connections} connection${server.connections === 1 ? "" : "s"} · up ${Math.round(server.uptime_seconds)} s`;
    const stats = routeStats(parseMetrics(metrics));
    const at = renderRoutes(stats, routes.map((r) => r.name));
    previous = { at, routes: stats };
    renderUpstreams(upstreams);
    renderPlugins(plugins);
    renderHistory(history);
    renderEvents(events);
    await renderDiff(history);
    $("#status").textContent = "updated " + new Date().toLocaleTimeString();
    document.body.dataset.loaded = "yes";
  } catch (e) {
    $("#status").textContent = e.message;
  }
}

$("#login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("#token").value.trim();
  sessionStorage.setItem("sluice-admin-token", token);
  refresh();
});
refresh();
setInterval(refresh, POLL_MS);
