// The sperse dashboard's pages: vanilla JS, no build step. Every page loads its snapshot
// from the JSON API, then applies the deltas of the live feed (/api/events, server-sent
// events). Text from the cluster is only ever set with textContent, never as HTML.
"use strict";

const PAGE = document.body.dataset.page;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else if (key === "onclick") node.addEventListener("click", value);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: ${response.status}`);
  return response.json();
}

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes || 0;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
  return unit === 0 ? `${value} B` : `${value.toFixed(1)} ${units[unit]}`;
}

function age(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "-";
  seconds = Math.max(0, seconds);
  if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function duration(row, now) {
  if (row.started === null || row.started === undefined) return "";
  const end = row.ended !== null && row.ended !== undefined ? row.ended : now;
  return `${Math.max(0, end - row.started).toFixed(2)} s`;
}

// Redraws at a bounded rate whatever the rate of deltas: a delta only updates the page's
// data and asks for a redraw; the redraw runs on an animation frame (none while the tab is
// hidden), at most once every `gap` ms, however many deltas asked for it meanwhile.
function redrawer(draw, gap) {
  let asked = false;
  let last = -Infinity;
  return function ask() {
    if (asked) return;
    asked = true;
    setTimeout(() => requestAnimationFrame(() => {
      asked = false;
      last = performance.now();
      draw();
    }), Math.max(0, last + gap - performance.now()));
  };
}
const REDRAW_GAP = 500; // ms: at most two redraws a second per view
const TABLE_REDRAW_GAP = 1000; // ms: a table of tasks, at most once a second
const STREAM_REDRAW_GAP = 500; // ms: the task stream, at most twice a second

// ---- the live feed ----------------------------------------------------------------------

const live = {
  source: null,
  seq: 0,
  handlers: [],
  resets: [],
  query: "", // "&flows=1": this page watches flows (the host publishes them only then)
  start(seq) {
    this.seq = Math.max(this.seq, seq || 0);
    if (this.source) return;
    const badge = document.getElementById("live");
    const source = new EventSource(`/api/events?since=${this.seq}${this.query}`);
    this.source = source;
    source.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
    source.onerror = () => { badge.textContent = "reconnecting"; badge.className = "live off"; };
    source.addEventListener("delta", (event) => {
      const delta = JSON.parse(event.data);
      this.seq = delta.seq;
      for (const handler of this.handlers) handler(delta);
    });
    source.addEventListener("reset", () => { for (const reset of this.resets) reset(); });
  },
  // A hidden tab draws nothing: its feed is closed (the host then does no work for it) and
  // opened again, from the last change seen, when the tab shows.
  pause() {
    if (this.source) this.source.close();
    this.source = null;
    const badge = document.getElementById("live");
    badge.textContent = "paused";
    badge.className = "live off";
  },
  on(handler, reset) {
    this.handlers.push(handler);
    if (reset) this.resets.push(reset);
  },
};

window.sperseDashboard = { live };

// ---- Cluster ---------------------------------------------------------------------------

function clusterPage(main) {
  const servers = new Map();
  const body = el("tbody");
  const count = el("span");
  const columns = ["server", "address", "tags", "resources", "workers", "queued", "objects",
                   "memory", "store", "sessions", "heartbeat"];
  const numeric = new Set(["queued", "sessions"]);
  main.append(
    el("h2", {}, "Servers ", count),
    el("table", { id: "servers" },
      el("thead", {}, el("tr", {}, ...columns.map((c) => el("th", { class: numeric.has(c) ? "num" : "" }, c)))),
      body),
    el("p", { class: "note" }, "Servers appear as they join and go as they leave or stop answering."),
  );

  function row(server) {
    const workers = server.workers || 0;
    const busy = server.busy || 0;
    const bar = el("span", { class: "bar" }, el("span"));
    bar.firstChild.style.width = workers ? `${Math.min(100, (100 * busy) / workers)}%` : "0";
    const tags = el("td", {}, ...(server.tags || []).map((t) => el("span", { class: "tag" }, t)));
    const resources = Object.entries(server.resources || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const heartbeat = el("td", { class: "heartbeat" });
    heartbeat.dataset.at = server.last_heartbeat || "";
    const tr = el("tr", { "data-server": server.name },
      el("td", {}, server.name),
      el("td", {}, server.address || "", server.tls ? " (tls)" : ""),
      tags,
      el("td", {}, resources || "-"),
      el("td", {}, bar, `${busy} busy, ${Math.max(0, workers - busy)} idle of ${workers}`),
      el("td", { class: "num" }, server.queued ?? "-"),
      el("td", {}, server.objects === undefined ? "-" : `${server.objects} (${size(server.object_bytes)})`),
      el("td", { class: "memory" }, server.rss ? `${size(server.rss)} + ${size(server.workers_rss)} workers` : "-"),
      el("td", { class: "store" }, server.store_keys === undefined ? "-"
        : `${server.store_keys} keys (${size(server.store_bytes)})`),
      el("td", { class: "num" }, server.sessions ?? "-"),
      heartbeat,
    );
    return tr;
  }

  function render() {
    body.replaceChildren();
    const names = [...servers.keys()].sort();
    for (const name of names) body.append(row(servers.get(name)));
    if (!names.length) body.append(el("tr", {}, el("td", { colSpan: columns.length, class: "empty" }, "no server")));
    count.textContent = `(${names.length})`;
    tick();
  }

  function tick() {
    const now = Date.now() / 1000;
    for (const cell of body.querySelectorAll("td.heartbeat")) {
      cell.textContent = cell.dataset.at ? age(now - Number(cell.dataset.at)) : "-";
    }
  }

  async function load() {
    const data = await api("/api/servers");
    servers.clear();
    for (const server of data.servers) servers.set(server.name, server);
    render();
    return data.seq;
  }

  live.on((delta) => {
    if (!delta.servers.length && !delta.gone.length) return;
    for (const name of delta.gone) servers.delete(name);
    for (const server of delta.servers) servers.set(server.name, server);
    render();
  }, load);
  setInterval(tick, 1000);
  return load();
}

// ---- Tasks -----------------------------------------------------------------------------

const STATES = ["queued", "running", "done", "failed", "cancelled"];

// The task stream's lane of a task: its worker (server and pid), or its server.
function laneOf(row) {
  return `${row.server || "?"}${row.worker ? ` · ${row.worker}` : ""}`;
}
const COLOURS = { queued: "#a0a7b4", running: "#2f6fde", done: "#2e9e5b", failed: "#d64545", cancelled: "#8a6d3b" };

async function tasksPage(main) {
  const info = await api("/api/info");
  if (!info.tasks) {
    main.append(
      el("h2", {}, "Tasks"),
      el("p", { class: "note", id: "no-tasks" },
        "This dashboard's host does not see tasks: a coordinator learns only each server's load " +
        "(below, live). Open the dashboard of a client, sperse.connect(..., dashboard=True), for its tasks."),
    );
    const body = el("tbody");
    main.append(el("table", { id: "loads" },
      el("thead", {}, el("tr", {}, el("th", {}, "server"), el("th", { class: "num" }, "busy"),
        el("th", { class: "num" }, "workers"), el("th", { class: "num" }, "queued"))), body));
    const servers = new Map();
    const render = () => {
      body.replaceChildren(...[...servers.values()].sort((a, b) => a.name.localeCompare(b.name)).map((s) =>
        el("tr", { "data-server": s.name }, el("td", {}, s.name), el("td", { class: "num" }, s.busy || 0),
          el("td", { class: "num" }, s.workers || 0), el("td", { class: "num" }, s.queued || 0))));
    };
    const load = async () => {
      const data = await api("/api/servers");
      servers.clear();
      for (const s of data.servers) servers.set(s.name, s);
      render();
      return data.seq;
    };
    live.on((delta) => {
      for (const name of delta.gone) servers.delete(name);
      for (const s of delta.servers) servers.set(s.name, s);
      if (delta.gone.length || delta.servers.length) render();
    }, load);
    return load();
  }

  const view = { state: "", offset: 0, limit: 50, total: 0 };
  // Task rows in a delta: as many as the table shows (the newest ones); the stream takes
  // those that run, a sample of a flood.
  live.query += `&tasks=${view.limit}&every=${REDRAW_GAP}`;
  const counts = el("div", { class: "counts", id: "counts" });
  const canvas = el("canvas", { id: "timeline" });
  const body = el("tbody");
  const pagerText = el("span");
  const prev = el("button", { onclick: () => { view.offset = Math.max(0, view.offset - view.limit); load(); } }, "newer");
  const next = el("button", { onclick: () => { view.offset += view.limit; load(); } }, "older");
  const detail = el("div", { id: "detail" });
  main.append(
    el("h2", {}, "Tasks"), counts,
    el("h2", {}, "Task stream (last 60 s, one lane per worker)"), canvas,
    el("h2", {}, "Newest first"),
    el("div", { class: "pager" }, prev, next, pagerText),
    el("table", { id: "tasks" },
      el("thead", {}, el("tr", {}, ...["task", "state", "server", "worker", "client", "took", "error"].map((c) => el("th", {}, c)))),
      body),
    detail,
  );

  const rows = new Map(); // id -> row shown in the table
  const stream = new Map(); // id -> row, for the timeline (at most STREAM_KEPT: the last seen)
  const STREAM_KEPT = 2000;
  let now = Date.now() / 1000;
  let skew = 0; // server clock - ours
  let shownCounts = {};

  // The counts and the table are built once and updated in place: a redraw changes the text
  // of what changed, never rebuilds elements (new elements cost the browser style, layout
  // and paint of everything around them).
  let dropped = 0;
  const droppedNote = el("span", { class: "note", id: "dropped", hidden: true });
  const boxes = ["", ...STATES].map((state) => {
    const number = el("b", {}, "0");
    const box = el("div", { class: "count", "data-state": state || "all",
      onclick: () => { view.state = state; view.offset = 0; load(); } }, number, state || "all");
    return { state, box, number, shown: "0", selected: false };
  });
  counts.append(droppedNote, ...boxes.map((b) => b.box));

  function renderCounts(values) {
    droppedNote.hidden = !dropped;
    if (dropped) droppedNote.textContent = `${dropped} task events were dropped by busy servers (their buffers were full)`;
    for (const b of boxes) {
      const n = String(b.state ? values[b.state] || 0 : STATES.reduce((sum, s) => sum + (values[s] || 0), 0));
      if (n !== b.shown) { b.number.textContent = n; b.shown = n; }
      const selected = view.state === b.state;
      if (selected !== b.selected) { b.box.classList.toggle("selected", selected); b.selected = selected; }
    }
  }

  // A row of the table: seven cells, the state's badge in the second; refilled in place.
  function emptyRow() {
    const tr = el("tr", { class: "clickable" },
      el("td"), el("td", {}, el("span", { class: "state" })), el("td"), el("td", { class: "num" }),
      el("td"), el("td", { class: "num" }), el("td"));
    tr.shown = [];
    return tr;
  }

  function fillRow(tr, row) {
    const texts = [row.label || row.id, row.state, row.server || "", row.worker || "", row.client || "",
      duration(row, Date.now() / 1000 + skew), row.error_type ? `${row.error_type}: ${row.error}` : ""];
    if (tr.dataset.task !== row.id) tr.dataset.task = row.id;
    const cells = tr.children;
    texts.forEach((text, i) => {
      if (tr.shown[i] === text) return;
      tr.shown[i] = text;
      if (i === 1) {
        const badge = cells[1].firstChild;
        badge.className = `state ${text}`;
        badge.textContent = text;
      } else {
        cells[i].textContent = text;
      }
    });
  }

  const trs = []; // the table's rows, reused
  const noTask = el("tr", {}, el("td", { colSpan: 7, class: "empty" }, "no task"));
  body.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-task]");
    if (tr) showTask(tr.dataset.task);
  });

  function renderRows() {
    const shown = [...rows.values()];
    while (trs.length < shown.length) trs.push(emptyRow());
    shown.forEach((row, i) => fillRow(trs[i], row));
    const wanted = shown.length ? trs.slice(0, shown.length) : [noTask];
    if (body.children.length !== wanted.length || wanted.some((tr, i) => body.children[i] !== tr)) {
      body.replaceChildren(...wanted);
    }
    const first = view.total ? view.offset + 1 : 0;
    const text = `${first}-${Math.min(view.offset + view.limit, view.total)} of ${view.total}`;
    if (pagerText.textContent !== text) pagerText.textContent = text;
    prev.disabled = view.offset === 0;
    next.disabled = view.offset + view.limit >= view.total;
  }

  async function showTask(id) {
    const task = await api(`/api/tasks/${encodeURIComponent(id)}`);
    const parts = [el("h2", {}, `Task ${task.label || task.id}`),
      el("p", {}, el("span", { class: `state ${task.state}` }, task.state),
        ` on ${task.server || "-"}${task.worker ? `, worker pid ${task.worker}` : ""}` +
        `${task.client ? `, from ${task.client}` : ""}, id ${task.id}`)];
    if (task.error_type) parts.push(el("h2", {}, `${task.error_type}: ${task.error}`), el("pre", { class: "traceback" }, task.traceback || "(no traceback)"));
    parts.push(el("h2", {}, "Output"), el("pre", { class: "log" }, task.log || "(nothing printed)"));
    detail.replaceChildren(...parts);
  }

  async function load() {
    const data = await api(`/api/tasks?state=${view.state}&offset=${view.offset}&limit=${view.limit}`);
    skew = data.now - Date.now() / 1000;
    dropped = data.dropped || 0;
    view.total = data.total;
    rows.clear();
    for (const row of data.tasks) rows.set(row.id, row);
    shownCounts = data.counts;
    renderCounts(data.counts);
    renderRows();
    return data.seq;
  }

  async function loadStream() {
    const data = await api("/api/timeline?seconds=60");
    stream.clear();
    for (const row of data.tasks) stream.set(row.id, row);
  }

  // The stream: per lane, the tasks' bars in whole pixels, sorted, and touching bars of one
  // colour merged into one, so a flood of short tasks is a few rectangles, not thousands.
  function draw() {
    now = Date.now() / 1000 + skew;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (canvas.width !== width) canvas.width = width;
    if (canvas.height !== height) canvas.height = height;
    const x = (t) => Math.round(width - ((now - t) / 60) * (width - 90));
    const bars = new Map(); // lane -> [[left, right, colour], ...]
    for (const row of stream.values()) {
      if (row.started === null || row.started === undefined) continue;
      const end = row.ended ?? now;
      if (end < now - 60) { stream.delete(row.id); continue; }
      const lane = laneOf(row);
      if (!bars.has(lane)) bars.set(lane, []);
      const left = Math.max(90, x(row.started));
      bars.get(lane).push([left, Math.max(left + 2, x(end)), COLOURS[row.state] || "#999"]);
    }
    const lanes = [...bars.keys()].sort();
    window.sperseDashboard.lanes = lanes;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const laneHeight = Math.max(8, Math.min(28, (height - 16) / Math.max(1, lanes.length)));
    ctx.font = "11px system-ui, sans-serif";
    lanes.forEach((lane, i) => {
      ctx.fillStyle = "#6b7385";
      ctx.fillText(lane, 4, 12 + i * laneHeight + laneHeight / 2);
      const top = 4 + i * laneHeight;
      let last = null;
      const fill = (bar) => { ctx.fillStyle = bar[2]; ctx.fillRect(bar[0], top, bar[1] - bar[0], laneHeight - 4); };
      for (const bar of bars.get(lane).sort((p, q) => p[0] - q[0] || p[1] - q[1])) {
        if (last && bar[2] === last[2] && bar[0] <= last[1]) { last[1] = Math.max(last[1], bar[1]); continue; }
        if (last) fill(last);
        last = bar;
      }
      if (last) fill(last);
    });
  }

  // A page of rows other than the newest reloads, at most once a second, one load at a time.
  let reloading = null;
  let reloadAfter = 0;
  function reloadSoon() {
    if (reloading) return;
    reloading = new Promise((resolve) => setTimeout(resolve, Math.max(0, reloadAfter - Date.now())))
      .then(load).finally(() => { reloading = null; reloadAfter = Date.now() + 1000; });
  }

  // The counts are redrawn at most four times a second, the stream twice (it scrolls by
  // half a second of its minute), the table (which no one reads faster) once; each in one of
  // the counts' frames, so one frame draws whatever is due, never one frame per part.
  const parts = {
    stream: { gap: STREAM_REDRAW_GAP, paint: () => draw(), changed: false, drawn: -Infinity },
    table: { gap: TABLE_REDRAW_GAP, paint: () => renderRows(), changed: false, drawn: -Infinity },
  };
  const redraw = redrawer(() => {
    renderCounts(shownCounts);
    for (const part of Object.values(parts)) {
      if (!part.changed) continue;
      if (performance.now() - part.drawn >= part.gap - REDRAW_GAP / 2) {
        part.changed = false;
        part.drawn = performance.now();
        part.paint();
      } else {
        redraw(); // its turn comes in a later frame
      }
    }
  }, REDRAW_GAP);

  live.on((delta) => {
    if (!delta.tasks) return;
    shownCounts = delta.counts;
    view.total = view.state ? delta.counts[view.state] || 0
      : STATES.reduce((sum, s) => sum + (delta.counts[s] || 0), 0);
    for (const row of delta.tasks) {
      if (row.started !== null && row.started !== undefined) {
        stream.delete(row.id); // re-inserted: the last seen are kept
        stream.set(row.id, row);
      }
      if (rows.has(row.id)) rows.set(row.id, row);
    }
    for (const id of stream.keys()) {
      if (stream.size <= STREAM_KEPT) break;
      stream.delete(id);
    }
    if (view.offset === 0 && !view.state) {
      const added = delta.tasks.filter((r) => !rows.has(r.id)).reverse();
      if (added.length) {
        const merged = new Map(added.map((r) => [r.id, r]));
        for (const [id, r] of rows) merged.set(id, r);
        rows.clear();
        for (const [id, r] of [...merged].slice(0, view.limit)) rows.set(id, r);
      }
    } else if (delta.tasks_more || view.state) {
      reloadSoon();
    }
    parts.table.changed = parts.stream.changed = true;
    redraw();
  }, () => { load(); loadStream(); });

  const seq = await load();
  await loadStream();
  // The stream scrolls with time: redrawn twice a second while it shows a task, and soon
  // (bounded) when a delta changes it.
  setInterval(() => { if (stream.size) { parts.stream.changed = true; redraw(); } }, STREAM_REDRAW_GAP);
  draw();
  return seq;
}

// ---- Objects ---------------------------------------------------------------------------

async function objectsPage(main) {
  const body = el("tbody");
  const stores = el("tbody");
  const status = el("p", { class: "note" });
  main.append(
    el("h2", {}, "Remote objects"),
    el("div", { class: "pager" }, el("button", { onclick: () => load() }, "refresh"), status),
    el("table", { id: "objects" },
      el("thead", {}, el("tr", {}, ...["name", "type", "server", "calls", "restarts", "pid", "id"].map((c) => el("th", {}, c)))),
      body),
    el("h2", {}, "Per server"),
    el("table", { id: "stores" },
      el("thead", {}, el("tr", {}, ...["server", "held values", "bytes", "remote objects", "store keys", "store bytes"]
        .map((c, i) => el("th", { class: i ? "num" : "" }, c)))),
      stores),
  );
  const servers = new Map();
  function renderStores() {
    stores.replaceChildren(...[...servers.values()].sort((a, b) => a.name.localeCompare(b.name)).map((s) =>
      el("tr", { "data-server": s.name }, el("td", {}, s.name),
        el("td", { class: "num" }, s.objects ?? "-"), el("td", { class: "num" }, s.object_bytes === undefined ? "-" : size(s.object_bytes)),
        el("td", { class: "num" }, s.remote_objects ?? "-"), el("td", { class: "num" }, s.store_keys ?? "-"),
        el("td", { class: "num" }, s.store_bytes === undefined ? "-" : size(s.store_bytes)))));
  }
  async function load() {
    status.textContent = "loading";
    const data = await api("/api/objects");
    body.replaceChildren(...data.objects.map((o) => el("tr", { "data-object": o.object_id },
      el("td", {}, o.name || "-"), el("td", {}, o.type_name), el("td", {}, o.server),
      el("td", { class: "num" }, o.calls), el("td", { class: "num" }, o.restarts),
      el("td", { class: "num" }, o.pid || "-"), el("td", {}, o.object_id || "-"))));
    if (!data.objects.length) body.append(el("tr", {}, el("td", { colSpan: 7, class: "empty" }, "no remote object")));
    status.textContent = !data.available ? "this host does not list remote objects (a client's dashboard does)"
      : data.error ? `not every server answered: ${data.error}`
      : data.named_only ? `named objects of every server, as of their last heartbeat (unnamed ones are counted per server below: their ids are capabilities)`
      : `as of ${new Date().toLocaleTimeString()}`;
  }
  async function loadServers() {
    const data = await api("/api/servers");
    servers.clear();
    for (const s of data.servers) servers.set(s.name, s);
    renderStores();
    return data.seq;
  }
  live.on((delta) => {
    for (const name of delta.gone) servers.delete(name);
    for (const s of delta.servers) servers.set(s.name, s);
    if (delta.gone.length || delta.servers.length) renderStores();
  }, loadServers);
  await load();
  return loadServers();
}

// ---- Workspace -------------------------------------------------------------------------

const CELL_COLOURS = { done: "#2e9e5b", running: "#2f6fde", pending: "#c9b13a", failed: "#d64545",
                       blocked: "#e08a1e", stale: "#8e5bd6" };

// A graph of labelled, coloured nodes and named edges (the Workspace and Flows pages), with
// cytoscape and its dagre layout loaded once.
async function newGraph(container, textWidth, extraStyles) {
  await loadScript("/static/vendor/cytoscape.min.js");
  await loadScript("/static/vendor/cytoscape-dagre.min.js");
  if (!window.sperseDashboard.dagreUsed) {
    window.cytoscape.use(window.cytoscapeDagre);
    window.sperseDashboard.dagreUsed = true;
  }
  return window.cytoscape({
    container,
    wheelSensitivity: 0.3,
    maxZoom: 1.1,
    style: [
      { selector: "node", style: {
        "shape": "round-rectangle", "label": "data(text)", "text-wrap": "wrap", "text-max-width": textWidth,
        "font-size": 11, "text-valign": "center", "color": "#fff", "width": "label", "height": "label",
        "padding": 8, "background-color": "data(colour)" } },
      { selector: "edge", style: {
        "curve-style": "bezier", "target-arrow-shape": "triangle", "width": 1.5, "line-color": "#a0a7b4",
        "target-arrow-color": "#a0a7b4", "label": "data(name)", "font-size": 10, "color": "#6b7385",
        "text-background-color": "#fff", "text-background-opacity": 1 } },
      ...extraStyles,
    ],
  });
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = el("script", { src });
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load ${src}`));
    document.head.append(script);
  });
}

