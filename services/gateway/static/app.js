// The operators' page: scan list and one scan's live view, fed by Server-Sent Events.
"use strict";

// stage "best": the refined result of a scan once it exists, the network's until then.
const state = { scans: new Map(), selected: null, stage: "best", loading: false, reloadAgain: false, view: null };
const $ = (id) => document.getElementById(id);
// server text placed in an HTML attribute (a tooltip): its markup characters escaped
const attr = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const PLOT_LAYOUT = { paper_bgcolor: "#1a2029", plot_bgcolor: "#1a2029", font: { color: "#dfe6ee" },
                      margin: { l: 0, r: 0, t: 0, b: 0 } };
// Cyclic (twilight-like), so phases of ±π look alike.
const PHASE_SCALE = [[0, "#2f1e4f"], [0.25, "#5b8fd0"], [0.5, "#e2d9e2"], [0.75, "#c8634e"], [1, "#2f1e4f"]];

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

// ---- access: "open: no access control", or who the page reads as (its key rides in a same-site cookie) ----
async function loadAccess() {
  const a = await getJSON("/api/access");
  const badge = $("access");
  if (a.open) {
    badge.textContent = a.mode; badge.className = "badge failed";
  } else if (a.who) {
    badge.textContent = `${a.who} · ${a.role}` + (a.reads_all ? "" : ` · ${a.proposals.join(", ") || "no proposals"}`);
    badge.className = "badge complete";
  } else {
    badge.textContent = "sign in to read"; badge.className = "badge failed";
  }
  $("access-form").hidden = a.open || Boolean(a.who);
  return a;
}
$("access-form").onsubmit = (e) => {
  e.preventDefault();
  document.cookie = `cdi_live_key=${encodeURIComponent($("access-key").value)}; path=/; SameSite=Strict`;
  location.reload();
};

function fmtSeconds(s) { return s < 1 ? `${(1000 * s).toFixed(0)} ms` : `${s.toFixed(2)} s`; }

// ---- scan list ---------------------------------------------------------
async function loadScans() {
  const page = await getJSON("/api/scans?limit=100");
  state.scans = new Map(page.scans.map((s) => [s.scan, s]));
  renderList();
  if (!state.selected && page.scans.length) select(page.scans[0].scan);
}

function renderList() {
  const list = $("scan-list");
  list.replaceChildren();
  $("no-scans").hidden = state.scans.size > 0;
  for (const s of state.scans.values()) {
    const li = document.createElement("li");
    li.dataset.scan = s.scan;
    li.className = s.scan === state.selected ? "selected" : "";
    const pct = s.frames_expected ? (100 * s.frames_received) / s.frames_expected : 0;
    li.innerHTML = `<div class="name"></div><span class="badge ${s.state}">${s.state}</span>
      <span class="hint">${s.frames_received}/${s.frames_expected} frames</span>
      <span class="hint queue">${queueText(s)}</span>
      <div class="mini"><div style="width:${pct.toFixed(1)}%"></div></div>`;
    li.querySelector(".name").textContent = s.scan;
    li.onclick = () => select(s.scan);
    list.appendChild(li);
  }
}

// Where a scan stands in the refinement queue, so nothing waits silently.
function queueText(s) {
  const what = (stage) => (stage === "full" ? "full grid" : "refining");
  if (s.refining) return `${what(s.refining.stage)}${s.refining.resumed ? " (resumed)" : ""}`;
  if (s.queue) return `${s.queue.stage === "full" ? "full grid " : ""}queued: ${s.queue.position} ahead, about ${Math.max(1, Math.round(s.queue.eta_s))} s`;
  return "";
}

// ---- one scan ----------------------------------------------------------
function select(scan) {
  state.selected = scan;
  $("detail").hidden = false;
  $("waiting").hidden = false;
  $("plot3d").dataset.framesUsed = "";
  renderList();
  refreshDetail();
  loadView();
  loadDetector();
}

// The stage to show for scan record s: "best" picks the best finished one.
function shownStage(s) {
  if (state.stage !== "best") return state.stage;
  const results = (s && s.results) || {};
  return results.full ? "full" : results.refined ? "refined" : "nn";
}

async function refreshDetail() {
  if (!state.selected) return;
  const s = await getJSON(`/api/scans/${state.selected}`);
  state.scans.set(s.scan, s);
  renderDetail(s);
  renderList();
}

