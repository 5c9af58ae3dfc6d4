"""The X API v2 through tweepy: clients on a configurable base URL, rules, recent search.

tweepy writes ``https://api.twitter.com`` into every URL it builds. Rather than edit
URLs, a requests transport adapter mounted on that host sends each request to
``X_API_BASE_URL`` instead, so the same code talks to the real API or to a local server.
Everything here is blocking (tweepy's clients use requests); callers run it in a thread.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import requests
import tweepy
from requests.adapters import HTTPAdapter

from relay.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

X_HOST = "https://api.twitter.com"
DEFAULT_BASE_URL = X_HOST
# What the stored tweet needs: author, referenced tweets and their authors, media,
# mentions, places; entities, metrics, language, times and edit history.
EXPANSIONS = [
    "author_id",
    "referenced_tweets.id",
    "referenced_tweets.id.author_id",
    "attachments.media_keys",
    "entities.mentions.username",
    "in_reply_to_user_id",
    "geo.place_id",
]
TWEET_FIELDS = [
    "attachments",
    "author_id",
    "conversation_id",
    "created_at",
    "edit_history_tweet_ids",
    "entities",
    "geo",
    "in_reply_to_user_id",
    "lang",
    "possibly_sensitive",
    "public_metrics",
    "referenced_tweets",
    "reply_settings",
    "source",
]
USER_FIELDS = [
    "created_at",
    "description",
    "name",
    "profile_image_url",
    "public_metrics",
    "username",
    "verified",
    "location",
]
MEDIA_FIELDS = [
    "media_key",
    "type",
    "url",
    "preview_image_url",
    "width",
    "height",
    "duration_ms",
    "alt_text",
]
PLACE_FIELDS = ["full_name", "id", "country", "country_code", "name", "place_type"]
FIELDS: dict[str, Any] = {
    "expansions": EXPANSIONS,
    "tweet_fields": TWEET_FIELDS,
    "user_fields": USER_FIELDS,
    "media_fields": MEDIA_FIELDS,
    "place_fields": PLACE_FIELDS,
}


@dataclass(frozen=True, slots=True)
class StreamRule:
    value: str
    tag: str
    id: str = ""

    @property
    def key(self) -> str:
        """The rule's channel key: its tag, or its id when it has none."""
        return self.tag or self.id


RULES_TIMEOUT = 15.0
"""Seconds to connect or to wait for bytes on a rules request (tweepy sets none: an
unreachable API would hang `relay rules` for ever)."""


class RebaseAdapter(HTTPAdapter):
    """Sends requests for api.twitter.com to another base URL (a proxy, a local server),
    with a default timeout when one is given."""

    def __init__(self, base_url: str, timeout: float | None = None) -> None:
        super().__init__()
        self.base = urlsplit(base_url.rstrip("/"))
        self.timeout = timeout

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        parts = urlsplit(request.url or "")
        request.url = urlunsplit(
            (self.base.scheme, self.base.netloc, self.base.path + parts.path, parts.query, "")
        )
        if kwargs.get("timeout") is None and self.timeout is not None:
            kwargs["timeout"] = self.timeout
        return super().send(request, *args, **kwargs)


def route(session: requests.Session, base_url: str, timeout: float | None = None) -> None:
    """Make ``session`` send api.twitter.com requests to ``base_url``."""
    if base_url.rstrip("/") != X_HOST or timeout is not None:
        session.mount(X_HOST, RebaseAdapter(base_url, timeout))


def client(bearer_token: str, base_url: str) -> tweepy.Client:
    """A tweepy Client answering raw responses: the exact bytes are what the relay stores."""
    api = tweepy.Client(
        bearer_token=bearer_token, wait_on_rate_limit=False, return_type=requests.Response
    )
    route(api.session, base_url)
    return api


def stream_client(bearer_token: str, base_url: str) -> tweepy.StreamingClient:
    """A StreamingClient for the rules endpoints."""
    api = tweepy.StreamingClient(bearer_token, wait_on_rate_limit=False)
    route(api.session, base_url, RULES_TIMEOUT)
    return api


def require_token(token: str) -> str:
    if not token:
        raise ConfigError(
            "X_BEARER_TOKEN is not set: the live sources need an X API bearer token. "
            "To run without one, replay the bundled sample: relay run --source replay"
        )
    return token


def newest_id(*ids: str | None) -> str | None:
    """The highest of some tweet ids (snowflakes compare as numbers), ignoring unknowns."""
    known = [int(i) for i in ids if i and i.isdigit()]
    return str(max(known)) if known else None