// A server's colour (a running cell's ring on the Workspace page): the same name, the same colour.
const SERVER_COLOURS = ["#e08a1e", "#8e5bd6", "#17a2b8", "#d63384", "#6f42c1", "#20c997", "#fd7e14", "#b8860b"];
function serverColour(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return SERVER_COLOURS[hash % SERVER_COLOURS.length];
}

async function workspacePage(main) {
  const picker = el("select", { id: "workspace-picker" });
  const note = el("p", { class: "note" });
  const graph = el("div", { id: "graph" });
  const body = el("tbody");
  main.append(
    el("h2", {}, "Workspace ", picker), note,
    el("div", { class: "legend" }, ...Object.entries(CELL_COLOURS).map(([s]) => el("span", { class: `state ${s}` }, s))),
    graph,
    el("h2", {}, "Cells"),
    el("table", { id: "cells" },
      el("thead", {}, el("tr", {}, ...["cell", "status", "where", "defines", "runs", "error"].map((c) => el("th", {}, c)))),
      body),
  );
  const cy = await newGraph(graph, 220, [
    { selector: "node", style: { "border-width": "data(ringWidth)", "border-color": "data(ring)" } },
  ]);
  window.sperseDashboard.graph = cy;
  let current = "";
  let version = null;
  let shape = "";
  let listSeq = 0;

  // Where a cell runs comes with the graph: its client publishes the graph again, with the
  // cell's server (``on``), when the cell's task starts there (on a coordinator's page too).
  function whereOf(cell) {
    return cell.on || cell.where || (cell.remote ? "-" : "local");
  }

  function nodeData(cell) {
    const where = cell.on && cell.status === "running" ? ` on ${cell.on}` : "";
    return { id: `c${cell.id}`, text: `[${cell.id}] ${cell.label}\n${cell.status}${where}`,
             colour: CELL_COLOURS[cell.status] || "#999", status: cell.status, label: cell.label,
             on: where ? cell.on : "", ring: where ? serverColour(cell.on) : "#fff", ringWidth: where ? 4 : 0 };
  }

  async function loadGraph() {
    if (!current) return;
    const data = await api(`/api/workspaces/${encodeURIComponent(current)}`);
    version = data.version;
    const structure = JSON.stringify([data.cells.map((c) => c.id), data.edges]);
    if (structure !== shape) {
      shape = structure;
      cy.elements().remove();
      cy.add(data.cells.map((c) => ({ group: "nodes", data: nodeData(c) })));
      cy.add(data.edges.map((e, i) => ({ group: "edges", data: { id: `e${i}`, source: `c${e.source}`, target: `c${e.target}`, name: e.name } })));
      cy.layout({ name: "dagre", rankDir: "TB", nodeSep: 30, rankSep: 50 }).run();
      cy.fit(undefined, 30);
    } else {
      for (const cell of data.cells) cy.getElementById(`c${cell.id}`).data(nodeData(cell));
    }
    body.replaceChildren(...data.cells.map((c) => el("tr", { "data-cell": c.id, "data-status": c.status },
      el("td", {}, `[${c.id}] ${c.label}`), el("td", {}, el("span", { class: `state ${c.status}` }, c.status)),
      el("td", { class: "where" }, whereOf(c)), el("td", {}, (c.defs || []).join(", ")), el("td", { class: "num" }, c.runs),
      el("td", {}, c.error || ""))));
    note.textContent = `${data.cells.length} cells, mode ${data.mode}; updated as values arrive and cells are redefined.`;
  }

  async function loadList() {
    const data = await api("/api/workspaces");
    listSeq = data.seq;
    picker.replaceChildren(...data.workspaces.map((name) => el("option", { value: name }, name)));
    if (!data.workspaces.length) {
      current = "";
      shape = "";
      cy.elements().remove();
      body.replaceChildren();
      note.textContent = "No workspace is shared with this dashboard yet: a client shares its workspace with " +
        "its own dashboard, sperse.connect(..., dashboard=True), or with its coordinator's, " +
        "sperse.connect(COORDINATOR, share_workspace=True).";
      return;
    }
    if (!data.workspaces.includes(current)) { current = data.workspaces[0]; shape = ""; }
    picker.value = current;
    await loadGraph();
  }
  picker.addEventListener("change", () => { current = picker.value; shape = ""; loadGraph(); });

  live.on((delta) => {
    for (const w of delta.workspaces) {
      if (w.gone || !current || ![...picker.options].some((o) => o.value === w.name)) { loadList(); return; }
      if (w.name === current && w.version !== version) { loadGraph(); return; }
    }
  }, loadList);
  await loadList();
  return listSeq;
}

