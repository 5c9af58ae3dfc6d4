// relay-client.js: the reference browser client of the tweet-relay stream protocol.
// An ES module with no dependencies: copy it next to a page and
//   import { RelayClient } from "./relay-client.js";
//   const client = new RelayClient("wss://relay.example.org/v1/stream", { token });
//   client.addEventListener("tweet", (e) => show(e.detail.tweet));
//   client.subscribe("rule:cats");
//   client.connect();
//
// Over server-sent events where a WebSocket cannot pass (a proxy that refuses upgrades):
//   new RelayClient("https://relay.example.org/v1/events", { transport: "sse", token })
// (the stream URL works too: it is turned into the events URL of the same relay). The same
// events reach the same handlers; the differences are in the SSE notes below.
//
// It keeps, per channel, the store epoch and the last seq it delivered, and after any
// disconnect reconnects with exponential backoff and full jitter and subscribes again
// with `since`, so nothing is missed and nothing comes twice. A `reset` (the store
// changed) moves the position to what the relay says. What no retry can fix (a closed
// 4001 without a token to refresh, 4003, 1008, a refused subscription) stops with an
// event instead of retrying. Frame types it does not know are passed on as "frame"
// events and otherwise ignored: the protocol grows by adding (docs/protocol.md).
//
// Events (CustomEvent, the frame or a small object in `detail`):
//   state            {state: "connecting" | "open" | "reconnecting" | "closed", code, reason,
//                    why, message, opened, delay}: `reason` as the relay sent it; `opened`
//                    whether the connection that closed had opened (a failed try had not);
//                    `why` and
//                    `message` read from it when it is JSON (a 4001's `why` is "expired",
//                    "revoked" or "invalid"; 1001, 1011, 4008 and 4029 carry the last seq)
//   subscribed, tweet, reset, deleted, history_start, stats, refreshed   the frame
//   refresh_required the frame; call setToken(newToken) before its deadline, or give
//                    `getToken` (an async function) to the constructor to have it done
//   refused          {channel, code, message}: a subscription the relay refused (not retried)
//   error            the frame of any other error
//   frame            every frame, known or not (over SSE: every event of a type named here)
//
// Over SSE (`transport: "sse"`) one EventSource carries every channel. EventSource
// reconnects by itself after the relay's `retry:` hint and resumes with `Last-Event-ID`;
// the client opens a new stream itself (with `?since=` its position) when the channels or
// the token change, since an EventSource cannot change its URL. A tweet on several
// channels comes once and is delivered once for each, as over WebSocket. Filters, a
// position and a rewind belong to the stream: every channel of one client shares its
// filters (subscribe with others throws: use a second client), the stream starts after
// the earliest position held (a channel already past it drops what it has), and a
// rewind applies to every channel without a position. A refusal before the stream starts
// is an HTTP status EventSource does not show: the client asks again with fetch to read
// it (401 ends with a `state` closed, final; an unknown or forbidden channel is
// `refused`). The relay's last event before it ends a stream (`close`) says why, with the
// close code a WebSocket would have had: the `state` events then carry that `code`, `why`
// and `message`, as over WebSocket (4001, 4003 and 1008 end; others are retried).

const SUBSCRIBE = "subscribe ";
// The event types a relay sends on an event stream (docs/protocol.md), and the one it
// sends last, saying why the stream ends.
const SSE_EVENTS = ["subscribed", "tweet", "reset", "deleted", "history_start", "stats",
  "refresh_required", "refreshed", "error"];
const SSE_FINAL = "close";
const TRANSPORTS = ["websocket", "sse"];

export class RelayClient extends EventTarget {
  constructor(url, { token = "", getToken = null, maxDelay = 10000, random = Math.random,
    transport = "websocket" } = {}) {
    super();
    if (!TRANSPORTS.includes(transport)) {
      throw new TypeError("transport is \"websocket\" or \"sse\", not " + JSON.stringify(transport));
    }
    this.transport = transport;
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.maxDelay = maxDelay;
    this.random = random;
    this.channels = new Map();  // channel -> {epoch, seq, filters}
    this.ws = null;
    this.es = null;             // the EventSource, over SSE
    this.ended = null;          // what the relay's last event said, over SSE
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
  }

