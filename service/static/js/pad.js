// Digits: a drawing pad downsampled the way scikit-learn's digits were made (UCI optdigits):
// the strokes are centred and scaled into a 32x32 binary bitmap, and each 4x4 block's count
// of "on" pixels (0..16) is one of the 8x8 inputs. Probabilities and mutual information
// update while drawing (one request in flight, the latest state always sent).

import { fmt, h, liveRunner } from "./ui.js";

const PAD = 256; // the drawing canvas, in CSS pixels
const LINE = 22; // stroke width on the pad (display only)
const PEN = 3.5; // stroke width in the 32x32 bitmap
const CELLS = 8;

/**
 * Draw strokes (lists of [x, y] points in the context's pixels) with a round pen of
 * `width`: a line through the points, or a dot where a stroke is a single point (a tap).
 * The pad and the 32x32 bitmap the model's input is counted from both draw with it.
 */
function drawStrokes(g, strokes, width, color) {
  g.lineCap = "round";
  g.lineJoin = "round";
  g.lineWidth = width;
  g.strokeStyle = color;
  g.fillStyle = color;
  for (const path of strokes) {
    g.beginPath();
    if (path.length === 1) {
      g.arc(path[0][0], path[0][1], width / 2, 0, 2 * Math.PI);
      g.fill();
    } else {
      path.forEach(([x, y], i) => (i ? g.lineTo(x, y) : g.moveTo(x, y)));
      g.stroke();
    }
  }
}

/**
 * The 8x8 counts (0..16) of the strokes: the strokes' box is centred and scaled (aspect
 * kept) into a 32x32 bitmap, drawn with a pen of fixed width in bitmap pixels (the data's
 * strokes are 3-4 of their 32 pixels wide whatever the writer's size), thresholded to on/off,
 * and the "on" pixels of each 4x4 block counted. Strokes: lists of [x, y] pad points.
 */
export function strokesToGrid(strokes) {
  const grid = new Array(CELLS * CELLS).fill(0);
  const pts = strokes.flat();
  if (!pts.length) return grid;
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  // A short scribble is not blown up to the whole box: below an eighth of the pad it
  // keeps the scale of a stroke that long.
  const scale = (32 - PEN) / Math.max(x1 - x0, y1 - y0, PAD / 8);
  const map = ([x, y]) => [16 + (x - (x0 + x1) / 2) * scale, 16 + (y - (y0 + y1) / 2) * scale];
  const bitmap = document.createElement("canvas");
  bitmap.width = 32;
  bitmap.height = 32;
  const g = bitmap.getContext("2d", { willReadFrequently: true });
  drawStrokes(g, strokes.map((stroke) => stroke.map(map)), PEN, "#000");
  const alpha = g.getImageData(0, 0, 32, 32).data;
  for (let y = 0; y < 32; y++) {
    for (let x = 0; x < 32; x++) {
      if (alpha[(y * 32 + x) * 4 + 3] >= 128) grid[(y >> 2) * CELLS + (x >> 2)] += 1;
    }
  }
  return grid;
}

