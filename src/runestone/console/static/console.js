// Runestone console: reads /console/api/overview every few seconds and draws it.
// No framework and nothing from another origin; data goes into the page as text only.
"use strict";

const TOKEN_KEY = "runestone-console-token";
const REFRESH_MS = 3000;
let timer = null;
let running = false;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function fmt(value, digits = 1) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return value.toLocaleString(undefined, { maximumFractionDigits: digits });
}

const pct = (ratio) => (ratio === null || ratio === undefined ? "–" : fmt(ratio * 100, 2) + "%");
const ms = (value) => (value === null || value === undefined ? "–" : fmt(value, 2) + " ms");
const when = (epoch) => (epoch ? new Date(epoch * 1000).toLocaleTimeString() : "–");

// A table with a caption and column headers; cells are text or nodes.
function table(caption, headers, rows, numeric = []) {
  const head = el("tr", null, ...headers.map((h, i) =>
    el("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, h)));
  const body = rows.length
    ? rows.map((row) => el("tr", null, ...row.map((cell, i) =>
        el("td", { class: numeric.includes(i) ? "num" : null }, cell))))
    : [el("tr", null, el("td", { colspan: headers.length }, "Nothing yet."))];
  return el("table", null, el("caption", null, caption), el("thead", null, head),
    el("tbody", null, ...body));
}

function put(id, ...nodes) {
  const target = $(id);
  target.replaceChildren(...nodes);
}

// --- signing in ---------------------------------------------------------------------------

function showLogin(message) {
  stop();
  $("console-view").hidden = true;
  $("controls").hidden = true;
  $("login-view").hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
}

function showConsole() {
  $("login-view").hidden = true;
  $("console-view").hidden = false;
  $("controls").hidden = false;
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  $("token").value = "";
  refresh(true);
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  showLogin("");
});

// --- tabs -----------------------------------------------------------------------------------

const tabs = Array.from(document.querySelectorAll('[role="tab"]'));

function select(tab) {
  for (const other of tabs) {
    const chosen = other === tab;
    other.setAttribute("aria-selected", String(chosen));
    other.tabIndex = chosen ? 0 : -1;
    $(other.getAttribute("aria-controls")).hidden = !chosen;
  }
}

tabs.forEach((tab, index) => {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (event) => {
    const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
    if (!step) return;
    const next = tabs[(index + step + tabs.length) % tabs.length];
    select(next);
    next.focus();
  });
});

$("window").addEventListener("change", () => refresh(false));

// --- reading --------------------------------------------------------------------------------

function stop() {
  if (timer !== null) clearTimeout(timer);
  timer = null;
}

async function refresh(signingIn) {
  if (running) return;
  running = true;
  stop();
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  try {
    const answer = await fetch("/console/api/overview?window=" + $("window").value,
      { headers, cache: "no-store" });
    if (answer.status === 401 || answer.status === 403) {
      sessionStorage.removeItem(TOKEN_KEY);
      showLogin(token ? "The gateway refused that token." : "");
      return;
    }
    if (!answer.ok) throw new Error("the gateway answered " + answer.status);
    const data = await answer.json();
    showConsole();
    $("load-error").textContent = "";
    draw(data);
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  } catch (error) {
    $("load-error").textContent = "Cannot read the gateway: " + error.message;
  } finally {
    running = false;
  }
  if (!$("console-view").hidden) timer = setTimeout(() => refresh(false), REFRESH_MS);
  if (signingIn && !$("console-view").hidden) $("tab-traffic").focus();
}

function draw(data) {
  const worker = data.worker;
  $("worker").textContent = worker.one_of_several
    ? `Worker ${worker.pid}: one of several processes of this gateway; its numbers are its own traffic.`
    : `Process ${worker.pid}.`;
  drawTraffic(data.traffic);
  drawAliases(data.aliases);
  drawKeys(data.keys);
  drawFailures(data.failures);
}

function drawTraffic(t) {
  $("rps").textContent = fmt(t.requests_per_second, 2);
  $("requests").textContent = fmt(t.requests, 0);
  $("error-ratio").textContent = pct(t.error_ratio);
  $("in-flight-requests").textContent = fmt(t.in_flight.requests, 0);
  $("in-flight-streams").textContent = fmt(t.in_flight.streams, 0);
  drawChart(t.timeline);
  put("series", table("Latency, time to first token and gateway overhead, per alias and provider",
    ["alias", "provider", "requests", "errors", "p50", "p95", "p99", "TTFT p50", "TTFT p95",
      "overhead p50", "overhead p99"],
    t.series.map((s) => [s.alias, s.provider, fmt(s.requests, 0), pct(s.error_ratio),
      ms(s.latency_ms.p50), ms(s.latency_ms.p95), ms(s.latency_ms.p99), ms(s.ttft_ms.p50),
      ms(s.ttft_ms.p95), ms(s.overhead_ms.p50), ms(s.overhead_ms.p99)]),
    [2, 3, 4, 5, 6, 7, 8, 9, 10]));
  put("codes", table("Errors by code", ["code", "requests"],
    Object.entries(t.errors_by_code).map(([code, n]) => [code, fmt(n, 0)]), [1]));
  put("outcomes", table("Stream outcomes", ["outcome", "streams"],
    Object.entries(t.stream_outcomes).map(([outcome, n]) => [outcome, fmt(n, 0)]), [1]));
  put("models", table("Tokens and cost per model", ["model", "requests", "input tokens",
    "output tokens", "cost (USD)"],
    t.models.map((m) => [m.model, fmt(m.requests, 0), fmt(m.input_tokens, 0),
      fmt(m.output_tokens, 0), fmt(m.cost_usd, 6)]), [1, 2, 3, 4]));
}

function drawChart(points) {
  const svg = $("chart");
  const ns = "http://www.w3.org/2000/svg";
  const width = 600, height = 160;
  const top = Math.max(1, ...points.map((p) => p[1]));
  const step = width / Math.max(points.length - 1, 1);
  const nodes = [];
  points.forEach((p, i) => {
    if (p[2] > 0) {
      const bar = document.createElementNS(ns, "rect");
      const h = p[2] * height;
      bar.setAttribute("x", String(i * step - step / 2));
      bar.setAttribute("y", String(height - h));
      bar.setAttribute("width", String(Math.max(step, 1)));
      bar.setAttribute("height", String(h));
      bar.setAttribute("class", "errors");
      nodes.push(bar);
    }
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "rate");
  line.setAttribute("points", points.map((p, i) =>
    `${(i * step).toFixed(1)},${(height - 4 - (p[1] / top) * (height - 8)).toFixed(1)}`).join(" "));
  nodes.push(line);
  svg.replaceChildren(...nodes);
  const last = points.length ? points[points.length - 1][1] : 0;
  svg.setAttribute("aria-label", `Requests per second over the window, peak ${fmt(top, 2)}, ` +
    `latest ${fmt(last, 2)}.`);
}

function drawAliases(a) {
  $("table-status").textContent = `Alias table ${a.version || "–"} from ${a.source}, loaded ` +
    `${when(a.loaded_at)}; last reload attempt ${when(a.last_attempt_at)}; ` +
    `${a.reloads_ok} reloads, ${a.reloads_failed} failed.`;
  const error = $("reload-error");
  error.hidden = !a.error;
  error.textContent = a.error ? "The last reload failed; the table above is still in use.\n" +
    a.error : "";
  put("alias-table", table("Aliases, their targets and breakers",
    ["alias", "strategy", "policy", "targets (breaker, errors in 5 min)"],
    a.aliases.map((alias) => [alias.name, alias.strategy, alias.policy,
      el("span", null, ...alias.targets.map((t) => el("span",
        { class: "target", "data-target": t.target },
        t.target + " ",
        el("span", { class: "state state-" + t.breaker }, t.breaker.replace("_", " ")),
        " " + (t.error_ratio_5m === null ? "no calls" :
          pct(t.error_ratio_5m) + " of " + fmt(t.requests_5m, 0)))))])));
}

function limitRows(limits) {
  return limits.map((l) => {
    const used = l.used !== undefined ? l.used : (l.held || 0);
    const held = l.reserved !== undefined ? fmt(l.reserved, 4) :
      (l.held !== undefined ? fmt(l.held, 0) : "–");
    const meter = el("meter", { min: "0", max: String(l.max), value: String(used + (l.reserved || 0)),
      "aria-label": `${l.limit} used` });
    return [l.limit, fmt(l.max, 4), fmt(used, 4), held, l.resets ? when(Date.parse(l.resets) / 1000) : "–",
      meter];
  });
}

function drawKeys(k) {
  const body = $("keys-body");
  if (!k.configured) {
    body.replaceChildren(el("p", null, "No client keys: the alias file has no keys: section."));
    return;
  }
  const parts = [];
  if (k.error) parts.push(el("p", { class: "alert" }, k.error));
  for (const key of k.keys || []) {
    parts.push(el("h3", null, `Key ${key.id}` + (key.team ? ` (team ${key.team})` : "")));
    parts.push(el("div", { class: "block" }, table(`Limits of key ${key.id}`,
      ["limit", "max", "used", "reserved / in flight", "resets", "headroom"], limitRows(key.limits),
      [1, 2, 3])));
  }
  for (const team of k.teams || []) {
    parts.push(el("h3", null, `Team ${team.id}`));
    parts.push(el("div", { class: "block" }, table(`Limits of team ${team.id}`,
      ["limit", "max", "used", "reserved / in flight", "resets", "headroom"], limitRows(team.limits),
      [1, 2, 3])));
  }
  for (const [name, label] of [["today", "Spend today (UTC)"], ["month", "Spend this month"]]) {
    const rows = (k.spend && k.spend[name]) || [];
    parts.push(el("div", { class: "block" }, table(label,
      ["key", "team", "model", "requests", "tokens", "USD"],
      rows.map((r) => [r.key, r.team || "–", r.model, fmt(r.requests, 0),
        fmt(r.input_tokens + r.output_tokens, 0), fmt(r.usd, 6)]), [3, 4, 5])));
  }
  parts.push(el("div", { class: "block" }, table("Most recent refusals",
    ["time", "key", "code", "alias", "request id"],
    (k.refusals || []).map((f) => [when(f.at), f.key || "–", f.code, f.alias, f.request_id]))));
  body.replaceChildren(...parts);
}

function drawFailures(failures) {
  put("failure-table", table("Recent failed requests (never their prompts or completions)",
    ["time", "request id", "alias", "target", "code", "status", "attempts"],
    failures.map((f) => [when(f.at), f.request_id, f.alias, f.target, f.code,
      fmt(f.status, 0), fmt(f.attempts, 0)]), [5, 6]));
}

refresh(false);
