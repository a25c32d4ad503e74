"""`larimar <subcommand>`: parse arguments, call the Python API, print.

    larimar demo [--model PATH]
    larimar write FACT... --memory FILE [--model PATH]
    larimar ask QUESTION [--memory FILE] [--model PATH] [--max-new-tokens N] [--threshold T]
    larimar ask QUESTION --context FILE [--fan-out F] [--keep K] [--model PATH]
    larimar forget ID --memory FILE [--model PATH]
    larimar facts --memory FILE
    larimar serve [--model PATH] [--db PATH|postgresql://...] [--host 127.0.0.1] [--port 8000]
                  [--snapshot-every 100] [--snapshot-seconds 60]
    larimar train --config configs/train/NAME.yaml [--max-steps N] [--max-minutes M]
    larimar corpus [--out runs/corpus]
    larimar copy-eval --model PATH [--corpus runs/corpus]
    larimar eval PROTOCOL --editor NAME --data PATH [--limit N] [--out DIR] [--model PATH] ...
    larimar ask-eval {questions,edits} --data PATH [--limit N] [--sizes 100] [--out FILE]

Each subcommand is a pair (add_arguments, run) in `COMMANDS`; add new ones there. Errors in
user input print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .memory import MemoryInputError

if TYPE_CHECKING:
    from .editing import Answer, Larimar
    from .editing.longcontext import LongAnswer

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
    parser.add_argument("prompt", help="a question, answered in the decoder's chat format")
    _add_memory(parser, required=False)
    _add_model(parser)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate at most")
    parser.add_argument("--threshold", type=float, default=None,
                        help="scope threshold: a probability with a trained scope detector (the built-in "
                             "model's, default 0.5), else a cosine similarity")
    parser.add_argument("--context", type=Path, default=None,
                        help="answer from this text file by recursive memory search (instead of --memory)")
    parser.add_argument("--fan-out", type=int, default=None, help="--context: sentences per memory (default 16)")
    parser.add_argument("--keep", type=int, default=None, help="--context: readouts kept per memory (default 1)")


def ask_context(model: Path | None, context_file: Path, question: str, max_new_tokens: int,
                fan_out: int | None, keep: int | None) -> LongAnswer:
    """The model's answer to `question` from the text in `context_file` (recursive memory search)."""
    from .editing.longcontext import DEFAULT_FAN_OUT, DEFAULT_KEEP, SearchConfig

    config = SearchConfig(fan_out=DEFAULT_FAN_OUT if fan_out is None else fan_out,
                          keep=DEFAULT_KEEP if keep is None else keep)  # validate before loading the model
    context = context_file.read_text(encoding="utf-8")
    return _load(model).answer(question, context, config.fan_out, config.keep, max_new_tokens)


def _run_ask(args: argparse.Namespace) -> None:
    if args.context is not None:
        if args.memory is not None:
            raise ValueError("--context and --memory cannot be combined; pass one of them")
        long = ask_context(args.model, args.context, args.prompt, args.max_new_tokens, args.fan_out, args.keep)
        print(long.text.strip())
        print(f"[{len(long.chunks)} chunks; {len(long.levels)} levels; best chunk: {long.best_chunk!r}; "
              f"{long.seconds:.2f} s]", file=sys.stderr)
        return
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


# --------------------------------------------------------------------------------- train
def _train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="training config (YAML), e.g. configs/train/cpu-lora.yaml")
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--max-steps", type=int, default=None, help="override loop.max_steps")
    parser.add_argument("--max-minutes", type=float, default=None, help="override loop.max_minutes")
    parser.add_argument("--no-resume", action="store_true", help="ignore checkpoints in the output folder")
    parser.add_argument("--stage", choices=("all", "model", "scope"), default="all",
                        help="what to run: the model then the scope detector (all), or one of them")


