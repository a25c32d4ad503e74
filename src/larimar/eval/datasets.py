"""Knowledge-editing datasets loaded into one record type, :class:`EditCase`.

Supported schemas (see ``shared/data/README.md``):

* ``rome`` -- ROME ``counterfact.json`` (also MEMIT ``multi_counterfact.json``): a
  ``requested_rewrite`` with a ``{}`` subject slot, lists of paraphrase / neighbourhood /
  attribute / generation prompts.
* ``easyedit_cf`` -- EasyEdit "flat" CounterFact: one rewrite, one rephrase, one locality prompt.
* ``mend_zsre`` -- MEND zsRE: ``src``, ``rephrase``, ``answers``, ``alt``, ``loc``, ``loc_ans``.
* ``knowedit_zsre`` -- KnowEdit zsRE: ``prompt``, ``target_new``, ``ground_truth`` (list),
  ``rephrase_prompt``, ``locality.Relation_Specificity``, ``portability``.

Example:
    >>> cases = load_cases("counterfact-val.json", limit=50)  # doctest: +SKIP
    >>> cases[0].prompt, cases[0].target_new  # doctest: +SKIP
    ('BBC One, by', 'Sega')
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

logger = logging.getLogger(__name__)

DatasetFormat = Literal["auto", "rome", "easyedit_cf", "mend_zsre", "knowedit_zsre"]
ZsreTarget = Literal["answers0", "alt"]
MultiRewrite = Literal["first", "split"]


@dataclass(frozen=True)
class LocalityPrompt:
    """A prompt outside the edit's scope and the answer the model should keep giving."""

    prompt: str
    answer: str


@dataclass
class EditCase:
    """One requested edit with the prompts that test it.

    Attributes:
        case_id: identifier, unique within a file (the index for files without ids).
        subject: the entity whose fact is edited.
        prompt: the rewrite prompt with the subject filled in, e.g. ``"Toko Yasuda, the"``.
        target_new: the answer the edit teaches.
        target_true: the answer before the edit, ``None`` when the dataset has none.
        paraphrase_prompts: rewordings of ``prompt`` that the edit should also change.
        neighborhood_prompts: prompts that must keep their answer after the edit.
        attribute_prompts: other subjects whose true answer is ``target_new`` (ROME only).
        generation_prompts: prompts for free generation / fluency (ROME only).
        extra: schema-specific fields (relation id, portability prompts, target choice, ...).
    """

    case_id: str
    subject: str
    prompt: str
    target_new: str
    target_true: str | None
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[LocalityPrompt] = field(default_factory=list)
    attribute_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def fact(self) -> str:
        """The edited fact as one sentence: ``prompt + " " + target_new``."""
        return f"{self.prompt} {self.target_new}"


# Keys that identify each schema in auto-detection, most specific first.
SCHEMA_KEYS: dict[str, tuple[str, ...]] = {
    "rome": ("requested_rewrite",),
    "easyedit_cf": ("prompt", "target_new", "ground_truth", "rephrase_prompt", "locality_prompt"),
    "mend_zsre": ("src", "rephrase", "answers", "alt", "loc", "loc_ans"),
    "knowedit_zsre": ("prompt", "target_new", "ground_truth", "rephrase_prompt"),
}

# ParaRel templates that put words before the subject start with one of these words
# ("The native language of {}", "In {}", "Which position does {} play? ...").
_TEMPLATE_PREFIX = re.compile(
    r"(?:^|(?<=\s))(?:(?:The|In|What|Which|Where|Who|How|When)(?: [a-z]+)* )?$"
)
_SENTENCE_BOUNDARY = re.compile(r"[.!?][\"')\]]*\s+|\n")


def strip_distractor(paraphrase: str, subject: str) -> str:
    """Remove the unrelated sentence that ROME puts in front of a CounterFact paraphrase.

    ROME paraphrase prompts are ``"<distractor> <template with subject>"``; the distractor is
    random text that often has no clean sentence end (``"Category:Hitachi Toyota Corolla, ..."``).
    The template starts at the subject, or at a short prefix right before it that begins with
    ``The/In/What/Which/Where/Who/How/When`` (``"The mother tongue of {}"``). When the subject is
    not in the prompt, everything up to the last sentence end is dropped instead.

    Args:
        paraphrase: the prompt as stored in ``counterfact.json``.
        subject: the case's subject.

    Returns:
        The paraphrase without its distractor (unchanged when there is none to strip).
    """
    start = paraphrase.rfind(subject) if subject else -1
    if start < 0:
        ends = list(_SENTENCE_BOUNDARY.finditer(paraphrase))
        return paraphrase[ends[-1].end():] if ends else paraphrase
    head = paraphrase[:start]
    match = _TEMPLATE_PREFIX.search(head)
    prefix_start = match.start() if match else start
    return paraphrase[prefix_start:]


