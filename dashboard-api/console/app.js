// The StackPro ops console: log in, the fleet table kept live over SSE,
// an instance page (metrics, services, jobs, timeline, commands), and fleet
// command runs. Routing is the location hash: #/ is the fleet,
// #/instances/<id> one instance, #/runs the runs, #/runs/<id> one run.
// Data only ever reaches the page through textContent and attributes.

import { ApiError, call, events, get, getAll, login, logout, session, useToken } from "./api.js";
import { drawChart } from "./chart.js";

// The page's load time: a test (or a curious operator) can tell the page
// was never reloaded.
window.stackpro = { loadedAt: Date.now() };

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => [...root.querySelectorAll(sel)];

/** h builds an element; strings become text nodes, never markup. */
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "dataset") Object.assign(e.dataset, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid !== null && kid !== undefined && kid !== false) e.append(kid instanceof Node ? kid : String(kid));
  }
  return e;
}

function show(el, on) { el.hidden = !on; }

/** fill replaces el's children, leaving out the null ones. */
function fill(el, ...kids) {
  el.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
}

// ---- formatting -----------------------------------------------------------

const ms = (iso) => (iso ? Date.parse(iso) : NaN);

function ago(t, now = Date.now()) {
  if (!Number.isFinite(t)) return "never";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function duration(t, now = Date.now()) {
  if (!Number.isFinite(t)) return "";
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function bytes(v) {
  if (!Number.isFinite(v)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

const rate = (v) => bytes(v) + "/s";
const percent = (v) => `${v.toFixed(v > 0 && v < 10 ? 1 : 0)} %`;
const clock = (t) => new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

function stamp(iso) {
  const t = ms(iso);
  if (!Number.isFinite(t)) return "";
  const d = new Date(t);
  const today = new Date().toDateString() === d.toDateString();
  return today ? clock(t) : d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

/** A time that keeps saying how long ago it was; tick() refreshes it. */
function since(iso, cls = "since") {
  const t = ms(iso);
  return h("span", { class: cls, dataset: { since: Number.isFinite(t) ? t : "" }, title: iso || "", text: ago(t) });
}

function tick() {
  const now = Date.now();
  for (const e of $$("[data-since]")) {
    const t = e.dataset.since === "" ? NaN : Number(e.dataset.since);
    const text = e.dataset.kind === "uptime" ? duration(t, now) : ago(t, now);
    if (e.textContent !== text) e.textContent = text;
  }
}

const badge = (status) => h("span", { class: "badge", dataset: { status: status || "unknown" }, text: status || "unknown" });

function jobText(inst) {
  if (!inst.job) return "";
  const job = state.jobs.get(inst.job);
  if (!job) return inst.job;
  const step = job.steps?.[job.done];
  const progress = job.steps?.length ? ` ${Math.min(job.done + (step ? 1 : 0), job.steps.length)}/${job.steps.length}` : "";
  return `${job.kind} · ${step || job.state}${progress}`;
}

// ---- state ----------------------------------------------------------------

const state = {
  instances: new Map(), // id → fleet.Instance, as the list and the stream tell
  jobs: new Map(), // id → fleet.Job, from the stream
  loading: false,
  pending: [], // events that came while the list loaded
  stream: null,
  operator: true, // until /fleet says 403
  sort: { key: "created_at", desc: true },
  filter: "",
  view: null, // the instance page's state, when it shows
  runs: null, // the runs list's state, when it shows
  run: null, // the run page's state, when it shows
};

// views are the pages the hash picks, and the nav link each lights.
const views = { fleet: "#nav-fleet", instance: null, runs: "#nav-runs", run: "#nav-runs" };

// ---- login ----------------------------------------------------------------

function showLogin(message) {
  state.stream?.stop();
  state.stream = null;
  state.view = stopInstance(state.view);
  state.runs = stopPolling(state.runs);
  state.run = stopPolling(state.run);
  show($("#topbar"), false);
  for (const name of Object.keys(views)) show($(`#${name}-view`), false);
  show($("#login-view"), true);
  const err = $("#login-error");
  err.textContent = message || "";
  show(err, Boolean(message));
  document.title = "Log in · StackPro";
  $("#login-email").focus();
}

async function submitLogin(form, button, action) {
  button.disabled = true;
  show($("#login-error"), false);
  try {
    await action();
    form.reset();
    start();
  } catch (err) {
    const e = $("#login-error");
    e.textContent = err instanceof ApiError ? err.message : "The control plane could not be reached.";
    show(e, true);
  } finally {
    button.disabled = false;
  }
}

$("#login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  submitLogin(ev.target, $("#login-submit"), () => login($("#login-email").value.trim(), $("#login-password").value));
});

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  submitLogin(ev.target, $("#token-submit"), () => useToken($("#login-token").value.trim()));
});

$("#logout").addEventListener("click", async () => {
  state.stream?.stop();
  state.stream = null;
  await logout();
  state.instances.clear();
  state.jobs.clear();
  showLogin();
});

session.onUnauthorized(() => showLogin("Your session has ended. Log in again."));

// ---- the live stream ------------------------------------------------------

function setLive(s) {
  $("#live").dataset.state = s;
  $("#live-text").textContent = s === "connected" ? "live" : s === "reconnecting" ? "reconnecting…" : "connecting…";
}

function onEvent(kind, data) {
  if (state.loading && kind !== "reset") {
    state.pending.push([kind, data]);
    return;
  }
  switch (kind) {
    case "instance":
      if (!data?.id) return;
      state.instances.set(data.id, data);
      renderFleetSoon();
      summarySoon();
      if (state.view?.id === data.id) instanceChanged(data);
      break;
    case "job":
      if (!data?.id) return;
      state.jobs.set(data.id, data);
      renderFleetSoon();
      if (state.view?.id === data.instance_id) jobChanged(data);
      break;
    case "agent_event":
      if (state.view && data?.instance_id === state.view.id) agentEvent(data);
      break;
    case "reset":
      loadFleet();
      if (state.view) openInstance(state.view.id);
      break;
    default:
      break;
  }
}

// ---- the fleet ------------------------------------------------------------

async function loadFleet() {
  state.loading = true;
  state.pending = [];
  const err = $("#fleet-error");
  try {
    const list = await getAll("/api/v1/instances", "instances");
    state.instances = new Map(list.map((i) => [i.id, i]));
    show(err, false);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    err.textContent = `Could not load the instances: ${e.message}`;
    show(err, true);
  } finally {
    state.loading = false;
    const pending = state.pending;
    state.pending = [];
    for (const [kind, data] of pending) onEvent(kind, data);
    renderFleet();
  }
  loadSummary();
}

const statusOrder = { offline: 0, stale: 1, degraded: 2, provisioning: 3, online: 4 };

function sortValue(inst, key) {
  if (key === "status") return statusOrder[inst.status] ?? -1;
  if (key === "last_seen" || key === "created_at") return ms(inst[key]) || 0;
  if (key === "job") return jobText(inst);
  return String(inst[key] ?? "").toLowerCase();
}

const filterKeys = { status: "status", plan: "plan", region: "region", lifecycle: "lifecycle", customer: "customer",
  subdomain: "subdomain", id: "id", agent: "agent_version", version: "agent_version", job: "job" };

function matches(inst, terms) {
  return terms.every((term) => {
    const i = term.indexOf(":");
    const key = i > 0 ? filterKeys[term.slice(0, i)] : undefined;
    if (key) return String(inst[key] ?? "").toLowerCase().includes(term.slice(i + 1));
    return ["id", "customer", "subdomain", "plan", "region", "status", "lifecycle", "agent_version", "address"]
      .some((k) => String(inst[k] ?? "").toLowerCase().includes(term));
  });
}

let fleetTimer = 0;
function renderFleetSoon() {
  fleetTimer ||= setTimeout(renderFleet, 50);
}

function fleetRow(tr, inst) {
  tr.dataset.id = inst.id;
  tr.dataset.status = inst.status || "unknown";
  tr.dataset.lifecycle = inst.lifecycle || "";
  tr.dataset.connected = String(Boolean(inst.connected));
  const href = "#/instances/" + encodeURIComponent(inst.id);
  const problems = inst.problems?.length ? inst.problems.join("\n") : undefined;
  tr.replaceChildren(
    h("td", { class: "mono" }, h("a", { href, text: inst.id })),
    h("td", { text: inst.customer || "" }),
    h("td", { text: inst.subdomain || "" }),
    h("td", { text: inst.plan || "" }),
    h("td", { text: inst.region || "" }),
    h("td", { title: problems }, badge(inst.status), inst.problems?.length ? h("span", { class: "problems-n", text: ` ${inst.problems.length}⚠` }) : null),
    h("td", { dataset: { lifecycle: inst.lifecycle || "" }, text: inst.lifecycle || "" }),
    h("td", { class: "mono", text: inst.agent_version || "" }),
    h("td", { class: "num" }, since(inst.last_seen)),
    h("td", { class: "job", text: jobText(inst) }),
  );
}

function renderFleet() {
  clearTimeout(fleetTimer);
  fleetTimer = 0;
  const tbody = $("#fleet-table tbody");
  const rows = new Map($$("tr[data-id]", tbody).map((tr) => [tr.dataset.id, tr]));
  const terms = state.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const { key, desc } = state.sort;
  const list = [...state.instances.values()].filter((i) => matches(i, terms)).sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    const c = x < y ? -1 : x > y ? 1 : a.id < b.id ? -1 : 1;
    return desc ? -c : c;
  });
  const frag = document.createDocumentFragment();
  for (const inst of list) {
    let tr = rows.get(inst.id);
    rows.delete(inst.id);
    if (!tr) {
      tr = h("tr", { tabindex: "-1" });
      tr.addEventListener("click", (ev) => {
        if (!ev.target.closest("a")) location.hash = "#/instances/" + encodeURIComponent(tr.dataset.id);
      });
    }
    const job = jobText(inst);
    if (tr.__inst !== inst || tr.__job !== job) {
      fleetRow(tr, inst);
      tr.__inst = inst;
      tr.__job = job;
    }
    frag.appendChild(tr);
  }
  for (const tr of rows.values()) tr.remove();
  tbody.appendChild(frag);
  const total = state.instances.size;
  $("#fleet-count").textContent = list.length === total ? `${total} instance${total === 1 ? "" : "s"}` : `${list.length} of ${total}`;
  show($("#fleet-empty"), list.length === 0);
  $("#fleet-empty").textContent = total === 0 ? "No instances yet." : "No instance matches the filter.";
  for (const th of $$("#fleet-table th[data-sort]")) {
    th.setAttribute("aria-sort", th.dataset.sort === key ? (desc ? "descending" : "ascending") : "none");
  }
}

