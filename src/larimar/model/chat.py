"""Questions as a chat model reads them: a question or a conversation -> the decoder's prompt.

Example:
    >>> prompt, asked = chat_prompt(tokenizer, "Who built the Great Wall of China?")
    >>> asked
    'Who built the Great Wall of China?'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant")

Question = str | Sequence[Mapping[str, str]]
"""A question, or chat messages [{"role": ..., "content": ...}, ...] ending with the user's turn."""


def messages_of(question: Question) -> list[dict[str, str]]:
    """The conversation of a question, checked; ValueError says what to fix."""
    if isinstance(question, str):
        if not question.strip():
            raise ValueError("the question is empty; ask something, e.g. 'Who built the Great Wall of China?'")
        return [{"role": "user", "content": question}]
    if not isinstance(question, Sequence) or not question:
        raise ValueError("pass a question string or a non-empty list of chat messages "
                         "[{'role': 'user', 'content': '...'}]")
    out = []
    for i, message in enumerate(question):
        if not isinstance(message, Mapping) or not {"role", "content"} <= set(message):
            raise ValueError(f"messages[{i}] must be a mapping with 'role' and 'content'; got {message!r:.80}")
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise ValueError(f"messages[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"messages[{i}] has no text content; pass a non-empty string")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "user":
        raise ValueError("the last message must be the user's question (role 'user')")
    return out


def chat_prompt(tokenizer: Any, question: Question) -> tuple[str, str]:
    """The decoder prompt for a question, and the user's question text (what scope reads).

    With a chat template the conversation is formatted by it, ending with the assistant's turn;
    without one the prompt is the conversation's texts, one per line (a plain continuation).
    """
    messages = messages_of(question)
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        prompt = "\n".join(m["content"] for m in messages) + "\n"
    return prompt, messages[-1]["content"]


_PREFIXES: dict[int, tuple[Any, tuple[int, ...]]] = {}


def template_prefix(tokenizer: Any) -> tuple[int, ...]:
    """The token ids every single-question chat prompt of this tokenizer starts with (the
    template's system turn and the user turn's header), without their last token, whose
    merges could depend on the question; () without a chat template."""
    cached = _PREFIXES.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        ids = [tokenizer(chat_prompt(tokenizer, q)[0], add_special_tokens=False)["input_ids"]
               for q in ("Who?", "where is 7 from", "  Hello there.")]
        n = 0
        while all(len(x) > n for x in ids) and len({x[n] for x in ids}) == 1:
            n += 1
        prefix = tuple(ids[0][: n - 1]) if n > 1 and getattr(tokenizer, "chat_template", None) else ()
        cached = _PREFIXES[id(tokenizer)] = (tokenizer, prefix)
    return cached[1]
