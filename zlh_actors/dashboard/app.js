// The zlh-actors dashboard: plain JavaScript, no framework, no build, nothing from another origin.
//
// Live state comes from the WebSocket stream (docs/stream.md), never from polling. Order matters:
// the page connects the stream first and loads the server list only after the stream's `hello`, so
// the list is at least as new as the point where the stream starts; every later change then arrives
// as an event. Once the stream has spoken about a server, its state wins over any REST snapshot (a
// snapshot may be older than an event already shown, never newer than the events still to come),
// and events are applied per server in `seq` order, so a repeat is ignored.
//
// An event for a server the page does not know yet (created elsewhere, or by this page before its
// POST answered) waits in `pending`; while the list or a create is in flight the answer will most
// likely bring that server, so a single GET of the server is made only when nothing is in flight.
// After a drop the stream reconnects with `?since=` the last cursor it processed and loses nothing.
//
// The token is sent as the stream's first message (browsers cannot set WebSocket headers) and in the
// Authorization header of every API call; it is kept in sessionStorage, i.e. for this tab only.

const TOKEN_KEY = "zlh-token";
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10000;
const UNAUTHORIZED = 4401;
const CONFIRM = {
  start: { verb: "Start", text: (name) => `Start server “${name}”?` },
  stop: { verb: "Stop", text: (name) => `Stop server “${name}”? Players are disconnected.` },
  delete: { verb: "Delete", text: (name) => `Delete server “${name}”? Its container and world are destroyed.` },
};

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------- API

// The stream closed with 4401: the token is not (or no longer) valid.
class Refused extends Error {}

class ApiError extends Error {
  constructor(status, problem) {
    const title = (problem && problem.title) || `HTTP ${status}`;
    const fields = problem && problem.fields ? Object.entries(problem.fields) : [];
    super(fields.length ? `${title}: ${fields.map(([k, v]) => `${k} ${v}`).join("; ")}` : title);
    this.status = status;
  }
}

async function call(token, method, path, { body, headers } = {}) {
  const sent = { Authorization: `Bearer ${token}`, Accept: "application/json", ...headers };
  if (body !== undefined) sent["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// An Idempotency-Key: crypto.randomUUID needs a secure context, getRandomValues does not.
function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// ------------------------------------------------------------------------------------------- stream

class Stream {
  constructor(token, { onEvent, onStatus, onRefused }) {
    this.token = token;
    this.onEvent = onEvent;
    this.onStatus = onStatus;
    this.onRefused = onRefused;
    this.cursor = null;
    this.retry = RETRY_FIRST_MS;
    this.stopped = false;
    this.socket = null;
    this.timer = null;
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
  }

  open() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const query = this.cursor ? `?since=${encodeURIComponent(this.cursor)}` : "";
    const socket = new WebSocket(`${scheme}//${location.host}/v1/stream${query}`);
    this.socket = socket;
    this.onStatus(this.cursor ? "reconnecting" : "connecting");
    socket.addEventListener("open", () => socket.send(JSON.stringify({ type: "auth", token: this.token })));
    socket.addEventListener("message", (message) => this.receive(message));
    socket.addEventListener("close", (event) => this.closed(socket, event));
  }

  receive(message) {
    const data = JSON.parse(message.data);
    if (data.type === "hello") {
      this.retry = RETRY_FIRST_MS;
      this.onStatus("live");
      this.resolveReady();
    } else if (data.type === "server.state") {
      this.onEvent(data);
    }
    // Only after the message was handled: the cursor is where a reconnect resumes.
    if (data.cursor) this.cursor = data.cursor;
  }

  closed(socket, event) {
    if (this.stopped || socket !== this.socket) return;
    if (event.code === UNAUTHORIZED) {
      this.stopped = true;
      this.onStatus("refused");
      const reason = event.reason || "invalid or revoked token";
      this.rejectReady(new Refused(`The stream refused the token: ${reason}`));
      this.onRefused(reason);
      return;
    }
    this.onStatus("offline");
    this.timer = setTimeout(() => this.open(), this.retry);
    this.retry = Math.min(this.retry * 2, RETRY_MAX_MS);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.socket) this.socket.close(1000, "signed out");
  }
}

