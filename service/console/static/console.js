// nnserve console: plain JavaScript over the service's own API, no build step, no CDN.
// Read-only: GET model cards and metrics, POST :explain. No management call exists here.
"use strict";

const state = {
  key: sessionStorage.getItem("nnserve-key") || "",
  cards: {},        // model name -> its v1 description (card, versions)
  samples: [],      // committed samples of the chosen version: {shape, data}
  previous: null,   // last metrics scrape: {time, figures}
};
const $ = (selector) => document.querySelector(selector);

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child !== null) node.append(child);
  return node;
}

function say(message, error) {
  const status = $("#status");
  status.textContent = message;
  status.className = error ? "error" : "";
}

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (state.key) headers.Authorization = "Bearer " + state.key;
  const response = await fetch(path, Object.assign({}, options || {}, { headers }));
  if (!response.ok) {
    let message = "HTTP " + response.status;
    try { message += ": " + (await response.json()).error; } catch (e) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function explainKeyNeeded(error) {
  if (error.status === 401) {
    say("This service requires an API key for this call: enter one above.", true);
    return true;
  }
  return false;
}

// -- models and cards ---------------------------------------------------------------------
async function loadModels() {
  let names;
  try {
    names = (await (await api("/v1/models")).json()).models;
  } catch (error) {
    if (!explainKeyNeeded(error)) say("Cannot list the models: " + error.message, true);
    return;
  }
  const select = $("#model");
  select.replaceChildren(...names.map((n) => el("option", { value: n, text: n })));
  if (!names.length) say("No model is being served.", true);
  else await chooseModel(names[0]);
}

async function chooseModel(name) {
  const described = await (await api("/v1/models/" + encodeURIComponent(name))).json();
  state.cards[name] = described;
  const versions = described.versions.slice().reverse();
  $("#version").replaceChildren(...versions.map((v) => el("option", { value: v, text: v })));
  await chooseVersion(name, versions[0]);
}

function currentModel() { return $("#model").value; }
function currentVersion() { return $("#version").value; }
function versionPath(name, version) {
  return "/v1/models/" + encodeURIComponent(name) + "/versions/" + encodeURIComponent(version);
}
function consolePath(name, version) {
  return "/console/api/models/" + encodeURIComponent(name) + "/versions/" +
    encodeURIComponent(version);
}

async function chooseVersion(name, version) {
  // each version's own card (/v1/models/{m} describes the newest version's)
  const extra = await (await api(consolePath(name, version))).json();
  state.cards[name] = { ...state.cards[name], card: extra.card };
  showCard(extra.card, name, version, extra.plots);
  state.samples = extra.samples;
  $("#sample").replaceChildren(...state.samples.map((s, i) =>
    el("option", { value: String(i), text: "sample " + (i + 1) + " (shape " + JSON.stringify(s.shape) + ")" })));
  $("#upload-row").hidden = !isImage(extra.card);
  showSample(0);
  $("#result").replaceChildren();
}

function isImage(card) {
  const shape = card.inputs[0].shape;
  return shape.length >= 3 && shape.slice(1).every((d) => d > 0);
}

function showCard(card, name, version, plots) {
  const m = card.metrics;
  const p = card.provenance;
  const rows = [
    ["kind / task", card.kind + " / " + card.task],
    ["description", card.description || "–"],
    ["dataset", p.dataset ? p.dataset.name + " (" + p.dataset.source + "; train " +
      p.dataset.n_train + ", validation " + p.dataset.n_val + ", test " + p.dataset.n_test + ")" : p.origin],
    ["test accuracy", m ? (100 * m.accuracy).toFixed(2) + " % (n = " + m.n + ", loss " + m.loss.toFixed(4) + ")" : "not measured"],
    ["trained", p.created_at ? p.created_at + (p.epochs_run ? " · " + p.epochs_run + " epochs" : "") : "–"],
    ["sha256 of model.onnx", card.onnx_sha256],
    ["labels", card.labels.length ? card.labels.join(", ") : "none (outputs as they are)"],
  ];
  const list = el("dl", { class: "card" });
  for (const [term, value] of rows) list.append(el("dt", { text: term }), el("dd", { text: value }));
  const heading = el("h3", { text: name + " version " + version });
  const figures = el("div", { class: "figures" });
  for (const [file, caption] of [["learning_curve.png", "Learning curve"], ["confusion_matrix.png", "Confusion matrix (test split)"]]) {
    if (!plots.includes(file)) {
      figures.append(el("p", { class: "muted", text: caption + ": none in this version's folder" }));
      continue;
    }
    const image = el("img", { alt: caption + " of " + name + " version " + version });
    const figure = el("figure", {}, image, el("figcaption", { text: caption }));
    figures.append(figure);
    // fetched (with the key when one is set), then shown from a blob: URL
    api(consolePath(name, version) + "/plots/" + file)
      .then((r) => r.blob())
      .then((blob) => { image.src = URL.createObjectURL(blob); })
      .catch(() => figure.replaceChildren(el("p", { class: "muted", text: caption + ": not available for this version" })));
  }
  $("#card").replaceChildren(heading, list, figures);
}

// -- the example ---------------------------------------------------------------------------
function nest(flat, shape) {
  if (shape.length <= 1) return flat;
  const size = flat.length / shape[0];
  const out = [];
  for (let i = 0; i < shape[0]; i++) out.push(nest(flat.slice(i * size, (i + 1) * size), shape.slice(1)));
  return out;
}

function compact(instance) {
  // one row per line: readable and editable
  if (Array.isArray(instance) && Array.isArray(instance[0])) {
    return "[\n" + instance.map((row) => "  " + JSON.stringify(row)).join(",\n") + "\n]";
  }
  return JSON.stringify(instance);
}

function showSample(index) {
  const sample = state.samples[index];
  if (sample) $("#instance").value = compact(nest(sample.data, sample.shape));
}

function readImage(file) {
  const reader = new FileReader();
  reader.onload = () => {
    const image = new Image();
    image.onload = () => {
      const canvas = el("canvas", { width: "28", height: "28" });
      const context = canvas.getContext("2d");
      context.drawImage(image, 0, 0, 28, 28);
      const rgba = context.getImageData(0, 0, 28, 28).data;
      const gray = [];
      for (let i = 0; i < rgba.length; i += 4) {
        gray.push(Math.round(0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2]));
      }
      const mean = gray.reduce((a, b) => a + b, 0) / gray.length;
      const pixels = mean > 127 ? gray.map((v) => 255 - v) : gray; // light background: inverted
      $("#instance").value = compact(nest(pixels, [28, 28]));
      say("Image converted to 28 × 28 grayscale" + (mean > 127 ? " (inverted)" : "") + ".");
    };
    image.src = reader.result;
  };
  reader.readAsDataURL(file);
}

