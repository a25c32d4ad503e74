"""Memory: write / forget / facts / len, exact forgetting, persistence, and input errors."""

from __future__ import annotations

import random
from datetime import timezone
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import larimar
from larimar.editing.items import Items
from larimar.memory import MemoryState
from tests.tiny import SENTENCES

FACTS = SENTENCES[:4]


def recalled(memory: larimar.Memory) -> torch.Tensor:
    """(N, C) the readouts of every written item."""
    return memory.recall(range(len(memory.items.owners)))


def assert_same_state(a: MemoryState, b: MemoryState) -> None:
    for x, y in ((a.memory, b.memory), (a.gram_pinv, b.gram_pinv), (a.free, b.free)):
        assert torch.equal(x, y)


def test_write_facts_len(lm: larimar.Larimar) -> None:
    memory = lm.new_memory()
    assert len(memory) == 0 and memory.facts() == []
    ids = memory.write(FACTS[:2], paraphrases=[["Paris is France's capital."], []])
    ids += memory.write(FACTS[2:3])
    assert len(ids) == len(set(ids)) == 3 and len(memory) == 3
    facts = memory.facts()
    assert [f.id for f in facts] == ids and [f.text for f in facts] == FACTS[:3]
    assert facts[0].paraphrases == ("Paris is France's capital.",) and facts[1].paraphrases == ()
    assert facts[0].created.tzinfo == timezone.utc
    assert memory.state.memory.dtype == torch.float64  # the model is float32
    assert len(memory.items.owners) == 4


def test_recall_returns_written_latents(lm: larimar.Larimar) -> None:
    memory = lm.new_memory()
    memory.write(FACTS)
    z = memory.items.latents  # (N, C), N within an episode's capacity
    torch.testing.assert_close(recalled(memory), z, atol=1e-10, rtol=0)
    with pytest.raises(IndexError, match="item rows"):
        memory.recall([len(FACTS)])


def test_episodes_fill_in_order_and_recall_stays_exact(lm: larimar.Larimar) -> None:
    """Past `episode_items` a new episode opens; every item is recalled from its own."""
    memory = larimar.Memory(lm.model, episode_items=3)
    ids = memory.write(FACTS[:2], paraphrases=[["Paris is France's capital."], []])  # 3 items: episode 0 full
    ids += memory.write(FACTS[2:4], paraphrases=[[], [f"{FACTS[3]} Indeed."]])  # 3 more: episode 1
    ids += memory.write(SENTENCES[4:5])  # episode 2
    assert memory.episodes == 3 and memory.items.episodes.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert memory.state.memory.shape[0] == 3
    torch.testing.assert_close(recalled(memory), memory.items.latents, atol=1e-10, rtol=0)
    # forgetting in an earlier episode leaves the others untouched and equals never writing it
    before = memory.state
    memory.forget(ids[1])  # FACTS[1], in episode 0
    after = memory.state
    assert torch.equal(after.memory[1:], before.memory[1:])
    # the same encoded rows (encoding FACTS[0] in another batch may round differently in float32)
    never = larimar.Memory(lm.model, episode_items=3)
    rows, items = [0, 1], memory.items  # FACTS[0] and its paraphrase
    never.write_encoded(Items(items.latents[rows], items.keys[rows], items.embeddings[rows], [ids[0]] * 2),
                        [f for f in memory.facts() if f.id == ids[0]])
    torch.testing.assert_close(after.memory[0], never.state.memory[0], atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="an episode holds 3 items"):
        memory.write(FACTS[:1], paraphrases=[["a", "b", "c"]])
    assert len(memory) == 4  # the refused write stored nothing
    with pytest.raises(ValueError, match="episode_items"):
        larimar.Memory(lm.model, episode_items=0)


def test_writes_fill_the_newest_episode_by_its_live_rows(lm: larimar.Larimar) -> None:
    memory = larimar.Memory(lm.model, episode_items=3)
    ids = memory.write(SENTENCES[:2])  # episode 0 holds 2
    memory.forget(ids[0])  # 1 live row left in it
    more = memory.write(SENTENCES[2:6])  # one write over two episodes: 2 fill episode 0, 2 open episode 1
    live = memory.items.episodes.tolist()
    assert live == [0, 0, 0, 1, 1] and memory.episodes == 2
    memory.forget(more[0])  # room in the older episode is not used again: writes go to the newest
    memory.write(SENTENCES[6:7])
    assert memory.items.episodes.tolist() == [0, 0, 1, 1, 1]
    memory.write(SENTENCES[7:8])  # the newest is full: a third episode opens
    assert memory.items.episodes.tolist()[-1] == 2 and memory.episodes == 3
    torch.testing.assert_close(recalled(memory), memory.items.latents, atol=1e-10, rtol=0)