export function mountPad(root, ctx) {
  const labels = ctx.model.output_names.length === 10 ? ctx.model.output_names : [...Array(10).keys()].map(String);
  const width = ctx.model.input_shape.length === 2 ? null : 64;
  let strokes = [];
  let base = new Array(64).fill(0); // a test digit, noise, inverted or keyboard edits
  let source = "empty pad";
  let focusCell = 27;

  const pad = h("canvas", { id: "pad", width: PAD, height: PAD, class: "pad", "aria-label": "Drawing pad: draw a digit with the mouse, a pen or a finger" });
  const preview = h("canvas", {
    id: "pad-preview", width: 160, height: 160, tabindex: "0", role: "grid",
    "aria-label": "The 8x8 input the model sees. Arrow keys move, Space inks a cell, Delete clears it.",
  });
  const sourceLine = h("p", { id: "pad-source", class: "muted" }, "");
  const bars = h("ol", { id: "probs", class: "bars", "aria-label": "Class probabilities" });
  const stats = h("dl", { id: "class-stats", class: "stats" });
  const grid = () => {
    const strokeGrid = strokesToGrid(strokes);
    return base.map((v, i) => Math.min(16, Math.max(v, strokeGrid[i])));
  };
  const inputs = () => {
    const g = grid();
    return width ? [g] : [[...Array(CELLS).keys()].map((r) => g.slice(r * CELLS, r * CELLS + CELLS))];
  };

  function paint() {
    const p = pad.getContext("2d");
    p.fillStyle = "#fff";
    p.fillRect(0, 0, PAD, PAD);
    const cell = PAD / CELLS;
    base.forEach((v, i) => {
      if (v > 0) {
        p.fillStyle = `rgba(30, 41, 59, ${(v / 16) * 0.85})`;
        p.fillRect((i % CELLS) * cell, Math.floor(i / CELLS) * cell, cell, cell);
      }
    });
    drawStrokes(p, strokes, LINE, "#111827");
    const q = preview.getContext("2d");
    const c = preview.width / CELLS;
    grid().forEach((v, i) => {
      const shade = Math.round(255 - (v / 16) * 255);
      q.fillStyle = `rgb(${shade}, ${shade}, ${shade})`;
      q.fillRect((i % CELLS) * c, Math.floor(i / CELLS) * c, c, c);
    });
    if (document.activeElement === preview) {
      q.strokeStyle = "#2563eb";
      q.lineWidth = 3;
      q.strokeRect((focusCell % CELLS) * c + 1.5, Math.floor(focusCell / CELLS) * c + 1.5, c - 3, c - 3);
    }
    sourceLine.textContent = `Input: ${source}.`;
  }

  const run = liveRunner(async () => {
    const data = await ctx.predict(inputs());
    if (data) show(data);
  });

  function show(data) {
    const probs = data.probs[0];
    const top = probs.indexOf(Math.max(...probs));
    bars.dataset.probs = JSON.stringify(probs);
    bars.replaceChildren(...probs.map((p, k) => {
      const fill = h("span", { class: "fill" });
      fill.style.width = `${(p * 100).toFixed(1)}%`;
      return h("li", { class: k === top ? "top" : null, "aria-label": `${labels[k]}: ${(p * 100).toFixed(1)} percent` },
        h("span", { class: "label" }, labels[k]),
        h("span", { class: "bar" }, fill),
        h("span", { class: "value" }, `${(p * 100).toFixed(1)}%`));
    }));
    const mi = data.mutual_information[0];
    const typical = ctx.card?.metrics?.mutual_information?.["test digits"]?.mean;
    stats.dataset.mi = String(mi);
    stats.replaceChildren(
      h("dt", {}, "prediction"), h("dd", { id: "prediction" }, `${labels[top]} (${(probs[top] * 100).toFixed(1)} %)`),
      h("dt", {}, "mutual information (epistemic)"),
      h("dd", { id: "mi", "data-value": mi }, `${fmt(mi, 3)} nats`,
        typical ? h("span", { class: "muted" }, `test digits average ${fmt(typical, 2)}`) : null),
      h("dt", {}, "predictive entropy (total)"), h("dd", {}, `${fmt(data.predictive_entropy[0], 3)} nats`),
      h("dt", {}, "expected entropy (aleatoric)"), h("dd", {}, `${fmt(data.expected_entropy[0], 3)} nats`),
      h("dt", {}, "variation ratio"), h("dd", {}, fmt(data.variation_ratio[0], 3)),
    );
  }

  function update() {
    paint();
    run();
  }

  function setBase(values, what) {
    base = values.map((v) => Math.min(16, Math.max(0, v)));
    strokes = [];
    source = what;
    update();
  }

  // Drawing: pointer events cover mouse, pen and touch.
  let drawing = null;
  const at = (ev) => {
    const box = pad.getBoundingClientRect();
    return [((ev.clientX - box.left) / box.width) * PAD, ((ev.clientY - box.top) / box.height) * PAD];
  };
  pad.addEventListener("pointerdown", (ev) => {
    ev.preventDefault();
    pad.setPointerCapture(ev.pointerId);
    drawing = [at(ev)];
    strokes.push(drawing);
    if (source === "empty pad") source = "your drawing";
    else if (source !== "your drawing" && !source.endsWith("+ your strokes")) source += " + your strokes";
    update();
  });
  pad.addEventListener("pointermove", (ev) => {
    if (!drawing) return;
    drawing.push(at(ev));
    update();
  });
  const stop = () => {
    drawing = null;
  };
  pad.addEventListener("pointerup", stop);
  pad.addEventListener("pointercancel", stop);

  // Keyboard editing of the 8x8 input itself.
  preview.addEventListener("keydown", (ev) => {
    const moves = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -CELLS, ArrowDown: CELLS };
    if (ev.key in moves) {
      focusCell = Math.min(63, Math.max(0, focusCell + moves[ev.key]));
    } else if (ev.key === " " || ev.key === "Enter" || ev.key === "Delete" || ev.key === "Backspace") {
      const g = grid();
      g[focusCell] = ev.key === "Delete" || ev.key === "Backspace" ? 0 : 16;
      base = g;
      strokes = [];
      source = "edited with the keyboard";
      update();
    } else {
      return;
    }
    ev.preventDefault();
    paint();
  });
  preview.addEventListener("focus", paint);
  preview.addEventListener("blur", paint);

  const examples = (ctx.card?.examples?.rows ?? []).filter((r) => r.length >= 64 && r.slice(0, 64).every((v) => typeof v === "number"));
  const testDigit = () => {
    const k = Math.floor(Math.random() * examples.length);
    const row = examples[k];
    const label = row.length > 64 ? `, labelled ${row[64]}` : "";
    setBase(row.slice(0, 64), `test digit ${k + 1} of ${examples.length}${label}`);
  };
  const buttons = h("div", { class: "buttons" },
    h("button", { type: "button", id: "btn-test", onclick: testDigit, disabled: examples.length ? null : true,
      title: examples.length ? null : "this model folder has no test.csv" }, "A test digit"),
    h("button", { type: "button", id: "btn-noise",
      onclick: () => setBase(base.map(() => Math.random() * 16), "uniform noise U(0, 16) per pixel") }, "Noise"),
    h("button", { type: "button", id: "btn-invert", onclick: () => setBase(grid().map((v) => 16 - v), `inverted (16 − x) ${source}`) }, "Inverted"),
    h("button", { type: "button", id: "btn-clear", onclick: () => setBase(new Array(64).fill(0), "empty pad") }, "Clear"),
  );

  root.append(
    h("div", { class: "view-head" }, h("h3", {}, "Draw a digit")),
    h("div", { class: "pad-layout" },
      h("div", { class: "pad-col" }, pad, buttons,
        h("p", { class: "muted" }, "Draw with the mouse, a pen or a finger; the strokes are centred and scaled to a 32x32 bitmap as the data were.")),
      h("div", { class: "pad-col" },
        h("p", { class: "caption" }, "What the model sees (8x8, 0..16)"), preview, sourceLine),
      h("div", { class: "pad-col results" }, bars, stats),
    ),
  );
  ctx.onParams(run);
  paint();
  if (examples.length) testDigit();
  else run();
  return () => {};
}
