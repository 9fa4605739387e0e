// The active liveness challenge on the live page (liveness = "challenge" or "both"; docs/liveness.md).
// Asks the server for a challenge (two random actions among blink, turn left, turn right, a short life),
// guides the person ("Blink", "Turn your head to your left"), follows the face with MediaPipe's face
// mesh (npm @mediapipe/face_mesh, a legacy Solutions build served from /web/facemesh: its Emscripten glue
// needs 'unsafe-eval', which the live page's CSP allows), takes a frame at each action's peak, and sends
// the neutral and action frames with the challenge's id. The browser only picks the moments: the server
// measures the frames again itself and decides. Without the face mesh (it failed to load), each action's
// frame is taken at the end of its time and the server still decides.
// Frames go as the camera took them, not mirrored: "left" is the person's own left.
import { api, stats } from "/web/static/common.js";

const FACE_MESH = "/web/facemesh";
const RIGHT_EYE = [33, 160, 158, 133, 153, 144]; // p1..p6 of Soukupova and Cech's eye aspect ratio
const LEFT_EYE = [362, 385, 387, 263, 373, 380];
// Guidance only, with a margin over the server's limits (eye aspect ratio 0.2 and 0.7x the open eyes'; 20 degrees).
const CLOSED_EAR = 0.18;
const CLOSED_RATIO = 0.65;
const TURN_DEG = 26;
const UPLOAD_MARGIN_MS = 1200; // the answer must reach the server before the challenge expires
export const PROMPTS = { blink: "Blink", turn_left: "Turn your head to your left", turn_right: "Turn your head to your right" };

let meshReady = null;

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.appendChild(s);
  });
}

/** The face mesh, loaded once; null when it cannot run here (the challenge then goes on without it). */
export function loadFaceMesh() {
  if (!meshReady) {
    meshReady = (async () => {
      if (!window.FaceMesh) await loadScript(`${FACE_MESH}/face_mesh.js`);
      const fm = new window.FaceMesh({ locateFile: (f) => `${FACE_MESH}/${f}` });
      fm.setOptions({ maxNumFaces: 1, refineLandmarks: false, minDetectionConfidence: 0.5, minTrackingConfidence: 0.5 });
      await fm.initialize();
      // Its assets loader leaves a global Module (Emscripten's, with aborting getters) that MediaPipe Tasks
      // (the pages' detector, detector.js) would take for its own: cleared once the mesh is up.
      if (window.Module) window.Module = undefined;
      return fm;
    })().catch((e) => {
      stats.faceMeshError = e.message;
      return null;
    });
  }
  return meshReady;
}

const dist = (a, b, w, h) => Math.hypot((a.x - b.x) * w, (a.y - b.y) * h);

function eyeRatio(lm, idx, w, h) {
  const [p1, p2, p3, p4, p5, p6] = idx.map((i) => lm[i]);
  const width = dist(p1, p4, w, h);
  return width > 0 ? (dist(p2, p6, w, h) + dist(p3, p5, w, h)) / (2 * width) : 0;
}

/** Eye aspect ratio and a yaw (degrees, < 0: turned to the person's own left) of one frame's mesh. */
export function measure(lm, w, h) {
  const ear = (eyeRatio(lm, RIGHT_EYE, w, h) + eyeRatio(lm, LEFT_EYE, w, h)) / 2;
  const a = lm[33]; // the person's right eye's outer corner (image left)
  const b = lm[263];
  // The line between the outer eye corners, seen from above: z (depth, x's scale) grows away from the camera.
  const yaw = -(Math.atan2((b.z - a.z) * w, (b.x - a.x) * w) * 180) / Math.PI;
  return { ear, yaw };
}

/** A still of the video as the camera took it (JPEG, base64) and the canvas it is on. */
function grab(video) {
  const c = document.createElement("canvas");
  c.width = video.videoWidth;
  c.height = video.videoHeight;
  c.getContext("2d").drawImage(video, 0, 0);
  return c;
}

const jpegB64 = (canvas) => canvas.toDataURL("image/jpeg", 0.92).split(",")[1];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function meshOf(fm, canvas) {
  if (!fm) return null;
  let got = null;
  fm.onResults((r) => {
    got = r.multiFaceLandmarks && r.multiFaceLandmarks[0];
  });
  await fm.send({ image: canvas });
  return got ? measure(got, canvas.width, canvas.height) : null;
}

/**
 * Run one challenge on ``video``: ``prompt(text)`` is told what to ask of the person. Resolves to the
 * server's answer ({faces, challenge: {passed, actions, reasons, frames}}); stats.lastChallenge too.
 */
