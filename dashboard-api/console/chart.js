// Line charts drawn as inline SVG: a time axis over the chosen window, a
// value axis from zero, one path per series, and a readout that follows
// the pointer. No library; every text goes in through textContent.

const SVG = "http://www.w3.org/2000/svg";
const M = { top: 8, right: 10, bottom: 20, left: 56 };
const HEIGHT = 150;

function el(name, attrs = {}, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  parent?.appendChild(e);
  return e;
}

/**
 * A ceiling for the value axis: 1, 2 or 5 times a power of ten, or for
 * bytes (binary) of ten in the largest power of 1024 below v, so that the
 * axis reads 20 KiB/s, not 19.5 KiB/s.
 */
function niceMax(v, binary) {
  if (!(v > 0)) return 1;
  const unit = binary ? 1024 ** Math.max(0, Math.floor(Math.log(v) / Math.log(1024))) : 1;
  const x = v / unit;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 4, 5, 8, 10]) if (x <= m * p) return m * p * unit;
  return 10 * p * unit;
}

function timeLabel(t, span) {
  const d = new Date(t);
  if (span <= 15 * 60e3) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  if (span <= 36 * 3600e3) return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
  return d.toLocaleDateString([], { month: "short", day: "numeric" });
}

/**
 * Draw (or redraw) a chart into box, a <div>. spec:
 *   title, from, to (ms), max (a fixed ceiling, else from the data),
 *   format(v) for the axis and the readout,
 *   series: [{name, points: [[t ms, value]...]}]
 */
export function drawChart(box, spec) {
  box.replaceChildren();
  box.classList.add("chart");
  const head = document.createElement("div");
  head.className = "chart-head";
  const h = document.createElement("h3");
  h.textContent = spec.title;
  const readout = document.createElement("span");
  readout.className = "readout";
  head.append(h, readout);
  box.appendChild(head);

  const width = Math.max(260, Math.floor(box.clientWidth || 520));
  const svg = el("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, role: "img" }, box);
  el("title", {}, svg).textContent = spec.title;
  const iw = width - M.left - M.right;
  const ih = HEIGHT - M.top - M.bottom;
  const from = spec.from, to = Math.max(spec.to, spec.from + 1);
  let top = spec.max;
  if (!(top > 0)) {
    let hi = 0;
    for (const s of spec.series) for (const [, v] of s.points) if (v > hi) hi = v;
    top = niceMax(hi * 1.1, spec.binary);
  }
  const x = (t) => M.left + ((t - from) / (to - from)) * iw;
  const y = (v) => M.top + ih - (Math.min(Math.max(v, 0), top) / top) * ih;

  const grid = el("g", { class: "grid" }, svg);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    el("line", { x1: M.left, x2: M.left + iw, y1: y(v), y2: y(v) }, grid);
    const label = el("text", { x: M.left - 6, y: y(v) + 4, "text-anchor": "end" }, grid);
    label.textContent = spec.format(v);
  }
  for (let i = 0; i <= 4; i++) {
    const t = from + ((to - from) * i) / 4;
    const anchor = i === 0 ? "start" : i === 4 ? "end" : "middle";
    const label = el("text", { x: x(t), y: HEIGHT - 5, "text-anchor": anchor }, grid);
    label.textContent = timeLabel(t, to - from);
  }

  const latest = [];
  spec.series.forEach((s, n) => {
    const pts = s.points.filter(([t, v]) => Number.isFinite(v) && t >= from - 1 && t <= to + 60e3);
    if (pts.length === 0) return;
    latest.push([s.name, pts[pts.length - 1][1]]);
    // A gap three times the usual step breaks the line: the agent was away.
    const steps = pts.slice(1).map(([t], i) => t - pts[i][0]).sort((a, b) => a - b);
    const gap = 3 * (steps[Math.floor(steps.length / 2)] || Infinity);
    let d = "", area = "", run = [];
    const flush = () => {
      if (run.length > 1) {
        const line = run.map(([t, v], i) => `${i ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`).join("");
        d += line;
        area += line + `L${x(run[run.length - 1][0]).toFixed(1)},${y(0)}L${x(run[0][0]).toFixed(1)},${y(0)}Z`;
      } else if (run.length === 1) {
        el("circle", { class: `dot s${n}`, cx: x(run[0][0]).toFixed(1), cy: y(run[0][1]).toFixed(1), r: 2.5 }, svg);
      }
      run = [];
    };
    pts.forEach((p, i) => {
      if (i > 0 && p[0] - pts[i - 1][0] > gap) flush();
      run.push(p);
    });
    flush();
    if (n === 0 && area) el("path", { class: `area s${n}`, d: area }, svg);
    if (d) el("path", { class: `line s${n}`, d, "data-series": s.name }, svg);
  });

  const say = (prefix, values) => {
    readout.replaceChildren();
    if (prefix) readout.append(prefix + "  ");
    values.forEach(([name, v], n) => {
      const b = document.createElement("b");
      b.className = `key s${n}`;
      b.textContent = spec.series.length > 1 ? `${name} ${spec.format(v)}` : spec.format(v);
      readout.append(b, " ");
    });
  };
  say("", latest);
  if (latest.length === 0) {
    const empty = el("text", { x: M.left + iw / 2, y: M.top + ih / 2, "text-anchor": "middle", class: "nodata" }, svg);
    empty.textContent = "no samples in this window yet";
    return;
  }

  // The readout follows the pointer: the sample nearest in time.
  const cursor = el("line", { class: "cursor", y1: M.top, y2: M.top + ih, visibility: "hidden" }, svg);
  const hit = el("rect", { x: M.left, y: M.top, width: iw, height: ih, fill: "transparent" }, svg);
  const base = spec.series.find((s) => s.points.length > 0).points;
  hit.addEventListener("pointermove", (e) => {
    const t = from + ((e.offsetX - M.left) / iw) * (to - from);
    let lo = 0, hi = base.length - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (base[mid][0] < t) lo = mid + 1; else hi = mid;
    }
    if (lo > 0 && t - base[lo - 1][0] < base[lo][0] - t) lo--;
    const at = base[lo][0];
    cursor.setAttribute("x1", x(at));
    cursor.setAttribute("x2", x(at));
    cursor.setAttribute("visibility", "visible");
    const values = spec.series.map((s) => [s.name, s.points.find(([pt]) => pt === at)?.[1]]).filter(([, v]) => v !== undefined);
    say(new Date(at).toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false }), values);
  });
  hit.addEventListener("pointerleave", () => {
    cursor.setAttribute("visibility", "hidden");
    say("", latest);
  });
}