async function send(event) {
  event.preventDefault();
  let instance;
  try {
    instance = JSON.parse($("#instance").value);
  } catch (error) {
    say("The instance is not valid JSON: " + error.message, true);
    return;
  }
  const name = currentModel();
  const version = currentVersion();
  $("#send").disabled = true;
  try {
    const response = await api(versionPath(name, version) + ":explain", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instances: [instance] }),
    });
    showResult(await response.json(), instance, state.cards[name].card);
    say("");
  } catch (error) {
    if (!explainKeyNeeded(error)) {
      say(error.message, true);
      $("#result").replaceChildren(el("p", { class: "error", text: error.message }));
    }
  } finally {
    $("#send").disabled = false;
  }
}

// -- the answer ------------------------------------------------------------------------------
function signed(v) { return (v >= 0 ? "+" : "−") + Math.abs(v).toPrecision(3); }
function attribution(v) { return signed(v) + (v >= 0 ? " supports" : " against"); }
function percent(p) { return (100 * p).toFixed(1) + " %"; }

function bars(entries, limit, shown) {
  // entries: [label, value]; longest first; a bar right of the axis supports, left (hatched)
  // is against; shown(value): the text beside a bar
  const sorted = entries.slice().sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, limit);
  const largest = Math.max(1e-12, ...sorted.map((e) => Math.abs(e[1])));
  const list = el("ul", { class: "bars" });
  for (const [label, value] of sorted) {
    const bar = el("span", { class: "bar " + (value >= 0 ? "pos" : "neg") });
    const width = (50 * Math.abs(value)) / largest;
    bar.style.width = width + "%";
    bar.style.left = (value >= 0 ? 50 : 50 - width) + "%";
    const track = el("span", { class: "track", "aria-hidden": "true" }, el("span", { class: "axis" }), bar);
    list.append(el("li", {}, el("span", { text: label }), track,
      el("span", { class: "value", text: (shown || attribution)(value) })));
  }
  return list;
}