function renderDetail(s) {
  $("scan-title").textContent = s.scan;
  const badge = $("scan-state");
  badge.textContent = s.state;
  badge.className = `badge ${s.state}`;
  $("scan-reason").textContent = s.reason || "";
  $("scan-queue").textContent = queueText(s);
  $("scan-flags").textContent = (s.flags || []).join(", ");
  const pct = s.frames_expected ? (100 * s.frames_received) / s.frames_expected : 0;
  $("progress-bar").style.width = `${pct.toFixed(1)}%`;
  let text = `${s.frames_received} / ${s.frames_expected} frames`;
  if (s.duplicates) text += ` · ${s.duplicates} duplicates`;
  if (s.missing) text += ` · ${s.missing} missing`;
  $("progress-text").textContent = text;
  const body = document.querySelector("#stages tbody");
  body.replaceChildren();
  for (const [stage, label] of [["nn", "3D-CDI-NN"], ["refined", "refined"], ["full", "full grid"]]) {
    const r = s.results[stage];
    if (stage === "full" && !r && !(s.refining && s.refining.stage === "full") && !(s.queue && s.queue.stage === "full")) continue;
    const row = document.createElement("tr");
    const partial = r && r.partial
      ? `<span class="badge acquiring" title="the preview rests on ${r.frames_used} of ${r.frames_expected} frames (those not yet taken are left free)${r.shown === "network" ? "; the rocking curve's peak is not passed yet: this is the network's own answer" : ""}; chi_free ${r.chi_free != null ? r.chi_free.toFixed(4) : "—"}: wait for the scan's end for the final answer's quality">partial · wait</span>`
      : "";
    const verdict = partial || (r && r.verdict
      ? `<span class="badge ${r.verdict === "converged" ? "complete" : "failed"}" title="chi_free ${r.chi_free != null ? r.chi_free.toFixed(4) : "—"} (5 % of voxels withheld from the fit) against ${r.chi_free_floor != null ? r.chi_free_floor.toFixed(4) : "—"} for a right answer; χ floor of the data: ${r.chi_floor.toFixed(3)}${r.coherence_blur && r.coherence_blur.some((x) => x) ? `; model with a partial-coherence blur σ ${r.coherence_blur.map((x) => x.toFixed(2)).join(" × ")} voxels` : ""}${r.background ? `; flat background ${r.background.toPrecision(3)} per voxel (the input's units: photons for raw counts)` : ""}${r.unmeasured_signal ? `; ${(100 * r.unmeasured_signal).toFixed(0)} % of the answer's signal falls on unmeasured voxels (gaps, masked pixels, frames not taken), where chi_free cannot judge it` : ""}${r.resampled_error != null ? `; resampled_error ${r.resampled_error.toFixed(3)} rad: its search, run on Poisson resamples of its model, lands that far from it (the bound it must stay within: the verdict's detail)` : ""}${r.verdict_reason ? `; reason: ${r.verdict_reason}` : ""}${r.verdict_detail ? ` (${attr(r.verdict_detail)})` : ""}${r.start ? `; found from ${attr(r.start)}` : ""}${r.checking ? "; its verdict is being checked on resamples of its model" : r.searching ? "; a run again is searching for a better answer" : ""}">${r.verdict}${r.verdict_reason ? ` · ${r.verdict_reason}` : ""}${r.checking ? " · checking…" : r.searching ? " · searching…" : ""}</span>`
      : "");
    // every χ against the measured frames, unless labelled with the grid it was measured on
    const onGrid = r && r.chi_on && r.chi_on !== "measured frames" ? ` <span class="hint">(${r.chi_on})</span>` : "";
    const binned = r && r.chi_refinement_grid != null && r.grid
      ? ` <span class="hint" title="χ on the refinement grid, not against the frames">· ${r.chi_refinement_grid.toFixed(3)} on ${r.grid.join("×")}</span>` : "";
    row.innerHTML = r ? `<td>${label}</td><td>${r.frames_used}${r.partial ? ` / ${r.frames_expected}` : ""}</td><td>${r.chi.toFixed(3)}${onGrid}${binned}</td><td>${fmtSeconds(r.seconds)}</td><td>${verdict}</td>`
                      : `<td>${label}</td><td colspan="4" class="hint">${s.state === "failed" ? "—" : "pending"}</td>`;
    body.appendChild(row);
  }
  for (const a of document.querySelectorAll(".downloads a")) {
    const kind = a.dataset.kind;
    const stage = kind === "frames" ? null : shownStage(s);
    a.href = kind === "frames" ? `/api/scans/${s.scan}/frames`
           : `/api/scans/${s.scan}/${kind}?stage=${stage}&format=${a.dataset.format}`;
    const available = kind === "frames" ? s.state !== "acquiring"
                    : Boolean(s.results[stage]) && (kind !== "strain" || Boolean(s.geometry));
    a.classList.toggle("disabled", !available);
  }
}

async function loadView() {
  if (!state.selected) return;
  if (state.loading) { state.reloadAgain = true; return; }  // coalesce bursts of results
  state.loading = true;
  const scan = state.selected;
  try {
    const view = await getJSON(`/api/scans/${scan}/view?stage=${shownStage(state.scans.get(scan))}`);
    if (scan === state.selected) drawView(view);
  } catch (err) {
    console.error(err);
    if (scan === state.selected) $("waiting").hidden = false;
  } finally {
    state.loading = false;
    if (state.reloadAgain) { state.reloadAgain = false; loadView(); }
  }
}

// Phase colours: by default symmetric about zero over the range the crystal spans (diverging), so a
// weakly strained crystal is not one flat colour; "phase ±π" fixes the cyclic ±π scale.
const PHASE_AUTO_STOPS = [[0, "#2166ac"], [0.5, "#f7f7f7"], [1, "#b2182b"]];

function phaseScale(view) {
  if ($("phase-fixed").checked) return { span: Math.PI, scale: PHASE_SCALE };
  let top = 0;
  for (const v of view.mesh.phase) top = Math.max(top, Math.abs(v));
  for (const rows of view.phase) for (const row of rows) for (const v of row) if (v !== null) top = Math.max(top, Math.abs(v));
  return { span: Math.min(Math.PI, Math.max(0.05, Number(top.toPrecision(2)))), scale: PHASE_AUTO_STOPS };
}

function drawView(view) {
  state.view = view;
  $("waiting").hidden = true;
  const m = view.mesh;
  const { span, scale } = phaseScale(view);
  const stops = scale.map(([t, c]) => [t, hexToRgb(c)]);
  Plotly.react("plot3d", [{
    type: "mesh3d", x: m.x, y: m.y, z: m.z, i: m.i, j: m.j, k: m.k, intensity: m.phase,
    colorscale: scale, cmin: -span, cmax: span, flatshading: false,
    colorbar: { title: { text: "phase" }, thickness: 12 },
    lighting: { ambient: 0.6, diffuse: 0.6, specular: 0.2 },
  }], { ...PLOT_LAYOUT, uirevision: view.scan,
        scene: { aspectmode: "data", xaxis: { visible: false }, yaxis: { visible: false }, zaxis: { visible: false } } },
  { displaylogo: false, responsive: true });
  for (let a = 0; a < 3; a++) {
    paintSlice(`amp-${a}`, view.amplitude[a], (v) => greys(v));
    paintSlice(`phase-${a}`, view.phase[a], (v) => ramp(stops, (v / span + 1) / 2));
  }
  $("phase-min").textContent = `−${span.toFixed(2)}`;
  $("phase-max").textContent = `+${span.toFixed(2)} rad`;
  const bar = $("phase-scale").getContext("2d");
  for (let x = 0; x < 128; x++) { const [r, g, b] = ramp(stops, x / 127); bar.fillStyle = `rgb(${r},${g},${b})`; bar.fillRect(x, 0, 1, 1); }
  $("plot3d").dataset.phaseSpan = span.toFixed(3);
  drawStrain(view);
  drawUncertainty(view);
  $("plot3d").dataset.framesUsed = String(view.frames_used);
  $("plot3d").dataset.stage = view.stage;
}

// Strain along G in the lab frame: diverging scale, symmetric about zero, auto range; nm scale bar.
const STRAIN_STOPS = [[0, "#2166ac"], [0.5, "#f7f7f7"], [1, "#b2182b"]].map(([t, c]) => [t, hexToRgb(c)]);

function drawStrain(view) {
  const has = Array.isArray(view.strain);
  for (const id of ["strain-row", "strain-bar", "scale-note"]) $(id).hidden = !has;
  if (!has) return;
  const span = view.strain_range;
  const colour = (v) => ramp(STRAIN_STOPS, (v / span + 1) / 2);
  const bar = Math.max(1, Math.round(niceLength(8 * view.voxel_nm) / view.voxel_nm));
  for (let a = 0; a < 3; a++) paintSlice(`strain-${a}`, view.strain[a], colour, bar);
  $("strain-min").textContent = `−${span}`;
  $("strain-max").textContent = `+${span}`;
  const scale = $("strain-scale").getContext("2d");
  for (let x = 0; x < 128; x++) { const [r, g, b] = ramp(STRAIN_STOPS, x / 127); scale.fillStyle = `rgb(${r},${g},${b})`; scale.fillRect(x, 0, 1, 1); }
  $("scale-note").textContent = `lab frame (x, y, z), ${view.voxel_nm.toFixed(1)} nm voxels; white bar = ${niceLength(8 * view.voxel_nm)} nm`;
}

// The refined stage's phase uncertainty (shown on request): white (0) → orange (the 99th percentile).
const UNC_STOPS = [[0, "#ffffff"], [1, "#e66101"]].map(([t, c]) => [t, hexToRgb(c)]);

function drawUncertainty(view) {
  const has = Array.isArray(view.uncertainty) && $("show-uncertainty").checked;
  for (const id of ["uncertainty-row", "uncertainty-bar"]) $(id).hidden = !has;
  if (!has) return;
  const top = view.uncertainty_range;
  for (let a = 0; a < 3; a++) paintSlice(`unc-${a}`, view.uncertainty[a], (v) => ramp(UNC_STOPS, v / top));
  $("unc-max").textContent = `${top} rad`;
  const bar = $("unc-scale").getContext("2d");
  for (let x = 0; x < 128; x++) { const [r, g, b] = ramp(UNC_STOPS, x / 127); bar.fillStyle = `rgb(${r},${g},${b})`; bar.fillRect(x, 0, 1, 1); }
}

function niceLength(nm) { const p = 10 ** Math.floor(Math.log10(nm)); return [1, 2, 5, 10].map((m) => m * p).find((v) => v >= nm); }

function ramp(stops, t) {
  t = Math.min(1, Math.max(0, t));
  for (let n = 1; n < stops.length; n++) {
    const [t1, c1] = stops[n];
    const [t0, c0] = stops[n - 1];
    if (t <= t1) { const f = (t - t0) / (t1 - t0 || 1); return c0.map((c, i) => Math.round(c + f * (c1[i] - c))); }
  }
  return stops[stops.length - 1][1];
}

// ---- slices: one pixel per voxel on a canvas, scaled up by CSS ----------
function hexToRgb(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }

function greys(v) { const g = Math.round(255 * Math.min(1, Math.max(0, v))); return [g, g, g]; }

function paintSlice(id, rows, colour, scaleBar = 0) {
  const holder = $(id);
  let canvas = holder.querySelector("canvas");
  if (!canvas) { canvas = document.createElement("canvas"); holder.appendChild(canvas); }
  canvas.width = rows[0].length;
  canvas.height = rows.length;
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  rows.forEach((row, y) => row.forEach((v, x) => {
    const p = 4 * (y * canvas.width + x);
    if (v === null) { image.data[p + 3] = 0; return; }  // outside the crystal
    const [r, g, b] = colour(v);
    image.data.set([r, g, b, 255], p);
  }));
  for (let x = 1; x <= Math.min(scaleBar, canvas.width - 2); x++) {  // a scale bar along the bottom edge
    image.data.set([255, 255, 255, 255], 4 * ((canvas.height - 2) * canvas.width + x));
  }
  ctx.putImageData(image, 0, 0);
}

// ---- live updates --------------------------------------------------------
function onEvent(e) {
  const ev = JSON.parse(e.data);
  const known = state.scans.get(ev.scan);
  if (ev.event === "start") {
    loadScans().then(() => { if ($("follow").checked) select(ev.scan); });
    return;
  }
  if (ev.event === "deleted") { state.scans.delete(ev.scan); renderList(); return; }
  if (ev.event === "refused") { showAlarm(`scan ${ev.scan} refused: ${ev.reason}`); return; }
  if (ev.event === "rejected") { showAlarm(`${ev.scan ? `scan ${ev.scan}: ` : ""}message rejected: ${ev.reason}`); return; }
  if (ev.event === "progress" && known) {
    known.frames_received = ev.frames_received;
    known.duplicates = ev.duplicates;
    renderList();
    if (ev.scan === state.selected) renderDetail(known);
    return;
  }
  if (ev.scan === state.selected) {
    // the record first: "best finished" picks its stage from the results the record lists
    refreshDetail().then(() => {
      if (ev.event === "result" && (ev.stage === state.stage || state.stage === "best")) loadView();
    });
  } else {
    loadScans();
  }
}

// ---- the detector image with its mask (flags, saturation, pixel mask) overlaid ----------------
async function loadDetector() {
  if (!state.selected || !$("detector-box").open) return;
  let d;
  try { d = await getJSON(`/api/scans/${state.selected}/detector`); } catch (err) { return; }
  const traces = [{ z: d.image, type: "heatmap", colorscale: "Viridis", showscale: false, hoverinfo: "skip" }];
  if ($("mask-overlay").checked) {
    traces.push({ z: d.mask.map((row) => row.map((v) => (v > 0 ? v : null))), type: "heatmap", showscale: false,
                  colorscale: [[0, "rgba(255,60,60,0.6)"], [1, "rgba(255,60,60,1)"]], zmin: 0, zmax: 1, hoverinfo: "skip" });
  }
  const axis = { showgrid: false, zeroline: false, constrain: "domain", color: "#8b95a5" };
  const unit = d.bin > 1 ? ` (bins of ${d.bin})` : "";
  Plotly.react("detector", traces, { margin: { l: 50, r: 10, t: 10, b: 50 }, height: 340, width: 380,
    paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)",
    xaxis: { ...axis, title: { text: `column${unit}`, standoff: 8 } },
    yaxis: { ...axis, autorange: "reversed", scaleanchor: "x", title: { text: `row${unit}`, standoff: 8 } } },
    { displayModeBar: false });
  const whole = d.window && (d.window.detector_shape[0] !== d.shape[0] || d.window.detector_shape[1] !== d.shape[1]);
  $("detector-note").textContent = `${d.shape[0]}×${d.shape[1]} pixels`
    + (whole ? ` around the signal (from row ${d.window.corner[0]}, column ${d.window.corner[1]} of `
       + `${d.window.detector_shape[0]}×${d.window.detector_shape[1]})` : "")
    + (d.bin > 1 ? `, binned ${d.bin}×${d.bin}` : "")
    + ` · ${d.masked_pixels} masked or flagged (red)`;
}
$("detector-box").ontoggle = loadDetector;
$("mask-overlay").onchange = loadDetector;

// ---- storage: DATA_DIR's size, free space, and the alarm that refuses new scans ---------------
function fmtBytes(b) { return b >= 2 ** 30 ? `${(b / 2 ** 30).toFixed(1)} GB` : `${(b / 2 ** 20).toFixed(0)} MB`; }

function showAlarm(text) {
  const alarm = $("alarm");
  alarm.textContent = text || "";
  alarm.hidden = !text;
}

async function loadStorage() {
  try {
    const s = await getJSON("/api/storage");
    if (s.disk.data_bytes !== undefined) {
      $("storage").textContent = `data ${fmtBytes(s.disk.data_bytes)} · ${fmtBytes(s.disk.free_bytes)} free`;
    }
    showAlarm(s.disk.alarm ? `${s.disk.alarm}: new scans are refused` : "");
  } catch (err) { /* the connection badge says so */ }
}

function connect() {
  const source = new EventSource("/api/events");
  source.onopen = () => { const c = $("connection"); c.textContent = "live"; c.className = "badge live"; };
  source.onerror = () => { const c = $("connection"); c.textContent = "reconnecting"; c.className = "badge failed"; };
  source.onmessage = onEvent;
}

for (const radio of document.querySelectorAll("input[name=stage]")) {
  radio.onchange = () => { state.stage = radio.value; refreshDetail(); loadView(); };
}
$("phase-fixed").onchange = () => { if (state.view) drawView(state.view); };
$("show-uncertainty").onchange = () => { if (state.view) drawUncertainty(state.view); };
loadAccess().then((a) => {
  if (!a.open && !a.who) return;  // nothing to read until signed in
  connect();
  loadScans();
  loadStorage();
  setInterval(loadStorage, 15000);
});
