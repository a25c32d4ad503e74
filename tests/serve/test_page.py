"""The web page at / in headless Chromium, as a person uses it: create a memory, write, ask in the
conversation view, search, forget, see the audit log; the error paths; a narrow screen.

Screenshots go to $LARIMAR_SCREENSHOTS (default: the test's temporary folder) to be looked at."""

from __future__ import annotations

import json
import os
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


def shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("LARIMAR_SCREENSHOTS") or tmp_path / "screenshots")


def open_page(page: Browser, server: str, width: int = 1000, height: int = 1500) -> None:
    page.viewport(width, height, mobile=width < 600)
    page.send("Page.navigate", url=server + "/")
    page.wait_for("document.readyState === 'complete' && !!document.getElementById('create')")


def focus_and_enter(page: Browser, element: str, ctrl: bool = False) -> None:
    page.js(f"document.getElementById({json.dumps(element)}).focus()")
    page.press("Enter", modifiers=2 if ctrl else 0)


def message(page: Browser, element: str) -> dict[str, str]:
    return page.js(f"(() => {{ const m = document.getElementById({json.dumps(element)}); "  # type: ignore[no-any-return]
                   "return {text: m.textContent, cls: m.className}; })()")


def turns(page: Browser) -> list[dict[str, str]]:
    return page.js("[...document.querySelectorAll('#conversation li')].map(li => ({question: "  # type: ignore[no-any-return]
                   "li.querySelector('.question').textContent, reply: li.querySelector('.reply').textContent, "
                   "scope: li.querySelector('.scope').textContent, inScope: li.dataset.inScope, "
                   "factId: li.dataset.factId, error: li.dataset.error}))")


def test_page_writes_asks_searches_and_forgets(server: str, browser: Browser, tmp_path: Path) -> None:
    open_page(browser, server)
    assert browser.js("document.getElementById('api-key').type") == "password"
    assert "No memory open" in browser.js("document.getElementById('facts').textContent")

    set_value(browser, "new-name", "from the browser")
    focus_and_enter(browser, "new-name")  # Enter submits
    key = browser.wait_for("document.getElementById('created-key').textContent")
    memory_id = browser.js("document.getElementById('memory-id').value")
    assert key.startswith(f"lmk_{memory_id}.")
    browser.wait_for("document.getElementById('create-msg').textContent")
    assert message(browser, "create-msg") == {"text": f"created memory {memory_id}", "cls": "msg ok"}
    browser.wait_for("document.getElementById('facts').textContent.includes('No facts yet')")

    set_value(browser, "new-facts", f"{FACT}\n{OTHER}\n{HOSTILE}\n")
    focus_and_enter(browser, "new-facts", ctrl=True)  # Ctrl+Enter writes
    browser.wait_for("document.querySelectorAll('#facts tr:not(.empty)').length === 3")
    shown = rows(browser)
    assert [r["text"] for r in shown] == [FACT, OTHER, HOSTILE]
    assert browser.js("window.pwned === undefined && document.querySelectorAll('#facts img').length === 0")
    assert "wrote 3 fact(s)" in browser.wait_for("document.getElementById('write-msg').textContent")

    set_value(browser, "prompt", FACT)
    focus_and_enter(browser, "prompt")
    browser.wait_for("!!document.querySelector('#conversation li') && "
                     "document.querySelector('#conversation li').dataset.inScope !== undefined")
    [turn] = turns(browser)
    assert turn["question"] == FACT and turn["inScope"] == "true" and turn["factId"] == shown[0]["id"]
    assert turn["reply"] and turn["reply"] != "…"
    assert "from memory" in turn["scope"] and FACT in turn["scope"] and "similarity" in turn["scope"]
    browser.screenshot(shots(tmp_path) / "page-conversation.png")

    set_value(browser, "search", "cat sat")
    browser.js("document.getElementById('search').dispatchEvent(new Event('input'))")
    assert [r["text"] for r in rows(browser)] == [OTHER]
    set_value(browser, "search", "nothing like this")
    browser.js("document.getElementById('search').dispatchEvent(new Event('input'))")
    assert "No fact matches" in browser.js("document.getElementById('facts').textContent")
    set_value(browser, "search", "")
    browser.js("document.getElementById('search').dispatchEvent(new Event('input'))")

    browser.js(f"document.querySelector('#facts tr[data-id=\"{shown[0]['id']}\"] button.forget').click()")
    browser.wait_for("document.querySelectorAll('#facts tr').length === 2")
    browser.wait_for("document.getElementById('facts-msg').textContent")
    assert message(browser, "facts-msg") == {"text": f"forgot {shown[0]['id']}", "cls": "msg ok"}
    click(browser, "show-forgotten")
    browser.wait_for("document.querySelectorAll('#facts tr').length === 3")
    assert [r["cls"] for r in rows(browser)] == ["forgotten", "", ""]
    browser.screenshot(shots(tmp_path) / "page-facts.png")

    api = httpx.get(f"{server}/memories/{memory_id}/facts", headers={"Authorization": f"Bearer {key}"}).json()
    assert [f["text"] for f in api["facts"]] == [OTHER, HOSTILE]


