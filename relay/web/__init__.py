"""The one port: the listening socket and its timer sweep (``listener.py``), one
WebSocket connection over websockets' sans-I/O protocol (``connection.py``), plain HTTP
on the same port (``http_wire.py``), the server that routes and authorises
(``server.py``), the object API and static routes (``routes.py``), response encoding
(``encoding.py``) and the metrics-only server (``ops.py``). Runs where clients are served.

May import: jobs (types of the stats sampler), stream, access, store, config, obs, core,
errors.
"""
