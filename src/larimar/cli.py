"""`larimar <subcommand>`: parse arguments, call the Python API, print.

    larimar demo [--model PATH]
    larimar write FACT... --memory FILE [--model PATH]
    larimar ask PROMPT [--memory FILE] [--model PATH] [--max-new-tokens N] [--threshold T]
    larimar forget ID --memory FILE [--model PATH]
    larimar facts --memory FILE

Each subcommand is a pair (add_arguments, run) in `COMMANDS`; add new ones there. Errors in
user input print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .memory import MemoryInputError

if TYPE_CHECKING:
    from .editing import Answer, Larimar

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], None]

USER_ERRORS = (ValueError, KeyError, FileNotFoundError, IsADirectoryError, PermissionError, MemoryInputError)


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers / huggingface_hub in the CLI."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="folder of a saved Larimar model (default: the built-in model)")


def _add_memory(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--memory", type=Path, required=required, help="memory file (safetensors)")


def _load(model: Path | None) -> Larimar:
    """The model at `model`, or the built-in one (imported lazily: `--help` stays fast)."""
    from .editing import load

    return load(model)


# --------------------------------------------------------------------------------- write
def write(model: Path | None, memory_file: Path, facts: list[str]) -> list[str]:
    """Write facts into the memory file (created if missing); returns their ids."""
    lm = _load(model)
    memory = lm.load_memory(memory_file) if memory_file.exists() else lm.new_memory()
    ids = memory.write(facts)
    memory.save(memory_file)
    return ids


def _write_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("facts", nargs="+", metavar="FACT", help="sentences to write, e.g. 'The Eiffel Tower is in Rome.'")
    _add_memory(parser)
    _add_model(parser)


def _run_write(args: argparse.Namespace) -> None:
    for fact_id, fact in zip(write(args.model, args.memory, args.facts), args.facts):
        print(f"{fact_id}\t{fact}")


# --------------------------------------------------------------------------------- ask
def ask(model: Path | None, memory_file: Path | None, prompt: str, max_new_tokens: int, threshold: float | None) -> Answer:
    """The model's answer to `prompt`, using the memory file when the query is in scope."""
    lm = _load(model)
    memory = None if memory_file is None else lm.load_memory(memory_file)
    return lm.ask(prompt, memory, max_new_tokens=max_new_tokens, scope_threshold=threshold)


def _ask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="a question or the start of a sentence")
    _add_memory(parser, required=False)
    _add_model(parser)
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate at most")
    parser.add_argument("--threshold", type=float, default=None, help="scope threshold (cosine similarity)")


def _run_ask(args: argparse.Namespace) -> None:
    answer = ask(args.model, args.memory, args.prompt, args.max_new_tokens, args.threshold)
    print(answer.text.strip())
    similarity = "-" if answer.similarity is None else f"{answer.similarity:.3f}"
    scope = "in scope" if answer.in_scope else "out of scope"
    print(f"[{scope}; nearest fact {answer.fact_id or '-'}; similarity {similarity}]", file=sys.stderr)


# --------------------------------------------------------------------------------- forget
def forget(model: Path | None, memory_file: Path, fact_id: str) -> None:
    """Forget one fact of the memory file and save it."""
    lm = _load(model)
    memory = lm.load_memory(memory_file)
    memory.forget(fact_id)
    memory.save(memory_file)


def _forget_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("fact_id", metavar="ID", help="id printed by `larimar write` or `larimar facts`")
    _add_memory(parser)
    _add_model(parser)


def _run_forget(args: argparse.Namespace) -> None:
    forget(args.model, args.memory, args.fact_id)
    print(f"forgot {args.fact_id}")


# --------------------------------------------------------------------------------- facts
def _facts_args(parser: argparse.ArgumentParser) -> None:
    _add_memory(parser)
    _add_model(parser)  # accepted for symmetry; the fact log is read without the model


def _run_facts(args: argparse.Namespace) -> None:
    from .editing.persistence import read_facts

    for fact in read_facts(args.memory):
        print(f"{fact.id}\t{fact.created.isoformat(timespec='seconds')}\t{fact.text}")


# --------------------------------------------------------------------------------- demo
def _demo_args(parser: argparse.ArgumentParser) -> None:
    _add_model(parser)
    parser.add_argument("--max-new-tokens", type=int, default=12, help="tokens per answer")


def _run_demo(args: argparse.Namespace) -> None:
    from .editing.demo import run_demo

    run_demo(args.model, args.max_new_tokens)


COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {
    "demo": ("teach the model counterfactual facts, ask, forget, with timings", _demo_args, _run_demo),
    "write": ("write facts into a memory file", _write_args, _run_write),
    "ask": ("answer a prompt, using a memory file when in scope", _ask_args, _run_ask),
    "forget": ("forget a fact of a memory file by its id", _forget_args, _run_forget),
    "facts": ("list the facts of a memory file", _facts_args, _run_facts),
}
"""Subcommand name -> (help, add_arguments, run)."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand of `COMMANDS`."""
    parser = argparse.ArgumentParser(prog="larimar", description="Teach a language model facts and make it forget them.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `larimar` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    _quiet_transformers()
    try:
        args.run(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"larimar {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
