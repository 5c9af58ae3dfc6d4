// tweet-relay demo page: a live, resuming view of one channel, and search over the store.
// Plain JavaScript modules, no build step. Text from tweets is only ever set with
// textContent. The stream itself goes through relay-client.js, the reusable client.
import { RelayClient } from "./relay-client.js";

const KEEP = 300;             // tweets kept on the page
const HISTORY = 20;           // stored tweets shown at once when a channel opens
const PAGE_SIZE = 20;         // search results a page
const MAX_DELAY = 10000;      // reconnect backoff cap, ms

const REWINDS = { "-5m": ["the last 5 min", 5 * 60e3], "-1h": ["the last hour", 3600e3] };

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = {
  info: null,
  channel: params.get("channel") || "tweets",
  // ?transport=sse: server-sent events (EventSource) instead of a WebSocket.
  transport: params.get("transport") === "sse" ? "sse" : "websocket",
  // ?since_time=-15m (or an ISO 8601 time): a rewind, as the "From" control sets it.
  rewind: params.get("since_time") ? rewindOf(params.get("since_time")) : null,
  token: sessionStorage.getItem("relay-token") || "",
  epoch: null,
  seq: null,                  // last seq shown for the current channel
  client: null,               // the RelayClient of the current channel
  attempt: 0,                 // tries of /v1/info (the client counts its own)
  arrivals: [],
  history: new Array(30).fill(0),
  search: { text: "", offset: 0, count: 0, scope: "tweets" },
  pending: null,              // stored tweets shown once the channel is granted
  lastClose: null,            // how the last open connection ended, while retrying
};
// Hooks for tests and the curious: every seq shown, in order.
window.relayDemo = {
  seqs: [], resets: 0, state: () => $("state").dataset.state,
  transport: () => state.transport, rewind: () => state.rewind,
};

// A rewind to `time`: "-5m", "-1h" or an ISO 8601 time; `label` says which moment it is.
function rewindOf(time) {
  const back = REWINDS[time];
  if (back) {
    const then = new Date(Date.now() - back[1]);
    return { time, label: back[0] + " (since " + then.toLocaleTimeString()
      + " by this computer's clock)" };
  }
  const date = new Date(time);
  return { time, label: isNaN(date) ? time : date.toLocaleString() };
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setState(name, text) {
  const el = $("state");
  el.dataset.state = name;
  el.textContent = text || name;
  document.body.dataset.state = name;  // the live dot is green only while live
}

// Access stopped: no retry helps until the person gives another token or channel.
function lock(text, message) {
  clearTimeout(state.retryTimer);
  stopClient();
  state.pending = null;
  $("token-form").hidden = false;
  setState("locked", text);
  showError(message);
}

function authHeaders() {
  return state.token ? { Authorization: "Bearer " + state.token } : {};
}

async function getJSON(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const message = body && body.errors ? body.errors[0].message : response.statusText;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

async function loadInfo() {
  const info = await getJSON("/v1/info");
  state.info = info;
  $("token-form").hidden = info.public !== false && !state.token;
  const select = $("channel");
  const current = state.channel;
  select.replaceChildren();
  const channels = info.channels.includes(current) ? info.channels : [...info.channels, current];
  for (const channel of channels) {
    const option = document.createElement("option");
    option.value = channel;
    option.textContent = channel;
    select.append(option);
  }
  select.value = current;
  return info;
}

// -- the live stream -----------------------------------------------------------------------

function streamURL() {
  let url = state.info.stream_url;
  // The page may be served under another host name than the relay saw: keep the page's.
  const page = new URL(location.href);
  const stream = new URL(url);
  stream.host = page.host;
  stream.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  if (state.token) stream.searchParams.set("token", state.token);
  return stream.toString();
}

async function connect() {
  clearTimeout(state.retryTimer);
  setState("connecting");
  try {
    await loadInfo();
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      return lock(state.token ? "token refused" : "token needed", state.token
        ? "The relay refused this token: " + error.message
        : "This relay needs an access token: " + error.message);
    }
    return retry("relay unreachable");
  }
  if (state.info.public === false && !state.token) {
    // A private relay refuses the upgrade without a token: say so instead of retrying.
    return lock("token needed", "This relay is private: enter an access token to watch it.");
  }
  if (state.seq === null && !state.rewind) {
    try {
      await loadHistory();
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        return lock("token refused", "The relay refused this token for "
          + state.channel + ": " + error.message);
      }
      return retry("relay unreachable");
    }
  }
  const client = new RelayClient(streamURL(), { token: state.token, transport: state.transport });
  state.client = client;
  // After the last tweet shown; else at the rewind's moment (until a tweet has come);
  // else live.
  const since = state.seq !== null ? { epoch: state.epoch, seq: state.seq }
    : state.rewind ? { time: state.rewind.time } : null;
  client.subscribe(state.channel, { since });
  client.subscribe("$stats");
  const on = (type, handler) => client.addEventListener(type, (event) => {
    if (client === state.client) handler(event.detail);
  });
  on("state", clientState);
  on("refused", (refusal) => {
    if (refusal.channel === "$stats") return;
    const why = refusal.code === "unknown_channel" ? "no such channel"
      : state.token ? "token refused" : "token needed";
    lock(why, "The relay refused " + state.channel + ": " + refusal.message);
  });
  for (const type of ["subscribed", "tweet", "reset", "deleted", "history_start", "stats",
    "error", "refresh_required", "refreshed"]) {
    on(type, handleFrame);
  }
  client.connect();
}