// ------------------------------------------------------------------------------------------ helpers

function element(tag, { text, cls, attrs } = {}, children = []) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  for (const child of children) node.append(child);
  return node;
}

function stateClass(state) {
  return `state state-${state.split(".")[0]} state-${state.replaceAll(".", "-")}`;
}

function badge(state) {
  return element("span", { text: state, cls: stateClass(state), attrs: { "data-testid": "state" } });
}

function clock(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  return element("time", { text: at.toLocaleString(), attrs: { datetime: iso } });
}

function short(id) {
  return id ? String(id).slice(0, 8) : "none";
}

function showError(error) {
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error-text").textContent = "";
}

function confirmAction(text, verb) {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-yes").textContent = verb;
  return new Promise((resolve) => {
    const done = (answer) => {
      $("confirm-yes").removeEventListener("click", yes);
      $("confirm-no").removeEventListener("click", no);
      dialog.removeEventListener("cancel", no);
      dialog.close();
      resolve(answer);
    };
    const yes = () => done(true);
    const no = () => done(false);
    $("confirm-yes").addEventListener("click", yes);
    $("confirm-no").addEventListener("click", no);
    dialog.addEventListener("cancel", no); // Escape
    dialog.showModal();
    $("confirm-no").focus();
  });
}

// ----------------------------------------------------------------------------------------- session

// One signed-in session: everything it holds is dropped with it at sign-out.
class Session {
  constructor(token) {
    this.token = token;
    this.closed = false;
    this.servers = new Map(); // id -> { server, seq, last, row }
    this.pending = new Map(); // id -> events for a server not known yet
    this.fetching = new Set();
    this.busy = 0; // list loads and creates in flight
    this.selected = null;
    this.timeline = new Map(); // seq -> event, of the selected server
    this.lastCreate = null; // { body, key } of a create that got no answer
    this.stream = new Stream(token, {
      onEvent: (event) => this.applyEvent(event),
      onStatus: (status) => {
        const node = $("stream-status");
        node.dataset.status = status;
        node.textContent = status;
      },
      onRefused: (reason) => {
        if (session === this) signOut(); // revoked while signed in: nothing shown can be trusted
        showError(`The stream refused the token: ${reason}`);
      },
    });
  }

  api(method, path, options) {
    return call(this.token, method, path, options);
  }

  async start() {
    this.busy += 1; // events before the list has loaded wait for it
    try {
      this.stream.open();
      await this.stream.ready;
      let cursor = null;
      do {
        const query = cursor ? `&cursor=${encodeURIComponent(cursor)}` : "";
        const page = await this.api("GET", `/v1/servers?limit=100${query}`);
        if (this.closed) return;
        page.items.forEach((server) => this.upsert(server));
        cursor = page.next_cursor;
      } while (cursor);
    } finally {
      this.busy -= 1;
      if (!this.closed) this.settle();
    }
    await this.probeAdmin();
  }

  stop() {
    this.closed = true;
    this.stream.stop();
  }

  // ---- servers

  upsert(server) {
    let entry = this.servers.get(server.id);
    if (entry) {
      const { state, updated_at, deleted_at } = entry.server;
      entry.server = server;
      if (entry.seq > 0) Object.assign(entry.server, { state, updated_at, deleted_at });
    } else {
      entry = { server, seq: 0, last: null, row: null };
      this.servers.set(server.id, entry);
    }
    this.render(entry);
    const waiting = this.pending.get(server.id) || [];
    this.pending.delete(server.id);
    waiting.forEach((event) => this.applyEvent(event));
  }

