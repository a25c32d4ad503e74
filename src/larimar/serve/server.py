"""Run the memory service with uvicorn (what `larimar serve` calls)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .config import ServeConfig

logger = logging.getLogger(__name__)

ADMIN_KEY_ENV = "LARIMAR_ADMIN_KEY"
"""Environment variable with the optional admin key (kept off the command line)."""


def serve(model: Path | None, db: Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the model once, open the database and serve until interrupted."""
    import uvicorn

    from .app import create_app

    config = ServeConfig(db=db, model=model, admin_key=os.environ.get(ADMIN_KEY_ENV) or None)
    app = create_app(config)
    logger.info("serving http://%s:%d (docs at /docs, page at /); database %s", host, port, db)
    uvicorn.run(app, host=host, port=port, log_level="warning")