// ---- Flows -----------------------------------------------------------------------------

const FLOW_COLOURS = { running: "#2f6fde", done: "#2e9e5b", failed: "#d64545", cancelled: "#8a6d3b" };

function rate(value) {
  return value >= 100 ? `${Math.round(value)}/s` : `${value.toFixed(1)}/s`;
}

// The rounds of bulk loops as an inline SVG: one polyline of delta per round per loop.
function roundsChart(rounds) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  const width = 480;
  const height = 140;
  const pad = 28;
  svg.setAttribute("id", "rounds");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const points = rounds.filter((r) => r.delta !== null && r.delta !== undefined && Number.isFinite(r.delta));
  if (!points.length) return svg;
  const maxRound = Math.max(1, ...points.map((r) => r.round));
  const top = Math.max(...points.map((r) => r.delta));
  const bottom = Math.min(0, ...points.map((r) => r.delta));
  const span = top - bottom || 1;
  const x = (r) => pad + (r / maxRound) * (width - 2 * pad);
  const y = (d) => height - pad - ((d - bottom) / span) * (height - 2 * pad);
  const axis = document.createElementNS(NS, "polyline");
  axis.setAttribute("points", `${pad},${pad / 2} ${pad},${height - pad} ${width - pad / 2},${height - pad}`);
  axis.setAttribute("fill", "none");
  axis.setAttribute("stroke", "#a0a7b4");
  svg.append(axis);
  const label = (text, lx, ly, anchor) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", lx); t.setAttribute("y", ly); t.setAttribute("font-size", "10");
    t.setAttribute("fill", "#6b7385"); t.setAttribute("text-anchor", anchor);
    t.textContent = text;
    svg.append(t);
  };
  label(String(Number(top.toPrecision(3))), pad - 3, y(top) + 3, "end");
  label(String(Number(bottom.toPrecision(3))), pad - 3, y(bottom) + 3, "end");
  label(`round ${maxRound}`, width - pad, height - pad + 14, "end");
  const loops = [...new Set(points.map((r) => r.loop))];
  const colours = ["#2f6fde", "#8e5bd6", "#e08a1e", "#2e9e5b"];
  loops.forEach((loop, i) => {
    const mine = points.filter((r) => r.loop === loop);
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", mine.map((r) => `${x(r.round).toFixed(1)},${y(r.delta).toFixed(1)}`).join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colours[i % colours.length]);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("data-loop", loop);
    svg.append(line);
    for (const r of mine) {
      const dot = document.createElementNS(NS, "circle");
      dot.setAttribute("cx", x(r.round).toFixed(1));
      dot.setAttribute("cy", y(r.delta).toFixed(1));
      dot.setAttribute("r", "2.5");
      dot.setAttribute("fill", colours[i % colours.length]);
      const title = document.createElementNS(NS, "title");
      title.textContent = `${loop} round ${r.round}: delta ${r.delta}`;
      dot.append(title);
      svg.append(dot);
    }
  });
  return svg;
}