$("#filter").addEventListener("input", (ev) => {
  state.filter = ev.target.value;
  renderFleet();
});

$("#fleet-table thead").addEventListener("click", (ev) => {
  const th = ev.target.closest("th[data-sort]");
  if (!th) return;
  const key = th.dataset.sort;
  state.sort = { key, desc: state.sort.key === key ? !state.sort.desc : key === "last_seen" };
  renderFleet();
});

$("#fleet-reload").addEventListener("click", () => loadFleet());

// The summary is read again a second after instance events, at most one
// request at a time, and once more if events came while it was read: the
// last read always starts after the last event.
let summaryTimer = 0;
let summaryBusy = false;
let summaryStale = false;
function summarySoon() {
  summaryStale = true;
  if (state.operator && !summaryBusy) summaryTimer ||= setTimeout(loadSummary, 1000);
}

async function loadSummary() {
  clearTimeout(summaryTimer);
  summaryTimer = 0;
  const box = $("#fleet-summary");
  if (!state.operator) return;
  summaryBusy = true;
  summaryStale = false;
  let f;
  try {
    f = await get("/api/v1/fleet");
  } catch (e) {
    if (e instanceof ApiError && e.status === 403) {
      state.operator = false;
      show(box, false);
      show($("#command-panel"), false);
      show($("#nav-runs"), false);
    }
    return;
  } finally {
    summaryBusy = false;
    if (summaryStale) summarySoon();
  }
  const chips = (title, counts, key, asBadge) => {
    const entries = Object.entries(counts || {}).filter(([, n]) => n > 0).sort((a, b) => b[1] - a[1]);
    if (entries.length === 0) return null;
    return h("div", { class: "group" }, h("span", { class: "label", text: title }),
      entries.map(([name, n]) => h("button", {
        type: "button", class: asBadge ? "chip badge" : "chip", dataset: asBadge ? { status: name } : {},
        title: `Show only ${key}:${name}`,
        onclick: () => { $("#filter").value = state.filter = `${key}:${name}`; renderFleet(); },
      }, h("span", { text: name || "—" }), h("b", { text: String(n) }))));
  };
  fill(box,
    h("div", { class: "group totals" }, h("b", { id: "fleet-total", text: String(f.total ?? 0) }), f.total === 1 ? " instance · " : " instances · ",
      h("b", { text: String(f.connected ?? 0) }), " connected"),
    chips("Status", f.by_status, "status", true),
    chips("Lifecycle", f.by_lifecycle, "lifecycle"),
    chips("Plan", f.by_plan, "plan"),
    chips("Region", f.by_region, "region"),
    chips("Agent", f.by_agent_version, "agent"),
  );
  show(box, true);
}

