// The models catalog: every registry model with its versions, aliases, formats and quantization, the validation
// report with the values measured against each gate, the lineage; promote and rollback for admin keys (a key
// without the admin scope gets the server's 403, shown as it comes).
import { api, el, formatBytes, showError } from "./api.js";

const $ = (id) => document.getElementById(id);
const COLUMNS = ["version", "aliases", "formats", "validation", "lineage", ""];

export function initCatalog() {
  $("cat-refresh").addEventListener("click", showCatalog);
}

export async function showCatalog() {
  try {
    const listing = await api("/v1/registry/models");
    $("catalog").replaceChildren(...listing.data.map(modelCard));
    if (!listing.data.length) $("catalog").append(el("p", {}, "The registry is empty: add a model."));
    showError($("cat-error"), null);
  } catch (error) {
    showError($("cat-error"), error);
  }
}

function modelCard(model) {
  const aliases = Object.entries(model.aliases).map(([alias, version]) =>
    el("span", { class: "chip" }, `${alias} → ${version}`));
  const rollbacks = Object.keys(model.aliases).filter((alias) => alias !== "latest").map((alias) =>
    el("button", { type: "button", class: "secondary", "data-rollback": alias,
                   onclick: () => change(model.name, "rollback", { alias }) }, `Roll back ${alias}`));
  return el("div", { class: "card", "data-model": model.name },
    el("h3", {}, model.name, " ", el("small", {}, model.task)),
    el("div", {}, "aliases: ", aliases, rollbacks),
    el("table", {},
      el("thead", {}, el("tr", {}, COLUMNS.map((h) => el("th", {}, h)))),
      el("tbody", {}, [...model.versions].reverse().map((version) => versionRow(model, version)))),
    el("p", { class: "error", hidden: true, "data-error": model.name }));
}

function versionRow(model, version) {
  // The quantization when the server names one, else what the format key says (gguf-f16 -> f16).
  const formats = version.formats.map((f) => el("div", { "data-format": f.key },
    `${f.format} ${f.quantization || f.key.replace(`${f.format}-`, "")} · ${formatBytes(f.bytes)}`));
  const alias = el("input", { value: "prod", size: 6, "aria-label": "alias" });
  return el("tr", { "data-ref": version.ref },
    el("td", {}, `@${version.version}`, el("br"), el("small", {}, new Date(version.created * 1000).toLocaleString())),
    el("td", {}, version.aliases.map((a) => el("span", { class: "chip" }, a))),
    el("td", {}, formats),
    el("td", {}, report(version.report, version.aliases.includes("latest"))),
    el("td", {}, lineage(version.lineage)),
    el("td", {}, alias, el("button", { type: "button", "data-promote": version.ref,
      onclick: () => change(model.name, "promote", { version: version.version, alias: alias.value.trim() }) },
    "Promote")));
}

function report(validation, open) {
  const formats = (validation && validation.formats) || [];
  if (!formats.length) return "—";
  return formats.map((f) => el("details", { open },
    el("summary", { class: f.passed ? "pass" : "fail" }, `${f.format}: ${f.passed ? "passed" : "FAILED"}`),
    el("table", {}, (f.checks || []).map((check) => el("tr", { class: check.passed ? "pass" : "fail" },
      el("td", {}, check.name), el("td", {}, measured(check)))))));
}

function measured(check) {
  const value = check.value == null ? ""
    : typeof check.value === "number" ? Number(check.value.toPrecision(5)) : String(check.value).slice(0, 60);
  const gate = check.threshold != null ? ` (${check.bound || "gate"} ${check.threshold})` : "";
  return `${check.passed ? "ok" : "FAIL"} ${value}${gate}`;
}

function lineage(facts) {
  const entries = Object.entries(facts || {});
  if (!entries.length) return "—";
  return el("dl", {}, entries.map(([name, value]) =>
    [el("dt", {}, name), el("dd", {}, typeof value === "object" ? JSON.stringify(value) : String(value))]));
}

async function change(name, action, body) {
  const error = document.querySelector(`[data-error="${CSS.escape(name)}"]`);
  try {
    await api(`/v1/admin/registry/models/${encodeURIComponent(name)}/${action}`, { method: "POST", body });
    await showCatalog();
  } catch (failure) {
    showError(error, failure);
  }
}
