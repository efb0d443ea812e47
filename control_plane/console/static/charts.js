// Hand-written SVG charts: every bar, point and threshold carries its number as text, and each
// chart has an aria-label that says what it shows, so it reads without hovering.

import { s } from "./dom.js";
import { int, pct } from "./format.js";

export const PALETTE = ["#2563eb", "#f97316", "#059669", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#4b5563"];
const GRID = "#e5e7eb";
const AXIS = "#6b7280";
const INK = "#111827";
const DANGER = "#dc2626";

/** A stable colour per variant name within one flag (by declaration order). */
export function colourFor(names) {
  const map = new Map();
  names.forEach((name, index) => map.set(name, PALETTE[index % PALETTE.length]));
  return (name) => map.get(name) || PALETTE[PALETTE.length - 1];
}

/** A small colour key, as SVG (the page's CSP allows no inline style attributes). */
export function swatch(fill) {
  return s("svg", { class: "swatch", width: 10, height: 10, viewBox: "0 0 10 10", "aria-hidden": "true" },
    s("rect", { width: 10, height: 10, rx: 2, fill }));
}

function frame(width, height, label, ...children) {
  // Drawn at its natural size (never scaled up, so text stays 11-12 px); CSS shrinks it to
  // fit a narrow column.
  return s("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": label,
    class: "chart", preserveAspectRatio: "xMinYMin meet",
  }, s("title", {}, label), ...children);
}

function text(x, y, content, attrs = {}) {
  return s("text", { x, y, fill: INK, "font-size": 12, ...attrs }, content);
}

/** A "nice" upper bound for an axis: 1, 2, 2.5 or 5 times a power of ten. */
export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

/**
 * Configured against observed share per variant: two horizontal bars per variant.
 * rows: [{variant, backend, configuredShare, observedShare, decisions}]
 */
export function splitChart(rows, colour, { minutes }) {
  const left = 120, barWidth = 270, right = 170, rowHeight = 46, top = 30;
  const width = left + barWidth + right, height = top + rows.length * rowHeight + 26;
  const x = (share) => left + barWidth * Math.max(0, Math.min(1, share || 0));
  const parts = [];
  parts.push(s("rect", { x: left, y: 8, width: 12, height: 10, fill: "#9ca3af", "fill-opacity": 0.3, stroke: "#9ca3af" }));
  parts.push(text(left + 18, 17, "configured weight", { "font-size": 11, fill: AXIS }));
  parts.push(s("rect", { x: left + 140, y: 8, width: 12, height: 10, fill: "#9ca3af" }));
  parts.push(text(left + 158, 17, `observed, last ${minutes} min`, { "font-size": 11, fill: AXIS }));
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(s("line", { x1: x(tick), x2: x(tick), y1: top - 4, y2: height - 22, stroke: GRID }));
    parts.push(text(x(tick), height - 8, pct(tick, 0), { "text-anchor": "middle", "font-size": 11, fill: AXIS }));
  }
  rows.forEach((row, index) => {
    const y = top + index * rowHeight;
    const fill = colour(row.variant);
    parts.push(text(left - 10, y + 16, row.variant, { "text-anchor": "end", "font-weight": 600 }));
    parts.push(text(left - 10, y + 31, row.backend || "(not in the flag)", { "text-anchor": "end", "font-size": 11, fill: AXIS }));
    const configured = row.configuredShare;
    parts.push(s("rect", {
      x: left, y: y + 4, height: 14, width: Math.max(configured ? x(configured) - left : 0, 0),
      fill, "fill-opacity": 0.25, stroke: fill, "stroke-width": configured ? 1 : 0,
      class: "bar-configured", "data-variant": row.variant,
    }));
    parts.push(s("rect", {
      x: left, y: y + 21, height: 14, width: Math.max(x(row.observedShare) - left, 0), fill,
      class: "bar-observed", "data-variant": row.variant,
    }));
    parts.push(text(left + barWidth + 10, y + 16, configured === null || configured === undefined ? "configured –" : `configured ${pct(configured)}`, { "font-size": 11, fill: AXIS, class: "label-configured", "data-variant": row.variant }));
    parts.push(text(left + barWidth + 10, y + 33, row.decisions ? `${pct(row.observedShare)} · ${int(row.decisions)}` : (row.observedShare === null ? "no decisions" : `${pct(0)} · 0`), {
      "font-weight": 600, class: "label-observed", "data-variant": row.variant, "data-decisions": row.decisions,
    }));
  });
  const summary = rows.map((row) => `${row.variant}: configured ${pct(row.configuredShare)}, observed ${pct(row.observedShare)} (${row.decisions} decisions)`).join("; ");
  return frame(width, height, `Split by variant. ${summary}`, ...parts);
}