// ---- one instance ---------------------------------------------------------

function stopInstance(v) {
  if (v) {
    v.closed = true;
    clearTimeout(v.metricsTimer);
    clearTimeout(v.timelineTimer);
    v.resize?.disconnect();
  }
  return null;
}

async function openInstance(id) {
  const prev = state.view;
  stopInstance(prev);
  const v = { id, inst: null, jobs: [], open: prev?.id === id ? prev.open : new Map(), window: prev?.window || "1h",
    metrics: null, timelineCursor: "", closed: false };
  state.view = v;
  show($("#instance-error"), false);
  $("#instance-head").replaceChildren(h("h1", { text: id }));
  $("#metrics-chart").replaceChildren();
  $("#jobs").replaceChildren();
  $("#timeline tbody").replaceChildren();
  $("#services tbody").replaceChildren();
  $("#instance-details").replaceChildren();
  if (prev?.id !== id) {
    $("#command-result").hidden = true;
  }
  for (const b of $$("#metrics-window button")) b.setAttribute("aria-pressed", String(b.dataset.window === v.window));
  v.resize = new ResizeObserver(() => { if (v.metrics) drawMetrics(v); });
  v.resize.observe($("#metrics-chart"));

  try {
    const inst = await get("/api/v1/instances/" + encodeURIComponent(id));
    if (v.closed) return;
    v.inst = inst;
    renderInstance(v);
  } catch (e) {
    if (v.closed || (e instanceof ApiError && e.status === 401)) return;
    const err = $("#instance-error");
    err.textContent = e instanceof ApiError && e.status === 404 ? `No instance ${id}.` : `Could not load ${id}: ${e.message}`;
    show(err, true);
    return;
  }
  loadMetrics(v);
  loadJobs(v);
  loadTimeline(v, false);
}

function instanceChanged(inst) {
  const v = state.view;
  v.inst = { ...inst, metrics: v.inst?.metrics };
  renderInstance(v);
}

function renderInstance(v) {
  const inst = v.inst;
  document.title = `${inst.subdomain || inst.id} · StackPro`;
  const job = inst.job ? jobText(inst) : "";
  const facts = [
    ["Customer", inst.customer], ["Plan", inst.plan], ["Region", inst.region], ["Lifecycle", inst.lifecycle],
    ["Agent", inst.agent_version], ["Connection", inst.connected ? "connected" : "disconnected"],
  ].filter(([, x]) => x);
  fill($("#instance-head"),
    h("div", { class: "title" },
      h("h1", { text: inst.subdomain || inst.id }),
      badge(inst.status),
      h("span", { class: "muted mono", text: inst.subdomain ? inst.id : "" })),
    h("div", { class: "facts" },
      facts.map(([k, x]) => h("span", {}, h("span", { class: "k", text: k }), " ", h("b", { text: x }))),
      h("span", {}, h("span", { class: "k", text: "Last seen" }), " ", h("b", {}, since(inst.last_seen))),
      job ? h("span", { class: "job-now" }, h("span", { class: "k", text: "Job" }), " ",
        h("b", { text: job })) : null),
    inst.problems?.length ? h("ul", { class: "problems" }, inst.problems.map((p) => h("li", { text: p }))) : null,
  );
  $("#instance-head").dataset.status = inst.status || "";

  const services = inst.stack?.services || [];
  $("#services tbody").replaceChildren(...services.map((s) => h("tr", { dataset: { service: s.service, state: s.state } },
    h("td", { class: "mono", text: s.service }),
    h("td", {}, h("span", { class: "pill", dataset: { state: s.state }, text: s.state })),
    h("td", {}, s.health ? h("span", { class: "pill", dataset: { health: s.health }, text: s.health }) : "–"),
    h("td", { class: "num", text: String(s.restart_count ?? 0) }),
    h("td", { class: "num" }, s.state === "running" && s.started_at
      ? h("span", { dataset: { since: ms(s.started_at), kind: "uptime" }, title: s.started_at, text: duration(ms(s.started_at)) })
      : ""),
  )));
  show($("#services-empty"), services.length === 0);
  const st = inst.stack;
  $("#stack-version").textContent = st ? `version ${st.applied_version}${st.failed_version ? ` · v${st.failed_version} failed` : ""}` : "";
  $("#service-names").replaceChildren(...services.map((s) => h("option", { value: s.service })));

  const m = inst.metrics;
  const rows = [
    ["ID", inst.id], ["Provider", inst.provider], ["Provider ID", inst.provider_id], ["Type", inst.instance_type],
    ["Address", inst.address], ["Created", stamp(inst.created_at)], ["Enrolled", stamp(inst.enrolled_at)],
    ["Health", inst.health], ["Stack error", st?.failed_reason || st?.error],
    ["Load", m?.load ? `${m.load.one?.toFixed(2)} ${m.load.five?.toFixed(2)} ${m.load.fifteen?.toFixed(2)}` : ""],
    ["Uptime", m?.uptime_seconds ? duration(Date.now() - m.uptime_seconds * 1000) : ""],
  ].filter(([, x]) => x);
  $("#instance-details").replaceChildren(...rows.flatMap(([k, x]) => [h("dt", { text: k }), h("dd", { text: x })]));
}

