"""``relay-qt``: the desktop demo client, Qt Quick on PySide6 (the ``[qt]`` extra).

Like every demo client it speaks only the public protocol and imports nothing of the
relay. The pure parts (:mod:`.feed`, :mod:`.events`) need no Qt; :mod:`.model`,
:mod:`.link`, :mod:`.session` and :mod:`.app` do.
"""
