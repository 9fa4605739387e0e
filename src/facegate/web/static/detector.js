// BlazeFace in this browser: MediaPipe Tasks' FaceDetector (npm @mediapipe/tasks-vision) on
// WebAssembly with SIMD (the CPU delegate) or on WebGL (the GPU delegate), whichever runs faster here.
// Every file comes from this server: the bundle and its wasm under /web/mediapipe/, the BlazeFace
// short-range model from the mediapipe Python package the server has installed. No CDN, no eval:
// the page's CSP allows WebAssembly ('wasm-unsafe-eval') and nothing more.
import { FaceDetector, FilesetResolver } from "/web/mediapipe/vision_bundle.mjs";
import { stats } from "/web/static/common.js";

const WASM = "/web/mediapipe/wasm";
const MODEL = "/web/models/face_detection_short_range.tflite";
const WARMUP = 2; // first frames of a delegate, not timed (allocation, shader compilation)
const TRIAL = 6; // frames timed per delegate before choosing

/** "cpu", "gpu" or "auto" (measure both on the first camera frames): ?delegate= in the page's URL. */
function wantedDelegate() {
  const v = (new URLSearchParams(location.search).get("delegate") || "auto").toLowerCase();
  return ["cpu", "gpu"].includes(v) ? v.toUpperCase() : "auto";
}

const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

async function make(fileset, delegate, minConfidence) {
  return FaceDetector.createFromOptions(fileset, {
    baseOptions: { modelAssetPath: MODEL, delegate },
    runningMode: "IMAGE", // camera frames and photos alike; no timestamps to keep in order
    minDetectionConfidence: minConfidence,
  });
}

function webglAvailable() {
  const canvas = typeof OffscreenCanvas !== "undefined" ? new OffscreenCanvas(1, 1) : document.createElement("canvas");
  return Boolean(canvas.getContext("webgl2") || canvas.getContext("webgl"));
}

const isVideo = (s) => typeof HTMLVideoElement !== "undefined" && s instanceof HTMLVideoElement;

/**
 * The detector the pages use. detect(source) returns faces in the source's pixels:
 * {box: [x1, y1, x2, y2], score, keypoints: [[x, y] x 6], eyes: [image-left eye, image-right eye]}.
 * With delegate "auto", the first camera frames are timed on the CPU, then on WebGL, and the faster
 * one is kept (stats.delegate, stats.trial); the per-frame figure then counts the kept one only.
 */
export async function createDetector({ minConfidence = 0.5 } = {}) {
  if (!webglAvailable()) {
    // MediaPipe Tasks hands every frame to its graph as a WebGL texture, on the CPU delegate too.
    throw new Error("face detection needs WebGL, which this browser has turned off (check its settings or GPU blocklist); photos can still be uploaded on the register page");
  }
  const fileset = await FilesetResolver.forVisionTasks(WASM);
  const wanted = wantedDelegate();
  const first = wanted === "GPU" ? "GPU" : "CPU";
  let current = await make(fileset, first, minConfidence);
  stats.delegate = first;
  stats.trial = wanted === "auto" ? { CPU: null, GPU: null, chosen: null } : null;
  let phase = wanted === "auto" ? "CPU" : "done"; // CPU -> loading -> GPU -> done
  let cpu = current;
  const timed = [];

  function choose(gpu, gpuMs) {
    const cpuMs = stats.trial.CPU;
    stats.trial.GPU = gpuMs;
    const keepGpu = gpu && gpuMs !== null && gpuMs < cpuMs;
    if (keepGpu) {
      cpu.close();
      cpu = gpu;
    } else if (gpu) {
      gpu.close();
    }
    current = cpu;
    stats.delegate = keepGpu ? "GPU" : "CPU";
    stats.trial.chosen = stats.delegate;
    stats.detectMs.length = 0; // the figure shown is the kept delegate's
    phase = "done";
  }

  function record(ms) {
    if (timed.push(ms) <= WARMUP) return;
    if (timed.length < WARMUP + TRIAL) return;
    const m = median(timed.slice(WARMUP));
    timed.length = 0;
    if (phase === "CPU") {
      stats.trial.CPU = m;
      phase = "loading";
      make(fileset, "GPU", minConfidence).then(
        (gpu) => {
          current = gpu;
          phase = "GPU";
        },
        (e) => {
          stats.trial.error = `WebGL delegate unavailable: ${e && e.message ? e.message : e}`;
          choose(null, null);
        },
      );
    } else if (phase === "GPU") {
      const gpu = current;
      choose(gpu, m);
    }
  }

  function detectOnce(source) {
    const w = source.videoWidth || source.naturalWidth || source.width;
    const h = source.videoHeight || source.naturalHeight || source.height;
    if (!w || !h) return [];
    const t0 = performance.now();
    const result = current.detect(source);
    const ms = performance.now() - t0;
    stats.frames += 1;
    stats.detectMs.push(ms);
    if (stats.detectMs.length > 500) stats.detectMs.shift();
    if ((phase === "CPU" || phase === "GPU") && isVideo(source)) record(ms);
    const faces = (result.detections || []).map((d) => {
      const b = d.boundingBox;
      const box = [b.originX, b.originY, b.originX + b.width, b.originY + b.height];
      const keypoints = (d.keypoints || []).map((p) => [p.x * w, p.y * h]);
      const eyes = keypoints.slice(0, 2).sort((p, q) => p[0] - q[0]); // image-left eye first, as /predict expects
      const score = d.categories && d.categories.length ? d.categories[0].score : null;
      return { box, score, keypoints, eyes };
    });
    stats.faces = faces.length;
    return faces;
  }

  return {
    // Same interface as before: a promise of faces (the Tasks call itself is synchronous).
    detect: async (source) => detectOnce(source),
    close() {
      current.close();
      if (cpu !== current) cpu.close();
    },
  };
}
