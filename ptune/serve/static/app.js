// The chat page of `ptune serve`: plain JavaScript, no build step. It talks to the same OpenAI-compatible API
// as any client: GET /v1/models, POST /v1/chat/completions with stream: true (server-sent events).
// With --api_key the browser asks for the key once (HTTP Basic, any user name) and sends it with every call.
// With tools (the chat view's "tools" box), a tool call shows as name(arguments); the next message typed is its
// result (a `tool` message), after which the model answers again.
"use strict";

const $ = (id) => document.getElementById(id);

function settings() {
  return {
    max_tokens: Math.max(1, parseInt($("max-tokens").value, 10) || 256),
    temperature: Math.min(2, Math.max(0, parseFloat($("temperature").value) || 0)),
  };
}

function showStatus(text) {
  $("status").textContent = text;
}

// One message bubble; an assistant bubble carries data-state (streaming | done | error) and data-chunks
// (how many pieces of text arrived), so that people and tests can see the answer stream in.
function bubble(log, role, text, model) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = role === "user" ? "you" : role === "tool" ? `result of ${model}` : model;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(who, body);
  if (role === "assistant") {
    div.dataset.state = "streaming";
    div.dataset.chunks = "0";
  }
  log.append(div);
  log.scrollTop = log.scrollHeight;
  return div;
}

// POST a streamed chat completion and call onText(piece) for every piece; resolves with the finish reason.
// Tool calls (extra.tools) are gathered from their deltas into extra.calls (OpenAI's tool_calls entries).
async function streamChat(model, messages, onText, signal, extra = {}) {
  const request = { model, messages, stream: true, ...settings() };
  if (extra.tools) request.tools = extra.tools;
  const response = await fetch(`${location.origin}/v1/chat/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(request),
    signal,
  });
  if (!response.ok) {
    let message = `HTTP ${response.status}`;
    try {
      message = (await response.json()).error.message;
    } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let finish = null;
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return finish;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.delta && choice.delta.content) onText(choice.delta.content);
          for (const call of (choice.delta && choice.delta.tool_calls) || []) {
            const calls = extra.calls || (extra.calls = []);
            if (!calls[call.index]) calls[call.index] = { id: call.id, type: "function", function: { name: call.function.name, arguments: "" } };
            calls[call.index].function.arguments += call.function.arguments || "";
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
  }
  return finish;
}

// One answer into a bubble: streams the text in, then marks it done (or error). A tool call is shown as
// name(arguments).
async function answerInto(div, model, messages, signal, extra = {}) {
  const body = div.querySelector(".text");
  let chunks = 0;
  try {
    const finish = await streamChat(model, messages, (piece) => {
      body.textContent += piece;
      div.dataset.chunks = String(++chunks);
      div.parentElement.scrollTop = div.parentElement.scrollHeight;
    }, signal, extra);
    for (const call of extra.calls || []) body.textContent += `${call.function.name}(${call.function.arguments})`;
    div.dataset.state = "done";
    div.dataset.finish = finish || "";
  } catch (error) {
    div.dataset.state = "error";
    body.textContent += (body.textContent ? "\n" : "") + (error.name === "AbortError" ? "(stopped)" : error.message);
  }
  return body.textContent;
}

// ------------------------------------------------------------------------------------------- chat view
// pending: the tool calls of the last answer whose results are still to be typed, oldest first.
const chat = { history: [], controller: null, pending: [] };
const PLACEHOLDER = $("input").placeholder;

function toolsOf() {
  const text = $("tools").value.trim();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`tools: not JSON (${e.message})`);
  }
}

async function sendChat(event) {
  event.preventDefault();
  const text = $("input").value.trim();
  if (!text || chat.controller) return;
  let tools;
  try {
    tools = toolsOf();
  } catch (error) {
    showStatus(error.message);
    return;
  }
  showStatus("");
  $("input").value = "";
  const model = $("model").value;
  if (chat.pending.length) { // the text is the result of the oldest pending call
    const call = chat.pending.shift();
    bubble($("messages"), "tool", text, call.function.name);
    chat.history.push({ role: "tool", tool_call_id: call.id, content: text });
    $("input").placeholder = chat.pending.length ? `result of ${chat.pending[0].function.name}` : PLACEHOLDER;
    if (chat.pending.length) return;
  } else {
    bubble($("messages"), "user", text);
    chat.history.push({ role: "user", content: text });
  }
  await askChat(model, tools);
}

async function askChat(model, tools) {
  const system = $("system").value.trim();
  const messages = system ? [{ role: "system", content: system }, ...chat.history] : [...chat.history];
  const div = bubble($("messages"), "assistant", "", model);
  chat.controller = new AbortController();
  $("send").disabled = true;
  $("stop").disabled = false;
  const extra = { tools };
  const answer = await answerInto(div, model, messages, chat.controller.signal, extra);
  if (div.dataset.state === "done" && extra.calls) {
    chat.history.push({ role: "assistant", content: null, tool_calls: extra.calls });
    chat.pending = [...extra.calls];
    $("input").placeholder = `result of ${chat.pending[0].function.name}`;
  } else if (div.dataset.state === "done") {
    chat.history.push({ role: "assistant", content: answer });
  } else {
    chat.history.pop(); // the question (or result) got no answer: leave it out of the next prompt
  }
  chat.controller = null;
  $("send").disabled = false;
  $("stop").disabled = true;
}

// ---------------------------------------------------------------------------------------- compare view
const panes = { left: [], right: [] };

async function sendCompare(event) {
  event.preventDefault();
  const text = $("compare-input").value.trim();
  if (!text) return;
  $("compare-input").value = "";
  $("compare-send").disabled = true;
  await Promise.all(["left", "right"].map(async (side) => {
    const pane = $(`compare-${side}`);
    const model = $(`compare-${side}-model`).value;
    const log = pane.querySelector(".log");
    bubble(log, "user", text);
    panes[side].push({ role: "user", content: text });
    const div = bubble(log, "assistant", "", model);
    const answer = await answerInto(div, model, panes[side]);
    if (div.dataset.state === "done") panes[side].push({ role: "assistant", content: answer });
    else panes[side].pop();
  }));
  $("compare-send").disabled = false;
}

// ------------------------------------------------------------------------------------------- start up
function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  $("view-chat").hidden = name !== "chat";
  $("view-compare").hidden = name !== "compare";
}

async function loadModels() {
  const response = await fetch(`${location.origin}/v1/models`); // origin: never the user:key@ of the URL
  if (!response.ok) {
    showStatus(`cannot list the models (HTTP ${response.status})`);
    return;
  }
  const models = (await response.json()).data;
  for (const [id, pick] of [["model", 0], ["compare-left-model", 0], ["compare-right-model", 1]]) {
    const select = $(id);
    select.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.pre_seq_len ? `${m.id} (prefix of ${m.pre_seq_len})` : `${m.id} (base)`;
      return option;
    }));
    select.selectedIndex = Math.min(pick, models.length - 1);
  }
  document.body.dataset.ready = "true";
}

$("chat-form").addEventListener("submit", sendChat);
$("compare-form").addEventListener("submit", sendCompare);
$("stop").addEventListener("click", () => chat.controller && chat.controller.abort());
$("clear").addEventListener("click", () => {
  chat.history = [];
  chat.pending = [];
  $("input").placeholder = PLACEHOLDER;
  $("messages").replaceChildren();
});
for (const [input, form] of [["input", "chat-form"], ["compare-input", "compare-form"]]) {
  $(input).addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $(form).requestSubmit();
    }
  });
}
for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));
loadModels();
