// 1-D regression: the predictive band over an x-range the user drags, zooms or types.
// Inner band: mean ± 2 epistemic sd (the spread of the S sampled subnetworks); outer band:
// mean ± 2 total sd, so the part outside the inner band is what aleatoric noise adds.

import { fmt, h, liveRunner, s } from "./ui.js";

const W = 860;
const H = 400;
const M = { left: 56, right: 16, top: 18, bottom: 40 };
const POINTS = 161;

/** About `count` round tick values covering [lo, hi]. */
function ticks(lo, hi, count = 8) {
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw) ?? 10 * mag;
  const out = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) {
    out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
  }
  return out;
}

/** The x-intervals the example inputs cover: split where a gap is much wider than usual. */
function dataIntervals(xs) {
  if (xs.length < 2) return [];
  const sorted = [...xs].sort((a, b) => a - b);
  const gaps = sorted.slice(1).map((x, i) => x - sorted[i]);
  const typical = [...gaps].sort((a, b) => a - b)[Math.floor(gaps.length / 2)];
  const limit = Math.max(8 * typical, (sorted.at(-1) - sorted[0]) / 20);
  const out = [[sorted[0], sorted[0]]];
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] - sorted[i - 1] > limit) out.push([sorted[i], sorted[i]]);
    else out.at(-1)[1] = sorted[i];
  }
  return out;
}

function examplePoints(card) {
  const ex = card?.examples;
  if (!ex || ex.columns.length < 1) return [];
  return ex.rows
    .filter((r) => typeof r[0] === "number" && (r.length < 2 || typeof r[1] === "number"))
    .map((r) => ({ x: r[0], y: r.length > 1 ? r[1] : null }));
}

