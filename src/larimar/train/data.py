"""Episodes of sentences for training: what is written, how it is queried, what is decoded.

Every random choice comes from a generator seeded by (seed, epoch) or (seed, step), so a run
that resumes from a checkpoint sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..model.larimar import EpisodeBatch, TextBatch
from ..model.text import split_last_word

QUERY_FORMS = ("minus_last_word", "prefix", "full")


@dataclass
class DataConfig:
    """How sentences become training episodes."""

    corpus: str = "runs/corpus"
    """Folder with train.jsonl / heldout.jsonl (built by `larimar corpus` if missing)."""
    episode_size: int = 16
    """E: sentences written into one memory."""
    episodes_per_batch: int = 1
    """B: episodes (memories) per optimiser micro-batch."""
    max_tokens: int = 48
    """Decoder and encoder tokens kept per sentence."""
    max_sentences: int | None = None
    """Use only the first N training sentences (the corpus is already shuffled)."""
    swap_last_word: float = 0.5
    """Share of written sentences whose last word is replaced by another sentence's, so the
    decoder must copy it from memory instead of guessing it."""
    query_forms: dict[str, float] = field(default_factory=lambda: {"minus_last_word": 0.5, "prefix": 0.25, "full": 0.25})
    """Probabilities of the query forms: the sentence minus its last word, a prefix of at
    least half its words, or the whole sentence."""
    bucket_batches: int = 50
    """Length bucketing: sort this many batches' worth of sentences by length, then batch."""

    def __post_init__(self) -> None:
        if self.episode_size < 1 or self.episodes_per_batch < 1:
            raise ValueError("episode_size and episodes_per_batch must be >= 1")
        if not 0.0 <= self.swap_last_word <= 1.0:
            raise ValueError(f"swap_last_word is a probability; got {self.swap_last_word}")
        unknown = set(self.query_forms) - set(QUERY_FORMS)
        if unknown:
            raise ValueError(f"query_forms may name {QUERY_FORMS}; got {sorted(unknown)}")
        if sum(self.query_forms.values()) <= 0:
            raise ValueError("query_forms probabilities must not all be zero")


def swap_last_word(sentence: str, donor: str) -> str:
    """The sentence with its last word replaced by the donor sentence's last word."""
    head, _, tail = split_last_word(sentence)
    word = split_last_word(donor)[1]
    return f"{head} {word}{tail}" if head and word else sentence