def test_forget_equals_never_written(lm: larimar.Larimar) -> None:
    forgetful, never = lm.new_memory(), lm.new_memory()
    ids = [forgetful.write([f], [[f"{f} Indeed."]] if i == 1 else None)[0] for i, f in enumerate(FACTS)]
    for i, f in enumerate(FACTS):
        if i != 1:
            never.write([f])
    forgetful.forget(ids[1])
    assert torch.allclose(recalled(forgetful), recalled(never), atol=1e-10, rtol=0)
    assert torch.allclose(forgetful.state.memory, never.state.memory, atol=1e-10, rtol=0)
    assert [f.text for f in forgetful.facts()] == [f.text for f in never.facts()]
    assert len(forgetful.items.owners) == 3  # the paraphrase went with its fact


def test_forget_everything_gives_the_empty_memory(lm: larimar.Larimar) -> None:
    memory = lm.new_memory()
    empty = memory.state
    for fact_id in memory.write(FACTS):
        memory.forget(fact_id)
    assert len(memory) == 0
    assert_same_state(memory.state, empty)


def test_save_load_round_trip_is_bit_identical(lm: larimar.Larimar, tmp_path: Path) -> None:
    memory = lm.new_memory()
    memory.write(FACTS, paraphrases=[["Paris is France's capital."], [], [], []])
    path = tmp_path / "sub" / "memory.safetensors"
    memory.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["memory.safetensors"]  # no temp file left
    loaded = lm.load_memory(path)
    assert loaded.facts() == memory.facts() and len(loaded) == len(memory)
    assert_same_state(loaded.state, memory.state)
    # The stored tensors round-trip byte for byte (above); values computed from them agree to
    # rounding only: BLAS kernels may sum in another order for another alignment or thread count.
    close = dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(recalled(loaded), recalled(memory), **close)
    assert MemoryState.load(path).memory.shape == memory.state.memory.shape  # readable as a plain state
    loaded.forget(loaded.facts()[0].id)  # stored keys allow exact forgetting after a reload
    memory.forget(memory.facts()[0].id)
    torch.testing.assert_close(recalled(loaded), recalled(memory), **close)
    assert [f.id for f in loaded.facts()] == [f.id for f in memory.facts()]


def test_save_overwrites_atomically(lm: larimar.Larimar, tmp_path: Path) -> None:
    memory = lm.new_memory()
    path = tmp_path / "m.safetensors"
    memory.save(path)
    memory.write(FACTS[:1])
    memory.save(path)
    assert len(lm.load_memory(path)) == 1


def test_unknown_id_leaves_memory_unchanged(lm: larimar.Larimar) -> None:
    memory = lm.new_memory()
    memory.write(FACTS[:2])
    before = memory.state
    with pytest.raises(KeyError, match="no fact with id 'nope'"):
        memory.forget("nope")
    assert memory.state is before and len(memory) == 2


@pytest.mark.parametrize(
    ("facts", "paraphrases", "match"),
    [
        ([""], None, r"facts\[0\] is empty"),
        (["  "], None, "empty"),
        ([FACTS[0], 3], None, r"facts\[1\] is int, not a string"),
        ("Paris is the capital of France.", None, "wrap a single fact in a list"),
        ([], None, "no facts given"),
        ([" ".join(["paris"] * 40)], None, r"facts\[0\] has 42 encoder tokens but the encoder reads at most 16"),
        ([FACTS[0], FACTS[1], " ".join(["paris"] * 40)], [[], ["a paraphrase"], []], r"^facts\[2\] has 42"),
        (FACTS[:2], [["a paraphrase"], ["fine", " ".join(["paris"] * 20)]], r"^paraphrases\[1\]\[1\] has 22"),
        (FACTS[:2], [["a paraphrase"]], "one list of strings per fact"),
        (FACTS[:1], [[""]], r"paraphrases\[0\]\[0\] is empty"),
    ],
)
def test_bad_input_stores_nothing(lm: larimar.Larimar, facts, paraphrases, match: str) -> None:
    memory = lm.new_memory()
    memory.write(FACTS[:1])
    before = memory.state
    with pytest.raises(ValueError, match=match):
        memory.write(facts, paraphrases)
    assert memory.state is before and len(memory) == 1 and len(memory.items.owners) == 1


