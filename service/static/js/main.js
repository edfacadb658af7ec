// The page: model picker, model card, shared controls (S, seed, latency), error banner,
// API-key dialog, and one view per model kind (band, pad, or the generic form).

import { ApiError, api, predict, setKeyPrompt } from "./api.js";
import { mountBand } from "./band.js";
import { mountForm } from "./form.js";
import { mountPad } from "./pad.js";
import { fmt, h, size } from "./ui.js";

const $ = (id) => document.getElementById(id);

// ------------------------------------------------------------------ errors

function showError(err, context) {
  const box = $("error");
  const status = err instanceof ApiError ? err.status : null;
  const head = status ? `HTTP ${status}` : status === 0 ? "No connection" : "Error";
  box.replaceChildren(
    h("strong", {}, context ? `${context}: ${head}` : head),
    h("span", { class: "error-message", "data-status": status ?? "" }, ` ${err.message}`),
    err.hint ? h("span", { class: "error-hint" }, ` ${err.hint}`) : null,
    h("button", { type: "button", class: "link", onclick: clearError }, "Dismiss"),
  );
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").replaceChildren();
}

// ------------------------------------------------------------------ API key dialog

function askKey(message, wasWrong) {
  const dialog = $("key-dialog");
  const input = $("key-input");
  $("key-message").textContent = wasWrong
    ? `The server refused this key: “${message}”. Try again.`
    : `This server asks for an API key (the MCDROP_API_KEY it was started with). It said: “${message}”`;
  input.value = "";
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.removeEventListener("close", onClose);
      $("key-form").removeEventListener("submit", onSubmit);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = (ev) => {
      ev.preventDefault();
      done(input.value.trim() || null);
    };
    const onClose = () => done(null); // Escape or Cancel
    $("key-form").addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    input.focus();
  });
}

// ------------------------------------------------------------------ controls

const controls = {
  listeners: new Set(),
  params() {
    const samples = $("samples").valueAsNumber;
    const seedText = $("seed").value.trim();
    return {
      samples: Number.isFinite(samples) ? samples : undefined,
      // A seed the API refuses (too big, negative, not an integer) reaches it as typed,
      // so its message is the one shown.
      seed: seedText === "" ? undefined : Number(seedText),
    };
  },
  report(data, ms) {
    $("latency").textContent =
      `${fmt(ms, 3)} ms round trip · S = ${data.samples} · seed ${data.seed}`;
  },
};

function setupControls(model) {
  const samples = $("samples");
  samples.max = String(model.max_samples);
  samples.value = String(model.default_samples);
  $("samples-max").textContent = `1 to ${model.max_samples}`;
  $("latency").textContent = "no request yet";
}

// ------------------------------------------------------------------ model card