def make_query(sentence: str, form: str, rng: random.Random) -> str:
    """A partial form of the sentence used to read the memory."""
    if form == "full":
        return sentence
    if form == "minus_last_word":
        head = split_last_word(sentence)[0]
        return head or sentence
    words = sentence.split()
    keep = rng.randint(max(1, (len(words) + 1) // 2), len(words))
    return " ".join(words[:keep])


@dataclass
class Example:
    """One written sentence and the query that reads it back."""

    written: str
    query: str


def make_examples(sentences: list[str], config: DataConfig, rng: random.Random) -> list[Example]:
    """Apply last-word swaps and pick a query form for each sentence."""
    forms = list(config.query_forms)
    probs = [config.query_forms[f] for f in forms]
    out = []
    for sentence in sentences:
        written = sentence
        if rng.random() < config.swap_last_word:
            written = swap_last_word(sentence, sentences[rng.randrange(len(sentences))])
        out.append(Example(written, make_query(written, rng.choices(forms, probs)[0], rng)))
    return out


class EpisodeStream:
    """Endless, deterministic stream of batches of episodes over a list of sentences.

    Args:
        sentences: training sentences.
        config: episode shape and augmentation.
        seed: base seed; epoch e uses seed + e for its shuffle.
        length: a function giving a sentence's token count, for length bucketing.
    """

    def __init__(self, sentences: list[str], config: DataConfig, seed: int, length: Any) -> None:
        per_batch = config.episode_size * config.episodes_per_batch
        if len(sentences) < per_batch:
            raise ValueError(f"need at least {per_batch} sentences for one batch; got {len(sentences)}")
        self.sentences = sentences
        self.config = config
        self.seed = seed
        self.length = length
        self.per_batch = per_batch

    def epoch_batches(self, epoch: int) -> list[list[Example]]:
        """All batches of one epoch, length-bucketed and shuffled."""
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = self.sentences[:]
        rng.shuffle(order)
        pool = self.per_batch * self.config.bucket_batches
        batches = []
        for start in range(0, len(order) - self.per_batch + 1, pool):
            chunk = sorted(order[start : start + pool], key=self.length)
            batches += [chunk[i : i + self.per_batch] for i in range(0, len(chunk) - self.per_batch + 1, self.per_batch)]
        rng.shuffle(batches)
        return [make_examples(batch, self.config, rng) for batch in batches]

    def __iter__(self) -> Iterator[tuple[int, int, list[Example]]]:
        """Yields (epoch, index in epoch, batch) forever."""
        return self.iterate_from(0, 0)

    def iterate_from(self, epoch: int, index: int) -> Iterator[tuple[int, int, list[Example]]]:
        """Resume the stream at a given position."""
        while True:
            batches = self.epoch_batches(epoch)
            for i in range(index, len(batches)):
                yield epoch, i, batches[i]
            epoch, index = epoch + 1, 0


class PooledCache:
    """Pooled states of a frozen encoder body, computed once per distinct text.

    With the body frozen only the latent head trains, so a text's pooled state never changes
    and need not be recomputed when the text comes back (another epoch, a query form).
    """

    def __init__(self, encoder: Any, batch_size: int = 64, max_items: int = 1_000_000) -> None:
        self.encoder = encoder
        self.batch_size = batch_size
        self.max_items = max_items
        self.store: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(N, H) pooled states, on the encoder's device; new texts are kept while there is room."""
        missing = list(dict.fromkeys(t for t in texts if t not in self.store))
        fresh: dict[str, torch.Tensor] = {}
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            batch = self.encoder.tokenize(chunk)
            fresh.update(zip(chunk, self.encoder.pool(batch["input_ids"], batch["attention_mask"]).cpu()))
        if len(self.store) + len(fresh) <= self.max_items:
            self.store.update(fresh)
        rows = [self.store[t] if t in self.store else fresh[t] for t in texts]
        return torch.stack(rows).to(self.encoder.head.weight.device)


class Collator:
    """Tokenises a list of examples into an `EpisodeBatch`.

    Args:
        encoder_tokenizer: tokenizer of the encoder.
        decoder_tokenizer: tokenizer of the decoder (its eos ends every target).
        episode_size: E.
        max_tokens: tokens kept per text.
        pooled_lookup: optional function texts -> (N, H) pooled states of a frozen encoder;
            when given, encoder inputs are passed as pooled states instead of token ids.
        lexical: the encoder's `lexical` method when it has a lexical channel, else None.
        sequence: the encoder's `sequence` method when it has a sequence channel, else None.
    """

    def __init__(self, encoder_tokenizer: Any, decoder_tokenizer: Any, episode_size: int, max_tokens: int,
                 pooled_lookup: Any = None, lexical: Any = None, sequence: Any = None) -> None:
        self.lexical = lexical
        self.sequence = sequence
        self.enc = encoder_tokenizer
        self.dec = decoder_tokenizer
        self.episode_size = episode_size
        self.max_tokens = max_tokens
        self.pooled_lookup = pooled_lookup

    def _encoder_batch(self, texts: list[str]) -> TextBatch:
        lex_ids, lex_mask = self.lexical(texts) if self.lexical is not None else (None, None)
        seq = self.sequence(texts) if self.sequence is not None else None
        if self.pooled_lookup is not None:
            return TextBatch(pooled=self.pooled_lookup(texts), lexical_ids=lex_ids, lexical_mask=lex_mask, sequence=seq)
        t = self.enc(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        return TextBatch(t["input_ids"], t["attention_mask"], lexical_ids=lex_ids, lexical_mask=lex_mask, sequence=seq)

    def decoder_targets(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded decoder ids (N, Td) ending in eos, and their mask."""
        eos = self.dec.eos_token or ""
        t = self.dec([s + eos for s in texts], padding=True, truncation=True, max_length=self.max_tokens,
                     return_tensors="pt", add_special_tokens=False, padding_side="right")
        return t["input_ids"], t["attention_mask"]

    def __call__(self, examples: list[Example]) -> EpisodeBatch:
        if len(examples) % self.episode_size:
            raise ValueError(f"{len(examples)} examples do not fill episodes of {self.episode_size}")
        written = [e.written for e in examples]
        ids, mask = self.decoder_targets(written)
        return EpisodeBatch(
            self._encoder_batch(written), self._encoder_batch([e.query for e in examples]), ids, mask,
            episodes=len(examples) // self.episode_size,
        )