def _rome_rewrite_case(
    record: Mapping[str, Any], rewrite: Mapping[str, Any], case_id: str, strip: bool
) -> EditCase:
    subject = rewrite["subject"]
    paraphrases = list(record.get("paraphrase_prompts", []))
    if strip:
        paraphrases = [strip_distractor(p, subject) for p in paraphrases]
    target_true = rewrite["target_true"]["str"]
    extra = {k: rewrite[k] for k in ("relation_id",) if k in rewrite}
    extra.update({k: record[k] for k in ("pararel_idx",) if k in record})
    extra["target_new_id"] = rewrite["target_new"].get("id")
    extra["target_true_id"] = rewrite["target_true"].get("id")
    extra["distractor_stripped"] = strip
    return EditCase(
        case_id=case_id,
        subject=subject,
        prompt=rewrite["prompt"].format(subject),
        target_new=rewrite["target_new"]["str"],
        target_true=target_true,
        paraphrase_prompts=paraphrases,
        neighborhood_prompts=[
            LocalityPrompt(p, target_true) for p in record.get("neighborhood_prompts", [])
        ],
        attribute_prompts=list(record.get("attribute_prompts", [])),
        generation_prompts=list(record.get("generation_prompts", [])),
        extra=extra,
    )


def parse_rome(
    record: Mapping[str, Any],
    index: int,
    *,
    strip_distractor: bool = False,
    multi_rewrite: MultiRewrite = "first",
) -> list[EditCase]:
    """Parse one ROME / MEMIT CounterFact record.

    ``requested_rewrite`` may be a list (multi-counterfact variants): ``multi_rewrite="first"``
    keeps the first rewrite; ``"split"`` makes one case per rewrite with ids ``"<id>/<i>"``,
    all sharing the record's paraphrase / neighbourhood / generation prompts.
    """
    base_id = str(record.get("case_id", index))
    rewrites = record["requested_rewrite"]
    if isinstance(rewrites, Mapping):
        return [_rome_rewrite_case(record, rewrites, base_id, strip_distractor)]
    if not rewrites:
        raise ValueError(f"case {base_id}: requested_rewrite is an empty list")
    if multi_rewrite == "first":
        return [_rome_rewrite_case(record, rewrites[0], base_id, strip_distractor)]
    return [
        _rome_rewrite_case(record, rw, f"{base_id}/{i}", strip_distractor)
        for i, rw in enumerate(rewrites)
    ]


def parse_easyedit_cf(record: Mapping[str, Any], index: int) -> list[EditCase]:
    """Parse one EasyEdit flat CounterFact record."""
    return [
        EditCase(
            case_id=str(record.get("case_id", index)),
            subject=record["subject"],
            prompt=record["prompt"],
            target_new=record["target_new"],
            target_true=record["ground_truth"],
            paraphrase_prompts=[record["rephrase_prompt"]],
            neighborhood_prompts=[
                LocalityPrompt(record["locality_prompt"], record["locality_ground_truth"])
            ],
        )
    ]


def parse_mend_zsre(
    record: Mapping[str, Any], index: int, *, target: ZsreTarget = "alt"
) -> list[EditCase]:
    """Parse one MEND zsRE record.

    ``target="answers0"`` edits towards ``answers[0]`` (ROME/MEMIT; no ``target_true``);
    ``target="alt"`` edits towards ``alt`` (EasyEdit/GRACE/WISE; ``target_true = answers[0]``).
    """
    answer = record["answers"][0]
    new, true = (answer, None) if target == "answers0" else (record["alt"], answer)
    return [
        EditCase(
            case_id=str(record.get("case_id", index)),
            subject=record["subject"],
            prompt=record["src"],
            target_new=new,
            target_true=true,
            paraphrase_prompts=[record["rephrase"]],
            neighborhood_prompts=[LocalityPrompt(record["loc"], record["loc_ans"])],
            extra={"zsre_target": target, "answers": list(record["answers"])},
        )
    ]


def _first_answer(ground_truth: Any) -> str:
    """KnowEdit answers are a string, a list, or a list of alias lists; take the first."""
    while isinstance(ground_truth, list):
        if not ground_truth:
            raise ValueError("empty ground_truth list")
        ground_truth = ground_truth[0]
    return str(ground_truth)


