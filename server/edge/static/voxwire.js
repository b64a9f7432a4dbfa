/* Voxwire voice widget. Embed it in any page:
 *
 *   <script src="http://HOST:PORT/voxwire.js"></script>
 *   <voxwire-widget></voxwire-widget>
 *
 * Attributes: url (the Realtime WebSocket; default ws(s)://<this script's host>/v1/realtime;
 * WebRTC calls go to the same path + "/calls" over http(s)), transport ("auto", the default:
 * WebRTC, and the WebSocket when WebRTC cannot connect; "webrtc"; "websocket"), instructions
 * (the session's system prompt), key (for servers that need one: a short-lived token from
 * POST /v1/realtime/client_secrets, or an API key; sent the way browser Realtime clients send
 * it: a Bearer header with WebRTC's offer, a subprotocol with the WebSocket), kiosk
 * (full-screen, always listening, camera, reconnects by itself) and idle (kiosk: seconds
 * without speech before the idle screen, 60).
 *
 * With WebRTC the microphone goes out as an Opus track and the answer comes back as one,
 * paced by the server, which also cuts it off on barge-in and truncates what was not heard;
 * events travel on the data channel "oai-events". With the WebSocket, audio travels as
 * base64 pcm16 in the events, and the widget schedules playback and truncates itself.
 *
 * The element exposes `state` (connected, transport, transcripts, answers, metrics,
 * playedSeconds, errors, ...), `start()`, `stop()`, `muted`, `send(event)`, and dispatches bubbling DOM
 * events: voxwire-event (every server event), voxwire-state, voxwire-transcript,
 * voxwire-answer, voxwire-metrics, voxwire-interrupted and voxwire-error.
 */
