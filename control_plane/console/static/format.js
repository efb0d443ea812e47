// Number and time formatting shared by the views and charts.

const integer = new Intl.NumberFormat("en-US");

export function int(value) {
  return value === null || value === undefined ? "–" : integer.format(value);
}

/** 0.4871 -> "48.7%" (digits after the point). */
export function pct(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${(value * 100).toFixed(digits)}%`;
}

export function num(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toFixed(digits);
}

/** A p-value: "0.0312", "< 0.0001". */
export function pValue(value) {
  if (value === null || value === undefined) return "–";
  if (value < 0.0001) return "< 0.0001";
  return value.toFixed(4);
}

export function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 100 ? `${value.toFixed(0)} ms` : `${value.toFixed(1)} ms`;
}

/** "14:03:27" today, "2024-05-02 14:03" otherwise; the full ISO time goes in a title. */
export function time(iso) {
  if (!iso) return "–";
  const date = new Date(iso);
  const now = new Date();
  const hms = date.toLocaleTimeString("en-GB", { hour12: false });
  if (date.toDateString() === now.toDateString()) return hms;
  return `${date.toISOString().slice(0, 10)} ${hms.slice(0, 5)}`;
}

/** "12 s ago", "4 min ago", "3 h ago". */
export function ago(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

/** Seconds as "45 s", "5 min", "1.5 h". */
export function duration(seconds) {
  if (seconds < 10) return `${+seconds.toFixed(1)} s`;
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${+(seconds / 60).toFixed(1)} min`;
  return `${+(seconds / 3600).toFixed(1)} h`;
}

/** A JSON value shortened for one line (as `control-plane history` prints diffs). */
export function short(value, max = 60) {
  const text = JSON.stringify(value);
  if (text === undefined) return "undefined";
  return text.length <= max ? text : `${text.slice(0, max - 3)}...`;
}

/** A ratio: 1.5 -> "1.5×", 2.804 -> "2.8×", 1000 -> "1000×". */
export function ratio(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${value >= 100 ? Math.round(value) : +value.toPrecision(value >= 10 ? 3 : 2)}×`;
}