// ---- metrics --------------------------------------------------------------

$("#metrics-window").addEventListener("click", (ev) => {
  const b = ev.target.closest("button[data-window]");
  const v = state.view;
  if (!b || !v) return;
  v.window = b.dataset.window;
  for (const x of $$("#metrics-window button")) x.setAttribute("aria-pressed", String(x === b));
  loadMetrics(v);
});

async function loadMetrics(v) {
  clearTimeout(v.metricsTimer);
  const win = v.window;
  let next = 30000;
  try {
    const m = await get(`/api/v1/instances/${encodeURIComponent(v.id)}/metrics?window=${win}`);
    if (v.closed || v.window !== win) return;
    v.metrics = m;
    drawMetrics(v);
    // A new instance has no history yet: look again soon.
    if ((m.points?.length || 0) < 2) next = 5000;
  } catch (e) {
    if (v.closed) return;
    $("#metrics-meta").textContent = `metrics unavailable: ${e.message}`;
  }
  if (!v.closed) v.metricsTimer = setTimeout(() => loadMetrics(v), next);
}

function drawMetrics(v) {
  const m = v.metrics;
  const pts = (m.points || []).map((p) => ({ ...p, t: ms(p.at) })).filter((p) => Number.isFinite(p.t));
  const from = ms(m.from), to = ms(m.to);
  const series = (name, key) => ({ name, points: pts.map((p) => [p.t, p[key]]) });
  const last = pts[pts.length - 1];
  const max = (key) => pts.reduce((a, p) => Math.max(a, p[key] || 0), 0);
  const rolled = pts.some((p) => p.samples > 1);
  fill($("#metrics-meta"), `${pts.length} ${m.resolution === "1h" ? "hourly points" : rolled ? "points" : "samples"}`,
    last ? [" · latest ", since(last.at)] : null);
  // The time axis is the window, or the part of it since the first sample
  // when the instance is younger than the window: a day-old instance's
  // hour is not squeezed into the right edge of a month.
  const end = Number.isFinite(to) ? to : Date.now();
  let start = Number.isFinite(from) ? from : end - 3600e3;
  if (pts.length > 0 && pts[0].t > start) start = Math.min(pts[0].t, end - 60e3);
  const box = $("#metrics-chart");
  const charts = [
    ["cpu", { title: "CPU", max: 100, format: percent,
      series: rolled ? [series("avg", "cpu_percent"), series("max", "cpu_max")] : [series("cpu", "cpu_percent")] }],
    ["memory", { title: last?.memory_total ? `Memory of ${bytes(last.memory_total)}` : "Memory", max: max("memory_total"),
      format: bytes, binary: true, series: [series("used", "memory_used")] }],
    ["disk", { title: last?.disk_total ? `Disk of ${bytes(last.disk_total)}` : "Disk", max: max("disk_total"),
      format: bytes, binary: true, series: [series("used", "disk_used")] }],
    ["network", { title: "Network", format: rate, binary: true, series: [series("rx", "rx_bps"), series("tx", "tx_bps")] }],
  ];
  for (const [key, spec] of charts) {
    let div = $(`[data-chart="${key}"]`, box);
    if (!div) div = box.appendChild(h("div", { dataset: { chart: key } }));
    drawChart(div, { ...spec, from: start, to: end });
  }
}

// ---- jobs -----------------------------------------------------------------

async function loadJobs(v) {
  try {
    const page = await get(`/api/v1/instances/${encodeURIComponent(v.id)}/jobs?limit=20`);
    if (v.closed) return;
    const fresh = new Map(v.jobs.map((j) => [j.id, j])); // stream updates that raced the fetch
    v.jobs = (page.jobs || []).map((j) => (fresh.has(j.id) && ms(fresh.get(j.id).updated_at) > ms(j.updated_at) ? fresh.get(j.id) : j));
    for (const j of v.jobs) if (!state.jobs.has(j.id) || j.state === "running") state.jobs.set(j.id, j);
    renderJobs(v);
  } catch (e) {
    if (!v.closed) $("#jobs").replaceChildren(h("p", { class: "error", text: `Could not load the jobs: ${e.message}` }));
  }
}

function jobChanged(job) {
  const v = state.view;
  const i = v.jobs.findIndex((j) => j.id === job.id);
  if (i >= 0) v.jobs[i] = job; else v.jobs.unshift(job);
  renderJobs(v);
  clearTimeout(v.timelineTimer);
  v.timelineTimer = setTimeout(() => loadTimeline(v, false), 1500);
}

