"""Service settings and the `larimar serve` command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from larimar.cli import COMMANDS, build_parser
from larimar.serve import Limits, ServeConfig


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="Limits.max_batch must be a positive integer"):
        Limits(max_batch=0)


def test_admin_key_must_be_long() -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServeConfig(admin_key="short")


def test_serve_command_defaults_to_loopback() -> None:
    assert "serve" in COMMANDS
    args = build_parser().parse_args(["serve"])
    assert (args.model, args.db, args.host, args.port) == (None, "larimar.db", "127.0.0.1", 8000)
    args = build_parser().parse_args(["serve", "--model", "m", "--db", "x.db", "--port", "9000"])
    assert (args.model, args.db, args.port) == (Path("m"), "x.db", 9000)