(() => {
  "use strict";

  const SCRIPT_URL = (document.currentScript && document.currentScript.src) || location.href;
  const WORKLET_URL = new URL("voxwire-worklet.js", SCRIPT_URL).href;
  const RATE = 24000; // pcm16 mono, both ways
  const RTC_COUNT_MS = 250; // WebRTC: how often `state.playedSeconds` counts the playback
  const CHUNK_MS = 40;
  const START_MARGIN_S = 0.05;
  const RTC_OPEN_MS = 10000; // offer to open data channel, at most; then the WebSocket
  // WebRTC answers that the WebSocket would get too: no point falling back.
  const FINAL_REFUSALS = [401, 403, 429, 503];
  const NO_WEBRTC = [404, 405, 501]; // the server takes no WebRTC: stop asking it
  const TRANSPORTS = { webrtc: "WebRTC", websocket: "WebSocket" };
  const MAX_LOG = 40; // entries in the widget's conversation log
  const MAX_KEEP = 100; // entries in each list of `state` (a kiosk runs for weeks)
  const STAGES = [
    ["endpoint", "End of turn"],
    ["asr", "ASR"],
    ["llm_first_token", "LLM first token"],
    ["tts_first_audio", "TTS first audio"],
  ];

  function defaultUrl() {
    const url = new URL("/v1/realtime", SCRIPT_URL);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  const RESUME_PARAM = "voxwire_resume"; // the server's extension: go on with a session
  const NOT_RESUMABLE = [400, 404, 410]; // no history, another key's or unknown, too old

  /** ``url`` asking to go on with session ``resume`` (when there is one). */
  function resuming(url, resume) {
    if (!resume) return url;
    const out = new URL(url);
    out.searchParams.set(RESUME_PARAM, resume);
    return out.href;
  }

  /** WebRTC's offer URL for a Realtime WebSocket URL: the same path + "/calls". */
  function callsUrl(wsUrl) {
    const url = new URL(wsUrl);
    url.protocol = url.protocol === "wss:" ? "https:" : "http:";
    url.pathname = `${url.pathname.replace(/\/+$/, "")}/calls`;
    url.search = "";
    return url.href;
  }

  function toBase64(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function fromBase64(b64) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes;
  }

  function clamp(v, lo, hi) {
    return Math.max(lo, Math.min(hi, v));
  }

  function keep(list, value) {
    list.push(value);
    if (list.length > MAX_KEEP) list.shift();
  }

  /** The WebSocket transport: events as JSON text, audio as base64 pcm16 inside them. */
  class SocketLink {
    constructor(client, url, key) {
      this.kind = "websocket";
      this.ws = key ? new WebSocket(url, ["realtime", `openai-insecure-api-key.${key}`])
        : new WebSocket(url);
      this.opened = false;
      this.ws.onopen = () => {
        this.opened = true;
        client.onOpen(this);
      };
      this.ws.onmessage = (m) => client.onMessage(this, m.data);
      this.ws.onclose = (e) => client.onLost(this, e.reason);
    }

    get open() {
      return this.ws.readyState === WebSocket.OPEN;
    }

    get backlog() {
      return this.ws.bufferedAmount;
    }

    get maxMessage() {
      return 4 << 20; // the server's default for an event with an image
    }

    send(text) {
      this.ws.send(text);
    }

    close() {
      this.ws.onclose = null;
      this.ws.close(1000);
    }
  }

  /** Why a WebRTC call did not connect; `status` is the server's HTTP answer, if any. */
  class CallFailed extends Error {
    constructor(message, status = 0) {
      super(message);
      this.status = status;
    }
  }

  /** The WebRTC transport: the microphone as an Opus track, the answer as an Opus track that
   * the server paces, events as JSON on the data channel "oai-events". */
  class RtcLink {
    constructor(client) {
      this.kind = "webrtc";
      this.client = client;
      this.pc = new RTCPeerConnection();
      this.dc = this.pc.createDataChannel("oai-events");
      this.audio = document.createElement("audio");
      this.audio.autoplay = true;
      this.callId = null;
      this.sender = null;
      this.timer = 0;
      this.opened = false;
    }

    /** Offer, answer, ICE, DTLS and the data channel: resolves once events can flow, or
     * throws a CallFailed. Events that arrive meanwhile already reach the client. */
    async connect(url, key, mic) {
      const { pc, dc, client } = this;
      this.sender = pc.addTrack(mic.getAudioTracks()[0], mic);
      pc.ontrack = (e) => {
        this.audio.srcObject = e.streams[0] || new MediaStream([e.track]);
        this.audio.play().catch(() => {}); // blocked until a tap: the kiosk asks for one
      };
      dc.onmessage = (m) => client.onMessage(this, m.data);
      const opened = new Promise((resolve, reject) => {
        dc.onopen = resolve;
        dc.onclose = () => reject(new CallFailed("the call's data channel closed"));
        pc.onconnectionstatechange = () => {
          if (pc.connectionState === "failed") reject(new CallFailed("ICE or DTLS failed"));
        };
        this.timer = setTimeout(() => reject(new CallFailed(
          `the call did not connect within ${RTC_OPEN_MS / 1000} s`)), RTC_OPEN_MS);
      });
      opened.catch(() => {}); // awaited below, once the answer is in
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const headers = { "Content-Type": "application/sdp" };
      if (key) headers.Authorization = `Bearer ${key}`;
      let reply;
      try {
        reply = await fetch(url, { method: "POST", body: offer.sdp, headers });
      } catch (err) {
        throw new CallFailed(`the call could not be placed (${err.message || err})`);
      }
      if (!reply.ok) {
        let why = reply.statusText;
        try {
          why = (await reply.json()).error.message || why;
        } catch {
          // not the server's JSON error
        }
        throw new CallFailed(`the server refused the call: ${reply.status} ${why}`,
          reply.status);
      }
      this.callId = (reply.headers.get("Location") || "").split("/").pop() || null;
      await pc.setRemoteDescription({ type: "answer", sdp: await reply.text() });
      await opened;
      this.opened = true;
      clearTimeout(this.timer);
      dc.onclose = () => client.onLost(this, "the call ended");
      pc.onconnectionstatechange = () => {
        const now = pc.connectionState;
        if (now === "failed" || now === "closed") client.onLost(this, "the connection failed");
      };
      client.onOpen(this);
    }

    get open() {
      return this.dc.readyState === "open";
    }

    get backlog() {
      return this.dc.bufferedAmount;
    }

    get maxMessage() {
      return (this.pc.sctp && this.pc.sctp.maxMessageSize) || 65536;
    }

    set muted(muted) {
      const track = this.sender && this.sender.track;
      if (track) track.enabled = !muted;
    }

    resume() {
      return this.audio.play().catch(() => {});
    }

    send(text) {
      this.dc.send(text);
    }

    close() {
      clearTimeout(this.timer);
      this.dc.onclose = this.dc.onmessage = this.pc.onconnectionstatechange = null;
      this.pc.ontrack = null;
      try {
        this.dc.close();
        this.pc.close();
      } catch {
        // already closed
      }
      this.audio.srcObject = null;
    }
  }

  /** The Realtime client: microphone in, speech out, events to `target` as DOM events. */
  class VoxwireClient {
    constructor(target) {
      this.target = target;
      this.opts = { url: defaultUrl(), transport: "auto", instructions: "", key: "", video: null,
                    reconnect: false };
      this.state = {
        running: false, connected: false, transport: null, fallback: null, sessionId: null,
        resumed: 0, phase: "offline",
        status: "Press Start to talk",
        muted: false, idle: false, partial: "", transcripts: [], answers: [], metrics: null,
        playedSeconds: 0, errors: [], interruptions: [], framesSent: 0,
      };
      this.onlevel = null;
      this.ctx = this.out = this.node = this.mic = this.cam = this.link = null;
      this.noWebrtc = false; // the server said it takes no WebRTC calls
      this.resumeId = null; // the session to go on with on the next connection
      this.resumeTries = 0; // WebSockets refused (for a reason a page cannot see) meanwhile
      this.rtcPlaying = null; // WebRTC: since when the server's playback was last counted
      this.rtcTimer = 0;
      this.retryTimer = 0;
      this.frameTimer = 0;
      this.backoff = 500;
      this.sources = []; // scheduled output: {src, itemId, start, dur, counted}
      this.segments = []; // the scheduled output of `playingItem`
      this.playingItem = null;
      this.playhead = 0;
      this.interrupted = new Set();
      this.activeItems = new Set(); // assistant items whose response is still running
      this.pendingTruncate = null;
      this.answerOf = new Map(); // item id -> its answer's number, counted from the first
      this.answersDropped = 0;
    }

    emit(name, detail) {
      this.target.dispatchEvent(
        new CustomEvent(`voxwire-${name}`, { detail, bubbles: true, composed: true }));
    }

    setStatus(status, phase, isError = false) {
      this.state.status = status;
      if (phase) this.state.phase = phase;
      this.emit("state", { ...this.state, isError });
    }

    setPhase(phase) {
      if (this.state.phase !== phase) this.setStatus(this.state.status, phase);
    }

    report(message, code = "client_error") {
      const err = { code, message };
      keep(this.state.errors, err);
      this.emit("error", err);
      this.setStatus(message, null, true);
    }

    // ------------------------------------------------------------------ lifecycle

    async start(opts) {
      if (this.state.running) return;
      Object.assign(this.opts, opts);
      this.state.running = true;
      this.setStatus("Starting…", "offline");
      try {
        if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
          throw new Error("This page cannot use the microphone: it needs HTTPS or localhost.");
        }
        this.ctx = new AudioContext();
        const ctx = this.ctx;
        const worklet = ctx.audioWorklet.addModule(WORKLET_URL);
        worklet.catch(() => {}); // awaited below, after the microphone
        const mic = await navigator.mediaDevices.getUserMedia({
          audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true,
                   channelCount: 1 },
        });
        if (this.ctx !== ctx) {
          VoxwireClient.release(mic); // stopped meanwhile
          return;
        }
        this.mic = mic;
        await worklet;
        if (this.ctx !== ctx) return;
        this.node = new AudioWorkletNode(ctx, "voxwire-capture",
          { processorOptions: { rate: RATE, chunkMs: CHUNK_MS } });
        this.node.port.onmessage = (e) => this.onChunk(e.data);
        const sink = ctx.createGain(); // keeps the capture node pulled, silently
        sink.gain.value = 0;
        ctx.createMediaStreamSource(this.mic).connect(this.node).connect(sink)
          .connect(ctx.destination);
        this.out = ctx.createGain();
        this.out.connect(ctx.destination);
        if (this.opts.video) await this.startCamera(this.opts.video);
        this.connect();
      } catch (err) {
        const name = err && err.name;
        const why = name === "NotAllowedError" ? "Microphone permission was denied."
          : name === "NotFoundError" ? "No microphone was found." : String(err.message || err);
        this.stop();
        this.report(why);
      }
    }

    stop(message) {
      const s = this.state;
      if (!message) this.resumeId = null; // stopped on purpose: the next Start is new
      s.running = false;
      s.connected = false;
      clearTimeout(this.retryTimer);
      clearInterval(this.frameTimer);
      this.dropLink();
      VoxwireClient.release(this.mic);
      VoxwireClient.release(this.cam);
      this.mic = this.cam = null;
      if (this.opts.video) this.opts.video.srcObject = null;
      if (this.node) {
        this.node.port.onmessage = null;
        this.node.disconnect();
        this.node = null;
      }
      if (this.ctx) this.ctx.close().catch(() => {});
      this.ctx = this.out = null;
      this.setStatus(message || "Stopped", "offline", Boolean(message));
    }

    static release(stream) {
      if (stream) for (const track of stream.getTracks()) track.stop();
    }

    resume() {
      if (this.link && this.link.resume) this.link.resume();
      return this.ctx ? this.ctx.resume() : Promise.resolve();
    }

    setMuted(muted) {
      this.state.muted = muted;
      if (this.link && this.link.kind === "webrtc") this.link.muted = muted;
      this.setStatus(this.state.status);
    }

    send(event) {
      const link = this.link;
      if (!link || !link.open) return false;
      const text = JSON.stringify(event);
      if (text.length > link.maxMessage) return false;
      link.send(text);
      return true;
    }

    // ------------------------------------------------------------------ the connection

    /** Connect over WebRTC when it is wanted and works, else over the WebSocket. */
    async connect() {
      clearTimeout(this.retryTimer);
      this.setStatus("Connecting…", "offline");
      const want = this.opts.transport;
      const resume = this.resumeId;
      if (want !== "websocket" && !this.noWebrtc) {
        if (typeof RTCPeerConnection === "undefined") {
          this.fallBack(want, new CallFailed("this browser has no WebRTC"));
        } else {
          const link = new RtcLink(this);
          this.link = link;
          try {
            await link.connect(resuming(callsUrl(this.opts.url), resume), this.opts.key,
              this.mic);
            return;
          } catch (err) {
            if (this.link !== link) return; // stopped or renewed meanwhile
            this.link = null;
            link.close();
            if (resume && NOT_RESUMABLE.includes(err.status)) {
              this.resumeId = null; // that conversation cannot go on: a new one, now
              this.connect();
              return;
            }
            if (!this.fallBack(want, err)) return;
          }
        }
        if (want === "webrtc") return;
      }
      this.link = new SocketLink(this, resuming(this.opts.url, resume), this.opts.key);
    }

    /** WebRTC did not connect: say why, and whether to go on with the WebSocket. */
    fallBack(want, err) {
      const status = err.status || 0;
      if (NO_WEBRTC.includes(status)) this.noWebrtc = true;
      this.state.fallback = err.message;
      if (want === "webrtc" || FINAL_REFUSALS.includes(status)) {
        this.lost(`WebRTC: ${err.message}`);
        return false;
      }
      return true;
    }

    dropLink() {
      const link = this.link;
      this.link = null;
      if (link) link.close();
      this.activeItems.clear();
      this.pendingTruncate = null;
      this.rtcStopped();
      this.stopPlayback();
    }

    /** A fresh session (a new conversation) on a new connection. */
    renew() {
      if (!this.state.running || !this.link) return;
      this.resumeId = null;
      this.dropLink();
      this.connect();
    }

    onOpen(link) {
      if (link !== this.link) return;
      this.state.transport = link.kind;
      if (link.kind === "webrtc") link.muted = this.state.muted;
      this.send(this.sessionUpdate());
    }

    onMessage(link, data) {
      if (link !== this.link) return;
      let event;
      try {
        event = JSON.parse(data);
      } catch {
        return;
      }
      this.onEvent(event);
    }

    onLost(link, reason) {
      if (link !== this.link) return;
      // A WebSocket refused before it opened does not say why: after two, give up resuming.
      if (link.kind === "websocket" && !link.opened && this.resumeId && ++this.resumeTries >= 2) {
        this.resumeId = null;
      }
      if (link.opened && this.state.sessionId) this.resumeId = this.state.sessionId;
      this.dropLink();
      this.lost(`Connection lost${reason ? ` (${reason})` : ""}`);
    }

    lost(why) {
      this.state.connected = false;
      if (!this.state.running) return;
      if (this.opts.reconnect) {
        const wait = this.backoff;
        this.backoff = Math.min(this.backoff * 2, 10000);
        this.setStatus(`${why}; reconnecting in ${(wait / 1000).toFixed(1)} s`, "offline", true);
        this.retryTimer = setTimeout(() => this.connect(), wait);
      } else {
        this.stop(`${why}. Press Start to reconnect.`);
      }
    }

    sessionUpdate() {
      const format = { type: "audio/pcm", rate: RATE };
      // WebRTC's audio is Opus on the tracks, whatever the session's formats say.
      const session = this.state.transport === "webrtc" ? { type: "realtime" }
        : { type: "realtime", audio: { input: { format }, output: { format } } };
      if (this.opts.instructions) session.instructions = this.opts.instructions;
      // Extensions: per-turn latency (voxwire.turn.metrics) for the panel; camera frames.
      session.voxwire = { metrics: true };
      if (this.opts.video) session.voxwire.attach_latest_frame = true;
      return { type: "session.update", session };
    }

    onChunk(data) {
      if (this.onlevel) this.onlevel(this.state.muted ? 0 : data.level);
      const link = this.link; // WebRTC sends the microphone's own track
      if (this.state.muted || !link || link.kind !== "websocket" || !link.open) return;
      if (link.backlog > 1 << 20) return; // the network is not keeping up: drop
      const audio = toBase64(new Uint8Array(data.pcm));
      link.send(JSON.stringify({ type: "input_audio_buffer.append", audio }));
    }

    // ------------------------------------------------------------------ server events

    onEvent(ev) {
      const s = this.state;
      switch (ev.type) {
        case "session.created": {
          const resumed = Boolean(this.resumeId) && ev.session.id === this.resumeId;
          s.connected = true;
          s.sessionId = ev.session.id;
          if (resumed) s.resumed += 1;
          this.resumeId = null;
          this.resumeTries = 0;
          this.backoff = 500;
          this.setStatus(`Connected to ${this.opts.url} over ${TRANSPORTS[s.transport]}` +
            (resumed ? "; the conversation goes on" : ""), "listening");
          break;
        }
        case "input_audio_buffer.speech_started":
          this.interrupt();
          s.partial = "";
          this.emit("transcript", { itemId: ev.item_id, text: "", final: false });
          this.setPhase("hearing");
          break;
        case "input_audio_buffer.speech_stopped":
          this.setPhase("thinking");
          break;
        case "conversation.item.input_audio_transcription.delta":
          s.partial += ev.delta;
          this.emit("transcript", { itemId: ev.item_id, text: s.partial, final: false });
          break;
        case "conversation.item.input_audio_transcription.completed": {
          const text = (ev.transcript || "").trim();
          s.partial = "";
          if (text) keep(s.transcripts, text);
          this.emit("transcript", { itemId: ev.item_id, text, final: true });
          if (!text && s.phase === "thinking") this.setPhase("listening");
          break;
        }
        case "conversation.item.input_audio_transcription.failed":
          s.partial = "";
          this.emit("transcript", { itemId: ev.item_id, text: "", final: true });
          this.setPhase("listening");
          break;
        case "response.output_item.added":
          if (ev.item && ev.item.type === "message") this.activeItems.add(ev.item.id);
          break;
        case "response.output_audio_transcript.delta":
        case "response.output_text.delta":
          this.answer(ev.item_id, s.answers[this.answerIndex(ev.item_id)] + ev.delta, false);
          break;
        case "response.output_audio_transcript.done":
        case "response.output_text.done": {
          const text = ev.type.endsWith("transcript.done") ? ev.transcript : ev.text;
          if (text) this.answer(ev.item_id, text, true);
          break;
        }
        case "conversation.item.truncated": // show what the listener actually heard
          if (s.transport === "webrtc") this.cutOff(ev.item_id, ev.audio_end_ms);
          this.send({ type: "conversation.item.retrieve", item_id: ev.item_id });
          break;
        case "output_audio_buffer.started": // WebRTC: the server plays the answer
          if (this.rtcPlaying === null) {
            this.rtcPlaying = performance.now();
            this.rtcTimer = setInterval(() => this.rtcCount(), RTC_COUNT_MS);
          }
          this.setPhase("speaking");
          break;
        case "output_audio_buffer.stopped":
        case "output_audio_buffer.cleared":
          this.rtcStopped();
          if (s.phase === "speaking") this.setPhase("listening");
          break;
        case "conversation.item.retrieved": {
          const item = ev.item || {};
          const part = (item.content || [])[0] || {};
          if (this.answerOf.has(item.id) && typeof part.transcript === "string") {
            this.answer(item.id, part.transcript, true);
          }
          break;
        }
        case "response.output_audio.delta":
          if (!this.interrupted.has(ev.item_id)) this.play(ev.item_id, ev.delta);
          break;
        case "response.done": {
          const response = ev.response || {};
          for (const item of response.output || []) this.activeItems.delete(item.id);
          if (response.status === "cancelled") this.interrupt();
          this.flushTruncate();
          if (s.phase === "thinking" && !this.sources.length) this.setPhase("listening");
          break;
        }
        case "voxwire.turn.metrics":
          s.metrics = ev;
          this.emit("metrics", ev);
          break;
        case "error": {
          const e = ev.error || {};
          this.report(e.message || "unknown error", e.code || "error");
          break;
        }
      }
      this.emit("event", ev);
    }

    answerIndex(itemId) {
      const answers = this.state.answers;
      let n = this.answerOf.get(itemId);
      if (n === undefined) {
        n = this.answersDropped + answers.push("") - 1;
        this.answerOf.set(itemId, n);
        if (answers.length > MAX_KEEP) {
          answers.shift();
          this.answersDropped += 1;
          this.answerOf.delete(this.answerOf.keys().next().value);
        }
      }
      return n - this.answersDropped;
    }

    answer(itemId, text, final) {
      this.state.answers[this.answerIndex(itemId)] = text;
      this.emit("answer", { itemId, text, final });
    }

    // ------------------------------------------------------------------ playback

    play(itemId, b64) {
      const ctx = this.ctx;
      if (!ctx || !this.out) return;
      const bytes = fromBase64(b64);
      const n = bytes.length >> 1;
      if (!n) return;
      const buffer = ctx.createBuffer(1, n, RATE);
      const samples = buffer.getChannelData(0);
      const view = new DataView(bytes.buffer);
      for (let i = 0; i < n; i++) samples[i] = view.getInt16(2 * i, true) / 32768;
      if (this.playhead < ctx.currentTime) this.playhead = ctx.currentTime + START_MARGIN_S;
      const src = ctx.createBufferSource();
      src.buffer = buffer;
      src.connect(this.out);
      const seg = { src, itemId, start: this.playhead, dur: buffer.duration, counted: false };
      src.onended = () => {
        if (!seg.counted) {
          seg.counted = true;
          this.state.playedSeconds += seg.dur;
        }
        this.sources = this.sources.filter((x) => x !== seg);
        if (!this.sources.length && this.state.phase === "speaking") this.setPhase("listening");
      };
      src.start(seg.start);
      this.playhead += seg.dur;
      this.sources.push(seg);
      if (itemId !== this.playingItem) {
        this.playingItem = itemId;
        this.segments = [];
      }
      this.segments.push(seg);
      this.setPhase("speaking");
    }

    /** Stop all scheduled audio at once; returns the seconds of `playingItem` heard. */
    stopPlayback() {
      const ctx = this.ctx;
      const now = ctx ? ctx.currentTime - (ctx.outputLatency || 0) : 0;
      let heard = 0;
      for (const seg of this.segments) heard += clamp(now - seg.start, 0, seg.dur);
      for (const seg of this.sources) {
        if (!seg.counted) {
          seg.counted = true;
          this.state.playedSeconds += clamp(now - seg.start, 0, seg.dur);
        }
        seg.src.onended = null;
        try {
          seg.src.stop();
        } catch {
          // already stopped
        }
      }
      this.sources = [];
      this.segments = [];
      this.playhead = 0;
      if (this.state.phase === "speaking") this.setPhase("listening");
      return heard;
    }

    /** Barge-in: silence the answer now, and tell the server how much of it was heard. */
    interrupt() {
      const ctx = this.ctx;
      if (!ctx || !this.sources.some((seg) => seg.start + seg.dur > ctx.currentTime)) return;
      const itemId = this.playingItem;
      const audioEndMs = Math.round(this.stopPlayback() * 1000);
      if (!itemId) return;
      this.interrupted.add(itemId);
      if (this.interrupted.size > MAX_KEEP) {
        this.interrupted.delete(this.interrupted.values().next().value);
      }
      this.cutOff(itemId, audioEndMs);
      // The server settles an item's audio when its response ends, so truncate after that.
      this.pendingTruncate = {
        type: "conversation.item.truncate", item_id: itemId, content_index: 0,
        audio_end_ms: audioEndMs,
      };
      this.flushTruncate();
    }

    /** An answer cut off after `audioEndMs` of it was heard. */
    cutOff(itemId, audioEndMs) {
      keep(this.state.interruptions, { itemId, audioEndMs });
      this.emit("interrupted", { itemId, audioEndMs });
    }

    /** WebRTC: count what the server has played since the last count, as it plays (an
     * answer may play for a minute before its `output_audio_buffer.stopped`). */
    rtcCount() {
      if (this.rtcPlaying === null) return;
      const now = performance.now();
      this.state.playedSeconds += (now - this.rtcPlaying) / 1000;
      this.rtcPlaying = now;
    }

    /** WebRTC: the server's playback stopped; count the rest of what it played. */
    rtcStopped() {
      this.rtcCount();
      this.rtcPlaying = null;
      clearInterval(this.rtcTimer);
      this.rtcTimer = 0;
    }

    flushTruncate() {
      const t = this.pendingTruncate;
      if (t && !this.activeItems.has(t.item_id)) {
        this.pendingTruncate = null;
        this.send(t);
      }
    }

    get playing() {
      return this.sources.length > 0 || this.rtcPlaying !== null;
    }

    // ------------------------------------------------------------------ camera

    async startCamera(video) {
      const ctx = this.ctx;
      let cam;
      try {
        cam = await navigator.mediaDevices.getUserMedia(
          { video: { width: { ideal: 640 }, height: { ideal: 480 } } });
      } catch (err) {
        this.report(`Camera unavailable: ${err.message || err.name}`, "camera_unavailable");
        return;
      }
      if (this.ctx !== ctx) {
        VoxwireClient.release(cam);
        return;
      }
      this.cam = cam;
      video.muted = true;
      video.playsInline = true;
      video.srcObject = cam;
      video.play().catch(() => {});
      this.frameTimer = setInterval(() => this.sendFrame(video), 1000);
    }

    sendFrame(video) {
      if (!this.state.connected || video.readyState < 2 || !video.videoWidth) return;
      const width = Math.min(640, video.videoWidth);
      const height = Math.round((video.videoHeight * width) / video.videoWidth);
      const canvas = (this.canvas = this.canvas || document.createElement("canvas"));
      canvas.width = width;
      canvas.height = height;
      canvas.getContext("2d").drawImage(video, 0, 0, width, height);
      const room = this.link ? this.link.maxMessage - 256 : 0; // WebRTC's: 64 KiB or so
      for (const quality of [0.7, 0.5, 0.3]) {
        const imageUrl = canvas.toDataURL("image/jpeg", quality);
        if (imageUrl.length > room) continue;
        const sent = this.send({ type: "voxwire.input_image.append", image_url: imageUrl });
        if (sent) this.state.framesSent += 1;
        return;
      }
    }
  }

  // -------------------------------------------------------------------- the element

  const STYLE = `
:host{display:block;max-width:30rem;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2433}
*{box-sizing:border-box}
.card{border:1px solid #d9dee8;border-radius:14px;background:#fff;box-shadow:0 4px 18px rgba(20,30,60,.08);overflow:hidden}
header{display:flex;align-items:center;gap:.55rem;padding:.7rem 1rem;border-bottom:1px solid #eef0f5}
.dot{width:.65rem;height:.65rem;border-radius:50%;background:#b9c0cc;flex:none}
.on .dot{background:#22a35a}
.title{font-weight:650}
.phase{margin-left:auto;font-size:.85em;color:#5b6478}
.controls{display:flex;gap:.5rem;align-items:center;padding:.8rem 1rem}
button{font:inherit;border:0;border-radius:999px;padding:.45rem 1.1rem;cursor:pointer;background:#eef0f5;color:#1d2433}
button.start{background:#3056d3;color:#fff;min-width:5.5rem}
.running button.start{background:#c8343c}
button[aria-pressed=true]{background:#ffe3b3}
button:disabled{opacity:.45;cursor:default}
.meter{flex:1;height:.4rem;background:#eef0f5;border-radius:999px;overflow:hidden}
.meter i{display:block;height:100%;width:0;background:#22a35a;transition:width 60ms linear}
ol.log{list-style:none;margin:0;padding:.3rem 1rem;max-height:18rem;min-height:4rem;overflow-y:auto;display:flex;flex-direction:column}
.log li{margin:.3rem 0;padding:.45rem .75rem;border-radius:12px;max-width:88%}
.log li.user{background:#e8edff;align-self:flex-end}
.log li.assistant{background:#f1f2f5;align-self:flex-start}
.log li.partial{color:#5b6478;font-style:italic}
.log li.cut::after{content:" …";color:#8a92a6}
.log .empty{color:#8a92a6;align-self:center;font-size:.9em;margin:1rem 0}
.latency{display:flex;gap:1.2rem;align-items:center;border-top:1px solid #eef0f5;padding:.7rem 1rem;font-size:.85em;color:#5b6478}
.v2v{display:flex;flex-direction:column;align-items:center;min-width:6.5rem}
.v2v b{font-size:1.6em;color:#1d2433;font-variant-numeric:tabular-nums}
dl{display:grid;grid-template-columns:auto auto;gap:.1rem .9rem;margin:0}
dd{margin:0;text-align:right;color:#1d2433;font-variant-numeric:tabular-nums}
.status{padding:.5rem 1rem;font-size:.85em;color:#5b6478;border-top:1px solid #eef0f5;min-height:2.2em}
.status.error{color:#a4262c;background:#fdecea}
:host([kiosk]){position:fixed;inset:0;max-width:none;font-size:clamp(18px,2.3vw,34px);color:#f3f5fb;background:radial-gradient(ellipse at top,#1d2745,#0c1020 70%)}
.kiosk{position:relative;height:100%;display:grid;grid-template-columns:minmax(0,1fr) 24vw;grid-template-rows:auto auto minmax(0,1fr) auto auto;gap:2.5vh 4vw;padding:5vh 5vw}
.kiosk>*{grid-column:1}
.k-top{grid-column:1/-1;display:flex;align-items:center;gap:.8rem;color:#9fa9c7}
.k-top .dot{width:.9rem;height:.9rem}
.k-phase{font-size:1.1em}
.k-heard{font-size:1.7em;color:#b4bedc;min-height:1.3em}
.k-said{font-size:2.6em;font-weight:600;line-height:1.25;overflow:hidden}
.k-said.long{-webkit-mask-image:linear-gradient(transparent,#000 30%);mask-image:linear-gradient(transparent,#000 30%)}
.k-meter{width:12rem;height:.5rem;background:#252e4d;border-radius:999px;overflow:hidden}
.k-meter i{display:block;height:100%;width:0;background:#4ade80;transition:width 60ms linear}
.k-status{font-size:.75em;color:#8a94b5;min-height:1.2em}
.k-status.error{color:#ff9b94}
.k-lat{font-size:.75em;color:#6f7a9c;font-variant-numeric:tabular-nums}
video.cam{grid-column:2;grid-row:2/6;align-self:end;width:100%;border-radius:18px;transform:scaleX(-1);background:#000;box-shadow:0 8px 30px rgba(0,0,0,.45)}
.overlay{position:absolute;inset:0;grid-column:auto;display:none;flex-direction:column;align-items:center;justify-content:center;gap:2vh;text-align:center;background:rgba(9,12,24,.94);font-size:2.6em;cursor:pointer}
.overlay small{font-size:.45em;color:#9fa9c7}
.overlay.show{display:flex}
`;

  const WIDGET_HTML = `
<div class="card">
  <header><span class="dot"></span><span class="title">Voxwire</span><span class="phase">Offline</span></header>
  <div class="controls">
    <button class="start" type="button">Start</button>
    <button class="mute" type="button" aria-pressed="false" disabled>Mute</button>
    <div class="meter" aria-hidden="true"><i></i></div>
  </div>
  <ol class="log" aria-live="polite"><li class="empty">Press Start and ask a question.</li></ol>
  <section class="latency" aria-label="Latency of the last turn">
    <div class="v2v"><b data-stage="voice_to_voice">–</b><span>voice-to-voice</span></div>
    <dl>${STAGES.map(([k, label]) => `<dt>${label}</dt><dd data-stage="${k}">–</dd>`).join("")}<dt>Transport</dt><dd class="transport">–</dd></dl>
  </section>
  <div class="status" role="status"></div>
</div>`;

  const KIOSK_HTML = `
<div class="kiosk">
  <div class="k-top"><span class="dot"></span><span class="k-phase">Starting…</span><div class="k-meter" aria-hidden="true"><i></i></div></div>
  <div class="k-heard"></div>
  <div class="k-said" aria-live="polite"></div>
  <div class="k-status" role="status"></div>
  <div class="k-lat"></div>
  <video class="cam" muted playsinline autoplay></video>
  <div class="overlay idle"><span>Hello! Just start talking.</span><small>I'm listening.</small></div>
  <div class="overlay tap"><span>Tap to start</span><small class="why"></small></div>
</div>`;

  const PHASES = {
    offline: "Offline", listening: "Listening", hearing: "Hearing you", thinking: "Thinking…",
    speaking: "Speaking",
  };

  class VoxwireWidget extends HTMLElement {
    constructor() {
      super();
      this.attachShadow({ mode: "open" });
      this.client = new VoxwireClient(this);
      this.items = new Map(); // item id -> log entry
      this.lastActivity = Date.now();
      this.idleTimer = 0;
      this.rendered = false;
    }

    get state() {
      return this.client.state;
    }

    get contextTime() {
      return this.client.ctx ? this.client.ctx.currentTime : 0;
    }

    get playing() {
      return this.client.playing;
    }

    get kiosk() {
      return this.hasAttribute("kiosk");
    }

    get muted() {
      return this.state.muted;
    }

    set muted(value) {
      this.client.setMuted(Boolean(value));
    }

    send(event) {
      return this.client.send(event);
    }

    start() {
      return this.client.start({
        url: this.getAttribute("url") || defaultUrl(),
        transport: this.getAttribute("transport") || "auto",
        instructions: this.getAttribute("instructions") || "",
        key: this.getAttribute("key") || "",
        video: this.kiosk ? this.$(".cam") : null,
        reconnect: this.kiosk,
      });
    }

    stop() {
      this.client.stop();
    }

    $(selector) {
      return this.shadowRoot.querySelector(selector);
    }

    connectedCallback() {
      if (!this.rendered) this.render();
      if (this.kiosk) {
        const idle = Number(this.getAttribute("idle"));
        this.idleMs = (idle > 0 ? idle : 60) * 1000;
        this.idleTimer = setInterval(() => this.checkIdle(), 250);
        this.start().then(() => this.checkSuspended());
      }
    }

    disconnectedCallback() {
      clearInterval(this.idleTimer);
      this.client.stop();
    }

    render() {
      this.rendered = true;
      this.shadowRoot.innerHTML = `<style>${STYLE}</style>${this.kiosk ? KIOSK_HTML : WIDGET_HTML}`;
      const meter = this.$(".meter i, .k-meter i");
      this.client.onlevel = (level) => {
        meter.style.width = `${Math.round(Math.min(1, level * 2.5) * 100)}%`;
      };
      this.addEventListener("voxwire-state", (e) => this.onState(e.detail));
      this.addEventListener("voxwire-transcript", (e) => this.onTranscript(e.detail));
      this.addEventListener("voxwire-answer", (e) => this.onAnswer(e.detail));
      this.addEventListener("voxwire-metrics", (e) => this.onMetrics(e.detail));
      this.addEventListener("voxwire-interrupted", (e) => {
        const li = this.items.get(e.detail.itemId);
        if (li) li.classList.add("cut");
      });
      if (this.kiosk) {
        this.$(".tap").addEventListener("click", () => this.tapToStart());
        new ResizeObserver(() => this.pinAnswer()).observe(this.$(".k-said"));
      } else {
        this.$(".start").addEventListener("click", () => {
          if (this.state.running) this.stop();
          else this.start();
        });
        this.$(".mute").addEventListener("click", () => {
          this.muted = !this.muted;
        });
      }
    }

    onState(s) {
      const root = this.$(".card, .kiosk");
      root.classList.toggle("on", s.connected);
      root.classList.toggle("running", s.running);
      const phase = s.muted && s.connected ? "Muted" : PHASES[s.phase] || s.phase;
      this.lastActivity = Date.now();
      const status = this.$(".status, .k-status");
      status.textContent = s.status;
      status.classList.toggle("error", s.isError);
      if (this.kiosk) {
        const offline = s.running ? "Connecting…" : "Offline";
        this.$(".k-phase").textContent = s.connected ? phase : offline;
        return;
      }
      this.$(".phase").textContent = phase;
      this.$(".start").textContent = s.running ? "Stop" : "Start";
      const mute = this.$(".mute");
      mute.disabled = !s.running;
      mute.setAttribute("aria-pressed", String(s.muted));
      mute.textContent = s.muted ? "Unmute" : "Mute";
    }

    onTranscript({ itemId, text, final }) {
      if (this.kiosk) {
        if (!text && !final) {
          this.setIdle(false);
          this.onAnswer({ text: "" });
        }
        if (text || !final) this.$(".k-heard").textContent = text || "…";
        return;
      }
      if (final && !text) {
        const li = this.items.get(itemId);
        if (li) li.remove();
        this.items.delete(itemId);
        return;
      }
      const li = this.entry(itemId, "user");
      li.textContent = text || "…";
      li.classList.toggle("partial", !final);
      this.scroll();
    }

    onAnswer({ itemId, text }) {
      if (this.kiosk) {
        this.$(".k-said").textContent = text;
        this.pinAnswer();
        return;
      }
      this.entry(itemId, "assistant").textContent = text;
      this.scroll();
    }

    onMetrics(m) {
      const stages = m.stages_ms || {};
      const fmt = (v) => (typeof v === "number" ? `${Math.round(v)} ms` : "–");
      const transport = TRANSPORTS[m.transport || this.state.transport] || "–";
      if (this.kiosk) {
        this.$(".k-lat").textContent = `voice-to-voice ${fmt(stages.voice_to_voice)} · ` +
          STAGES.map(([k, label]) => `${label} ${fmt(stages[k])}`).join(" · ") +
          ` · ${transport}`;
        return;
      }
      this.$(".transport").textContent = transport;
      for (const el of this.shadowRoot.querySelectorAll("[data-stage]")) {
        el.textContent = fmt(stages[el.dataset.stage]);
      }
    }

    entry(itemId, role) {
      let li = this.items.get(itemId);
      if (!li) {
        const log = this.$(".log");
        const empty = log.querySelector(".empty");
        if (empty) empty.remove();
        li = document.createElement("li");
        li.className = role;
        log.append(li);
        this.items.set(itemId, li);
        while (log.children.length > MAX_LOG) {
          const first = log.firstElementChild;
          for (const [id, el] of this.items) if (el === first) this.items.delete(id);
          first.remove();
        }
      }
      return li;
    }

    scroll() {
      const log = this.$(".log");
      log.scrollTop = log.scrollHeight;
    }

    // ------------------------------------------------------------------ kiosk

    /** Keep the latest words of a long answer in view, fading out the earlier ones. */
    pinAnswer() {
      const said = this.$(".k-said");
      said.classList.toggle("long", said.scrollHeight > said.clientHeight + 1);
      said.scrollTop = said.scrollHeight;
    }

    checkSuspended() {
      const ctx = this.client.ctx;
      const tap = this.$(".tap");
      if (!ctx) {
        this.$(".why").textContent = this.state.status;
        tap.classList.toggle("show", !this.state.running);
        return;
      }
      this.$(".why").textContent = "Sound needs a tap on this screen.";
      const update = () => tap.classList.toggle("show", ctx.state === "suspended");
      ctx.addEventListener("statechange", update);
      update();
    }

    tapToStart() {
      if (this.state.running) {
        this.client.resume();
      } else {
        this.start().then(() => this.checkSuspended());
      }
    }

    checkIdle() {
      const s = this.state;
      if (s.idle || !s.connected || s.phase !== "listening" || this.client.playing) return;
      if (Date.now() - this.lastActivity > this.idleMs) this.setIdle(true);
    }

    setIdle(idle) {
      if (this.state.idle === idle) return;
      this.state.idle = idle;
      this.$(".idle").classList.toggle("show", idle);
      if (idle) {
        this.$(".k-heard").textContent = "";
        this.onAnswer({ text: "" });
        this.client.renew(); // the next visitor starts a new conversation
      }
      this.lastActivity = Date.now();
      this.client.setStatus(this.state.status);
    }
  }

  window.VoxwireClient = VoxwireClient;
  if (!customElements.get("voxwire-widget")) customElements.define("voxwire-widget", VoxwireWidget);
})();