function renderJobs(v) {
  const box = $("#jobs");
  if (v.jobs.length === 0) {
    box.replaceChildren(h("p", { class: "empty", text: "No jobs." }));
    return;
  }
  const first = v.jobs[0].id;
  box.replaceChildren(...v.jobs.map((job) => {
    const open = v.open.has(job.id) ? v.open.get(job.id) : job.id === first || job.kind === "provision" || job.state === "running";
    const steps = job.steps || [];
    const d = h("details", { class: "job", dataset: { job: job.id, kind: job.kind, state: job.state }, open },
      h("summary", {},
        h("b", { text: job.kind }), " ",
        h("span", { class: "pill", dataset: { state: job.state }, text: job.state }), " ",
        h("span", { class: "muted", text: steps.length ? `${Math.min(job.done, steps.length)}/${steps.length} steps` : "" }),
        job.attempt > 1 ? h("span", { class: "muted", text: ` · attempt ${job.attempt}` }) : null,
        h("span", { class: "spacer" }),
        h("span", { class: "muted mono", text: `${job.id} · ${stamp(job.created_at)}` })),
      steps.length ? h("ol", { class: "steps" }, steps.map((s, i) => h("li", {
        dataset: { step: s, done: String(i < job.done), current: String(i === job.done && job.state === "running") }, text: s }))) : null,
      job.error ? h("p", { class: "error", text: job.error }) : null,
      h("table", { class: "grid log" },
        h("thead", {}, h("tr", {}, h("th", { text: "Time" }), h("th", { text: "Step" }), h("th", { text: "Outcome" }), h("th", { text: "Detail" }))),
        h("tbody", {}, (job.log || []).map((l) => h("tr", { dataset: { step: l.step, outcome: l.outcome } },
          h("td", { class: "mono nowrap", title: l.at, text: stamp(l.at) }),
          h("td", { class: "mono", text: l.step }),
          h("td", {}, h("span", { class: "pill", dataset: { outcome: l.outcome }, text: l.outcome })),
          h("td", { class: "detail", text: l.detail || "" }))))));
    d.addEventListener("toggle", () => v.open.set(job.id, d.open));
    return d;
  }));
}

// ---- timeline -------------------------------------------------------------

function timelineRow(e) {
  return h("tr", { dataset: { kind: e.kind, severity: e.severity || "info" } },
    h("td", { class: "mono nowrap", title: e.at, text: stamp(e.at) }),
    h("td", {}, h("span", { class: "pill", dataset: { severity: e.severity || "info" }, text: e.severity || "info" })),
    h("td", { text: e.kind }),
    h("td", { class: "detail" }, e.message || "", e.type ? h("span", { class: "type mono", text: ` ${e.type}` }) : null));
}

async function loadTimeline(v, more) {
  const cursor = more ? v.timelineCursor : "";
  try {
    const page = await get(`/api/v1/instances/${encodeURIComponent(v.id)}/timeline?limit=50` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""));
    if (v.closed) return;
    const rows = (page.entries || []).map(timelineRow);
    const tbody = $("#timeline tbody");
    if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
    v.timelineCursor = page.next_cursor || "";
    show($("#timeline-more"), Boolean(v.timelineCursor));
    show($("#timeline-empty"), tbody.children.length === 0);
  } catch (e) {
    if (!v.closed) $("#timeline tbody").replaceChildren(h("tr", {}, h("td", { colspan: 4, class: "error", text: `Could not load the timeline: ${e.message}` })));
  }
}

$("#timeline-more").addEventListener("click", () => state.view && loadTimeline(state.view, true));

function agentEvent(ev) {
  $("#timeline tbody").prepend(timelineRow({ at: ev.at, kind: "event", severity: ev.severity, message: ev.message, type: ev.type }));
  show($("#timeline-empty"), false);
}

// ---- commands -------------------------------------------------------------

function commandFields() {
  const name = $("#command-name").value;
  show($("#command-service-field"), name === "stack.restart" || name === "stack.logs");
  show($("#command-lines-field"), name === "stack.logs");
  $("#command-service").required = name === "stack.restart" || name === "stack.logs";
}
$("#command-name").addEventListener("change", commandFields);
commandFields();

$("#command-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const v = state.view;
  if (!v) return;
  const name = $("#command-name").value;
  const body = { name };
  if (name === "stack.restart") body.args = { service: $("#command-service").value.trim() };
  if (name === "stack.logs") body.args = { service: $("#command-service").value.trim(), lines: Number($("#command-lines").value) || 100 };
  if ((name === "stack.down" || name === "stack.restart") &&
      !confirm(`${name} ${body.args?.service || ""} on ${v.inst?.subdomain || v.id}?`)) return;
  const button = $("#command-submit");
  const result = $("#command-result");
  const status = $("#command-status");
  const logs = $("#command-logs");
  button.disabled = true;
  button.textContent = "Sending…";
  const started = performance.now();
  try {
    const reply = await call("POST", `/api/v1/instances/${encodeURIComponent(v.id)}/commands`, body);
    const took = Math.round(performance.now() - started);
    result.dataset.state = reply.ok ? "ok" : "failed";
    status.textContent = reply.ok ? `✓ ${name}: ok (${took} ms)` : `✗ ${name} refused: ${reply.error || "no reason given"}`;
    const text = typeof reply.result?.logs === "string" ? reply.result.logs : "";
    logs.textContent = text;
    show(logs, text !== "");
    $("#command-reply").textContent = JSON.stringify(reply, null, 2);
  } catch (e) {
    result.dataset.state = "error";
    status.textContent = e instanceof ApiError ? `✗ ${name}: ${e.message} (HTTP ${e.status})` : `✗ ${name}: ${e.message}`;
    show(logs, false);
    $("#command-reply").textContent = "";
  } finally {
    button.disabled = false;
    button.textContent = "Send";
    show(result, true);
  }
});

// ---- runs -----------------------------------------------------------------

