"""Idle part: resident memory a connection for subscribers that never get a frame."""

from __future__ import annotations

import time
from pathlib import Path

from bench.procs import (
    Generator,
    Server,
    node_peer,
    python_peer,
    relay_serve,
)
from bench.table import Row


def idle(folder: Path, clients: int) -> list[Row]:
    """5 part: ``clients`` idle subscribers, each with a filter that never matches."""
    part = folder / "idle"
    part.mkdir()
    subscribe = b'{"op":"subscribe","channel":"tweets","filters":{"lang":"xx"}}'
    results: list[str] = []
    frames = part / "none.jsonl"
    frames.write_bytes(b"")

    def measure(server: Server) -> str:
        gen = Generator()
        try:
            time.sleep(0.5)
            before = server.rss_kb()
            ready = gen.connect(server.port, clients, subscribe, 0, timeout=60)
            gen.send("hold")
            time.sleep(1.0)  # whatever the server does after the last subscribe settles
            after = server.rss_kb()
            gen.release()
            gen.results(30)
        finally:
            gen.close()
        if ready < clients:
            return f"only {ready} connected"
        return (
            f"{(after - before) / clients:.1f} KB each ({before / 1024:.0f} -> "
            f"{after / 1024:.0f} MB)"
        )

    serve = relay_serve(part, part / "idle.db", "")
    try:
        results.append(measure(serve))
    except RuntimeError as exc:
        results.append(f"failed: {exc}"[:80])
    finally:
        serve.stop()
    for start in (python_peer, node_peer):
        try:
            peer = start(part, frames, "idle")
        except RuntimeError as exc:
            results.append(f"failed: {exc}"[:80])
            continue
        if isinstance(peer, str):
            results.append(peer)
            continue
        try:
            results.append(measure(peer))
        except RuntimeError as exc:
            results.append(f"failed: {exc}"[:80])
        finally:
            peer.stop()
    return [
        Row(
            "idle",
            f"{clients:,} idle subscribers (filter lang=xx never matches), no "
            "compression: server resident memory (VmRSS) per connection",
            results[0],
            results[1],
            results[2],
            "target <= 10 KB at 10,000",
        ),
    ]