function stopClient() {
  if (state.client) {
    const old = state.client;
    state.client = null;
    old.close();
  }
}

function clientState(change) {
  if (change.state === "reconnecting") {
    // Say how the connection ended (1001 shutdown, 4008 slow_consumer...), not the 1006
    // of each try that fails while the relay is away.
    if (change.opened || !state.lastClose) state.lastClose = change;
    const last = state.lastClose;
    const how = [last.code, last.why].filter(Boolean).join(" ") || "connection lost";
    // Over SSE, EventSource retries by itself after the relay's hint: no delay to show.
    const when = typeof change.delay === "number"
      ? " in " + (change.delay / 1000).toFixed(1) + " s" : "";
    setState("reconnecting", "disconnected (" + how + ")"
      + (change.opened ? "" : ", relay unreachable") + ", retrying" + when);
  } else if (change.state === "open") {
    state.lastClose = null;
  } else if (change.state === "connecting" && $("state").dataset.state !== "reconnecting") {
    setState("connecting");
  } else if (change.state === "closed" && change.final) {
    if (change.status === 401) {
      // Over SSE: the relay refused the stream before it started.
      lock(state.token ? "token refused" : "token needed", "The relay refused the stream"
        + (change.message ? ": " + change.message : "") + ". Enter a token to continue.");
    } else if (change.code === 4001) {
      // The close reason says why (docs/protocol.md): each asks the person for another thing.
      const again = " Enter a new one to continue from where the page stopped.";
      if (change.why === "revoked") {
        lock("token revoked", "The token was revoked." + again);
      } else if (change.why === "invalid") {
        lock("token invalid", "The token is no longer valid"
          + (change.message ? " (" + change.message + ")." : ".") + again);
      } else if (change.why === "expired") {
        lock("token expired", "The token expired and was not refreshed in time." + again);
      } else {
        lock("token refused", "The relay closed the connection (4001): "
          + (change.message || change.reason || "unauthorized") + "." + again);
      }
    } else {
      lock("refused", "The relay refused the connection (" + change.code + "): "
        + (change.reason || "check the token"));
    }
  }
}

function retry(why) {
  // /v1/info failed: exponential backoff with full jitter, as the client does.
  const delay = Math.random() * Math.min(MAX_DELAY, 250 * 2 ** state.attempt);
  state.attempt += 1;
  setState("reconnecting", why + ", retrying in " + (delay / 1000).toFixed(1) + " s");
  state.retryTimer = setTimeout(connect, delay);
}

function humanBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function humanAge(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function showStats(stats) {
  // The serving process's own figures (several processes: each reports its own).
  $("stats").hidden = false;
  $("stats-in").textContent = stats.tweets_in_per_second.toFixed(1);
  $("stats-out").textContent = stats.frames_out_per_second.toFixed(1);
  $("stats-connections").textContent = stats.connections;
  $("stats-head").textContent = stats.head_seq;
  // On SQLite the size is the database file plus its write-ahead log: say which is which.
  const wal = stats.store.wal_bytes || 0;
  $("stats-size").textContent = humanBytes(stats.store.size_bytes - wal)
    + (wal ? " + " + humanBytes(wal) + " WAL" : "");
  $("stats-size").title = wal
    ? "database file + write-ahead log (copied into the file when writes pause)"
    : "on disk";
  $("stats-oldest").textContent = humanAge(stats.store.oldest_age_seconds);
  window.relayDemo.stats = stats;
}

function handleFrame(frame) {
  if (frame.channel === "$stats") {
    if (frame.type === "stats") showStats(frame);
    return;
  }
  switch (frame.type) {
    case "subscribed":
      if (frame.channel !== state.channel) return;
      state.attempt = 0;
      showError("");
      if (state.rewind && state.seq === null) {
        // The stored tweets from the rewind's moment come next, older than this head.
        state.epoch = frame.epoch;
        state.rewind.recovered = frame.recovered;
        state.rewind.capped = Boolean(frame.recovered_capped);
        if (!frame.recovered) state.seq = frame.seq;
        showShowing();
      } else if (state.epoch === null || state.seq === null) {
        state.epoch = frame.epoch;
        state.seq = frame.seq;
      }
      showPending();  // granted: the stored tweets it resumes after can show now
      // "known": false: the relay's rules are not all known yet (a recording it is still
      // reading) and no tweet has matched this one so far. Live, but say it: a typo'd
      // rule would otherwise look like a quiet one.
      setState("live", "live on " + frame.channel
        + (frame.recovered ? " · recovered " + frame.recovered : "")
        + (frame.known === false ? " · no tweet has matched this rule yet" : ""));
      break;
    case "tweet":
      if (frame.channel !== state.channel) return;
      if (state.seq !== null && frame.seq <= state.seq) return;  // never twice
      state.seq = frame.seq;
      if (state.rewind && !state.rewind.first) {
        state.rewind.first = { seq: frame.seq, received_at: frame.tweet.received_at };
        showShowing();
      }
      window.relayDemo.seqs.push(frame.seq);
      $("seq").textContent = frame.seq;
      addTweet($("tweets"), frame.tweet, frame.seq, true);
      state.arrivals.push(performance.now());
      break;
    case "reset":
      if (frame.channel !== state.channel) return;
      // The relay's store changed: what we hold belongs to another history.
      window.relayDemo.resets += 1;
      window.relayDemo.seqs = [];
      $("tweets").replaceChildren();
      state.epoch = frame.epoch;
      state.seq = frame.seq;
      break;
    case "deleted":
      // The relay deleted a tweet: drop the page's copy of it.
      for (const item of document.querySelectorAll("li.tweet")) {
        if (item.dataset.id === String(frame.id)) item.remove();
      }
      break;
    case "history_start":
      // Retention deleted some of what we missed (or, rewound, tweets of before the
      // moment's oldest kept one); what we show stays valid.
      window.relayDemo.historyStart = frame.seq;
      if (state.rewind && state.seq === null) {
        state.rewind.historyStart = frame.seq;
        showShowing();
        break;
      }
      showError("History now starts at seq " + frame.seq + ": older tweets were deleted.");
      break;
    case "error":
      if (frame.op === "subscribe" && ["unauthorized", "forbidden", "unknown_channel"]
        .includes(frame.code)) {
        const why = frame.code === "unknown_channel" ? "no such channel"
          : state.token ? "token refused" : "token needed";
        return lock(why, "The relay refused " + state.channel + ": " + frame.message);
      }
      if (frame.op === "refresh" && /\$stats\b/.test(frame.message || "")) {
        $("stats").hidden = true;  // the new token does not grant the stats: only they stop
        break;
      }
      showError("Relay error: " + frame.message);
      break;
    case "refresh_required":
      // Ask for a new token; the connection (and the position) stay until the deadline.
      state.refreshPending = true;
      $("token-form").hidden = false;
      showError("The token expires soon: enter a new one to stay connected.");
      break;
    case "refreshed":
      state.refreshPending = false;
      showError("");
      break;
  }
}

// The channel's newest stored tweets; the stream then resumes from the newest of them,
// so nothing is missing between the two and nothing comes twice. They are shown when the
// relay grants the subscription (showPending), never under "Live" for a refused token.
async function loadHistory() {
  const params = new URLSearchParams({ limit: HISTORY });
  if (state.channel.startsWith("rule:")) params.set("rule", state.channel.slice(5));
  else if (state.channel !== "tweets") return;
  const body = await getJSON("/v1/objects/tweets?" + params);
  const tweets = body.results.slice().reverse();  // oldest first
  state.pending = tweets;
  state.epoch = state.info.epoch;
  state.seq = tweets.length ? tweets[tweets.length - 1].seq : null;
}

function showPending() {
  const tweets = state.pending;
  if (!tweets) return;
  state.pending = null;
  const list = $("tweets");
  list.replaceChildren();
  window.relayDemo.seqs = [];
  for (const tweet of tweets) {
    window.relayDemo.seqs.push(tweet.seq);
    addTweet(list, tweet, tweet.seq, true);
  }
  if (tweets.length) $("seq").textContent = tweets[tweets.length - 1].seq;
  window.relayDemo.history = tweets.map((tweet) => tweet.seq);
}

function switchChannel(channel) {
  state.channel = channel;
  if (state.rewind) state.rewind = rewindOf(state.rewind.time);  // the same moment, anew
  restart({ channel });
}

// Start over from the rewind's moment, or live (state.rewind null): what the page shows
// is dropped, and the page's URL says what it shows.
function restart(change) {
  state.epoch = null;
  state.seq = null;
  state.pending = null;
  window.relayDemo.seqs = [];
  $("tweets").replaceChildren();
  $("seq").textContent = "–";
  showChannel();
  showShowing();
  setURL(change);
  stopClient();
  state.attempt = 0;
  connect();
}

function setURL(change) {
  const url = new URL(location.href);
  for (const [name, value] of Object.entries(change)) {
    if (value) url.searchParams.set(name, value);
    else url.searchParams.delete(name);
  }
  history.replaceState(null, "", url);
}

// A moment as a datetime-local input holds it: local time, to the millisecond.
function localInput(date) {
  const pad = (n, width = 2) => String(n).padStart(width, "0");
  return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate())
    + "T" + pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":"
    + pad(date.getSeconds()) + "." + pad(date.getMilliseconds(), 3);
}
window.relayDemo.localInput = localInput;

