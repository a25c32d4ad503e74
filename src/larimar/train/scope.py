"""The scope stage of `larimar train`: fit the scope detector (`larimar.model.scope`).

Training pairs come from CounterFact train cases (EasyEdit's flat format, read from the path in
the config's `scope.data`). Each case's fact is its prompt completed with the new answer ("Toko
Yasuda, the piano."). Queries about the fact (label 1): the prompt, its paraphrase, and
questions formed from the relation's wording ("What does Toko Yasuda play?"). Queries not about
it (label 0): the neighbourhood prompt (same relation, another subject), the same questions
about another subject of that relation, a question of another relation about the fact's answer
("Where is piano located?": the text names it, but is not about it), a random case's question
or prompt, a question about the same subject for a date or a number (which no CounterFact
relation gives), and the fact's questions about another subject that shares a word with its
own. Other questions about the same subject are left out: the written fact is often a fair
answer to them ("What does Honus Wagner do?" against "Honus Wagner plays football."), and the
detector's features cannot tell the relations apart. Half of all pairs come again with
the query typed casually (lower case, no question mark). Cases are split once into fitting and
validation cases; the validation accuracy of the fitted model and of a cosine threshold are
reported.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..editing.encoding import encode_texts, query_views, scope_similarities
from ..model.scope import FEATURES, PairFeatures, ScopeConfig, probability, words

logger = logging.getLogger(__name__)

SCOPE_FILE = "scope.json"
"""What the stage writes in the run's output folder, and `larimar export` reads."""

QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    (r"headquarter|based in", ("Where is {} headquartered?", "In which city are the headquarters of {}?")),
    (r"continent", ("On which continent is {}?", "Which continent does {} belong to?")),
    (r"twin city", ("What is the twin city of {}?", "Which city is twinned with {}?")),
    (r"capital", ("What is the capital of {}?", "Which city is the capital of {}?")),
    (r"language|tongue|speak|writes in|written in|understand",
     ("What language does {} speak?", "Which language is used by {}?")),
    (r"position|title of", ("What position does {} hold?", "Which position does {} have?")),
    (r"sport", ("Which sport does {} play?", "What sport is {} known for?")),
    (r"instrument|performs on|performing on|playing the", ("Which instrument does {} play?", "What does {} play?")),
    (r"genre", ("What genre of music does {} play?", "Which musical genre is {} associated with?")),
    (r"record label|music label|record company|recorded for|label :|represented by",
     ("Which record label is {} signed to?", "What label represents {}?")),
    (r"created by|developed by|produced by|product|manufactured",
     ("Who created {}?", "Which company makes {}?")),
    (r"citizen", ("Which country is {} a citizen of?", "What is the nationality of {}?")),
    (r"born", ("Where was {} born?", "What is the birthplace of {}?")),
    (r"died|passed away|life ended|expired at|lost their life|succumbed",
     ("Where did {} die?", "In which city did {} pass away?")),
    (r"works as|occupation|profession|is a professional",
     ("What is the occupation of {}?", "What does {} do for a living?")),
    (r"field of|area of|domain of|expertise|specializes",
     ("What field does {} work in?", "What is the area of expertise of {}?")),
    (r"works for|employed by", ("Who does {} work for?", "Which company employs {}?")),
    (r"work|employment", ("In which city did {} work?", "Where did {} work?")),
    (r"debut|premiere|aired|released on", ("On which network did {} premiere?", "Where was {} first broadcast?")),
    (r"religio|follower of", ("What is the religion of {}?", "Which faith does {} follow?")),
    (r"owned by|owner", ("Who owns {}?", "Which company is the owner of {}?")),
    (r"named after|called after|named for", ("Who is {} named after?", "What was {} named for?")),
    (r"member of|belongs to the organization|affiliated with", ("Which organization is {} part of?",
                                                                "What is {} affiliated with?")),
    (r"originat|created in|formed in|founded in|started in|formulated in|developed in|native to|from",
     ("Where does {} come from?", "What is the country of origin of {}?")),
    (r"located|is in$|is within|can be found in|location", ("Where is {} located?", "Where can {} be found?")),
]
"""(pattern over a prompt's template, question forms): the first pattern that matches names the
relation. Templates no pattern matches ("{}, the") give no questions."""

OTHER_QUESTIONS = ("When was {} founded?", "How many people work for {}?", "When did {} start?",
                   "How old is {}?", "What year did {} first appear?", "How many times has {} won?",
                   "when did {} come out", "how many members does {} have")