def _run_train(args: argparse.Namespace) -> None:
    from .train.config import TrainConfig

    logging.getLogger("larimar").setLevel(logging.INFO)
    config = TrainConfig.from_yaml(args.config)
    if args.output_dir:
        config.output_dir = args.output_dir
    if args.max_steps:
        config.loop.max_steps = args.max_steps
    if args.max_minutes is not None:
        config.loop.max_minutes = args.max_minutes
    if args.stage in ("all", "model"):
        _train_model(config, resume=not args.no_resume)
    if args.stage in ("all", "scope") and config.scope.data is not None:
        _train_scope(config)
    elif args.stage == "scope":
        raise SystemExit("error: the config has no scope.data (the CounterFact train file the detector is fitted on)")


def _train_model(config: Any, resume: bool) -> None:
    from .train.trainer import Trainer

    if config.uses_cached_states:
        from .train.fusion import FusionTrainer

        result = FusionTrainer(config).train(resume=resume)
    else:
        result = Trainer(config).train(resume=resume)
    state = "finished" if result.finished else "stopped (run again to resume)"
    print(f"{state} at step {result.step}; outputs in {result.output_dir}")
    if result.last_validation:
        print(", ".join(f"{k}={v:.4g}" for k, v in result.last_validation.items()))


def _train_scope(config: Any) -> None:
    from .model import LarimarModel
    from .train.scope import SCOPE_FILE, train_scope

    model = LarimarModel.from_config(config.model)  # the detector uses its frozen encoder and tokenizer
    report = train_scope(config.scope, model.encoder, model.tokenizer, config.output_dir, config.seed)
    v = report["validation"]
    print(f"scope detector: validation accuracy {v['accuracy']['all']:.4f} (a cosine threshold of "
          f"{v['cosine_threshold']}: {v['cosine_accuracy']['all']:.4f}); wrote {Path(config.output_dir) / SCOPE_FILE}")


def _export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="the training config (YAML) of the run")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="a checkpoint-STEP folder of that run (default: the config's export.checkpoint)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="a trained weights file to export instead of the checkpoint's (e.g. a model "
                             "folder's larimar_weights.safetensors, to re-export it with this config)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the loadable model")
    parser.add_argument("--readout-scale", type=float, default=None, help="override the model's readout_scale")
    parser.add_argument("--sequence-size", type=int, default=None,
                        help="add a sequence channel of this width (default: the config's export.sequence_size)")


def _run_export(args: argparse.Namespace) -> None:
    from .model import LarimarModel
    from .train.config import TrainConfig
    from .train.scope import SCOPE_FILE
    from .train.trainer import WEIGHTS_FILE

    config = TrainConfig.from_yaml(args.config)
    checkpoint = args.checkpoint
    if args.weights is not None:
        weights = args.weights
        if not weights.is_file():
            raise SystemExit(f"error: no weights file at {weights}")
    else:
        if checkpoint is None:
            if config.export.checkpoint is None:
                raise SystemExit("error: pass --checkpoint (the config names no export.checkpoint)")
            checkpoint = Path(config.output_dir) / f"checkpoint-{config.export.checkpoint:07d}"
        weights = checkpoint / WEIGHTS_FILE
        if not weights.is_file():
            raise SystemExit(f"error: no {WEIGHTS_FILE} in {checkpoint}; pass a checkpoint-STEP folder")
    scope = None
    if config.scope.data is not None:
        scope_file = Path(config.output_dir) / SCOPE_FILE
        if not scope_file.is_file():
            raise SystemExit(f"error: no {scope_file}; run `larimar train --config {args.config} --stage scope` first")
        scope = json.loads(scope_file.read_text())["scope"]
    if args.sequence_size is not None:
        if args.sequence_size < 0:
            raise SystemExit("error: --sequence-size must be >= 0")
        config.export.sequence_size = args.sequence_size
    model_config = config.export.model_config(config.model, scope)
    if args.readout_scale is not None:
        if args.readout_scale <= 0:
            raise SystemExit("error: --readout-scale must be > 0")
        model_config.readout_scale = args.readout_scale
    model = LarimarModel.from_config(model_config)
    model.load_trained(weights)
    model.save_pretrained(args.out)
    print(f"saved a loadable model to {args.out}")