// The "From" control: the last 5 min, the last hour, a time, or now (live).
function rewindTo(choice) {
  let rewind = null;
  if (choice === "time") {
    const value = $("rewind-time").value;
    const date = new Date(value);  // no zone: the local time the input shows
    if (!value || isNaN(date)) return showError("Choose the date and time to rewind to.");
    rewind = { time: date.toISOString(), label: date.toLocaleString() };
  } else if (choice) {
    rewind = rewindOf(choice);
  }
  showError("");
  state.rewind = rewind;
  restart({ since_time: rewind ? rewind.time : "" });
}

// What the list shows, in words: live or rewound (from when, how many stored), and how.
function showShowing() {
  const el = $("showing");
  const over = state.transport === "sse" ? "server-sent events" : "WebSocket";
  const rewind = state.rewind;
  el.dataset.mode = rewind ? "rewind" : "live";
  if (!rewind) {
    el.textContent = "Live: the newest stored tweets, then each new one as it comes · over "
      + over;
    return;
  }
  let text = "Rewound to " + rewind.label + ": the tweets the relay received since then";
  if (rewind.recovered !== undefined) {
    text += " (" + rewind.recovered + (rewind.capped ? "+" : "") + " stored)";
  }
  text += ", then live";
  if (rewind.first) {
    text += " · from #" + rewind.first.seq + ", received "
      + new Date(rewind.first.received_at).toLocaleString();
  }
  if (rewind.historyStart) {
    text += " · the relay keeps tweets from #" + rewind.historyStart
      + " on: older ones were deleted";
  }
  if (rewind.recovered > KEEP) text += " · the page keeps the newest " + KEEP;
  el.textContent = text + " · over " + over;
}

// -- rendering -----------------------------------------------------------------------------