"""Questions about a subject whose answer (a date or a number) no CounterFact relation gives:
never answered by a CounterFact fact of that subject."""


FIRST = ("Amara", "Bruno", "Chiara", "Dmitri", "Esther", "Farid", "Greta", "Hugo", "Ingrid", "Jonas", "Keiko",
         "Luca", "Maren", "Nikolai", "Olga", "Pablo", "Rania", "Stefan", "Tamsin", "Umar", "Vera", "Wendell")
LAST = ("Abara", "Bergstrom", "Castellano", "Dubois", "Eriksen", "Fonseca", "Gallagher", "Haddad", "Ivanova",
        "Jaramillo", "Kowal", "Lindgren", "Moreau", "Nakamura", "Oyelaran", "Petrakis", "Quist", "Salazar")
VALUES = {
    "car": ("red Volvo", "blue Fiat", "green Skoda", "white Toyota", "black Saab"),
    "sport": ("fencing", "rowing", "curling", "handball", "archery"),
    "subject": ("geology", "linguistics", "astronomy", "economics", "botany"),
    "street": ("Elm Street", "Harbour Road", "Mill Lane", "Kingsway", "Rosenweg"),
    "dept": ("finance", "legal", "marketing", "research", "procurement"),
    "thing": ("standing desk", "espresso machine", "conference phone", "label printer"),
    "room": ("B12", "C4", "A101", "the Orchid room", "the Atlas room"),
    "meeting": ("quarterly review", "design sync", "budget planning", "safety briefing"),
    "pet": ("Biscuit", "Juniper", "Pixel", "Mango", "Otto"),
    "blood": ("A positive", "O negative", "B positive", "AB negative"),
}
TEMPLATES: list[tuple[str, tuple[str, ...]]] = [
    ("{name} drives a {car}.", ("What car does {name} drive?", "Which vehicle does {name} own?")),
    ("{name} is married to {other}.", ("Who is {name} married to?", "Who is the spouse of {name}?")),
    ("{name} studied {subject} at university.", ("What did {name} study?", "Which subject did {name} major in?")),
    ("{name} lives on {street}.", ("Where does {name} live?", "On which street is the home of {name}?")),
    ("{name} is {number} years old.", ("How old is {name}?", "What is the age of {name}?")),
    ("The manager of {name} is {other}.", ("Who is {name}'s manager?", "Who does {name} report to?")),
    ("{name} has a dog named {pet}.", ("What is the name of {name}'s dog?", "What is {name}'s dog called?")),
    ("{name}'s blood type is {blood}.", ("What is {name}'s blood type?", "Which blood group does {name} have?")),
    ("{name} plays {sport} on weekends.", ("Which sport does {name} play?", "What does {name} do on weekends?")),
    ("The {dept} department is on floor {number}.", ("Which floor is the {dept} department on?",
                                                      "Where can I find the {dept} department?")),
    ("The {thing} in the {dept} office costs {number} euros.", ("How much did the {thing} in the {dept} office cost?",
                                                                "What is the price of the {dept} office's {thing}?")),
    ("The {meeting} takes place in room {room}.", ("Where is the {meeting}?", "Which room is the {meeting} in?")),
]
"""Personal and office facts, with two questions each, to sit next to CounterFact's encyclopedic
ones (their wording and names differ from the project's question benchmark)."""

RECORD_TEMPLATES: list[tuple[str, tuple[str, ...]]] = [
    ("{name} was born on {date}.", ("When was {name} born?", "What is {name}'s date of birth?")),
    ("{name}'s contract ends on {date}.", ("When does {name}'s contract end?", "What is the end date of {name}'s contract?")),
    ("The Wi-Fi in the {dept} office uses the passphrase {password}.",
     ("What is the Wi-Fi passphrase in the {dept} office?", "How do I log in to the {dept} office wireless network?")),
    ("The {dept} team's shared account has the password {password}.",
     ("What is the password of the {dept} team's shared account?", "Which password opens the {dept} shared account?")),
    ("{name}'s badge number is {code}.", ("What is {name}'s badge number?", "Which badge number does {name} have?")),
]
"""Personal records with generated values (dates, passwords, badge numbers), written and asked in
the question episodes; the scope stage adds them only with `ScopeTrainConfig.record_templates`."""

