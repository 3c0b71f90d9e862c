// The paint page (docs/serving.md#the-page). The map is an array of class indices at the
// model's resolution; the canvas shows it in the schema's colours, one canvas pixel per map
// pixel (CSS enlarges it). After each edit the map goes to POST /synthesize as a colour PNG
// drawn from those indices, never from the enlarged picture, so every pixel holds exactly a
// palette colour. One request at a time: edits made while one runs are sent together after it.
"use strict";

const state = {
  schema: null,   // GET /schema
  width: 0,
  height: 0,
  labels: null,   // Uint8Array [height * width] of class indices
  history: [],    // earlier maps, for undo
  klass: 0,       // the class painted with
  painting: false,
  last: null,     // the cell the stroke was last at
  inFlight: false,
  dirty: false,   // an edit waits for the request in flight
};
const HISTORY_KEPT = 50;
const $ = (id) => document.getElementById(id);

async function start() {
  const response = await fetch("schema");
  state.schema = await response.json();
  const [height, width] = state.schema.resolution.split("x").map(Number);
  Object.assign(state, { width, height, labels: new Uint8Array(width * height).fill(state.schema.void_index) });
  $("map").width = width;
  $("map").height = height;
  showModel(state.schema.model, response.headers.get("X-Model-Version"));
  buildClassPicker();
  await listStoreMaps();
  bindTools();
  draw();
  send();
}

function showModel(model, version) {
  $("model").textContent = `${model.uri} (version ${version}) · ${state.schema.name} · ` +
    `${state.schema.resolution} · ${state.schema.num_outputs} variants`;
}

