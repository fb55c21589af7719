// The console's link to dashboard-api: the session kept in sessionStorage,
// JSON calls with the bearer token, and the server-sent event stream read
// with fetch (EventSource cannot send an Authorization header).

const KEY = { token: "stackpro.token", refresh: "stackpro.refresh", who: "stackpro.who" };

/** An API error: the HTTP status and the problem document's detail. */
export class ApiError extends Error {
  constructor(status, detail, requestId) {
    super(detail);
    this.status = status;
    this.requestId = requestId || "";
  }
}

let onUnauthorized = () => {};
let refreshing = null;

export const session = {
  get token() { return sessionStorage.getItem(KEY.token) || ""; },
  get who() { return sessionStorage.getItem(KEY.who) || ""; },
  get signedIn() { return this.token !== ""; },
  /** Set what happens when the session ends on its own (a 401). */
  onUnauthorized(fn) { onUnauthorized = fn; },
  save(token, refresh, who) {
    sessionStorage.setItem(KEY.token, token);
    if (refresh) sessionStorage.setItem(KEY.refresh, refresh);
    else sessionStorage.removeItem(KEY.refresh);
    sessionStorage.setItem(KEY.who, who || "");
  },
  clear() {
    for (const k of Object.values(KEY)) sessionStorage.removeItem(k);
  },
};

/** Log in with email and password. */
export async function login(email, password) {
  const s = await call("POST", "/api/v1/auth/token", { grant_type: "password", email, password }, { anonymous: true });
  session.save(s.access_token, s.refresh_token, s.user?.email || email);
  return s;
}

/** Use a pasted API token, after checking that the API takes it. */
export async function useToken(token) {
  const res = await fetch("/api/v1/instances?limit=1", { headers: { Authorization: "Bearer " + token } });
  if (!res.ok) throw await problem(res);
  session.save(token, "", "API token");
}