NOTE_VALUES = {
    "item": ("ladder", "camera", "projector", "bicycle pump", "sewing machine", "telescope"),
    "relative": ("sister", "cousin", "aunt", "nephew", "grandfather", "stepson"),
    "company": ("Siemens", "Maersk", "Nokia", "Heineken", "Ericsson", "Lufthansa"),
    "place": ("garage", "attic", "blue cabinet", "top drawer", "car boot", "shed"),
    "site": ("warehouse", "summer house", "studio", "depot", "workshop", "clinic"),
    "trade": ("plumber", "electrician", "locksmith", "roofer", "piano tuner"),
}
NOTE_TEMPLATES: list[tuple[str, tuple[str, ...]]] = [
    ("I lent my {item} to {name}.", ("Who did I lend my {item} to?", "Who borrowed my {item}?")),
    ("My {relative} works at {company} now.", ("Where does my {relative} work?", "Which company employs my {relative}?")),
    ("Note to self: the {item} is in the {place}.", ("Where did I put the {item}?", "Where is the {item} kept?")),
    ("Gate code ({site}): {code}", ("What is the gate code for the {site}?", "Which code opens the gate at the {site}?")),
    ("Alarm code for the {site} - {code}", ("What is the alarm code at the {site}?",
                                            "How do I switch off the alarm at the {site}?")),
    ("{name} ({trade}): call on weekdays after 8.", ("Who is our {trade}?", "Which {trade} do we use?")),
    ("My {relative}'s birthday: {date}", ("When is my {relative}'s birthday?", "What date is my {relative}'s birthday?")),
    ("We keep the spare keys of the {site} in the {place}.", ("Where are the spare keys of the {site}?",
                                                              "Where do we keep the {site} keys?")),
]
"""Notes as people jot them, first person or labelled, asked in other words: the scope stage fits
on them (`ScopeTrainConfig.note_templates`); the question episodes do not use them."""

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WORDS = ("falcon", "maple", "cobalt", "lantern", "quartz", "juniper", "harbor", "velvet", "orbit", "tundra")


def _date(rng: random.Random) -> str:
    """A date in one of the ways people write one: "4 March 2019", "March 4, 2019", "March 4"."""
    day, month, year = rng.randint(1, 28), rng.choice(MONTHS), rng.randint(1950, 2030)
    return rng.choice((f"{day} {month} {year}", f"{month} {day}, {year}", f"{month} {day}"))


def _password(rng: random.Random) -> str:
    """A password: a word with digits and a symbol in some order ("Maple-4471", "orbit!09")."""
    word = rng.choice(WORDS)
    word = word.capitalize() if rng.random() < 0.5 else word
    return rng.choice((f"{word}-{rng.randint(10, 9999)}", f"{word}{rng.choice('!#$')}{rng.randint(0, 99):02d}",
                       f"{rng.randint(1, 99)}{word}{rng.choice('!#$')}"))


def _code(rng: random.Random) -> str:
    """A number of 3 to 6 digits, a third of them with a repeated digit pair ("4433", "72772")."""
    if rng.random() < 1 / 3:
        a, b = rng.sample("0123456789", 2)
        return rng.choice((a + a + b + b, a + b + a + b, b + a + a + b + b))
    return str(rng.randint(100, 999999))


def templated_pairs(rng: random.Random, count: int, first_case: int,
                    templates: list[tuple[str, tuple[str, ...]]] | None = None) -> list[tuple[str, str, int, int]]:
    """Pairs of `count` facts of `templates` (default: `TEMPLATES` and `RECORD_TEMPLATES`): their
    questions (1); the same questions about another name or department, and a random fact's
    question (0). Case indices start at `first_case`. Dates, passwords and codes are drawn for
    every fact when some template of the set uses them, so a set gives the same pairs as before."""
    templates = TEMPLATES + RECORD_TEMPLATES if templates is None else templates
    generated = any("{" + slot + "}" in str(templates) for slot in ("date", "password", "code"))
    noted = any("{" + slot + "}" in str(templates) for slot in NOTE_VALUES)

    def fill(template: str, slots: dict[str, str]) -> str:
        return template.format(**slots)

    def draw(t: int) -> dict[str, str]:
        slots = {k: rng.choice(v) for k, v in VALUES.items()}
        slots.update(name=f"{rng.choice(FIRST)} {rng.choice(LAST)}", other=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                     number=str(rng.randrange(2, 90)))
        if generated:
            slots.update(date=_date(rng), password=_password(rng), code=_code(rng))
        if noted:
            slots.update({k: rng.choice(v) for k, v in NOTE_VALUES.items()})
        return slots

    pairs: list[tuple[str, str, int, int]] = []
    for k in range(count):
        t = rng.randrange(len(templates))
        fact_form, questions = templates[t]
        slots = draw(t)
        fact = fill(fact_form, slots)
        case = first_case + k
        pairs += [(fill(q, slots), fact, 1, case) for q in questions]
        other = draw(t)
        if fill(rng.choice(questions), other) != fill(questions[0], slots):
            pairs.append((fill(rng.choice(questions), other), fact, 0, case))
        u = rng.randrange(len(templates))
        if u != t:
            pairs.append((fill(rng.choice(templates[u][1]), draw(u)), fact, 0, case))
    return pairs


