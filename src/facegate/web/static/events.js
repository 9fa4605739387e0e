// Events page: the event log, newest first, with each event's best shot, filtered by camera, status
// and person; new events arrive live from GET /v1/events/stream. EventSource cannot send the API key
// header, so the stream is read with fetch() and parsed here (Server-Sent Events: "id:" / "data:"
// lines, blank line between events; comment lines are keep-alives). Needs an admin or viewer key.
import { ApiError, api, apiKey, askForKey, fetchImageURL, setupSettings, showMessage } from "/web/static/common.js";

const $ = (id) => document.getElementById(id);
const list = $("events");
const messageEl = $("message");
const liveEl = $("live");
const more = $("more");
let nextBefore = null;
let newestSeq = null;
let stream = null; // the AbortController of the running stream
const shown = new Set();

function filters() {
  const f = {};
  const camera = $("f-camera").value.trim();
  const status = $("f-status").value;
  const person = $("f-person").value.trim();
  if (camera) f.camera = camera;
  if (status) f.status = status;
  if (person) f.person_id = person;
  return f;
}

function matches(ev, f) {
  return (!f.camera || ev.camera === f.camera) && (!f.status || ev.status === f.status) && (!f.person_id || String(ev.person_id) === f.person_id);
}

function item(ev, fresh) {
  const li = document.createElement("li");
  li.className = `event ${ev.status}` + (fresh ? " fresh" : "");
  li.dataset.eventId = ev.id;
  let pic;
  if (ev.crop_url) {
    pic = document.createElement("img");
    pic.alt = ev.name ? `best shot of ${ev.name}` : "best shot";
    fetchImageURL(ev.crop_url).then((u) => (pic.src = u)).catch(() => {});
  } else {
    pic = document.createElement("span");
    pic.className = "no-crop";
  }
  const text = document.createElement("div");
  const what = document.createElement("div");
  what.className = "what";
  what.textContent = ev.status === "recognized" ? ev.name : ev.status;
  if (ev.decision) {
    const d = document.createElement("span");
    d.className = `decision ${ev.decision}`;
    d.textContent = ev.decision;
    what.append(d);
  }
  const when = document.createElement("div");
  when.className = "when";
  const sim = ev.similarity != null ? ` · similarity ${ev.similarity.toFixed(2)}` : "";
  when.textContent = `${ev.camera} · ${new Date(ev.decided_at * 1000).toLocaleString()}${sim} · ${ev.frames} frames`;
  text.append(what, when);
  li.append(pic, text);
  return li;
}

function add(ev, { top = false, fresh = false } = {}) {
  if (shown.has(ev.id)) return;
  shown.add(ev.id);
  const li = item(ev, fresh);
  if (top) list.prepend(li);
  else list.append(li);
  if (newestSeq === null || ev.seq > newestSeq) newestSeq = ev.seq;
}

async function page() {
  const q = new URLSearchParams({ ...filters(), limit: "50" });
  if (nextBefore !== null) q.set("before", String(nextBefore));
  const data = await api("GET", `/v1/events?${q}`);
  data.events.forEach((ev) => add(ev));
  nextBefore = data.next_before;
  more.hidden = nextBefore === null;
  if (!list.children.length) showMessage(messageEl, "No events yet.", "info");
  else messageEl.hidden = true;
}

async function live() {
  if (stream) stream.abort();
  const ctl = new AbortController();
  stream = ctl;
  const f = filters();
  const headers = {};
  if (apiKey()) headers["Authorization"] = `Bearer ${apiKey()}`;
  if (newestSeq !== null) headers["Last-Event-ID"] = String(newestSeq);
  const q = f.camera ? `?camera=${encodeURIComponent(f.camera)}` : "";
  while (!ctl.signal.aborted) {
    try {
      const r = await fetch(`/v1/events/stream${q}`, { headers, signal: ctl.signal });
      if (!r.ok) {
        if (r.status === 401) askForKey();
        throw new ApiError(r.status, r.statusText, null, null);
      }
      liveEl.textContent = "live";
      liveEl.className = "live-state on";
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (!data) continue; // a keep-alive comment
          const ev = JSON.parse(data);
          if (matches(ev, f)) {
            messageEl.hidden = true;
            add(ev, { top: true, fresh: true });
          }
          headers["Last-Event-ID"] = String(ev.seq);
        }
      }
    } catch (e) {
      if (ctl.signal.aborted) return;
      if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
        liveEl.textContent = "not live: this key may not read events";
        liveEl.className = "live-state";
        return;
      }
    }
    liveEl.textContent = "reconnecting…";
    liveEl.className = "live-state";
    await new Promise((res) => setTimeout(res, 2000));
  }
}

async function load() {
  list.replaceChildren();
  shown.clear();
  nextBefore = null;
  newestSeq = null;
  try {
    await page();
  } catch (e) {
    showMessage(messageEl, e.status === 403 ? "This key may not read events: use an admin or viewer key." : `Could not load events: ${e.message}`, "error");
    return;
  }
  live();
}

$("filters").addEventListener("submit", (e) => {
  e.preventDefault();
  load();
});
more.addEventListener("click", () => page().catch((e) => showMessage(messageEl, e.message, "error")));
setupSettings(() => load());
window.facegate = Object.assign(window.facegate || {}, { eventsShown: () => shown.size });
load();
