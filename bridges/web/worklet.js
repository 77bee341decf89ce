// Plays interleaved float32 chunks from a jitter buffer. Underflow plays silence and is counted.
class JitterPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.channels = options.processorOptions.channels;
    this.size = sampleRate * 4 * this.channels;
    this.buf = new Float32Array(this.size);
    this.w = 0; this.r = 0; this.started = false; this.underflows = 0; this.played = 0;
    this.target = Math.round(sampleRate * options.processorOptions.targetMs / 1000);
    this.port.onmessage = (e) => {
      const d = e.data;
      for (let i = 0; i < d.length; i++) { this.buf[this.w % this.size] = d[i]; this.w++; }
      if (this.w - this.r > this.size) this.r = this.w - this.size; // overflow: drop the oldest
    };
    this.tick = 0;
  }
  process(inputs, outputs) {
    const out = outputs[0], n = out[0].length, ch = this.channels;
    const avail = (this.w - this.r) / ch;
    if (!this.started && avail >= this.target) this.started = true;
    for (let i = 0; i < n; i++) {
      if (this.started && this.r < this.w) {
        for (let c = 0; c < out.length; c++) out[c][i] = this.buf[(this.r + Math.min(c, ch - 1)) % this.size];
        this.r += ch; this.played++;
      } else {
        for (let c = 0; c < out.length; c++) out[c][i] = 0;
        if (this.started) { this.underflows++; this.started = false; }
      }
    }
    if (++this.tick % 20 === 0) this.port.postMessage({ bufferMs: 1000 * (this.w - this.r) / ch / sampleRate, underflows: this.underflows, played: this.played });
    return true;
  }
}
registerProcessor("jitter-player", JitterPlayer);