@dataclass
class ScopeTrainConfig:
    """The scope stage (`larimar train` runs it after the model when `data` is set)."""

    data: str | None = None
    """CounterFact train cases (EasyEdit flat JSON); None: no scope stage."""
    cases: int = 4000
    """CounterFact cases used (the first ones of a seeded shuffle); a fifth of them validate."""
    templated: int = 1000
    """Templated personal and office facts added (`TEMPLATES`); a fifth of them validate."""
    record_templates: bool = False
    """Whether the templated facts include `RECORD_TEMPLATES`. Fitted with them, the detector let
    more unrelated questions in at 10,000 facts (docs/results.md), so the shipped stage leaves
    them to the question episodes."""
    note_templates: bool = True
    """Whether the templated facts include `NOTE_TEMPLATES` (first-person and labelled notes)."""
    hard_negatives: int = 0
    """For every query about no fact, this many of the facts nearest to it by cosine are added as
    negatives (`nearest_negatives`): what such a question meets in a memory of thousands."""
    candidates: int = 8
    """Items the fitted detector examines per query (`ScopeConfig.candidates`)."""
    baseline_cosine: float = 0.66
    """The cosine threshold the validation report compares the detector with."""
    casual: float = 0.5
    """Share of pairs added again with the query in lower case and without its question mark."""
    hidden: int = 16
    """Hidden units of the detector's network."""
    l2: float = 1e-3
    """Ridge penalty on the network's weights."""

    def __post_init__(self) -> None:
        if (self.cases < 10 or self.templated < 0 or self.hard_negatives < 0 or self.candidates < 1
                or self.hidden < 1 or self.l2 < 0 or not 0 <= self.casual <= 1):
            raise ValueError("scope: need cases >= 10, templated >= 0, hard_negatives >= 0, candidates >= 1, "
                             "hidden >= 1, l2 >= 0, 0 <= casual <= 1")


def relation(template: str) -> int | None:
    """Index in `QUESTIONS` of the relation a prompt template ("{} is located in") expresses."""
    for i, (pattern, _) in enumerate(QUESTIONS):
        if re.search(pattern, template):
            return i
    return None


def build_pairs(records: list[dict[str, Any]], seed: int) -> list[tuple[str, str, int, int]]:
    """(query, fact, label, case index) pairs from flat CounterFact records."""
    rng = random.Random(seed)
    facts, subjects, relations = [], [], []
    by_relation: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        facts.append(f"{r['prompt'].strip()} {r['target_new'].strip()}.")
        subjects.append(r["subject"])
        rel = relation(r["prompt"].replace(r["subject"], "{}"))
        relations.append(rel)
        if rel is not None:
            by_relation[rel].append(i)
    questions = [QUESTIONS[rel][1] if rel is not None else () for rel in relations]
    by_word: dict[str, list[int]] = defaultdict(list)
    for i, subject in enumerate(subjects):
        for word in _subject_words(subject):
            by_word[word].append(i)
    pairs: list[tuple[str, str, int, int]] = []
    for i, r in enumerate(records):
        fact, subject = facts[i], subjects[i]
        pairs += [(r["prompt"], fact, 1, i), (r["rephrase_prompt"], fact, 1, i), (r["locality_prompt"], fact, 0, i)]
        pairs += [(q.format(subject), fact, 1, i) for q in questions[i]]
        rel = relations[i]
        if rel is not None and len(by_relation[rel]) > 1:
            other = rng.choice([j for j in rng.sample(by_relation[rel], 2) if j != i])
            pairs.append((rng.choice(questions[i]).format(subjects[other]), fact, 0, i))
        pairs.append((rng.choice(OTHER_QUESTIONS).format(subject), fact, 0, i))
        namesakes = [j for w in sorted(_subject_words(subject)) for j in by_word[w] if subjects[j] != subject]
        if namesakes:  # another subject sharing a word of this one ("Fast Five", "Fast Times")
            j = rng.choice(namesakes)
            pairs.append((rng.choice(questions[i]).format(subjects[j]) if questions[i] else records[j]["prompt"],
                          fact, 0, i))
        if r["target_new"].strip().lower() not in subject.lower():
            asked = rng.choice([k for k in range(len(QUESTIONS)) if k != rel])
            pairs.append((rng.choice(QUESTIONS[asked][1]).format(r["target_new"].strip()), fact, 0, i))
        j = rng.randrange(len(records))
        if subjects[j] != subject:
            pairs.append((rng.choice(questions[j]).format(subjects[j]) if questions[j] else records[j]["prompt"], fact, 0, i))
    return pairs


