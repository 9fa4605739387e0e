// Gallery page: everyone enrolled with their face thumbnails (the aligned crops the server keeps).
// Per person: add photos (POST /v1/people/{id}/faces), rename (PATCH /v1/people/{id}), delete one
// face (DELETE /v1/faces/{id}, the × on its thumbnail) or the person (after a confirmation). The
// list is loaded again after each change, and when an API key is entered in Settings.
import { api, fetchImageURL, setupSettings, showMessage } from "/web/static/common.js";

const $ = (id) => document.getElementById(id);
const messageEl = $("message");
setupSettings(() => load());

function button(text, className, onClick, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/** "images[1]" -> the chosen file's name. */
function photoName(files, field) {
  const m = /^images\[(\d+)\]$/.exec(field || "");
  const f = m ? files[Number(m[1])] : null;
  return f ? f.name : field;
}

function droppedText(files, dropped) {
  return (dropped || []).map((d) => `${photoName(files, d.field)} left out: ${(d.reasons || [d.code]).join("; ")}`).join(" · ");
}

async function personItem(summary) {
  const li = document.createElement("li");
  li.className = "person";
  li.dataset.personId = summary.id;
  const head = document.createElement("div");
  head.className = "person-head";
  const name = document.createElement("span");
  name.className = "person-name";
  name.textContent = summary.name;
  const count = document.createElement("span");
  count.className = "person-count";
  count.textContent = `${summary.face_count} face(s) · since ${summary.created_at.slice(0, 10)}`;
  const del = button("Delete", "danger", () => remove(summary, li));
  head.append(name, count, del);

  const actions = document.createElement("div");
  actions.className = "person-actions";
  const add = document.createElement("label");
  add.className = "add-photos";
  add.textContent = "Add photos";
  const files = document.createElement("input");
  files.type = "file";
  files.accept = "image/*";
  files.multiple = true;
  files.className = "add-photos-input";
  files.addEventListener("change", () => {
    if (files.files.length) addPhotos(summary, [...files.files]);
  });
  add.appendChild(files);
  const rename = button("Rename", "rename", () => startRename(summary, head, name));
  actions.append(add, rename);

  const thumbs = document.createElement("div");
  thumbs.className = "thumbs";
  li.append(head, actions, thumbs);
  try {
    const person = await api("GET", `/v1/people/${summary.id}`);
    for (const face of person.faces) {
      if (!face.crop_url) continue; // the server keeps no crops (keep_crops = false)
      const fig = document.createElement("span");
      fig.className = "face";
      fig.dataset.faceId = face.id;
      const img = document.createElement("img");
      img.alt = `${summary.name}, face ${face.id}`;
      img.src = await fetchImageURL(face.crop_url);
      fig.append(img, button("×", "face-delete", () => removeFace(summary, face.id), `Delete face ${face.id} of ${summary.name}`));
      thumbs.appendChild(fig);
    }
    if (!thumbs.children.length) thumbs.textContent = summary.face_count ? "no stored face images" : "no faces: add photos";
  } catch (e) {
    thumbs.textContent = `faces unavailable: ${e.message}`;
  }
  return li;
}

async function addPhotos(summary, files, allowDuplicate = false) {
  const form = new FormData();
  for (const f of files) form.append("images", f, f.name);
  if (allowDuplicate) form.append("allow_duplicate", "true");
  showMessage(messageEl, `Adding ${files.length} photo(s) to ${summary.name}…`, "info");
  try {
    const p = await api("POST", `/v1/people/${summary.id}/faces`, form);
    const left = droppedText(files, p.dropped);
    await load();
    showMessage(messageEl, `${p.name} now has ${p.face_count} face(s).` + (left ? ` ${left}` : ""), left ? "warn" : "ok");
  } catch (e) {
    const b = e.body || {};
    const left = droppedText(files, b.dropped);
    if (e.status === 409 && b.code === "looks_like") {
      showMessage(messageEl, `Not added: this face looks like ${b.name}, another enrolled person.`, "error");
      messageEl.append(" ", button("Add anyway", "", () => addPhotos(summary, files, true)));
    } else {
      showMessage(messageEl, `No photo added to ${summary.name} — ${e.message}` + (left ? ` (${left})` : ""), "error");
    }
  }
}

function startRename(summary, head, nameEl) {
  if (head.querySelector("form")) return;
  const form = document.createElement("form");
  form.className = "rename-form";
  const input = document.createElement("input");
  input.className = "rename-input";
  input.value = summary.name;
  input.maxLength = 128;
  input.required = true;
  input.setAttribute("aria-label", `New name for ${summary.name}`);
  const save = document.createElement("button");
  save.type = "submit";
  save.textContent = "Save";
  const cancel = button("Cancel", "", () => {
    form.remove();
    nameEl.hidden = false;
  });
  form.append(input, save, cancel);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = input.value.trim();
    if (!name || name === summary.name) {
      cancel.click();
      return;
    }
    save.disabled = true;
    try {
      const p = await api("PATCH", `/v1/people/${summary.id}`, { name });
      await load();
      showMessage(messageEl, `Renamed ${summary.name} to ${p.name}.`, "ok");
    } catch (e) {
      showMessage(messageEl, `Not renamed — ${e.message}`, "error");
      save.disabled = false;
      input.focus();
    }
  });
  nameEl.hidden = true;
  nameEl.after(form);
  input.focus();
  input.select();
}

async function removeFace(summary, faceId) {
  if (!confirm(`Delete this face of ${summary.name}? This cannot be undone.`)) return;
  try {
    const r = await api("DELETE", `/v1/faces/${faceId}`);
    await load();
    showMessage(messageEl, `Deleted a face of ${r.person.name}: ${r.person.face_count} left.`, "ok");
  } catch (e) {
    showMessage(messageEl, `Could not delete the face: ${e.message}`, "error");
  }
}

async function remove(summary, li) {
  if (!confirm(`Delete ${summary.name} and all their faces? This cannot be undone.`)) return;
  try {
    await api("DELETE", `/v1/people/${summary.id}`);
    li.remove();
    showMessage(messageEl, `Deleted ${summary.name}.`, "ok");
    updateSummary();
  } catch (e) {
    showMessage(messageEl, `Could not delete ${summary.name}: ${e.message}`, "error");
  }
}

function updateSummary() {
  const n = $("people").children.length;
  $("summary").textContent = n ? `${n} people enrolled` : "Nobody is enrolled yet — use the Register page.";
}

let loading = null;

/** The whole list, built off-screen then swapped in (one load at a time; a later call waits for it). */
async function load() {
  const run = (loading || Promise.resolve()).then(async () => {
    try {
      const { people } = await api("GET", "/v1/people");
      const items = [];
      for (const p of people) items.push(await personItem(p));
      $("people").replaceChildren(...items);
      updateSummary();
      if (messageEl.classList.contains("error") && /API key/i.test(messageEl.textContent)) showMessage(messageEl, "");
    } catch (e) {
      $("summary").textContent = "Could not load the gallery";
      showMessage(messageEl, e.message, "error");
    }
    window.facegate.ready = true;
  });
  loading = run;
  return run;
}

load();
