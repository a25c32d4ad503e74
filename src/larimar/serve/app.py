"""The FastAPI app: routes that authenticate, call `MemoryService`, and shape JSON.

Every error is JSON {"error": code, "detail": message} with a 4xx status (5xx only for bugs).
OpenAPI docs are at /docs (schema at /openapi.json); a small web page is at /.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..editing import Larimar, load
from .config import ServeConfig
from .errors import ServeError
from .limits import BodyLimit
from .observe import Metrics, Observe
from .page import PAGE
from .schemas import (
    AnswerOut, AskIn, CreatedOut, ErrorOut, FactOut, FactsOut, MemoriesOut, MemoryOut, NewMemory, ScoreIn,
    ScoresOut, WriteIn, WrittenOut,
)
from .service import MemoryService
from .threads import one_core
from .postgres import open_store

logger = logging.getLogger(__name__)

IMPORT_PATH = "/memories/import"
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422)}

_bearer = HTTPBearer(auto_error=False, description="The memory's API key (or the admin key).")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="Alternative to the Bearer header.")


def api_key(bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
            header: Annotated[str | None, Depends(_header)]) -> str | None:
    """The key of a request: `Authorization: Bearer <key>` or `X-API-Key: <key>`."""
    return bearer.credentials if bearer is not None else header


Key = Annotated[str | None, Depends(api_key)]


def create_app(config: ServeConfig, lm: Larimar | None = None) -> FastAPI:
    """The memory service app; loads the model once unless `lm` is given (tests share one)."""
    store = open_store(config.db)  # first: a bad --db fails before the model loads
    if lm is None:
        one_core()  # the loading thread: only the ask loop's runs torch on several cores (`threads`)
        lm = load(config.model)
    service = MemoryService(lm, store, config.limits, config.admin_key, snapshot_every=config.snapshot_every,
                            ask_batch=config.ask_batch, ask_wait_ms=config.ask_wait_ms,
                            snapshot_seconds=config.snapshot_seconds)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(title="Larimar memory service", version="1", responses=ERRORS, lifespan=lifespan,
                  description="Teach a language model facts in persistent, per-key memories; ask; forget. "
                              "Every change is logged with its time.")
    app.state.service = service
    metrics = Metrics(service.store.count)
    app.state.metrics = metrics
    service.observe_batches(metrics.ask_batch.observe)
    limits = config.limits
    app.add_middleware(BodyLimit, limit=lambda path: limits.max_import_bytes if path == IMPORT_PATH
                       else limits.max_request_bytes)
    app.add_middleware(Observe, metrics=metrics)
    _add_error_handlers(app)
    _add_memory_routes(app, service)
    _add_fact_routes(app, service)
    _add_query_routes(app, service)
    return app


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServeError)
    async def serve_error(_: Request, err: ServeError) -> JSONResponse:
        return _error(err.status, err.code, err.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        return _error(422, "invalid", f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        route = f"{request.method} {request.url.path}"
        detail = {404: f"no route {route}; the API is described at /docs",
                  405: f"{route} is not allowed; the API is described at /docs"}.get(err.status_code, str(err.detail))
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error(err.status_code, code, detail)


def _add_memory_routes(app: FastAPI, service: MemoryService) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(PAGE)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Liveness check."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {}}}})
    def metrics() -> Response:
        """Prometheus metrics: requests, latencies, memories, facts, ask batch sizes."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/memories", status_code=201, tags=["memories"])
    def create_memory(body: NewMemory, key: Key) -> CreatedOut:
        """Create an empty memory. The response holds its API key, shown only this once."""
        service.check_admin(key, "creating a memory")
        created = service.create(body.name)
        return CreatedOut(**MemoryOut.of(created.memory).model_dump(), api_key=created.api_key)

    @app.post(IMPORT_PATH, status_code=201, tags=["memories"], openapi_extra={"requestBody": {
        "required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def import_memory(request: Request, key: Key, name: str = "") -> CreatedOut:
        """Create a memory from a memory file (an export, or `Memory.save`); returns its new API key."""
        service.check_admin(key, "importing a memory")
        created = await run_in_threadpool(service.import_memory, name, await request.body())
        return CreatedOut(**MemoryOut.of(created.memory).model_dump(), api_key=created.api_key)

    @app.get("/memories", tags=["memories"])
    def list_memories(key: Key) -> MemoriesOut:
        """The memory of the key sent; every memory with the admin key."""
        rows = service.memories() if service.is_admin(key) else service.memories([service.key_owner(key)])
        return MemoriesOut(memories=[MemoryOut.of(r) for r in rows])

    @app.get("/memories/{memory_id}", tags=["memories"])
    def get_memory(memory_id: str, key: Key) -> MemoryOut:
        service.authenticate(key, memory_id)
        return MemoryOut.of(service.info(memory_id))

    @app.delete("/memories/{memory_id}", status_code=204, tags=["memories"])
    def delete_memory(memory_id: str, key: Key) -> Response:
        """Delete a memory and its key. Its facts stay in the database's audit log, marked forgotten."""
        service.authenticate(key, memory_id)
        service.delete(memory_id)
        return Response(status_code=204)

    @app.get("/memories/{memory_id}/export", tags=["memories"], response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def export_memory(memory_id: str, key: Key) -> Response:
        """The memory as a safetensors file, readable by `larimar.load_memory` and POST /memories/import."""
        service.authenticate(key, memory_id)
        return Response(service.export(memory_id), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{memory_id}.safetensors"'})


def _add_fact_routes(app: FastAPI, service: MemoryService) -> None:
    @app.post("/memories/{memory_id}/facts", status_code=201, tags=["facts"])
    def write_facts(memory_id: str, body: WriteIn, key: Key) -> WrittenOut:
        """Write a batch of facts. When this returns, they are stored durably."""
        service.authenticate(key, memory_id)
        rows = service.write(memory_id, body.facts, body.paraphrases)
        return WrittenOut(ids=[r.id for r in rows], facts=[FactOut.of(r) for r in rows])

    @app.get("/memories/{memory_id}/facts", tags=["facts"])
    def list_facts(memory_id: str, key: Key, include_forgotten: bool = Query(
            False, description="Also list forgotten facts (the audit log), with when they were forgotten.")) -> FactsOut:
        service.authenticate(key, memory_id)
        return FactsOut(facts=[FactOut.of(r) for r in service.facts(memory_id, include_forgotten)])

    @app.get("/memories/{memory_id}/facts/{fact_id}", tags=["facts"])
    def get_fact(memory_id: str, fact_id: str, key: Key) -> FactOut:
        """One fact of the log, forgotten or not."""
        service.authenticate(key, memory_id)
        return FactOut.of(service.fact(memory_id, fact_id))

    @app.delete("/memories/{memory_id}/facts/{fact_id}", tags=["facts"])
    def forget_fact(memory_id: str, fact_id: str, key: Key) -> FactOut:
        """Forget a fact exactly. It stays in the log with the time it was forgotten."""
        service.authenticate(key, memory_id)
        return FactOut.of(service.forget(memory_id, fact_id))


def _add_query_routes(app: FastAPI, service: MemoryService) -> None:
    @app.post("/memories/{memory_id}/ask", tags=["ask"])
    def ask(memory_id: str, body: AskIn, key: Key) -> AnswerOut:
        """Generate an answer; the memory conditions it when the prompt is in scope."""
        service.authenticate(key, memory_id)
        answer = service.ask(memory_id, body.prompt, body.max_new_tokens, body.scope_threshold)
        return AnswerOut(text=answer.text, in_scope=answer.in_scope, fact_id=answer.fact_id,
                         fact=service.fact_text(memory_id, answer.fact_id), similarity=answer.similarity,
                         score=answer.score)

    @app.post("/memories/{memory_id}/score", tags=["ask"])
    def score(memory_id: str, body: ScoreIn, key: Key) -> ScoresOut:
        """Score candidate continuations of the prompt (mean token NLL; lower is likelier)."""
        service.authenticate(key, memory_id)
        scored = service.score(memory_id, body.prompt, body.candidates, body.scope_threshold)
        best = min(range(len(scored.scores)), key=scored.scores.__getitem__)
        return ScoresOut(scores=scored.scores, best=best, in_scope=scored.in_scope, fact_id=scored.fact_id,
                         fact=service.fact_text(memory_id, scored.fact_id), similarity=scored.similarity)
