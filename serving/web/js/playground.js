// The playground: a chat streamed from /v1/chat/completions, with TTFT and tokens/s measured in the page while the
// answer streams, and a Stop button that aborts the request (the server sees the client go and stops decoding).
import { ApiError, api, authHeaders, el, parseReply, showError } from "./api.js";
import { dataLines } from "./sse.js";

const $ = (id) => document.getElementById(id);
let history = [];
let running = null; // the AbortController of the answer being streamed

export async function loadModels(select) {
  const chosen = select.value;
  const listing = await api("/v1/models");
  const ids = listing.data.filter((m) => !m.task || m.task === "chat").map((m) => m.id);
  select.replaceChildren(...ids.map((id) => el("option", { value: id }, id)));
  if (ids.includes(chosen)) select.value = chosen;
  return ids;
}

export function initPlayground() {
  $("pg-form").addEventListener("submit", (event) => { event.preventDefault(); send(); });
  $("pg-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
  });
  $("pg-stop").addEventListener("click", () => running && running.abort());
  $("pg-clear").addEventListener("click", () => { history = []; $("pg-transcript").replaceChildren(); });
}

export async function showPlayground() {
  try {
    await loadModels($("pg-model"));
    showError($("pg-error"), null);
  } catch (error) {
    showError($("pg-error"), error);
  }
}

function setStats({ ttft, tokens, tps, state }) {
  if (ttft !== undefined) $("pg-ttft").textContent = ttft == null ? "–" : `${Math.round(ttft)} ms`;
  if (tokens !== undefined) $("pg-tokens").textContent = tokens == null ? "–" : String(tokens);
  if (tps !== undefined) $("pg-tps").textContent = tps == null ? "–" : tps.toFixed(1);
  if (state !== undefined) $("pg-state").textContent = state;
}

async function send() {
  const text = $("pg-input").value.trim();
  if (!text || running) return;
  $("pg-input").value = "";
  history.push({ role: "user", content: text });
  $("pg-transcript").append(el("div", { class: "msg user" }, text));
  const answer = el("div", { class: "msg assistant" });
  $("pg-transcript").append(answer);
  const system = $("pg-system").value.trim();
  const body = {
    model: $("pg-model").value,
    messages: system ? [{ role: "system", content: system }, ...history] : history,
    temperature: Number($("pg-temperature").value),
    max_tokens: Number($("pg-max-tokens").value),
    stream: true,
    stream_options: { include_usage: true },
  };
  running = new AbortController();
  $("pg-send").disabled = true;
  $("pg-stop").disabled = false;
  showError($("pg-error"), null);
  setStats({ ttft: null, tokens: null, tps: null, state: "waiting…" });
  const started = performance.now();
  let first = null, last = null, tokens = 0, usageTokens = null, content = "";
  // tokens/s over the decode (after the first token), so the prompt's cost stays in TTFT only; live while
  // streaming (up to now), then up to the last token.
  const rate = (until = performance.now()) =>
    (tokens > 1 && first != null && until > first ? (tokens - 1) / ((until - first) / 1000) : null);
  const ticker = setInterval(() => first != null && setStats({ tps: rate() }), 250);
  try {
    const reply = await fetch("/v1/chat/completions", {
      method: "POST", signal: running.signal,
      headers: authHeaders({ "Content-Type": "application/json" }), body: JSON.stringify(body),
    });
    if (!reply.ok) await parseReply(reply); // throws the API's error
    for await (const data of dataLines(reply.body)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk);
      if (chunk.usage) usageTokens = chunk.usage.completion_tokens;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first == null) { first = performance.now(); setStats({ ttft: first - started, state: "streaming…" }); }
        last = performance.now();
        tokens += 1; // one chunk per token as the server streams them; the usage chunk corrects it at the end
        content += delta.content;
        answer.textContent = content;
        setStats({ tokens, tps: rate() });
      }
    }
    if (usageTokens != null) tokens = usageTokens;
    setStats({ tokens, tps: rate(last), state: "done" });
  } catch (error) {
    if (error.name === "AbortError") setStats({ tokens, tps: rate(last), state: "stopped" });
    else { showError($("pg-error"), error); setStats({ state: "failed" }); }
  } finally {
    clearInterval(ticker);
    if (content) history.push({ role: "assistant", content });
    running = null;
    $("pg-send").disabled = false;
    $("pg-stop").disabled = true;
  }
}
