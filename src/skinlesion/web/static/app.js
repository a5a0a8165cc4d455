// The page's behaviour: choose or drop a photo, send it to the API, show the answer. No build step.
"use strict";

const NAMES = {MEL: "Melanoma", NV: "Melanocytic nevus", BCC: "Basal cell carcinoma", AK: "Actinic keratosis",
  BKL: "Benign keratosis", DF: "Dermatofibroma", VASC: "Vascular lesion", SCC: "Squamous cell carcinoma"};
const $ = (id) => document.getElementById(id);
let chosen = null;

function choose(file) {
  if (!file) return;
  chosen = file;
  $("file-name").textContent = file.name;
  const url = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("preview").src = url;
  $("preview-box").hidden = false;
  $("analyse").disabled = false;
  $("answer").hidden = true;
  $("error").hidden = true;
  $("status").textContent = "Photo ready. Press Analyse.";
}

function showError(message) {
  $("answer").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

function showAnswer(body) {
  $("label").textContent = `${body.name} (${body.label})`;
  $("probability").textContent = `${Math.round(body.probability * 100)}%`;
  // A benign top class whose cancers and pre-cancers together pass the model's referral threshold.
  const checkAnyway = body.refer && body.risk === "benign";
  $("risk").textContent = checkAnyway ? "Risk group: benign, but cancer is not ruled out" : `Risk group: ${body.risk}`;
  $("risk").className = checkAnyway ? "risk refer" : `risk ${body.risk}`;
  $("uncertain").hidden = !body.uncertain;
  $("seen").hidden = !body.seen_by_model;
  $("advice").textContent = body.advice;
  const bars = $("bars");
  bars.replaceChildren();
  Object.entries(body.probabilities).sort((a, b) => b[1] - a[1]).forEach(([code, p]) => {
    const item = document.createElement("li");
    const label = document.createElement("span");
    label.className = "bar-label";
    label.textContent = `${NAMES[code]} (${code})`;
    const track = document.createElement("span");
    track.className = "bar-track";
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", `${NAMES[code]}: ${(p * 100).toFixed(1)} percent`);
    const fill = document.createElement("span");
    fill.className = code === body.label ? "bar-fill top" : "bar-fill";
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = `${(p * 100).toFixed(1)}%`;
    item.append(label, track, value);
    bars.append(item);
  });
  $("heatmap").src = body.heatmap || "";
  $("plain").src = $("preview").src;
  $("toggle-heatmap").disabled = $("preview").hidden;  // nothing to show without the heatmap
  setHeatmap(true);
  // For a printed or saved copy: which photo, when, and which model answered.
  const when = new Date().toLocaleString(undefined, {dateStyle: "long", timeStyle: "short"});
  $("record").textContent = `Photo ${chosen.name}, analysed ${when} by model ${body.model_version}.`;
  $("error").hidden = true;
  $("answer").hidden = false;
  $("status").textContent = "Done.";
}

function setHeatmap(on) {
  $("heatmap").hidden = !on;
  $("heatmap-key").hidden = !on;
  $("plain").hidden = on;
  $("toggle-heatmap").setAttribute("aria-pressed", String(on));
  $("toggle-heatmap").textContent = on ? "Hide heatmap" : "Show heatmap";
}

async function analyse() {
  if (!chosen) return;
  const form = new FormData();
  form.append("image", chosen);
  form.append("heatmap", "1");
  $("analyse").disabled = true;
  $("result").setAttribute("aria-busy", "true");
  $("status").textContent = "Analysing...";
  try {
    const response = await fetch("/api/v1/predict", {method: "POST", body: form});
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      showError(body && body.message ? body.message : `The server answered ${response.status}.`);
    } else {
      showAnswer(body);
    }
  } catch (e) {
    showError("Could not reach the server. Check your connection and try again.");
  } finally {
    $("analyse").disabled = false;
    $("result").setAttribute("aria-busy", "false");
  }
}

$("file").addEventListener("change", (e) => choose(e.target.files[0]));
// Browsers show JPEG, PNG and WebP but not TIFF or (outside Safari) HEIC, which the server reads all the same.
$("preview").addEventListener("error", () => {
  if (!chosen) return;
  $("preview").hidden = true;
  $("file-name").textContent = `${chosen.name} (this browser cannot show it; it can still be analysed)`;
});
$("camera").addEventListener("change", (e) => choose(e.target.files[0]));
$("analyse").addEventListener("click", analyse);
$("toggle-heatmap").addEventListener("click", () => setHeatmap($("heatmap").hidden));
$("print").addEventListener("click", () => window.print());
const drop = $("drop");
["dragenter", "dragover"].forEach((type) => drop.addEventListener(type, (e) => {
  e.preventDefault();
  drop.classList.add("over");
}));
["dragleave", "drop"].forEach((type) => drop.addEventListener(type, (e) => {
  e.preventDefault();
  drop.classList.remove("over");
}));
drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
