"""The list model QML binds to, on its own, without a window: appends in batches,
resume, reset, deletes and the cap on N, checked by Qt's own model tester."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.qt_support import qt_application


@pytest.fixture
def model() -> Iterator[Any]:
    qt_application()
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler
    from PySide6.QtTest import QAbstractItemModelTester

    from client_demo.qt.model import TweetModel

    complaints: list[str] = []

    def handler(kind: QtMsgType, context: object, message: str) -> None:
        if kind != QtMsgType.QtDebugMsg:
            complaints.append(message)

    previous = qInstallMessageHandler(handler)
    tweets = TweetModel(keep=5)
    tester = QAbstractItemModelTester(tweets, QAbstractItemModelTester.FailureReportingMode.Warning)
    tweets.changes = []  # type: ignore[attr-defined]
    tweets.rowsInserted.connect(lambda _, first, last: tweets.changes.append(("+", first, last)))
    tweets.rowsRemoved.connect(lambda _, first, last: tweets.changes.append(("-", first, last)))
    tweets.modelReset.connect(lambda: tweets.changes.append(("reset",)))
    yield tweets
    del tester
    qInstallMessageHandler(previous)
    assert not complaints, f"Qt's model tester: {complaints}"


def tweet(seq: int, **fields: object) -> dict[str, object]:
    return {
        "id": str(seq),
        "seq": seq,
        "text": f"tweet {seq}",
        "author": {"username": "a"},
        **fields,
    }


def test_live_tweets_go_in_as_one_insertion_per_batch(model: Any) -> None:
    from PySide6.QtCore import Qt

    model.start("e", [tweet(1)], head=1)
    for seq in (2, 3, 4):
        assert model.receive(tweet(seq))
    assert model.rowCount() == 1  # waiting for the batch
    assert model.flush() == 3
    assert model.changes == [("reset",), ("+", 0, 2)]
    assert model.seqs() == [4, 3, 2, 1]
    roles = {bytes(name.data()).decode(): role for role, name in model.roleNames().items()}
    top = model.index(0, 0)
    assert model.data(top, roles["seq"]) == 4
    assert model.data(top, roles["author"]) == "a"
    assert model.data(top, roles["text"]) == "tweet 4"
    assert model.data(top, Qt.ItemDataRole.DisplayRole) == "tweet 4"
    assert model.data(model.index(9, 0), roles["seq"]) is None
    assert model.flush() == 0  # nothing waiting: no change said


def test_the_model_keeps_the_newest_n(model: Any) -> None:
    model.start("e", [], head=0)
    for seq in range(1, 5):
        model.receive(tweet(seq))
    model.flush()
    for seq in range(5, 9):
        model.receive(tweet(seq))
    model.flush()
    assert model.seqs() == [8, 7, 6, 5, 4]
    assert model.changes[-2:] == [("+", 0, 3), ("-", 5, 7)]
    model.set_keep(2)
    assert model.seqs() == [8, 7] and model.changes[-1] == ("-", 2, 4)


def test_a_resume_shows_no_tweet_twice(model: Any) -> None:
    model.start("e", [tweet(1), tweet(2)], head=2)
    for seq in (1, 2, 3, 2, 3, 4):  # a reconnect's stream may repeat what was shown
        model.receive(tweet(seq))
    model.flush()
    assert model.seqs() == [4, 3, 2, 1]
    assert model.tweets.position.since() == "e:4"


def test_reset_empties_the_list_and_takes_the_new_position(model: Any) -> None:
    model.start("old", [tweet(1), tweet(2)], head=2)
    model.receive(tweet(3))
    model.reset("new", 1)
    assert model.rowCount() == 0 and model.changes[-1] == ("reset",)
    model.receive(tweet(2))
    model.flush()
    assert model.seqs() == [2] and model.tweets.position.since() == "new:2"


def test_a_deleted_tweet_leaves_the_list(model: Any) -> None:
    model.start("e", [tweet(1), tweet(2), tweet(3)], head=3)
    assert model.delete("2")
    assert model.seqs() == [3, 1] and model.changes[-1] == ("-", 1, 1)
    assert not model.delete("2")
    model.receive(tweet(4))
    assert model.delete("4") is False  # still waiting: it never shows
    model.flush()
    assert model.seqs() == [3, 1]


def test_search_results_show_in_the_order_given(model: Any) -> None:
    model.show([tweet(9), tweet(2), tweet(5)])
    assert model.seqs() == [9, 2, 5]


def test_emitting_a_signal_keeps_every_reference_to_true(model: Any) -> None:
    # PySide6 6.12.0's Signal.emit() dropped a reference to True on each call (Python
    # 3.11): relay-qt emits one per batch, and the process aborted within minutes.
    before = sys.getrefcount(True)
    for _ in range(3000):
        model.countChanged.emit()
    assert abs(sys.getrefcount(True) - before) < 100  # one lost per emit would be 3000
