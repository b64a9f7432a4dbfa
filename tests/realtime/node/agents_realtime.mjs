// @openai/agents-realtime, unchanged but for the URL, against a Voxwire server.
//
//   node agents_realtime.mjs WS_URL SCENARIO [PCM16_24KHZ_FILE]
//
// SCENARIO is one of:
//   spoken   stream the file (a spoken question) and wait for the spoken answer
//   tool     ask in text for something the agent's tool does; the session runs the tool
//   barge-in ask in text for a long answer, speak the file over it once audio arrives
//   validate check the server events in the JSON file (a list) against the client's schemas;
//            WS_URL is not used
//
// Prints one JSON line: what the server sent and everything that went wrong in the client.
// The client drops silently any server event its own schemas refuse (parseRealtimeEvent in
// openaiRealtimeBase.mjs and openaiRealtimeWebsocket.mjs treats it as "generic"); the
// transport's '*' listener still sees every raw event, so each one is checked here against the
// client's own schemas and counted.
import { readFileSync } from 'node:fs';
import {
  OpenAIRealtimeWebSocket,
  RealtimeAgent,
  RealtimeSession,
  tool,
} from '@openai/agents-realtime';
import {
  genericEventSchema,
  realtimeServerEventSchema,
  responseDoneEventSchema,
} from './node_modules/@openai/agents-realtime/dist/openaiRealtimeEvents.mjs';

const [url, scenario, audioPath] = process.argv.slice(2);
const CHUNK_MS = 40;
const TIMEOUT_MS = 60000;
const known = new Set(realtimeServerEventSchema.options.map((o) => o.shape.type.value));

const report = {
  types: [],
  errors: [],
  invalid: [],
  unknown: [],
  toolCalls: [],
  userTranscripts: [],
  assistantTranscripts: [],
  audioBytes: 0,
  truncated: [],
};

function check(raw) {
  report.types.push(raw.type);
  if (!realtimeServerEventSchema.safeParse(raw).success) {
    if (!known.has(raw.type) || !genericEventSchema.safeParse(raw).success) {
      report.unknown.push(raw.type);
    } else {
      const issues = realtimeServerEventSchema.safeParse(raw).error.issues;
      report.invalid.push({ type: raw.type, issues });
    }
  } else if (raw.type === 'response.done') {
    const done = responseDoneEventSchema.safeParse(raw);
    if (!done.success) report.invalid.push({ type: raw.type, issues: done.error.issues });
  }
  if (raw.type === 'conversation.item.input_audio_transcription.completed') {
    report.userTranscripts.push(raw.transcript);
  } else if (raw.type === 'response.output_audio_transcript.done') {
    report.assistantTranscripts.push(raw.transcript);
  } else if (raw.type === 'conversation.item.truncated') {
    report.truncated.push(raw.audio_end_ms);
  }
}

if (scenario === 'validate') {
  // Server events recorded elsewhere (a browser page), checked against this client's schemas.
  for (const raw of JSON.parse(readFileSync(audioPath, 'utf8'))) check(raw);
  process.stdout.write(`${JSON.stringify(report)}\n`);
  process.exit(0);
}

const setLights = tool({
  name: 'set_lights',
  description: 'Switch lights on or off.',
  parameters: {
    type: 'object',
    properties: { room: { type: 'string' }, on: { type: 'boolean' } },
    required: ['room', 'on'],
    additionalProperties: false,
  },
  strict: true,
  execute: async (input) => {
    report.toolCalls.push(input);
    return JSON.stringify({ ok: true });
  },
});

const agent = new RealtimeAgent({
  name: 'assistant',
  instructions: 'Be brief.',
  tools: [setLights],
});
const transport = new OpenAIRealtimeWebSocket({ url });
const session = new RealtimeSession(agent, { transport, model: 'gpt-realtime' });
const sent = [];
transport.on('*', (raw) => check(raw));
transport.on('audio', (event) => {
  report.audioBytes += event.data.byteLength;
});
const originalSend = transport.sendEvent.bind(transport);
transport.sendEvent = (event) => {
  sent.push(event.type);
  return originalSend(event);
};
session.on('error', (event) => {
  const error = event.error?.error ?? event.error;
  report.errors.push(error instanceof Error ? String(error) : error);
});

function waitFor(predicate) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      clearInterval(poll);
      reject(new Error(`timed out; saw ${report.types.filter((t) => !t.endsWith('.append'))}`));
    }, TIMEOUT_MS);
    const poll = setInterval(() => {
      if (predicate()) {
        clearTimeout(timer);
        clearInterval(poll);
        resolve();
      }
    }, 20);
  });
}

const count = (type) => report.types.filter((t) => t === type).length;

async function stream(path) {
  const pcm = readFileSync(path);
  const step = (24000 * 2 * CHUNK_MS) / 1000;
  for (let at = 0; at < pcm.length; at += step) {
    const chunk = pcm.subarray(at, at + step);
    session.sendAudio(chunk.buffer.slice(chunk.byteOffset, chunk.byteOffset + chunk.length));
    // Twice real time.
    await new Promise((resolve) => setTimeout(resolve, CHUNK_MS / 2));
  }
}

try {
  await session.connect({ apiKey: 'sk-test-not-checked', url });
  await waitFor(() => count('session.updated') >= 1);
  if (scenario === 'spoken') {
    await stream(audioPath);
    await waitFor(() => count('response.done') >= 1);
  } else if (scenario === 'tool') {
    session.sendMessage('Turn on the kitchen lights.');
    await waitFor(() => count('response.done') >= 2);
  } else if (scenario === 'barge-in') {
    session.sendMessage('Tell me a long story.');
    await waitFor(() => count('response.output_audio.delta') >= 1);
    await stream(audioPath);
    await waitFor(() => count('response.done') >= 2);
  } else {
    throw new Error(`unknown scenario ${scenario}`);
  }
  // Anything the server still had to say about the last response.
  await new Promise((resolve) => setTimeout(resolve, 300));
} catch (err) {
  report.errors.push(`client: ${err?.stack ?? err}`);
} finally {
  report.sent = sent;
  session.close();
  // Exit even where the transport still holds a handle: the report is the whole answer.
  process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));
}