def nearest_negatives(encoder: Any, pairs: list[tuple[str, str, int, int]], anchors: dict[str, set[str]],
                      count: int) -> list[tuple[str, str, int, int]]:
    """For each query that no pair labels related to a fact (a question about something else), the
    `count` facts of the pairs nearest to it by scope cosine, as negatives (case index: the
    query's): what such a question meets in a memory of thousands. A fact the query names one of
    the `anchors` of (its subject's words) is left out: another relation of the same subject may
    be answered by it."""
    if count < 1:
        return []
    facts = sorted({fact for _, fact, _, _ in pairs})
    about = {q for q, _, label, _ in pairs if label}
    queries = sorted({q for q, _, _, _ in pairs} - about)
    if not queries:
        return []
    case_of: dict[str, int] = {}
    for q, _, _, case in pairs:
        case_of.setdefault(q, case)
    keys = encode_texts(encoder, facts, scope_keys=True)[1]  # (T, 2, H)
    embedded = encode_texts(encoder, queries)[1]  # (Q, H)
    out = []
    for start in range(0, len(queries), 512):
        block = queries[start : start + 512]
        cos = scope_similarities(keys, embedded[start : start + len(block)])  # (b, T)
        order = cos.topk(min(len(facts), 4 * count + 8), dim=1).indices.tolist()
        for q, ranked in zip(block, order):
            named = set(words(q.lower()))
            taken = 0
            for t in ranked:
                fact = facts[t]
                if anchors.get(fact, set()) & named:
                    continue
                out.append((q, fact, 0, case_of[q]))
                taken += 1
                if taken == count:
                    break
    return out


def anchor_words(pairs: list[tuple[str, str, int, int]], subjects: dict[int, str]) -> dict[str, set[str]]:
    """The words of each fact's subject (`subjects` by case index), else its capitalised words."""
    out: dict[str, set[str]] = {}
    for _, fact, _, case in pairs:
        if fact not in out:
            subject = subjects.get(case)
            out[fact] = (_subject_words(subject) if subject is not None
                         else {w.lower() for w in words(fact) if w[:1].isupper() and len(w) >= 4})
    return out


def _subject_words(subject: str) -> set[str]:
    """A subject's distinctive words (lower-cased, four letters or more)."""
    return {w.lower() for w in words(subject) if len(w) >= 4}


def casual(query: str) -> str:
    """A query as people type it in a hurry: lower case, no closing question mark."""
    return query.lower().rstrip().removesuffix("?").rstrip()


def with_casual(pairs: list[tuple[str, str, int, int]], share: float,
                rng: random.Random) -> list[tuple[str, str, int, int]]:
    """The pairs plus, for a `share` of them, the same pair with its query typed casually."""
    extra = [(casual(q), fact, label, case) for q, fact, label, case in pairs if rng.random() < share]
    return pairs + [p for p in extra if p[0]]


def pair_features(encoder: Any, features: PairFeatures,
                  pairs: list[tuple[str, str, int, int]]) -> tuple[torch.Tensor, list[int]]:
    """Detector features of the pairs, with the encoder's scope keys and query views.

    The detector takes the best of a query's views (`query_views`), so a query about the text
    contributes its view nearest the text, and a query not about it contributes every view.

    Returns:
        (n', F) features and, for each row, the index of its pair.
    """
    texts = sorted({fact for _, fact, _, _ in pairs})
    index = {t: k for k, t in enumerate(texts)}
    _, keys = encode_texts(encoder, texts, scope_keys=True)  # (T, 2, H)
    queries = sorted({q for q, _, _, _ in pairs})
    views = [query_views(q) for q in queries]
    flat = [v for vs in views for v in vs]
    embedded = encode_texts(encoder, flat)[1]  # (sum V, H)
    starts, at = {}, 0
    for q, vs in zip(queries, views):
        starts[q] = (at, at + len(vs))
        at += len(vs)
    rows, owners = [], []
    for k, (query, fact, label, _) in enumerate(pairs):
        a, b = starts[query]
        cos = torch.einsum("sh,vh->vs", keys[index[fact]], embedded[a:b])  # (V, 2)
        chosen = [int(cos.amax(1).argmax())] if label else range(b - a)
        for v in chosen:
            rows.append(features(flat[a + v], fact, float(cos[v, 0]), float(cos[v, 1])))
            owners.append(k)
    return torch.stack(rows), owners


