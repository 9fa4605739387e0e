// Register page: live guidance (face present, big enough, centred, lit), then 3 photos with a
// visible countdown, sent to /register; the server's answer is shown, a rejected photo marked.
// Or: photos uploaded from this device, enrolled through POST /v1/people.
import { api, bestFace, cropFace, drawFaces, meanLuma, setupSettings, showMessage, startCamera, statsLine } from "/web/static/common.js";
import { createDetector } from "/web/static/detector.js";

const $ = (id) => document.getElementById(id);
const video = $("video");
const overlay = $("overlay");
const guidanceEl = $("guidance");
const messageEl = $("message");
const countdownEl = $("countdown");
const FIELDS = ["first_img", "sec_img", "third_img"];
const params = new URLSearchParams(location.search);
const TICK_MS = parseInt(params.get("tick") || "700", 10); // one countdown step

setupSettings();
let detector = null;
let lastFace = null;
let lastAdvice = null; // null when the face is good to take
let capturing = false;

/** What is wrong with the frame for an enrolment photo, or null when it is fine. */
function advise(faces) {
  if (!faces.length) return "No face: look at the camera";
  if (faces.length > 1) return "More than one face: only the person registering, please";
  const f = faces[0];
  const W = video.videoWidth;
  const H = video.videoHeight;
  const fw = f.box[2] - f.box[0];
  if (fw < 0.18 * Math.min(W, H)) return "Face too small: come closer";
  const cx = (f.box[0] + f.box[2]) / 2 / W - 0.5;
  const cy = (f.box[1] + f.box[3]) / 2 / H - 0.5;
  if (Math.abs(cx) > 0.22 || Math.abs(cy) > 0.25) return "Face off-centre: move into the middle";
  if (meanLuma(video, f) < 55) return "Too dark: face a light";
  return null;
}