function color(value, largest) {
  const a = Math.min(1, Math.abs(value) / largest);
  return value >= 0 ? "rgba(200, 30, 30, " + (0.75 * a) + ")" : "rgba(30, 90, 220, " + (0.75 * a) + ")";
}

function scale(largest, what) {
  // the heat map's scale, with labelled ends and middle (readable without colour)
  const canvas = el("canvas", { width: "224", height: "14", role: "img",
    "aria-label": "scale from " + signed(-largest) + " (against) through 0 to " + signed(largest) + " (supports)" });
  const context = canvas.getContext("2d");
  for (let x = 0; x < 224; x++) {
    context.fillStyle = "#fff";
    context.fillRect(x, 0, 1, 14);
    context.fillStyle = color(((x - 112) / 112) * largest, largest);
    context.fillRect(x, 0, 1, 14);
  }
  const labels = el("div", { class: "inline legend" },
    el("span", { text: signed(-largest) + " against" }), el("span", { text: "0" }),
    el("span", { text: signed(largest) + " supports " + what }));
  return el("div", { class: "legend" }, canvas, labels);
}

function heatMap(instance, attributions, patch, label) {
  const zoom = 8;
  const rows = attributions.length;
  const cols = attributions[0].length;
  const canvas = el("canvas", { width: String(cols * zoom), height: String(rows * zoom), id: "heat-map",
    role: "img", "aria-label": "heat map of the attributions over the input image" });
  const context = canvas.getContext("2d");
  const flat = attributions.flat();
  const largest = Math.max(1e-12, ...flat.map(Math.abs));
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = Math.max(0, Math.min(255, instance[r][c]));
      context.fillStyle = "rgb(" + v + "," + v + "," + v + ")";
      context.fillRect(c * zoom, r * zoom, zoom, zoom);
      context.fillStyle = color(attributions[r][c], largest);
      context.fillRect(c * zoom, r * zoom, zoom, zoom);
    }
  }
  // the three strongest patches each way, numbered and outlined: solid supports, dashed against
  const patches = [];
  for (let r = 0; r < rows; r += patch) for (let c = 0; c < cols; c += patch) patches.push([r, c, attributions[r][c]]);
  const top = patches.slice().sort((a, b) => b[2] - a[2]).slice(0, 3).filter((p) => p[2] > 0);
  const low = patches.slice().sort((a, b) => a[2] - b[2]).slice(0, 3).filter((p) => p[2] < 0);
  context.font = "bold 12px sans-serif";
  const outline = (list, dashed, mark) => list.forEach(([r, c], i) => {
    context.setLineDash(dashed ? [4, 3] : []);
    context.lineWidth = 2;
    context.strokeStyle = "#ffd400";
    context.strokeRect(c * zoom + 1, r * zoom + 1, patch * zoom - 2, patch * zoom - 2);
    context.fillStyle = "#ffd400";
    context.fillText(mark + (i + 1), c * zoom + 3, r * zoom + 13);
  });
  outline(top, false, "+");
  outline(low, true, "−");
  const describe = (list, mark) => el("ol", {}, ...list.map((p, i) => el("li", { text: mark + (i + 1) + ": rows " + p[0] + "–" + (Math.min(rows, p[0] + patch) - 1) + ", columns " + p[1] + "–" + (Math.min(cols, p[1] + patch) - 1) + ": " + signed(p[2]) })));
  const legend = el("div", { class: "legend" },
    scale(largest, label),
    el("p", { text: "Patches of " + patch + " × " + patch + " pixels. Outlined solid (+): most supporting; dashed (−): most against." }),
    el("p", { text: "Most supporting:" }), describe(top, "+"),
    el("p", { text: "Most against:" }), describe(low, "−"));
  return el("div", { class: "explain-figure" }, canvas, legend);
}

