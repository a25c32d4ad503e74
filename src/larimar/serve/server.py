"""Run the memory service with uvicorn (what `larimar serve` calls)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import ServeConfig

logger = logging.getLogger(__name__)

ADMIN_KEY_ENV = "LARIMAR_ADMIN_KEY"
"""Environment variable with the optional admin key (kept off the command line)."""


def serve(model: Path | None, db: str | Path, host: str = "127.0.0.1", port: int = 8000,
          snapshot_every: int | None = None, json_logs: bool = True, snapshot_seconds: float | None = None) -> None:
    """Open the database, load the model once and serve until interrupted.

    `db` is a SQLite file path or a `postgresql://` URL; anything else raises `DatabaseError`.
    Logs go to stderr as JSON lines (one per request too) unless `json_logs` is False.
    """
    import uvicorn

    from .app import create_app
    from .observe import configure_json_logs
    from .storage import describe

    if json_logs:
        configure_json_logs()
    extra: dict[str, float] = {} if snapshot_every is None else {"snapshot_every": snapshot_every}
    if snapshot_seconds is not None:
        extra["snapshot_seconds"] = snapshot_seconds
    config = ServeConfig(db=db, model=model, admin_key=os.environ.get(ADMIN_KEY_ENV) or None, **extra)
    app = create_app(config)
    logger.info("serving http://%s:%d (docs at /docs, page at /, metrics at /metrics); database %s",
                host, port, describe(db))
    uvicorn.run(app, host=host, port=port, log_level="warning")