/**
 * Decisions per bucket over the window, stacked by variant (oldest left, now right).
 * series: [{variant: count}], names: variant order.
 */
export function seriesChart(series, names, colour, { bucketSeconds, windowSeconds }) {
  const left = 46, right = 12, top = 22, plotHeight = 130, width = 560;
  const plotWidth = width - left - right, height = top + plotHeight + 26;
  const totals = series.map((bucket) => Object.values(bucket).reduce((a, b) => a + b, 0));
  const max = niceMax(Math.max(...totals, 1));
  const columnWidth = plotWidth / Math.max(series.length, 1);
  const y = (value) => top + plotHeight - (plotHeight * value) / max;
  const parts = [text(left, 13, `Decisions per ${bucketSeconds} s`, { "font-size": 11, fill: AXIS })];
  for (const tick of [0, max / 2, max]) {
    parts.push(s("line", { x1: left, x2: width - right, y1: y(tick), y2: y(tick), stroke: GRID }));
    parts.push(text(left - 6, y(tick) + 4, int(Math.round(tick * 10) / 10), { "text-anchor": "end", "font-size": 11, fill: AXIS }));
  }
  series.forEach((bucket, index) => {
    let base = 0;
    for (const name of names) {
      const count = bucket[name] || 0;
      if (!count) continue;
      parts.push(s("rect", {
        x: left + index * columnWidth + 1, width: Math.max(columnWidth - 2, 1),
        y: y(base + count), height: y(base) - y(base + count), fill: colour(name),
      }, s("title", {}, `${name}: ${count}`)));
      base += count;
    }
  });
  if (!totals.some(Boolean)) {
    parts.push(text(left + plotWidth / 2, top + plotHeight / 2, "no decisions in this window", { "text-anchor": "middle", fill: AXIS }));
  }
  const minutes = windowSeconds / 60;
  const labels = [[0, `-${+minutes.toFixed(1)} min`], [0.5, `-${+(minutes / 2).toFixed(1)} min`], [1, "now"]];
  for (const [fraction, label] of labels) {
    const anchor = fraction === 0 ? "start" : fraction === 1 ? "end" : "middle";
    parts.push(text(left + plotWidth * fraction, height - 6, label, { "text-anchor": anchor, "font-size": 11, fill: AXIS }));
  }
  const total = totals.reduce((a, b) => a + b, 0);
  return frame(width, height, `Decisions over the last ${+minutes.toFixed(1)} minutes: ${total} in ${series.length} buckets of ${bucketSeconds} s`, ...parts);
}

/**
 * A forest plot: each row's estimate with its 95% interval on one shared axis, the control
 * row's estimate as a dashed reference line.
 * rows: [{label, value, low, high, reference: bool}], format: number -> string.
 */
export function intervalChart(rows, colour, format, { title }) {
  const left = 130, plotWidth = 330, right = 180, rowHeight = 34, top = 26;
  const width = left + plotWidth + right, height = top + rows.length * rowHeight + 26;
  const known = rows.filter((row) => row.value !== null && row.value !== undefined);
  const lows = known.map((row) => (row.low ?? row.value));
  const highs = known.map((row) => (row.high ?? row.value));
  let min = Math.min(...lows, Infinity), max = Math.max(...highs, -Infinity);
  if (!Number.isFinite(min)) { min = 0; max = 1; }
  if (max - min < 1e-9) { min -= 0.05 * (Math.abs(min) || 1); max += 0.05 * (Math.abs(max) || 1); }
  const pad = (max - min) * 0.08;
  min -= pad; max += pad;
  const x = (value) => left + (plotWidth * (value - min)) / (max - min);
  const parts = [text(left, 14, title, { "font-size": 11, fill: AXIS })];
  for (let i = 0; i <= 4; i += 1) {
    const value = min + ((max - min) * i) / 4;
    parts.push(s("line", { x1: x(value), x2: x(value), y1: top - 4, y2: height - 22, stroke: GRID }));
    parts.push(text(x(value), height - 8, format(value), { "text-anchor": "middle", "font-size": 11, fill: AXIS }));
  }
  const reference = rows.find((row) => row.reference && row.value !== null && row.value !== undefined);
  if (reference) {
    parts.push(s("line", { x1: x(reference.value), x2: x(reference.value), y1: top - 4, y2: height - 22, stroke: AXIS, "stroke-dasharray": "4 3" }));
  }
  rows.forEach((row, index) => {
    const y = top + index * rowHeight + rowHeight / 2;
    const fill = colour(row.label);
    parts.push(text(left - 10, y + 4, row.label, { "text-anchor": "end", "font-weight": 600 }));
    if (row.value === null || row.value === undefined) {
      parts.push(text(left + 6, y + 4, "no data yet", { fill: AXIS, "font-size": 11 }));
      return;
    }
    if (row.low !== null && row.low !== undefined) {
      parts.push(s("line", { x1: x(row.low), x2: x(row.high), y1: y, y2: y, stroke: fill, "stroke-width": 3 }));
      for (const end of [row.low, row.high]) {
        parts.push(s("line", { x1: x(end), x2: x(end), y1: y - 7, y2: y + 7, stroke: fill, "stroke-width": 2 }));
      }
    }
    parts.push(s("circle", { cx: x(row.value), cy: y, r: 5, fill, stroke: "#fff", "stroke-width": 1.5 }));
    const interval = row.low !== null && row.low !== undefined ? `  [${format(row.low)}, ${format(row.high)}]` : "";
    parts.push(text(left + plotWidth + 12, y + 4, `${format(row.value)}${interval}`, {
      "font-size": 12, class: "label-estimate", "data-variant": row.label,
    }));
  });
  const summary = rows.map((row) => `${row.label} ${format(row.value)} (95% CI ${format(row.low)} to ${format(row.high)})`).join("; ");
  return frame(width, height, `${title}: ${summary}`, ...parts);
}

