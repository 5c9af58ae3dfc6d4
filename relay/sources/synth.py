"""A deterministic, wire-accurate synthetic X API v2 filtered stream.

Same ``count`` and ``seed``, same bytes: only ``random.Random(seed)`` is used, never the
clock. Each line is a filtered-stream message with the fields and expansions the relay
asks for (author, referenced tweets, media, entities, metrics, lang, edit history),
plus ``"__relay": {"received_at": ...}`` for pacing. Entity offsets are in code points,
as the API gives them. The bundled sample is ``write_stream(path, 3000, SAMPLE_SEED)``.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from relay.core.rule_set import RuleSet
from relay.core.times import time_from_unix

SAMPLE_SEED = 2026
SAMPLE_COUNT = 3000
START = 1767225600.0  # 2026-01-01T00:00:00Z
X_EPOCH_MS = 1288834974657

RULES = [
    ("1750000000000000001", "cats", "cats OR kitten -is:retweet"),
    ("1750000000000000002", "python", "python programming"),
    ("1750000000000000003", "space", "nasa OR spacex OR #space"),
    ("1750000000000000004", "football", "football OR #WorldCup"),
    ("1750000000000000005", "music", "#NowPlaying OR concert"),
    ("1750000000000000006", "news", "breaking news"),
]
HASHTAGS = {
    "cats": ["cats", "CatsOfTwitter", "kitten", "caturday"],
    "python": ["python", "100DaysOfCode", "asyncio", "opensource"],
    "space": ["space", "NASA", "Artemis", "astronomy"],
    "football": ["football", "WorldCup", "matchday", "GOAL"],
    "music": ["NowPlaying", "concert", "newmusic", "vinyl"],
    "news": ["breaking", "news", "update", "live"],
}
# Short phrases in their own scripts: Latin, CJK, Arabic and Hebrew (right to left), Devanagari.
PHRASES = {
    "en": [
        "just saw the best thing today",
        "can't believe this happened",
        "thread below",
        "honestly the highlight of my week",
        "who else is watching this right now",
    ],
    "es": ["no me lo puedo creer", "qué día tan increíble", "mirad esto", "esto es historia"],
    "pt": ["que dia incrível", "olha isso gente", "não acredito nisso", "isso é histórico"],
    "fr": ["je n'en reviens pas", "quelle journée incroyable", "regardez ça", "enfin !"],
    "de": ["ich fasse es nicht", "was für ein Tag", "schaut euch das an", "endlich Wochenende"],
    "ja": ["今日は本当に最高だった", "これはすごい", "信じられない", "みんな見て"],
    "ko": ["오늘 정말 최고였어", "이거 대박", "믿을 수 없어", "다들 이것 좀 봐"],
    "ar": ["لا أصدق ما حدث اليوم", "يوم رائع جدا", "شاهدوا هذا", "أخيرا وصلنا"],
    "he": ["אני לא מאמין שזה קרה", "איזה יום מדהים", "תראו את זה", "סוף סוף"],
    "hi": ["आज का दिन शानदार था", "यह अविश्वसनीय है", "सब लोग देखो", "आखिरकार"],
    "tr": ["buna inanamıyorum", "ne harika bir gün", "şuna bakın", "sonunda"],
    "id": ["tidak percaya ini terjadi", "hari yang luar biasa", "lihat ini", "akhirnya"],
}
LANG_WEIGHTS = [30, 12, 8, 7, 6, 10, 5, 6, 4, 5, 4, 3]
EMOJI = ["😂", "🔥", "❤️", "🙏", "😍", "🚀", "⚽", "🎶", "🐱", "✨", "👀", "🇧🇷", "👩🏽‍💻"]
WORDS = ["today", "really", "amazing", "new", "look", "great", "live", "first", "best", "wow"]
SOURCES = ["Twitter for iPhone", "Twitter for Android", "Twitter Web App", "TweetDeck"]
FIRST = [
    "Ana",
    "Ben",
    "Chen",
    "Dana",
    "Eli",
    "Fatima",
    "Goro",
    "Hana",
    "Ivan",
    "Jo",
    "Kofi",
    "Lea",
    "Mina",
    "Noor",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sven",
    "Tariq",
    "Yuki",
    "Zoe",
]
LAST = ["Silva", "Kim", "Nguyen", "Cohen", "Haddad", "Sato", "Müller", "Rossi", "Okafor", "Ali"]


class _Users:
    """A fixed pool of users made from the seed."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self.pool: list[dict[str, Any]] = []
        for n in range(size):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            created = START - rng.uniform(30, 5000) * 86400
            user: dict[str, Any] = {
                "id": str(10_000_000 + n * 7919),
                "name": f"{first} {last}",
                "username": f"{first.lower()}{last.lower().replace('ü', 'u')}{n}",
                "created_at": time_from_unix(created),
                "description": rng.choice(
                    [
                        "",
                        "opinions are mine",
                        "🐱 & ☕",
                        "dev · runner",
                        "news junkie",
                        "musician 🎶",
                        "صحفي",
                        "מתכנת",
                    ]
                ),
                "profile_image_url": f"https://pbs.twimg.com/profile_images/{n}/a_normal.jpg",
                "verified": rng.random() < 0.05,
                "protected": False,
                "public_metrics": {
                    "followers_count": int(rng.paretovariate(1.2) * 50),
                    "following_count": rng.randrange(0, 3000),
                    "tweet_count": rng.randrange(1, 90_000),
                    "listed_count": rng.randrange(0, 200),
                },
            }
            if rng.random() < 0.4:
                user["location"] = rng.choice(["Lisboa", "東京", "Berlin", "São Paulo", "Cairo"])
            self.pool.append(user)

    def pick(self, rng: random.Random) -> dict[str, Any]:
        # A few busy accounts and a long tail, as on the real stream.
        index = min(int(rng.paretovariate(0.6)) - 1, len(self.pool) - 1)
        return self.pool[index] if rng.random() < 0.3 else rng.choice(self.pool)