def test_page_error_paths(server: str, browser: Browser, tmp_path: Path) -> None:
    open_page(browser, server)
    for button, where in (("ask", "ask-msg"), ("write", "write-msg")):  # before any memory is open
        set_value(browser, "prompt", "Where is Paris?")
        set_value(browser, "new-facts", FACT)
        click(browser, button)
        shown = message(browser, where)
        assert "open a memory first" in shown["text"] and shown["cls"] == "msg", shown
    assert "no route" not in browser.js("document.body.textContent")
    assert turns(browser) == []

    click(browser, "open")  # empty fields
    assert message(browser, "open-msg") == {"text": "enter the memory id and its API key", "cls": "msg"}
    set_value(browser, "memory-id", "0123456789abcdef")
    click(browser, "open")
    assert message(browser, "open-msg")["text"] == "enter the API key"
    set_value(browser, "api-key", "not-a-key")
    focus_and_enter(browser, "api-key")
    assert "invalid API key" in browser.wait_for("document.getElementById('open-msg').textContent")
    assert message(browser, "open-msg")["cls"] == "msg"
    assert message(browser, "ask-msg")["text"] == "" and message(browser, "write-msg")["text"] == ""

    created = httpx.post(f"{server}/memories", json={"name": "errors"}).json()
    set_value(browser, "memory-id", created["id"])
    set_value(browser, "api-key", created["api_key"])
    click(browser, "open")
    browser.wait_for("document.getElementById('open-msg').className === 'msg ok'")
    set_value(browser, "new-facts", "bad \u0000 byte")
    click(browser, "write")
    assert "control characters" in browser.wait_for("document.getElementById('write-msg').textContent")

    set_value(browser, "prompt", "x" * 2001)  # too long: the error lands in the turn and next to Ask
    click(browser, "ask")
    browser.wait_for("!!document.querySelector('#conversation li.error')")
    [turn] = turns(browser)
    assert turn["error"] == "true" and "at most 2000" in turn["reply"] and turn["scope"] == ""
    assert "at most 2000" in message(browser, "ask-msg")["text"]
    browser.screenshot(shots(tmp_path) / "page-errors.png")


def test_page_fits_a_narrow_screen(server: str, browser: Browser, tmp_path: Path) -> None:
    open_page(browser, server, 375, 1400)
    set_value(browser, "new-name", "phone")
    click(browser, "create")
    browser.wait_for("document.getElementById('created-key').textContent")
    set_value(browser, "new-facts", f"{FACT}\n{OTHER}")
    click(browser, "write")
    browser.wait_for("document.querySelectorAll('#facts tr:not(.empty)').length === 2")
    assert browser.js("document.documentElement.scrollWidth") <= 375 + 1  # no sideways scrolling
    browser.screenshot(shots(tmp_path) / "page-narrow.png")
