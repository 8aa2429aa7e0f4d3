// Adding a model: search the hub, pick a repository and formats, see the spec YAML the page writes (editable),
// submit it (a refused spec shows the server's `file:line: field: problem` lines), then watch its build; or drop a
// .gguf file to publish it as `factory serve FILE` would.
import { api, authHeaders, el, formatBytes, parseReply, showError } from "./api.js";

const $ = (id) => document.getElementById(id);
let repo = null;
let watched = null; // the build id this page started

export function initAddModel() {
  $("hub-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
  $("spec-formats").addEventListener("change", writeSpec);
  $("spec-name").addEventListener("input", writeSpec);
  $("spec-submit").addEventListener("click", submitSpec);
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) upload(event.dataTransfer.files[0]);
  });
  $("gguf-file").addEventListener("change", () => $("gguf-file").files[0] && upload($("gguf-file").files[0]));
}

async function search() {
  const query = encodeURIComponent($("hub-search").value.trim());
  try {
    const found = await api(`/v1/hub/models?search=${query}&limit=20`);
    $("hub-results").replaceChildren(...found.data.map((model) =>
      el("li", { "data-repo": model.id, onclick: () => pick(model.id) }, model.id,
        el("small", {}, ` ↓${model.downloads} ♥${model.likes}`))));
    if (!found.data.length) $("hub-results").append(el("li", {}, "Nothing found."));
  } catch (error) {
    $("hub-results").replaceChildren(el("li", { class: "error" }, `${error.code || ""} ${error.message}`));
  }
}

async function pick(id) {
  repo = id;
  $("hub-picked").hidden = false;
  $("hub-repo").textContent = id;
  $("spec-name").value = id.split("/").pop().toLowerCase().replace(/[^a-z0-9.-]+/g, "-");
  writeSpec();
  try {
    const files = await api(`/v1/hub/files/${id}`);
    $("hub-files").replaceChildren(...files.data.map((f) => el("li", {}, `${f.path} (${formatBytes(f.size)})`)));
  } catch (error) {
    $("hub-files").replaceChildren(el("li", { class: "error" }, error.message));
  }
}

function writeSpec() {
  const formats = [...$("spec-formats").querySelectorAll("input:checked")].map((box) => {
    const [kind, value] = box.value.split(":");
    return kind === "gguf" ? `  - {gguf: {type: ${value}}}` : `  - {mlx: {dtype: ${value}}}`;
  });
  $("spec-yaml").value = [
    `name: ${$("spec-name").value}`,
    `source: {hf: ${repo}}`,
    "formats:", ...formats,
    "serve:", "  context_length: 2048", "",
  ].join("\n");
}

async function submitSpec() {
  showError($("spec-error"), null);
  try {
    const written = await api("/v1/admin/specs", { method: "POST", body: { spec: $("spec-yaml").value, build: true } });
    watch(written, $("spec-build"));
  } catch (error) {
    showError($("spec-error"), error); // invalid_spec: one `file:line: field: problem` per line
  }
}

async function upload(file) {
  showError($("upload-error"), null);
  $("upload-state").textContent = `uploading ${file.name} (${formatBytes(file.size)})…`;
  try {
    const name = file.name.replace(/\.gguf$/i, "").toLowerCase().replace(/[^a-z0-9.-]+/g, "-");
    const reply = await fetch(`/v1/admin/uploads?name=${encodeURIComponent(name)}`, {
      method: "POST", body: file, headers: authHeaders({ "Content-Type": "application/octet-stream" }),
    });
    watch(await parseReply(reply), $("upload-state"));
  } catch (error) {
    $("upload-state").textContent = "";
    showError($("upload-error"), error);
  }
}

function watch(written, where) {
  watched = { build: written.build && written.build.id, name: written.name, where, status: written.build?.status };
  render();
}

function render() {
  if (!watched) return;
  const { name, build, status, published } = watched;
  watched.where.dataset.status = published ? "published" : status || "written";
  watched.where.textContent = published
    ? `${name}: built and published as ${published} — pick it in the playground.`
    : build ? `${name}: build ${build} ${status}` : `${name}: spec written (no build started)`;
}

export function onAddModelEvent(event) {
  if (!watched) return;
  if (event.type === "job.progress" && event.job_id === watched.build) { watched.status = event.status; render(); }
  if (event.type === "registry.published" && event.model === watched.name) { watched.published = event.ref; render(); }
}