function strip(values, label) {
  // one column per time step: above the axis supports, below (hatched) is against
  const width = Math.max(300, values.length * 22);
  const canvas = el("canvas", { width: String(width), height: "140", id: "time-strip", role: "img",
    "aria-label": "attribution per time step, " + values.length + " steps" });
  const context = canvas.getContext("2d");
  const largest = Math.max(1e-12, ...values.map(Math.abs));
  const step = width / values.length;
  context.fillStyle = "#000";
  context.fillRect(0, 60, width, 1);
  context.font = "10px sans-serif";
  values.forEach((v, t) => {
    const h = (55 * Math.abs(v)) / largest;
    context.fillStyle = color(v, largest);
    context.fillRect(t * step + 2, v >= 0 ? 60 - h : 61, step - 4, h);
    if (v < 0) { // hatching, so the sign reads without colour
      context.strokeStyle = "#fff";
      for (let y = 61; y < 61 + h; y += 4) { context.beginPath(); context.moveTo(t * step + 2, y); context.lineTo(t * step + step - 2, y); context.stroke(); }
    }
    context.fillStyle = "#000";
    context.fillText(String(t), t * step + 3, 132);
  });
  context.fillText("supports " + label, 2, 10);
  context.fillText("against", 2, 118);
  const best = values.map((v, t) => [t, v]).sort((a, b) => b[1] - a[1]).slice(0, 3);
  return el("div", { class: "legend" }, canvas,
    el("p", { text: "Time steps (0 = first). Strongest support: " + best.map(([t, v]) => "step " + t + " " + signed(v)).join(", ") + "." }));
}

function showResult(answer, instance, card) {
  const item = answer.explanations[0];
  const parts = [];
  if (item.label !== undefined) {
    parts.push(el("p", { class: "prediction" }, "Predicted: ", el("strong", { id: "predicted-label", text: item.label }),
      " (" + (100 * item.probabilities[item.label]).toFixed(1) + " %)"));
    parts.push(el("h3", { text: "Probabilities" }),
      bars(Object.entries(item.probabilities), 20, percent));
  } else {
    parts.push(el("p", { class: "prediction" }, "Outputs: ", el("strong", { id: "predicted-label", text: JSON.stringify(item.outputs) })));
  }
  const target = item.target + " (score " + item.score.toPrecision(3) + ")";
  parts.push(el("h3", { text: "Why: " + answer.method + " against the " + answer.baseline.origin + " baseline" }),
    el("p", { class: "muted", text: "Each part's attribution is how much the score of " + target +
      " drops when that part is replaced by the baseline: " + answer.baseline.description + ". " +
      answer.samples + " perturbed samples in one batched run." }));
  let figure;
  if (answer.parts === "patches") {
    figure = heatMap(instance, item.attributions, item.patch_size, item.target);
  } else if (answer.parts === "sequence") {
    const channelNames = card.feature_names.length === item.channels.length
      ? card.feature_names : item.channels.map((_, i) => "channel " + (i + 1));
    figure = el("div", {}, strip(item.time_steps, item.target), el("h4", { text: "Channels (every time step)" }),
      bars(item.channels.map((v, i) => [channelNames[i], v]), 20));
  } else if (!item.feature_names) {
    // unnamed inputs of a row (a forecaster's window): ordered steps, drawn as a strip
    figure = strip(item.attributions, item.target);
  } else {
    const names = item.feature_names;
    figure = el("div", {}, el("p", { text: "Features, strongest first (15 of " + names.length + ")" }),
      bars(item.attributions.map((v, i) => [names[i], v]), 15));
  }
  figure.id = "explanation";
  parts.push(figure);
  $("#result").replaceChildren(...parts);
}

