"""API keys: format, salted hashing, verification."""

from __future__ import annotations

from larimar.serve import auth


def test_key_names_its_memory_and_verifies_against_its_hash() -> None:
    memory_id = auth.new_memory_id()
    key = auth.new_key(memory_id)
    assert auth.key_memory(key) == memory_id
    stored = auth.hash_key(key)
    assert auth.matches(key, stored)
    assert not auth.matches(auth.new_key(memory_id), stored)
    assert not auth.matches(key[:-1] + ("A" if key[-1] != "A" else "B"), stored)


def test_hashes_are_salted() -> None:
    key = auth.new_key(auth.new_memory_id())
    first, second = auth.hash_key(key), auth.hash_key(key)
    assert first.salt != second.salt and first.digest != second.digest


def test_malformed_keys_name_no_memory() -> None:
    for key in ("", "lmk_", "lmk_xyz.abc", "Bearer lmk_0123456789abcdef." + "A" * 43, "lmk_0123456789abcdef." + "A" * 42):
        assert auth.key_memory(key) is None


def test_verified_keys_are_dropped_with_their_memory() -> None:
    cache = auth.VerifiedKeys()
    cache.add("k1", "m1")
    cache.add("k2", "m2")
    cache.drop_memory("m1")
    assert cache.memory_of("k1") is None and cache.memory_of("k2") == "m2"