# --------------------------------------------------------------------------------- corpus
def _corpus_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/corpus"), help="output folder")
    parser.add_argument("--no-wordnet", action="store_true", help="Wikipedia lead sentences only")
    parser.add_argument("--heldout-fraction", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)


def _run_corpus(args: argparse.Namespace) -> None:
    from .train.corpus import CorpusConfig, build_corpus

    config = CorpusConfig(output_dir=args.out, heldout_fraction=args.heldout_fraction, seed=args.seed,
                          wordnet_dir=None if args.no_wordnet else CorpusConfig.wordnet_dir)
    stats = build_corpus(config)
    print(f"{stats.train} training and {stats.heldout} held-out sentences in {args.out} ({stats.seconds:.1f} s)")
    for source, n in sorted(stats.per_source.items(), key=lambda kv: -kv[1]):
        print(f"  {source}: {n}")


# --------------------------------------------------------------------------------- copy-eval
def _copy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="folder of a saved Larimar model")
    parser.add_argument("--corpus", type=Path, default=Path("runs/corpus"), help="corpus folder (uses heldout.jsonl)")
    parser.add_argument("--limit", type=int, default=500, help="held-out sentences to use")
    parser.add_argument("--episode-size", type=int, default=1, help="sentences written per memory")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")


def _run_copy(args: argparse.Namespace) -> None:

    from .model import LarimarModel
    from .train.corpus import HELDOUT_FILE, load_sentences
    from .train.validate import copy_accuracy, heldout_losses
    from .train.data import Collator

    model = LarimarModel.from_pretrained(args.model)
    sentences = load_sentences(args.corpus / HELDOUT_FILE)[: args.limit]
    copy = copy_accuracy(model, sentences, episode_size=args.episode_size)
    lexical = model.encoder.lexical if model.encoder.lexical_head is not None else None
    sequence = model.encoder.sequence if model.encoder.sequence_size else None
    collate = Collator(model.encoder.tokenizer, model.tokenizer, 16, 48, lexical=lexical, sequence=sequence)
    losses = heldout_losses(model, sentences, collate, 16)
    result = {"copy_accuracy": copy.with_memory, "copy_accuracy_without_memory": copy.without_memory,
              "sentences": copy.n, "episode_size": copy.episode_size, **losses}
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


# --------------------------------------------------------------------------------- serve
def _serve_args(parser: argparse.ArgumentParser) -> None:
    _add_model(parser)
    parser.add_argument("--db", default="larimar.db",
                        help="SQLite database file of memories and their fact log (created if missing), or "
                             "postgresql://user:password@host/dbname for a database several servers share")
    parser.add_argument("--snapshot-every", type=int, default=None,
                        help="store a memory's whole state after this many changes (default 100); "
                             "each change in between stores only its log entry")
    parser.add_argument("--snapshot-seconds", type=float, default=None,
                        help="also store it once its oldest change not yet in a snapshot is this many seconds "
                             "old (default 60; 0: only every --snapshot-every changes)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")


def _run_serve(args: argparse.Namespace) -> None:
    from .serve.server import serve
    from .serve.storage import describe

    print(f"larimar serve: loading the model, then serving http://{args.host}:{args.port} "
          f"(API docs at /docs, web page at /; database {describe(args.db)})", file=sys.stderr)
    serve(args.model, args.db, args.host, args.port, snapshot_every=args.snapshot_every,
          snapshot_seconds=args.snapshot_seconds)


# --------------------------------------------------------------------------------- eval
def _eval_args(parser: argparse.ArgumentParser) -> None:
    from .cliargs import add_options
    from .eval.config import EvalConfig

    add_options(parser, EvalConfig)
    parser.add_argument("--verbose", action="store_true", help="log progress details")