function flatten(value, prefix, out) {
  if (value !== null && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix} · ${k}` : k, out);
  } else {
    out.push([prefix, Array.isArray(value) ? JSON.stringify(value) : value]);
  }
  return out;
}

function table(rows, caption) {
  return h(
    "table",
    { class: "kv" },
    caption ? h("caption", {}, caption) : null,
    h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v === null ? "–" : fmt(v))))),
  );
}

function renderCard(model, card) {
  const facts = [
    ["task", model.task],
    ["version", model.version],
    ["input", `${model.input_dtype} [${model.input_shape.join(", ")}]`],
    ["output", `[${model.output_shape.join(", ")}] ${model.output_names.slice(0, 10).join(", ")}${model.output_names.length > 10 ? ", …" : ""}`],
    ["samples S", `default ${model.default_samples}, at most ${model.max_samples}`],
    ["rows per request", `at most ${model.max_batch_rows}`],
  ];
  if (model.tau !== null && model.tau !== undefined) facts.push(["model precision τ", model.tau]);
  const parts = [
    h("h2", { id: "card-title" }, model.name),
    h("p", { class: "description" }, model.description || "(no description)"),
    h("div", { class: "card-tables" },
      table(facts, "Manifest"),
      card?.metrics ? table(flatten(card.metrics, "", []), "Metrics (metrics.json)") : null,
      model.audit || card?.audit ? table(flatten(model.audit ?? card.audit, "", []), "Dropout audit") : null,
    ),
  ];
  if (card?.readme) {
    parts.push(h("details", { class: "readme" }, h("summary", {}, "Model card (README.md)"), h("pre", {}, card.readme)));
  }
  $("card").replaceChildren(...parts);
}

// ------------------------------------------------------------------ views

function viewFor(model) {
  const n = size(model.input_shape);
  const textual = /str|text|bytes/i.test(model.input_dtype);
  if (!textual && model.task === "regression" && n === 1 && size(model.output_shape) === 1) {
    return mountBand;
  }
  if (!textual && model.task === "classification" && n === 64 && model.input_shape.length <= 2) {
    return mountPad;
  }
  return mountForm;
}

let current = null; // {name, unmount, alive}
let inFlight = 0;

// Predictions in flight, on <body data-pending>: tests (and styles) can tell a settled view.
function pending(delta) {
  inFlight += delta;
  document.body.dataset.pending = String(inFlight);
}

async function select(model) {
  if (current) {
    current.alive = false;
    current.unmount?.();
  }
  const state = { name: model.name, alive: true, unmount: null };
  current = state;
  clearError();
  for (const b of document.querySelectorAll("#models button")) {
    b.setAttribute("aria-pressed", String(b.dataset.model === model.name));
  }
  if (location.hash !== `#${model.name}`) history.replaceState(null, "", `#${model.name}`);
  setupControls(model);
  controls.listeners.clear();
  $("view").replaceChildren(h("p", { class: "muted" }, "Loading the model card…"));
  let card = null;
  try {
    card = (await api(`/v1/models/${encodeURIComponent(model.name)}/card`)).data;
  } catch (err) {
    if (!state.alive) return;
    showError(err, "Model card");
  }
  if (!state.alive) return;
  renderCard(model, card);
  const ctx = {
    model,
    card,
    params: () => controls.params(),
    onParams: (fn) => controls.listeners.add(fn),
    error: (err) => showError(err),
    async predict(inputs) {
      pending(+1);
      try {
        const { data, ms } = await predict(model.name, inputs, controls.params());
        if (!state.alive) return null;
        clearError();
        controls.report(data, ms);
        return data;
      } catch (err) {
        if (state.alive) showError(err, `Prediction (${model.name})`);
        return null;
      } finally {
        pending(-1);
      }
    },
  };
  const root = h("div", { class: "view-root" });
  $("view").replaceChildren(root);
  state.unmount = viewFor(model)(root, ctx);
}

function renderPicker(list) {
  const items = list.models.map((m) =>
    h("li", {},
      h("button", {
        type: "button", "data-model": m.name, "aria-pressed": "false",
        onclick: () => select(m),
      },
        h("span", { class: "model-name" }, m.name),
        h("span", { class: `badge ${m.task}` }, m.task),
        m.ready ? null : h("span", { class: "badge failed" }, "not ready"),
      )));
  const failed = Object.entries(list.failures || {}).map(([folder, reason]) =>
    h("li", { class: "failed" }, h("span", { class: "model-name" }, folder), h("span", { class: "badge failed" }, "failed"), h("p", { class: "reason" }, reason)));
  $("models").replaceChildren(...items, ...failed);
}

async function start() {
  setKeyPrompt(askKey);
  for (const id of ["samples", "seed"]) {
    $(id).addEventListener("change", () => controls.listeners.forEach((fn) => fn()));
  }
  $("key-cancel").addEventListener("click", () => $("key-dialog").close());
  let list;
  try {
    list = (await api("/v1/models")).data;
  } catch (err) {
    showError(err, "Model list");
    $("models").replaceChildren(h("li", {}, h("button", { type: "button", onclick: () => location.reload() }, "Retry")));
    return;
  }
  renderPicker(list);
  if (!list.models.length) {
    $("view").replaceChildren(h("p", {}, "This server serves no model."));
    return;
  }
  const wanted = decodeURIComponent(location.hash.slice(1));
  const first = list.models.find((m) => m.name === wanted) ?? list.models[0];
  await select(first);
  window.addEventListener("hashchange", () => {
    const m = list.models.find((x) => x.name === decodeURIComponent(location.hash.slice(1)));
    if (m && m.name !== current?.name) select(m);
  });
}

document.addEventListener("DOMContentLoaded", start);
