// One signed-in session: the servers it shows, the journal it has open, its stream. Everything it
// holds is dropped with it at sign-out; answers that arrive after that are ignored (`closed`).
//
// Order matters: the stream is connected first and the server list is loaded only after its
// `hello`, so the list is at least as new as the point where the stream starts; every later change
// then arrives as an event. Once the stream has spoken about a server, its state wins over any REST
// snapshot (a snapshot may be older than an event already shown, never newer than the events still
// to come), and events are applied per server in `seq` order, so a repeat is ignored.
//
// An event for a server the page does not know yet (created elsewhere, or by this page before its
// POST answered) waits in `pending`; while the list or a create is in flight the answer will most
// likely bring that server, so a single GET of the server is made only when nothing is in flight.
//
// A refused token (a 401 from any call, or a 4401 close of the stream) ends the session: `onRefused`
// signs the page out and says why, since nothing shown can be trusted any more.

import { ApiError, Refused, call, newKey, readJournal } from "./api.js";
import { $, clearError, confirmAction, showError } from "./dom.js";
import * as render from "./render.js";
import { Stream } from "./stream.js";

export class Session {
  constructor(token, { onRefused }) {
    this.token = token;
    this.onRefused = onRefused;
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
      onRefused: (error) => this.refuse(error),
    });
  }

  async api(method, path, options) {
    try {
      return await call(this.token, method, path, options);
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) throw error;
      const refused = new Refused(`The API refused the token: ${error.message}`);
      this.refuse(refused);
      throw refused;
    }
  }

  refuse(error) {
    if (!this.closed) this.onRefused(error);
  }

  // An error of this session's own work; one that ends after sign-out has nobody left to tell.
  report(error) {
    if (!this.closed) showError(error);
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
      const row = render.buildRow(server, {
        onOpen: () => this.select(server.id),
        onAction: (action) => this.act(server.id, action),
      });
      entry = { server, seq: 0, last: null, row };
      this.servers.set(server.id, entry);
    }
    this.show(entry);
    const waiting = this.pending.get(server.id) || [];
    this.pending.delete(server.id);
    waiting.forEach((event) => this.applyEvent(event));
  }

  show(entry) {
    render.updateRow(entry.row, entry.server, entry.last, this.selected === entry.server.id);
    $("no-servers").hidden = this.servers.size > 0;
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
    this.show(entry);
    if (this.selected === event.server_id) {
      this.timeline.set(event.seq, event);
      this.showTimeline();
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
          if (error.status !== 404) this.report(error);
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
      if (error instanceof ApiError || error instanceof Refused) this.lastCreate = null;
      throw error;
    } finally {
      this.busy -= 1;
      if (!this.closed) this.settle();
    }
  }

  async act(id, action) {
    const entry = this.servers.get(id);
    const ask = render.ACTIONS[action];
    if (!entry || !(await confirmAction(ask.text(entry.server.name), ask.verb))) return;
    const path = `/v1/servers/${encodeURIComponent(id)}`;
    try {
      const server =
        action === "delete" ? await this.api("DELETE", path) : await this.api("POST", `${path}/${action}`);
      if (this.closed) return;
      this.upsert(server);
      clearError();
    } catch (error) {
      this.report(error);
    }
  }

  // ---- the journal timeline of one server: every page of it, then live events appended

  async select(id) {
    const entry = this.servers.get(id);
    if (!entry) return;
    const previous = this.selected && this.servers.get(this.selected);
    this.selected = id;
    this.timeline = new Map();
    if (previous) previous.row.classList.remove("selected");
    entry.row.classList.add("selected");
    $("timeline-name").textContent = entry.server.name;
    $("timeline-panel").hidden = false;
    $("timeline-panel").dataset.serverId = id;
    this.showTimeline();
    try {
      const entries = await readJournal((method, path) => this.api(method, path), id);
      if (this.closed || this.selected !== id) return;
      entries.forEach((event) => this.timeline.set(event.seq, event));
      this.showTimeline();
    } catch (error) {
      this.report(error);
    }
  }

  unselect() {
    const entry = this.selected && this.servers.get(this.selected);
    if (entry) entry.row.classList.remove("selected");
    this.selected = null;
    $("timeline-panel").hidden = true;
  }

  showTimeline() {
    const events = [...this.timeline.values()].sort((a, b) => a.seq - b.seq);
    $("timeline").replaceChildren(...render.timeline(events));
  }

  // ---- admin panels: shown when /admin/v1/shards answers 200; a user token gets 403

  async probeAdmin() {
    let data;
    try {
      data = await this.api("GET", "/admin/v1/shards");
    } catch (error) {
      if (error.status !== 403) throw error;
      if (!this.closed) $("who").textContent = "user";
      return;
    }
    // Signed out while asking: the header and the admin panels belong to whoever signs in next.
    if (this.closed) return;
    render.shards(data);
    $("who").textContent = "admin";
    $("admin").hidden = false;
    await this.loadDrift();
  }

  async loadShards() {
    const data = await this.api("GET", "/admin/v1/shards");
    if (!this.closed) render.shards(data);
  }

  async loadDrift() {
    const data = await this.api("GET", "/admin/v1/drift");
    if (!this.closed) render.drift(data.reports);
  }

  async reconcile() {
    const data = await this.api("POST", "/admin/v1/reconcile");
    if (!this.closed) render.drift(data.reports);
  }
}
