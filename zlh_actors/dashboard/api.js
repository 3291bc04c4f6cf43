// Calls to the REST API, and the errors they end in.
//
// Every call carries the token as a Bearer header and asks the browser not to cache: the answers are
// live state. A non-2xx answer becomes an `ApiError` whose message is the problem's `title`, plus
// the invalid fields of a 400, so the message bar can show it as it is.

// A server's journal is read in pages of this many entries (the API's largest page).
export const JOURNAL_PAGE = 1000;

// The token is not (or no longer) valid: the stream closed with 4401, or the API answered 401.
// Whoever gets one must not carry on with that token.
export class Refused extends Error {}

export class ApiError extends Error {
  constructor(status, problem) {
    const title = (problem && problem.title) || `HTTP ${status}`;
    const fields = problem && problem.fields ? Object.entries(problem.fields) : [];
    super(fields.length ? `${title}: ${fields.map(([k, v]) => `${k} ${v}`).join("; ")}` : title);
    this.status = status;
  }
}

export async function call(token, method, path, { body, headers } = {}) {
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

// The whole journal of a server, oldest first: `request(method, path)` is a call with a token bound.
// The API answers at most `pageSize` entries after a given `seq`, so a full page means there may be
// more; a short one (possibly empty) is the end.
export async function readJournal(request, id, pageSize = JOURNAL_PAGE) {
  const entries = [];
  let after = 0;
  for (;;) {
    const path = `/v1/servers/${encodeURIComponent(id)}/events?after=${after}&limit=${pageSize}`;
    const page = await request("GET", path);
    entries.push(...page.items);
    if (page.items.length < pageSize) return entries;
    after = page.items[page.items.length - 1].seq;
  }
}

// An Idempotency-Key: crypto.randomUUID needs a secure context, getRandomValues does not.
export function newKey() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