// Target states in the order a target goes through them; the final ones
// are a run's progress, failed and timed_out its errors.
const TARGET_STATES = ["pending", "delivered", "running", "succeeded", "failed", "timed_out", "undeliverable", "skipped"];
const FINAL_STATES = ["succeeded", "failed", "timed_out", "undeliverable", "skipped"];
// The bar's segments, left to right: outcomes first, then what is in flight.
const BAR_STATES = [...FINAL_STATES, "running", "delivered"];
// Commands that stop or change every stack: asked again before going to all.
const DISRUPTIVE = ["stack.down", "stack.restart", "stack.pull"];
// Argument examples, for the commands that take some.
const ARGS_HINT = { "stack.restart": '{"service": "web"}', "stack.logs": '{"service": "web", "lines": 100}' };

const runPath = (id) => "/api/v1/runs/" + encodeURIComponent(id);

/** A periodic reader (the runs list or a run) stops for good. */
function stopPolling(v) {
  if (v) {
    v.closed = true;
    clearTimeout(v.timer);
  }
  return null;
}

/** The selection in stackctl's syntax, as fleet.Selection.String writes it. */
function selectionText(s = {}) {
  if (s.all) return "all";
  const parts = (s.ids || []).map((id) => "id=" + id);
  for (const k of ["plan", "region", "version", "status"]) if (s[k]) parts.push(`${k}=${s[k]}`);
  for (const k of Object.keys(s.tags || {}).sort()) parts.push(`tag.${k}=${s.tags[k]}`);
  return parts.join(",");
}

function progress(run) {
  const c = run.counts || {};
  return {
    done: FINAL_STATES.reduce((n, st) => n + (c[st] || 0), 0),
    errors: (c.failed || 0) + (c.timed_out || 0),
  };
}

const runBadge = (st) => h("span", { class: "badge", dataset: { run: st || "unknown" }, text: st || "unknown" });

/** bar fills el with one segment per state that has targets. */
function bar(el, run) {
  const c = run.counts || {};
  const total = run.total || 0;
  el.replaceChildren(...BAR_STATES.filter((st) => c[st] > 0 && total > 0).map((st) => {
    const seg = h("span", { dataset: { state: st }, title: `${st}: ${c[st]}` });
    seg.style.width = `${(100 * c[st]) / total}%`; // CSSOM, which the CSP allows
    return seg;
  }));
  return el;
}

// The runs list: newest first, read again every 2 s while a run in it is
// running and every 10 s otherwise (runs started from stackctl show up).

function openRuns() {
  stopPolling(state.runs);
  const v = { runs: [], cursor: "", older: false, closed: false, timer: 0 };
  state.runs = v;
  loadRuns(v, false);
}

async function loadRuns(v, more) {
  if (!more) clearTimeout(v.timer);
  const err = $("#runs-error");
  try {
    const cursor = more ? `&cursor=${encodeURIComponent(v.cursor)}` : "";
    const page = await get("/api/v1/runs?limit=50" + cursor);
    if (v.closed) return;
    const got = page.runs || [];
    if (more) {
      const known = new Set(v.runs.map((r) => r.id));
      v.runs.push(...got.filter((r) => !known.has(r.id)));
      v.older = true;
      v.cursor = page.next_cursor || "";
    } else {
      // The first page again: new and changed runs, the older pages kept.
      const fresh = new Set(got.map((r) => r.id));
      v.runs = [...got, ...v.runs.filter((r) => !fresh.has(r.id))];
      if (!v.older) v.cursor = page.next_cursor || "";
    }
    show(err, false);
    renderRuns(v);
  } catch (e) {
    if (v.closed || (e instanceof ApiError && e.status === 401)) return;
    err.textContent = `Could not load the runs: ${e.message}`;
    show(err, true);
  }
  if (!more && !v.closed) {
    v.timer = setTimeout(() => loadRuns(v, false), v.runs.some((r) => r.state === "running") ? 2000 : 10000);
  }
}

function renderRuns(v) {
  $("#runs-table tbody").replaceChildren(...v.runs.map((r) => {
    const { done, errors } = progress(r);
    const href = "#/runs/" + encodeURIComponent(r.id);
    const tr = h("tr", { dataset: { id: r.id, state: r.state } },
      h("td", { class: "mono nowrap" }, h("a", { href, text: r.id })),
      h("td", { class: "mono", text: r.spec?.command || "" }),
      h("td", { class: "mono selection", text: selectionText(r.spec?.select) }),
      h("td", {}, runBadge(r.state)),
      h("td", {}, h("div", { class: "meter" }, bar(h("div", { class: "bar" }), r), h("span", { class: "num", text: `${done}/${r.total}` }))),
      h("td", { class: "num", dataset: { over: String(errors > r.error_budget) }, text: `${errors} / ${r.error_budget}` }),
      h("td", { class: "num nowrap" }, since(r.created_at)),
      h("td", { class: "nowrap", text: r.created_by || "" }));
    tr.addEventListener("click", (ev) => { if (!ev.target.closest("a")) location.hash = href; });
    return tr;
  }));
  const n = v.runs.length;
  $("#runs-count").textContent = n ? `${n}${v.cursor ? "+" : ""} run${n === 1 ? "" : "s"}` : "";
  show($("#runs-empty"), n === 0);
  show($("#runs-more"), Boolean(v.cursor));
}

$("#runs-reload").addEventListener("click", () => state.runs && loadRuns(state.runs, false));
$("#runs-more").addEventListener("click", () => state.runs && loadRuns(state.runs, true));

// ---- starting a run -------------------------------------------------------

$("#run-command").replaceChildren(...$$("#command-name option").map((o) => o.cloneNode(true)));

function runFormFields() {
  $("#run-args").placeholder = ARGS_HINT[$("#run-command").value] || "";
  show($("#run-match"), $("#run-scope-match").checked);
}
$("#run-command").addEventListener("change", runFormFields);
for (const r of $$('#run-form input[name="scope"]')) r.addEventListener("change", runFormFields);
runFormFields();