async function loop() {
  try {
    if (video.readyState >= 2 && video.videoWidth) {
      if (overlay.width !== video.videoWidth) {
        overlay.width = video.videoWidth;
        overlay.height = video.videoHeight;
      }
      const faces = await detector.detect(video);
      lastFace = bestFace(faces);
      lastAdvice = advise(faces);
      drawFaces(overlay, faces, () => ({ text: lastAdvice ? "adjust" : "good", color: lastAdvice ? "#e08a00" : "#1e9e4a" }));
      if (!capturing) {
        guidanceEl.textContent = lastAdvice || "Good: press “Take 3 photos”";
        guidanceEl.className = `guidance ${lastAdvice ? "warn" : "ok"}`;
      }
      $("stats").textContent = statsLine();
    }
  } catch (e) {
    showMessage(messageEl, `Detection failed: ${e.message}`, "error");
  }
  requestAnimationFrame(loop);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits for good guidance, counts down from `from`, then takes one crop (50% margin around the face). */
async function takeOne(index, from) {
  while (lastAdvice) {
    guidanceEl.textContent = `Photo ${index + 1} of 3 — ${lastAdvice}`;
    guidanceEl.className = "guidance warn";
    await sleep(100);
  }
  countdownEl.hidden = false;
  for (let n = from; n > 0; n--) {
    countdownEl.textContent = String(n);
    guidanceEl.textContent = `Photo ${index + 1} of 3 in ${n}…`;
    guidanceEl.className = "guidance ok";
    await sleep(TICK_MS);
  }
  countdownEl.hidden = true;
  while (!lastFace || lastAdvice) await sleep(50);
  return cropFace(video, lastFace, 0.5, 0.92);
}

async function register(name) {
  capturing = true;
  $("start").disabled = true;
  showMessage(messageEl, "");
  const shots = $("shots");
  shots.innerHTML = "";
  try {
    const images = [];
    for (let i = 0; i < 3; i++) {
      const shot = await takeOne(i, i === 0 ? 3 : 2);
      images.push(shot.base64);
      const img = document.createElement("img");
      img.src = shot.dataURL;
      img.alt = `photo ${i + 1}`;
      img.dataset.field = FIELDS[i];
      shots.appendChild(img);
    }
    guidanceEl.textContent = "Sending…";
    const body = { user_name: name, first_img: images[0], sec_img: images[1], third_img: images[2] };
    let r = null;
    for (let attempt = 1; ; attempt++) {
      try {
        r = await api("POST", "/register", body);
        break;
      } catch (e) {
        if (e.status !== 503 || attempt >= 5) throw e;
        // Busy: wait as long as the server asks, then try again.
        guidanceEl.textContent = `Server busy, retrying in ${e.retryAfter || 1} s (${attempt}/4)…`;
        await sleep(1000 * (e.retryAfter || 1));
      }
    }
    // Photos the server left out (no face, too poor): marked, with its reasons; the others were enrolled.
    const dropped = r.dropped || [];
    for (const img of shots.querySelectorAll("img")) {
      const d = dropped.find((x) => x.field === img.dataset.field);
      img.classList.toggle("rejected", Boolean(d));
      if (d) img.title = d.reasons.join("; ");
    }
    const left = dropped.map((d) => `photo ${FIELDS.indexOf(d.field) + 1} left out: ${d.reasons.join("; ")}`).join(" · ");
    showMessage(
      messageEl,
      `Registered ${r.user_name} (person #${r.person_id}, ${r.faces} faces).` + (left ? ` ${left}` : ""),
      left ? "warn" : "ok",
    );
    guidanceEl.textContent = "Done";
  } catch (e) {
    // The server's own words: e.g. "sec_img: no face detected", or a name already taken.
    const field = e.body && e.body.field;
    for (const img of shots.querySelectorAll("img")) img.classList.toggle("rejected", img.dataset.field === field);
    const droppedFields = ((e.body && e.body.dropped) || []).map((d) => d.field);
    for (const img of shots.querySelectorAll("img")) {
      if (droppedFields.includes(img.dataset.field)) img.classList.add("rejected");
    }
    const which = FIELDS.includes(field) ? ` (photo ${FIELDS.indexOf(field) + 1} was rejected)` : "";
    showMessage(messageEl, `Not registered — ${e.message}${which}`, "error");
    guidanceEl.textContent = "Try again";
  } finally {
    capturing = false;
    countdownEl.hidden = true;
    $("start").disabled = false;
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("name").value.trim();
  if (!name) {
    showMessage(messageEl, "Enter the person's name first", "error");
    return;
  }
  if (!capturing) register(name);
});

// ------------------------------------------------- enrolment by uploading photos (POST /v1/people)
// Works without the camera. The answer lists the photos left out (no face, too poor) with reasons;
// a face that looks like someone already enrolled is refused, unless "Enrol anyway" is pressed.
const uploadMsg = $("upload-message");
const droppedList = $("upload-dropped");
const anyway = $("enrol-anyway");

/** "images[1]" -> the chosen file's name. */
function photoName(files, field) {
  const m = /^images\[(\d+)\]$/.exec(field || "");
  const f = m ? files[Number(m[1])] : null;
  return f ? f.name : field;
}

function listDropped(files, dropped) {
  droppedList.innerHTML = "";
  for (const d of dropped || []) {
    const li = document.createElement("li");
    li.className = "error";
    li.dataset.field = d.field;
    li.textContent = `${photoName(files, d.field)}: left out — ${(d.reasons || [d.code]).join("; ")}`;
    droppedList.appendChild(li);
  }
}

async function upload(allowDuplicate = false) {
  const name = $("name").value.trim();
  const files = [...$("photos").files];
  anyway.hidden = true;
  if (!name) {
    showMessage(uploadMsg, "Enter the person's name first", "error");
    $("name").focus();
    return;
  }
  if (!files.length) {
    showMessage(uploadMsg, "Choose one or more photos first", "error");
    return;
  }
  const form = new FormData();
  form.append("name", name);
  for (const f of files) form.append("images", f, f.name);
  if (allowDuplicate) form.append("allow_duplicate", "true");
  $("upload").disabled = true;
  listDropped(files, []);
  showMessage(uploadMsg, `Sending ${files.length} photo(s)…`, "info");
  try {
    let p = null;
    for (let attempt = 1; ; attempt++) {
      try {
        p = await api("POST", "/v1/people", form);
        break;
      } catch (e) {
        if (e.status !== 503 || attempt >= 5) throw e;
        showMessage(uploadMsg, `Server busy, retrying in ${e.retryAfter || 1} s (${attempt}/4)…`, "info");
        await sleep(1000 * (e.retryAfter || 1));
      }
    }
    const dropped = p.dropped || [];
    listDropped(files, dropped);
    const n = p.face_count;
    const left = dropped.length ? ` ${dropped.length} photo(s) left out:` : "";
    showMessage(uploadMsg, `Enrolled ${p.name} (person #${p.id}) with ${n} face${n === 1 ? "" : "s"}.${left}`, left ? "warn" : "ok");
  } catch (e) {
    const b = e.body || {};
    listDropped(files, b.dropped);
    if (e.status === 409 && b.code === "looks_like") {
      const sim = typeof b.similarity === "number" ? ` (similarity ${b.similarity.toFixed(2)})` : "";
      showMessage(uploadMsg, `Not enrolled: this face looks like ${b.name}${sim}, who is already enrolled.`, "error");
      anyway.hidden = false;
    } else {
      showMessage(uploadMsg, `Not enrolled — ${e.message}`, "error");
    }
  } finally {
    $("upload").disabled = false;
  }
}

$("upload").addEventListener("click", () => upload(false));
anyway.addEventListener("click", () => upload(true));

try {
  detector = await createDetector();
  await startCamera(video);
  $("start").disabled = false;
  window.facegate.ready = true;
  requestAnimationFrame(loop);
} catch (e) {
  guidanceEl.textContent = "Camera or face detection unavailable";
  showMessage(messageEl, e.message, "error");
}
