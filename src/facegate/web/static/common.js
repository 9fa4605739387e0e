// Shared by the pages: API calls (with the optional API key), cropping, drawing.
// Plain ES module, no build step. BlazeFace itself is in detector.js.

const KEY_STORE = "facegate.apiKey";

// ----------------------------------------------------------------------------------- settings
let typedKey = null; // the key as last typed in this page's Settings (null: none typed here yet)

/** The API key sent with every call: read at each call, so a key typed in Settings counts at once. */
export function apiKey() {
  if (typedKey !== null) return typedKey;
  try {
    return localStorage.getItem(KEY_STORE) || "";
  } catch {
    return ""; // storage refused (e.g. a private window): only a typed key
  }
}

/** Keeps `key` for the next calls (and in this browser's localStorage); "" forgets it. */
export function saveApiKey(key) {
  typedKey = (key || "").trim();
  try {
    if (typedKey) localStorage.setItem(KEY_STORE, typedKey);
    else localStorage.removeItem(KEY_STORE);
  } catch {
    // kept in memory for this page only
  }
}

/**
 * Wires the header's API key field (kept in this browser's localStorage only). Each keystroke is
 * used by the next request; when the field is committed (Enter, leaving it) `onChange` runs, e.g. to
 * load again what a missing key refused, without reloading the page.
 */
export function setupSettings(onChange = null) {
  const input = document.getElementById("api-key");
  if (!input) return;
  input.value = apiKey();
  input.addEventListener("input", () => saveApiKey(input.value));
  input.addEventListener("change", () => {
    saveApiKey(input.value);
    input.removeAttribute("aria-invalid");
    window.dispatchEvent(new CustomEvent("facegate:apikey"));
    if (onChange) onChange(apiKey());
  });
}

/** The server wants a key: open the settings and put the cursor in the key field. */
export function askForKey() {
  const input = document.getElementById("api-key");
  if (!input) return;
  const box = input.closest("details");
  if (box) box.open = true;
  input.setAttribute("aria-invalid", "true");
  input.focus();
}

