// The page's entry: tabs by URL hash, the API key field (kept in localStorage), the live events feed wired to the
// views that react to it.
import { apiKey } from "./api.js";
import { connect, onEvent } from "./events.js";
import { initPlayground, showPlayground } from "./playground.js";
import { initCatalog, showCatalog } from "./catalog.js";
import { initJobs, onJobEvent, showJobs } from "./jobs.js";
import { initAddModel, onAddModelEvent } from "./add_model.js";

const SHOW = { playground: showPlayground, models: showCatalog, jobs: showJobs, add: () => {}, events: () => {} };

function route() {
  const name = location.hash.slice(1) in SHOW ? location.hash.slice(1) : "playground";
  for (const view of document.querySelectorAll(".view")) view.classList.toggle("active", view.id === name);
  for (const tab of document.querySelectorAll("#tabs a")) tab.classList.toggle("active", tab.hash === `#${name}`);
  SHOW[name]();
}

function init() {
  const field = document.getElementById("api-key");
  field.value = apiKey.get();
  field.addEventListener("change", () => { apiKey.set(field.value.trim()); route(); connect(); });
  initPlayground();
  initCatalog();
  initJobs();
  initAddModel();
  onEvent((event) => {
    if (event.type.startsWith("registry.") && location.hash === "#models") showCatalog();
    if (event.type === "registry.published" && ["", "#playground"].includes(location.hash)) showPlayground();
    onJobEvent(event);
    onAddModelEvent(event);
  });
  window.addEventListener("hashchange", route);
  route();
  connect();
}

init();