/**
 * A time chart of one or more series with an optional threshold line.
 * series: [{name, colour, points: [[x, y|null]], step: bool}], x in seconds from the start.
 */
export function lineChart(series, { title, format, threshold, thresholdLabel, xMax, yMax, formatX }) {
  const left = 56, right = 86, top = 24, plotHeight = 120, width = 560;
  const plotWidth = width - left - right, height = top + plotHeight + 28;
  const values = series.flatMap((line) => line.points.map((point) => point[1])).filter((value) => value !== null && value !== undefined);
  const ceiling = yMax ?? niceMax(Math.max(...values, threshold ?? 0, 1e-9) * 1.1);
  const span = Math.max(xMax || 0, ...series.flatMap((line) => line.points.map((point) => point[0])), 1);
  const x = (value) => left + (plotWidth * value) / span;
  const y = (value) => top + plotHeight - (plotHeight * Math.min(value, ceiling)) / ceiling;
  const parts = [text(left, 14, title, { "font-size": 11, fill: AXIS })];
  for (const tick of [0, ceiling / 2, ceiling]) {
    parts.push(s("line", { x1: left, x2: left + plotWidth, y1: y(tick), y2: y(tick), stroke: GRID }));
    parts.push(text(left - 6, y(tick) + 4, format(tick), { "text-anchor": "end", "font-size": 11, fill: AXIS }));
  }
  for (const fraction of [0, 0.5, 1]) {
    const anchor = fraction === 0 ? "start" : fraction === 1 ? "end" : "middle";
    parts.push(text(left + plotWidth * fraction, height - 8, formatX(span * fraction), { "text-anchor": anchor, "font-size": 11, fill: AXIS }));
  }
  if (threshold !== null && threshold !== undefined) {
    parts.push(s("line", { x1: left, x2: left + plotWidth, y1: y(threshold), y2: y(threshold), stroke: DANGER, "stroke-width": 1.5, "stroke-dasharray": "6 4", class: "threshold" }));
    parts.push(text(left + plotWidth + 6, y(threshold) + 4, thresholdLabel || `max ${format(threshold)}`, { fill: DANGER, "font-size": 11, "font-weight": 600 }));
  }
  const taken = threshold !== null && threshold !== undefined ? [y(threshold)] : [];
  for (const line of series) {
    let path = "";
    let previous = null;
    for (const [px, py] of line.points) {
      if (py === null || py === undefined) { previous = null; continue; }
      if (previous === null) path += `M${x(px)},${y(py)}`;
      else if (line.step) path += `H${x(px)}V${y(py)}`;
      else path += `L${x(px)},${y(py)}`;
      previous = py;
    }
    if (path) parts.push(s("path", { d: path, fill: "none", stroke: line.colour, "stroke-width": 2 }));
    if (!line.step) {
      for (const [px, py] of line.points) {
        if (py === null || py === undefined) continue;
        parts.push(s("circle", { cx: x(px), cy: y(py), r: 2.5, fill: line.colour }, s("title", {}, `${line.name}: ${format(py)}`)));
      }
    }
    const last = [...line.points].reverse().find((point) => point[1] !== null && point[1] !== undefined);
    if (last) {
      // Keep the end labels of several lines (and the threshold's) from overprinting.
      let labelY = y(last[1]);
      while (taken.some((other) => Math.abs(other - labelY) < 12)) labelY += 12;
      taken.push(labelY);
      parts.push(text(left + plotWidth + 6, labelY + 4, format(last[1]), {
        fill: line.colour, "font-size": 11, "font-weight": 600, class: "label-last",
      }));
    }
  }
  const latest = series.map((line) => {
    const last = [...line.points].reverse().find((point) => point[1] !== null && point[1] !== undefined);
    return `${line.name} latest ${last ? format(last[1]) : "none"}`;
  }).join("; ");
  const limit = threshold !== null && threshold !== undefined ? `; threshold ${format(threshold)}` : "";
  return frame(width, height, `${title}: ${latest}${limit}`, ...parts);
}