// ----------------------------------------------------------------------------------------- API
export class ApiError extends Error {
  /** status 0 means the server could not be reached. */
  constructor(status, detail, body, retryAfter) {
    super(status ? `${status}: ${detail}` : detail);
    this.status = status;
    this.detail = detail;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

/** fetch() + JSON, turning the server's JSON errors ({detail, code, field}) into ApiError. */
/** A FormData body goes as multipart/form-data (file uploads), anything else as JSON. */
export async function api(method, path, body) {
  const headers = {};
  const form = typeof FormData !== "undefined" && body instanceof FormData;
  if (body !== undefined && !form) headers["Content-Type"] = "application/json";
  const key = apiKey();
  if (key) headers["Authorization"] = `Bearer ${key}`;
  let r;
  try {
    r = await fetch(path, { method, headers, body: body === undefined ? undefined : form ? body : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, `the server cannot be reached (${e.message})`, null, null);
  }
  let data = null;
  const text = await r.text();
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) {
    let detail = data && data.detail !== undefined ? data.detail : text || r.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    const ra = parseFloat(r.headers.get("Retry-After"));
    if (r.status === 401) askForKey();
    throw new ApiError(r.status, detail, data, Number.isFinite(ra) ? ra : null);
  }
  return data;
}

/** An image behind the API (e.g. a face crop) as an object URL, so the API key header goes with it. */
export async function fetchImageURL(path) {
  const headers = {};
  const key = apiKey();
  if (key) headers["Authorization"] = `Bearer ${key}`;
  const r = await fetch(path, { headers });
  if (!r.ok) throw new ApiError(r.status, r.statusText, null, null);
  return URL.createObjectURL(await r.blob());
}

// ------------------------------------------------------------------------------------- stats
/** Per-frame figures the pages expose as window.facegate.stats (read by the tests, shown on screen). */
export const stats = {
  frames: 0,
  detectMs: [],
  predictions: 0,
  lastResult: null,
  lastError: null,
  faces: 0,
  delegate: null, // "CPU" or "GPU": where detector.js runs BlazeFace; trial: its start-up timings
  trial: null,
  get meanDetectMs() {
    const a = this.detectMs;
    return a.length ? a.reduce((s, v) => s + v, 0) / a.length : null;
  },
  get medianDetectMs() {
    const a = [...this.detectMs].sort((x, y) => x - y);
    return a.length ? a[Math.floor(a.length / 2)] : null;
  },
};
window.facegate = { stats, ready: false };

// ------------------------------------------------------------------------------- face helpers
export const area = (f) => Math.max(0, f.box[2] - f.box[0]) * Math.max(0, f.box[3] - f.box[1]);

/** The face the frame is about: the largest (nearest the camera). */
export function bestFace(faces) {
  return faces.reduce((best, f) => (!best || area(f) > area(best) ? f : best), null);
}

/**
 * The face's box grown by `margin` of its size on each side (clipped to the source) as a JPEG,
 * with the eye points in the crop's pixels: the reference client's /predict body.
 * FaceGate's clients send a 25% margin (see the README on alignment).
 */
export function cropFace(source, face, margin = 0.25, quality = 0.9) {
  const W = source.videoWidth || source.naturalWidth || source.width;
  const H = source.videoHeight || source.naturalHeight || source.height;
  const [x1, y1, x2, y2] = face.box;
  const mx = (x2 - x1) * margin;
  const my = (y2 - y1) * margin;
  const left = Math.max(0, Math.floor(x1 - mx));
  const top = Math.max(0, Math.floor(y1 - my));
  const right = Math.min(W, Math.ceil(x2 + mx));
  const bottom = Math.min(H, Math.ceil(y2 + my));
  const c = document.createElement("canvas");
  c.width = Math.max(1, right - left);
  c.height = Math.max(1, bottom - top);
  c.getContext("2d").drawImage(source, left, top, c.width, c.height, 0, 0, c.width, c.height);
  const dataURL = c.toDataURL("image/jpeg", quality);
  return {
    dataURL,
    base64: dataURL.slice(dataURL.indexOf(",") + 1),
    eyes: face.eyes.map(([x, y]) => [x - left, y - top]),
  };
}

export function predictBody(source, face, fileName = "frame.jpg", margin = 0.25) {
  const crop = cropFace(source, face, margin);
  const body = { file_name: fileName, image: crop.base64 };
  if (crop.eyes.length === 2) {
    body.keypoints_x1 = crop.eyes[0][0];
    body.keypoints_y1 = crop.eyes[0][1];
    body.keypoints_x2 = crop.eyes[1][0];
    body.keypoints_y2 = crop.eyes[1][1];
  }
  return body;
}

/** Mean luma (0..255) inside the face box, for "too dark" guidance. */
export function meanLuma(source, face) {
  const [x1, y1, x2, y2] = face.box;
  const c = document.createElement("canvas");
  c.width = 32;
  c.height = 32;
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(source, Math.max(0, x1), Math.max(0, y1), Math.max(1, x2 - x1), Math.max(1, y2 - y1), 0, 0, 32, 32);
  const d = ctx.getImageData(0, 0, 32, 32).data;
  let s = 0;
  for (let i = 0; i < d.length; i += 4) s += 0.299 * d[i] + 0.587 * d[i + 1] + 0.114 * d[i + 2];
  return s / (d.length / 4);
}

// ------------------------------------------------------------------------------------ drawing
const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;
const overlapArea = (a, b) =>
  Math.max(0, Math.min(a.x + a.w, b.x + b.w) - Math.max(a.x, b.x)) * Math.max(0, Math.min(a.y + a.h, b.y + b.h) - Math.max(a.y, b.y));

/**
 * Where each face's label goes, so that no two labels intersect (pure: no canvas, testable).
 * items[i]: {box: [x1, y1, x2, y2], w, h} (the label's size), or null for a face without a label.
 * A label sits on its box's top edge (inside the picture); when that place is taken it moves to the
 * nearest free height in its column: below the box, or just above or below the labels in the way.
 * Faces are placed from the top of the picture down. Returns [{x, y, w, h} | null] in items' order;
 * only when the picture has no free height left does a label take the place it overlaps least.
 */
export function layoutLabels(items, width, height) {
  const out = items.map(() => null);
  const placed = [];
  const order = items
    .map((it, i) => i)
    .filter((i) => items[i])
    .sort((a, b) => items[a].box[1] - items[b].box[1] || items[a].box[0] - items[b].box[0] || a - b);
  for (const i of order) {
    const { box, w, h } = items[i];
    const [x1, y1, , y2] = box;
    const x = Math.max(0, Math.min(x1, width - w));
    const clampY = (y) => Math.max(0, Math.min(y, height - h));
    const want = clampY(y1 - h);
    const ys = [want, clampY(y2), 0, clampY(height - h)];
    for (const p of placed) ys.push(clampY(p.y + p.h), clampY(p.y - h));
    const candidates = [...new Set(ys)]
      .map((y) => ({ x, y, w, h }))
      .sort((a, b) => Math.abs(a.y - want) - Math.abs(b.y - want) || a.y - b.y);
    let rect = candidates.find((c) => placed.every((p) => !overlaps(p, c)));
    if (!rect) {
      const cost = (c) => placed.reduce((s, p) => s + overlapArea(p, c), 0);
      rect = candidates.reduce((best, c) => (cost(c) < cost(best) ? c : best));
    }
    placed.push(rect);
    out[i] = rect;
  }
  return out;
}

/**
 * Boxes, the six keypoints and an optional label per face, in the source's pixels. Labels are laid
 * out by layoutLabels (never on top of each other); returns their rectangles (null: no label).
 */
export function drawFaces(canvas, faces, labelFor = () => null) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const lw = Math.max(2, canvas.width / 250);
  const size = Math.max(14, canvas.width / 28);
  const font = `bold ${size}px system-ui, sans-serif`;
  const labels = faces.map((f, i) => labelFor(f, i));
  ctx.font = font;
  const rects = layoutLabels(
    faces.map((f, i) => (labels[i] ? { box: f.box, w: ctx.measureText(labels[i].text).width + size * 0.6, h: size * 1.4 } : null)),
    canvas.width,
    canvas.height,
  );
  faces.forEach((f, i) => {
    const color = labels[i] ? labels[i].color : "#3fa9f5";
    const [x1, y1, x2, y2] = f.box;
    ctx.lineWidth = lw;
    ctx.strokeStyle = color;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = "#ffd400";
    for (const [x, y] of f.keypoints || []) {
      ctx.beginPath();
      ctx.arc(x, y, lw * 1.2, 0, 2 * Math.PI);
      ctx.fill();
    }
  });
  // Labels last, so no box is drawn over a label.
  faces.forEach((f, i) => {
    const r = rects[i];
    if (!r) return;
    ctx.font = font;
    ctx.fillStyle = labels[i].color;
    ctx.fillRect(r.x, r.y, r.w, r.h);
    ctx.fillStyle = "#fff";
    ctx.fillText(labels[i].text, r.x + size * 0.3, r.y + size * 1.05);
  });
  return rects;
}

/** How an answer reads on screen (its `status`): the name, "unknown" plainly, or "retry", with the similarity. */
export function describe(result) {
  const sim = typeof result.similarity === "number" ? result.similarity.toFixed(2) : "?";
  if (result.status === "retry") return { text: "retry: hold still, face the camera", color: "#c98a00", known: false };
  if (result.status === "spoof") return { text: "spoof: a photo or a screen, not a live face", color: "#d9342b", known: false };
  return result.status === "recognized" || (!result.status && result.user_name && result.user_name !== "unknown")
    ? { text: `${result.user_name || result.name} (${sim})`, color: "#1e9e4a", known: true }
    : { text: `unknown (${sim})`, color: "#d9342b", known: false };
}

// ------------------------------------------------------------------------------------- camera
/** The camera (the front one on phones). getUserMedia needs https:// or localhost. */
export async function startCamera(video) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error(
      "this browser gives no camera on this page: cameras need a secure context, i.e. https:// or http://localhost (see the README)",
    );
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    video: { facingMode: "user", width: { ideal: 640 }, height: { ideal: 480 } },
    audio: false,
  });
  video.srcObject = stream;
  video.muted = true;
  video.playsInline = true;
  await video.play();
  if (!video.videoWidth) await new Promise((r) => video.addEventListener("loadedmetadata", r, { once: true }));
  return stream;
}

export function showMessage(el, text, kind = "info") {
  el.textContent = text;
  el.className = `message ${kind}`;
  el.hidden = !text;
}

export function statsLine() {
  const m = stats.meanDetectMs;
  const on = stats.delegate === "GPU" ? ", on WebGL" : stats.delegate === "CPU" ? ", on the CPU (WebAssembly)" : "";
  return m === null ? "" : `BlazeFace in this browser: ${m.toFixed(1)} ms/frame (mean of ${stats.detectMs.length}), ${stats.frames} frames${on}`;
}