// -- live figures ------------------------------------------------------------------------------
function parseMetrics(text) {
  const figures = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const match = line.match(/^(\w+)(?:\{(.*)\})? (\S+)$/);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    if (!labels.model) continue;
    const key = labels.model + " " + labels.version;
    const f = figures[key] || (figures[key] = { model: labels.model, version: labels.version, requests: 0, seconds: 0, count: 0, explained: 0, accuracy: null, window: 0 });
    const value = Number(match[3]);
    const prediction = labels.protocol === "v1" || labels.protocol === "v2";
    if (match[1] === "nnserve_requests_total" && prediction) f.requests += value;
    else if (match[1] === "nnserve_request_duration_seconds_sum" && prediction) f.seconds += value;
    else if (match[1] === "nnserve_request_duration_seconds_count" && prediction) f.count += value;
    else if (match[1] === "nnserve_explain_duration_seconds_count") f.explained += value;
    else if (match[1] === "nnserve_live_accuracy") f.accuracy = value;
    else if (match[1] === "nnserve_live_accuracy_window") f.window = value;
  }
  return figures;
}

async function refreshLive() {
  let text;
  try {
    text = await (await api("/metrics")).text();
  } catch (error) {
    $("#live-note").textContent = error.status === 401
      ? "/metrics needs an API key on this service (NNSERVE_API_KEYS_PROTECT_METRICS): enter one above to see live figures."
      : "Cannot read /metrics: " + error.message;
    return;
  }
  const now = Date.now() / 1000;
  const figures = parseMetrics(text);
  const before = state.previous;
  state.previous = { time: now, figures };
  const body = $("#live tbody");
  const rows = Object.values(figures).filter((f) => f.version).sort((a, b) => (a.model + a.version).localeCompare(b.model + b.version));
  body.replaceChildren(...rows.map((f) => {
    const old = before && before.figures[f.model + " " + f.version];
    const dt = before ? now - before.time : 0;
    const rate = old && dt > 0 ? ((f.requests - old.requests) / dt).toFixed(1) : "…";
    const calls = old ? f.count - old.count : 0;
    const latency = old && calls > 0 ? (1000 * (f.seconds - old.seconds) / calls).toFixed(2) + " ms" : "–";
    const explained = old && dt > 0 ? ((f.explained - old.explained) / dt).toFixed(2) : "…";
    const accuracy = f.accuracy === null ? "no feedback yet" : (100 * f.accuracy).toFixed(1) + " % of " + f.window;
    return el("tr", {}, ...[f.model, f.version, rate, latency, explained, accuracy].map((v) => el("td", { text: String(v) })));
  }));
  $("#live-note").textContent = "From this service's /metrics, every 5 seconds (last: " + new Date().toLocaleTimeString() + ").";
}

// -- wiring ---------------------------------------------------------------------------------------
document.addEventListener("DOMContentLoaded", () => {
  $("#key").value = state.key;
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.key = $("#key").value.trim();
    sessionStorage.setItem("nnserve-key", state.key);
    say(state.key ? "Key set for this tab." : "No key.");
    loadModels();
    refreshLive();
  });
  $("#model").addEventListener("change", () => chooseModel(currentModel()).catch((e) => say(e.message, true)));
  $("#version").addEventListener("change", () => chooseVersion(currentModel(), currentVersion()).catch((e) => say(e.message, true)));
  $("#sample").addEventListener("change", () => showSample(Number($("#sample").value)));
  $("#upload").addEventListener("change", () => { const f = $("#upload").files[0]; if (f) readImage(f); });
  $("#predict-form").addEventListener("submit", send);
  loadModels().catch((e) => say(e.message, true));
  refreshLive();
  setInterval(refreshLive, 5000);
});
