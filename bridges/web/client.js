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
const NUMBER_FIELDS = new Set(["seed"]); // a whole number to type, not a 2^31-wide fader
let model = {}; // session.created's model summary: what this checkpoint can do
function buildControls(table) {
  controls = Object.fromEntries(Object.entries(table).filter(([id]) => id !== "cfg_beta" || model.style)); // double guidance: style checkpoints
  const box = $("controls"); box.textContent = "";
  for (const [id, c] of Object.entries(controls)) {
    const wrap = document.createElement("div");
    const input = NUMBER_FIELDS.has(id) ? `<input id="${id}" type="number" min="${c.lo}" max="${c.hi}" step="1">`
      : `<input id="${id}" type="range" min="${c.lo}" max="${c.hi}" step="${step(c)}">`;
    wrap.innerHTML = `<label for="${id}" title="${c.meaning}">${id} <span id="${id}V"></span><button class="learn" data-learn="${id}">MIDI</button></label>` + input;
    box.appendChild(wrap);
    const el = $(id);
    el.value = view[id] !== undefined ? view[id] : c.lo; label(id);
    el.oninput = () => { dragging.add(id); setControl(id, el.value); };
    el.onchange = () => { dragging.delete(id); lastSent[id] = 0; setControl(id, el.value); };
  }
  box.querySelectorAll("[data-learn]").forEach((b) => { b.onclick = (e) => { e.preventDefault(); learn(b.dataset.learn, b); }; });
}

// -- prompts: one line, a blend of slots, a history ----------------------------------------------
// The slots are the server's blend board (state "slots"): every page and OSC surface sees the same
// rows, a slot keeps its text at any weight, and a reload brings them back.
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
function board() { // every slot in order, empty texts and weights of 0 included
  return [...Array(SLOTS).keys()].map((i) => [$(`slot${i}`).value.trim(), Number($(`w${i}`).value)]);
}
// While a blend is queued or on its way, the server's slots are older than the page's: not shown
let blendQueued = false, blendInFlight = null;
function sendBlend() { // the board as it stands: a short glide, a few times a second
  blendQueued = true;
  throttled("blend", 100, () => { blendQueued = false; blendInFlight = send({ type: "session.update", slots: board(), fade: 0.5 }); });
}
function showPrompts(prompts) { // the prompt line: what sounds
  if (document.activeElement !== $("prompt")) $("prompt").value = prompts.map((p) => p.text).join(" | ");
}
function showSlots(slots) {
  if (blendQueued || blendInFlight) return;
  if ([...Array(SLOTS).keys()].some((i) => dragging.has(`w${i}`) || document.activeElement === $(`slot${i}`))) return;
  for (let i = 0; i < SLOTS; i++) {
    const p = slots[i] || { text: "", weight: 0 };
    $(`slot${i}`).value = p.text; $(`w${i}`).value = p.weight; $(`w${i}V`).textContent = Number(p.weight).toFixed(2);
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
function sendPrompt(line) { // "a | b": a blend of the parts, each at the weight it sounds at now (1 if new)
  const parts = line.split("|").map((t) => t.trim()).filter((t) => t);
  if (parts.length > 1) {
    const now = Object.fromEntries((view.prompts || []).map((p) => [p.text, p.weight]));
    send({ type: "session.update", weighted_prompts: parts.map((t) => [t, now[t] || 1]), fade: Number(view.fade || 0) });
  } else if (parts.length) send({ type: "session.update", prompt: parts[0], fade: Number(view.fade || 0) });
  parts.forEach(remember);
}

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
  if (changes.slots !== undefined) showSlots(view.slots);
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
  ws.onopen = () => { if (ctx) subscribeAudio(); }; // audio only once Listen was pressed: a closed ear costs nothing
  ws.onclose = () => { $("transport").textContent = "disconnected"; $("transport").className = ""; setTimeout(connect, 1000); };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return onAudio(e.data);
    const m = JSON.parse(e.data);
    if (m.type === "session.created") {
      model = m.session || {}; offer();
      if (model.sample_rate) st.rate = model.sample_rate; if (model.channels) st.channels = model.channels;
      if (m.controls) buildControls(m.controls); applyState(m.state); resume = m.resume || "";
    }
    if (m.type === "audio.subscribed") { st.rate = m.sample_rate; st.channels = m.channels; }
    if (m.type === "state") applyState(m.state);
    if (m.type === "state.changed") applyState(m.changes);
    if (m.type === "session.updated") { st.updated++; if (sent.has(m.event_id)) st.lastLatency = performance.now() - sent.get(m.event_id); }
    if ((m.type === "session.updated" || m.type === "error") && m.event_id === blendInFlight) { blendInFlight = null; if (view.slots) showSlots(view.slots); }
    if (m.type === "error" || m.type === "warning") $("log").textContent = `${m.type}: ${m.message}`;
    show();
  };
}
setInterval(() => { if (!document.hidden) send({ type: "state.get" }); }, 1000); // position, buffer, underruns, latency, Link