class _Text:
    """Builds tweet text and its entities with code-point offsets."""

    def __init__(self) -> None:
        self.text = ""
        self.entities: dict[str, list[dict[str, Any]]] = {}

    def add(self, piece: str) -> None:
        self.text += piece

    def entity(self, kind: str, shown: str, fields: dict[str, Any]) -> None:
        start = len(self.text)
        self.text += shown
        self.entities.setdefault(kind, []).append({"start": start, "end": len(self.text), **fields})


def generate(count: int, seed: int, *, start: float = START, rate: float = 6.0) -> Iterator[bytes]:
    """``count`` filtered-stream lines, ``rate`` tweets a second on average."""
    rng = random.Random(seed)
    users = _Users(rng, max(50, min(4000, count)))
    languages = list(PHRASES)
    now = start
    last_id = 0
    recent: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for _ in range(count):
        now += rng.expovariate(rate)
        tweet_id = max(((int(now * 1000) - X_EPOCH_MS) << 22) | rng.randrange(1 << 12), last_id + 1)
        last_id = tweet_id
        rules = rng.sample(RULES, 1 if rng.random() < 0.8 else 2)
        author = users.pick(rng)
        lang = rng.choices(languages, LANG_WEIGHTS)[0]
        line: dict[str, Any] = {}
        if rng.random() < 0.03:  # a client that asked for no fields gets only the defaults
            line["data"] = {
                "id": str(tweet_id),
                "text": rng.choice(PHRASES[lang]),
                "edit_history_tweet_ids": [str(tweet_id)],
            }
        else:
            line["data"], line["includes"] = _tweet(
                rng, str(tweet_id), now, author, lang, rules[0][1], users, recent
            )
            recent = [*recent[-50:], (line["data"], author)]
        line["matching_rules"] = [{"id": rule_id, "tag": tag} for rule_id, tag, _ in rules]
        line["__relay"] = {"received_at": round(now + rng.uniform(0.05, 0.6), 3)}
        yield orjson.dumps(line)


