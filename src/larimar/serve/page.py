"""The web page served at /: browse a memory's facts, write, forget and ask (plain HTML + JS).

Text from the API is inserted with `textContent`, never as HTML. The key stays in the page's
memory (and sessionStorage of this tab), and is sent as `Authorization: Bearer <key>`.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Larimar memory</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  fieldset { border: 1px solid #ccc; border-radius: 6px; margin: 0 0 1rem; padding: .6rem 1rem 1rem; }
  input[type=text], textarea { width: 100%; box-sizing: border-box; font: inherit; padding: .3rem; }
  textarea { height: 4.5rem; }
  button { margin-top: .4rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .25rem .4rem; border-bottom: 1px solid #eee; vertical-align: top; }
  tr.forgotten td { color: #999; text-decoration: line-through; }
  #status { min-height: 1.3rem; color: #a00; }
  #status.ok { color: #070; }
  code { background: #f4f4f4; padding: 0 .2rem; }
</style>
</head>
<body>
<h1>Larimar memory</h1>
<p>Teach the model facts, ask it, make it forget. API docs: <a href="docs">/docs</a>.</p>
<div id="status" role="status"></div>

<fieldset>
  <legend>Memory</legend>
  <label>Memory id <input type="text" id="memory-id" autocomplete="off"></label>
  <label>API key <input type="text" id="api-key" autocomplete="off"></label>
  <button id="open">Open</button>
  <p>or create a new one:
    <input type="text" id="new-name" placeholder="name (optional)" style="width: 14rem">
    <button id="create">Create memory</button></p>
  <p id="created" hidden>Keep this key, it is shown only once: <code id="created-key"></code></p>
</fieldset>

<fieldset>
  <legend>Facts</legend>
  <label><input type="checkbox" id="show-forgotten"> show forgotten facts (audit log)</label>
  <table><thead><tr><th>id</th><th>fact</th><th>written</th><th>forgotten</th><th></th></tr></thead>
    <tbody id="facts"></tbody></table>
  <label>New facts, one per line <textarea id="new-facts"></textarea></label>
  <button id="write">Write</button>
</fieldset>

<fieldset>
  <legend>Ask</legend>
  <input type="text" id="prompt" placeholder="The Eiffel Tower is located in">
  <button id="ask">Ask</button>
  <p>Answer: <b id="answer"></b></p>
  <p id="scope"></p>
</fieldset>

<script>
"use strict";
const $ = (id) => document.getElementById(id);
let memoryId = sessionStorage.getItem("larimar.memory") || "";
let apiKey = sessionStorage.getItem("larimar.key") || "";
$("memory-id").value = memoryId;
$("api-key").value = apiKey;

function status(text, ok) {
  $("status").textContent = text;
  $("status").className = ok ? "ok" : "";
}

async function call(method, path, body) {
  const headers = {"Accept": "application/json"};
  if (apiKey) headers["Authorization"] = "Bearer " + apiKey;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = response.status === 204 ? null : await response.json();
  if (!response.ok) throw new Error(data && data.detail ? data.detail : response.statusText);
  return data;
}

function remember(id, key) {
  memoryId = id; apiKey = key;
  $("memory-id").value = id; $("api-key").value = key;
  sessionStorage.setItem("larimar.memory", id);
  sessionStorage.setItem("larimar.key", key);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function factRow(fact) {
  const row = document.createElement("tr");
  row.dataset.id = fact.id;
  if (fact.forgotten) row.className = "forgotten";
  cell(row, fact.id);
  cell(row, fact.text);
  cell(row, new Date(fact.created).toLocaleString());
  cell(row, fact.forgotten ? new Date(fact.forgotten).toLocaleString() : "");
  const actions = cell(row, "");
  if (!fact.forgotten) {
    const button = document.createElement("button");
    button.textContent = "Forget";
    button.className = "forget";
    button.addEventListener("click", () => forget(fact.id));
    actions.appendChild(button);
  }
  return row;
}

async function refresh() {
  if (!memoryId) return;
  const forgotten = $("show-forgotten").checked;
  const data = await call("GET", `memories/${encodeURIComponent(memoryId)}/facts?include_forgotten=${forgotten}`);
  $("facts").replaceChildren(...data.facts.map(factRow));
}

async function guarded(action) {
  try { await action(); } catch (err) { status(err.message, false); }
}

async function forget(factId) {
  await guarded(async () => {
    await call("DELETE", `memories/${encodeURIComponent(memoryId)}/facts/${encodeURIComponent(factId)}`);
    status(`forgot ${factId}`, true);
    await refresh();
  });
}

$("open").addEventListener("click", () => guarded(async () => {
  remember($("memory-id").value.trim(), $("api-key").value.trim());
  await refresh();
  status(`opened memory ${memoryId}`, true);
}));

$("create").addEventListener("click", () => guarded(async () => {
  apiKey = "";
  const created = await call("POST", "memories", {name: $("new-name").value});
  remember(created.id, created.api_key);
  $("created-key").textContent = created.api_key;
  $("created").hidden = false;
  await refresh();
  status(`created memory ${created.id}`, true);
}));

$("show-forgotten").addEventListener("change", () => guarded(refresh));

$("write").addEventListener("click", () => guarded(async () => {
  const facts = $("new-facts").value.split("\\n").map((s) => s.trim()).filter((s) => s);
  const written = await call("POST", `memories/${encodeURIComponent(memoryId)}/facts`, {facts});
  $("new-facts").value = "";
  status(`wrote ${written.ids.length} fact(s): ${written.ids.join(", ")}`, true);
  await refresh();
}));

$("ask").addEventListener("click", () => guarded(async () => {
  $("answer").textContent = "…";
  const answer = await call("POST", `memories/${encodeURIComponent(memoryId)}/ask`, {prompt: $("prompt").value});
  $("answer").textContent = answer.text;
  const similarity = answer.similarity === null ? "-" : answer.similarity.toFixed(3);
  $("scope").textContent = (answer.in_scope ? "in scope" : "out of scope") +
    `; nearest fact ${answer.fact_id || "-"}` + (answer.fact ? ` (${answer.fact})` : "") + `; similarity ${similarity}`;
  $("scope").dataset.inScope = String(answer.in_scope);
  $("scope").dataset.factId = answer.fact_id || "";
  status("answered", true);
}));

guarded(refresh);
</script>
</body>
</html>
"""
