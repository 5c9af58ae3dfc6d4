"""A keyword alert bot: reads a tweet-relay stream, alerts on tweets holding a keyword,
and resumes where it stopped after a restart.

It keeps its position (the store's epoch and the last seq it handled) in a small JSON
file, written after every tweet, and subscribes with ``since`` from it: the relay sends
what it missed from its store, then live tweets, with no gap and no repeat. When the relay
answers ``reset`` (its store was replaced) the bot starts over from the new position.

Run it against a relay:  python alert_bot.py ws://localhost:8080/v1/stream cat rocket
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect


@dataclass(frozen=True)
class Alert:
    seq: int
    tweet_id: str
    keyword: str
    text: str


class AlertBot:
    def __init__(
        self,
        ws_url: str,
        keywords: Iterable[str],
        state_file: str | Path,
        *,
        token: str | None = None,
        start_at: tuple[str, int] | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.ws_url = ws_url
        self.keywords = [k.lower() for k in keywords]
        self.state_file = Path(state_file)
        self.token = token
        self.timeout = timeout
        # Where to resume: the saved position, else ``start_at`` (epoch, seq), else live.
        self.position: dict[str, Any] | None = (
            json.loads(self.state_file.read_text())
            if self.state_file.exists()
            else {"epoch": start_at[0], "seq": start_at[1]}
            if start_at is not None
            else None
        )
        self.on_alert = on_alert
        self.alerts: list[Alert] = []
        self.resets = 0

    def check(self, tweet: dict[str, Any]) -> Alert | None:
        text = str(tweet.get("text", ""))
        for keyword in self.keywords:
            if keyword in text.lower():
                return Alert(tweet["seq"], tweet["id"], keyword, text)
        return None

    def run(self, *, until_seq: int | None = None) -> list[Alert]:
        """Read the stream until the tweet ``until_seq`` (forever without it); the alerts
        raised in this run."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        start = len(self.alerts)
        with connect(self.ws_url, additional_headers=headers, open_timeout=self.timeout) as ws:
            self._subscribe(ws)
            subscribed = False  # a reset comes before the reply: the position is settled then
            while not (subscribed and until_seq is not None and self._seq() >= until_seq):
                frame = json.loads(ws.recv(timeout=self.timeout))
                if frame["type"] == "reset":
                    self.resets += 1
                    self._save(frame["epoch"], frame["seq"])
                elif frame["type"] == "subscribed":
                    subscribed = True
                    if self.position is None:
                        self._save(frame["epoch"], frame["seq"])
                elif frame["type"] == "tweet":
                    alert = self.check(frame["tweet"])
                    if alert is not None:
                        self.alerts.append(alert)
                        if self.on_alert is not None:
                            self.on_alert(alert)
                    self._save(self._epoch(), frame["seq"])
                elif frame["type"] == "error":
                    raise RuntimeError(f"the relay refused: {frame['message']}")
        return self.alerts[start:]

    def _subscribe(self, ws: ClientConnection) -> None:
        op: dict[str, Any] = {"op": "subscribe", "channel": "tweets"}
        if self.position is not None:
            op["since"] = self.position
        ws.send(json.dumps(op))

    def _seq(self) -> int:
        return int(self.position["seq"]) if self.position else 0

    def _epoch(self) -> str:
        return str(self.position["epoch"]) if self.position else ""

    def _save(self, epoch: str, seq: int) -> None:
        self.position = {"epoch": epoch, "seq": seq}
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.position))
        temporary.replace(self.state_file)  # a crash never leaves half a position


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ws_url")
    parser.add_argument("keywords", nargs="+")
    parser.add_argument("--state", default="alert-bot.json")
    parser.add_argument("--token")
    args = parser.parse_args()

    def show(alert: Alert) -> None:
        print(f"[{alert.keyword}] {alert.tweet_id}: {alert.text}", flush=True)

    bot = AlertBot(args.ws_url, args.keywords, args.state, token=args.token, on_alert=show)
    bot.timeout = 3600.0  # a quiet stream is no error for a bot that runs for good
    bot.run()


if __name__ == "__main__":
    main()