def _tweet(
    rng: random.Random,
    tweet_id: str,
    now: float,
    author: dict[str, Any],
    lang: str,
    topic: str,
    users: _Users,
    recent: list[tuple[dict[str, Any], dict[str, Any]]],
) -> tuple[dict[str, Any], dict[str, Any]]:
    included_users = {author["id"]: author}
    included_tweets: list[dict[str, Any]] = []
    text = _Text()
    kind = rng.choices(["plain", "reply", "quote", "retweet"], [55, 20, 10, 15])[0]
    referenced: list[dict[str, str]] = []
    data: dict[str, Any] = {"id": tweet_id}
    if kind != "plain" and recent:
        original, original_author = rng.choice(recent)
        included_users[original_author["id"]] = original_author
        included_tweets.append(original)
        referenced.append(
            {
                "type": {"reply": "replied_to", "quote": "quoted", "retweet": "retweeted"}[kind],
                "id": original["id"],
            }
        )
        if kind == "reply":
            data["in_reply_to_user_id"] = original_author["id"]
            text.entity(
                "mentions",
                "@" + original_author["username"],
                {"username": original_author["username"], "id": original_author["id"]},
            )
            text.add(" ")
        elif kind == "retweet":
            text.add("RT ")
            text.entity(
                "mentions",
                "@" + original_author["username"],
                {"username": original_author["username"], "id": original_author["id"]},
            )
            text.add(": ")
    text.add(rng.choice(PHRASES[lang]))
    for _ in range(rng.randrange(0, 3)):
        text.add(" " + rng.choice(WORDS))
    if rng.random() < 0.5:
        text.add(" " + "".join(rng.choices(EMOJI, k=rng.randrange(1, 4))))
    for tag in rng.sample(HASHTAGS[topic], rng.randrange(1, 3)):
        text.add(" ")
        text.entity("hashtags", "#" + tag, {"tag": tag})
    if rng.random() < 0.3:
        mentioned = users.pick(rng)
        included_users[mentioned["id"]] = mentioned
        text.add(" ")
        text.entity(
            "mentions",
            "@" + mentioned["username"],
            {"username": mentioned["username"], "id": mentioned["id"]},
        )
    if topic == "news" and rng.random() < 0.3:
        text.add(" ")
        text.entity("cashtags", "$TSLA", {"tag": "TSLA"})
    if rng.random() < 0.35:
        short = f"https://t.co/{rng.randrange(16**10):010x}"
        text.add(" ")
        text.entity(
            "urls",
            short,
            {
                "url": short,
                "expanded_url": f"https://example.org/{topic}/{rng.randrange(10**6)}",
                "display_url": f"example.org/{topic}/…",
                "status": 200,
                "title": f"{topic.title()} story",
            },
        )
    media: list[dict[str, Any]] = []
    if rng.random() < 0.2:
        for n in range(rng.randrange(1, 3)):
            media_type = rng.choices(["photo", "video", "animated_gif"], [8, 2, 1])[0]
            key = f"{3 if media_type == 'photo' else 7}_{tweet_id}{n}"
            item: dict[str, Any] = {
                "media_key": key,
                "type": media_type,
                "width": rng.choice([640, 1080, 1280]),
                "height": rng.choice([480, 720, 1350]),
            }
            if media_type == "photo":
                item["url"] = f"https://pbs.twimg.com/media/{key}.jpg"
            else:
                item["preview_image_url"] = f"https://pbs.twimg.com/ext_tw_video_thumb/{key}.jpg"
                item["duration_ms"] = rng.randrange(1000, 120_000)
            media.append(item)
        if media:
            short = f"https://t.co/{rng.randrange(16**10):010x}"
            text.add(" ")
            text.entity(
                "urls",
                short,
                {
                    "url": short,
                    "media_key": media[0]["media_key"],
                    "display_url": "pic.x.com/…",
                    "expanded_url": f"https://x.com/i/status/{tweet_id}",
                },
            )
    created = now - rng.uniform(0.2, 2.0)
    data.update(
        {
            "text": text.text,
            "author_id": author["id"],
            "created_at": datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "lang": lang,
            "conversation_id": referenced[0]["id"] if kind == "reply" and referenced else tweet_id,
            "edit_history_tweet_ids": [tweet_id],
            "source": rng.choice(SOURCES),
            "possibly_sensitive": rng.random() < 0.02,
            "reply_settings": "everyone",
            "entities": text.entities,
            "public_metrics": {
                "retweet_count": int(rng.paretovariate(1.5)) - 1,
                "reply_count": rng.randrange(0, 20),
                "like_count": int(rng.paretovariate(1.1) * 3) - 3,
                "quote_count": rng.randrange(0, 5),
                "bookmark_count": rng.randrange(0, 9),
                "impression_count": rng.randrange(10, 100_000),
            },
            "context_annotations": [
                {
                    "domain": {
                        "id": "65",
                        "name": "Interests and Hobbies Vertical",
                        "description": "Top level interests and hobbies",
                    },
                    "entity": {"id": str(800 + len(topic)), "name": topic.title()},
                }
            ],
        }
    )
    if referenced:
        data["referenced_tweets"] = referenced
    if media:
        data["attachments"] = {"media_keys": [m["media_key"] for m in media]}
    includes: dict[str, Any] = {"users": list(included_users.values())}
    if included_tweets:
        includes["tweets"] = included_tweets
    if media:
        includes["media"] = media
    return data, includes


def write_stream(path: Path, count: int, seed: int) -> int:
    """Write ``count`` lines to ``path`` (gzip when it ends in .gz, reproducibly); the count."""
    body = b"".join(line + b"\n" for line in generate(count, seed))
    if path.suffix == ".gz":
        with (
            path.open("wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as handle,
        ):
            handle.write(body)
    else:
        path.write_bytes(body)
    return count


def sample_rules() -> RuleSet:
    """The rules the bundled sample declares: every tweet of it matched some of these, and
    no other (a closed set, so a mistyped ``rule:`` channel is refused from the start)."""
    return RuleSet(frozenset(tag for _, tag, _ in RULES), True, "the bundled sample")


def sample_path() -> Path:
    """The bundled sample stream, wherever the package is installed."""
    return Path(str(resources.files("relay") / "data" / "sample.jsonl.gz"))
