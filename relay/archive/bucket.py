"""Where an archive's objects go: its URL, and put, get, list and delete on it.

``s3://bucket/prefix`` is S3 or an S3-compatible service (Cloudflare R2, MinIO): the
endpoint, region and credentials come from the standard ``AWS_*`` variables, read by
obstore itself (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``). ``file:///path`` is a
local folder through the same calls (obstore writes a temporary file there and renames
it, so a reader never sees half an object).

obstore (the Rust ``object_store`` crate's Python binding) is async, signs requests
itself and speaks S3, GCS, Azure and local folders through one API: no hand-written
signing, no thread pool around a sync client. It is an optional extra
(``pip install 'tweet-relay[archive]'``).

Every failure comes out as one :class:`~relay.errors.ArchiveError` line:
:class:`~relay.errors.ArchiveUnreachable` when the endpoint did not answer (wait and
retry), :class:`~relay.errors.ConfigError` when the bucket is missing or the credentials
are refused (nothing retrying will fix).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from relay.core.archive import ArchiveUrl, parse_url
from relay.errors import ArchiveError, ArchiveUnreachable, ConfigError
from relay.obs.waits import Outage

__all__ = ["ArchiveUrl", "Bucket", "explain", "parse_url", "retried", "wait_until_writable"]

if TYPE_CHECKING:
    from obstore.store import LocalStore, S3Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

INSTALL = "pip install 'tweet-relay[archive]'"
WRITE_CHECK_KEY = ".relay-write-check"
"""The small object the start writes (and deletes) to prove the credentials may write:
write-only credentials cannot list, so listing proves nothing."""
CONNECT_TIMEOUT = "5s"
REQUEST_TIMEOUT = "60s"
RETRIES = 2
"""obstore's own quick retries of one request; past them the writer's backoff takes over."""
FIRST_WAIT = 1.0
LONGEST_WAIT = 30.0
"""The backoff of a wait for an endpoint that does not answer: 1 s doubling to 30 s."""


def _obstore() -> Any:
    try:
        import obstore
    except ImportError:
        raise ConfigError(f"an archive needs obstore: {INSTALL}") from None
    return obstore


class Bucket:
    """An archive's objects, keys relative to the URL's prefix (or folder)."""

    def __init__(self, url: ArchiveUrl, environ: Mapping[str, str] | None = None) -> None:
        self.url = url
        self._obs = _obstore()
        self._store = self._open(url, os.environ if environ is None else environ)

    def _open(self, url: ArchiveUrl, environ: Mapping[str, str]) -> S3Store | LocalStore:
        from obstore.store import LocalStore, S3Store

        if url.path is not None:
            try:
                url.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"archive folder {url.path}: {exc.strerror or exc}") from None
            return LocalStore(url.path)
        # obstore reads AWS_* from the process environment itself; a mapping passed in
        # (tests, Settings.load(environ=...)) is given as explicit configuration.
        config = {
            key.lower()[len("aws_") :]: value
            for key, value in environ.items()
            if key.startswith("AWS_") and value
        }
        config.pop("endpoint_url", None)
        endpoint = environ.get("AWS_ENDPOINT_URL") or environ.get("AWS_ENDPOINT") or ""
        if endpoint:
            config["endpoint"] = endpoint
        if "region" not in config and environ.get("AWS_DEFAULT_REGION"):
            config["region"] = environ["AWS_DEFAULT_REGION"]
        config.pop("default_region", None)
        known = set(_S3_KEYS)
        config = {key: value for key, value in config.items() if key in known}
        client_options: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "timeout": REQUEST_TIMEOUT,
            # MinIO or moto on a private network often speaks plain HTTP.
            "allow_http": endpoint.startswith("http://"),
        }
        retry = {
            "max_retries": RETRIES,
            "retry_timeout": timedelta(seconds=10),
            "backoff": {
                "init_backoff": timedelta(milliseconds=100),
                "max_backoff": timedelta(seconds=2),
                "base": 2,
            },
        }
        try:
            return S3Store(
                url.bucket,
                prefix=url.prefix or None,
                config=config,  # type: ignore[arg-type]
                client_options=client_options,  # type: ignore[arg-type]
                retry_config=retry,  # type: ignore[arg-type]
            )
        except Exception as exc:  # obstore's own configuration errors
            raise ConfigError(f"archive {url}: {_first_line(exc)}") from None

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``, replacing what is there (atomic for a reader)."""
        try:
            await self._obs.put_async(self._store, key, data)
        except Exception as exc:
            raise self._explain(exc, f"writing {key}") from exc

    async def get(self, key: str) -> bytes | None:
        """The object's bytes; None when there is none."""
        try:
            result = await self._obs.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except FileNotFoundError:
            return None
        except Exception as exc:
            raise self._explain(exc, f"reading {key}") from exc

    async def delete(self, key: str) -> None:
        try:
            await self._obs.delete_async(self._store, key)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise self._explain(exc, f"deleting {key}") from exc

    async def keys(self, under: str = "") -> list[str]:
        """Every key under ``under`` (relative to the prefix), sorted."""
        found: list[str] = []
        try:
            stream = self._obs.list(self._store, under or None, chunk_size=1000)
            async for batch in stream:
                found.extend(str(meta["path"]) for meta in batch)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise self._explain(exc, f"listing {under or 'the archive'}") from exc
        return sorted(found)

    async def check_writable(self) -> None:
        """Prove at start that the credentials may write here: a small write, then its
        delete (a delete refused is fine: some write-only policies refuse it)."""
        await self.put(WRITE_CHECK_KEY, b"tweet-relay can write here\n")
        with contextlib.suppress(ArchiveError):
            await self.delete(WRITE_CHECK_KEY)

    def _explain(self, exc: BaseException, action: str) -> ArchiveError | ConfigError:
        return explain(exc, f"archive {self.url}: {action}")


