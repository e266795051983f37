// The dashboard: plain DOM code on the /agentsleep JSON API of this server (no libraries, nothing
// fetched from elsewhere). The API key travels in the HttpOnly cookie /ui/login set, if one is needed.
"use strict";
const $ = (id) => document.getElementById(id);
let caps = {writable: false};

async function api(method, path, body) {
  const r = await fetch("/agentsleep" + path, {method, credentials: "same-origin",
    headers: body ? {"Content-Type": "application/json"} : {}, body: body ? JSON.stringify(body) : undefined});
  const data = await r.json().catch(() => null);
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || ("HTTP " + r.status);
    $("message").textContent = msg;
    throw new Error(msg);
  }
  $("message").textContent = "";
  return data;
}

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.addEventListener("click", v); else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
}

const fmt = (x, d = 2) => (x === null || x === undefined) ? "-" : (typeof x === "number" ? x.toFixed(d) : String(x));
const when = (t) => t ? String(t).replace("T", " ").slice(0, 19) : "-";

// -- episodes --
let episodeRequests = 0;
async function loadEpisodes() {
  const p = new URLSearchParams();
  const f = {q: $("search").value, kind: $("f-kind").value, source: $("f-source").value, session: $("f-session").value,
    namespace: $("f-namespace").value, since: $("f-since").value, until: $("f-until").value};
  for (const [k, v] of Object.entries(f)) if (v) p.set(k, v);
  const seq = ++episodeRequests;
  const data = await api("GET", "/episodes?" + p.toString());
  if (seq !== episodeRequests) return;  // a newer search was sent meanwhile: it draws the list
  const rows = $("episode-rows");
  rows.replaceChildren();
  for (const e of data.episodes) {
    const tr = el("tr", {class: "episode", "data-id": e.id, onclick: () => showEpisode(e.id)},
      el("td", {text: when(e.event_time || e.created_at)}), el("td", {text: e.kind}), el("td", {text: e.source}),
      el("td", {text: e.session || "-"}), el("td", {class: "text", text: e.text}),
      el("td", {text: e.consolidated_in || "-"}));
    const cell = el("td");
    if (caps.writable) {  // offered only where the API would do it: a server holding the store
      cell.append(el("button", {class: "forget", onclick: (ev) => { ev.stopPropagation(); forget(e.id, e.text); }, text: "forget"}));
    }
    tr.append(cell);
    rows.append(tr);
  }
  $("ep-count").textContent = `${data.episodes.length} shown of ${data.total} stored` + (f.q ? ` (search: ${f.q})` : "");
}

async function showEpisode(id) {
  $("detail").textContent = JSON.stringify(await api("GET", "/episodes/" + encodeURIComponent(id)), null, 1);
}

async function forget(id, text) {
  if (!confirm(`Forget this memory?\n\n${text.slice(0, 200)}\n\nIt leaves the store now and the weights at the next sleep.`)) return;
  const r = await api("POST", "/forget", {episode_id: id});
  $("message").textContent = "";
  $("ep-count").textContent = `forgot ${r.forgotten.length} episode(s)`;
  await loadEpisodes();
  await loadSummary();
}

// -- versions --
async function loadVersions() {
  const vs = await api("GET", "/versions");
  const byParent = {};
  for (const v of vs) (byParent[v.parent || ""] = byParent[v.parent || ""] || []).push(v);
  const tree = $("version-tree");
  tree.replaceChildren();
  const add = (parent, depth) => {
    for (const v of byParent[parent] || []) {
      const m = v.metrics || {};
      const what = v.kind === "sleep" ? `sleep ${v.sleep_id}, ${v.episodes} episodes, recall ${fmt(m.recall_before)}->${fmt(m.recall_after)}, `
        + `retention ${fmt(m.retention)}, drift ${fmt(m.drift_kl, 3)}` : v.kind;
      const line = el("div", {class: "version", "data-version": v.version}, "  ".repeat(depth) + (depth ? "└ " : "") + v.version + "  " + what + "  ");
      if (v.current) line.append(el("b", {text: "← current"}));
      else line.append(el("button", {class: "rollback", onclick: () => rollback(v.version), text: "roll back to this"}));
      tree.append(line);
      add(v.version, depth + 1);
    }
  };
  add("", 0);
  for (const id of ["diff-a", "diff-b"]) {
    const s = $(id);
    s.replaceChildren(...vs.map((v) => el("option", {value: v.version, text: v.version})));
  }
  if (vs.length) { $("diff-a").value = vs[Math.max(0, vs.length - 2)].version; $("diff-b").value = vs[vs.length - 1].version; }
}

async function rollback(name) {
  if (!confirm(`Serve ${name} again? Episodes only later versions absorbed become waiting again.`)) return;
  await api("POST", "/rollback", {version: name});
  await loadVersions();
  await loadSummary();
}