function addTweet(list, tweet, seq, newestFirst) {
  const item = document.createElement("li");
  item.className = "tweet";
  item.dataset.seq = seq;
  item.dataset.id = tweet.id;
  item.dataset.rules = (tweet.rules || []).join(" ");

  const head = document.createElement("div");
  head.className = "head";
  const author = tweet.author || {};
  const name = document.createElement("b");
  name.dir = "auto";  // an Arabic or Hebrew name does not reorder what follows it
  name.textContent = author.name || author.username || tweet.author_id || "unknown";
  const handle = document.createElement("span");
  handle.className = "handle";
  handle.dir = "ltr";
  handle.textContent = author.username ? "@" + author.username : "";
  const time = document.createElement("time");
  time.dateTime = tweet.createdAt;
  time.textContent = formatTime(tweet.createdAt);
  head.append(name, handle, time);

  const body = document.createElement("p");
  body.className = "text";
  body.dir = "auto";  // each tweet takes the direction of its own text
  renderText(body, tweet);

  const meta = document.createElement("div");
  meta.className = "meta";
  for (const rule of tweet.rules || []) {
    const tag = document.createElement("span");
    tag.className = "rule";
    tag.textContent = rule;
    meta.append(tag);
  }
  const media = (tweet.media || []).length;
  const metrics = tweet.public_metrics || {};
  const facts = [
    media ? media + " media" : "",
    metrics.like_count ? "♥ " + metrics.like_count : "",
    metrics.retweet_count ? "⟲ " + metrics.retweet_count : "",
    metrics.reply_count ? "↩ " + metrics.reply_count : "",
    "#" + seq,
  ].filter(Boolean);
  const factsEl = document.createElement("span");
  factsEl.className = "facts";
  factsEl.textContent = facts.join(" · ");
  meta.append(factsEl);

  item.append(head, body, meta);
  if (newestFirst) {
    list.prepend(item);
    while (list.children.length > KEEP) list.lastElementChild.remove();
  } else {
    list.append(item);
  }
}

// Text with links, hashtags and mentions, from the API's entities (code-point offsets).
function renderText(container, tweet) {
  const chars = Array.from(tweet.text || "");
  const entities = [];
  const add = (kind, list) => (list || []).forEach((e) => entities.push({ kind, ...e }));
  const ents = tweet.entities || {};
  add("url", ents.urls);
  add("hashtag", ents.hashtags);
  add("mention", ents.mentions);
  add("cashtag", ents.cashtags);
  entities.sort((a, b) => a.start - b.start);
  let at = 0;
  for (const e of entities) {
    if (!(e.start >= at && e.end <= chars.length && e.end > e.start)) continue;
    container.append(chars.slice(at, e.start).join(""));
    const shown = chars.slice(e.start, e.end).join("");
    const link = document.createElement("a");
    // Each entity is isolated with its own direction: in a right-to-left tweet, an
    // inherited direction would draw "#concert" as "concert#" and "@name" as "name@".
    link.dir = "auto";
    link.rel = "noopener noreferrer";
    link.target = "_blank";
    link.className = e.kind;
    if (e.kind === "url") {
      link.href = safeURL(e.expanded_url || e.url);
      link.textContent = e.display_url || shown;
    } else if (e.kind === "mention") {
      link.href = "https://x.com/" + encodeURIComponent(e.username || shown.slice(1));
      link.textContent = shown;
    } else {
      link.href = "https://x.com/search?q=" + encodeURIComponent(shown);
      link.textContent = shown;
    }
    container.append(link);
    at = e.end;
  }
  container.append(chars.slice(at).join(""));
}

function safeURL(url) {
  try {
    const parsed = new URL(url);
    return parsed.protocol === "http:" || parsed.protocol === "https:" ? parsed.href : "#";
  } catch (e) {
    return "#";
  }
}

function formatTime(iso) {
  const date = new Date(iso);
  return isNaN(date) ? "" : date.toLocaleTimeString();
}

// -- rate sparkline ------------------------------------------------------------------------