async def retried(
    attempt: Callable[[], Awaitable[T]],
    outage: Outage,
    *,
    sleep: Sleep = asyncio.sleep,
    give_up_after: float | None = None,
    errors_too: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``attempt()`` until it answers. An endpoint that does not answer
    (:class:`~relay.errors.ArchiveUnreachable`; with ``errors_too`` also a failure of the
    service itself, a 500) is tried again with backoff, as the database is waited for:
    ``outage`` logs one line when the wait starts and one when it ends. With
    ``give_up_after`` a wait that long raises ArchiveUnreachable naming it. Anything
    else (no bucket, credentials refused, a damaged object) raises at once."""
    delay = FIRST_WAIT
    started: float | None = None
    while True:
        try:
            result = await attempt()
        except ArchiveError as exc:
            passing = isinstance(exc, ArchiveUnreachable) or (
                errors_too and type(exc) is ArchiveError
            )
            if not passing:
                raise
            started = clock() if started is None else started
            if give_up_after is not None:
                waited = clock() - started
                if waited >= give_up_after:
                    raise ArchiveUnreachable(
                        f"{exc}; gave up after waiting {give_up_after:g} s (--wait)"
                    ) from None
                delay = min(delay, max(0.1, give_up_after - waited))
            outage.failed(str(exc), delay)
            await sleep(delay)
            delay = min(delay * 2, LONGEST_WAIT)
            continue
        outage.answered()
        return result


async def wait_until_writable(bucket: Bucket, sleep: Sleep = asyncio.sleep) -> None:
    """The start's write check: an endpoint that does not answer is waited for with
    backoff, as the database is (one line when the wait starts, one when it ends); any
    other failure (no bucket, credentials refused) raises at once."""
    outage = Outage(log, f"the archive at {bucket.url}")
    try:
        await retried(bucket.check_writable, outage, sleep=sleep)
    except ArchiveUnreachable:
        raise
    except ArchiveError as exc:
        raise ConfigError(str(exc)) from None


def explain(exc: BaseException, where: str) -> ArchiveError | ConfigError:
    """An obstore failure as one line of the relay's own tree."""
    from obstore.exceptions import PermissionDeniedError, UnauthenticatedError

    text = _first_line(exc)
    lowered = str(exc).lower()
    if isinstance(exc, (PermissionDeniedError, UnauthenticatedError)) or any(
        word in lowered
        for word in ("invalidaccesskeyid", "signaturedoesnotmatch", "accessdenied", "403 forbidden")
    ):
        return ConfigError(f"{where}: the credentials are refused ({text})")
    if "nosuchbucket" in lowered:  # a get's FileNotFoundError, a listing's generic error
        return ConfigError(f"{where}: no such bucket")
    if isinstance(exc, PermissionError):
        return ConfigError(f"{where}: permission denied ({text})")
    if any(
        word in lowered
        for word in ("connect", "timed out", "timeout", "dns", "error sending request", "reset")
    ):
        return ArchiveUnreachable(f"{where}: no answer ({text})")
    return ArchiveError(f"{where}: {text}")


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:240] + "...") if len(text) > 240 else text or type(exc).__name__


_S3_KEYS = (
    "access_key_id",
    "secret_access_key",
    "session_token",
    "region",
    "endpoint",
    "virtual_hosted_style_request",
    "skip_signature",
    "unsigned_payload",
    "request_payer",
    "checksum_algorithm",
    "server_side_encryption",
    "sse_kms_key_id",
)