def _run_eval(args: argparse.Namespace) -> None:
    from .cliargs import from_options
    from .eval.runner import EvalConfig, run_eval, summary_markdown, tqdm_track

    logging.getLogger("larimar").setLevel(logging.INFO if args.verbose else logging.WARNING)
    cfg = from_options(EvalConfig, args)
    run_eval(cfg, track=tqdm_track)
    print(summary_markdown(cfg), end="")
    print(f"results in {cfg.out_dir}", file=sys.stderr)


# --------------------------------------------------------------------------------- ask-eval
def _ask_eval_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("benchmark", choices=["questions", "edits"],
                        help="questions: the natural-question benchmark (benchmarks/questions/questions.json); "
                             "edits: CounterFact or zsRE cases, each written alone (--sequential: all into one "
                             "memory) and asked through ask")
    parser.add_argument("--data", type=Path, required=True, help="the benchmark file")
    parser.add_argument("--limit", type=int, default=None, help="first N facts or cases")
    parser.add_argument("--offset", type=int, default=0, help="edits: skip the first K cases (shards of one run)")
    parser.add_argument("--sizes", default="100", help="questions: facts in one memory, comma-separated")
    parser.add_argument("--forget", type=int, default=50, help="questions: facts forgotten in the forget row")
    parser.add_argument("--sequential", action="store_true",
                        help="edits: write every case into one memory, one after another, then ask every one")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens per reply at most")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    _add_model(parser)


def _run_ask_eval(args: argparse.Namespace) -> None:
    from .eval.datasets import load_cases
    from .eval.questions import evaluate_edits_by_ask, evaluate_questions, format_questions, load_questions

    lm = _load(args.model)
    if args.benchmark == "questions":
        sizes = tuple(int(s) for s in args.sizes.split(",") if s.strip())
        report = evaluate_questions(lm, load_questions(args.data, args.limit), sizes, args.forget, args.max_new_tokens)
        print(format_questions(report))
    else:
        if args.offset < 0:
            raise SystemExit("--offset must be >= 0")
        limit = None if args.limit is None else args.offset + args.limit
        report = evaluate_edits_by_ask(lm, load_cases(args.data, limit=limit)[args.offset :], args.max_new_tokens,
                                       sequential=args.sequential)
        report["offset"] = args.offset
        print(f"| cases | rewrite (answer in reply) | paraphrase | locality unchanged |\n|---:|---:|---:|---:|\n"
              f"| {report['cases']} | {report['rewrite']:.3f} | {report['paraphrase']:.3f} | "
              f"{report['locality_unchanged']:.3f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")


COMMANDS: dict[str, tuple[str, AddArguments, Run]] = {
    "demo": ("teach the model facts, ask questions about them, forget, with timings", _demo_args, _run_demo),
    "write": ("write facts into a memory file", _write_args, _run_write),
    "ask": ("answer a question, using a memory file when in scope", _ask_args, _run_ask),
    "forget": ("forget a fact of a memory file by its id", _forget_args, _run_forget),
    "facts": ("list the facts of a memory file", _facts_args, _run_facts),
    "serve": ("serve memories over HTTP (persistent, per-memory API keys, audit log)", _serve_args, _run_serve),
    "train": ("train a Larimar model from a YAML config (resumes from checkpoints)", _train_args, _run_train),
    "export": ("turn a training checkpoint into a loadable model folder", _export_args, _run_export),
    "corpus": ("build the training corpus from offline Wikipedia and WordNet text", _corpus_args, _run_corpus),
    "copy-eval": ("measure whether the decoder reads its memory (copy accuracy, loss ratio)", _copy_args, _run_copy),
    "eval": ("evaluate an editor with a protocol on a dataset (tables, plots, JSONL)", _eval_args, _run_eval),
    "ask-eval": ("judge the replies of ask: natural questions, or CounterFact / zsRE edits", _ask_eval_args,
                 _run_ask_eval),
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
