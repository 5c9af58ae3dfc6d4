"""Tokens, grants, filters and rate limits, pure, with the time passed in."""

from __future__ import annotations

import base64
import hashlib
import hmac

import jwt
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config import Settings
from relay.core.auth import Secrets, TokenBucket, issue_token, verify_token
from relay.core.filters import TweetFilter, parse_filter
from relay.errors import BadRequest, Forbidden, Unauthorized

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


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS256", "crit": ["exp"]},
        {"alg": "HS256", "crit": []},
        {"alg": "HS256", "crit": "x"},
        {"alg": "HS256", "crit": [5]},
        {"alg": "HS256", "kid": 5},
    ],
)
def test_a_header_the_jwt_library_refuses_is_unauthorized_signed_or_not(
    header: dict[str, object],
) -> None:
    for key in (SECRET.encode(), b"some-other-key-of-enough-length!!"):
        with pytest.raises(Unauthorized, match="not valid"):
            verify_token(SECRET, _forge(header, GOOD_CLAIMS, key), now=NOW)


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)
HEADER_KEYS = st.sampled_from(["alg", "typ", "kid", "crit", "b64", "cty", "jku", "x5u", "zip"])
CLAIM_KEYS = st.sampled_from(
    ["sub", "exp", "nbf", "iat", "channels", "filters", "limits", "jti", "aud", "iss"]
)


@settings(max_examples=400, deadline=None)
@given(
    header=st.dictionaries(HEADER_KEYS | st.text(max_size=4), JSON_VALUES, max_size=4),
    alg=st.sampled_from(["HS256", "HS512", "none", None]),
    claims=st.dictionaries(CLAIM_KEYS | st.text(max_size=4), JSON_VALUES, max_size=6),
    signed=st.booleans(),
    rotating=st.booleans(),
)
def test_fuzzed_token_headers_and_claims_are_a_grant_or_unauthorized(
    header: dict[str, object],
    alg: str | None,
    claims: dict[str, object],
    signed: bool,
    rotating: bool,
) -> None:
    if alg is not None:
        header = {**header, "alg": alg}
    try:
        token = _forge(header, claims, SECRET.encode() if signed else b"x" * 32)
    except (TypeError, orjson.JSONEncodeError):  # not JSON (an integer past 64 bits)
        return
    keys = Secrets(SECRET, "p" * 40, NOW + 60) if rotating else SECRET
    try:
        grant = verify_token(keys, token, now=NOW)
    except Unauthorized as refused:
        assert refused.status == 401 and refused.message
    else:  # only a token signed with the secret, with the claims a grant needs
        assert signed and isinstance(claims.get("sub"), str) and "channels" in claims
        assert grant.subject == claims["sub"]


@settings(max_examples=300, deadline=None)
@given(token=st.text() | st.from_regex(r"\AeyJ[A-Za-z0-9_.-]{0,80}\Z"))
def test_any_text_as_a_token_is_refused_as_unauthorized(token: str) -> None:
    with pytest.raises(Unauthorized):
        verify_token(SECRET, token, now=NOW)
