"""HTTP service over the editing API: persistent, per-memory-keyed memories with an audit log.

Example:
    >>> from larimar.serve import ServeConfig, create_app
    >>> app = create_app(ServeConfig(db="memories.db", model="path/to/model"))
    >>> # uvicorn.run(app, host="127.0.0.1", port=8000)   # or: larimar serve --model PATH
"""

from .app import create_app
from .config import Limits, ServeConfig

__all__ = ["Limits", "ServeConfig", "create_app"]
