// Any other model: a form built from the input shape (one field per value for small flat
// inputs, a text box for string inputs, a JSON box always), the answer as a table.

import { fmt, h, size } from "./ui.js";

const MAX_FIELDS = 64;

function zeros(shape) {
  return shape.length ? Array.from({ length: shape[0] }, () => zeros(shape.slice(1))) : 0;
}

function cell(value, attrs = {}) {
  return h("td", { ...attrs, "data-value": value }, typeof value === "number" ? fmt(value) : String(value));
}

/** The statistics of one answer as tables: per row, one line per output (or class). */
function answerTables(data, model, targets) {
  const names = model.output_names;
  const out = [];
  data.mean.forEach((mean, r) => {
    const flat = (a) => (Array.isArray(a) ? a.flat(Infinity) : [a]);
    const m = flat(mean);
    const cols = model.task === "classification"
      ? [["probability", flat(data.probs[r])], ["sd over samples", flat(data.std[r])]]
      : [
          ["mean", m],
          ["sd (total)", flat(data.std[r])],
          ["sd epistemic", flat(data.epistemic_variance?.[r] ?? data.variance[r]).map(Math.sqrt)],
          ["sd aleatoric", flat(data.aleatoric_variance?.[r] ?? m.map(() => 0)).map(Math.sqrt)],
          ["MC std. error", flat(data.stderr[r])],
        ];
    const fields = model.task === "classification"
      ? ["probability", "std", null, null, null]
      : ["mean", "std", "epistemic_sd", "aleatoric_sd", "stderr"];
    const body = m.map((_, j) =>
      h("tr", {},
        h("th", { scope: "row" }, names[j] ?? `output ${j}`),
        cols.map(([, v], c) => cell(v[j], { "data-field": fields[c], "data-row": r, "data-out": j })),
        model.task === "regression"
          ? h("td", {}, `${fmt(m[j] - 2 * cols[1][1][j])} … ${fmt(m[j] + 2 * cols[1][1][j])}`)
          : null,
        targets?.[r] ? cell(targets[r][j] ?? "–") : null));
    const head = h("tr", {}, h("th", { scope: "col" }, "output"),
      cols.map(([label]) => h("th", { scope: "col" }, label)),
      model.task === "regression" ? h("th", { scope: "col" }, "mean ± 2 sd") : null,
      targets?.[r] ? h("th", { scope: "col" }, "test.csv target") : null);
    const caption = data.mean.length > 1 ? `Row ${r + 1}` : "Answer";
    const extra = model.task === "classification"
      ? h("p", { class: "muted" },
          `predictive entropy ${fmt(data.predictive_entropy[r], 3)} · expected entropy ${fmt(data.expected_entropy[r], 3)} · ` +
          `mutual information ${fmt(data.mutual_information[r], 3)} nats · variation ratio ${fmt(data.variation_ratio[r], 3)}`)
      : null;
    out.push(h("table", { class: "answer", "data-row": r }, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body)));
    if (extra) out.push(extra);
  });
  return out;
}

