"""The ingest side: source -> parse -> store -> bus. The pipeline (``pipeline.py``) reads a
source's lines, parses them (large batches in the parser process, ``parse_pool.py`` and
``parse_worker.py``), appends them through the store's writer and publishes each commit to
the bus, never to the hub. ``finished.py`` is the end-of-replay summary. Runs in
``relay run`` and ``relay ingest``.

May import: sources, store, obs, config, core, errors. Never the stream side (a contract).
"""
