// Gallery page: everyone enrolled with their face thumbnails (the aligned crops the server keeps);
// delete a person after a confirmation.
import { api, fetchImageURL, setupSettings, showMessage } from "/web/static/common.js";

const $ = (id) => document.getElementById(id);
const messageEl = $("message");
setupSettings();

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
  const del = document.createElement("button");
  del.className = "danger";
  del.textContent = "Delete";
  del.addEventListener("click", () => remove(summary, li));
  head.append(name, count, del);
  const thumbs = document.createElement("div");
  thumbs.className = "thumbs";
  li.append(head, thumbs);
  try {
    const person = await api("GET", `/v1/people/${summary.id}`);
    for (const face of person.faces) {
      if (!face.crop_url) continue; // the server keeps no crops (keep_crops = false)
      const img = document.createElement("img");
      img.alt = `${summary.name}, face ${face.id}`;
      img.src = await fetchImageURL(face.crop_url);
      thumbs.appendChild(img);
    }
    if (!thumbs.children.length) thumbs.textContent = "no stored face images";
  } catch (e) {
    thumbs.textContent = `faces unavailable: ${e.message}`;
  }
  return li;
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

async function load() {
  try {
    const { people } = await api("GET", "/v1/people");
    const list = $("people");
    list.innerHTML = "";
    for (const p of people) list.appendChild(await personItem(p));
    updateSummary();
  } catch (e) {
    $("summary").textContent = "Could not load the gallery";
    showMessage(messageEl, e.message, "error");
  }
  window.facegate.ready = true;
}

load();
