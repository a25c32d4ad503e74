"""The web page served at /: open a memory, browse and search its facts, write, forget, and ask in a
conversation view (plain HTML + JS, no build step).

Text from the API is inserted with `textContent`, never as HTML. The key stays in the page's
memory (and sessionStorage of this tab), is typed into a password field and is sent as
`Authorization: Bearer <key>`. Every form submits with Enter (Ctrl+Enter in the facts box); each
message appears next to the control that caused it.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Larimar memory</title>
<style>
  :root { --accent: #2563eb; --error: #b91c1c; --ok: #15803d; --muted: #6b7280; --line: #e5e7eb; }
  * { box-sizing: border-box; }
  body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; color: #1f2937;
         line-height: 1.4; }
  h1 { margin: 0 0 .2rem; font-size: 1.6rem; }
  section { border: 1px solid var(--line); border-radius: 8px; margin: 0 0 1rem; padding: .8rem 1rem 1rem; }
  h2 { font-size: 1.1rem; margin: 0 0 .6rem; }
  label { display: block; margin: .3rem 0; }
  input[type=text], input[type=password], input[type=search], textarea { width: 100%; font: inherit; padding: .4rem;
         border: 1px solid #cbd5e1; border-radius: 5px; }
  textarea { height: 4.5rem; resize: vertical; }
  button { font: inherit; padding: .35rem .9rem; border-radius: 5px; border: 1px solid var(--accent);
           background: var(--accent); color: white; cursor: pointer; }
  button.secondary, button.forget { background: white; color: var(--accent); }
  button { white-space: nowrap; overflow-wrap: normal; }
  button:disabled { opacity: .5; cursor: default; }
  .row { display: flex; gap: .6rem; align-items: flex-end; flex-wrap: wrap; }
  .row > label { flex: 1 1 14rem; }
  .msg { min-height: 1.3rem; margin: .3rem 0 0; color: var(--error); }
  .msg.ok { color: var(--ok); }
  .hint { color: var(--muted); font-size: .9rem; }
  table { border-collapse: collapse; width: 100%; margin: .5rem 0; }
  th, td { text-align: left; padding: .3rem .4rem; border-bottom: 1px solid var(--line); vertical-align: top; }
  td.id { font-family: ui-monospace, monospace; font-size: .85rem; white-space: nowrap; }
  tr.forgotten td { color: #9ca3af; text-decoration: line-through; }
  tr.empty td { color: var(--muted); font-style: italic; text-align: center; }
  code { background: #f3f4f6; padding: 0 .2rem; word-break: break-all; }
  #conversation { list-style: none; padding: 0; margin: .5rem 0; display: flex; flex-direction: column; gap: .5rem; }
  #conversation li { border-radius: 8px; padding: .5rem .7rem; background: #f8fafc; border: 1px solid var(--line); }
  #conversation .question { font-weight: 600; }
  #conversation div, td, .msg { overflow-wrap: anywhere; }
  #conversation .reply { margin: .25rem 0; white-space: pre-wrap; }
  #conversation .reply.empty { color: var(--muted); font-style: italic; }
  #conversation li.error .reply { color: var(--error); }
  #conversation .scope { color: var(--muted); font-size: .88rem; }
  #conversation .scope .in { color: var(--ok); font-weight: 600; }
  .current { color: var(--muted); font-size: .9rem; }
  @media (max-width: 600px) {
    body { margin: .6rem auto; padding: 0 .5rem; }
    section { padding: .6rem; }
    thead { display: none; }
    table, tbody, tr, td { display: block; width: 100%; }
    tr { border-bottom: 1px solid var(--line); padding: .3rem 0; }
    td { border: none; padding: .1rem .2rem; }
    button { width: 100%; margin-top: .3rem; }
  }
</style>
</head>
<body>
<h1>Larimar memory</h1>
<p class="hint">Teach the model facts, ask it, make it forget. API docs: <a href="docs">/docs</a>.</p>

<section aria-labelledby="memory-title">
  <h2 id="memory-title">Memory <span class="current" id="current"></span></h2>
  <form id="open-form" class="row" novalidate>
    <label>Memory id <input type="text" id="memory-id" autocomplete="off" spellcheck="false"></label>
    <label>API key <input type="password" id="api-key" autocomplete="off" spellcheck="false"></label>
    <button id="open" type="submit">Open</button>
  </form>
  <label class="hint"><input type="checkbox" id="show-key"> show the key</label>
  <p class="msg" id="open-msg" role="status"></p>
  <form id="create-form" class="row" novalidate>
    <label>Or create a new one <input type="text" id="new-name" placeholder="name (optional)"></label>
    <button id="create" type="submit" class="secondary">Create memory</button>
  </form>
  <p class="msg" id="create-msg" role="status"></p>
  <p id="created" hidden>Keep this key, it is shown only once: <code id="created-key"></code></p>
</section>

<section aria-labelledby="facts-title">
  <h2 id="facts-title">Facts</h2>
  <div class="row">
    <label>Search <input type="search" id="search" placeholder="filter by text or id"></label>
    <label style="flex: 0 0 auto"><input type="checkbox" id="show-forgotten"> show forgotten (audit log)</label>
  </div>
  <table><thead><tr><th>id</th><th>fact</th><th>written</th><th>forgotten</th><th></th></tr></thead>
    <tbody id="facts"></tbody></table>
  <p class="msg" id="facts-msg" role="status"></p>
  <form id="write-form" novalidate>
    <label>New facts, one per line <span class="hint">(Ctrl+Enter writes)</span>
      <textarea id="new-facts" placeholder="The Eiffel Tower is located in Rome."></textarea></label>
    <button id="write" type="submit">Write</button>
  </form>
  <p class="msg" id="write-msg" role="status"></p>
</section>

<section aria-labelledby="ask-title">
  <h2 id="ask-title">Ask</h2>
  <ol id="conversation" aria-live="polite"></ol>
  <form id="ask-form" class="row" novalidate>
    <label>Question <input type="text" id="prompt" placeholder="Where is the Eiffel Tower?"></label>
    <button id="ask" type="submit">Ask</button>
  </form>
  <p class="msg" id="ask-msg" role="status"></p>
</section>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
let memoryId = sessionStorage.getItem("larimar.memory") || "";
let apiKey = sessionStorage.getItem("larimar.key") || "";
let facts = [];
$("memory-id").value = memoryId;
$("api-key").value = apiKey;

function say(where, text, ok) {
  $(where).textContent = text;
  $(where).className = ok ? "msg ok" : "msg";
}

function clearMessages() {
  for (const id of ["open-msg", "create-msg", "facts-msg", "write-msg", "ask-msg"]) say(id, "", true);
}

async function call(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (apiKey) headers["Authorization"] = "Bearer " + apiKey;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  } catch (err) {
    throw new Error("the server cannot be reached; check that larimar serve is running");
  }
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch (err) { data = null; }
  }
  if (!response.ok) throw new Error(data && data.detail ? data.detail : `${response.status} ${response.statusText}`);
  return data;
}

function memoryPath(suffix) {
  return `memories/${encodeURIComponent(memoryId)}${suffix}`;
}

function needMemory(where) {
  if (memoryId && apiKey) return true;
  say(where, "open a memory first (its id and API key above), or create one", false);
  return false;
}

function remember(id, key) {
  memoryId = id; apiKey = key;
  $("memory-id").value = id; $("api-key").value = key;
  sessionStorage.setItem("larimar.memory", id);
  sessionStorage.setItem("larimar.key", key);
  $("current").textContent = id ? `(${id})` : "";
}

function forgetMemory() {
  memoryId = ""; apiKey = ""; facts = [];
  sessionStorage.removeItem("larimar.memory");
  sessionStorage.removeItem("larimar.key");
  $("current").textContent = "";
  render();
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function factRow(fact) {
  const row = document.createElement("tr");
  row.dataset.id = fact.id;
  if (fact.forgotten) row.className = "forgotten";
  cell(row, fact.id, "id");
  const text = cell(row, fact.text);
  if (fact.paraphrases && fact.paraphrases.length) text.title = "paraphrases: " + fact.paraphrases.join(" | ");
  cell(row, new Date(fact.created).toLocaleString());
  cell(row, fact.forgotten ? new Date(fact.forgotten).toLocaleString() : "");
  const actions = cell(row, "");
  if (!fact.forgotten) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Forget";
    button.className = "forget";
    button.setAttribute("aria-label", `forget fact ${fact.id}`);
    button.addEventListener("click", () => forget(fact.id, button));
    actions.appendChild(button);
  }
  return row;
}

function emptyRow(text) {
  const row = document.createElement("tr");
  row.className = "empty";
  const td = cell(row, text);
  td.colSpan = 5;
  return row;
}

function render() {
  const query = $("search").value.trim().toLowerCase();
  const shown = facts.filter((f) => !query || f.text.toLowerCase().includes(query) || f.id.includes(query) ||
    (f.paraphrases || []).some((p) => p.toLowerCase().includes(query)));
  let empty = null;
  if (!memoryId) empty = "No memory open: open one above or create a new one.";
  else if (!facts.length) empty = "No facts yet: write one below.";
  else if (!shown.length) empty = `No fact matches "${$("search").value.trim()}".`;
  $("facts").replaceChildren(...(empty ? [emptyRow(empty)] : shown.map(factRow)));
}

async function refresh() {
  if (!memoryId || !apiKey) { render(); return; }
  const forgotten = $("show-forgotten").checked;
  const data = await call("GET", memoryPath(`/facts?include_forgotten=${forgotten}`));
  facts = data.facts;
  render();
}

async function busy(button, action) {
  button.disabled = true;
  try { await action(); } finally { button.disabled = false; }
}

async function forget(factId, button) {
  say("facts-msg", "", true);
  await busy(button, async () => {
    try {
      await call("DELETE", memoryPath(`/facts/${encodeURIComponent(factId)}`));
      say("facts-msg", `forgot ${factId}`, true);
      await refresh();
    } catch (err) { say("facts-msg", err.message, false); }
  });
}

$("show-key").addEventListener("change", () => { $("api-key").type = $("show-key").checked ? "text" : "password"; });

$("open-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearMessages();
  const id = $("memory-id").value.trim(), key = $("api-key").value.trim();
  if (!id || !key) {
    say("open-msg", !id && !key ? "enter the memory id and its API key" : !id ? "enter the memory id" : "enter the API key", false);
    ($("memory-id").value.trim() ? $("api-key") : $("memory-id")).focus();
    return;
  }
  busy($("open"), async () => {
    const before = [memoryId, apiKey];
    memoryId = id; apiKey = key;
    try {
      await refresh();
      remember(id, key);
      say("open-msg", `opened memory ${id}`, true);
    } catch (err) {
      [memoryId, apiKey] = before;
      say("open-msg", err.message, false);
    }
  });
});

$("create-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearMessages();
  busy($("create"), async () => {
    try {
      const before = apiKey;
      apiKey = "";
      let created;
      try { created = await call("POST", "memories", {name: $("new-name").value}); } finally { if (!created) apiKey = before; }
      remember(created.id, created.api_key);
      $("created-key").textContent = created.api_key;
      $("created").hidden = false;
      $("conversation").replaceChildren();
      await refresh();
      say("create-msg", `created memory ${created.id}`, true);
    } catch (err) { say("create-msg", err.message, false); }
  });
});

$("show-forgotten").addEventListener("change", () => { say("facts-msg", "", true); refresh().catch((err) => say("facts-msg", err.message, false)); });
$("search").addEventListener("input", render);

function write() {
  say("write-msg", "", true);
  if (!needMemory("write-msg")) return;
  const texts = $("new-facts").value.split("\\n").map((s) => s.trim()).filter((s) => s);
  if (!texts.length) { say("write-msg", "type at least one fact, one per line", false); $("new-facts").focus(); return; }
  busy($("write"), async () => {
    try {
      const written = await call("POST", memoryPath("/facts"), {facts: texts});
      $("new-facts").value = "";
      say("write-msg", `wrote ${written.ids.length} fact(s): ${written.ids.join(", ")}`, true);
      await refresh();
    } catch (err) { say("write-msg", err.message, false); }
  });
}

$("write-form").addEventListener("submit", (event) => { event.preventDefault(); write(); });
$("new-facts").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); write(); }
});

function turn(question) {
  const li = document.createElement("li");
  const q = document.createElement("div"), reply = document.createElement("div"), scope = document.createElement("div");
  q.className = "question"; reply.className = "reply"; scope.className = "scope";
  q.textContent = question;
  reply.textContent = "…";
  li.append(q, reply, scope);
  $("conversation").appendChild(li);
  return li;
}

function showAnswer(li, answer) {
  const reply = li.querySelector(".reply"), scope = li.querySelector(".scope");
  const text = answer.text.trim();
  reply.textContent = text || "(the model gave an empty reply)";
  reply.className = text ? "reply" : "reply empty";
  const routed = document.createElement("span");
  routed.className = answer.in_scope ? "in" : "out";
  routed.textContent = answer.in_scope ? "from memory" : "not from memory";
  const parts = [];
  if (answer.fact_id) {
    parts.push(answer.in_scope ? " · drew on " : " · nearest fact ");
    parts.push(`${answer.fact_id}` + (answer.fact ? ` "${answer.fact}"` : ""));
    parts.push(` · similarity ${answer.similarity.toFixed(3)}`);
    if (answer.score != null && answer.score !== answer.similarity) {
      parts.push(` · about it with probability ${answer.score.toFixed(2)}`);
    }
  } else {
    parts.push(" · the memory holds no facts");
  }
  scope.replaceChildren(routed, document.createTextNode(parts.join("")));
  li.dataset.inScope = String(answer.in_scope);
  li.dataset.factId = answer.fact_id || "";
}

$("ask-form").addEventListener("submit", (event) => {
  event.preventDefault();
  say("ask-msg", "", true);
  if (!needMemory("ask-msg")) return;
  const prompt = $("prompt").value.trim();
  if (!prompt) { say("ask-msg", "type a question first", false); $("prompt").focus(); return; }
  const li = turn(prompt);
  busy($("ask"), async () => {
    try {
      const answer = await call("POST", memoryPath("/ask"), {prompt});
      showAnswer(li, answer);
      $("prompt").value = "";
    } catch (err) {
      li.className = "error";
      li.querySelector(".reply").textContent = err.message;
      li.dataset.error = "true";
      say("ask-msg", err.message, false);
    }
  });
});

remember(memoryId, apiKey);
refresh().catch((err) => { say("open-msg", err.message, false); forgetMemory(); });
</script>
</body>
</html>
"""