export function mountForm(root, ctx) {
  const { model } = ctx;
  const shape = model.input_shape;
  const n = size(shape);
  // Raw text: a string input, or a model that says it tokenizes text itself (takes_text).
  const takesText = model.takes_text === true;
  const textual = takesText || /str|text|bytes/i.test(model.input_dtype);
  const integer = /int/i.test(model.input_dtype);
  const ex = ctx.card?.examples;
  const exRows = (ex?.rows ?? []).filter((r) => r.length >= n && (textual || r.slice(0, n).every((v) => typeof v === "number")));
  const names = ex && ex.columns.length >= n ? ex.columns.slice(0, n) : null;
  const useFields = !textual && shape.length === 1 && n <= MAX_FIELDS;
  let targets = null; // test.csv targets of the row shown, if it came from there

  const jsonBox = h("textarea", { id: "json-input", rows: 6, spellcheck: "false", "aria-describedby": "json-help" });
  const textBox = textual ? h("textarea", { id: "text-input", rows: 5 }) : null;
  const fields = useFields
    ? Array.from({ length: n }, (_, i) => h("input", {
        type: "number", step: integer ? "1" : "any", id: `field-${i}`, name: names?.[i] ?? `x${i}`, required: true,
      }))
    : [];
  const answer = h("div", { id: "answer", "aria-live": "polite" });
  let mode = useFields || textual ? "fields" : "json";

  function fill(row) {
    if (textual) textBox.value = String(row[0]);
    fields.forEach((f, i) => {
      f.value = String(row[i]);
    });
    jsonBox.value = JSON.stringify([textual ? row[0] : useFields ? row.slice(0, n) : row]);
  }

  function read() {
    if (mode === "json") {
      let rows;
      try {
        rows = JSON.parse(jsonBox.value);
      } catch (err) {
        throw new Error(`the JSON box does not hold valid JSON (${err.message})`);
      }
      return rows;
    }
    if (takesText) {
      const lines = textBox.value.split("\n").filter((line) => line.trim() !== "");
      if (!lines.length) throw new Error("type a text first (one text per line)");
      return lines;
    }
    if (textual) return [shape.length ? [textBox.value] : textBox.value];
    return [fields.map((f, i) => {
      if (f.value.trim() === "" || !Number.isFinite(Number(f.value))) {
        throw new Error(`field '${f.name}' needs a number`);
      }
      return Number(f.value);
    })];
  }

  async function submit(ev) {
    ev?.preventDefault();
    let inputs;
    try {
      inputs = read();
    } catch (err) {
      ctx.error(err);
      return;
    }
    const shownTargets = targets;
    const data = await ctx.predict(inputs);
    // After an error the last answer stays, dimmed: it no longer matches the inputs.
    answer.classList.toggle("stale", !data && answer.childElementCount > 0);
    if (data) answer.replaceChildren(...answerTables(data, model, shownTargets));
  }

  const testRow = () => {
    const k = Math.floor(Math.random() * exRows.length);
    fill(exRows[k]);
    targets = ex.columns.length > n ? [exRows[k].slice(n)] : null;
    submit();
  };

  const fieldBlock = useFields
    ? h("div", { class: "fields", id: "fields" }, fields.map((f, i) =>
        h("label", { for: f.id }, h("span", {}, names?.[i] ?? `x[${i}]`), f)))
    : textual ? h("label", { class: "text-label" }, h("span", {}, takesText ? "Input text (one text per line, each its own row)" : "Input text"), textBox) : null;
  const jsonBlock = h("div", { class: "json", id: "json-block", hidden: mode !== "json" },
    h("label", { for: "json-input" }, "Inputs as JSON: a list of rows, each shaped ", h("code", {}, `[${shape.join(", ")}]`)),
    jsonBox,
    h("p", { id: "json-help", class: "muted" }, `Up to ${model.max_batch_rows} rows; each row gets its own line in the answer.`));
  const toggle = h("button", { type: "button", id: "btn-json", "aria-pressed": String(mode === "json"), hidden: !fieldBlock },
    "Edit as JSON");
  toggle.addEventListener("click", () => {
    if (mode === "fields") {
      try {
        jsonBox.value = JSON.stringify(read());
      } catch {
        /* keep what the box had */
      }
      mode = "json";
    } else {
      mode = "fields";
    }
    targets = null;
    toggle.setAttribute("aria-pressed", String(mode === "json"));
    toggle.textContent = mode === "json" ? "Edit as fields" : "Edit as JSON";
    jsonBlock.hidden = mode !== "json";
    if (fieldBlock) fieldBlock.hidden = mode === "json";
  });
  for (const f of fields) f.addEventListener("input", () => { targets = null; });

  const form = h("form", { id: "model-form", novalidate: true, onsubmit: submit },
    fieldBlock, jsonBlock,
    h("div", { class: "buttons" },
      h("button", { type: "submit", id: "btn-predict", class: "primary" }, "Predict"),
      exRows.length ? h("button", { type: "button", id: "btn-test-row", onclick: testRow }, "A test row") : null,
      toggle));
  root.append(h("div", { class: "view-head" }, h("h3", {}, textual ? "Text input" : "Inputs")), form, answer);
  if (fieldBlock) fieldBlock.hidden = mode === "json";
  if (exRows.length) {
    fill(exRows[0]);
    targets = ex.columns.length > n ? [exRows[0].slice(n)] : null;
  } else {
    jsonBox.value = JSON.stringify([textual && !takesText ? "" : zeros(shape)]);
  }
  ctx.onParams(() => submit());
  if (!(textual && textBox.value === "")) submit(); // an empty text box waits for the user
  return () => {};
}