def parse_knowedit_zsre(record: Mapping[str, Any], index: int) -> list[EditCase]:
    """Parse one KnowEdit zsRE record (edits towards ``target_new``)."""
    locality = record.get("locality", {}) or {}
    neighbours = [
        LocalityPrompt(item["prompt"], _first_answer(item["ground_truth"]))
        for item in locality.get("Relation_Specificity", []) or []
    ]
    return [
        EditCase(
            case_id=str(record.get("case_id", index)),
            subject=record.get("subject", ""),
            prompt=record["prompt"],
            target_new=record["target_new"],
            target_true=_first_answer(record["ground_truth"]),
            paraphrase_prompts=[record["rephrase_prompt"]] if record.get("rephrase_prompt") else [],
            neighborhood_prompts=neighbours,
            extra={"portability": record.get("portability", {}), "zsre_target": "target_new"},
        )
    ]


def detect_format(record: Mapping[str, Any]) -> str:
    """Name the schema of one record from its keys.

    Raises:
        ValueError: when no schema matches; the message lists the keys each schema needs.
    """
    for name, keys in SCHEMA_KEYS.items():
        if all(k in record for k in keys):
            return name
    expected = "; ".join(f"{n}: {', '.join(k)}" for n, k in SCHEMA_KEYS.items())
    raise ValueError(
        f"unknown dataset schema: record has keys {sorted(record)}; expected one of: {expected}"
    )


def _read_records(path: Path) -> list[Mapping[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected a JSON list of records")
    if isinstance(data, Mapping):  # some dumps wrap the list: {"data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: expected a JSON list of records, got an object")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise ValueError(f"{path}: expected a JSON list of objects")
    return data


def load_cases(
    path: str | Path,
    format: DatasetFormat = "auto",
    limit: int | None = None,
    *,
    strip_distractor: bool = False,
    zsre_target: ZsreTarget = "alt",
    multi_rewrite: MultiRewrite = "first",
) -> list[EditCase]:
    """Load a knowledge-editing dataset file into :class:`EditCase` records.

    Args:
        path: a JSON file holding a list of records.
        format: schema name, or ``"auto"`` to detect it from the first record.
        limit: keep the first ``limit`` records (before any ``multi_rewrite="split"``).
        strip_distractor: drop the distractor sentence from ROME paraphrase prompts.
        zsre_target: MEND zsRE edit target, ``"alt"`` or ``"answers0"``.
        multi_rewrite: for ROME records with a list of rewrites, ``"first"`` or ``"split"``.

    Returns:
        The cases, in file order.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not JSON, not a list of objects, or of an unknown schema.
    """
    path = Path(path)
    records = _read_records(path)
    if limit is not None:
        records = records[:limit]
    if not records:
        return []
    fmt = detect_format(records[0]) if format == "auto" else format
    parsers: dict[str, Callable[[Mapping[str, Any], int], list[EditCase]]] = {
        "rome": lambda r, i: parse_rome(
            r, i, strip_distractor=strip_distractor, multi_rewrite=multi_rewrite
        ),
        "easyedit_cf": parse_easyedit_cf,
        "mend_zsre": lambda r, i: parse_mend_zsre(r, i, target=zsre_target),
        "knowedit_zsre": parse_knowedit_zsre,
    }
    if fmt not in parsers:
        raise ValueError(f"unknown format {fmt!r}; choose one of {['auto', *parsers]}")
    cases: list[EditCase] = []
    for i, record in enumerate(records):
        try:
            cases.extend(parsers[fmt](record, i))
        except KeyError as err:
            raise ValueError(
                f"{path}: record {i} lacks key {err} required by format {fmt!r} "
                f"(expects {', '.join(SCHEMA_KEYS[fmt])})"
            ) from None
    return _usable(cases, path, fmt)


def _usable(cases: list[EditCase], path: Path, fmt: str) -> list[EditCase]:
    """Drop cases with an empty edit target and locality probes with an empty answer (a few
    MEND zsRE records have ``alt == ""``): nothing can be scored against an empty string."""
    kept = [c for c in cases if c.target_new.strip()]
    dropped = [c.case_id for c in cases if not c.target_new.strip()]
    if dropped:
        logger.warning("%s: skipped %d case(s) with an empty edit target (ids %s)", path, len(dropped),
                       ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))
    for case in kept:
        case.neighborhood_prompts = [n for n in case.neighborhood_prompts if n.answer.strip()]
    logger.info("loaded %d cases from %s (format %s)", len(kept), path, fmt)
    return kept