  // Follow a channel; `since` ({epoch, seq}) resumes after that position, `since`
  // ({time}) rewinds to a moment: ISO 8601 ("2026-12-07T06:00:00Z") or back from now
  // ("-15m", "-1h"); every tweet the relay received from then, then live.
  subscribe(channel, { since = null, filters = null } = {}) {
    const at = since && since.time === undefined;
    const position = { epoch: at ? since.epoch : null, seq: at ? since.seq : null,
      time: since && since.time !== undefined ? String(since.time) : null, filters };
    if (this.transport === "sse") {
      for (const [other, held] of this.channels) {
        if (other !== channel && !other.startsWith("$") && !channel.startsWith("$")
          && JSON.stringify(held.filters || null) !== JSON.stringify(filters || null)) {
          throw new Error("over SSE every channel of a client has the same filters: "
            + channel + " differs from " + other + " (use a second client)");
        }
      }
      this.channels.set(channel, position);
      if (this.es) this._reopenSoon();
      return;
    }
    this.channels.set(channel, position);
    if (this.isOpen()) this._send(this._subscribeOp(channel, position));
  }

  unsubscribe(channel) {
    this.channels.delete(channel);
    if (this.transport === "sse") {
      if (this.es) this._reopenSoon();
      return;
    }
    if (this.isOpen()) this._send({ op: "unsubscribe", channel });
  }

  // The last position delivered on a channel: {epoch, seq} (nulls before the first).
  position(channel) {
    const p = this.channels.get(channel);
    return p ? { epoch: p.epoch, seq: p.seq } : null;
  }

  // A new token: sent as a `refresh` on the open connection, used by later connections.
  // Over SSE a new stream opens with it, from the position held.
  setToken(token) {
    this.token = token;
    if (this.transport === "sse") {
      if (this.es) this._reopenSoon();
      return;
    }
    if (this.isOpen()) this._send({ op: "refresh", token });
  }

