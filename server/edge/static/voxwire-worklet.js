// Voxwire microphone capture: resamples the input to `rate` Hz (linear interpolation,
// continuous across blocks), converts it to pcm16 little-endian and posts one chunk of
// `chunkMs` milliseconds at a time: {pcm: ArrayBuffer, level: peak 0..1}.
class VoxwireCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    const rate = opts.rate || 24000;
    this.step = sampleRate / rate; // input samples per output sample
    this.size = Math.round((rate * (opts.chunkMs || 40)) / 1000);
    this.chunk = new DataView(new ArrayBuffer(this.size * 2));
    this.filled = 0;
    this.peak = 0;
    this.t = 0; // position of the next output sample, in input samples from this block's start
    this.last = 0; // the previous block's last sample, at position -1
  }

  process(inputs) {
    const x = inputs[0] && inputs[0][0];
    if (!x || x.length === 0) return true;
    const n = x.length;
    while (this.t < n - 1) {
      const i = Math.floor(this.t);
      const a = i < 0 ? this.last : x[i];
      const s = a + (x[i + 1] - a) * (this.t - i);
      this.push(s);
      this.t += this.step;
    }
    this.t -= n;
    this.last = x[n - 1];
    return true;
  }

  push(s) {
    const v = Math.max(-1, Math.min(1, s));
    this.peak = Math.max(this.peak, Math.abs(v));
    this.chunk.setInt16(this.filled * 2, Math.round(v * 32767), true);
    this.filled += 1;
    if (this.filled === this.size) {
      const pcm = this.chunk.buffer;
      this.port.postMessage({ pcm, level: this.peak }, [pcm]);
      this.chunk = new DataView(new ArrayBuffer(this.size * 2));
      this.filled = 0;
      this.peak = 0;
    }
  }
}

registerProcessor("voxwire-capture", VoxwireCapture);
