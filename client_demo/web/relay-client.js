// relay-client.js: the reference browser client of the tweet-relay stream protocol.
// An ES module with no dependencies: copy it next to a page and
//   import { RelayClient } from "./relay-client.js";
//   const client = new RelayClient("wss://relay.example.org/v1/stream", { token });
//   client.addEventListener("tweet", (e) => show(e.detail.tweet));
//   client.subscribe("rule:cats");
//   client.connect();
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
//   frame            every frame, known or not

const SUBSCRIBE = "subscribe ";

export class RelayClient extends EventTarget {
  constructor(url, { token = "", getToken = null, maxDelay = 10000, random = Math.random } = {}) {
    super();
    this.url = url;
    this.token = token;
    this.getToken = getToken;
    this.maxDelay = maxDelay;
    this.random = random;
    this.channels = new Map();  // channel -> {epoch, seq, filters}
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
  }

  // Follow a channel; `since` ({epoch, seq}) resumes after that position.
  subscribe(channel, { since = null, filters = null } = {}) {
    const position = { epoch: since ? since.epoch : null, seq: since ? since.seq : null, filters };
    this.channels.set(channel, position);
    if (this.isOpen()) this._send(this._subscribeOp(channel, position));
  }

  unsubscribe(channel) {
    this.channels.delete(channel);
    if (this.isOpen()) this._send({ op: "unsubscribe", channel });
  }

  // The last position delivered on a channel: {epoch, seq} (nulls before the first).
  position(channel) {
    const p = this.channels.get(channel);
    return p ? { epoch: p.epoch, seq: p.seq } : null;
  }

  // A new token: sent as a `refresh` on the open connection, used by later connections.
  setToken(token) {
    this.token = token;
    if (this.isOpen()) this._send({ op: "refresh", token });
  }

  isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  connect() {
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
        if (position && (position.epoch === null || position.seq === null)) {
          position.epoch = frame.epoch;
          position.seq = frame.seq;
        }
        return this._emit("subscribed", frame);
      case "tweet":
        if (!position) return;
        if (position.seq !== null && frame.seq <= position.seq) return;  // never twice
        position.seq = frame.seq;
        return this._emit("tweet", frame);
      case "reset":
        if (position) {
          position.epoch = frame.epoch;
          position.seq = frame.seq;
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