  isOpen() {
    if (this.transport === "sse") {
      return this.es !== null && this.es.readyState === EventSource.OPEN;
    }
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
    if (this.transport === "sse") return this._openEvents();
    this.stopped = false;
    clearTimeout(this.timer);
    this._state("connecting");
    const url = new URL(this.url);
    if (this.token) url.searchParams.set("token", this.token);
    const ws = new WebSocket(url.toString());
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (ws !== this.ws) return;
      opened = true;
      this._state("open");
      for (const [channel, position] of this.channels) {
        this._send(this._subscribeOp(channel, position));
      }
    };
    ws.onmessage = (message) => {
      if (ws !== this.ws) return;
      let frame;
      try { frame = JSON.parse(message.data); } catch (e) { return; }
      if (frame && typeof frame === "object") this._frame(frame);
    };
    ws.onclose = (event) => {
      if (ws !== this.ws) return;
      this.ws = null;
      const close = { code: event.code, reason: event.reason, opened, ...readReason(event.reason) };
      if (this.stopped) return this._state("closed", close);
      if (event.code === 4001 || event.code === 4003 || event.code === 1008) {
        // The token expired unrefreshed, was revoked or is no longer valid, or the relay
        // refused: a retry cannot help.
        this.stopped = true;
        return this._state("closed", { ...close, final: true });
      }
      this._retry(close);
    };
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000);
    if (this.es) {
      this.es.close();
      this.es = null;
      this._state("closed", { code: 1000, reason: "", opened: true });
    }
  }

  // -- server-sent events ---------------------------------------------------------------

  _openEvents() {
    this.stopped = false;
    this.reopening = false;
    clearTimeout(this.timer);
    if (this.es) this.es.close();
    this._state("connecting");
    const url = this._eventsURL();
    const es = new EventSource(url);
    this.es = es;
    let opened = false;
    es.onopen = () => {
      if (es !== this.es) return;
      opened = true;
      this.ended = null;
      this._state("open");
    };
    const read = (type) => (event) => {
      // An event named "error" and a failed connection share the name: only the first
      // is a MessageEvent.
      if (es === this.es && event instanceof MessageEvent) this._event(type, event.data);
    };
    for (const type of [...SSE_EVENTS, SSE_FINAL]) es.addEventListener(type, read(type));
    es.onmessage = read("message");
    es.onerror = (event) => {
      if (es !== this.es || event instanceof MessageEvent) return;
      const close = { code: null, reason: "", opened, ...(this.ended || {}) };
      opened = false;
      if (es.readyState === EventSource.CONNECTING) {
        // EventSource tries again by itself, after the relay's `retry:` hint, sending
        // Last-Event-ID: the relay resumes after it.
        return this._state("reconnecting", { ...close, delay: null });
      }
      // Closed for good: the relay answered with a status other than 200, or not with an
      // event stream. EventSource hides which: ask again to read it.
      this.es = null;
      es.close();
      this._refused(url, close);
    };
  }

  // One new stream once the current task is done: subscribing to three channels in a row
  // reopens once.
  _reopenSoon() {
    if (this.reopening) return;
    this.reopening = true;
    queueMicrotask(() => {
      if (!this.reopening || this.stopped) return;
      if (this.channels.size === 0) return this.close();
      this._openEvents();
    });
  }

  _eventsURL() {
    const url = new URL(this.url);
    if (url.protocol === "ws:") url.protocol = "http:";
    if (url.protocol === "wss:") url.protocol = "https:";
    if (url.pathname.endsWith("/v1/stream")) {
      url.pathname = url.pathname.slice(0, -"/v1/stream".length) + "/v1/events";
    }
    for (const key of ["channel", "since", "since_time", "token"]) url.searchParams.delete(key);
    let held = null;
    let rewind = null;
    let filters = null;
    for (const [channel, position] of this.channels) {
      url.searchParams.append("channel", channel);
      if (channel.startsWith("$")) continue;
      if (position.filters) filters = position.filters;
      if (position.epoch !== null && position.seq !== null) {
        if (!held || position.seq < held.seq) held = position;
      } else if (position.time !== null && rewind === null) {
        rewind = position.time;
      }
    }
    if (held) url.searchParams.set("since", held.epoch + ":" + held.seq);
    else if (rewind !== null) url.searchParams.set("since_time", rewind);
    for (const [name, value] of Object.entries(filters || {})) {
      for (const one of Array.isArray(value) ? value : [value]) {
        url.searchParams.append(name, String(one));
      }
    }
    if (this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }

  _event(type, data) {
    let frame;
    try { frame = JSON.parse(data); } catch (e) { return; }
    if (!frame || typeof frame !== "object") return;
    if (typeof frame.type !== "string") frame.type = type;
    if (type === SSE_FINAL) return this._ended(frame);
    if (Array.isArray(frame.channels)) {
      // One event for several channels (a tweet on more than one, or the `subscribed`
      // of a stream of several): delivered once for each, as over WebSocket.
      for (const channel of frame.channels) {
        if (this.channels.has(channel)) this._frame({ ...frame, channel });
      }
      return;
    }
    this._frame(frame);
  }

  // The relay's last event: why the stream ends. A token that expired is refreshed
  // through `getToken` when given (no `refresh_required` comes over an event stream: a
  // new stream opens with the new token, from the position held). A token that no
  // longer works otherwise, or a channel no longer granted, ends here; anything else
  // EventSource retries by itself.
  async _ended(frame) {
    const why = typeof frame.reason === "string" ? frame.reason : "";
    const code = Number.isInteger(frame.code) ? frame.code : null;
    this.ended = { code, reason: JSON.stringify(frame), why };
    if (typeof frame.message === "string") this.ended.message = frame.message;
    if (Number.isInteger(frame.seq)) this.ended.seq = frame.seq;
    if (code === 4001 && why === "expired" && this.getToken) {
      const es = this.es;
      try {
        const token = await this.getToken();
        if (es === this.es && !this.stopped) {
          this.token = token;
          this._openEvents();
          return this._emit("refreshed", { type: "refreshed" });
        }
        return;
      } catch (e) { /* no new token: end as without getToken */ }
    }
    if (code === 4001 || code === 4003 || code === 1008) {
      this.stopped = true;
      const es = this.es;
      this.es = null;
      if (es) es.close();
      this._state("closed", { ...this.ended, opened: true, final: true });
    }
  }

  // Why the relay would not open the stream, from a second try with fetch.
  async _refused(url, close) {
    const controller = new AbortController();
    let response = null;
    let body = null;
    try {
      response = await fetch(url, { cache: "no-store", signal: controller.signal,
        headers: { Accept: "text/event-stream" } });
      if (!response.ok) body = await response.json();
    } catch (e) { /* unreachable, or a body that is not JSON */ }
    controller.abort();  // a stream that did open this time: the retry opens its own
    if (this.stopped) return;
    const status = response ? response.status : 0;
    if (!status || response.ok || status === 429 || status >= 500) return this._retry(close);
    const error = (body && Array.isArray(body.errors) && body.errors[0]) || {};
    const message = typeof error.message === "string" ? error.message : response.statusText;
    const code = typeof error.reason === "string" ? error.reason : String(status);
    if (status === 403 || status === 404) {
      // An unknown or forbidden channel: `refused`, as a refused subscribe; the others
      // go on.
      const channels = [this._named(error, message)];
      for (const channel of channels) {
        this.channels.delete(channel);
        this._emit("refused", { channel, code, message });
      }
      if (this.channels.size) return this._openEvents();
    } else if (status === 400) {
      this._emit("error", { type: "error", code, message });
    }
    this.stopped = true;
    this._state("closed", { ...close, code: status === 401 ? 4001 : status, status,
      reason: JSON.stringify(body), why: code, message, final: true });
  }

  // The channel a refusal is about: the one the body names, else the one its message
  // names first ("unknown channel 'rule:nope': ...", "... does not grant rule:cats").
  _named(error, message) {
    if (typeof error.channel === "string" && this.channels.has(error.channel)) {
      return error.channel;
    }
    let named = null;
    let at = Infinity;
    for (const channel of this.channels.keys()) {
      const index = message.indexOf(channel);
      if (index >= 0 && (index < at || (index === at && channel.length > named.length))) {
        named = channel;
        at = index;
      }
    }
    return named || [...this.channels.keys()][0];
  }

  _retry(close) {
    // Exponential backoff with full jitter: a restarted relay is not stampeded.
    const delay = this.random() * Math.min(this.maxDelay, 250 * 2 ** this.attempt);
    this.attempt += 1;
    this._state("reconnecting", { ...close, delay });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  _subscribeOp(channel, position) {
    // The id comes back on the answer, an error included: it names the channel refused.
    const op = { op: "subscribe", channel, id: SUBSCRIBE + channel };
    if (position.epoch !== null && position.seq !== null) {
      op.since = { epoch: position.epoch, seq: position.seq };
    } else if (position.time !== null) {
      op.since = { time: position.time };
    }
    if (position.filters) op.filters = position.filters;
    return op;
  }

  _send(op) {
    this.ws.send(JSON.stringify(op));
  }

  _state(state, extra = {}) {
    this.state = state;
    this._emit("state", { state, ...extra });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async _frame(frame) {
    this._emit("frame", frame);
    const position = this.channels.get(frame.channel);
    switch (frame.type) {
      case "subscribed":
        this.attempt = 0;
        if (position && position.time !== null && position.seq === null) {
          // A rewind: the stored tweets from then come next, older than this head. The
          // moment stays the position until the first of them (a reconnect rewinds again).
          position.epoch = frame.epoch;
          if (!frame.recovered) {
            position.seq = frame.seq;
            position.time = null;
          }
        } else if (position && (position.epoch === null || position.seq === null)) {
          position.epoch = frame.epoch;
          position.seq = frame.seq;
        }
        return this._emit("subscribed", frame);
      case "tweet":
        if (!position) return;
        if (position.seq !== null && frame.seq <= position.seq) return;  // never twice
        position.seq = frame.seq;
        position.time = null;
        return this._emit("tweet", frame);
      case "reset":
        if (position) {
          position.epoch = frame.epoch;
          position.seq = frame.seq;
          position.time = null;
        }
        return this._emit("reset", frame);
      case "error":
        if (["unauthorized", "forbidden", "unknown_channel"].includes(frame.code)) {
          // A refused subscribe names its channel through the id it echoes; a refusal
          // after a refresh (the new token grants less) names it only in its message.
          const id = typeof frame.id === "string" ? frame.id : "";
          if (id.startsWith(SUBSCRIBE)) {
            const channel = id.slice(SUBSCRIBE.length);
            this.channels.delete(channel);
            return this._emit("refused", { channel, code: frame.code, message: frame.message });
          }
        }
        return this._emit("error", frame);
      case "refresh_required":
        if (this.getToken) {
          try {
            this.setToken(await this.getToken());
            return;
          } catch (e) { /* fall through: let the page ask */ }
        }
        return this._emit("refresh_required", frame);
      default:
        if (["deleted", "history_start", "stats", "refreshed"].includes(frame.type)) {
          this._emit(frame.type, frame);
        }
    }
  }
}

// A close reason the relay sent as JSON ({"reason": "revoked", "message": ..., "seq": 12}):
// {why, message, seq}; nothing for a reason that is not (another server, or none at all).
function readReason(reason) {
  let fields = null;
  try { fields = JSON.parse(reason); } catch (e) { return {}; }
  if (!fields || typeof fields !== "object") return {};
  const read = {};
  if (typeof fields.reason === "string") read.why = fields.reason;
  if (typeof fields.message === "string") read.message = fields.message;
  if (Number.isInteger(fields.seq)) read.seq = fields.seq;
  return read;
}