def test_wrong_files(lm: larimar.Larimar, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no memory state file"):
        lm.load_memory(tmp_path / "missing.safetensors")
    (tmp_path / "text.safetensors").write_text("not a safetensors file")
    with pytest.raises(ValueError, match="not a readable memory state file"):
        lm.load_memory(tmp_path / "text.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a larimar memory state"):
        lm.load_memory(tmp_path / "other.safetensors")
    lm.model.memory.empty().save(tmp_path / "state.safetensors")
    with pytest.raises(ValueError, match="holds no fact log"):
        lm.load_memory(tmp_path / "state.safetensors")


def test_memory_of_another_model_migrates_on_load(lm: larimar.Larimar, model_dir: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A file of another model (an earlier built-in model) loads with its facts written again."""
    other = larimar.load(model_dir)
    with torch.no_grad():
        other.model.encoder.head.weight.add_(torch.randn_like(other.model.encoder.head.weight))
    memory = other.new_memory()
    ids = memory.write(FACTS[:2], paraphrases=[["A paraphrase of the first fact."], []])
    memory.forget(memory.write(FACTS[2:3])[0])
    memory.save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="belongs to another model"):
        lm.ask(FACTS[0], memory)
    with caplog.at_level("WARNING"):
        loaded = lm.load_memory(tmp_path / "m.safetensors")
    assert "written with another model" in caplog.text
    assert [(f.id, f.text, f.created, f.paraphrases) for f in loaded.facts()] == \
        [(f.id, f.text, f.created, f.paraphrases) for f in memory.facts()]
    fresh = lm.new_memory()
    fresh.write(FACTS[:2], paraphrases=[["A paraphrase of the first fact."], []])
    torch.testing.assert_close(loaded.items.latents, fresh.items.latents, rtol=1e-5, atol=1e-6)
    assert lm.ask(FACTS[0], loaded).fact_id == ids[0]
    with pytest.raises(ValueError, match="must be new and distinct"):
        loaded.write_facts(memory.facts()[:1])


def test_items_extend_appends_in_place_and_keeps_earlier_views() -> None:
    from larimar.editing.memory import Items

    def items(n: int, start: float) -> Items:
        rows = torch.arange(start, start + n, dtype=torch.float64)[:, None]
        return Items(rows.expand(n, 3).clone(), rows.expand(n, 2).clone(), rows[:, None].expand(n, 2, 4).clone(),
                     [f"f{start + i:g}" for i in range(n)])

    base = items(2, 0)
    grown = base.extend(items(3, 10))
    more = grown.extend(items(100, 20))  # past the first capacity
    branch = grown.extend(items(1, 99))  # an earlier view extended again: it must not clobber `more`
    assert base.latents[:, 0].tolist() == [0, 1] and len(base.owners) == 2
    assert grown.latents[:, 0].tolist() == [0, 1, 10, 11, 12]
    assert more.latents[:5, 0].tolist() == [0, 1, 10, 11, 12] and more.latents[5:, 0].tolist() == list(range(20, 120))
    assert branch.latents[:, 0].tolist() == [0, 1, 10, 11, 12, 99]
    assert more.latents[5, 0] == 20 and more.embeddings.shape == (105, 2, 4) and more.episodes.shape == (105,)


def test_copy_changes_independently_and_write_encoded_replays_a_write(lm: larimar.Larimar) -> None:
    memory = larimar.Memory(lm.model, episode_items=2)
    memory.write(FACTS[:3])
    twin = memory.copy()
    [new] = twin.write(FACTS[3:4])
    assert len(memory) == 3 and len(twin) == 4 and twin.episodes == 2
    replayed = memory.copy()
    start = len(memory.items.owners)
    rows = twin.items.select(torch.arange(len(twin.items.owners)) >= start)
    replayed.write_encoded(rows, [f for f in twin.facts() if f.id == new])
    assert replayed.facts() == twin.facts() and replayed.items.episodes.tolist() == twin.items.episodes.tolist()
    for a, b in zip((replayed.state.memory, replayed.state.gram_pinv), (twin.state.memory, twin.state.gram_pinv)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="exactly the given facts"):
        replayed.write_encoded(rows, [])
    pair = twin.copy()
    ids = pair.write([SENTENCES[4], SENTENCES[5]], paraphrases=[["p one"], ["p two"]])  # rows: a, a', b, b'
    both = pair.items.select(torch.arange(len(pair.items.owners)) >= len(twin.items.owners))
    mixed = Items(both.latents[[0, 2, 1, 3]], both.keys[[0, 2, 1, 3]], both.embeddings[[0, 2, 1, 3]],
                  [both.owners[i] for i in (0, 2, 1, 3)])
    with pytest.raises(ValueError, match="each fact's rows together"):
        replayed.write_encoded(mixed, [f for f in pair.facts() if f.id in ids])
    assert len(replayed) == 4  # nothing written
    assert [pair.item_text(r) for r in range(len(pair.items.owners))][-4:] == [SENTENCES[4], "p one", SENTENCES[5], "p two"]


def test_forgotten_rows_leave_lazily_and_never_match(lm: larimar.Larimar, tmp_path: Path) -> None:
    """A forget marks its rows; the live rows are copied once the forgotten ones outnumber
    max(64, a quarter of the live ones). Before and after, only live rows are seen or matched."""
    memory = larimar.Memory(lm.model, episode_items=8)
    vocab = sorted({w.strip(".").lower() for sentence in SENTENCES for w in sentence.split()})  # the tiny encoder's
    rng = random.Random(0)
    texts = [" ".join(rng.sample(vocab, 5)).capitalize() + "." for _ in range(101)]
    ids = memory.write(texts[:100])
    gone = [i for i in range(100) if i % 10 < 7]  # 70 facts
    for n, i in enumerate(gone[:30]):
        memory.forget(ids[i])
    rows, _, live = memory.search_rows()
    assert live is not None and rows.shape[0] == 100 and int(live.sum()) == 70  # not copied yet
    kept = [i for i in range(100) if i not in gone[:30]]
    for i in (kept[0], kept[-1]):
        decision = lm.scope(texts[i], memory)
        assert decision.in_scope and decision.fact_id == ids[i]
    for i in gone[:3]:
        assert lm.scope(texts[i], memory).fact_id not in set(ids[j] for j in gone[:30])
    for i in gone[30:]:
        memory.forget(ids[i])
    rows, coarse, live = memory.search_rows()
    assert rows.shape[0] == 35 and live is not None and int(live.sum()) == 30  # copied once, at 65 forgotten
    left = [i for i in range(100) if i not in gone]
    saved = tmp_path / "lazy.safetensors"
    memory.save(saved)  # writes live rows only, and leaves this memory's rows (another thread may be reading them)
    assert memory.search_rows() == (rows, coarse, live) and memory.item_count() == 30
    reloaded = lm.load_memory(saved)
    assert len(reloaded.items.owners) == 30 and [f.id for f in reloaded.facts()] == [ids[i] for i in left]
    torch.testing.assert_close(recalled(reloaded), reloaded.items.latents, rtol=0, atol=1e-8)
    assert memory.items.owners == [ids[i] for i in left]  # `items` shows (and keeps) the live rows
    assert memory.search_rows()[2] is None
    torch.testing.assert_close(recalled(memory), memory.items.latents, rtol=0, atol=1e-8)
    [new] = memory.write([texts[100]])  # fills by live counts
    counts = torch.bincount(memory.items.episodes).tolist()
    assert max(counts) <= 8 and memory.item_text(len(memory.items.owners) - 1) == texts[100]
    assert lm.scope(texts[100], memory).fact_id == new


def test_the_newest_episodes_count_kept_by_writes_and_forgets_matches_a_recount(lm: larimar.Larimar) -> None:
    """A write places its items by the newest episode's live rows, counted once and then kept
    by each write and forget: over random writes (with paraphrases), forgets and copies, the
    kept count equals a recount of the rows."""
    rng = random.Random(3)
    memory = larimar.Memory(lm.model, episode_items=4)
    ids: list[str] = []
    for step in range(60):
        if ids and rng.random() < 0.4:
            memory.forget(ids.pop(rng.randrange(len(ids))))
        else:
            group = [[f"said again {step}"] * rng.randrange(2)]
            ids += memory.write([SENTENCES[step % len(SENTENCES)]], paraphrases=group)
        if step % 7 == 0:
            memory = memory.copy()
        rows = memory.items.episodes  # the live rows' episodes (reading `items` drops the forgotten rows)
        newest = int((rows == memory.episodes - 1).sum())
        assert memory._newest_live == newest  # kept, not recounted
        assert memory._places([4]) == ([memory.episodes - (newest == 0)], 4)  # a full group opens a new episode


def test_an_id_written_again_after_forgetting_is_forgotten_again(lm: larimar.Larimar) -> None:
    """A forgotten fact's rows stay stored until the live rows are copied; the same id written
    again (e.g. replayed from a log) is a new run of rows, and forgetting it removes only those."""
    memory = larimar.Memory(lm.model)
    ids = memory.write(FACTS[:3], paraphrases=[[], ["A paraphrase of the second."], []])
    again = next(f for f in memory.facts() if f.id == ids[1])
    memory.forget(ids[1])
    memory.write_facts([again])
    rows, _, live = memory.search_rows()
    assert rows.shape[0] == 6 and live is not None and live.tolist() == [True, False, False, True, True, True]
    assert memory.owner(4) == ids[1] and memory.item_text(5) == "A paraphrase of the second."
    memory.forget(ids[1])
    assert memory.item_count() == 2 and [f.id for f in memory.facts()] == [ids[0], ids[2]]
    alone = larimar.Memory(lm.model)
    alone.write_facts(memory.facts())
    torch.testing.assert_close(memory.state.memory, alone.state.memory, rtol=0, atol=1e-6)  # two forgets' rounding
    torch.testing.assert_close(recalled(memory), alone.items.latents, rtol=0, atol=1e-6)
