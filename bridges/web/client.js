// The browser client: WebSocket control + audio. The server speaks the protocol in bridges/ws.py.
const params = new URLSearchParams(location.search);
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/${params.get("token") ? "?token=" + encodeURIComponent(params.get("token")) : ""}`;
const $ = (id) => document.getElementById(id);
const st = { frames: 0, bytes: 0, bufferMs: 0, underflows: 0, lastLatency: null, state: "?", updated: 0, rate: 32000, channels: 1 };
// the server's state as last heard (session.created, state, state.changed): what every client shows
const view = {};
window.musicgenView = view;
let ws, ctx, node, nextId = 1; const sent = new Map();
const DIGITS = { cfg: 1, temperature: 2, top_k: 0, fade: 1 };
const dragging = new Set();

function show() {
  $("status").textContent =
    `engine ${st.state} | audio frames ${st.frames} | buffer ${st.bufferMs.toFixed(0)} ms | underflows ${st.underflows}` +
    ` | change applied in ${st.lastLatency === null ? "-" : st.lastLatency.toFixed(0) + " ms"}`;
}
function label(id) {
  const v = Number($(id).value);
  $(id + "V").textContent = id === "top_k" && v === 0 ? "off" : v.toFixed(DIGITS[id]);
}
// follow the server: every control shows the value that sounds, whoever set it (unless it is being dragged)
function applyState(changes) {
  Object.assign(view, changes);
  if (changes.state !== undefined) st.state = changes.state;
  if (changes.prompts !== undefined && document.activeElement !== $("prompt")) {
    $("prompt").value = view.prompts.map((p) => p.text).join(" | ");
  }
  if (changes.melody !== undefined) $("melody").textContent = changes.melody;
  for (const id of Object.keys(DIGITS)) {
    if (changes[id] !== undefined && !dragging.has(id)) { $(id).value = changes[id]; label(id); }
  }
}
function send(obj) { obj.event_id = String(nextId++); sent.set(obj.event_id, performance.now()); ws.send(JSON.stringify(obj)); return obj.event_id; }

function connect() {
  ws = new WebSocket(wsUrl); ws.binaryType = "arraybuffer";
  ws.onopen = () => { send({ type: "audio.subscribe", enabled: true, codec: "f32" }); };
  ws.onclose = () => { st.state = "disconnected"; show(); setTimeout(connect, 1000); };
  ws.onmessage = (e) => {
    if (typeof e.data !== "string") return onAudio(e.data);
    const m = JSON.parse(e.data);
    if (m.type === "session.created") applyState(m.state);
    if (m.type === "audio.subscribed") { st.rate = m.sample_rate; st.channels = m.channels; }
    if (m.type === "state") applyState(m.state);
    if (m.type === "state.changed") applyState(m.changes);
    if (m.type === "session.updated") {
      st.updated++;
      if (sent.has(m.event_id)) st.lastLatency = performance.now() - sent.get(m.event_id);
      if (m.applied.some((a) => ["play", "pause", "stop", "reset"].includes(a))) send({ type: "state.get" });
    }
    if (m.type === "error" || m.type === "warning") $("log").textContent = `${m.type}: ${m.message}`;
    show();
  };
}

function onAudio(buf) {
  const view = new DataView(buf);
  const magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2), view.getUint8(3));
  if (magic !== "MGLA" || view.getUint8(5) !== 0) return;
  st.frames++; st.bytes += buf.byteLength;
  if (node) node.port.postMessage(new Float32Array(buf, 24));
  show();
}

async function startAudio() {
  if (ctx) return;
  ctx = new AudioContext({ sampleRate: st.rate });
  await ctx.audioWorklet.addModule("worklet.js");
  node = new AudioWorkletNode(ctx, "jitter-player", { outputChannelCount: [2], processorOptions: { channels: st.channels, targetMs: 150 } });
  node.port.onmessage = (e) => { st.bufferMs = e.data.bufferMs; st.underflows = e.data.underflows; show(); };
  node.connect(ctx.destination);
  await ctx.resume();
}

$("start").onclick = startAudio;
$("promptForm").onsubmit = (e) => { e.preventDefault(); send({ type: "session.update", prompt: $("prompt").value, fade: Number($("fade").value) }); $("prompt").blur(); };
for (const id of ["cfg", "temperature", "top_k", "fade"]) {
  $(id).oninput = () => { dragging.add(id); label(id); };
  $(id).onchange = () => { dragging.delete(id); send({ type: "session.update", [id]: Number($(id).value) }); };
}
document.querySelectorAll("[data-action]").forEach((b) => { b.onclick = () => send({ type: "playback.control", action: b.dataset.action }); });
$("continue").onclick = () => send({ type: "generate.continue", source: "history", seconds: 8 });
$("melodyHistory").onclick = () => send({ type: "melody.set", source: "history", seconds: 8 });
$("melodyOff").onclick = () => send({ type: "melody.set", source: "off" });
connect(); show();

// ?selftest=1: for automated browser tests - play, send a prompt, report what arrived in the title.
if (params.get("selftest")) {
  (async () => {
    await new Promise((r) => setTimeout(r, 500));
    await startAudio();
    const id = send({ type: "session.update", prompt: "selftest prompt from the browser" });
    const t0 = performance.now();
    while (performance.now() - t0 < 8000 && (st.updated < 1 || st.frames < 20)) await new Promise((r) => setTimeout(r, 100));
    document.title = `selftest frames=${st.frames} updated=${st.updated} worklet=${node ? 1 : 0}`;
  })();
}
