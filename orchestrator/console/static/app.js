// sdl console page: log in, list campaigns, watch one live (server-sent events), steer it.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const ROLE_RANK = { observer: 0, operator: 1, admin: 2 };
  const ACTION_TEXT = {
    pause: ["Pause", "The campaign stops at the end of the replicate it is measuring; pumps go to a safe state.", true],
    resume: ["Resume", "The campaign goes on from where it stopped.", false],
    abort: ["Abort", "The campaign ends for good after the current replicate. It cannot be resumed.", true],
    estop: ["E-STOP", "Stops the pumps now, without waiting for the replicate. An admin must clear it.", false],
    "estop-clear": ["Clear e-stop", "Confirms the rig is safe; the campaign stays paused until resumed.", true],
    recalibrate: ["Recalibrate", "Takes the dark spectrum again (lamp off) at the next droplet; the reference is taken at start and resume.", false],
  };
  const state = { me: null, csrf: null, campaigns: [], selected: null, events: new Map(), es: null, timer: null };

  // ---- HTTP ------------------------------------------------------------------------------------
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    let r;
    try {
      r = await fetch(path, {
        method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {  // no answer at all: say so, and that nothing reached the rig
      throw new Error("the console is unreachable, so nothing was sent: check its server; for an emergency use the rig's own stop");
    }
    if (r.status === 401 && path !== "/api/session") { showLogin(); throw new Error("logged out"); }
    const data = r.status === 204 ? null : await r.json().catch(() => null);
    if (!r.ok) throw new Error(errorText(data) || `${r.status} ${r.statusText}`);
    return data;
  }

  function errorText(data) {
    if (!data || data.detail === undefined) return "";
    if (typeof data.detail === "string") return data.detail;
    return data.detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  }

  // ---- log in / out --------------------------------------------------------------------------------
  function showLogin() {
    state.me = null;
    if (state.es) { state.es.close(); state.es = null; }
    setLive(false);
    for (const id of ["tabs", "campaigns-tab", "schedules-tab", "users-tab", "logout", "estop-all"]) $(id).hidden = true;
    $("whoami").textContent = "";
    $("login-view").hidden = false;
    $("login-name").focus();
  }

  async function showApp(session) {
    state.me = session.user;
    state.csrf = session.csrf;
    $("login-view").hidden = true;
    $("tabs").hidden = false;
    $("logout").hidden = false;
    $("whoami").textContent = `${session.user.name} (${session.user.role})`;
    for (const node of document.querySelectorAll("[data-role]")) {
      const ok = ROLE_RANK[state.me.role] >= ROLE_RANK[node.dataset.role];
      if (node.id === "estop-all") node.hidden = !ok; else node.classList.toggle("no-role", !ok);
      if (node.classList.contains("tab")) node.hidden = !ok;
      if (node.tagName === "FORM") node.hidden = !ok;
    }
    showTab("campaigns-tab");
    refreshSchedules().catch(() => {});  // flags the Schedules tab when a start did not run lately
    await refreshCampaigns();
    const fromHash = new URLSearchParams(location.hash.slice(1)).get("c");
    if (fromHash) await select(fromHash);
    else if (state.campaigns.length === 1) await select(state.campaigns[0].id);
    connect();
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    try {
      const s = await api("POST", "/api/session", { name: $("login-name").value, password: $("login-password").value });
      $("login-password").value = "";
      await showApp(s);
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  });

  $("logout").addEventListener("click", async () => {
    try { await api("DELETE", "/api/session"); } finally { showLogin(); }
  });

  // ---- tabs ------------------------------------------------------------------------------------
  function showTab(id) {
    for (const b of document.querySelectorAll(".tab")) b.setAttribute("aria-selected", String(b.dataset.tab === id));
    for (const p of document.querySelectorAll(".tab-panel")) p.hidden = p.id !== id;
    if (id === "schedules-tab") {
      document.querySelector('[data-tab="schedules-tab"]').classList.remove("alert");
      refreshSchedules();
    }
    if (id === "users-tab") refreshUsers();
  }
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));

  // ---- campaigns -------------------------------------------------------------------------------
  async function refreshCampaigns() {
    const data = await api("GET", "/api/campaigns");
    state.campaigns = data.campaigns;
    const list = $("campaign-list");
    list.replaceChildren();
    for (const c of data.campaigns) {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = `#c=${encodeURIComponent(c.id)}`;
      a.dataset.id = c.id;
      a.setAttribute("aria-current", String(c.id === state.selected));
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = c.rig ? `${c.name} on ${c.rig} ` : `${c.name} `;
      const badge = document.createElement("span");
      badge.className = `state ${c.state}`;
      badge.textContent = c.state;
      const why = document.createElement("span");
      why.className = "why";
      why.textContent = c.reason;
      const id = document.createElement("span");  // two runs of one protocol on one rig: told apart
      id.className = "id";
      id.textContent = `#${c.id}`;
      a.append(name, badge, id, why);
      a.addEventListener("click", (ev) => { ev.preventDefault(); select(c.id); });
      li.appendChild(a);
      list.appendChild(li);
    }
    $("campaign-empty").hidden = data.campaigns.length > 0;
  }

  function clearEvents() {
    state.events = new Map();
    $("events").replaceChildren();
  }

  // the log shows what people did, what went wrong and each condition's result; every droplet's line
  // (nineteen in twenty) only when asked, or a pause from ten minutes ago is out of sight
  $("ev-detail").addEventListener("change", () => { clearEvents(); refreshSelected({ events: true }); });

  async function select(id) {
    if (state.selected !== id) clearEvents();  // another campaign: its own event log, not the last one's
    state.selected = id;
    history.replaceState(null, "", `#c=${encodeURIComponent(id)}`);
    for (const a of document.querySelectorAll("#campaign-list a")) a.setAttribute("aria-current", String(a.dataset.id === id));
    $("no-campaign").hidden = true;
    $("campaign").hidden = false;
    await refreshSelected(true);
  }

  // which parts of the page an event changes; anything else refreshes only the campaign's header
  const STATUS_KINDS = new Set(["campaign_created", "created", "queued", "running", "pausing", "paused", "faulted",
    "estopped", "aborting", "aborted", "finished", "orphaned"]);
  const SPECTRA_KINDS = new Set(["replicate_acquired", "replicates_set_aside", "condition_started", "outliers_judged"]);
  const LOSS_KINDS = new Set(["condition_done", "condition_failed", "batch_planned", "round_done"]);
  const ALL_PARTS = { spectra: true, losses: true, bounds: true, events: true };

  function partsFor(kind) {
    return {
      list: STATUS_KINDS.has(kind),
      spectra: SPECTRA_KINDS.has(kind),
      losses: LOSS_KINDS.has(kind),
      bounds: kind === "batch_planned" || kind === "round_done",
    };
  }

  async function refreshSelected(all) {
    const id = state.selected;
    if (!id) return;
    const parts = all === true ? ALL_PARTS : all || {};
    const base = `/api/campaigns/${encodeURIComponent(id)}`;
    const detail = await api("GET", base);
    if (id !== state.selected) return;
    renderDetail(detail);
    const jobs = [];
    if (parts.spectra) jobs.push(api("GET", `${base}/spectra`).then((d) => { Plots.spectra($("spectra"), d); noteSpectra(d); }));
    if (parts.losses) jobs.push(api("GET", `${base}/losses`).then((d) => Plots.losses($("losses"), d)));
    if (parts.bounds) jobs.push(api("GET", `${base}/bounds`).then((d) => Plots.bounds($("bounds"), d)));
    if (parts.events) jobs.push(api("GET", `${base}/events?limit=200&detail=${$("ev-detail").checked}`).then((d) => {
      if (id !== state.selected) return;  // fetched for a campaign no longer shown
      for (const e of d.events) addEvent(e);
    }));
    await Promise.all(jobs);
  }

  function noteSpectra(d) {
    const n = (d.droplets || []).length;
    $("spectra-note").textContent = n ? `(${n} droplets of round ${d.droplets[0].round}, condition ${d.droplets[0].condition})` : "";
  }

  function renderDetail(c) {
    $("c-name").textContent = `${c.name} #${c.id}` + (c.rig ? ` on ${c.rig}` : "");
    const st = $("c-state");
    st.textContent = c.state;
    st.className = `state ${c.state}`;
    $("c-reason").textContent = c.reason;
    const p = c.progress;
    $("p-round").textContent = p.round ? `${p.round}${p.rounds_max ? " / " + p.rounds_max : ""}` : "-";
    $("p-condition").textContent = p.condition ? `${p.condition} / ${p.conditions}` : "-";
    $("p-replicate").textContent = p.replicate ? `${p.replicate} / ${p.replicates}` : "-";
    $("p-best").textContent = c.best ? `best loss ${c.best.loss.toFixed(3)} (round ${c.best.round})` : "";
    const pct = Math.round(100 * (p.fraction || 0));
    $("p-bar").style.width = `${pct}%`;
    $("p-meter").setAttribute("aria-valuenow", String(pct));
    $("p-rep-bar").style.width = `${p.replicates ? Math.round((100 * p.replicate) / p.replicates) : 0}%`;
    for (const b of document.querySelectorAll("#controls button")) {
      const allowed = (c.actions || []).includes(b.dataset.action);
      b.hidden = !allowed && !(b.dataset.action === "estop" && c.active);
      b.disabled = !allowed;
    }
  }

  // ---- events ----------------------------------------------------------------------------------
  function addEvent(e) {
    if (state.events.has(e.id)) return;
    state.events.set(e.id, e);
    const li = document.createElement("li");
    li.className = e.category || "";
    li.dataset.id = e.id;
    const t = document.createElement("time");
    t.dateTime = e.at;
    t.textContent = new Date(e.at).toLocaleTimeString([], { hour12: false });
    li.appendChild(t);
    if (e.who) {
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = `${e.who}: `;
      li.appendChild(who);
    }
    li.appendChild(document.createTextNode(e.text));
    const list = $("events");
    // newest first; events arrive in id order, so insert before the first older one
    const older = [...list.children].find((n) => Number(n.dataset.id) < e.id);
    list.insertBefore(li, older || null);
    while (list.children.length > 300) list.removeChild(list.lastChild);
  }

  function setLive(on) {
    const live = $("live");
    live.textContent = on ? "live" : "offline";
    live.className = `live ${on ? "on" : "off"}`;
  }

  function connect() {
    if (state.es) state.es.close();
    const es = new EventSource("/api/stream");
    state.es = es;
    es.addEventListener("open", () => setLive(true));
    es.addEventListener("error", () => setLive(false));
    // the session ended elsewhere (logout in another tab, user disabled): back to the login form
    es.addEventListener("logout", () => showLogin());
    es.addEventListener("journal", (msg) => {
      const e = JSON.parse(msg.data);
      if (e.campaign_id === state.selected && (!e.detail || $("ev-detail").checked)) addEvent(e);
      if (e.kind === "schedule_failed") refreshSchedules();
      scheduleRefresh(e.campaign_id === state.selected, partsFor(e.kind));
    });
  }

  // many events arrive in a burst (one per replicate): refetch at most every 700 ms, and only the
  // parts of the page the events change (the campaign's header always)
  function scheduleRefresh(selected, parts) {
    const p = state.pending || (state.pending = { selected: false, list: false, spectra: false, losses: false, bounds: false });
    p.selected = p.selected || selected;
    for (const k of ["list", "spectra", "losses", "bounds"]) p[k] = p[k] || Boolean(parts && parts[k]);
    if (state.timer) return;
    state.timer = setTimeout(async () => {
      const todo = state.pending;
      state.timer = null;
      state.pending = null;
      try {
        if (todo.list || state.campaigns.length === 0) await refreshCampaigns();
        if (todo.selected) await refreshSelected(todo);
      } catch (err) { /* a failed refresh is retried on the next event */ }
    }, 700);
  }

  // ---- control with a confirm step -------------------------------------------------------------
  let pending = null;

  function confirmAction(action, campaign) {
    const [title, text, needsReason] = ACTION_TEXT[action];
    pending = { action, campaign, needsReason };
    const c = state.campaigns.find((x) => x.id === campaign);
    $("confirm-title").textContent = campaign ? `${title}: ${c ? c.name : ""} #${campaign}?` : "E-STOP every campaign? Every running or paused campaign stops and holds until an admin clears it (an idle rig is not latched: `sdl estop` latches every rig).";
    $("confirm-text").textContent = text;
    $("confirm-reason").value = "";
    $("confirm-reason").required = needsReason;
    $("confirm-reason").placeholder = needsReason ? "required" : "optional";
    $("confirm-error").textContent = "";
    $("confirm-ok").textContent = `Confirm ${title.toLowerCase()}`;
    $("confirm-ok").className = action === "estop" ? "estop" : action === "abort" ? "danger" : "primary";
    $("confirm").showModal();
    (needsReason ? $("confirm-reason") : $("confirm-ok")).focus();
  }

  $("confirm-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!pending) return;
    const reason = $("confirm-reason").value.trim();
    if (pending.needsReason && !reason) { $("confirm-error").textContent = "Say why: it goes into the journal."; return; }
    $("confirm-ok").disabled = true;
    try {
      if (pending.campaign) {
        await api("POST", `/api/campaigns/${encodeURIComponent(pending.campaign)}/${pending.action}`, { reason });
      } else {
        await api("POST", "/api/estop", { reason });
      }
      $("confirm").close();
      pending = null;
      scheduleRefresh(true, { list: true });
    } catch (e) {
      $("confirm-error").textContent = e.message;
    } finally {
      $("confirm-ok").disabled = false;
    }
  });
  $("confirm-cancel").addEventListener("click", () => { pending = null; $("confirm").close(); });

  for (const b of document.querySelectorAll("#controls button")) {
    b.addEventListener("click", () => confirmAction(b.dataset.action, state.selected));
  }
  $("estop-all").addEventListener("click", () => confirmAction("estop", null));

  // ---- schedules -------------------------------------------------------------------------------
  async function refreshSchedules() {
    const data = await api("GET", "/api/schedules");
    const body = $("schedule-list");
    body.replaceChildren();
    for (const s of data.schedules) {
      const row = body.insertRow();
      row.insertCell().textContent = s.description;
      row.insertCell().textContent = s.next_run_at ? new Date(s.next_run_at).toLocaleString() : "done";
      row.insertCell().textContent = s.created_by;
      const cell = row.insertCell();
      if (ROLE_RANK[state.me.role] >= ROLE_RANK.operator) {
        const del = document.createElement("button");
        del.className = "quiet";
        del.textContent = "Remove";
        del.addEventListener("click", async () => { await api("DELETE", `/api/schedules/${encodeURIComponent(s.id)}`); refreshSchedules(); });
        cell.appendChild(del);
      }
    }
    const failed = $("schedule-failed");
    failed.replaceChildren();
    for (const e of [...data.failed].reverse()) {
      const li = document.createElement("li");
      li.className = "fault";
      const t = document.createElement("time");
      t.dateTime = e.at;
      t.textContent = new Date(e.at).toLocaleString();
      li.append(t, document.createTextNode(e.text));
      failed.appendChild(li);
    }
    $("schedule-failed-card").hidden = data.failed.length === 0;
    // a start that did not run in the last day flags the tab until the tab is opened
    const newest = data.failed.length ? Date.parse(data.failed[data.failed.length - 1].at) : 0;
    if ($("schedules-tab").hidden && Date.now() - newest < 24 * 3600e3) {
      document.querySelector('[data-tab="schedules-tab"]').classList.add("alert");
    }
  }

  function showScheduleFields() {
    const kind = $("s-kind").value;
    for (const l of document.querySelectorAll("#schedule-form label[class]")) l.hidden = !l.classList.contains(`k-${kind}`);
  }
  $("s-kind").addEventListener("change", showScheduleFields);
  showScheduleFields();

  $("schedule-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("schedule-error").textContent = "";
    const kind = $("s-kind").value;
    const body = { kind };
    if (kind === "start") {
      // one tap must not start pumps: a start needs its time (the API's "no time: now" is for scripts)
      if (!$("s-at").value) { $("schedule-error").textContent = "give the start time (At)"; return; }
      Object.assign(body, { protocol: $("s-protocol").value || null, rig: $("s-rig").value || null,
        resume_campaign_id: $("s-resume").value || null,
        at: $("s-at").value ? new Date($("s-at").value).toISOString() : null });
    } else {
      Object.assign(body, { campaign_id: $("s-campaign").value, every_minutes: Number($("s-every").value) });
    }
    try { await api("POST", "/api/schedules", body); refreshSchedules(); } catch (e) { $("schedule-error").textContent = e.message; }
  });

  // ---- users (admin) ---------------------------------------------------------------------------
  async function refreshUsers() {
    const users = await api("GET", "/api/users");
    const body = $("user-list");
    body.replaceChildren();
    for (const u of users) {
      const row = body.insertRow();
      row.insertCell().textContent = u.name;
      row.insertCell().textContent = u.role;
      row.insertCell().textContent = u.disabled ? "disabled" : u.has_password ? "password" : "token only";
      const btn = document.createElement("button");
      btn.className = "quiet";
      btn.textContent = u.disabled ? "Enable" : "Disable";
      btn.addEventListener("click", async () => {
        try { await api("PATCH", `/api/users/${encodeURIComponent(u.name)}`, { disabled: !u.disabled }); } catch (e) { $("user-error").textContent = e.message; }
        refreshUsers();
      });
      row.insertCell().appendChild(btn);
    }
  }

  $("user-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("user-error").textContent = "";
    try {
      await api("POST", "/api/users", { name: $("u-name").value, role: $("u-role").value, password: $("u-password").value || null });
      $("u-name").value = ""; $("u-password").value = "";
      refreshUsers();
    } catch (e) { $("user-error").textContent = e.message; }
  });

  // ---- start -----------------------------------------------------------------------------------
  api("GET", "/api/session").then(showApp, showLogin);
})();