def fit_network(x: torch.Tensor, y: torch.Tensor, hidden: int, l2: float, seed: int) -> dict[str, Any]:
    """`ScopeConfig` weights fitted to features x (n, F) and labels y (n,): binary cross-entropy
    plus a ridge penalty on the weights, by L-BFGS in float64 from a seeded start."""
    gen = torch.Generator().manual_seed(seed)
    w1 = (0.5 * torch.randn(hidden, x.shape[1], generator=gen, dtype=torch.float64)).requires_grad_()
    w2 = (0.5 * torch.randn(hidden, generator=gen, dtype=torch.float64)).requires_grad_()
    b1 = torch.zeros(hidden, dtype=torch.float64, requires_grad=True)
    b2 = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w1, b1, w2, b2], max_iter=1000, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        out = torch.tanh(x @ w1.T + b1) @ w2 + b2
        loss = F.binary_cross_entropy_with_logits(out, y) + l2 * (w1.square().sum() + w2.square().sum())
        loss.backward()
        return loss

    opt.step(closure)
    return {"w1": w1.detach().tolist(), "b1": b1.detach().tolist(), "w2": w2.detach().tolist(), "b2": float(b2.detach())}


def train_scope(config: ScopeTrainConfig, encoder: Any, tokenizer: Any, out_dir: str | Path,
                seed: int) -> dict[str, Any]:
    """Fit the detector, validate it, write `SCOPE_FILE` in `out_dir`, and return what it wrote."""
    if config.data is None:
        raise ValueError("scope.data is not set: name the CounterFact train file (EasyEdit flat JSON)")
    path = Path(config.data)
    if not path.is_file():
        raise FileNotFoundError(f"scope.data: no file at {path}; pass the CounterFact train split (flat JSON)")
    records = json.loads(path.read_text())
    random.Random(seed).shuffle(records)
    records = records[: config.cases]
    templates = (TEMPLATES + (RECORD_TEMPLATES if config.record_templates else [])
                 + (NOTE_TEMPLATES if config.note_templates else []))
    pairs = build_pairs(records, seed) + templated_pairs(random.Random(seed + 1), config.templated, len(records),
                                                         templates)
    if config.hard_negatives:
        subjects = {i: r["subject"] for i, r in enumerate(records)}
        pairs += nearest_negatives(encoder, pairs, anchor_words(pairs, subjects), config.hard_negatives)
    pairs = with_casual(pairs, config.casual, random.Random(seed + 2))
    x, owners = pair_features(encoder, PairFeatures(tokenizer), pairs)
    y = torch.tensor([pairs[k][2] for k in owners], dtype=torch.float64)
    val = torch.tensor([pairs[k][3] % 5 == 0 for k in owners])
    scope = ScopeConfig(**fit_network(x[~val], y[~val], config.hidden, config.l2, seed), candidates=config.candidates)
    p = probability(scope, x[val])
    cosine_threshold = config.baseline_cosine
    cosine = torch.maximum(x[val, 0], x[val, 1])
    report = {
        "scope": asdict(scope) | {"features": list(FEATURES)},
        "pairs": {"fit": int((~val).sum()), "validate": int(val.sum()), "positive": int(y.sum())},
        "validation": {"accuracy": _accuracy(p >= 0.5, y[val]),
                       "cosine_accuracy": _accuracy(cosine >= cosine_threshold, y[val]),
                       "cosine_threshold": cosine_threshold},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / SCOPE_FILE).write_text(json.dumps(report, indent=1))
    logger.info("scope detector: validation accuracy %.4f (cosine threshold %.2f: %.4f)",
                report["validation"]["accuracy"]["all"], cosine_threshold,
                report["validation"]["cosine_accuracy"]["all"])
    return report


def _accuracy(predicted: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    positive = y > 0.5
    return {"all": float((predicted == positive).double().mean()),
            "in_scope": float(predicted[positive].double().mean()),
            "out_of_scope": float((~predicted[~positive]).double().mean())}
