// The WebSocket stream of state changes (docs/stream.md), reconnecting from where it stopped.
//
// The token goes in the first message: browsers cannot set headers on a WebSocket. After a drop the
// stream reconnects with `?since=` the cursor of the last message it handled (0.5 s, doubling to
// 10 s), so nothing is missed or repeated. A close with 4401 means the token is refused: then it
// stops for good and says so, since retrying with the same token cannot succeed.

import { Refused } from "./api.js";

const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 10000;
const UNAUTHORIZED = 4401;

export class Stream {
  // onEvent(event) for each `server.state`; onStatus(text) for the header; onRefused(Refused error).
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
    // Settles with the first `hello` (or the refusal): the server list is loaded only after it.
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
      const refused = new Refused(`The stream refused the token: ${event.reason || "invalid or revoked token"}`);
      this.rejectReady(refused);
      this.onRefused(refused);
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
