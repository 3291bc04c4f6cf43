// What the page shows, built from API data: server rows, the journal timeline, the shard map and
// the drift report. These functions hold no state; `session.js` decides when to call them.

import { $, badge, clock, element, short } from "./dom.js";

export const ACTIONS = {
  start: { verb: "Start", text: (name) => `Start server “${name}”?` },
  stop: { verb: "Stop", text: (name) => `Stop server “${name}”? Players are disconnected.` },
  delete: { verb: "Delete", text: (name) => `Delete server “${name}”? Its container and world are destroyed.` },
};

// A row is built once and then updated in place (`updateRow`), so a focused button keeps its focus
// as events arrive. `onOpen()` opens the journal; `onAction(action)` is a click on start/stop/delete.
export function buildRow(server, { onOpen, onAction }) {
  const row = element("tr", { attrs: { "data-testid": "server-row", "data-server-id": server.id } });
  // The whole row opens the journal; the name is the button that does it from the keyboard.
  row.addEventListener("click", (event) => event.target.closest("button") || onOpen());
  const open = element("button", {
    text: server.name,
    cls: "link",
    attrs: { type: "button", "data-testid": "open-timeline", "aria-label": `Journal of ${server.name}` },
  });
  open.addEventListener("click", onOpen);
  const actions = element("td", { cls: "actions" });
  for (const [action, { verb }] of Object.entries(ACTIONS)) {
    const button = element("button", {
      text: verb,
      cls: action === "delete" ? "danger" : "",
      attrs: { type: "button", "data-testid": action, "aria-label": `${verb} ${server.name}` },
    });
    button.addEventListener("click", () => onAction(action));
    actions.append(button);
  }
  const cells = Array.from({ length: 6 }, () => element("td"));
  row.append(element("th", { attrs: { scope: "row" } }, [open]), ...cells, actions);
  $("servers-body").append(row);
  return row;
}

// `last` is the newest stream event applied to the server (null before the first).
export function updateRow(row, server, last, selected) {
  row.dataset.name = server.name;
  row.dataset.state = server.state;
  row.classList.toggle("selected", selected);
  row.classList.toggle("gone", Boolean(server.deleted_at));
  const [name, state, desired, node, vmid, address, change, actions] = row.children;
  name.firstChild.textContent = server.name;
  const problem = server.last_error
    ? element("span", { text: server.last_error, cls: "last-error", attrs: { "data-testid": "last-error" } })
    : "";
  state.replaceChildren(badge(server.state), problem);
  desired.textContent = server.desired_state;
  node.textContent = server.node || "";
  vmid.textContent = server.vmid ?? "";
  address.textContent = server.ip ? `${server.ip}:${server.game_port}` : "";
  change.replaceChildren(last ? `${last.event} ` : "", clock(server.updated_at));
  change.title = last && last.detail ? last.detail : "";
  for (const button of actions.children) button.disabled = Boolean(server.deleted_at);
}

export function timeline(events) {
  return events.map((event) =>
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
  );
}

// The answer of GET /admin/v1/shards, into the shard and replica tables.
export function shards(data) {
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

// The reports of GET /admin/v1/drift (or of a reconcile), one article per replica.
export function drift(reports) {
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
        element("ul", { cls: "drifts" }, report.drifts.map(driftItem)),
      ]),
    ),
  );
}

function driftItem(found) {
  return element("li", { attrs: { "data-testid": "drift-item", "data-kind": found.kind } }, [
    element("strong", { text: found.kind }),
    ` vmid ${found.vmid ?? "-"}${found.server_id ? ` server ${short(found.server_id)}` : ""}: `,
    found.reason,
    found.action ? ` (${found.action})` : "",
  ]);
}
