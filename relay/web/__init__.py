"""The one port and its transports: the listening socket and its timer sweep
(``listener.py``, the socket bound in ``sockets.py``), one connection over websockets'
sans-I/O protocol (``connection.py``: its request, answers on the raw transport, the
WebSocket transport once upgraded; its roles in ``roles.py``), WebSocket framing
(``ws_frames.py``), plain HTTP on the same port (``http_wire.py``), the server that routes
and authorises (``server.py``) and its record of each stream client (``clients.py``), the
object API and static routes (``routes.py``), response encoding (``encoding.py``) and the
metrics-only server (``ops.py``). Runs where clients are served.

May import: jobs (types of the stats sampler), stream, access, store, config, obs, core,
errors.
"""
