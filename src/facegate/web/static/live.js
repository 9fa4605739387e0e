// Live page: BlazeFace on every camera frame in the browser; the best face's crop and eye points go
// to /predict at most once per interval (counted from the previous answer, so the server never
// sees more than one request per interval); the answer is drawn over the face.
// Photo mode: detect every face in a chosen photo and name each one.
import {
  api, bestFace, describe, drawFaces, predictBody, setupSettings, showMessage, startCamera, stats, statsLine,
} from "/web/static/common.js";
import { createDetector } from "/web/static/detector.js";
import { describeChallenge, loadFaceMesh, runChallenge } from "/web/static/challenge.js";

const $ = (id) => document.getElementById(id);
const video = $("video");
const overlay = $("overlay");
const resultEl = $("result");
const messageEl = $("message");
const params = new URLSearchParams(location.search);
const INTERVAL_STORE = "facegate.interval";

setupSettings();
const intervalInput = $("interval");
intervalInput.value = params.get("interval") || localStorage.getItem(INTERVAL_STORE) || "0.5";
intervalInput.addEventListener("change", () => localStorage.setItem(INTERVAL_STORE, intervalInput.value));
const intervalMs = () => Math.max(100, 1000 * (parseFloat(intervalInput.value) || 0.5));

let detector = null;
let mode = "camera";
let stream = null;
let nextSendAt = 0; // performance.now() before which no /predict is sent
let inFlight = false;
let shown = null; // {label, at}: the last answer, drawn over the face while a face is in view
let seq = 0;
let missed = 0; // frames in a row without a face
let challengeMode = false; // the server's liveness = "challenge" | "both": each identification is a challenge (challenge.js)

function setResult(text, kind) {
  resultEl.textContent = text;
  resultEl.className = `result ${kind || ""}`;
}

async function sendPredict(face) {
  inFlight = true;
  const body = predictBody(video, face, `frame-${++seq}.jpg`);
  let wait = intervalMs();
  try {
    const r = await api("POST", "/predict", body);
    stats.predictions += 1;
    stats.lastResult = r;
    const label = describe(r);
    shown = { label, at: performance.now() };
    setResult(label.text, label.known ? "known" : "unknown");
    showMessage(messageEl, "");
  } catch (e) {
    stats.lastError = e.message;
    if (e.status === 503) wait = Math.max(wait, 1000 * (e.retryAfter || 1)); // the server asked us to wait
    else if (e.status === 0) wait = Math.max(wait, 2000); // server down or restarting: retry calmly
    showMessage(messageEl, e.status === 503 ? `Server busy, retrying: ${e.detail}` : e.message, "error");
  } finally {
    nextSendAt = performance.now() + wait;
    inFlight = false;
  }
}

async function sendChallenge() {
  inFlight = true;
  let wait = intervalMs();
  try {
    const answer = await runChallenge(video, (text) => setResult(text, ""));
    const label = describeChallenge(answer);
    shown = { label, at: performance.now() };
    setResult(label.text, label.known ? "known" : "unknown");
    showMessage(messageEl, "");
  } catch (e) {
    stats.lastError = e.message;
    if (e.status === 503) wait = Math.max(wait, 1000 * (e.retryAfter || 1));
    showMessage(messageEl, e.message, "error");
  } finally {
    nextSendAt = performance.now() + wait;
    inFlight = false;
  }
}

async function cameraLoop() {
  if (mode !== "camera") return;
  try {
    if (video.readyState >= 2 && video.videoWidth) {
      if (overlay.width !== video.videoWidth) {
        overlay.width = video.videoWidth;
        overlay.height = video.videoHeight;
      }
      const faces = await detector.detect(video);
      const best = bestFace(faces);
      missed = best ? 0 : missed + 1;
      if (missed >= 5) shown = null; // the answer belongs to the face in view: gone with it (a missed frame or two is not)
      drawFaces(overlay, faces, (f) => (f === best && shown ? shown.label : null));
      if (!best) {
        if (missed >= 5) setResult("No face in view", "");
      } else if (!inFlight && performance.now() >= nextSendAt) {
        (challengeMode ? sendChallenge : sendPredict)(best); // not awaited: detection and drawing go on while the server answers
      }
      $("stats").textContent = statsLine();
    }
  } catch (e) {
    showMessage(messageEl, `Detection failed: ${e.message}`, "error");
  }
  requestAnimationFrame(cameraLoop);
}

async function startCameraMode() {
  try {
    stream = await startCamera(video);
    setResult("Looking for a face…", "");
    requestAnimationFrame(cameraLoop);
  } catch (e) {
    setResult("No camera", "");
    showMessage(messageEl, `Camera unavailable: ${e.message}. Photo mode still works.`, "error");
  }
}

function setMode(m) {
  mode = m;
  $("camera-view").hidden = m !== "camera";
  $("image-view").hidden = m !== "image";
  $("mode-camera").setAttribute("aria-selected", String(m === "camera"));
  $("mode-image").setAttribute("aria-selected", String(m === "image"));
  if (m === "camera") {
    if (stream) requestAnimationFrame(cameraLoop);
    else startCameraMode();
  } else {
    setResult("Choose a photo", "");
  }
}

async function recognizePhoto(file) {
  const img = new Image();
  img.src = URL.createObjectURL(file);
  await img.decode();
  const canvas = $("photo");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const list = $("photo-results");
  list.innerHTML = "";
  const faces = await detector.detect(img);
  const labels = [];
  const paint = () => {
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0);
    const layer = document.createElement("canvas");
    layer.width = canvas.width;
    layer.height = canvas.height;
    drawFaces(layer, faces, (f, i) => labels[i] || null);
    ctx.drawImage(layer, 0, 0);
  };
  paint();
  if (!faces.length) {
    setResult("No face found in this photo", "unknown");
    return;
  }
  setResult(`${faces.length} face(s): asking the server…`, "");
  for (const [i, f] of faces.entries()) {
    const li = document.createElement("li");
    try {
      const r = await api("POST", "/predict", predictBody(img, f, file.name || `photo-face-${i + 1}.jpg`));
      stats.lastResult = r;
      labels[i] = describe(r);
      li.textContent = `Face ${i + 1}: ${labels[i].text}`;
      li.className = labels[i].known ? "known" : "unknown";
    } catch (e) {
      li.textContent = `Face ${i + 1}: rejected — ${e.message}`;
      li.className = "error";
    }
    list.appendChild(li);
    paint();
  }
  setResult(labels.map((l) => l && l.text).filter(Boolean).join(", ") || "No answer", "");
}

$("mode-camera").addEventListener("click", () => setMode("camera"));
$("mode-image").addEventListener("click", () => setMode("image"));
$("file").addEventListener("change", (ev) => {
  const f = ev.target.files[0];
  if (f) recognizePhoto(f).catch((e) => showMessage(messageEl, e.message, "error"));
});

try {
  const health = await api("GET", "/healthz").catch(() => ({}));
  challengeMode = ["challenge", "both"].includes(health.liveness);
  // Before the detector: two MediaPipe wasm runtimes starting at once break each other ("Import #0 ... not an object").
  if (challengeMode) await loadFaceMesh();
  detector = await createDetector();
  window.facegate.ready = true;
  setMode(params.get("mode") === "image" ? "image" : "camera");
} catch (e) {
  setResult("Face detection unavailable", "");
  showMessage(messageEl, e.message, "error");
}