function tick() {
  const now = performance.now();
  state.arrivals = state.arrivals.filter((t) => now - t < 1000);
  const rate = state.arrivals.length;
  state.history.push(rate);
  state.history.shift();
  $("rate").textContent = rate.toFixed(1);
  const canvas = $("spark");
  const ctx = canvas.getContext("2d");
  const max = Math.max(5, ...state.history);
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.beginPath();
  state.history.forEach((value, i) => {
    const x = (i / (state.history.length - 1)) * canvas.width;
    const y = canvas.height - 2 - (value / max) * (canvas.height - 4);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.strokeStyle = getComputedStyle(document.body).getPropertyValue("--accent");
  ctx.lineWidth = 2;
  ctx.stroke();
}

// -- search --------------------------------------------------------------------------------

// The channel a search covers: the one watched, unless "all channels" is ticked.
function searchScope() {
  return $("search-all").checked || !state.channel.startsWith("rule:") ? "tweets"
    : state.channel;
}

// The channel shown in the headings and the search box, so a search says what it covers.
function showChannel() {
  $("channel-name").textContent = state.channel;
  const scoped = state.channel.startsWith("rule:");
  $("search-all-label").hidden = !scoped;
  $("search").placeholder = scoped && !$("search-all").checked
    ? "Search stored tweets of " + state.channel : "Search all stored tweets";
}

async function runSearch() {
  const { text, offset, scope } = state.search;
  const params = new URLSearchParams({ search: text, limit: PAGE_SIZE, offset });
  if (scope.startsWith("rule:")) params.set("rule", scope.slice(5));
  try {
    const body = await getJSON("/v1/objects/tweets?" + params);
    state.search.count = body.count;
    const list = $("results");
    list.replaceChildren();
    body.results.forEach((tweet) => addTweet(list, tweet, tweet.seq, false));
    $("search-count").textContent = body.count + " found "
      + (scope === "tweets" ? "in all channels" : "in " + scope);
    const pages = Math.max(1, Math.ceil(body.count / PAGE_SIZE));
    $("page").textContent = "page " + (offset / PAGE_SIZE + 1) + " of " + pages;
    $("prev").disabled = offset === 0;
    $("next").disabled = offset + PAGE_SIZE >= body.count;
    $("search-panel").hidden = false;
    showError("");
  } catch (error) {
    showError("Search failed: " + error.message);
  }
}

// -- wiring --------------------------------------------------------------------------------

$("channel").addEventListener("change", (event) => switchChannel(event.target.value));
$("rewind").addEventListener("change", (event) => {
  $("rewind-time").hidden = event.target.value !== "time";
});
$("rewind-form").addEventListener("submit", (event) => {
  event.preventDefault();
  rewindTo($("rewind").value);
});
$("transport").addEventListener("change", (event) => {
  // The same position over the other transport: nothing missed, nothing twice.
  state.transport = event.target.value;
  setURL({ transport: state.transport === "sse" ? "sse" : "" });
  showShowing();
  stopClient();
  state.attempt = 0;
  connect();
});
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("search").value.trim();
  if (!text) return;
  state.search = { text, offset: 0, count: 0, scope: searchScope() };
  runSearch();
});
$("search-all").addEventListener("change", () => {
  showChannel();
  // A search on screen follows the choice at once.
  if (state.search.text && !$("search-panel").hidden) {
    state.search = { ...state.search, offset: 0, scope: searchScope() };
    runSearch();
  }
});
$("prev").addEventListener("click", () => {
  state.search.offset = Math.max(0, state.search.offset - PAGE_SIZE);
  runSearch();
});
$("next").addEventListener("click", () => {
  state.search.offset += PAGE_SIZE;
  runSearch();
});
$("search-close").addEventListener("click", () => { $("search-panel").hidden = true; });
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value.trim();
  sessionStorage.setItem("relay-token", state.token);
  showError("");
  if (state.client && state.client.isOpen()) {
    // Refresh on the open connection: the subscriptions and the position stay.
    state.client.setToken(state.token);
    return;
  }
  stopClient();
  // Reconnect with the new token from where the page stopped (same channel, same seq).
  state.attempt = 0;
  connect();
});

$("transport").value = state.transport;
if (state.rewind) {
  const preset = Boolean(REWINDS[state.rewind.time]);
  $("rewind").value = preset ? state.rewind.time : "time";
  $("rewind-time").hidden = preset;
  if (!preset && !isNaN(new Date(state.rewind.time))) {
    $("rewind-time").value = localInput(new Date(state.rewind.time));
  }
}
showChannel();
showShowing();
setInterval(tick, 1000);
// New rules show up as tweets match them: refresh the channel list now and then.
setInterval(() => { if (state.client) loadInfo().catch(() => {}); }, 15000);
connect();
