"""The web page at / in headless Chromium: create a memory, write, ask, forget, see the audit log."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.serve.cdp import Browser, chromium_binary
from tests.serve.conftest import AppFactory
from tests.serve.server_process import free_port

FACT = "Paris is the capital of France."
OTHER = "The cat sat on the mat in the park."
HOSTILE = "<img src=x onerror=window.pwned=1>"


@pytest.fixture
def server(make_app: AppFactory) -> Iterator[str]:
    """The app under uvicorn on a free loopback port, in a thread."""
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(make_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    while not instance.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the web page test needs it")
    page = Browser(binary, tmp_path / "profile")
    yield page
    page.close()


def set_value(page: Browser, element: str, value: str) -> None:
    page.js(f"document.getElementById({json.dumps(element)}).value = {json.dumps(value)}")


def click(page: Browser, element: str) -> None:
    page.js(f"document.getElementById({json.dumps(element)}).click()")


def rows(page: Browser) -> list[dict[str, str]]:
    return page.js("[...document.querySelectorAll('#facts tr')].map(r => "
                   "({id: r.dataset.id, text: r.children[1].textContent, cls: r.className}))")  # type: ignore[no-any-return]


def test_page_writes_asks_and_forgets(server: str, browser: Browser) -> None:
    browser.send("Page.navigate", url=server + "/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('create')")

    set_value(browser, "new-name", "from the browser")
    click(browser, "create")
    key = browser.wait_for("document.getElementById('created-key').textContent")
    memory_id = browser.js("document.getElementById('memory-id').value")
    assert key.startswith(f"lmk_{memory_id}.")

    set_value(browser, "new-facts", f"{FACT}\n{OTHER}\n{HOSTILE}\n")
    click(browser, "write")
    browser.wait_for("document.querySelectorAll('#facts tr').length === 3")
    shown = rows(browser)
    assert [r["text"] for r in shown] == [FACT, OTHER, HOSTILE]
    assert browser.js("window.pwned === undefined && document.querySelectorAll('#facts img').length === 0")

    set_value(browser, "prompt", FACT)
    click(browser, "ask")
    browser.wait_for("document.getElementById('scope').dataset.inScope !== undefined")
    assert browser.js("document.getElementById('scope').dataset.inScope") == "true"
    assert browser.js("document.getElementById('scope').dataset.factId") == shown[0]["id"]
    assert browser.js("document.getElementById('answer').textContent")

    browser.js(f"document.querySelector('#facts tr[data-id=\"{shown[0]['id']}\"] button.forget').click()")
    browser.wait_for("document.querySelectorAll('#facts tr').length === 2")
    click(browser, "show-forgotten")
    browser.wait_for("document.querySelectorAll('#facts tr').length === 3")
    assert [r["cls"] for r in rows(browser)] == ["forgotten", "", ""]

    api = httpx.get(f"{server}/memories/{memory_id}/facts", headers={"Authorization": f"Bearer {key}"}).json()
    assert [f["text"] for f in api["facts"]] == [OTHER, HOSTILE]


def test_page_shows_api_errors(server: str, browser: Browser) -> None:
    browser.send("Page.navigate", url=server + "/")
    browser.wait_for("document.readyState === 'complete' && !!document.getElementById('open')")
    set_value(browser, "memory-id", "0123456789abcdef")
    set_value(browser, "api-key", "not-a-key")
    click(browser, "open")
    assert "invalid API key" in browser.wait_for("document.getElementById('status').textContent")
