"""Request and response bodies of the HTTP API (they make the OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from .storage import FactRow, MemoryRow


class Body(BaseModel):
    """Request bodies reject unknown fields, so a misspelt option is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class NewMemory(Body):
    name: str = Field("", description="A label for the memory (shown in listings).")


class MemoryOut(BaseModel):
    id: str
    name: str
    created: datetime
    facts: int = Field(description="Facts in the memory (forgotten ones not counted).")

    @classmethod
    def of(cls, row: MemoryRow) -> MemoryOut:
        return cls(id=row.id, name=row.name, created=row.created, facts=row.facts)


class CreatedOut(MemoryOut):
    api_key: str = Field(description="The memory's API key. It is shown only now: keep it.")


class MemoriesOut(BaseModel):
    memories: list[MemoryOut]


class WriteIn(Body):
    facts: list[str] = Field(description="Sentences to write, e.g. ['The Eiffel Tower is located in Rome.'].")
    paraphrases: list[list[str]] | None = Field(
        None, description="Optional: one list of paraphrases per fact, written with it and forgotten with it.")


class FactOut(BaseModel):
    id: str
    text: str
    created: datetime
    forgotten: datetime | None = Field(None, description="When the fact was forgotten; null while it is in the memory.")
    paraphrases: list[str] = []

    @classmethod
    def of(cls, row: FactRow) -> FactOut:
        return cls(id=row.id, text=row.text, created=row.created, forgotten=row.forgotten,
                   paraphrases=list(row.paraphrases))


class WrittenOut(BaseModel):
    ids: list[str] = Field(description="The new facts' ids, in the order written.")
    facts: list[FactOut]


class FactsOut(BaseModel):
    facts: list[FactOut]


class AskIn(Body):
    prompt: str = Field(description="A question or the start of a sentence.")
    max_new_tokens: int | None = Field(None, description="Tokens to generate at most; default 20 (or the server's limit).")
    scope_threshold: float | None = Field(
        None, description="The score a prompt needs for its nearest fact to use the memory: the trained scope "
                          "detector's probability (the built-in model), else the cosine similarity; default: the model's.")


class Scope(BaseModel):
    in_scope: bool = Field(description="Whether the memory conditioned the answer.")
    fact_id: str | None = Field(description="The nearest written fact (null in an empty memory).")
    fact: str | None = Field(description="That fact's text.")
    similarity: float | None = Field(description="Cosine similarity of the prompt to that fact.")


class AnswerOut(Scope):
    text: str = Field(description="The generated continuation.")
    score: float | None = Field(None, description="The scope detector's score for that fact (the trained "
                                                  "detector's probability; in scope when >= the threshold).")


class ScoreIn(Body):
    prompt: str = Field(description="The prompt the candidates continue.")
    candidates: list[str] = Field(description="Continuations to score, e.g. ['Paris', 'Rome'].")
    scope_threshold: float | None = None


class ScoresOut(Scope):
    scores: list[float] = Field(description="Mean token negative log-likelihood (nats) per candidate; lower is likelier.")
    best: int = Field(description="Index of the likeliest candidate.")


class ErrorOut(BaseModel):
    error: str = Field(description="Short machine-readable code, e.g. 'invalid', 'not_found'.")
    detail: str = Field(description="What was wrong and what to do.")