/** End the session here and, for a login, on the server. */
export async function logout() {
  const refresh = sessionStorage.getItem(KEY.refresh);
  const token = session.token;
  session.clear();
  if (refresh && token) {
    try {
      await fetch("/api/v1/auth/logout", {
        method: "POST",
        headers: { Authorization: "Bearer " + token, "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: refresh }),
      });
    } catch { /* the session is gone here either way */ }
  }
}

// refresh trades the refresh token for a new session, once at a time
// however many calls found the access token expired.
function refresh() {
  const rt = sessionStorage.getItem(KEY.refresh);
  if (!rt) return Promise.resolve(false);
  refreshing ??= (async () => {
    try {
      const res = await fetch("/api/v1/auth/token", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ grant_type: "refresh_token", refresh_token: rt }),
      });
      if (!res.ok) return false;
      const s = await res.json();
      session.save(s.access_token, s.refresh_token, s.user?.email || session.who);
      return true;
    } catch {
      return false;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

async function problem(res) {
  let detail = res.statusText || "HTTP " + res.status;
  try {
    const p = await res.json();
    detail = p.detail || p.title || detail;
  } catch { /* not a problem document */ }
  return new ApiError(res.status, detail, res.headers.get("X-Request-Id"));
}

// authorized runs fetch with the bearer token; on a 401 it refreshes the
// session once and tries again, and when that fails ends the session.
async function authorized(path, init = {}) {
  const send = () => fetch(path, { ...init, headers: { ...init.headers, Authorization: "Bearer " + session.token } });
  let res = await send();
  if (res.status === 401 && await refresh()) res = await send();
  if (res.status === 401) {
    const err = await problem(res);
    session.clear();
    onUnauthorized(err);
    throw err;
  }
  return res;
}

/** Call the API; answers the decoded JSON, or throws an ApiError. */
export async function call(method, path, body, { anonymous = false } = {}) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = anonymous ? await fetch(path, init) : await authorized(path, init);
  if (!res.ok) throw await problem(res);
  if (res.status === 204) return null;
  return res.json();
}

export const get = (path) => call("GET", path);

/** Every page of a list: follows next_cursor until the last page. */
export async function getAll(path, key) {
  const out = [];
  let cursor = "";
  for (;;) {
    const sep = path.includes("?") ? "&" : "?";
    const page = await get(path + sep + "limit=500" + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
    out.push(...(page[key] || []));
    if (!page.next_cursor || page.next_cursor === cursor) return out;
    cursor = page.next_cursor;
  }
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
});

/**
 * Follow GET /api/v1/events until stop() is called. onEvent(kind, data, id)
 * gets each event; onState("connected" | "reconnecting") the link's state.
 * A dropped stream is resumed with Last-Event-ID after a backoff (1 s
 * doubling to 30 s, with jitter); a stream silent for longer than three
 * heartbeats is taken for dropped.
 */
export function events(onEvent, onState) {
  const stopped = new AbortController();
  let lastId = "";
  (async () => {
    let backoff = 1000;
    while (!stopped.signal.aborted) {
      const attempt = new AbortController();
      const abort = () => attempt.abort();
      stopped.signal.addEventListener("abort", abort, { once: true });
      let watchdog = 0;
      const feed = () => { clearTimeout(watchdog); watchdog = setTimeout(abort, 45000); };
      try {
        const headers = { Accept: "text/event-stream" };
        if (lastId) headers["Last-Event-ID"] = lastId;
        const res = await authorized("/api/v1/events", { headers, cache: "no-store", signal: attempt.signal });
        if (!res.ok) throw await problem(res);
        onState("connected");
        backoff = 1000;
        feed();
        const parser = sseParser((ev) => {
          if (ev.id !== undefined) lastId = ev.id;
          let data = null;
          try { data = ev.data === "" ? null : JSON.parse(ev.data); } catch { return; }
          onEvent(ev.event || "message", data, ev.id);
        });
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          feed();
          parser(value);
        }
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return; // the session ended
      } finally {
        clearTimeout(watchdog);
        stopped.signal.removeEventListener("abort", abort);
      }
      if (stopped.signal.aborted) return;
      onState("reconnecting");
      await sleep(backoff / 2 + Math.random() * backoff / 2, stopped.signal);
      backoff = Math.min(backoff * 2, 30000);
    }
  })();
  return { stop: () => stopped.abort() };
}

/**
 * sseParser returns a function that takes the stream's text as it arrives
 * and calls dispatch({id, event, data}) for every complete event, as the
 * HTML standard's event-stream rules say: lines end in CR, LF or CRLF;
 * a line starting with ":" is a comment; a blank line ends an event.
 */
export function sseParser(dispatch) {
  let buf = "";
  let data = [];
  let event = "";
  let id; // the id field of the event being read, if it has one
  let lastId;
  const line = (l) => {
    if (l === "") {
      if (data.length > 0) dispatch({ id: id ?? lastId, event, data: data.join("\n") });
      data = []; event = ""; id = undefined;
      return;
    }
    if (l.startsWith(":")) return;
    const i = l.indexOf(":");
    const field = i < 0 ? l : l.slice(0, i);
    let value = i < 0 ? "" : l.slice(i + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    switch (field) {
      case "data": data.push(value); break;
      case "event": event = value; break;
      case "id": if (!value.includes("\0")) { id = value; lastId = value; } break;
      default: break; // retry and unknown fields are ignored
    }
  };
  let skipLF = false; // the last chunk ended in CR: a LF first in this one ends nothing
  return (chunk) => {
    buf += chunk;
    if (skipLF && buf !== "") {
      if (buf.startsWith("\n")) buf = buf.slice(1);
      skipLF = false;
    }
    for (;;) {
      const m = /\r\n|\r|\n/.exec(buf);
      if (!m) return;
      line(buf.slice(0, m.index));
      buf = buf.slice(m.index + m[0].length);
      if (m[0] === "\r" && buf === "") skipLF = true;
    }
  };
}