// -- audio, the meter and the scrolling waveform ------------------------------------------------------
// The page shares the CPU with the engine on a performer's laptop, so it draws little: the meter and
// waveform at most DRAW_FPS times a second and only when audio arrived, from a fixed ring of levels
// (no allocation per chunk or frame), nothing while the tab is hidden (BENCHMARKS.md: the page's cost).
const DRAW_FPS = 15, COLUMNS = 600;
const lows = new Float32Array(COLUMNS), highs = new Float32Array(COLUMNS), rmss = new Float32Array(COLUMNS);
let column = 0, fresh = false; // column: chunks arrived so far (the ring's write position)
function subscribeAudio() { send({ type: "audio.subscribe", enabled: true, codec: "f32" }); }
function onAudio(buf) {
  const dv = new DataView(buf);
  if (dv.getUint32(0, true) !== 0x414c474d || dv.getUint8(5) !== 0) return; // "MGLA", f32
  st.frames++; st.bytes += buf.byteLength;
  const pcm = new Float32Array(buf, 24);
  let lo = 0, hi = 0, sq = 0;
  for (let i = 0; i < pcm.length; i++) { const x = pcm[i]; if (x < lo) lo = x; if (x > hi) hi = x; sq += x * x; }
  const at = column++ % COLUMNS; lows[at] = lo; highs[at] = hi; rmss[at] = Math.sqrt(sq / Math.max(pcm.length, 1));
  fresh = true;
  if (node) node.port.postMessage(pcm, [pcm.buffer]); // handed over, not copied
}
function draw() { // DRAW_FPS times a second once listening (no animation-frame loop: a page at rest costs nothing)
  if (!fresh || document.hidden) return;
  fresh = false;
  const w = $("wave"), g = w.getContext("2d"), H = w.height, W = Math.min(w.width, COLUMNS), n = Math.min(column, W);
  let loudest = 0.05; // the loudest in view fills it
  for (let x = 0; x < n; x++) { const i = (column - 1 - x) % COLUMNS; loudest = Math.max(loudest, -lows[i], highs[i]); }
  const scale = H / 2 / loudest;
  g.fillStyle = "#000"; g.fillRect(0, 0, w.width, H); g.strokeStyle = "#6c6"; g.beginPath();
  for (let x = 0; x < n; x++) {
    const i = (column - 1 - x) % COLUMNS, px = W - 1 - x;
    g.moveTo(px, H / 2 - highs[i] * scale); g.lineTo(px, H / 2 - lows[i] * scale + 1);
  }
  g.stroke();
  let rms = 0, peak = 0;
  for (let x = 0; x < Math.min(column, 5); x++) { const i = (column - 1 - x) % COLUMNS; rms = Math.max(rms, rmss[i]); peak = Math.max(peak, -lows[i], highs[i]); }
  const m = $("meter"), mg = m.getContext("2d");
  mg.fillStyle = "#222"; mg.fillRect(0, 0, m.width, m.height);
  mg.fillStyle = peak >= 1 ? "#c33" : "#3a6"; mg.fillRect(0, 0, Math.min(1, rms * 2) * m.width, m.height);
  mg.fillStyle = "#ddd"; mg.fillRect(Math.min(1, peak) * m.width - 2, 0, 2, m.height);
}
function offer() { // only what this checkpoint can do: melody and style rows for their checkpoints
  $("melodyRow").hidden = !model.melody; $("styleRow").hidden = !model.style;
}
async function startAudio() {
  if (ctx) return;
  $("start").textContent = "Listening…"; $("start").disabled = true;
  ctx = new AudioContext({ sampleRate: st.rate });
  await ctx.audioWorklet.addModule("worklet.js");
  node = new AudioWorkletNode(ctx, "jitter-player", { outputChannelCount: [2], processorOptions: { channels: st.channels, targetMs: 150 } });
  node.port.onmessage = (e) => { st.bufferMs = e.data.bufferMs; st.underflows = e.data.underflows; };
  node.connect(ctx.destination);
  await ctx.resume();
  $("start").textContent = "Listening"; $("start").classList.add("on");
  subscribeAudio(); setInterval(draw, 1000 / DRAW_FPS);
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
buildSlots(); showHistory(); connect(); show();
if (params.get("listen")) setTimeout(startAudio, 500); // ?listen=1: play at once (where autoplay is allowed)

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
