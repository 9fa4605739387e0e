// Cameras page: each camera the server watches, with a snapshot of its newest frame and its state
// (GET /v1/cameras, GET /v1/cameras/{name}/snapshot; an admin or viewer key). Refreshed every 2 s.
import { api, fetchImageURL, setupSettings, showMessage } from "/web/static/common.js";

const $ = (id) => document.getElementById(id);
const REFRESH_MS = 2000;
const items = new Map(); // camera name -> its <li> parts
let timer = null;

setupSettings(() => refresh());

function ago(unix) {
  if (!unix) return "never";
  const s = Math.max(0, Date.now() / 1000 - unix);
  return s < 90 ? `${s.toFixed(0)} s ago` : `${(s / 60).toFixed(0)} min ago`;
}

function item(cam) {
  let it = items.get(cam.name);
  if (it) return it;
  const li = document.createElement("li");
  li.className = "camera";
  li.dataset.camera = cam.name;
  const img = document.createElement("img");
  img.className = "snapshot";
  img.alt = `${cam.name}: newest frame`;
  const body = document.createElement("div");
  const title = document.createElement("div");
  title.className = "camera-title";
  const state = document.createElement("span");
  state.className = "camera-state";
  const figures = document.createElement("div");
  figures.className = "camera-figures";
  const error = document.createElement("div");
  error.className = "camera-error";
  const last = document.createElement("div");
  last.className = "camera-last";
  body.append(title, state, figures, error, last);
  li.append(img, body);
  $("cameras").appendChild(li);
  it = { li, img, title, state, figures, error, last, url: null };
  items.set(cam.name, it);
  return it;
}

async function show(cam) {
  const it = item(cam);
  it.title.textContent = `${cam.name} · ${cam.kind} · ${cam.url}`;
  it.state.textContent = cam.state;
  it.li.dataset.state = cam.state;
  it.figures.textContent =
    `${cam.fps_in.toFixed(1)} fps in, ${cam.fps_analysed.toFixed(1)} analysed (of ${cam.fps}) · ` +
    `${cam.frames} frames · ${cam.tracks} tracks · ${cam.events} events · last frame ${ago(cam.last_frame_at)}`;
  it.error.textContent = cam.last_error ? `last error: ${cam.last_error}` : "";
  const e = cam.recent && cam.recent[0];
  it.last.textContent = e ? `last seen: ${e.name || e.status} (${ago(e.decided_at)})` : "nobody seen yet";
  if (cam.watching && cam.last_frame_at) {
    try {
      const url = await fetchImageURL(`/v1/cameras/${encodeURIComponent(cam.name)}/snapshot`);
      if (it.url) URL.revokeObjectURL(it.url);
      it.url = url;
      it.img.src = url;
    } catch {
      /* the next refresh tries again */
    }
  }
}

async function refresh() {
  clearTimeout(timer);
  try {
    const { cameras } = await api("GET", "/v1/cameras");
    $("message").hidden = true;
    $("summary").textContent = cameras.length
      ? `${cameras.length} camera(s), ${cameras.filter((c) => c.state === "connected").length} connected`
      : "No cameras: add [[cameras]] to the settings file, or serve with --camera NAME=URL";
    for (const cam of cameras) await show(cam);
  } catch (e) {
    showMessage($("message"), `Cannot read the cameras: ${e.message}`, "error");
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

refresh();
