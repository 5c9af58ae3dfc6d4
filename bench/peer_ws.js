// The Node peer: the `ws` library sending the relay's own frames (see bench/peer.py).
// node peer_ws.js FRAMES MODE; MODE is broadcast (send all on "go" from stdin),
// latency ("rate R" from stdin: the frames at R a second, each stamped with its send time
// where the relay puts its receive time), catchup (all frames to each subscriber) or
// idle. Prints "port N".
"use strict";
const fs = require("fs");
const readline = require("readline");
const { WebSocketServer } = require("ws");

const [framesPath, mode] = process.argv.slice(2);
const frames = fs
  .readFileSync(framesPath)
  .toString("utf8")
  .split("\n")
  .filter((line) => line.length > 0)
  .map((line) => Buffer.from(line, "utf8"));
const subscribed = Buffer.from(
  '{"type":"subscribed","channel":"tweets","epoch":"peer","seq":0,"recovered":0}'
);
const subscribers = new Set();
const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, perMessageDeflate: false });

wss.on("connection", (ws) => {
  ws.on("message", (data) => {
    if (!data.toString().includes('"subscribe"')) return;
    ws.send(subscribed, { binary: false });
    if (mode === "catchup") {
      for (const frame of frames) ws.send(frame, { binary: false });
    } else {
      subscribers.add(ws);
    }
  });
  ws.on("close", () => subscribers.delete(ws));
});

wss.on("listening", () => console.log(`peer: port ${wss.address().port}`));

function burst(n) {
  // One frame to everyone, then let the event loop write before the next one.
  if (n >= frames.length) return;
  for (const ws of subscribers) ws.send(frames[n], { binary: false });
  setImmediate(() => burst(n + 1));
}

const STAMP = Buffer.from('"received_at":"');

function stamped(frame) {
  // The same format and length as the relay's: 2026-01-02T03:04:05.678Z.
  const at = frame.indexOf(STAMP);
  if (at < 0) return frame;
  const copy = Buffer.from(frame);
  copy.write(new Date().toISOString(), at + STAMP.length, "latin1");
  return copy;
}

function paced(rate) {
  // Each frame at its time, to everyone, as a server of a live stream would.
  const started = performance.now();
  let n = 0;
  const tick = () => {
    const due = Math.min(frames.length, Math.floor(((performance.now() - started) * rate) / 1000) + 1);
    for (; n < due; n++) {
      const frame = stamped(frames[n]);
      for (const ws of subscribers) ws.send(frame, { binary: false });
    }
    if (n < frames.length) setTimeout(tick, Math.max(0, ((n * 1000) / rate) - (performance.now() - started)));
  };
  tick();
}

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const words = line.trim().split(/\s+/);
  if (words[0] === "go") burst(0);
  if (words[0] === "rate") paced(Number(words[1]));
});
process.on("SIGTERM", () => process.exit(0));