const list = (text) => text.split(",").map((x) => x.trim()).filter(Boolean);

/** The POST /api/v1/runs body the form asks for, or what is wrong with it. */
function runRequest() {
  const problems = [];
  const body = {
    command: $("#run-command").value,
    max_concurrency: $("#run-concurrency").value.trim(),
    max_errors: $("#run-errors").value.trim(),
    timeout: $("#run-timeout").value.trim(),
  };
  const args = $("#run-args").value.trim();
  if (args !== "") {
    let v;
    try {
      v = JSON.parse(args);
    } catch (e) {
      problems.push(`Arguments are not JSON: ${e.message}.`);
    }
    if (v !== undefined && (v === null || typeof v !== "object" || Array.isArray(v))) {
      problems.push('Arguments: want a JSON object, like {"service": "web"}.');
    } else if (v !== undefined) {
      body.args = v;
    }
  }
  if ($("#run-scope-all").checked) {
    body.select = { all: true };
  } else {
    const sel = {};
    const ids = list($("#run-ids").value);
    if (ids.length) sel.ids = ids;
    for (const k of ["plan", "region", "version", "status"]) {
      const x = $(`#run-${k}`).value.trim();
      if (x) sel[k] = x;
    }
    for (const kv of list($("#run-tags").value)) {
      const i = kv.indexOf("=");
      if (i <= 0 || i === kv.length - 1) {
        problems.push(`Tags: "${kv}" is not key=value.`);
        continue;
      }
      sel.tags ??= {};
      sel.tags[kv.slice(0, i).trim()] = kv.slice(i + 1).trim();
    }
    if (Object.keys(sel).length === 0 && problems.length === 0) {
      problems.push("Instances: choose all of the fleet, or fill in at least one field to match.");
    }
    body.select = sel;
  }
  return { body, problems };
}

$("#run-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = $("#run-form-error");
  const { body, problems } = runRequest();
  if (problems.length) {
    err.textContent = problems.join(" ");
    show(err, true);
    return;
  }
  show(err, false);
  if (DISRUPTIVE.includes(body.command) && body.select.all &&
      !confirm(`Run ${body.command} on every instance of the fleet?`)) return;
  const button = $("#run-submit");
  button.disabled = true;
  button.textContent = "Starting…";
  try {
    const run = await call("POST", "/api/v1/runs", body);
    location.hash = "#/runs/" + encodeURIComponent(run.id);
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    err.textContent = e instanceof ApiError ? `Could not start the run: ${e.message} (HTTP ${e.status})` : `Could not start the run: ${e.message}`;
    show(err, true);
  } finally {
    button.disabled = false;
    button.textContent = "Start run";
  }
});

// ---- one run --------------------------------------------------------------

$("#targets-state").append(...TARGET_STATES.map((st) => h("option", { value: st, text: st })));

// A run is read every second while it runs; its targets' first page is
// read again whenever the counts change, unless more pages were opened.
function openRun(id) {
  stopPolling(state.run);
  const v = { id, run: null, seen: "", cursor: "", pages: 0, targetsSeq: 0, closed: false, timer: 0 };
  state.run = v;
  document.title = `Run ${id} · StackPro`;
  show($("#run-error"), false);
  delete $("#run-view").dataset.state;
  $("#run-head").replaceChildren(h("div", { class: "title" }, h("h1", { class: "mono", text: id })));
  $("#run-progress-text").textContent = "";
  $("#run-bar").replaceChildren();
  $("#run-counts").replaceChildren();
  $("#targets-table tbody").replaceChildren();
  $("#targets-count").textContent = "";
  $("#targets-state").value = "";
  show($("#run-cancel"), false);
  show($("#targets-empty"), false);
  show($("#targets-more"), false);
  pollRun(v);
}

async function pollRun(v) {
  clearTimeout(v.timer);
  try {
    const run = await get(runPath(v.id));
    if (v.closed) return;
    v.run = run;
    show($("#run-error"), false);
    renderRun(v);
  } catch (e) {
    if (v.closed || (e instanceof ApiError && e.status === 401)) return;
    const err = $("#run-error");
    const gone = e instanceof ApiError && e.status === 404;
    err.textContent = gone ? `No run ${v.id}.` : `Could not load the run: ${e.message}`;
    show(err, true);
    if (gone) return;
  }
  if (!v.closed && v.run?.state !== "completed" && v.run?.state !== "stopped" && v.run?.state !== "cancelled") {
    v.timer = setTimeout(() => pollRun(v), 1000);
  }
}

function renderRun(v) {
  const r = v.run;
  const c = r.counts || {};
  const spec = r.spec || {};
  const { done, errors } = progress(r);
  $("#run-view").dataset.state = r.state;
  const facts = [
    ["Command", spec.command], ["Selection", selectionText(spec.select)],
    ["Arguments", spec.args === undefined ? "" : JSON.stringify(spec.args)],
    ["Concurrency", `${r.concurrency} (${spec.max_concurrency})`], ["Error budget", `${r.error_budget} (${spec.max_errors})`],
    ["Timeout", spec.timeout], ["By", r.created_by], ["Created", stamp(r.created_at)], ["Finished", stamp(r.finished_at)],
  ].filter(([, x]) => x);
  fill($("#run-head"),
    h("div", { class: "title" }, h("h1", { class: "mono", text: r.id }), runBadge(r.state)),
    h("div", { class: "facts" }, facts.map(([k, x]) => h("span", {}, h("span", { class: "k", text: k }), " ", h("b", { text: x })))),
    r.reason ? h("p", { class: "reason", text: r.reason }) : null);
  $("#run-progress-text").textContent =
    `${done} of ${r.total} done · ${r.sent} sent · ${errors} error${errors === 1 ? "" : "s"} of ${r.error_budget} allowed`;
  const b = bar($("#run-bar"), r);
  b.setAttribute("aria-valuemax", String(r.total));
  b.setAttribute("aria-valuenow", String(done));
  $("#run-counts").replaceChildren(...TARGET_STATES.map((st) => h("span", {
    class: "count", dataset: { state: st, zero: String(!c[st]) } }, h("span", { text: st }), h("b", { text: String(c[st] || 0) }))));
  show($("#run-cancel"), r.state === "running");
  const seen = r.state + JSON.stringify(c);
  if (seen !== v.seen) {
    v.seen = seen;
    if (v.pages <= 1) loadTargets(v, false);
  }
}

