"""The list model the QML view binds to: a thin Qt skin over :class:`TweetList`.

It says each change to the view as Qt wants it said (``beginInsertRows`` before the rows
exist, ``endInsertRows`` after) and adds nothing of its own: which rows, in which order,
how many, is the pure list's business. ``flush`` is the batch: the rows waiting go in
at the top in one insertion, then the oldest past ``keep`` go out in one removal.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QModelIndex,
    QPersistentModelIndex,
    Qt,
    Signal,
)

from client_demo.qt.feed import KEEP, Row, TweetList, row_of

ROLES = {
    Qt.ItemDataRole.UserRole + 1: "seq",
    Qt.ItemDataRole.UserRole + 2: "tweetId",
    Qt.ItemDataRole.UserRole + 3: "author",
    Qt.ItemDataRole.UserRole + 4: "text",
    Qt.ItemDataRole.UserRole + 5: "time",
    Qt.ItemDataRole.UserRole + 6: "media",
    Qt.ItemDataRole.UserRole + 7: "rules",
    Qt.ItemDataRole.UserRole + 8: "rightToLeft",
}
FIELDS = {
    "seq": "seq",
    "tweetId": "tweet_id",
    "author": "author",
    "text": "text",
    "time": "time",
    "media": "media",
    "rules": "rules",
    "rightToLeft": "right_to_left",
}
Index = QModelIndex | QPersistentModelIndex


class TweetModel(QAbstractListModel):
    """Newest first. ``countChanged`` follows every change of the number of rows."""

    countChanged = Signal()

    def __init__(self, keep: int = KEEP, parent: Any = None) -> None:
        super().__init__(parent)
        self.tweets = TweetList(keep)

    # -- what the view reads ----------------------------------------------------------

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.tweets.rows)

    def roleNames(self) -> dict[int, QByteArray]:
        return {role: QByteArray(name.encode()) for role, name in ROLES.items()}

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self.tweets.rows):
            return None
        row = self.tweets.rows[index.row()]
        name = ROLES.get(role)
        if name is None:
            return row.text if role == Qt.ItemDataRole.DisplayRole else None
        return getattr(row, FIELDS[name])

    def seqs(self) -> list[int]:
        """The seqs shown, top to bottom (newest first)."""
        return [row.seq for row in self.tweets.rows]

    # -- what the stream does to it ---------------------------------------------------

    def receive(self, tweet: dict[str, Any]) -> bool:
        """A live tweet: shown at the next :meth:`flush`."""
        return self.tweets.receive(tweet)

    def flush(self) -> int:
        """Insert the tweets waiting, in one batch; the number of rows inserted."""
        batch = self.tweets.take_batch()
        if not batch:
            return 0
        self.beginInsertRows(QModelIndex(), 0, len(batch) - 1)
        self.tweets.insert(batch)
        self.endInsertRows()
        self._trim()
        self.countChanged.emit()
        return len(batch)

    def start(self, epoch: str, history: list[dict[str, Any]], head: int) -> None:
        """A channel opened with its stored tweets; the stream goes on after them."""
        self.beginResetModel()
        self.tweets.start(epoch, history, head)
        self.endResetModel()
        self.countChanged.emit()

    def show(self, tweets: list[dict[str, Any]]) -> None:
        """Rows as they are, in the order given (search results)."""
        self.beginResetModel()
        self.tweets.rows = [row_of(tweet) for tweet in tweets]
        self.tweets.pending.clear()
        self.endResetModel()
        self.countChanged.emit()

    def subscribed(self, epoch: str, seq: int) -> None:
        self.tweets.subscribed(epoch, seq)

    def reset(self, epoch: str, seq: int) -> None:
        """The relay's store changed: nothing held names its tweets any more."""
        self.beginResetModel()
        self.tweets.reset(epoch, seq)
        self.endResetModel()
        self.countChanged.emit()

    def delete(self, tweet_id: str) -> bool:
        """The relay deleted a tweet: its row goes (a waiting one never shows)."""
        index = self.tweets.index_of(tweet_id)
        if index is None:
            return False
        self.beginRemoveRows(QModelIndex(), index, index)
        del self.tweets.rows[index]
        self.endRemoveRows()
        self.countChanged.emit()
        return True

    def set_keep(self, keep: int) -> None:
        self.tweets.set_keep(keep)
        if self._trim():
            self.countChanged.emit()

    def _trim(self) -> int:
        drop = self.tweets.overflow()
        if drop:
            first = len(self.tweets.rows) - drop
            self.beginRemoveRows(QModelIndex(), first, len(self.tweets.rows) - 1)
            self.tweets.trim()
            self.endRemoveRows()
        return drop

    def row(self, index: int) -> Row:
        return self.tweets.rows[index]