export function mountBand(root, ctx) {
  const points = examplePoints(ctx.card);
  const intervals = dataIntervals(points.map((p) => p.x));
  const lo0 = intervals.length ? intervals[0][0] : -1;
  const hi0 = intervals.length ? intervals.at(-1)[1] : 1;
  const width0 = Math.max(hi0 - lo0, 1e-6);
  // Half the data's width on each side, rounded outwards to a tenth of a power of ten.
  const unit = 10 ** Math.floor(Math.log10(width0 * 2)) / 10;
  const home = [Math.floor((lo0 - width0 / 2) / unit) * unit, Math.ceil((hi0 + width0 / 2) / unit) * unit];
  let range = [...home];
  let shown = null; // {xs, mean, sd, epi, range} of the last answer
  let cursor = null; // index into shown.xs for the readout
  const rows = Math.min(POINTS, ctx.model.max_batch_rows);
  const yName = ctx.model.output_names[0] ?? "y";

  const fromIn = h("input", { type: "number", id: "range-from", step: "any", value: fmt(range[0]) });
  const toIn = h("input", { type: "number", id: "range-to", step: "any", value: fmt(range[1]) });
  const svg = s("svg", {
    id: "band", viewBox: `0 0 ${W} ${H}`, tabindex: "0", role: "img",
    "aria-roledescription": "interactive plot",
    "aria-describedby": "band-help band-readout",
  });
  const readout = h("p", { id: "band-readout", class: "readout", "aria-live": "polite" }, "");
  const legend = h("ul", { class: "legend" },
    h("li", {}, h("span", { class: "swatch mean" }), "mean"),
    h("li", {}, h("span", { class: "swatch epistemic" }), "± 2 sd, epistemic (dropout)"),
    h("li", {}, h("span", { class: "swatch aleatoric" }), "± 2 sd, total (adds aleatoric noise)"),
    points.length ? h("li", {}, h("span", { class: "swatch points" }), "test.csv points") : null,
    intervals.length ? h("li", {}, h("span", { class: "swatch data" }), "data range (the test.csv x's)") : null,
  );

  const run = liveRunner(async () => {
    const [a, b] = range;
    const xs = Array.from({ length: rows }, (_, i) => a + ((b - a) * i) / (rows - 1));
    const data = await ctx.predict(xs.map((x) => [x]));
    if (!data) return;
    const epiVar = data.epistemic_variance ?? data.variance;
    shown = {
      xs,
      range: [a, b],
      mean: data.mean.map((r) => r[0]),
      sd: data.variance.map((r) => Math.sqrt(r[0])),
      epi: epiVar.map((r) => Math.sqrt(r[0])),
    };
    if (cursor === null || cursor >= rows) {
      cursor = shown.epi.indexOf(Math.max(...shown.epi));
    }
    draw();
  });

  function setRange(a, b) {
    if (!(Number.isFinite(a) && Number.isFinite(b)) || b - a < 1e-6) {
      ctx.error(new Error(`the range needs 'from' < 'to' (got ${a} and ${b})`));
      return;
    }
    range = [a, b];
    fromIn.value = fmt(a);
    toIn.value = fmt(b);
    svg.dataset.range = `${a},${b}`;
    run();
  }

  function zoom(factor, at = (range[0] + range[1]) / 2) {
    setRange(at - (at - range[0]) * factor, at + (range[1] - at) * factor);
  }

  function pan(fraction) {
    const d = (range[1] - range[0]) * fraction;
    setRange(range[0] + d, range[1] + d);
  }

  function draw() {
    const { xs, mean, sd, epi } = shown;
    const [a, b] = shown.range;
    let ylo = Math.min(...mean.map((m, i) => m - 2 * sd[i]));
    let yhi = Math.max(...mean.map((m, i) => m + 2 * sd[i]));
    for (const p of points) {
      if (p.y !== null && p.x >= a && p.x <= b) {
        ylo = Math.min(ylo, p.y);
        yhi = Math.max(yhi, p.y);
      }
    }
    const pad = (yhi - ylo) * 0.06 || 1;
    ylo -= pad;
    yhi += pad;
    const X = (x) => M.left + ((x - a) / (b - a)) * (W - M.left - M.right);
    const Y = (y) => H - M.bottom - ((y - ylo) / (yhi - ylo)) * (H - M.top - M.bottom);
    const pts = (ys) => ys.map((y, i) => `${X(xs[i]).toFixed(1)},${Y(y).toFixed(1)}`);
    const line = (ys) => `M${pts(ys).join("L")}`;
    const area = (up, down) => `M${pts(up).join("L")}L${pts(down).reverse().join("L")}Z`;
    const up = (k) => mean.map((m, i) => m + 2 * k[i]);
    const dn = (k) => mean.map((m, i) => m - 2 * k[i]);
    const plotTop = M.top;
    const plotBottom = H - M.bottom;

    const layers = [];
    for (const [p, q] of intervals) {
      const x0 = Math.max(X(p), M.left);
      const x1 = Math.min(X(q), W - M.right);
      if (x1 > x0) {
        layers.push(s("rect", { class: "data-range", x: x0, y: plotTop, width: x1 - x0, height: plotBottom - plotTop }));
        layers.push(s("rect", { class: "data-bar", x: x0, y: plotBottom - 5, width: x1 - x0, height: 5 }));
        layers.push(s("text", { class: "data-label", x: (x0 + x1) / 2, y: plotTop + 14 }, "data"));
      }
    }
    for (const t of ticks(ylo, yhi, 6)) {
      layers.push(s("line", { class: "grid", x1: M.left, x2: W - M.right, y1: Y(t), y2: Y(t) }));
      layers.push(s("text", { class: "tick y", x: M.left - 8, y: Y(t) + 4 }, fmt(t, 3)));
    }
    for (const t of ticks(a, b, 10)) {
      layers.push(s("line", { class: "grid", x1: X(t), x2: X(t), y1: plotTop, y2: plotBottom }));
      layers.push(s("text", { class: "tick x", x: X(t), y: plotBottom + 18 }, fmt(t, 3)));
    }
    layers.push(s("path", { id: "band-total", class: "band aleatoric", d: area(up(sd), dn(sd)) }));
    layers.push(s("path", { id: "band-epistemic", class: "band epistemic", d: area(up(epi), dn(epi)) }));
    layers.push(s("path", { id: "band-mean", class: "mean", d: line(mean) }));
    for (const p of points) {
      if (p.y !== null && p.x >= a && p.x <= b && p.y >= ylo && p.y <= yhi) {
        layers.push(s("circle", { class: "point", cx: X(p.x).toFixed(1), cy: Y(p.y).toFixed(1), r: 2.2 }));
      }
    }
    const cx = X(xs[cursor]);
    layers.push(s("line", { class: "cursor", x1: cx, x2: cx, y1: plotTop, y2: plotBottom }));
    layers.push(s("rect", { class: "frame", x: M.left, y: plotTop, width: W - M.left - M.right, height: plotBottom - plotTop }));
    layers.push(s("text", { class: "axis-label", x: (M.left + W - M.right) / 2, y: H - 4 }, "x"));
    layers.push(s("text", { class: "axis-label", x: 14, y: (plotTop + plotBottom) / 2, transform: `rotate(-90 14 ${(plotTop + plotBottom) / 2})` }, yName));
    svg.replaceChildren(...layers);
    const wide = epi.indexOf(Math.max(...epi));
    svg.setAttribute("aria-label",
      `Predictive band of ${ctx.model.name} for x from ${fmt(a)} to ${fmt(b)}; ` +
      `the epistemic sd is largest (${fmt(epi[wide])}) at x = ${fmt(xs[wide])}.`);
    const i = cursor;
    const alea = Math.sqrt(Math.max(sd[i] ** 2 - epi[i] ** 2, 0));
    readout.textContent =
      `At x = ${fmt(xs[i])}: mean ${fmt(mean[i])}, total sd ${fmt(sd[i])} ` +
      `(epistemic ${fmt(epi[i])}, aleatoric ${fmt(alea)}).`;
  }

  // Pointer: drag pans, wheel zooms around the pointer, hover moves the readout.
  let drag = null;
  const toX = (ev) => {
    const box = svg.getBoundingClientRect();
    const px = ((ev.clientX - box.left) / box.width) * W;
    return range[0] + ((px - M.left) / (W - M.left - M.right)) * (range[1] - range[0]);
  };
  svg.addEventListener("pointerdown", (ev) => {
    drag = { x: ev.clientX, range: [...range] };
    svg.setPointerCapture(ev.pointerId);
  });
  svg.addEventListener("pointermove", (ev) => {
    if (drag) {
      const box = svg.getBoundingClientRect();
      const per = (drag.range[1] - drag.range[0]) / (((W - M.left - M.right) / W) * box.width);
      const d = -(ev.clientX - drag.x) * per;
      setRange(drag.range[0] + d, drag.range[1] + d);
    } else if (shown) {
      const x = toX(ev);
      const [a, b] = shown.range;
      const i = Math.round(((x - a) / (b - a)) * (shown.xs.length - 1));
      if (i >= 0 && i < shown.xs.length && i !== cursor) {
        cursor = i;
        draw();
      }
    }
  });
  const endDrag = () => {
    drag = null;
  };
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  svg.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    zoom(ev.deltaY > 0 ? 1.2 : 1 / 1.2, toX(ev));
  }, { passive: false });
  svg.addEventListener("keydown", (ev) => {
    const keys = {
      ArrowLeft: () => pan(-0.1), ArrowRight: () => pan(0.1),
      "+": () => zoom(1 / 1.5), "=": () => zoom(1 / 1.5), "-": () => zoom(1.5),
      "0": () => setRange(...home),
    };
    if (keys[ev.key]) {
      ev.preventDefault();
      keys[ev.key]();
    }
  });
  const onTyped = () => setRange(Number(fromIn.value), Number(toIn.value));
  fromIn.addEventListener("change", onTyped);
  toIn.addEventListener("change", onTyped);

  root.append(
    h("div", { class: "view-head" },
      h("h3", {}, "Predictive band"),
      h("div", { class: "range-controls" },
        h("label", {}, "from ", fromIn),
        h("label", {}, "to ", toIn),
        h("button", { type: "button", onclick: () => zoom(1 / 1.5) }, "Zoom in"),
        h("button", { type: "button", onclick: () => zoom(1.5) }, "Zoom out"),
        h("button", { type: "button", onclick: () => setRange(...home) }, "Reset"),
      )),
    h("div", { class: "plot" }, svg),
    legend,
    readout,
    h("p", { id: "band-help", class: "muted" },
      "Drag the plot to move along x, scroll to zoom, or focus it and use ← → to move, + − to zoom, 0 to reset. ",
      "The band widens where the model has seen no data."),
  );
  ctx.onParams(run);
  setRange(...home);
  return () => {};
}
