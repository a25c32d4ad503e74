"""Log entries of the memory service and their replay: the exact updates a change applied.

A write is logged as the items it added (latents (N, C), keys (N, K), scope embeddings (N, S, H),
float64, each row's fact id) and its facts. Replaying it applies the same sequential RLS update
(`EpisodicMemory.update` with alpha = +1 and the logged keys) to the state it was applied to,
so the replayed state is the one the write computed. A forget is logged by its fact id and
replayed with `Memory.forget`, which uses the items already in the memory.

A write entry names the model that encoded it (its fingerprint). One encoded by another model
(an upgrade of the built-in model), or, for entries from before the fingerprint was logged, one
replayed onto a snapshot of another model, is replayed by encoding its facts again: the memory
migrates as a memory file does (`Memory.load`).
"""

from __future__ import annotations

import json
import struct
import tempfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from ..editing import Fact, Larimar, Memory
from ..editing.memory import Items
from ..editing.persistence import model_fingerprint
from .storage import LogEntry

WRITE, FORGET = "write", "forget"


def memory_bytes(memory: Memory) -> bytes:
    """The memory as `Memory.save` writes it."""
    with tempfile.TemporaryDirectory(prefix="larimar-serve-") as folder:
        path = Path(folder) / "memory.safetensors"
        memory.save(path)
        return path.read_bytes()


def memory_from_bytes(lm: Larimar, data: bytes) -> Memory:
    """The memory serialised in `data` (a `Memory.save` file), for this model; ValueError otherwise."""
    with tempfile.TemporaryDirectory(prefix="larimar-serve-") as folder:
        path = Path(folder) / "memory.safetensors"
        path.write_bytes(data)
        return lm.load_memory(path)


def copy(memory: Memory) -> Memory:
    """A memory equal to `memory` that can change without touching it (tensors are never mutated)."""
    return memory.copy()


def encode_write(before: Memory, after: Memory, ids: Sequence[str]) -> bytes:
    """The log entry of a write that turned `before` into `after` (a copy of it) adding facts `ids`."""
    start = before.item_count()  # `before` is shared with readers: nothing here may change it
    items = after.items
    tensors = {"latents": items.latents[start:], "keys": items.keys[start:], "embeddings": items.embeddings[start:]}
    written = {f.id: f for f in after.facts()}
    meta = {"owners": items.owners[start:], "model": model_fingerprint(after.model),
            "facts": [{"id": i, "text": written[i].text, "created": written[i].created.isoformat(),
                       "paraphrases": list(written[i].paraphrases)} for i in ids]}
    return save_tensors({k: t.detach().contiguous().cpu() for k, t in tensors.items()},
                        metadata={"entry": json.dumps(meta)})


def _metadata(data: bytes) -> dict[str, str]:
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    return dict(header.get("__metadata__", {}))


def written_facts(data: bytes) -> list[Fact]:
    """The facts a write entry added."""
    meta = json.loads(_metadata(data)["entry"])
    return [Fact(r["id"], r["text"], datetime.fromisoformat(r["created"]), tuple(r["paraphrases"])) for r in meta["facts"]]


def foreign_snapshot(lm: Larimar, data: bytes | None) -> bool:
    """Whether a snapshot (a `Memory.save` file) was written by another model than `lm`'s."""
    return data is not None and json.loads(_metadata(data).get("metadata", "{}")).get("model") != model_fingerprint(lm.model)


@torch.no_grad()
def apply_write(memory: Memory, data: bytes, migrate: bool = False) -> Memory:
    """`memory` with a logged write applied: the same update, on the same items, as when it was
    written; the facts encoded again if another model encoded them (or, for an entry that names
    no model, with `migrate`)."""
    meta = json.loads(_metadata(data)["entry"])
    logged = meta.get("model")
    if logged != model_fingerprint(memory.model) and (logged is not None or migrate):
        replayed = memory.copy()
        replayed.write_facts(written_facts(data))
        return replayed
    tensors = load_tensors(data)
    device = memory.search_rows()[0].device
    items = Items(tensors["latents"].to(device), tensors["keys"].to(device), tensors["embeddings"].to(device),
                  list(meta["owners"]))
    replayed = memory.copy()
    replayed.write_encoded(items, written_facts(data))
    return replayed


def apply(memory: Memory, entry: LogEntry, migrate: bool = False) -> Memory:
    """`memory` with one log entry replayed (a new memory; `memory` is not changed)."""
    if entry.op == WRITE:
        assert entry.data is not None
        return apply_write(memory, entry.data, migrate)
    if entry.op == FORGET:
        assert entry.fact_id is not None
        replayed = copy(memory)
        replayed.forget(entry.fact_id)
        return replayed
    raise ValueError(f"log entry {entry.seq} has an unknown operation {entry.op!r}; this server is older than the "
                     "database: upgrade larimar")


def replay(memory: Memory, entries: Sequence[LogEntry], migrate: bool = False) -> Memory:
    """`memory` with `entries` replayed in order (`migrate`: onto a snapshot of another model)."""
    for entry in entries:
        memory = apply(memory, entry, migrate)
    return memory
