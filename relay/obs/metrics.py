"""The relay's counters, on a registry of its own so that several relays (tests) never clash."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

# A `_created` series per counter doubles what a scrape carries and no dashboard uses it.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    """Every counter the relay keeps; ``/metrics`` serves them in Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.lines = Counter("relay_lines", "Stream lines read, by kind", ["kind"], registry=r)
        self.malformed = Counter(
            "relay_malformed_lines",
            "Lines that were not X API payloads, by reason (not_json, not_object, no_data, "
            "bad_data, parse_error)",
            ["reason"],
            registry=r,
        )
        self.skipped = Counter(
            "relay_skipped_tweets",
            "Tweets left out of good payloads, by reason (not_object, no_id, no_text, unstorable)",
            ["reason"],
            registry=r,
        )
        self.stored = Counter("relay_tweets_stored", "Tweets stored (new ids)", registry=r)
        self.duplicates = Counter(
            "relay_duplicates_dropped", "Tweets dropped because the store had their id", registry=r
        )
        self.api_errors = Counter(
            "relay_stream_error_messages", "errors entries in stream payloads", registry=r
        )
        self.last_data = Gauge(
            "relay_last_data_timestamp_seconds", "When the source last sent a line", registry=r
        )
        self.head = Gauge("relay_head_seq", "The last seq published", registry=r)
        self.connections = Gauge(
            "relay_connections",
            "Open stream connections, by transport (websocket, sse)",
            ["transport"],
            registry=r,
        )
        self.frames_sent = Counter(
            "relay_frames_sent",
            "Frames (WebSocket frames, server-sent events) sent to clients, by transport",
            ["transport"],
            registry=r,
        )
        self.stream_writes = Counter(
            "relay_stream_writes",
            "Socket writes to clients (each carries every frame the publishes of one step, or "
            "of one coalescing window, had for one client)",
            registry=r,
        )
        self.bad_frames = Counter(
            "relay_bad_client_frames", "Client frames answered with an error", ["code"], registry=r
        )
        self.slow_consumers = Counter(
            "relay_slow_consumers_closed", "Connections closed with 4008", registry=r
        )
        self.refused = Counter(
            "relay_refused",
            "Connections, frames and requests refused, by reason",
            ["reason"],
            registry=r,
        )
        self.bad_forwarded_for = Counter(
            "relay_bad_forwarded_for",
            "Requests whose X-Forwarded-For entry for the client was not an IP address "
            "(counted by the socket address instead)",
            registry=r,
        )
        self.source_connects = Counter(
            "relay_source_connects", "Connections made to the X stream", registry=r
        )
        self.source_reconnects = Counter(
            "relay_source_reconnects",
            "X stream connections ended, by cause",
            ["cause"],
            registry=r,
        )
        self.backfill_pages = Counter(
            "relay_backfill_pages", "Recent-search pages fetched to fill gaps", registry=r
        )
        self.poll_pages = Counter(
            "relay_poll_pages", "Recent-search pages fetched by the x-poll source", registry=r
        )
        self.poll_failures = Counter(
            "relay_poll_failures",
            "Recent searches of the x-poll source that failed and wait for the next interval",
            ["cause"],
            registry=r,
        )
        self.job_failures = Counter(
            "relay_job_failures",
            "Periodic jobs (stats, retention) that failed, by job",
            ["job"],
            registry=r,
        )
        self.store_damaged = Counter(
            "relay_store_damaged",
            "Store reads and commits that found the store damaged (the process then stops: "
            "/readyz 503, exit 1)",
            registry=r,
        )
        self.retention_deleted = Counter(
            "relay_retention_deleted_tweets", "Tweets deleted by retention", registry=r
        )
        self.history_gone = Counter(
            "relay_history_start_frames",
            "Resumes from before the oldest kept tweet (told where history starts)",
            registry=r,
        )
        self.deleted = Counter(
            "relay_deletion_requests",
            "Deletion requests applied, by outcome (deleted, not_stored)",
            ["outcome"],
            registry=r,
        )
        self.closes = Counter(
            "relay_closes",
            "WebSocket connections ended, by close code and by who closed first (server, "
            "client, lost: no close frame)",
            ["code", "by"],
            registry=r,
        )
        self.sse_closes = Counter(
            "relay_sse_closes",
            "Server-sent event streams ended, by reason (the reason of their last event: "
            "shutdown, slow_consumer, expired, revoked...; client: the client went away)",
            ["reason"],
            registry=r,
        )
        self.delivery_latency = Histogram(
            "relay_delivery_latency_seconds",
            "From a line received to its tweet's frames handed to the client sockets, for the "
            "oldest tweet of each publish (clocks of two machines when ingest runs apart)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.rate_limited = Counter(
            "relay_source_rate_limited", "Recent searches the X API answered 429", registry=r
        )
        self.recovered = Counter(
            "relay_recovered_tweets", "Tweets sent from the store on resume", registry=r
        )
        self.http_requests = Counter(
            "relay_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        # The bus (relay/bus/redis.py); a tweet the bus misses is read from the store.
        self.bus_published = Counter(
            "relay_bus_published",
            "Entries added to the bus, by kind (tweet, heartbeat)",
            ["kind"],
            registry=r,
        )
        self.bus_dropped = Counter(
            "relay_bus_dropped",
            "Tweets never added to the bus, by reason (queue_full: Redis down or slow for "
            "too long; error: Redis refused the entry, e.g. out of memory; closed: at shutdown)",
            ["reason"],
            registry=r,
        )
        self.bus_refused = Counter(
            "relay_bus_refused_ids",
            "Tweets not added because the stream was already past their seq (a re-publish)",
            registry=r,
        )
        self.bus_malformed = Counter(
            "relay_bus_malformed_entries",
            "Bus entries read that were not ours, skipped",
            registry=r,
        )
        self.bus_reconnects = Counter(
            "relay_bus_reconnects",
            "Bus connections made again after a failure, by role",
            ["role"],
            registry=r,
        )
        self.bus_connected = Gauge(
            "relay_bus_connected", "1 when the bus answered the last operation", registry=r
        )

        # Scale-out: which process writes, how far a serving process trails the store.
        self.writer_active = Gauge(
            "relay_writer_active",
            "1 while this process is the active ingester (holds the writer lease), else 0",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "relay_store_commit_seconds",
            "Time from handing a batch to the store until it was committed",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.bus_lag = Gauge(
            "relay_bus_lag_seqs",
            "How many seqs this serving process's last published seq trails the store's head "
            "(or the ingester's last heartbeat)",
            registry=r,
        )
        self.bus_foreign = Counter(
            "relay_bus_foreign_entries",
            "Bus entries dropped because the store does not hold their seq",
            registry=r,
        )
        self.bus_filled = Counter(
            "relay_bus_filled_tweets",
            "Tweets a serving process read from the store because the bus did not bring them",
            registry=r,
        )

        # The archive: written by the active writer, its lag read from the store's cursor.
        self.archive_objects = Counter(
            "relay_archive_objects", "Objects written to the archive", registry=r
        )
        self.archive_tweets = Counter(
            "relay_archive_tweets", "Tweets written to the archive", registry=r
        )
        self.archive_bytes = Counter(
            "relay_archive_bytes", "Bytes (gzipped) written to the archive", registry=r
        )
        self.archive_failures = Counter(
            "relay_archive_failures",
            "Archive reads and writes that failed (each retried), by cause",
            ["cause"],
            registry=r,
        )
        self.archive_rewritten = Counter(
            "relay_archive_rewritten_objects",
            "Archive objects rewritten without tweets deleted since they were written",
            registry=r,
        )
        self.archive_lag = Gauge(
            "relay_archive_lag_tweets",
            "Committed tweets not yet archived (the store's head past the archive's cursor)",
            registry=r,
        )
        self.archive_lag_seconds = Gauge(
            "relay_archive_lag_seconds",
            "How long the oldest tweet not yet archived has waited (0 when none)",
            registry=r,
        )
        self.retention_waiting = Gauge(
            "relay_retention_waiting_for_archive_tweets",
            "Tweets retention would delete but keeps because they are not archived yet",
            registry=r,
        )

    def total(self, name: str) -> float:
        """A metric's value summed over its labels (0 when it has none yet)."""
        return sum(
            sample.value
            for metric in self.registry.collect()
            for sample in metric.samples
            if sample.name == name
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
