"""Memory files: one safetensors file with the MemoryState, the written items and the fact log.

Tensors: the `MemoryState` ones of the E episodes (memory (E, K, C), gram_pinv and free
(E, K, K)) under their usual names, so `MemoryState.load` reads the file, plus item_latents
(N, C), item_keys (N, K) and item_embeddings (N, S, H) (scope keys), all float64, and
item_episodes (N,) int64. The JSON metadata holds the fact log and a fingerprint of the model
that wrote the file.

Files of version 1 (one episode, and sequence sketches without the reply-start context), and
files written by another model (another fingerprint, e.g. the built-in model of an earlier
release), are migrated on load: their facts are written again from their texts, keeping ids,
dates and paraphrases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..memory.state import FORMAT, FORMAT_VERSION, MemoryState, load_state_file
from ..model.larimar import LarimarModel
from .items import Fact, Items

logger = logging.getLogger(__name__)

KIND = "larimar.facts"
KIND_VERSION = 2


def model_fingerprint(model: LarimarModel) -> str:
    """Short hash of what gives latents and keys their meaning: the encoder head and the prior.

    Kept on the model until either tensor is replaced or changed in place (every service write
    and replayed log entry asks for it)."""
    tensors = (model.encoder.head.weight, model.memory.prior)
    stamp = tuple((t.data_ptr(), t._version) for t in tensors)
    cached = model.__dict__.get("_fingerprint")
    if cached is not None and cached[0] == stamp:
        return cached[1]
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(t.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    model.__dict__["_fingerprint"] = (stamp, digest.hexdigest()[:16])
    return model.__dict__["_fingerprint"][1]


def _fact_record(fact: Fact) -> dict[str, Any]:
    return {"id": fact.id, "text": fact.text, "created": fact.created.isoformat(), "paraphrases": list(fact.paraphrases)}


def _fact(record: dict[str, Any]) -> Fact:
    return Fact(record["id"], record["text"], datetime.fromisoformat(record["created"]), tuple(record["paraphrases"]))


def save_memory(path: Path, model: LarimarModel, state: MemoryState, items: Items, facts: list[Fact],
                episode_items: int) -> None:
    """Write a memory to `path` via a temporary file in the same folder and an atomic rename."""
    tensors = {name: t for name, t in (("memory", state.memory), ("gram_pinv", state.gram_pinv), ("free", state.free))}
    tensors |= {"item_latents": items.latents, "item_keys": items.keys, "item_embeddings": items.embeddings,
                "item_episodes": items.episodes}
    tensors = {k: t.detach().contiguous().cpu() for k, t in tensors.items()}
    log = {
        "kind": KIND, "kind_version": KIND_VERSION, "model": model_fingerprint(model),
        "facts": [_fact_record(f) for f in facts], "owners": items.owners, "episode_items": episode_items,
    }
    header = {"format": FORMAT, "version": str(FORMAT_VERSION), "metadata": json.dumps(log)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, temp, metadata=header)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


def read_facts(path: Path) -> list[Fact]:
    """The fact log of a memory file, without loading any model."""
    _, log = load_state_file(path, "cpu", tensors=False)
    return [_fact(r) for r in _check_kind(path, log)["facts"]]


def _check_kind(path: Path, log: dict[str, Any]) -> dict[str, Any]:
    if log.get("kind") != KIND:
        raise ValueError(f"{path} is a memory state but holds no fact log; it was not written by Memory.save")
    return log


def read_memory(model: LarimarModel, path: Path) -> tuple[MemoryState | None, Items | None, list[Fact], int | None]:
    """The state, items, facts and episode size of a file written by `save_memory` for this
    model; state and items are None for a file of version 1 or of another model, whose facts
    must be written again.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a larimar memory file, or written by a newer larimar.
    """
    device = model.encoder.head.weight.device
    tensors, log = load_state_file(path, device)
    _check_kind(path, log)
    facts = [_fact(r) for r in log["facts"]]
    version = int(log.get("kind_version", 1))
    if version > KIND_VERSION:
        raise ValueError(f"{path} was written by a newer larimar (fact log version {version}); upgrade larimar")
    if log.get("model") != model_fingerprint(model):
        logger.warning("%s was written with another model (fingerprint %s, this model %s): its %d facts are "
                       "written again from their texts", path, log.get("model"), model_fingerprint(model), len(facts))
        return None, None, facts, None
    if version < 2:
        return None, None, facts, None
    state = MemoryState(tensors["memory"], tensors["gram_pinv"], tensors["free"])
    items = Items(tensors["item_latents"], tensors["item_keys"], tensors["item_embeddings"], list(log["owners"]),
                  tensors["item_episodes"])
    return state, items, facts, log.get("episode_items")