$("#run-cancel").addEventListener("click", async () => {
  const v = state.run;
  if (!v?.run || v.run.state !== "running") return;
  if (!confirm(`Cancel run ${v.id}? Targets not sent yet are skipped.`)) return;
  const button = $("#run-cancel");
  button.disabled = true;
  try {
    const run = await call("POST", runPath(v.id) + "/cancel", undefined);
    if (v.closed) return;
    v.run = run;
    renderRun(v);
  } catch (e) {
    if (v.closed || (e instanceof ApiError && e.status === 401)) return;
    const err = $("#run-error");
    err.textContent = `Could not cancel the run: ${e.message}`;
    show(err, true);
  } finally {
    button.disabled = false;
  }
});

/** A target's result, compact on one line, all of it when opened. */
function resultCell(result) {
  if (result === undefined || result === null) return "";
  const line = JSON.stringify(result);
  if (line.length <= 80) return h("code", { class: "mono", text: line });
  const full = typeof result.logs === "string" ? result.logs : JSON.stringify(result, null, 2);
  return h("details", {}, h("summary", { class: "mono", text: line.slice(0, 77) + "…" }), h("pre", { text: full }));
}

function targetRow(t) {
  return h("tr", { dataset: { instance: t.instance, state: t.state } },
    h("td", { class: "mono nowrap" }, h("a", { href: "#/instances/" + encodeURIComponent(t.instance), text: t.instance })),
    h("td", {}, h("span", { class: "pill", dataset: { state: t.state }, text: t.state })),
    h("td", { class: "mono nowrap", title: t.sent_at || "", text: stamp(t.sent_at) }),
    h("td", { class: "mono nowrap", title: t.finished_at || "", text: stamp(t.finished_at) }),
    h("td", { class: "detail" },
      t.refused ? h("span", { class: "pill", dataset: { refused: t.refused }, text: `refused: ${t.refused}` }) : null,
      t.refused && t.error ? " " : null, t.error || ""),
    h("td", { class: "result" }, resultCell(t.result)));
}

async function loadTargets(v, more) {
  const seq = ++v.targetsSeq; // only the latest read shows
  const st = $("#targets-state").value;
  const query = `?limit=100${st ? `&state=${encodeURIComponent(st)}` : ""}${more ? `&cursor=${encodeURIComponent(v.cursor)}` : ""}`;
  const tbody = $("#targets-table tbody");
  try {
    const page = await get(runPath(v.id) + "/targets" + query);
    if (v.closed || seq !== v.targetsSeq) return;
    const rows = (page.targets || []).map(targetRow);
    if (more) tbody.append(...rows); else tbody.replaceChildren(...rows);
    v.pages = more ? v.pages + 1 : 1;
    v.cursor = page.next_cursor || "";
    const n = tbody.children.length;
    $("#targets-count").textContent = `${n}${v.cursor ? "+" : ""} shown`;
    show($("#targets-empty"), n === 0);
    $("#targets-empty").textContent = st ? `No target is ${st}.` : "No targets.";
    show($("#targets-more"), Boolean(v.cursor));
  } catch (e) {
    if (v.closed || seq !== v.targetsSeq || (e instanceof ApiError && e.status === 401)) return;
    tbody.replaceChildren(h("tr", {}, h("td", { colspan: 6, class: "error", text: `Could not load the targets: ${e.message}` })));
  }
}

$("#targets-state").addEventListener("change", () => state.run && loadTargets(state.run, false));
$("#targets-reload").addEventListener("click", () => state.run && loadTargets(state.run, false));
$("#targets-more").addEventListener("click", () => state.run && loadTargets(state.run, true));

// ---- routing and start ----------------------------------------------------

function route() {
  if (!session.signedIn) {
    showLogin();
    return;
  }
  const hash = location.hash;
  const m = hash.match(/^#\/(instances|runs)\/([^/?#]+)/);
  const view = m ? (m[1] === "runs" ? "run" : "instance") : /^#\/runs\/?$/.test(hash) ? "runs" : "fleet";
  const id = m ? decodeURIComponent(m[2]) : "";
  show($("#login-view"), false);
  show($("#topbar"), true);
  for (const name of Object.keys(views)) show($(`#${name}-view`), name === view);
  for (const a of $$(".topbar nav a")) {
    if (views[view] && a.matches(views[view])) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  if (view !== "instance") state.view = stopInstance(state.view);
  if (view !== "runs") state.runs = stopPolling(state.runs);
  if (view !== "run") state.run = stopPolling(state.run);
  switch (view) {
    case "instance":
      if (state.view?.id !== id) openInstance(id);
      window.scrollTo(0, 0);
      break;
    case "runs":
      openRuns();
      document.title = "Runs · StackPro";
      break;
    case "run":
      if (state.run?.id !== id) openRun(id);
      window.scrollTo(0, 0);
      break;
    default:
      document.title = "Fleet · StackPro";
  }
}

function start() {
  $("#whoami").textContent = session.who;
  state.operator = true; // until /fleet says 403
  show($("#command-panel"), true);
  show($("#nav-runs"), true);
  setLive("connecting");
  state.stream?.stop();
  state.stream = events(onEvent, setLive);
  loadFleet();
  route();
}

window.addEventListener("hashchange", route);
setInterval(tick, 1000);
if (session.signedIn) start(); else showLogin();
