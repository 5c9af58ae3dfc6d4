"""Tokens, grants, filters and rate limits, pure, with the time passed in."""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt
import orjson
import pytest

from relay.auth import TokenBucket, issue_token, verify_token
from relay.config import Settings
from relay.errors import BadRequest, Forbidden, Unauthorized
from relay.filters import TweetFilter, parse_filter

SECRET = "a-test-secret-that-is-long-enough-for-hs256"
NOW = 1_800_000_000.0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], claims: dict[str, object], key: bytes = b"") -> str:
    signing = _b64(orjson.dumps(header)) + "." + _b64(orjson.dumps(claims))
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}.get(str(header.get("alg")))
    signature = _b64(hmac.new(key, signing.encode(), digest).digest()) if digest else ""
    return signing + "." + signature


GOOD_CLAIMS = {"sub": "alice", "exp": NOW + 60, "channels": ["rule:cats"]}


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (
            _forge(
                {"alg": "HS256", "typ": "JWT"}, GOOD_CLAIMS, b"another-secret-of-enough-length!!"
            ),
            "signature",
        ),
        (_forge({"alg": "none", "typ": "JWT"}, GOOD_CLAIMS), "algorithm"),
        (_forge({"alg": "HS512", "typ": "JWT"}, GOOD_CLAIMS, SECRET.encode()), "algorithm"),
        (_forge({"alg": "RS256", "typ": "JWT"}, GOOD_CLAIMS), "algorithm"),
        (jwt.encode({**GOOD_CLAIMS, "exp": NOW - 60}, SECRET, "HS256"), "expired"),
        (jwt.encode({**GOOD_CLAIMS, "nbf": NOW + 60}, SECRET, "HS256"), "not valid yet"),
        (jwt.encode({"exp": NOW + 60, "channels": []}, SECRET, "HS256"), "sub"),
        (jwt.encode({"sub": "alice", "channels": []}, SECRET, "HS256"), "exp"),
        (jwt.encode({"sub": "alice", "exp": NOW + 60}, SECRET, "HS256"), "channels"),
        (jwt.encode({**GOOD_CLAIMS, "limits": {"speed": 9}}, SECRET, "HS256"), "limits"),
        ("not.a.jwt", "not"),
        ("", "not a JWT"),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(token: str, reason: str) -> None:
    with pytest.raises(Unauthorized, match=reason):
        verify_token(SECRET, token, now=NOW)


def test_a_good_token_grants_its_patterns_and_no_more() -> None:
    token = issue_token(SECRET, subject="alice", channels=["rule:cat*"], ttl=60, now=NOW)
    grant = verify_token(SECRET, token, now=NOW + 30)
    assert grant.subject == "alice" and grant.expires_at == NOW + 60
    assert grant.allows("rule:cats") and grant.allows("rule:catnip")
    assert not grant.allows("rule:dogs") and not grant.allows("tweets")


def test_no_secret_accepts_no_token() -> None:
    token = issue_token(SECRET, subject="a", channels=["tweets"], ttl=60, now=NOW)
    with pytest.raises(Unauthorized, match="RELAY_SECRET"):
        verify_token("", token, now=NOW)


def test_the_policy_tells_unauthorized_from_forbidden() -> None:
    policy = Settings(public_channels=("rule:public",)).policy()
    grant = verify_token(
        SECRET, issue_token(SECRET, subject="bob", channels=["rule:cats"], ttl=60, now=NOW), now=NOW
    )
    policy.check_read(None, "rule:public")
    policy.check_read(grant, "rule:cats")
    with pytest.raises(Unauthorized):
        policy.check_read(None, "rule:cats")
    with pytest.raises(Forbidden):
        policy.check_read(grant, "rule:dogs")
    with pytest.raises(Forbidden):
        policy.check_read(grant, "tweets")


def test_token_limits_override_the_policy_defaults() -> None:
    token = issue_token(
        SECRET, subject="c", channels=["tweets"], ttl=60, now=NOW, limits={"max_subscriptions": 2}
    )
    grant = verify_token(SECRET, token, now=NOW)
    policy = Settings(max_subscriptions=50).policy()
    assert policy.limit(grant, "max_subscriptions") == 2
    assert policy.limit(None, "max_subscriptions") == 50


def test_the_token_bucket_allows_bursts_then_the_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)


@pytest.mark.parametrize(
    "value",
    [
        [],
        {"lang": 5},
        {"lang": []},
        {"colour": "red"},
        {"has_media": "yes"},
        {"keyword": ""},
        {"author": ["x" * 65]},
    ],
)
def test_bad_filters_are_bad_requests(value: object) -> None:
    with pytest.raises(BadRequest):
        parse_filter(value)


def test_filters_match_and_a_client_can_only_narrow_pinned_ones() -> None:
    pinned = parse_filter({"lang": ["en", "es"], "keyword": "cat"})
    narrowed = pinned.narrowed_by(parse_filter({"lang": "es", "author": "@Bob"}))
    assert narrowed == TweetFilter(
        langs=frozenset({"es"}), authors=frozenset({"bob"}), keywords=("cat",)
    )
    assert narrowed.matches("es", "BOB", False, "my Cat")
    assert not narrowed.matches("en", "bob", False, "my cat")
    assert not narrowed.matches("es", "bob", False, "my dog")
    with pytest.raises(Forbidden):
        pinned.narrowed_by(parse_filter({"lang": "ja"}))
    with pytest.raises(Forbidden):
        parse_filter({"has_media": True}).narrowed_by(parse_filter({"has_media": False}))
