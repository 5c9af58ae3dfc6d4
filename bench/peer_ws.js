// The Node peer: the `ws` library sending the relay's own frames (see bench/peer.py).
// node peer_ws.js FRAMES MODE; MODE is broadcast (send all on "go" from stdin),
// catchup (all frames to each subscriber) or idle. Prints "port N".
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

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "go") burst(0);
});
process.on("SIGTERM", () => process.exit(0));
