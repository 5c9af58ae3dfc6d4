"""A parser process (``python -m relay.ingest.parse_worker``): see :mod:`relay.ingest.parse_pool`.

Reads batches of lines on stdin and writes the parsed batches on stdout, until its
input ends. Nothing else may write to stdout: logging and stray prints go to stderr.
"""

from __future__ import annotations

import contextlib
import gc
import sys

from relay.ingest.parse_pool import serve

PIPE_BUFFER = 2**16
"""Bytes the answer writer buffers: an answer larger goes to the pipe in one write."""


def main() -> None:
    # Parsing makes many short-lived dicts without cycles: collections at the default
    # threshold (700 allocations) would run every few lines (as in relay.app.launch.tune_gc).
    gc.set_threshold(50_000, 20, 20)
    gc.freeze()
    reader = sys.stdin.buffer
    # A buffered writer of its own, whatever the environment says: with
    # PYTHONUNBUFFERED=1 (common in container images) sys.stdout.buffer is the raw file,
    # whose write may take only part of an answer when a signal stops the process while
    # the pipe is full (Ctrl-Z and fg, a profiler attaching); the rest would be lost and
    # the relay would wait for it forever. A buffered writer writes what is left.
    writer = open(sys.stdout.fileno(), "wb", buffering=PIPE_BUFFER, closefd=False)  # noqa: SIM115
    sys.stdout = sys.stderr  # the pipe carries answers only
    # The relay went away (or Ctrl-C reached its whole process group): nothing to answer.
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(reader, writer)


if __name__ == "__main__":
    main()