export async function runChallenge(video, prompt) {
  const fm = await loadFaceMesh();
  // The challenge's clock starts only once the mesh has run on this camera's frames (its first run
  // compiles shaders and sizes buffers: seconds on a slow machine) and sees a face.
  prompt("Look at the camera");
  for (let i = 0; fm && i < 50 && !(await meshOf(fm, grab(video))); i++) await sleep(100);
  let ch;
  try {
    ch = await api("POST", "/v1/challenges");
  } catch (e) {
    stats.lastChallengeError = e.message;
    throw e;
  }
  const deadline = performance.now() + ch.expires_in_s * 1000 - UPLOAD_MARGIN_MS;
  const slot = (left) => Math.max(300, (deadline - performance.now()) / left);

  // Neutral: looking at the camera (the first frontal frame, else the most frontal one, within its share of the time).
  prompt("Look at the camera");
  let neutral = null;
  let base = null;
  const neutralEnd = performance.now() + Math.min(1500, slot(ch.actions.length + 2));
  do {
    const c = grab(video);
    const m = await meshOf(fm, c);
    if (!neutral || (m && (!base || Math.abs(m.yaw) < Math.abs(base.yaw)))) [neutral, base] = [c, m];
    if (!fm || (m && Math.abs(m.yaw) < 10)) break;
  } while (performance.now() < neutralEnd);

  const frames = {};
  const seen = [];
  for (const [i, action] of ch.actions.entries()) {
    prompt(PROMPTS[action]);
    const end = performance.now() + slot(ch.actions.length - i + 1);
    let best = null;
    let bestScore = -Infinity;
    do {
      const c = grab(video);
      const m = await meshOf(fm, c);
      if (m) seen.push(m);
      // How far the frame shows the action: lower eyes' opening, or more turn to the named side.
      const score = !m ? -Infinity : action === "blink" ? -m.ear : action === "turn_left" ? -m.yaw : m.yaw;
      if (!best || score > bestScore) [best, bestScore] = [c, score];
      const done =
        m &&
        (action === "blink"
          ? m.ear < CLOSED_EAR && (!base || m.ear < CLOSED_RATIO * base.ear)
          : (action === "turn_left" ? -m.yaw : m.yaw) - (base ? (action === "turn_left" ? -base.yaw : base.yaw) : 0) >= TURN_DEG);
      if (done) break;
      if (!fm) await sleep(100);
    } while (performance.now() < end);
    frames[action] = jpegB64(best);
  }

  // Neutral again: back to looking at the camera, eyes open.
  prompt("Look at the camera");
  const backEnd = performance.now() + Math.max(0, deadline - performance.now());
  let last = null;
  do {
    const c = grab(video);
    const m = await meshOf(fm, c);
    last = c;
    if (!fm || (m && Math.abs(m.yaw) < 12 && (!base || m.ear > 0.8 * base.ear))) break;
  } while (performance.now() < backEnd);

  prompt("Checking…");
  let answer;
  try {
    answer = await api("POST", `/v1/challenges/${encodeURIComponent(ch.id)}/answer`, {
      neutral: [jpegB64(neutral), jpegB64(last)],
      frames,
    });
  } catch (e) {
    stats.challengeErrors = (stats.challengeErrors || 0) + 1; // e.g. 410: expired before the frames were in
    stats.lastChallengeError = e.message;
    throw e;
  }
  stats.challenges = (stats.challenges || 0) + 1;
  stats.lastChallenge = { ...answer.challenge, browser: { base, seen: seen.length, faceMesh: Boolean(fm), faceMeshError: stats.faceMeshError || null } };
  return answer;
}

/** The answer as the live page labels it: the name only when the challenge passed. */
export function describeChallenge(answer) {
  const face = answer.faces && answer.faces[0];
  const c = answer.challenge;
  if (!c.passed) return { text: `challenge failed: ${c.reasons[0] || "try again"}`, color: "#d9342b", known: false };
  if (!face) return { text: "no face", color: "#d9342b", known: false };
  if (face.status === "spoof") return { text: "spoof: a photo or a screen, not a live face", color: "#d9342b", known: false };
  if (face.status === "recognized") return { text: `${face.name} (${face.similarity.toFixed(2)})`, color: "#1e9e4a", known: true };
  return { text: face.status === "retry" ? "retry: hold still, face the camera" : `unknown (${face.similarity.toFixed(2)})`, color: "#d9342b", known: false };
}