def load_rules(path: str | Path) -> list[StreamRule]:
    """The stream rules of ``rules.toml``: ``[[rule]]`` tables with ``value`` and ``tag``."""
    try:
        document = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"rules file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rules file {path} is not valid TOML: {exc}") from None
    rules = []
    for n, entry in enumerate(document.get("rule", []), start=1):
        value, tag = entry.get("value"), entry.get("tag")
        if not isinstance(value, str) or not value.strip() or not isinstance(tag, str) or not tag:
            raise ConfigError(
                f"{path}: rule {n} needs a value and a tag (the tag names its channel, rule:<tag>)"
            )
        rules.append(StreamRule(value=value, tag=tag))
    tags = [rule.tag for rule in rules if rule.tag]
    if len(tags) != len(set(tags)):
        raise ConfigError(f"{path}: two rules share a tag; tags name channels and must differ")
    return rules


def api_error(exc: tweepy.TweepyException, action: str) -> SourceError | ConfigError:
    """One clear line for an API failure; 401 and 403 say what to check."""
    if isinstance(exc, tweepy.Unauthorized):
        return ConfigError(f"{action}: the X API refused X_BEARER_TOKEN (401 Unauthorized)")
    if isinstance(exc, tweepy.Forbidden):
        return ConfigError(
            f"{action}: the X API says this token may not use this endpoint (403 Forbidden); "
            "the filtered stream needs a Basic or higher access level"
        )
    return SourceError(f"{action}: {exc}")


@dataclass(frozen=True, slots=True)
class SyncPlan:
    add: list[StreamRule]
    delete: list[StreamRule]
    keep: list[StreamRule]


def current_rules(api: tweepy.StreamingClient) -> list[StreamRule]:
    response = api.get_rules()
    return [StreamRule(value=r.value, tag=r.tag or "", id=str(r.id)) for r in response.data or []]


def plan_sync(wanted: Sequence[StreamRule], current: Sequence[StreamRule]) -> SyncPlan:
    """Add what is missing, delete what the config does not know, keep the rest."""
    have = {(r.value, r.tag): r for r in current}
    want = {(r.value, r.tag) for r in wanted}
    return SyncPlan(
        add=[r for r in wanted if (r.value, r.tag) not in have],
        delete=[r for key, r in have.items() if key not in want],
        keep=[r for key, r in have.items() if key in want],
    )


def apply_sync(api: tweepy.StreamingClient, plan: SyncPlan, *, dry_run: bool) -> None:
    """Apply (or, with ``dry_run``, have the API validate) a plan; rejected rules raise.

    New rules are always validated with a dry run first, so a rejected rule changes
    nothing: no valid rule of the same batch is added and no old rule is deleted.
    """
    if plan.add:
        _add_rules(api, plan.add, dry_run=True)
        if not dry_run:
            _add_rules(api, plan.add, dry_run=False)
    if plan.delete and not dry_run:
        api.delete_rules([r.id for r in plan.delete])


def _add_rules(api: tweepy.StreamingClient, rules: list[StreamRule], *, dry_run: bool) -> None:
    response = api.add_rules(
        [tweepy.StreamRule(value=r.value, tag=r.tag or None) for r in rules],
        # tweepy would send Python's "True"/"False"; the API documents lowercase true.
        **({"dry_run": "true"} if dry_run else {}),
    )
    problems = [_rejection(error) for error in response.errors or []]
    if problems:
        raise ConfigError("the X API rejected stream rules: " + "; ".join(problems))


def _rejection(error: dict[str, Any]) -> str:
    value = error.get("value", "?")
    details = error.get("details") or [error.get("detail") or error.get("title") or "rejected"]
    return f"rule {value!r}: {', '.join(str(d) for d in details)}"


def search_pages(
    api: tweepy.Client,
    rule: StreamRule,
    *,
    since_id: str | None,
    max_pages: int,
    max_results: int = 100,
) -> Iterator[bytes]:
    """Recent-search pages for one rule, as payload lines marked with the rule.

    ``since_id`` stays fixed while ``next_token`` pages back through the results.
    """
    next_token = None
    for _ in range(max_pages):
        response: requests.Response = api.search_recent_tweets(
            rule.value,
            since_id=since_id,
            next_token=next_token,
            max_results=max_results,
            user_auth=False,
            **FIELDS,
        )
        payload = orjson.loads(response.content)
        if not isinstance(payload, dict) or not payload.get("data"):
            return
        # A search page names no rule; the caller knows which one it asked for.
        payload["matching_rules"] = [{"id": rule.id, "tag": rule.tag}]
        yield orjson.dumps(payload)
        next_token = (payload.get("meta") or {}).get("next_token")
        if not next_token:
            return
