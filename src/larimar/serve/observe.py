"""Operations: Prometheus metrics at /metrics and structured (JSON) logs, one line per request.

Metrics (prometheus-client, one registry per app):
    larimar_requests_total{method, route, status}   requests answered
    larimar_request_seconds{method, route}          latency histogram
    larimar_memories                                memories in the database (not deleted)
    larimar_facts                                   facts in them (not forgotten)
    larimar_ask_batch_size                          asks decoded together per decoder batch

`route` is the route's template (/memories/{memory_id}/ask), never a raw path, so ids and keys
stay out of the metrics; requests that match no route count as "unmatched".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access = logging.getLogger("larimar.serve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class StoreCollector(Collector):
    """Memories and facts, counted in the database at each scrape."""

    def __init__(self, count: Callable[[], tuple[int, int]]) -> None:
        self.count = count

    def collect(self) -> Iterator[GaugeMetricFamily]:
        memories, facts = self.count()
        yield GaugeMetricFamily("larimar_memories", "Memories in the database (not deleted).", value=memories)
        yield GaugeMetricFamily("larimar_facts", "Facts in the memories (not forgotten).", value=facts)


class Metrics:
    """The app's registry and its instruments."""

    def __init__(self, count: Callable[[], tuple[int, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("larimar_requests", "HTTP requests answered.", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("larimar_request_seconds", "HTTP request latency in seconds.", ["method", "route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.ask_batch = Histogram("larimar_ask_batch_size", "Asks decoded together in one decoder batch.",
                                   buckets=(1, 2, 4, 8, 16, 32), registry=self.registry)
        self.registry.register(StoreCollector(count))


class Observe:
    """ASGI middleware: count and time every HTTP request, and log it as one structured line."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            elapsed = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status[0])).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            access.info("request", extra={"method": method, "route": route, "status": status[0],
                                          "ms": round(1000 * elapsed, 2)})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any `extra` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        entry |= {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_json_logs(level: int = logging.INFO) -> logging.Handler:
    """Send the `larimar` loggers' records to stderr as JSON lines (what `larimar serve` does)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("larimar")
    for old in [h for h in root.handlers if isinstance(h.formatter, JsonFormatter)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    return handler
