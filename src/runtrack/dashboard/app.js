// runtrack dashboard: lists runs, follows them live, shows one run, cancels or requeues it; lists
// the managers sharing the registry.
//
// Plain browser JavaScript, no build step. Every piece of run data reaches the page through
// textContent or attributes, never through innerHTML. The API lives next to the page: the
// page is <prefix>/runs/ui, so the runs endpoints are <prefix>/runs... and the managers
// <prefix>/managers, whatever the prefix.
"use strict";

(() => {
  const POLL_MS = 1000; // progress is not in the event stream: poll while something runs
  const FALLBACK_POLL_MS = 3000; // how often to reload while the event stream is down
  const RELOAD_DEBOUNCE_MS = 150;
  const MANAGERS_POLL_MS = 5000; // managers change at their heartbeats (10 s by default)
  const ACTIVE = new Set(["queued", "running"]);

  const RUNS = location.pathname.replace(/\/+$/, "").replace(/\/ui$/, "");
  const MANAGERS = RUNS.replace(/\/runs$/, "") + "/managers";

  const $ = (id) => document.getElementById(id);
  const els = {
    live: $("live"),
    liveText: $("live-text"),
    statusFilter: $("status-filter"),
    pageSize: $("page-size"),
    refresh: $("refresh"),
    listError: $("list-error"),
    body: $("runs-body"),
    empty: $("empty"),
    prev: $("prev-page"),
    next: $("next-page"),
    pageInfo: $("page-info"),
    detail: $("detail"),
    detailHeading: $("detail-heading"),
    detailError: $("detail-error"),
    detailProgress: $("detail-progress"),
    fields: $("detail-fields"),
    runError: $("detail-run-error"),
    runErrorText: $("detail-run-error-text"),
    output: $("detail-output"),
    cancel: $("cancel-run"),
    requeue: $("requeue-run"),
    close: $("close-detail"),
    managersBody: $("managers-body"),
    managersEmpty: $("managers-empty"),
    managersError: $("managers-error"),
  };

  const state = {
    status: "",
    limit: Number(els.pageSize.value),
    offset: 0,
    nextOffset: null,
    rows: new Map(), // run_id -> {tr, cells, run}
    selected: null, // run_id shown in the detail panel
    selectedRun: null,
    outputSince: 0,
    live: false,
    listTimer: null,
    listLoading: null,
    listAgain: false,
    detailLoading: null,
    detailAgain: false,
  };

  // -- HTTP ------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const message = body && typeof body.error === "string" ? body.error : `HTTP ${status}`;
      super(message);
      this.status = status;
      this.code = body && typeof body.code === "string" ? body.code : null;
      this.body = body;
    }
  }

  async function api(path, options = {}, base = RUNS) {
    const response = await fetch(base + path, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
      ...options,
    });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  }

  const runPath = (runId) => "/" + encodeURIComponent(runId);

  function describeError(error) {
    if (error instanceof ApiError) {
      return `${error.status}${error.code ? " " + error.code : ""}: ${error.message}`;
    }
    return `Cannot reach the server (${error && error.message ? error.message : error})`;
  }

  function showAlert(element, text) {
    element.textContent = text || "";
    element.hidden = !text;
  }

  // -- formatting ------------------------------------------------------------------------

  function el(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "className") node.className = value;
      else if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function parseTime(iso) {
    if (!iso) return null;
    const date = new Date(iso);
    return Number.isNaN(date.getTime()) ? null : date;
  }

  function timeElement(iso) {
    const date = parseTime(iso);
    if (!date) return el("span", { className: "muted", text: "—" });
    const sameDay = date.toDateString() === new Date().toDateString();
    const text = sameDay ? date.toLocaleTimeString() : date.toLocaleString();
    return el("time", { datetime: iso, title: date.toLocaleString(), text });
  }

  function durationSeconds(run) {
    const started = parseTime(run.started_at);
    if (!started) return null;
    const end = parseTime(run.finished_at) || (run.status === "running" ? new Date() : null);
    return end ? Math.max(0, (end - started) / 1000) : null;
  }

  function formatDuration(seconds) {
    if (seconds === null) return "—";
    if (seconds < 10) return `${seconds.toFixed(2)} s`;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const s = Math.floor(seconds % 60);
    const m = Math.floor(seconds / 60) % 60;
    const h = Math.floor(seconds / 3600);
    const pad = (n) => String(n).padStart(2, "0");
    return h ? `${h} h ${pad(m)} m` : `${m} m ${pad(s)} s`;
  }

  function badge(status) {
    return el("span", { className: `badge badge-${status}`, text: status });
  }

  function progressBar(run) {
    const wrap = el("div", { className: "progress-cell" });
    const hasValue = typeof run.progress === "number";
    if (!hasValue && run.status !== "running") {
      wrap.append(el("span", { className: "muted", text: "—" }));
      return wrap;
    }
    const percent = hasValue ? Math.round(run.progress * 100) : null;
    const label = [percent === null ? null : `${percent}%`, run.progress_message]
      .filter(Boolean)
      .join(" · ");
    const bar = el("div", {
      className: `progress progress-${run.status}${hasValue ? "" : " progress-indeterminate"}`,
      role: "progressbar",
      "aria-label": `Progress of ${run.name || run.run_id}`,
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": percent,
      "aria-valuetext": label || "working",
    });
    const fill = el("div", { className: "progress-fill" });
    // CSSOM, not a style attribute: the page's CSP forbids inline styles.
    fill.style.width = hasValue ? `${percent}%` : "";
    bar.append(fill);
    wrap.append(bar, el("span", { className: "progress-text", text: label || "running…" }));
    return wrap;
  }

  function errorText(run) {
    if (!run.error_type && !run.error_message) return "";
    return [run.error_type, run.error_message].filter(Boolean).join(": ");
  }

  function json(value) {
    return JSON.stringify(value, null, 2);
  }

  // -- the runs table --------------------------------------------------------------------

  function makeRow(run) {
    const tr = el("tr", { "data-run-id": run.run_id, "data-status": run.status });
    const open = el("button", {
      type: "button",
      className: "link mono",
      title: run.run_id,
      "aria-label": `Show run ${run.run_id}`,
      text: run.run_id.slice(0, 8),
    });
    const cells = {
      id: el("th", { scope: "row" }, open),
      name: el("td", { className: "name" }),
      status: el("td"),
      progress: el("td", { className: "col-progress" }),
      attempt: el("td", { className: "num" }),
      created: el("td", { className: "time" }),
      started: el("td", { className: "time" }),
      finished: el("td", { className: "time" }),
      duration: el("td", { className: "num" }),
      error: el("td", { className: "error" }),
    };
    tr.append(...Object.values(cells));
    tr.addEventListener("click", (event) => {
      if (event.target instanceof Element && event.target.closest("a")) return;
      selectRun(run.run_id);
    });
    return { tr, cells, run };
  }

  function fillRow(row, run) {
    const { tr, cells } = row;
    row.run = run;
    tr.dataset.status = run.status;
    if (run.run_id === state.selected) tr.setAttribute("aria-current", "true");
    else tr.removeAttribute("aria-current");
    cells.name.textContent = run.name || "—";
    cells.name.title = run.name || "";
    cells.status.replaceChildren(badge(run.status));
    cells.progress.replaceChildren(progressBar(run));
    cells.attempt.textContent =
      run.max_attempts > 1 ? `${run.attempt}/${run.max_attempts}` : String(run.attempt);
    cells.created.replaceChildren(timeElement(run.created_at));
    cells.started.replaceChildren(timeElement(run.started_at));
    cells.finished.replaceChildren(timeElement(run.finished_at));
    cells.duration.textContent = formatDuration(durationSeconds(run));
    const error = errorText(run);
    cells.error.textContent = error;
    cells.error.title = error;
  }

  function renderList(page) {
    const rows = new Map();
    const order = [];
    for (const run of page.runs) {
      const row = state.rows.get(run.run_id) || makeRow(run);
      fillRow(row, run);
      rows.set(run.run_id, row);
      order.push(row.tr);
    }
    const current = Array.from(els.body.children);
    // Moving rows loses keyboard focus: only touch the order when it changed.
    if (current.length !== order.length || current.some((tr, i) => tr !== order[i])) {
      els.body.replaceChildren(...order);
    }
    state.rows = rows;
    state.nextOffset = page.next_offset;
    els.empty.hidden = page.runs.length > 0;
    els.prev.disabled = state.offset === 0;
    els.next.disabled = page.next_offset === null || page.next_offset === undefined;
    const first = state.offset + 1;
    const last = state.offset + page.runs.length;
    if (page.runs.length > 1) els.pageInfo.textContent = `Runs ${first}–${last}`;
    else if (page.runs.length === 1) els.pageInfo.textContent = `Run ${first}`;
    else els.pageInfo.textContent = state.offset ? "No more runs" : "";
  }

  function listQuery() {
    const params = new URLSearchParams();
    if (state.status) params.append("status", state.status);
    params.set("limit", String(state.limit));
    params.set("offset", String(state.offset));
    return "?" + params.toString();
  }

  // One list request at a time; a reload asked for meanwhile runs right after it.
  async function loadList() {
    if (state.listLoading) {
      state.listAgain = true;
      return state.listLoading;
    }
    state.listLoading = (async () => {
      try {
        do {
          state.listAgain = false;
          try {
            renderList(await api(listQuery()));
            showAlert(els.listError, "");
          } catch (error) {
            showAlert(els.listError, `Could not load runs: ${describeError(error)}`);
          }
        } while (state.listAgain);
      } finally {
        state.listLoading = null;
      }
    })();
    return state.listLoading;
  }

  function scheduleListReload() {
    clearTimeout(state.listTimer);
    state.listTimer = setTimeout(loadList, RELOAD_DEBOUNCE_MS);
  }

  function matchesFilter(run) {
    return !state.status || run.status === state.status;
  }

  async function refreshRun(runId) {
    try {
      const run = await api(runPath(runId));
      const row = state.rows.get(runId);
      if (row && matchesFilter(run)) fillRow(row, run);
      else scheduleListReload();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) scheduleListReload();
    }
  }

  // -- the managers ----------------------------------------------------------------------

  function managerRow(manager, now) {
    const beat = parseTime(manager.heartbeat_at);
    const late = beat !== null && (now - beat) / 1000 > manager.lease_seconds;
    const limit = manager.max_concurrency === null ? "∞" : String(manager.max_concurrency);
    const heartbeat = el("td", { className: "time" }, timeElement(manager.heartbeat_at));
    if (late) {
      heartbeat.append(
        " ",
        el("span", {
          className: "badge badge-failed",
          title: "No heartbeat within its lease: another manager will declare it dead",
          text: "late",
        }),
      );
    }
    return el(
      "tr",
      { "data-owner": manager.owner, "data-late": late ? "true" : "false" },
      el("th", { scope: "row", className: "mono", text: manager.owner }),
      el("td", { text: manager.host || "—" }),
      el("td", { className: "num", text: manager.pid || "—" }),
      el("td", { className: "time" }, timeElement(manager.started_at)),
      heartbeat,
      el("td", { className: "num", text: `${manager.running} / ${limit}` }),
      el("td", { className: "num", text: formatDuration(manager.lease_seconds) }),
    );
  }

  let managersLoading = false;
  async function loadManagers() {
    if (managersLoading) return;
    managersLoading = true;
    try {
      const managers = await api("", {}, MANAGERS);
      const now = new Date();
      els.managersBody.replaceChildren(...managers.map((m) => managerRow(m, now)));
      els.managersEmpty.hidden = managers.length > 0;
      showAlert(els.managersError, "");
    } catch (error) {
      const text =
        error instanceof ApiError && error.status === 501
          ? "The registry does not keep managers."
          : `Could not load managers: ${describeError(error)}`;
      showAlert(els.managersError, text);
    } finally {
      managersLoading = false;
    }
  }

  // -- live updates ----------------------------------------------------------------------

  function setLive(live, text) {
    state.live = live;
    els.live.dataset.state = live ? "live" : "down";
    els.liveText.textContent = text;
  }

  function onRunEvent(message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (!event || typeof event.run_id !== "string") return;
    // Events carry the status but not the progress: read the run itself.
    if (state.rows.has(event.run_id)) refreshRun(event.run_id);
    else if (state.offset === 0 && matchesFilter(event)) scheduleListReload();
    if (event.run_id === state.selected) refreshDetail();
  }

  function connect() {
    if (typeof EventSource === "undefined") {
      setLive(false, "Polling");
      return;
    }
    const source = new EventSource(RUNS + "/events", { withCredentials: true });
    let wasDown = false;
    source.addEventListener("open", () => {
      setLive(true, "Live");
      // Whatever changed while the stream was down is not replayed: read it all again.
      if (wasDown) {
        loadList();
        if (state.selected) refreshDetail();
      }
      wasDown = false;
    });
    source.addEventListener("error", () => {
      wasDown = true;
      setLive(false, source.readyState === EventSource.CLOSED ? "Offline" : "Reconnecting…");
    });
    source.addEventListener("run", onRunEvent);
    source.addEventListener("dropped", scheduleListReload);
  }

  function tick() {
    const running = Array.from(state.rows.values()).some((row) => ACTIVE.has(row.run.status));
    if (!state.live || running) loadList();
    const selected = state.selectedRun;
    if (selected && ACTIVE.has(selected.status)) refreshDetail();
  }

  let lastFallback = 0;
  let lastManagers = Date.now();
  function poll() {
    const now = Date.now();
    if (state.live || now - lastFallback >= FALLBACK_POLL_MS) {
      if (!state.live) lastFallback = now;
      if (!document.hidden) tick();
    }
    if (now - lastManagers >= MANAGERS_POLL_MS && !document.hidden) {
      lastManagers = now;
      loadManagers();
    }
    setTimeout(poll, POLL_MS);
  }

  // -- the detail panel ------------------------------------------------------------------

  function field(label, value) {
    const dd = el("dd");
    if (value instanceof Node) dd.append(value);
    else if (value === null || value === undefined || value === "") {
      dd.append(el("span", { className: "muted", text: "—" }));
    } else dd.textContent = String(value);
    return [el("dt", { text: label }), dd];
  }

  function jsonBlock(value, empty) {
    if (value === null || value === undefined) return null;
    if (typeof value === "object" && Object.keys(value).length === 0 && empty) return null;
    return el("pre", { className: "json", text: json(value) });
  }

  function renderDetail(run) {
    state.selectedRun = run;
    els.detailHeading.replaceChildren(
      el("span", { text: run.name || "Run" }),
      " ",
      badge(run.status),
    );
    els.detailProgress.replaceChildren(progressBar(run));
    const tags = Object.entries(run.tags || {}).map(([k, v]) =>
      el("span", { className: "tag", text: `${k}: ${v}` }),
    );
    els.fields.replaceChildren(
      ...field("Run id", el("code", { text: run.run_id })),
      ...field("Name", run.name),
      ...field("Status", run.status),
      ...field("Attempt", `${run.attempt} of ${run.max_attempts}`),
      ...field("Group", run.group),
      ...field("Priority", run.priority),
      ...field("Timeout", run.timeout === null ? null : `${run.timeout} s`),
      ...field("Owner", run.owner),
      ...(run.task
        ? [
            ...field("Task", run.task),
            ...field("Dead letter", run.dead ? "yes: its retries ran out" : "no"),
            ...field("Requeued from", run.requeued_from),
            ...(run.not_before ? field("Not before", timeElement(run.not_before)) : []),
          ]
        : []),
      ...field("Created", timeElement(run.created_at)),
      ...field("Started", timeElement(run.started_at)),
      ...field("Finished", timeElement(run.finished_at)),
      ...field("Duration", formatDuration(durationSeconds(run))),
      ...field("Heartbeat", timeElement(run.heartbeat_at)),
      ...field(
        "Progress",
        typeof run.progress === "number" ? `${Math.round(run.progress * 100)}%` : null,
      ),
      ...field("Progress message", run.progress_message),
      ...field("Tags", tags.length ? el("span", { className: "tags" }, ...tags) : null),
      ...field("Parameters", jsonBlock(run.parameters, true)),
      ...field("Result", jsonBlock(run.result, false)),
    );
    const error = errorText(run);
    els.runError.hidden = !error;
    els.runErrorText.textContent = error;
    const active = ACTIVE.has(run.status);
    els.cancel.hidden = !active;
    els.cancel.disabled = !active;
    // A finished run of a durable task can run again, on any manager that has the task.
    const requeueable = !active && Boolean(run.task);
    els.requeue.hidden = !requeueable;
    els.requeue.disabled = !requeueable;
    const row = state.rows.get(run.run_id);
    if (row && matchesFilter(run)) fillRow(row, run);
  }

  async function loadOutput(runId) {
    const page = await api(`${runPath(runId)}/output?since=${state.outputSince}`);
    if (runId !== state.selected) return;
    if (page.chunks.length) {
      const atBottom =
        els.output.scrollHeight - els.output.scrollTop - els.output.clientHeight < 8;
      for (const chunk of page.chunks) {
        els.output.append(
          el("span", { className: `chunk stream-${chunk.stream}`, title: chunk.at, text: chunk.text }),
        );
      }
      if (atBottom) els.output.scrollTop = els.output.scrollHeight;
    }
    state.outputSince = page.next_since;
    els.output.dataset.empty = els.output.childElementCount ? "false" : "true";
  }

  async function refreshDetail() {
    const runId = state.selected;
    if (!runId) return;
    if (state.detailLoading) {
      state.detailAgain = true;
      return;
    }
    state.detailLoading = (async () => {
      try {
        do {
          state.detailAgain = false;
          try {
            const run = await api(runPath(runId));
            if (runId !== state.selected) return;
            renderDetail(run);
            await loadOutput(runId);
          } catch (error) {
            if (runId === state.selected) {
              showAlert(els.detailError, `Could not load the run: ${describeError(error)}`);
            }
          }
        } while (state.detailAgain && runId === state.selected);
      } finally {
        state.detailLoading = null;
      }
    })();
    await state.detailLoading;
  }

  function selectRun(runId, { focus = true } = {}) {
    if (state.selected !== runId) {
      state.selected = runId;
      state.selectedRun = null;
      state.outputSince = 0;
      els.output.replaceChildren();
      els.output.dataset.empty = "true";
      els.fields.replaceChildren();
      els.detailHeading.textContent = "Run";
      els.runError.hidden = true;
      els.cancel.hidden = true;
      els.requeue.hidden = true;
    }
    showAlert(els.detailError, "");
    for (const [id, row] of state.rows) {
      if (id === runId) row.tr.setAttribute("aria-current", "true");
      else row.tr.removeAttribute("aria-current");
    }
    els.detail.hidden = false;
    history.replaceState(null, "", "#run=" + encodeURIComponent(runId));
    if (focus) els.detailHeading.focus();
    refreshDetail();
  }

  function closeDetail() {
    const runId = state.selected;
    state.selected = null;
    state.selectedRun = null;
    els.detail.hidden = true;
    history.replaceState(null, "", location.pathname + location.search);
    const row = runId && state.rows.get(runId);
    if (row) {
      row.tr.removeAttribute("aria-current");
      row.tr.querySelector("button").focus();
    }
  }

  async function cancelSelected() {
    const runId = state.selected;
    if (!runId) return;
    els.cancel.disabled = true;
    showAlert(els.detailError, "");
    try {
      const run = await api(`${runPath(runId)}/cancel`, { method: "POST" });
      if (runId === state.selected) renderDetail(run);
      refreshRun(runId);
    } catch (error) {
      if (runId === state.selected) {
        showAlert(els.detailError, `Could not cancel: ${describeError(error)}`);
        refreshDetail();
      }
    }
  }

  async function requeueSelected() {
    const runId = state.selected;
    if (!runId) return;
    els.requeue.disabled = true;
    showAlert(els.detailError, "");
    try {
      const run = await api(`${runPath(runId)}/requeue`, { method: "POST" });
      loadList();
      selectRun(run.run_id);
    } catch (error) {
      if (runId === state.selected) {
        showAlert(els.detailError, `Could not requeue: ${describeError(error)}`);
        refreshDetail();
      }
    }
  }

  // -- wiring ----------------------------------------------------------------------------

  els.statusFilter.addEventListener("change", () => {
    state.status = els.statusFilter.value;
    state.offset = 0;
    loadList();
  });
  els.pageSize.addEventListener("change", () => {
    state.limit = Number(els.pageSize.value);
    state.offset = 0;
    loadList();
  });
  els.refresh.addEventListener("click", () => {
    loadList();
    loadManagers();
    if (state.selected) refreshDetail();
  });
  els.prev.addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - state.limit);
    loadList();
  });
  els.next.addEventListener("click", () => {
    if (state.nextOffset === null || state.nextOffset === undefined) return;
    state.offset = state.nextOffset;
    loadList();
  });
  els.cancel.addEventListener("click", cancelSelected);
  els.requeue.addEventListener("click", requeueSelected);
  els.close.addEventListener("click", closeDetail);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.selected) closeDetail();
  });
  document.getElementById("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    loadList();
  });

  const hash = new URLSearchParams(location.hash.slice(1));
  loadList();
  loadManagers();
  connect();
  if (hash.get("run")) selectRun(hash.get("run"), { focus: false });
  setTimeout(poll, POLL_MS);
})();