// Newest first: a client's runs are numbered; a coordinator's (of many clients) carry when
// it first heard of them.
function runOrder(run) {
  return run.order ?? Number(run.id);
}

async function flowsPage(main) {
  live.query = "&flows=1";
  const runsBody = el("tbody");
  const title = el("span");
  const note = el("p", { class: "note" });
  const failure = el("pre", { id: "flow-error", class: "traceback", hidden: true });
  const graph = el("div", { id: "flow-graph" });
  const opsBody = el("tbody");
  const rounds = el("div", { id: "rounds-box" });
  main.append(
    el("h2", {}, "Flow runs"),
    el("table", { id: "flows" },
      el("thead", {}, el("tr", {}, ...["run", "flow", "state", "elapsed", "operators", "rounds"].map((c) => el("th", {}, c)))),
      runsBody),
    el("h2", {}, "Operators ", title), note, failure,
    graph,
    el("table", { id: "operators" },
      el("thead", {}, el("tr", {}, ...["operator", "kind", "loop", "replicas", "in", "out", "backlog", "rate", "where"]
        .map((c, i) => el("th", { class: i > 2 && i < 8 ? "num" : "" }, c)))),
      opsBody),
    el("h2", {}, "Rounds of bulk loops (delta per round)"), rounds,
  );
  const cy = await newGraph(graph, 240, [
    { selector: "edge[?feedback]", style: { "line-style": "dashed", "line-color": "#8e5bd6", "target-arrow-color": "#8e5bd6" } },
  ]);
  window.sperseDashboard.flowGraph = cy;
  const flows = new Map(); // id -> snapshot
  let current = "";
  let shape = "";

  function where(servers) {
    return Object.entries(servers || {}).map(([s, n]) => (n > 1 ? `${s} ×${n}` : s)).join(", ");
  }

  function nodeData(run, op) {
    return { id: `o${op.id}`, name: op.name, items_in: op.items_in, backlog: op.backlog,
      text: `${op.name} ×${op.replicas}\n${rate(op.rate)} · backlog ${op.backlog}\nin ${op.items_in} · out ${op.items_out}`,
      colour: op.loop ? "#6d4fb0" : FLOW_COLOURS[run.state] || "#6b7385" };
  }

  function renderList() {
    const sorted = [...flows.values()].sort((a, b) => runOrder(b) - runOrder(a));
    runsBody.replaceChildren(...sorted.map((run) => el("tr",
      { class: `clickable${run.id === current ? " selected" : ""}`, "data-flow": run.id, "data-state": run.state,
        onclick: () => { current = run.id; renderList(); renderRun(); } },
      el("td", {}, run.id), el("td", {}, run.name),
      el("td", {}, el("span", { class: `state ${run.state}`, title: run.error || "" }, run.state)),
      el("td", { class: "num" }, `${run.elapsed.toFixed(1)} s`),
      el("td", { class: "num" }, run.operators.length),
      el("td", { class: "num" }, run.rounds_total || ""))));
    if (!sorted.length) {
      runsBody.append(el("tr", {}, el("td", { colSpan: 6, class: "empty" },
        "no flow run yet: a client's flow.run() shows on its own dashboard, and on its " +
        "coordinator's with sperse.connect(COORDINATOR, share_workspace=True)")));
    }
  }

  function renderRun() {
    const run = flows.get(current);
    if (!run) { title.textContent = ""; failure.hidden = true; opsBody.replaceChildren(); cy.elements().remove(); shape = ""; rounds.replaceChildren(); return; }
    title.textContent = `of ${run.name} (run ${run.id}, ${run.state})`;
    failure.textContent = run.error || "";
    failure.hidden = !run.error;
    note.textContent = "Each operator: replicas, items in per second, items waiting (on a stage's first operator), items in and out; live while it runs.";
    const structure = JSON.stringify([run.id, run.operators.map((o) => o.id), run.edges]);
    if (structure !== shape) {
      shape = structure;
      cy.elements().remove();
      cy.add(run.operators.map((o) => ({ group: "nodes", data: nodeData(run, o) })));
      cy.add(run.edges.map((e, i) => ({ group: "edges", data: { id: `e${i}`, source: `o${e.source}`, target: `o${e.target}`,
        name: e.feedback ? "next round" : (e.partition === "forward" ? "" : e.partition), feedback: e.feedback } })));
      cy.layout({ name: "dagre", rankDir: "LR", nodeSep: 30, rankSep: 60 }).run();
      cy.fit(undefined, 30);
    } else {
      for (const o of run.operators) cy.getElementById(`o${o.id}`).data(nodeData(run, o));
    }
    opsBody.replaceChildren(...run.operators.map((o) => el("tr", { "data-op": o.name },
      el("td", {}, o.name), el("td", {}, o.kind), el("td", {}, o.loop || ""),
      el("td", { class: "num replicas" }, o.replicas), el("td", { class: "num in" }, o.items_in),
      el("td", { class: "num out" }, o.items_out), el("td", { class: "num backlog" }, o.backlog),
      el("td", { class: "num rate" }, rate(o.rate)),
      el("td", { class: "where" }, where(o.servers)))));
    rounds.replaceChildren(run.rounds.length ? roundsChart(run.rounds)
      : el("p", { class: "note" }, "no round: this run has no bulk loop, or none finished a round yet"));
  }

  async function load() {
    const data = await api("/api/flows");
    flows.clear();
    for (const run of data.flows) flows.set(run.id, run);
    if (!flows.has(current)) {
      const newest = [...flows.values()].sort((a, b) => runOrder(b) - runOrder(a));
      current = (newest.find((r) => r.state === "running") || newest[0] || { id: "" }).id;
    }
    shape = "";
    renderList();
    renderRun();
    return data.seq;
  }

  live.on((delta) => {
    if (!delta.flows || !delta.flows.length) return;
    for (const run of delta.flows) {
      const fresh = !flows.has(run.id);
      flows.set(run.id, run);
      const shown = flows.get(current);
      if (fresh && run.state === "running" && (!shown || shown.state !== "running")) current = run.id;
    }
    if (!current && flows.size) current = delta.flows[delta.flows.length - 1].id;
    renderList();
    if (delta.flows.some((r) => r.id === current)) renderRun();
  }, load);
  return load();
}

// ---- start -----------------------------------------------------------------------------

async function main() {
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.nav === PAGE) link.classList.add("current");
  }
  const container = document.getElementById("main");
  const pages = { cluster: clusterPage, tasks: tasksPage, objects: objectsPage, workspace: workspacePage,
                  flows: flowsPage };
  const seq = await pages[PAGE](container);
  if (PAGE !== "tasks") live.query += "&tasks=0"; // no task rows needed
  live.seq = Math.max(live.seq, seq || 0);
  if (document.hidden) live.pause(); else live.start(live.seq);
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) live.pause(); else live.start(live.seq);
  });
  document.body.dataset.ready = "1";
}

main().catch((error) => {
  document.getElementById("main").append(el("p", { class: "note" }, `The page could not load: ${error.message}`));
  throw error;
});
