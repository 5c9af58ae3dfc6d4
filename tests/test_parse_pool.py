"""Parsing in a parser process, and the stored object built from the parser's bytes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from relay.core.times import time_from_unix
from relay.core.tweet_rows import TweetRows
from relay.core.tweets import parse_line, stored_body, stored_object
from relay.errors import MalformedPayload
from relay.ingest.chunk import decode_chunk, encode_chunk, encode_lines
from relay.ingest.parse_pool import HEADER, PROCESS_MIN_LINES, ParsedChunk, ParserPool, parse_chunk
from relay.sources.synth import write_stream
from relay.testing import RelayServer
from tests.support import UNIT, counted, stream_line

RECEIVED = "2026-01-02T03:04:05.000Z"

LINES = [
    stream_line(1, "plain", tags=("cats",)),
    orjson.dumps({"data": {"id": "2", "text": "no time", "author_id": "u1"}}),
    # Store fields inside the object as sent: the store's own values must win, as before.
    orjson.dumps({"data": {"id": "3", "text": "t", "seq": 99, "createdAt": "x", "objectType": 1}}),
    orjson.dumps({"data": {"id": 4, "text": "numeric id, odd time", "created_at": "2026-01-02"}}),
    orjson.dumps({"data": {"id": "5", "text": "ünï ☃ \u2028", "lang": "de"}}),
]


@pytest.mark.parametrize("line", LINES)
def test_the_stored_body_is_the_stored_object_byte_for_byte(line: bytes) -> None:
    (tweet,) = parse_line(line).tweets
    for seq in (1, 12345678901):
        expected = orjson.dumps(stored_object(tweet.object, seq=seq, received_at=RECEIVED))
        assert stored_body(tweet, seq=seq, received_at=RECEIVED) == expected
        # The same after the hop from a parser process, which leaves the dict behind.
        moved = pickle.loads(pickle.dumps(tweet))
        assert moved.decoded is None
        assert moved == tweet
        assert stored_body(moved, seq=seq, received_at=RECEIVED) == expected


def test_a_tweet_the_encoder_refuses_keeps_its_object_across_the_hop() -> None:
    deep = b"[" * 300 + b"1" + b"]" * 300
    (tweet,) = parse_line(b'{"data": {"id": "1", "text": "a", "deep": ' + deep + b"}}").tweets
    moved = pickle.loads(pickle.dumps(tweet))
    assert moved.object == tweet.object
    with pytest.raises(TypeError):  # the store's writer leaves it out, saying why
        stored_body(moved, seq=1, received_at=RECEIVED)


def _batch(count: int) -> list[bytes]:
    lines = [stream_line(n, f"tweet {n}", author=f"u{n % 3}") for n in range(1, count + 1)]
    lines[5] = b"{not json"
    lines[6] = b""  # a keep-alive
    lines[7] = b"[1, 2]"
    return lines


def _summary(chunk: ParsedChunk) -> tuple[object, ...]:
    return (
        [tweet.id for tweet in chunk.tweets],
        [stored_body(tweet, seq=1, received_at=RECEIVED) for tweet in chunk.tweets],
        chunk.users,
        chunk.payloads,
        chunk.keepalives,
        chunk.malformed,
    )


async def _started(pool: ParserPool, lines: int) -> None:
    assert not pool.takes(lines)  # the first large batch starts the workers, parses here
    await asyncio.wait_for(pool.started(), 4 * UNIT)
    assert pool.takes(lines)


def test_a_parser_process_gives_what_parsing_here_gives_in_order() -> None:
    batches = [_batch(PROCESS_MIN_LINES + n) for n in range(3)]

    async def run() -> list[ParsedChunk]:
        pool = ParserPool(2)
        assert not pool.takes(PROCESS_MIN_LINES - 1)  # small batches never leave
        try:
            await _started(pool, PROCESS_MIN_LINES)
            return list(await asyncio.gather(*[pool.parse(batch) for batch in batches]))
        finally:
            await pool.close()

    chunks = asyncio.run(run())
    assert [_summary(chunk) for chunk in chunks] == [
        _summary(parse_chunk(batch)) for batch in batches
    ]
    first = chunks[0]
    assert [index for index, _, _ in first.malformed] == [5, 7]
    assert (first.keepalives, len(first.users)) == (1, 3)  # one user object per id


def test_a_dead_parser_process_costs_nothing_but_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = _batch(PROCESS_MIN_LINES)

    async def run() -> ParsedChunk:
        pool = ParserPool(1)
        try:
            await _started(pool, len(batch))
            worker = pool._workers[0]
            worker.process.kill()
            await worker.process.wait()
            chunk = await pool.parse(batch)  # parsed here instead
            assert not pool.takes(len(batch))
            return chunk
        finally:
            await pool.close()

    chunk = asyncio.run(run())
    assert _summary(chunk) == _summary(parse_chunk(batch))
    assert "parser processes failed" in caplog.text


def test_a_replay_at_full_speed_through_a_parser_process_is_stored_in_order(
    tmp_path: Path,
    start_relay: Callable[..., RelayServer],
) -> None:
    path = tmp_path / "stream.jsonl"
    write_stream(path, 2000, seed=5)
    lines = path.read_bytes().splitlines()
    lines.insert(700, b"{broken")
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected = [t.id for line in lines if line != b"{broken" for t in parse_line(line).tweets]

    relay = start_relay(replay=path, speed="max", parse_processes=1, batch_size=500)
    relay.wait_seq(len(expected), timeout=40 * UNIT)
    stored = relay.all_tweets()
    # Every tweet once, seqs dense and in the order of the file.
    assert [tweet["id"] for tweet in stored] == expected
    assert [tweet["seq"] for tweet in stored] == list(range(1, len(expected) + 1))
    assert counted(relay.relay.metrics.malformed, reason="not_json") == 1
    assert relay.relay.ingest is not None
    assert relay.relay.ingest.parser._workers, "no batch went to a parser process"


def test_a_parser_process_killed_mid_batch_leaves_no_never_retrieved_future(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # More than the pipe and the transport hold: the batch waits in our write buffer.
    batch = [stream_line(n, "x" * 1000) for n in range(1, 4001)]
    unhandled: list[str] = []
    # Lines as text, as a relay's log writes them: a kept record would keep alive the
    # failure it carries, and with it what asyncio reports once it is collected.
    warnings: list[str] = []
    pool_log = logging.getLogger("relay.ingest.parse_pool")
    text = logging.Handler()
    text.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(pool_log, "propagate", False)
    monkeypatch.setattr(pool_log, "handlers", [text])

    async def run() -> ParsedChunk:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: unhandled.append(context["message"]))
        pool = ParserPool(1)
        try:
            await _started(pool, len(batch))
            process = pool._workers[0].process
            os.kill(process.pid, signal.SIGSTOP)  # reads nothing more: the pipe fills
            parse = asyncio.ensure_future(pool.parse(batch))
            await asyncio.sleep(0)  # one step: the batch is written as far as it goes
            assert not parse.done()
            process.kill()  # mid-batch, its answer owed
            del process  # what it holds must be free to go, as in a relay
            chunk = await asyncio.wait_for(parse, 4 * UNIT)  # parsed here instead
        finally:
            await pool.close()
        gc.collect()  # an unretrieved future says so when it is collected
        await asyncio.sleep(0)
        return chunk

    chunk = asyncio.run(run())
    assert _summary(chunk) == _summary(parse_chunk(batch))
    assert unhandled == []
    assert [line for line in warnings if "parser processes failed" in line] == warnings != []


@pytest.mark.parametrize("line", LINES)
def test_the_stored_body_is_the_same_after_the_hop_as_columns(line: bytes) -> None:
    # What the writer builds from a batch's columns, after the parser process's wire form,
    # is the stored object byte for byte, whatever the object holds.
    (tweet,) = parse_line(line).tweets
    moved = decode_chunk(encode_chunk(parse_chunk([line, line])))
    assert [back.id for back in moved.tweets] == [tweet.id, tweet.id]
    back = moved.tweets[1]
    assert back == dataclasses.replace(tweet, author=None)  # nothing past the parser reads it
    assert back.channels == tweet.channels
    assert moved.tweets.rules[0] is moved.tweets.rules[1]  # one set of rules, derived once
    assert (
        moved.tweets.rules[0].keys_json
        == orjson.dumps([rule.tag or rule.id for rule in tweet.rules]).decode()
    )
    for seq in (1, 12345678901):
        expected = orjson.dumps(stored_object(tweet.object, seq=seq, received_at=RECEIVED))
        assert stored_body(back, seq=seq, received_at=RECEIVED) == expected


def test_a_chunk_crosses_the_wire_whole() -> None:
    lines = [
        *_batch(40),
        b'{"data": [{"id": "x1", "text": "bad id"}, {"id": "77", "text": "good"}]}',
        b'{"errors": [{"title": "operational-disconnect"}]}',
    ]
    chunk = parse_chunk(lines)
    moved = decode_chunk(encode_chunk(chunk))
    assert _summary(moved) == _summary(chunk)
    assert moved.tweet_lines == chunk.tweet_lines and moved.user_lines == chunk.user_lines
    assert moved.skipped == chunk.skipped and [s.reason for s in moved.skipped] == ["no_id"]
    assert moved.api_errors == chunk.api_errors == [{"title": "operational-disconnect"}]
    assert [(i, why) for i, why, _ in moved.malformed] == [(5, "not_json"), (7, "not_object")]
    expected = []
    for line in lines:
        with contextlib.suppress(MalformedPayload):
            expected += [dataclasses.replace(t, author=None) for t in parse_line(line).tweets]
    assert len(expected) == len(moved.tweets) > 30
    assert list(moved.tweets) == expected  # nothing past the parser reads the author object


def test_a_chunk_the_parser_could_not_send_is_refused_for_parsing_here() -> None:
    with pytest.raises(ValueError, match="could not send"):
        decode_chunk(b"")


def test_tweet_rows_slice_and_extend_keep_every_column_in_step() -> None:
    rows = parse_chunk(_batch(20)).tweets
    head, tail = rows[:7], rows[7:]
    assert len(head) == 7 and len(tail) == len(rows) - 7
    head.extend(tail)
    assert list(head) == list(rows)
    assert TweetRows.of(list(rows)).ids == rows.ids
    assert TweetRows.of(rows) is rows


def test_a_parser_process_stopped_while_its_answer_fills_the_pipe_still_sends_it_whole() -> None:
    # Ctrl-Z and fg (or a profiler attaching) stops the worker; a write blocked on a full
    # pipe then returns having written part. Under PYTHONUNBUFFERED=1 (common in container
    # images) the worker's stdout was the raw file, the rest of the answer was lost, and
    # the relay waited for it forever.
    batch = [stream_line(n, "x" * 1000) for n in range(1, 2001)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(Path.cwd())}
    answer: list[bytes] = []
    with subprocess.Popen(
        [sys.executable, "-m", "relay.ingest.parse_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    ) as worker:
        assert worker.stdin is not None and worker.stdout is not None
        try:
            assert worker.stdout.read(HEADER.size) == HEADER.pack(0)  # ready
            request = encode_lines(batch, False)
            worker.stdin.write(HEADER.pack(len(request)) + request)
            worker.stdin.flush()
            # Nobody reads its answer yet: it fills the pipe and the worker blocks writing.
            _wait_for(lambda: "pipe_write" in _wchan(worker.pid), "the worker blocked writing")
            os.kill(worker.pid, signal.SIGSTOP)
            _wait_for(lambda: _state(worker.pid) == "T", "the worker stopped")
            os.kill(worker.pid, signal.SIGCONT)

            def read_answer() -> None:
                assert worker.stdout is not None
                (size,) = HEADER.unpack(worker.stdout.read(HEADER.size))
                answer.append(worker.stdout.read(size))

            reader = threading.Thread(target=read_answer, daemon=True)
            reader.start()
            reader.join(10 * UNIT)
            assert answer, "the answer never came whole: the relay would wait forever"
        finally:
            worker.kill()  # ends a reader still waiting too
    assert _summary(decode_chunk(answer[0])) == _summary(parse_chunk(batch))


def _wchan(pid: int) -> str:
    return Path(f"/proc/{pid}/wchan").read_text()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10 * UNIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


def test_receive_times_formatted_in_the_parser_are_the_stores_text_across_the_wire() -> None:
    lines = [stream_line(1, "a"), b"{broken", stream_line(2, "b", tags=("cats",))]
    times = [1767323045.0625, 1767323046.0, -5.0e20]  # the last out of range: pinned
    chunk = decode_chunk(encode_chunk(parse_chunk(lines, False, times)))
    assert chunk.tweet_times == [time_from_unix(times[i]) for i in chunk.tweet_lines]
    assert chunk.user_times == [time_from_unix(times[i]) for i in chunk.user_lines] != []
    assert chunk.tweet_times[0] == "2026-01-02T03:04:05.062Z"
    assert len(chunk.tweet_times) == 2
    assert parse_chunk(lines).tweet_times == []  # no times given: the store formats them
