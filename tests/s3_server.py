"""A real S3-compatible server for tests: moto's server mode on a free port of 127.0.0.1.

A pytest plugin (``pytest_plugins`` in conftest.py). Fixtures:

- ``s3_server``: a started :class:`S3Server` with one bucket of its own (``bucket``);
  ``url(prefix)`` (``s3://bucket/prefix``), ``environ`` (the ``AWS_*`` variables a relay
  needs to reach it), ``stop()`` and ``start()`` (the same port, every object kept: the
  server is down for a while, not wiped), ``keys(prefix)`` and ``get(key)`` (a boto3 client looking
  inside), ``port``;
- ``make_s3_server(bucket=None, start=True)``: more of them; each is stopped at the end.

moto runs in this test process (its HTTP server in a thread), so its objects outlive a
stop and start; relays under test reach it over loopback HTTP like any S3 endpoint.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

REGION = "us-east-1"
ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class S3Server:
    def __init__(self, bucket: str | None = None) -> None:
        from moto.server import ThreadedMotoServer

        self._server_type = ThreadedMotoServer
        # moto keeps buckets per process, across tests: each server gets its own bucket.
        self.bucket = bucket or f"archive-{uuid.uuid4().hex[:12]}"
        self.port = _free_port()
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environ(self) -> dict[str, str]:
        """What a relay needs in its environment to reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def url(self, prefix: str = "tweets") -> str:
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"

    def start(self) -> None:
        """Start on ``port`` (the same one after a stop); the bucket is made once."""
        assert self._server is None, "already running"
        self._server = self._server_type(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        client = self.client()
        existing = [b["Name"] for b in client.list_buckets().get("Buckets", [])]
        if self.bucket not in existing:
            client.create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        """Down for a while: connections are refused until :meth:`start`; objects kept."""
        if self._server is None:
            return
        self._server.stop()
        self._server = None

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` in the bucket, sorted."""
        found: list[str] = []
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            found.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(found)

    def get(self, key: str) -> bytes:
        body: bytes = self.client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


@pytest.fixture
def make_s3_server() -> Iterator[Callable[..., S3Server]]:
    pytest.importorskip("moto.server", reason="needs moto[server]: pip install -e '.[dev]'")
    started: list[S3Server] = []

    def make(bucket: str | None = None, *, start: bool = True) -> S3Server:
        server = S3Server(bucket)
        started.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def s3_server(make_s3_server: Callable[..., S3Server]) -> S3Server:
    return make_s3_server()