  applyEvent(event) {
    if (this.closed) return;
    const entry = this.servers.get(event.server_id);
    if (!entry) {
      if (!this.pending.has(event.server_id)) this.pending.set(event.server_id, []);
      this.pending.get(event.server_id).push(event);
      this.settle();
      return;
    }
    if (event.seq <= entry.seq) return;
    entry.seq = event.seq;
    entry.last = event;
    entry.server.state = event.to;
    entry.server.updated_at = event.at;
    if (event.to === "deleted") entry.server.deleted_at = event.at;
    this.render(entry);
    if (this.selected === event.server_id) {
      this.timeline.set(event.seq, event);
      this.renderTimeline();
    }
  }

  // Fetch servers the stream named but no answer brought, once nothing that could bring them is in flight.
  settle() {
    if (this.busy > 0) return;
    for (const id of this.pending.keys()) {
      if (this.fetching.has(id)) continue;
      this.fetching.add(id);
      this.api("GET", `/v1/servers/${encodeURIComponent(id)}`)
        .then((server) => this.closed || this.upsert(server))
        .catch((error) => {
          this.pending.delete(id);
          if (error.status !== 404) showError(error);
        })
        .finally(() => this.fetching.delete(id));
    }
  }

  async create() {
    const value = (id) => $(id).value.trim();
    const body = {
      name: value("create-name"),
      minecraft_version: value("create-minecraft"),
      fabric: { loader: value("create-loader"), installer: value("create-installer") },
    };
    const text = JSON.stringify(body);
    // A submit that got no answer may have been applied: the same request again must reuse its key.
    const key = this.lastCreate && this.lastCreate.body === text ? this.lastCreate.key : newKey();
    this.lastCreate = { body: text, key };
    this.busy += 1;
    try {
      const server = await this.api("POST", "/v1/servers", { body, headers: { "Idempotency-Key": key } });
      this.lastCreate = null;
      if (this.closed) return;
      this.upsert(server);
      $("create-name").value = "";
      clearError();
    } catch (error) {
      if (error instanceof ApiError) this.lastCreate = null;
      throw error;
    } finally {
      this.busy -= 1;
      this.settle();
    }
  }

  async act(id, action) {
    const entry = this.servers.get(id);
    const ask = CONFIRM[action];
    if (!entry || !(await confirmAction(ask.text(entry.server.name), ask.verb))) return;
    const path = `/v1/servers/${encodeURIComponent(id)}`;
    try {
      const server =
        action === "delete" ? await this.api("DELETE", path) : await this.api("POST", `${path}/${action}`);
      if (!this.closed) this.upsert(server);
      clearError();
    } catch (error) {
      showError(error);
    }
  }

  // Rows are built once and then updated in place, so a focused button keeps its focus as events arrive.
  render(entry) {
    if (!entry.row) entry.row = this.buildRow(entry.server);
    const { server, row } = entry;
    row.dataset.name = server.name;
    row.dataset.state = server.state;
    row.classList.toggle("selected", this.selected === server.id);
    row.classList.toggle("gone", Boolean(server.deleted_at));
    const [name, state, desired, node, vmid, address, change, actions] = row.children;
    name.firstChild.textContent = server.name;
    state.replaceChildren(badge(server.state));
    desired.textContent = server.desired_state;
    node.textContent = server.node || "";
    vmid.textContent = server.vmid ?? "";
    address.textContent = server.ip ? `${server.ip}:${server.game_port}` : "";
    change.replaceChildren(entry.last ? `${entry.last.event} ` : "", clock(server.updated_at));
    change.title = entry.last && entry.last.detail ? entry.last.detail : "";
    for (const button of actions.children) button.disabled = Boolean(server.deleted_at);
    $("no-servers").hidden = this.servers.size > 0;
  }

