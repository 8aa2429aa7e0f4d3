// Jobs: builds and fine-tunes with their status, a fine-tune's progress (from job.progress events) and its loss
// curve (GET .../loss, drawn as SVG); a fine-tune starts from a JSONL file: POST /v1/files, then /v1/fine_tuning/jobs.
import { api, el, showError } from "./api.js";
import { loadModels } from "./playground.js";
import { drawLoss } from "./loss_chart.js";

const $ = (id) => document.getElementById(id);
const progress = new Map(); // job id -> the last job.progress event

export function initJobs() {
  $("ft-form").addEventListener("submit", (event) => { event.preventDefault(); startFineTune(); });
  // Events tell progress when the server watches Prefect; a poll while a job is unfinished covers the rest.
  setInterval(() => {
    if ($("jobs").classList.contains("active") && document.querySelector(UNFINISHED)) showFineTunes().then(showBuilds);
  }, 3000);
}

const UNFINISHED = ["queued", "running", "validating_files"].map((s) => `#jobs [data-status="${s}"]`).join(",");

export async function showJobs() {
  loadModels($("ft-model")).catch(() => {});
  await Promise.all([showFineTunes(), showBuilds()]);
}

export function onJobEvent(event) {
  if (event.type !== "job.progress") return;
  progress.set(event.job_id, event);
  if (!$("jobs").classList.contains("active")) return;
  if (event.kind === "build") showBuilds(); else showFineTunes();
}

async function startFineTune() {
  const file = $("ft-file").files[0];
  try {
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    const uploaded = await api("/v1/files", { method: "POST", body: form });
    const body = { model: $("ft-model").value, training_file: uploaded.id };
    if ($("ft-suffix").value) body.suffix = $("ft-suffix").value;
    const hyperparameters = {};
    if ($("ft-method").value) hyperparameters.method = $("ft-method").value;
    if ($("ft-iters").value) hyperparameters.iters = Number($("ft-iters").value);
    if ($("ft-lr").value) hyperparameters.learning_rate = Number($("ft-lr").value);
    if (Object.keys(hyperparameters).length) body.hyperparameters = hyperparameters;
    await api("/v1/fine_tuning/jobs", { method: "POST", body });
    showError($("ft-error"), null);
    $("ft-form").reset();
    await showFineTunes();
  } catch (error) {
    showError($("ft-error"), error);
  }
}

async function showFineTunes() {
  try {
    const jobs = await api("/v1/fine_tuning/jobs?limit=20");
    $("ft-list").replaceChildren(...jobs.data.map(fineTuneCard));
    if (!jobs.data.length) $("ft-list").append(el("p", {}, "No fine-tunes yet."));
    await Promise.all(jobs.data.map(async (job) => {
      try {
        const loss = await api(`/v1/fine_tuning/jobs/${job.id}/loss`);
        drawLoss(document.querySelector(`[data-job="${job.id}"] svg`), loss.points);
      } catch { /* a job without a curve yet */ }
    }));
  } catch (error) {
    $("ft-list").replaceChildren(el("p", { class: "error" }, error.message));
  }
}

function fineTuneCard(job) {
  const last = progress.get(job.id);
  const steps = last && last.total_steps ? el("progress", { max: last.total_steps, value: last.step || 0 }) : null;
  return el("div", { class: "card", "data-job": job.id, "data-status": job.status },
    el("b", {}, job.id), ` ${job.model} → ${job.fine_tuned_model || "…"} `,
    el("span", { class: "chip" }, job.status), steps,
    last && last.loss != null ? ` loss ${Number(last.loss).toFixed(3)}` : "",
    job.error && job.error.message ? el("p", { class: "error" }, job.error.message) : null,
    document.createElementNS("http://www.w3.org/2000/svg", "svg"));
}

async function showBuilds() {
  try {
    const builds = await api("/v1/builds?limit=20");
    $("build-list").replaceChildren(...builds.data.map((build) =>
      el("div", { class: "card", "data-build": build.id, "data-status": build.status },
        el("b", {}, build.spec), ` ${build.id} `, el("span", { class: "chip" }, build.status),
        ` ${new Date(build.created_at * 1000).toLocaleString()}`,
        build.error ? el("p", { class: "error" }, build.error) : null)));
    if (!builds.data.length) $("build-list").append(el("p", {}, "No builds yet."));
  } catch (error) {
    $("build-list").replaceChildren(el("p", { class: "error" }, `${error.code || ""} ${error.message}`));
  }
}