function buildClassPicker() {
  const picker = $("classes");
  state.schema.classes.forEach((cls) => {
    const label = document.createElement("label");
    label.dataset.index = cls.index;
    label.title = `class ${cls.index}: ids ${cls.ids.join(", ") || "-"}`;
    const input = Object.assign(document.createElement("input"), { type: "radio", name: "class", value: cls.index });
    input.checked = cls.index === state.klass;
    input.addEventListener("change", () => { state.klass = cls.index; });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${cls.color.join(",")})`;
    label.append(input, swatch, document.createTextNode(cls.name));
    picker.append(label);
  });
}

async function listStoreMaps() {
  const listing = await (await fetch("labels")).json();
  const select = $("start");
  for (const id of listing.ids) {
    select.append(Object.assign(document.createElement("option"), { value: id, textContent: id }));
  }
  if (listing.split) select.options[0].textContent = `blank (void) or a ${listing.split} map:`;
}

function bindTools() {
  const canvas = $("map");
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    const cell = cellAt(event);
    remember();
    if (tool() === "fill") {
      fill(cell, state.klass);
      draw();
      send();
      return;
    }
    state.painting = true;
    state.last = cell;
    stamp(cell);
    draw();
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!state.painting) return;
    const cell = cellAt(event);
    line(state.last, cell);
    state.last = cell;
    draw();
  });
  const finish = () => {
    if (!state.painting) return;
    state.painting = false;
    send();
  };
  canvas.addEventListener("pointerup", finish);
  canvas.addEventListener("pointercancel", finish);
  $("brush").addEventListener("input", () => { $("brush-size").textContent = $("brush").value; });
  $("undo").addEventListener("click", undo);
  $("start").addEventListener("change", () => loadMap($("start").value));
  $("download-map").addEventListener("click", () => { $("download-map").href = mapCanvas().toDataURL("image/png"); });
}

function tool() {
  return document.querySelector("input[name=tool]:checked").value;
}

function cellAt(event) {
  const box = $("map").getBoundingClientRect();
  const x = Math.floor(((event.clientX - box.left) / box.width) * state.width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * state.height);
  return { x: clamp(x, 0, state.width - 1), y: clamp(y, 0, state.height - 1) };
}

const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

function remember() {
  state.history.push(state.labels.slice());
  if (state.history.length > HISTORY_KEPT) state.history.shift();
  $("undo").disabled = false;
}

function undo() {
  if (!state.history.length) return;
  state.labels = state.history.pop();
  $("undo").disabled = !state.history.length;
  draw();
  send();
}

// A disc of the brush's diameter (in map pixels) around the cell.
function stamp(cell) {
  const size = Number($("brush").value);
  const r = (size - 1) / 2;
  for (let dy = -Math.ceil(r); dy <= Math.ceil(r); dy++) {
    for (let dx = -Math.ceil(r); dx <= Math.ceil(r); dx++) {
      if (dx * dx + dy * dy > r * r + 0.25) continue;
      const x = cell.x + dx, y = cell.y + dy;
      if (x >= 0 && y >= 0 && x < state.width && y < state.height) state.labels[y * state.width + x] = state.klass;
    }
  }
}

// Stamps along the segment, one per map pixel, so a fast stroke leaves no gaps.
function line(a, b) {
  const steps = Math.max(Math.abs(b.x - a.x), Math.abs(b.y - a.y), 1);
  for (let i = 1; i <= steps; i++) {
    stamp({ x: Math.round(a.x + ((b.x - a.x) * i) / steps), y: Math.round(a.y + ((b.y - a.y) * i) / steps) });
  }
}

// The 4-connected region of the cell's class becomes `klass`.
function fill(cell, klass) {
  const { width, height, labels } = state;
  const from = labels[cell.y * width + cell.x];
  if (from === klass) return;
  const stack = [cell.y * width + cell.x];
  while (stack.length) {
    const at = stack.pop();
    if (labels[at] !== from) continue;
    labels[at] = klass;
    const x = at % width;
    if (x > 0) stack.push(at - 1);
    if (x < width - 1) stack.push(at + 1);
    if (at >= width) stack.push(at - width);
    if (at < width * (height - 1)) stack.push(at + width);
  }
}

function colours() {
  const pixels = new ImageData(state.width, state.height);
  const palette = state.schema.classes.map((cls) => cls.color);
  state.labels.forEach((klass, i) => {
    pixels.data.set([...palette[klass], 255], 4 * i);
  });
  return pixels;
}

function draw() {
  $("map").getContext("2d").putImageData(colours(), 0, 0);
}

// The map at its own size in palette colours: what is sent and downloaded.
function mapCanvas() {
  const canvas = Object.assign(document.createElement("canvas"), { width: state.width, height: state.height });
  canvas.getContext("2d").putImageData(colours(), 0, 0);
  return canvas;
}

async function loadMap(id) {
  remember();
  if (!id) {
    state.labels = new Uint8Array(state.width * state.height).fill(state.schema.void_index);
  } else {
    const image = new Image();
    image.src = `labels/${encodeURIComponent(id).replaceAll("%2F", "/")}`;
    await image.decode();
    const canvas = Object.assign(document.createElement("canvas"), { width: state.width, height: state.height });
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0, state.width, state.height);
    state.labels = classesOf(context.getImageData(0, 0, state.width, state.height).data);
  }
  draw();
  send();
}

// Each pixel's nearest class colour (the server draws every class in its colour exactly).
function classesOf(rgba) {
  const palette = state.schema.classes.map((cls) => cls.color);
  const labels = new Uint8Array(state.width * state.height);
  for (let i = 0; i < labels.length; i++) {
    let best = 0, bestDistance = Infinity;
    palette.forEach(([r, g, b], klass) => {
      const d = (rgba[4 * i] - r) ** 2 + (rgba[4 * i + 1] - g) ** 2 + (rgba[4 * i + 2] - b) ** 2;
      if (d < bestDistance) { best = klass; bestDistance = d; }
    });
    labels[i] = best;
  }
  return labels;
}

async function send() {
  if (state.inFlight) { state.dirty = true; return; }
  state.inFlight = true;
  state.dirty = false;
  const began = performance.now();
  try {
    const body = await new Promise((resolve) => mapCanvas().toBlob(resolve, "image/png"));
    const response = await fetch("synthesize", { method: "POST", body, headers: { "Content-Type": "image/png" } });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    showImages(answer.images);
    showModel(answer.model, response.headers.get("X-Model-Version"));
    setStatus(`version ${answer.model.version ?? "none"} · batch of ${answer.batch_size} · ` +
              `${Math.round(performance.now() - began)} ms`, false);
    document.body.dataset.answers = Number(document.body.dataset.answers) + 1;
  } catch (error) {
    setStatus(`error: ${error.message}`, true);
  } finally {
    state.inFlight = false;
    if (state.dirty) send();
  }
}

function showImages(images) {
  const section = $("variants");
  images.forEach((png, k) => {
    let figure = section.children[k];
    if (!figure) {
      figure = document.createElement("figure");
      const link = Object.assign(document.createElement("a"), { download: `variant-${k}.png`, textContent: `variant ${k} (download)` });
      const caption = document.createElement("figcaption");
      caption.append(link);
      figure.append(Object.assign(document.createElement("img"), { alt: `variant ${k}` }), caption);
      section.append(figure);
    }
    const url = `data:image/png;base64,${png}`;
    figure.querySelector("img").src = url;
    figure.querySelector("a").href = url;
  });
  while (section.children.length > images.length) section.lastChild.remove();
}

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

start().catch((error) => setStatus(`error: ${error.message}`, true));