  buildRow(server) {
    const id = server.id;
    const row = element("tr", { attrs: { "data-testid": "server-row", "data-server-id": id } });
    // The whole row opens the journal; the name is the button that does it from the keyboard.
    row.addEventListener("click", (event) => event.target.closest("button") || this.select(id));
    const open = element("button", {
      text: server.name,
      cls: "link",
      attrs: { type: "button", "data-testid": "open-timeline", "aria-label": `Journal of ${server.name}` },
    });
    open.addEventListener("click", () => this.select(id));
    const actions = element("td", { cls: "actions" });
    for (const action of ["start", "stop", "delete"]) {
      const button = element("button", {
        text: CONFIRM[action].verb,
        cls: action === "delete" ? "danger" : "",
        attrs: { type: "button", "data-testid": action, "aria-label": `${CONFIRM[action].verb} ${server.name}` },
      });
      button.addEventListener("click", () => this.act(id, action));
      actions.append(button);
    }
    const cells = Array.from({ length: 6 }, () => element("td"));
    row.append(element("th", { attrs: { scope: "row" } }, [open]), ...cells, actions);
    $("servers-body").append(row);
    return row;
  }

  // ---- the journal timeline of one server

  async select(id) {
    const entry = this.servers.get(id);
    if (!entry) return;
    const previous = this.selected && this.servers.get(this.selected);
    this.selected = id;
    this.timeline = new Map();
    if (previous && previous.row) previous.row.classList.remove("selected");
    if (entry.row) entry.row.classList.add("selected");
    $("timeline-name").textContent = entry.server.name;
    $("timeline-panel").hidden = false;
    $("timeline-panel").dataset.serverId = id;
    this.renderTimeline();
    try {
      const page = await this.api("GET", `/v1/servers/${encodeURIComponent(id)}/events`);
      if (this.closed || this.selected !== id) return;
      page.items.forEach((event) => this.timeline.set(event.seq, event));
      this.renderTimeline();
    } catch (error) {
      showError(error);
    }
  }

  unselect() {
    const entry = this.selected && this.servers.get(this.selected);
    if (entry && entry.row) entry.row.classList.remove("selected");
    this.selected = null;
    $("timeline-panel").hidden = true;
  }

  renderTimeline() {
    const items = [...this.timeline.values()].sort((a, b) => a.seq - b.seq);
    $("timeline").replaceChildren(
      ...items.map((event) =>
        element("li", { attrs: { "data-testid": "timeline-entry", "data-seq": event.seq, "data-to": event.to } }, [
          clock(event.at),
          " ",
          event.from ? badge(event.from) : "",
          event.from ? " → " : "",
          badge(event.to),
          " ",
          element("span", { text: event.event, cls: "event" }),
          event.detail ? element("span", { text: event.detail, cls: "detail" }) : "",
        ]),
      ),
    );
  }

  // ---- admin panels: shown when /admin/v1/shards answers 200; a user token gets 403

  async probeAdmin() {
    try {
      await this.loadShards();
    } catch (error) {
      if (error.status === 403) {
        $("who").textContent = "user";
        return;
      }
      throw error;
    }
    $("who").textContent = "admin";
    $("admin").hidden = false;
    await this.loadDrift();
  }

  async loadShards() {
    const data = await this.api("GET", "/admin/v1/shards");
    if (this.closed) return;
    $("shards-body").replaceChildren(
      ...data.shards.map((lease) =>
        element("tr", { attrs: { "data-testid": "shard-row", "data-shard": lease.shard } }, [
          element("th", { text: lease.shard, attrs: { scope: "row" } }),
          element("td", { text: short(lease.owner), attrs: { title: lease.owner || "", "data-testid": "owner" } }),
          element("td", { text: lease.epoch, attrs: { "data-testid": "epoch" } }),
          element("td", {}, [clock(lease.acquired_at)]),
        ]),
      ),
    );
    $("replicas-body").replaceChildren(
      ...data.replicas.map((replica) =>
        element("tr", { attrs: { "data-testid": "replica-row", "data-replica": replica.id } }, [
          element("th", { text: short(replica.id), attrs: { scope: "row", title: replica.id } }),
          element("td", { text: replica.host }),
          element("td", { text: replica.pid }),
          element("td", { text: replica.http_port ?? "" }),
          element("td", { text: replica.live ? "yes" : "no", cls: replica.live ? "live" : "dead" }),
          element("td", { text: replica.owned_shards }),
          element("td", {}, [clock(replica.heartbeat_at)]),
        ]),
      ),
    );
  }

