// Runestone console, "Manage keys": the admin API (/admin/keys, /admin/audit,
// /admin/usage) with the operators' token of this tab. A new or rotated secret is shown
// once, in the page, and kept nowhere. Uses el, table, put and TOKEN_KEY of console.js.
"use strict";

async function adminCall(method, path, body) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const headers = { Authorization: "Bearer " + token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await answer.json();
  if (!answer.ok) throw new Error((data.error && data.error.message) || "HTTP " + answer.status);
  return data;
}

function say(message) {
  $("admin-status").textContent = message;
  $("admin-error").textContent = "";
}

function fail(error) {
  $("admin-error").textContent = error.message;
}

function showSecret(id, secret) {
  $("new-secret-id").textContent = id;
  $("new-secret-value").textContent = secret;
  $("new-secret").hidden = false;
}

$("new-secret-done").addEventListener("click", () => {
  $("new-secret-value").textContent = "";
  $("new-secret").hidden = true;
});

function number(id) {
  const text = $(id).value.trim();
  return text === "" ? null : Number(text);
}

$("create-key").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { id: $("new-id").value.trim() };
  if ($("new-team").value.trim()) body.team = $("new-team").value.trim();
  if (number("new-rpm") !== null) body.rpm = number("new-rpm");
  if (number("new-budget") !== null) body.budgets = [{ usd: number("new-budget"), per: "day" }];
  const models = $("new-models").value.split(",").map((m) => m.trim()).filter(Boolean);
  if (models.length) body.models = models;
  try {
    const made = await adminCall("POST", "/admin/keys", body);
    $("create-key").reset();
    showSecret(made.id, made.secret);
    await loadAdmin();
    say("Created key " + made.id + ".");
  } catch (error) { fail(error); }
});

$("edit-key").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = $("edit-id").value.trim();
  const rpm = number("edit-rpm");
  const budget = number("edit-budget");
  const body = { rpm, budgets: budget === null ? null : [{ usd: budget, per: "day" }] };
  try {
    await adminCall("PATCH", "/admin/keys/" + encodeURIComponent(id), body);
    await loadAdmin();  // the list redrawn first: what the message says is on the page
    say("Saved key " + id + ".");
  } catch (error) { fail(error); }
});

// Revoking takes two clicks: the first arms the button.
function revokeButton(key) {
  const button = el("button", { type: "button", "data-revoke": key.id }, "Revoke");
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "yes") {
      button.dataset.armed = "yes";
      button.textContent = "Confirm revoke";
      return;
    }
    try {
      await adminCall("DELETE", "/admin/keys/" + encodeURIComponent(key.id));
      await loadAdmin();
      say("Revoked key " + key.id + ".");
    } catch (error) { fail(error); }
  });
  return button;
}

function rotateButton(key) {
  const button = el("button", { type: "button", "data-rotate": key.id }, "Rotate");
  button.addEventListener("click", async () => {
    try {
      const rotated = await adminCall("POST", "/admin/keys/" + encodeURIComponent(key.id) +
        "/rotate", { grace_seconds: 3600 });
      showSecret(rotated.id, rotated.secret);
      await loadAdmin();
      say("Rotated key " + key.id + ": the old secret works for one more hour.");
    } catch (error) { fail(error); }
  });
  return button;
}

function keyRows(keys) {
  return keys.map((key) => {
    const state = key.revoked ? "revoked" : key.blocked ? "blocked" : "active";
    const limits = [];
    if (key.settings.rpm) limits.push(key.settings.rpm + " rpm");
    for (const budget of key.settings.budgets || []) limits.push("$" + budget.usd + "/" + budget.per);
    const actions = key.source === "api" && !key.revoked
      ? el("span", null, rotateButton(key), " ", revokeButton(key))
      : key.source === "file" ? "in the alias file" : "";
    return [key.id, key.source, key.team || "–", state, limits.join(", ") || "none", actions];
  });
}

async function loadAdmin() {
  try {
    const [keys, usage, audit] = await Promise.all([
      adminCall("GET", "/admin/keys?include_revoked=true&limit=200"),
      adminCall("GET", "/admin/usage?limit=200"),
      adminCall("GET", "/admin/audit?limit=50"),
    ]);
    put("key-list", table("Keys", ["Id", "Source", "Team", "State", "Limits", "Actions"],
      keyRows(keys.keys)));
    const users = (usage.end_users && usage.end_users.month) || [];
    put("end-users", table("Spend per end user this month",
      ["Key", "End user", "Requests", "Tokens", "USD"],
      users.map((u) => [u.key, u.name, fmt(u.requests, 0),
        fmt(u.input_tokens + u.output_tokens, 0), "$" + fmt(u.usd, 6)]), [2, 3, 4]));
    put("audit", table("Audit log (newest first)", ["When", "Who", "What", "Target"],
      audit.entries.map((e) => [e.at, e.actor, e.action, e.target])));
    $("admin-error").textContent = "";
  } catch (error) { fail(error); }
}

$("admin-refresh").addEventListener("click", loadAdmin);
$("tab-admin").addEventListener("click", loadAdmin);