async function showDiff() {
  const d = await api("GET", `/diff?a=${encodeURIComponent($("diff-a").value)}&b=${encodeURIComponent($("diff-b").value)}`);
  const w = d.weights || {};
  $("diff-out").textContent = `${d.a} -> ${d.b}: common ancestor ${d.common_ancestor}\n`
    + `layers ${JSON.stringify(d.layers)}; parameters ${JSON.stringify(d.parameters)}\n`
    + `episodes only in ${d.b}: ${(d.episodes_only_in_b || []).length}; only in ${d.a}: ${(d.episodes_only_in_a || []).length}\n`
    + (w.compared ? `weights: ${w.changed} of ${w.compared} tensors changed, relative change ${fmt(w.relative_change, 4)}`
      : `weights: ${w.note || "nothing compared"}`);
}

// -- sleeps --
async function loadSleeps() {
  const ss = await api("GET", "/sleeps");
  const rows = $("sleep-rows");
  rows.replaceChildren();
  const running = ss.find((s) => s.status === "running");
  if (running && !sleeping) {  // the API would not start a second one: do not offer it
    $("sleep-now").disabled = true;
    $("sleep-progress").textContent = `sleep ${running.sleep_id} is running (stage ${running.stage || "?"})`;
  } else if (!sleeping) {
    $("sleep-now").disabled = false;
  }
  for (const s of ss) {
    const cell = el("td");
    if (s.report_html) cell.append(el("button", {class: "open-report", "data-sleep": s.sleep_id, onclick: () => openReport(s.sleep_id), text: "report"}));
    rows.append(el("tr", {class: "sleep", "data-sleep": s.sleep_id}, el("td", {text: s.sleep_id}), el("td", {text: s.status + (s.stage && s.status === "running" ? ` (${s.stage})` : "")}),
      el("td", {text: s.version || "-"}), el("td", {text: String(s.episodes)}),
      el("td", {text: `${fmt(s.recall_before)} → ${fmt(s.recall_after)}`}), el("td", {text: fmt(s.drift_kl, 3)}), cell));
  }
}

function openReport(id) {
  const f = $("report-frame");
  f.hidden = false;
  f.src = `/agentsleep/sleeps/${encodeURIComponent(id)}/report.html`;
}

let sleeping = false;
async function sleepNow() {
  $("sleep-now").disabled = true;
  sleeping = true;
  try {
    const run = await api("POST", "/sleep", {});
    $("sleep-progress").textContent = `sleep ${run.sleep_id} ${run.state}`;
    for (;;) {
      await new Promise((r) => setTimeout(r, 1000));
      const s = await api("GET", "/sleep/" + encodeURIComponent(run.sleep_id));
      const p = s.progress || {};
      if (s.state === "done") {
        const res = s.result || {};
        $("sleep-progress").textContent = `done: ${res.status}` + (res.version ? ` -> ${res.version}` : "") + (res.error ? ` (${res.error})` : "");
        break;
      }
      $("sleep-progress").textContent = `running: stage ${s.stage || p.stage || "starting"}` + (p.total ? ` ${p.done}/${p.total}` : "") + (p.note ? ` ${p.note}` : "");
    }
  } finally {
    sleeping = false;
    await loadSleeps().catch(() => {});
    await loadSummary().catch(() => {});
  }
}

// -- schedule --
async function loadDaemon() {
  const s = await api("GET", "/daemon");
  const d = s.daemon || {}, t = s.triggers || {}, w = s.waiting || {}, l = s.last_sleep;
  $("daemon-out").textContent = (d.alive ? `daemon pid ${d.pid} ${d.state}` : "no daemon running for this home") + "\n"
    + `cron: ${t.cron || "off"}; next run: ${t.next_cron || "-"}\n`
    + `threshold: ${t.threshold_episodes || "off"} episodes; idle: ${t.idle_minutes || "off"} minutes\n`
    + `waiting: ${w.episodes ?? "?"} episodes, ${w.requests || 0} requests\n`
    + `running: ${s.running ? s.running.reason + " stage " + (s.running.stage || "?") : "-"}\n`
    + `last sleep: ${l ? l.status + " " + (l.sleep_id || "") + " -> " + (l.version || "-") : "never"}\n`
    + `health: ${s.health && s.health.ok ? "ok" : ((s.health && s.health.problems) || []).join("; ")}`;
}

async function loadSummary() {
  const s = await api("GET", "/status");
  $("summary").textContent = `${s.episodes} episodes, ${s.unconsolidated} waiting; serving ${s.current_version}`;
}

const loaders = {episodes: loadEpisodes, versions: loadVersions, sleeps: loadSleeps, daemon: loadDaemon};
function show(tab) {
  for (const b of document.querySelectorAll("header button")) b.classList.toggle("on", b.dataset.tab === tab);
  for (const s of document.querySelectorAll("main section")) s.classList.toggle("on", s.id === tab);
  loaders[tab]().catch(() => {});
}

async function init() {
  caps = await api("GET", "/capabilities");
  for (const b of document.querySelectorAll("header button")) b.addEventListener("click", () => show(b.dataset.tab));
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); loadEpisodes().catch(() => {}); });
  $("diff-btn").addEventListener("click", () => showDiff().catch(() => {}));
  $("sleep-now").addEventListener("click", () => sleepNow().catch(() => {}));
  await loadSummary();
  await loadEpisodes();
  document.body.dataset.ready = "1";
}
init().catch(() => {});