  async loadDrift() {
    this.renderDrift((await this.api("GET", "/admin/v1/drift")).reports);
  }

  async reconcile() {
    this.renderDrift((await this.api("POST", "/admin/v1/reconcile")).reports);
  }

  renderDrift(reports) {
    if (this.closed) return;
    if (!reports.length) {
      $("drift").replaceChildren(element("p", { text: "No reconciliation has run yet.", cls: "hint" }));
      return;
    }
    $("drift").replaceChildren(
      ...reports.map((report) =>
        element("article", { cls: "report", attrs: { "data-testid": "drift-report", "data-replica": report.replica } }, [
          element("h3", {}, [
            `Replica ${short(report.replica)} · ${report.trigger} · shards ${report.shards.join(", ")} · `,
            clock(report.finished_at),
          ]),
          element(
            "ul",
            { cls: "kinds" },
            Object.entries(report.by_kind).map(([kind, count]) =>
              element("li", { text: `${kind}: ${count}`, cls: count ? "drifted" : "", attrs: { "data-kind": kind } }),
            ),
          ),
          report.error ? element("p", { text: `error: ${report.error}`, cls: "detail" }) : "",
          element(
            "ul",
            { cls: "drifts" },
            report.drifts.map((drift) =>
              element("li", { attrs: { "data-testid": "drift-item", "data-kind": drift.kind } }, [
                element("strong", { text: drift.kind }),
                ` vmid ${drift.vmid ?? "-"}${drift.server_id ? ` server ${short(drift.server_id)}` : ""}: `,
                drift.reason,
                drift.action ? ` (${drift.action})` : "",
              ]),
            ),
          ),
        ]),
      ),
    );
  }
}

// ------------------------------------------------------------------------------------------- wiring

let session = null;

function showSignedIn(signedIn) {
  $("signin-panel").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("session").hidden = !signedIn;
}

async function signIn(token) {
  clearError();
  const current = new Session(token);
  session = current;
  try {
    await current.start();
  } catch (error) {
    if (session !== current) return;
    if (error instanceof Refused || error.status === 401) signOut();
    showError(error);
  }
}

function signOut() {
  if (session) session.stop();
  session = null;
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["servers-body", "timeline", "shards-body", "replicas-body", "drift"]) $(id).replaceChildren();
  $("no-servers").hidden = false;
  $("timeline-panel").hidden = true;
  $("admin").hidden = true;
  $("who").textContent = "";
  showSignedIn(false);
}

function guarded(work) {
  return async (event) => {
    if (event) event.preventDefault();
    try {
      await work(event);
    } catch (error) {
      showError(error);
    }
  };
}

function main() {
  $("signin-form").addEventListener(
    "submit",
    guarded(async () => {
      const token = $("token").value.trim();
      $("token").value = "";
      sessionStorage.setItem(TOKEN_KEY, token);
      showSignedIn(true);
      await signIn(token);
    }),
  );
  $("sign-out").addEventListener("click", () => {
    signOut();
    clearError();
  });
  $("error-dismiss").addEventListener("click", clearError);
  $("create-form").addEventListener(
    "submit",
    guarded(async () => {
      const button = $("create-submit");
      button.disabled = true;
      try {
        await session.create();
      } finally {
        button.disabled = false;
      }
    }),
  );
  $("timeline-close").addEventListener("click", () => session && session.unselect());
  $("shards-refresh").addEventListener("click", guarded(() => session.loadShards()));
  $("drift-refresh").addEventListener("click", guarded(() => session.loadDrift()));
  $("reconcile").addEventListener("click", guarded(() => session.reconcile()));

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    showSignedIn(true);
    signIn(saved);
  } else {
    showSignedIn(false);
  }
}

main();