/**
 * Primary against shadow latency: for each quantile (p50, p99) two bars on one shared axis,
 * each with its value, and the shadow ÷ primary ratio at the end of the row (red above
 * `warnAbove`).
 * rows: [{quantile, primary, shadow, ratio}] in ms; colours: {primary, shadow}.
 */
export function latencyChart(rows, colours, { format, formatRatio, title, warnAbove = 1.1 }) {
  const left = 46, barWidth = 300, right = 120, rowHeight = 54, top = 34;
  const width = left + barWidth + right, height = top + rows.length * rowHeight + 22;
  const values = rows.flatMap((row) => [row.primary, row.shadow]).filter((value) => value !== null && value !== undefined);
  const max = niceMax(Math.max(...values, 1e-9));
  const x = (value) => left + (barWidth * Math.max(0, value || 0)) / max;
  const parts = [text(left, 13, title, { "font-size": 11, fill: AXIS })];
  parts.push(s("rect", { x: left, y: 19, width: 12, height: 9, fill: colours.primary }));
  parts.push(text(left + 17, 27, "primary", { "font-size": 11, fill: AXIS }));
  parts.push(s("rect", { x: left + 80, y: 19, width: 12, height: 9, fill: colours.shadow }));
  parts.push(text(left + 97, 27, "shadow", { "font-size": 11, fill: AXIS }));
  for (const tick of [0, max / 2, max]) {
    parts.push(s("line", { x1: x(tick), x2: x(tick), y1: top, y2: height - 20, stroke: GRID }));
    parts.push(text(x(tick), height - 6, format(tick), { "text-anchor": "middle", "font-size": 11, fill: AXIS }));
  }
  rows.forEach((row, index) => {
    const y = top + 6 + index * rowHeight;
    parts.push(text(left - 8, y + 23, row.quantile, { "text-anchor": "end", "font-weight": 600 }));
    for (const [offset, role] of [[0, "primary"], [22, "shadow"]]) {
      const value = row[role];
      const known = value !== null && value !== undefined;
      parts.push(s("rect", {
        x: left, y: y + offset, height: 18, width: known ? Math.max(x(value) - left, 1) : 0,
        fill: colours[role], class: `bar-${role}`, "data-quantile": row.quantile,
      }));
      parts.push(text(known ? x(value) + 6 : left + 6, y + offset + 13, known ? format(value) : "no data", {
        "font-size": 11, fill: known ? INK : AXIS, class: `label-${role}`,
        "data-quantile": row.quantile, "data-value": known ? value : "",
      }));
    }
    const slower = row.ratio !== null && row.ratio !== undefined && row.ratio > warnAbove;
    parts.push(text(width - 8, y + 24, row.ratio === null || row.ratio === undefined ? "–" : `${formatRatio(row.ratio)} primary`, {
      "text-anchor": "end", "font-weight": 600, fill: slower ? DANGER : INK,
      class: "label-ratio", "data-quantile": row.quantile, "data-value": row.ratio ?? "",
    }));
  });
  const summary = rows.map((row) => `${row.quantile}: primary ${format(row.primary)}, shadow ${format(row.shadow)} (${formatRatio(row.ratio)})`).join("; ");
  return frame(width, height, `${title}. ${summary}`, ...parts);
}

/** A small bar for a rate in a table cell (0-1), with no text of its own. */
export function rateBar(rate, fill) {
  const width = 80;
  return s("svg", { class: "rate-bar", width, height: 8, viewBox: `0 0 ${width} 8`, "aria-hidden": "true" },
    s("rect", { width, height: 8, rx: 2, fill: "#f1f5f9" }),
    s("rect", { width: Math.max(0, Math.min(1, rate || 0)) * width, height: 8, rx: 2, fill }));
}
