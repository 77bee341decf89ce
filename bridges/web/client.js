// The browser instrument: WebSocket control + audio. The server speaks the protocol in bridges/ws.py.
// Everything shown is the server's state (session.created, state, state.changed), so two pages and
// an OSC surface agree; faders send while dragged (at most once a frame) and follow the server
// otherwise. No build step, no CDN: this file is the whole client.
const params = new URLSearchParams(location.search);
let resume = ""; // a cluster's session token (session.created's resume): a reconnect carries on that session
const wsUrl = () => {
  const q = new URLSearchParams();
  if (params.get("token")) q.set("token", params.get("token"));
  if (resume) q.set("resume", resume);
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/${q.toString() ? "?" + q : ""}`;
};
const $ = (id) => document.getElementById(id);
const st = { frames: 0, bytes: 0, bufferMs: 0, underflows: 0, lastLatency: null, updated: 0, rate: 32000, channels: 1, snap: null };
const view = {}; // the server's state as last heard: what every client shows
window.musicgenView = view;
let ws, ctx, node, nextId = 1; const sent = new Map();
let controls = {}; // name -> {lo, hi, integer, meaning}, from the server's one table
const dragging = new Set();
const FRAME_MS = 20; // one MusicGen frame: faders send at most this often
const SLOTS = 4;
const OFF_AT_ZERO = new Set(["top_k", "top_p", "quantize", "cfg_beta"]);

// -- sending --------------------------------------------------------------------------------------
function send(obj) {
  if (!ws || ws.readyState !== 1) return null;
  obj.event_id = String(nextId++); sent.set(obj.event_id, performance.now()); ws.send(JSON.stringify(obj)); return obj.event_id;
}
const lastSent = {};
function throttled(key, ms, fn) { // send now if the last one was ms ago, else once when the time comes
  const now = performance.now(), due = (lastSent[key] || 0) + ms;
  clearTimeout(lastSent[key + ":t"]);
  if (now >= due) { lastSent[key] = now; fn(); } else lastSent[key + ":t"] = setTimeout(() => { lastSent[key] = performance.now(); fn(); }, due - now);
}

// -- controls, built from the server's table ------------------------------------------------------
function step(c) { return c.integer ? 1 : c.hi - c.lo <= 10 ? 0.01 : 0.1; } // a value the server sends shows exactly
function digits(c) { return c.integer ? 0 : c.hi - c.lo > 50 ? 1 : 2; }
function label(id) {
  const c = controls[id], v = Number($(id).value);
  $(id + "V").textContent = OFF_AT_ZERO.has(id) && v === 0 ? "off" : v.toFixed(digits(c));
}
function setControl(id, value) { // from a fader or a MIDI knob: show it, send it at most once a frame
  $(id).value = value; label(id);
  throttled(id, FRAME_MS, () => send({ type: "session.update", [id]: Number($(id).value) }));
}
function buildControls(table) {
  controls = table; const box = $("controls"); box.textContent = "";
  for (const [id, c] of Object.entries(table)) {
    const wrap = document.createElement("div");
    wrap.innerHTML = `<label for="${id}" title="${c.meaning}">${id} <span id="${id}V"></span><button class="learn" data-learn="${id}">MIDI</button></label>` +
      `<input id="${id}" type="range" min="${c.lo}" max="${c.hi}" step="${step(c)}">`;
    box.appendChild(wrap);
    const el = $(id);
    el.value = view[id] !== undefined ? view[id] : c.lo; label(id);
    el.oninput = () => { dragging.add(id); setControl(id, el.value); };
    el.onchange = () => { dragging.delete(id); lastSent[id] = 0; setControl(id, el.value); };
  }
  box.querySelectorAll("[data-learn]").forEach((b) => { b.onclick = (e) => { e.preventDefault(); learn(b.dataset.learn, b); }; });
}

// -- prompts: one line, a blend of slots, a history ----------------------------------------------
function buildSlots() {
  for (let i = 0; i < SLOTS; i++) {
    const row = document.createElement("div"); row.className = "slot";
    row.innerHTML = `<input id="slot${i}" type="text" placeholder="prompt ${i + 1}" autocomplete="off">` +
      `<input id="w${i}" type="range" min="0" max="1" step="0.01" value="0"><span id="w${i}V">0.00</span>`;
    $("slots").appendChild(row);
    $(`w${i}`).oninput = () => { dragging.add(`w${i}`); $(`w${i}V`).textContent = Number($(`w${i}`).value).toFixed(2); sendBlend(); };
    $(`w${i}`).onchange = () => { dragging.delete(`w${i}`); sendBlend(); };
    $(`slot${i}`).onchange = () => sendBlend();
  }
}
function blend() {
  const out = [];
  for (let i = 0; i < SLOTS; i++) {
    const text = $(`slot${i}`).value.trim(), w = Number($(`w${i}`).value);
    if (text && w > 0) out.push([text, w]);
  }
  return out;
}
function sendBlend() { // a blend re-weights the sounding prompts: a short glide, a few times a second
  const pairs = blend();
  if (pairs.length) throttled("blend", 100, () => send({ type: "session.update", weighted_prompts: blend(), fade: 0.5 }));
}
function showPrompts(prompts) {
  if (document.activeElement !== $("prompt")) $("prompt").value = prompts.map((p) => p.text).join(" | ");
  if ([...Array(SLOTS).keys()].some((i) => dragging.has(`w${i}`) || document.activeElement === $(`slot${i}`))) return;
  for (let i = 0; i < SLOTS; i++) {
    const p = prompts[i];
    $(`slot${i}`).value = p ? p.text : $(`slot${i}`).value;
    $(`w${i}`).value = p ? p.weight : 0; $(`w${i}V`).textContent = Number($(`w${i}`).value).toFixed(2);
  }
}
const HISTORY_KEY = "musicgen-live.history";
function history() { try { return JSON.parse(localStorage.getItem(HISTORY_KEY)) || []; } catch { return []; } }
function remember(text) {
  if (!text) return;
  const h = [text, ...history().filter((t) => t !== text)].slice(0, 20);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(h)); showHistory();
}
function showHistory() {
  $("history").textContent = "";
  for (const text of history()) {
    const li = document.createElement("li"); li.textContent = text;
    li.onclick = () => { $("prompt").value = text; sendPrompt(text); };
    $("history").appendChild(li);
  }
}
function sendPrompt(text) { send({ type: "session.update", prompt: text, fade: Number(view.fade || 0) }); remember(text); }

// -- the server's state -----------------------------------------------------------------------------
let shownPrompts = "";
function applyState(changes) {
  Object.assign(view, changes);
  if (changes.state !== undefined || changes.phase !== undefined) { // a frozen stream never shows "playing"
    const shown = view.phase === "stalled" ? "stalled" : view.state;
    $("transport").textContent = shown; $("transport").className = shown;
  }
  if (changes.prompts !== undefined && JSON.stringify(changes.prompts) !== shownPrompts) { // only a real change
    shownPrompts = JSON.stringify(changes.prompts); showPrompts(view.prompts);
  }
  if (changes.melody !== undefined) $("melody").textContent = changes.melody;
  if (changes.style !== undefined) $("style").textContent = changes.style;
  for (const id of Object.keys(controls)) {
    if (changes[id] !== undefined && !dragging.has(id) && $(id)) { $(id).value = changes[id]; label(id); }
  }
  if (changes.seconds !== undefined) st.snap = { ...view };
  show();
}
function show() {
  const s = st.snap || {};
  const lat = s.latency_ms_p50 == null ? "-" : s.latency_ms_p50.toFixed(0) + " ms";
  $("status").textContent =
    `position ${(s.seconds || 0).toFixed(1)} s | server buffer ${(s.buffer_ms || 0).toFixed(0)} ms | underruns ${s.underruns || 0}` +
    ` | command→audible p50 ${lat}${s.pending && s.pending.length ? " | pending " + s.pending.join(", ") : ""}\n` +
    `browser: audio frames ${st.frames} | buffer ${st.bufferMs.toFixed(0)} ms | underflows ${st.underflows}` +
    ` | last change answered in ${st.lastLatency === null ? "-" : st.lastLatency.toFixed(0) + " ms"}`;
  const l = s.link;
  $("link").textContent = l ? `Link ${l.tempo.toFixed(1)} bpm | beat ${(Math.floor(l.phase * 10) / 10 + 1).toFixed(1)} of ${l.quantum} | ${l.peers} peer(s)` : "";
}

function connect() {
  ws = new WebSocket(wsUrl()); ws.binaryType = "arraybuffer";
  ws.onopen = () => { send({ type: "audio.subscribe", enabled: true, codec: "f32" }); };
  ws.onclose = () => { $("transport").textContent = "disconnected"; $("transport").className = ""; setTimeout(connect, 1000); };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return onAudio(e.data);
    const m = JSON.parse(e.data);
    if (m.type === "session.created") { if (m.controls) buildControls(m.controls); applyState(m.state); resume = m.resume || ""; }
    if (m.type === "audio.subscribed") { st.rate = m.sample_rate; st.channels = m.channels; }
    if (m.type === "state") applyState(m.state);
    if (m.type === "state.changed") applyState(m.changes);
    if (m.type === "session.updated") { st.updated++; if (sent.has(m.event_id)) st.lastLatency = performance.now() - sent.get(m.event_id); }
    if (m.type === "error" || m.type === "warning") $("log").textContent = `${m.type}: ${m.message}`;
    show();
  };
}
setInterval(() => send({ type: "state.get" }), 1000); // position, buffer, underruns, latency, Link

// -- audio, the meter and the scrolling waveform ------------------------------------------------------
const levels = []; // [min, max, rms] per arrived chunk, newest last
function onAudio(buf) {
  const dv = new DataView(buf);
  const magic = String.fromCharCode(dv.getUint8(0), dv.getUint8(1), dv.getUint8(2), dv.getUint8(3));
  if (magic !== "MGLA" || dv.getUint8(5) !== 0) return;
  st.frames++; st.bytes += buf.byteLength;
  const pcm = new Float32Array(buf, 24);
  let lo = 0, hi = 0, sq = 0;
  for (let i = 0; i < pcm.length; i++) { const x = pcm[i]; if (x < lo) lo = x; if (x > hi) hi = x; sq += x * x; }
  levels.push([lo, hi, Math.sqrt(sq / Math.max(pcm.length, 1))]); if (levels.length > 600) levels.shift();
  if (node) node.port.postMessage(pcm);
}
function draw() {
  const w = $("wave"), g = w.getContext("2d"), H = w.height, W = w.width;
  g.fillStyle = "#000"; g.fillRect(0, 0, W, H); g.strokeStyle = "#6c6"; g.beginPath();
  const n = levels.length, shown = levels.slice(-W);
  const scale = 1 / Math.max(0.05, ...shown.map((l) => Math.max(-l[0], l[1]))); // the loudest in view fills it
  for (let x = 0; x < Math.min(W, n); x++) {
    const [lo, hi] = levels[n - 1 - x], px = W - 1 - x;
    g.moveTo(px, H / 2 - hi * scale * H / 2); g.lineTo(px, H / 2 - lo * scale * H / 2 + 1);
  }
  g.stroke();
  const m = $("meter"), mg = m.getContext("2d"), last = levels.slice(-5);
  const rms = last.length ? Math.max(...last.map((l) => l[2])) : 0, peak = last.length ? Math.max(...last.map((l) => Math.max(-l[0], l[1]))) : 0;
  mg.fillStyle = "#222"; mg.fillRect(0, 0, m.width, m.height);
  mg.fillStyle = peak >= 1 ? "#c33" : "#3a6"; mg.fillRect(0, 0, Math.min(1, rms * 2) * m.width, m.height);
  mg.fillStyle = "#ddd"; mg.fillRect(Math.min(1, peak) * m.width - 2, 0, 2, m.height);
  requestAnimationFrame(draw);
}
async function startAudio() {
  if (ctx) return;
  ctx = new AudioContext({ sampleRate: st.rate });
  await ctx.audioWorklet.addModule("worklet.js");
  node = new AudioWorkletNode(ctx, "jitter-player", { outputChannelCount: [2], processorOptions: { channels: st.channels, targetMs: 150 } });
  node.port.onmessage = (e) => { st.bufferMs = e.data.bufferMs; st.underflows = e.data.underflows; };
  node.connect(ctx.destination);
  await ctx.resume();
}

// -- continue from an uploaded or dropped file -------------------------------------------------------
async function upload(file) {
  const decoder = ctx || new AudioContext();
  const audio = await decoder.decodeAudioData(await file.arrayBuffer());
  const seconds = Math.min(10, audio.duration), channels = Math.min(2, audio.numberOfChannels);
  const n = Math.floor(seconds * audio.sampleRate), start = audio.length - n;
  const pcm = new Float32Array(n * channels);
  for (let ch = 0; ch < channels; ch++) { const d = audio.getChannelData(ch); for (let i = 0; i < n; i++) pcm[i * channels + ch] = d[start + i]; }
  send({ type: "input_audio.begin", rate: audio.sampleRate, channels, codec: "f32" });
  const step = 65536 - (65536 % channels);
  for (let i = 0; i < pcm.length; i += step) ws.send(pcm.slice(i, i + step).buffer);
  send({ type: "input_audio.commit", seconds });
  $("log").textContent = `continuing from the last ${seconds.toFixed(1)} s of ${file.name}`;
}
window.musicgenUpload = upload; // for tests: a File made in the page
$("file").onchange = () => { if ($("file").files[0]) upload($("file").files[0]); };
$("drop").ondragover = (e) => { e.preventDefault(); $("drop").classList.add("over"); };
$("drop").ondragleave = () => $("drop").classList.remove("over");
$("drop").ondrop = (e) => { e.preventDefault(); $("drop").classList.remove("over"); if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); };

// -- Web MIDI learn: click MIDI on a control, move a knob; kept in this browser ---------------------
const MIDI_KEY = "musicgen-live.midi";
let learning = null;
function midiMap() { try { return JSON.parse(localStorage.getItem(MIDI_KEY)) || {}; } catch { return {}; } }
function onMidi(status, cc, value) { // also window.musicgenMidi, for pages without Web MIDI
  if ((status & 0xf0) !== 0xb0) return;
  const key = `${(status & 0x0f) + 1}:${cc}`;
  if (learning) {
    const map = midiMap(); map[key] = learning.id; localStorage.setItem(MIDI_KEY, JSON.stringify(map));
    learning.button.classList.remove("learning"); learning.button.textContent = `CC${cc}`; learning = null; return;
  }
  const id = midiMap()[key], c = controls[id];
  if (c) setControl(id, c.lo + (value / 127) * (c.hi - c.lo));
}
window.musicgenMidi = onMidi;
async function learn(id, button) {
  if (learning) learning.button.classList.remove("learning");
  learning = { id, button }; button.classList.add("learning"); button.textContent = "move a knob";
  if (navigator.requestMIDIAccess && !window.midiAccess) {
    try {
      window.midiAccess = await navigator.requestMIDIAccess();
      for (const input of window.midiAccess.inputs.values()) input.onmidimessage = (e) => onMidi(e.data[0], e.data[1], e.data[2]);
    } catch (err) { $("log").textContent = `Web MIDI is not available here (${err.message}); map knobs on the server ([midi] in config.toml)`; }
  }
}

$("start").onclick = startAudio;
$("promptForm").onsubmit = (e) => { e.preventDefault(); sendPrompt($("prompt").value); $("prompt").blur(); };
document.querySelectorAll("[data-action]").forEach((b) => { b.onclick = () => send({ type: "playback.control", action: b.dataset.action }); });
$("continue").onclick = () => send({ type: "generate.continue", source: "history", seconds: 8 });
$("continueInput").onclick = () => send({ type: "generate.continue", source: "input", seconds: 8 });
$("melodyHistory").onclick = () => send({ type: "melody.set", source: "history", seconds: 8 });
$("melodyOff").onclick = () => send({ type: "melody.set", source: "off" });
$("styleHistory").onclick = () => send({ type: "style.set", source: "history", seconds: 3 });
$("styleOff").onclick = () => send({ type: "style.set", source: "off" });
buildSlots(); showHistory(); connect(); show(); requestAnimationFrame(draw);

// ?selftest=1: for automated browser tests - play, send a prompt, report what arrived in the title.
if (params.get("selftest")) {
  (async () => {
    await new Promise((r) => setTimeout(r, 500));
    await startAudio();
    send({ type: "session.update", prompt: "selftest prompt from the browser" });
    const t0 = performance.now();
    while (performance.now() - t0 < 8000 && (st.updated < 1 || st.frames < 20)) await new Promise((r) => setTimeout(r, 100));
    document.title = `selftest frames=${st.frames} updated=${st.updated} worklet=${node ? 1 : 0}`;
  })();
}
