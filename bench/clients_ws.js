// Node WebSocket clients for the latency part: `ws` clients reading a steady stream, where
// the Python generator (bench/loadgen.py) pays one read per frame per connection and falls
// behind past about 100 subscribers on 2 cores.
// node clients_ws.js SPEC_JSON; SPEC: {port, path, clients, stuck, subscribe, expect,
// timeout, latencies (a file: every frame's latency and its stamp, float64 seconds)}.
// Prints "ready N" once every client has its subscribed reply, then, once each reading
// client has `expect` tweet frames (or at the timeout), one line of JSON: frames,
// complete, gaps, closed, first, last (unix seconds). Stuck clients subscribe on a raw
// socket and never read.
"use strict";
const fs = require("fs");
const net = require("net");
const { WebSocket } = require("ws");

const spec = JSON.parse(process.argv[2]);
const TWEET = Buffer.from('{"type":"tweet"');
const SEQ = Buffer.from('"seq":');
const STAMP = Buffer.from('"received_at":"');
const now = () => (performance.timeOrigin + performance.now()) / 1000;
const stamps = new Map();
let latencies = new Float64Array(1 << 16);
let frames = 0;
let complete = 0;
let gaps = 0;
let closed = 0;
let first = 0;
let last = 0;
let ready = 0;
let reported = false;
let cpuAtReady = 0;

function isReady() {
  ready += 1;
  if (ready === spec.clients + spec.stuck) {
    const used = process.cpuUsage();
    cpuAtReady = (used.user + used.system) / 1e6;
    console.log(`ready ${ready}`);
  }
}

function record(value, stamp) {
  // (latency, stamp) pairs: the bench leaves out the frames of the run's first second
  if (2 * frames + 1 >= latencies.length) {
    const grown = new Float64Array(latencies.length * 2);
    grown.set(latencies);
    latencies = grown;
  }
  latencies[2 * frames] = value;
  latencies[2 * frames + 1] = stamp;
}

function stampOf(data) {
  const at = data.indexOf(STAMP);
  if (at < 0) return 0;
  const start = at + STAMP.length;
  const text = data.toString("latin1", start, data.indexOf(34, start));
  let value = stamps.get(text);
  if (value === undefined) {
    value = Date.parse(text) / 1000;
    stamps.set(text, value);
  }
  return value;
}

function report() {
  if (reported) return;
  reported = true;
  fs.writeFileSync(spec.latencies, Buffer.from(latencies.buffer, 0, frames * 16));
  const used = process.cpuUsage();
  const cpu = (used.user + used.system) / 1e6 - cpuAtReady;
  const result = { frames, complete, gaps, closed, first, last, cpu };
  process.stdout.write(JSON.stringify(result) + "\n", () => process.exit(0));
}

function reader() {
  const url = `ws://127.0.0.1:${spec.port}${spec.path}`;
  const ws = new WebSocket(url, { perMessageDeflate: false });
  let lastSeq = -1;
  let count = 0;
  let answered = false;
  ws.on("open", () => ws.send(spec.subscribe));
  ws.on("message", (data) => {
    if (!answered) {
      answered = true;
      isReady();
      return;
    }
    if (count >= spec.expect || data.indexOf(TWEET) !== 0) return; // its share is in
    const at = data.indexOf(SEQ) + SEQ.length;
    let seq = 0;
    for (let i = at; data[i] >= 48 && data[i] <= 57; i++) seq = seq * 10 + data[i] - 48;
    const t = now();
    if (lastSeq >= 0 && seq !== lastSeq + 1) gaps += 1;
    lastSeq = seq;
    const stamp = stampOf(data);
    record(t - stamp, stamp);
    frames += 1;
    if (!first) first = t;
    last = t;
    count += 1;
    if (count === spec.expect) {
      complete += 1;
      if (complete === spec.clients) report();
    }
  });
  ws.on("close", () => {
    closed += 1;
  });
  ws.on("error", () => {});
}

function stuck() {
  // The upgrade and a masked subscribe frame (zero mask), then nothing is ever read.
  const socket = net.connect(spec.port, "127.0.0.1", () => {
    const payload = Buffer.from(spec.subscribe);
    const head =
      payload.length < 126
        ? Buffer.from([0x81, 0x80 | payload.length])
        : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 255]);
    socket.write(
      `GET ${spec.path} HTTP/1.1\r\nHost: 127.0.0.1:${spec.port}\r\nUpgrade: websocket\r\n` +
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
        "Sec-WebSocket-Version: 13\r\n\r\n"
    );
    socket.write(Buffer.concat([head, Buffer.alloc(4), payload]));
  });
  socket.once("data", () => {
    socket.pause(); // the reply came: subscribed, and from now on never read
    isReady();
  });
  socket.on("error", () => {});
}

for (let n = 0; n < spec.stuck; n++) stuck();
for (let n = 0; n < spec.clients; n++) reader();
setTimeout(report, spec.timeout * 1000);
process.on("SIGTERM", () => process.exit(0));
