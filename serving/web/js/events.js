// The live events feed: a WebSocket to /v1/events opened with a one-use ticket (the key never goes in a URL),
// resumed after the last event seen (?after=) and reopened with exponential backoff when the server goes away.
import { api, el } from "./api.js";

const listeners = new Set();
const MAX_SHOWN = 200;
let socket = null, lastId = null, attempt = 0, timer = null;
export let connections = 0; // sockets opened so far (a reconnect makes it 2, 3, ...)

export function onEvent(listener) { listeners.add(listener); }

function setState(text, live) {
  const badge = document.getElementById("live");
  badge.textContent = text;
  badge.classList.toggle("live", live);
  badge.dataset.connections = String(connections);
  document.getElementById("ev-state").textContent = text;
}

async function ticketQuery() {
  try {
    const { ticket } = await api("/v1/events/tickets", { method: "POST" });
    return `ticket=${encodeURIComponent(ticket)}`;
  } catch (error) {
    if (error.status === 404) return ""; // no ticket route: an open server
    throw error;
  }
}

export async function connect() {
  clearTimeout(timer);
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  let query;
  try { query = await ticketQuery(); } catch (error) { return retry(error.message); }
  const params = [query, lastId != null ? `after=${lastId}` : ""].filter(Boolean).join("&");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/v1/events${params ? "?" + params : ""}`);
  socket = ws;
  ws.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.type === "snapshot") {
      if (!ws.counted) { connections += 1; ws.counted = true; } // snapshots also come every 30 s
      attempt = 0;
      setState("live", true);
    }
    if (event.id != null) lastId = event.id;
    show(event);
    for (const listener of listeners) listener(event);
  };
  ws.onclose = (closed) => {
    if (socket !== ws) return;
    socket = null;
    retry(closed.reason || `closed (${closed.code})`);
  };
}

function retry(reason) {
  // 0.5 s, 1 s, 2 s ... up to 10 s: a restarting server is back in seconds; a dead one is not hammered.
  const delay = Math.min(10000, 500 * 2 ** attempt);
  attempt += 1;
  setState(`reconnecting in ${(delay / 1000).toFixed(1)} s (${reason})`, false);
  timer = setTimeout(connect, delay);
}

function show(event) {
  const list = document.getElementById("ev-list");
  const { type, id, time, worker, ...rest } = event;
  const summary = type === "snapshot"
    ? `models: ${rest.registry.models.map((m) => m.name).join(", ") || "none"}` : JSON.stringify(rest);
  list.prepend(el("li", { "data-type": type },
    `${new Date(time * 1000).toLocaleTimeString()} #${id ?? "-"} ${type} `, el("small", {}, summary)));
  while (list.children.length > MAX_SHOWN) list.lastChild.remove();
}
