#!/usr/bin/env node
// Builds a JavaScript Sluice plugin into a Wasm component for the sluice:plugin world
// (its `handler-plugin` world: hooks without resource handles).
//
//   node build.mjs plugin.js -o plugin.wasm [--wit DIR] [--enable clocks,http]
//
// The component embeds the StarlingMonkey engine (about 12 MB) and keeps only the WASI
// features a plugin needs: `stdio` (console.* and uncaught errors go to the gateway's trap
// reports) and `random` (Math.random, crypto.getRandomValues). `clocks` and `http` are
// left out unless enabled: use the `clock` import (`sluice:plugin/clock@0.2.3`) for time.
import { componentize } from '@bytecodealliance/componentize-js';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

// What the plugin author writes is plain JavaScript; this wrapper maps it to the world:
// - `init` may return nothing (the hooks are then the handlers the plugin defines) and may
//   throw anything (the component model wants a string: the message is passed on);
// - `onRequest` may return nothing (continue), `{ tag: 'continue' }`, `{ tag: 'respond',
//   val }`, or a plain response `{ status, headers, body }` with headers as an object or a
//   list of pairs and body as a string or bytes;
// - the component exports `handler`, whose hooks take no arguments: the plugin's `req` and
//   `resp` are the `request` and `response` interfaces themselves, whose functions have the
//   names and signatures of `http.request`'s and `http.response`'s methods.
const ENTRY = `import { filter as plugin } from PLUGIN;
import * as request from 'sluice:plugin/request@VERSION';
import * as response from 'sluice:plugin/response@VERSION';
const encoder = new TextEncoder();
const message = (e) => (typeof e === 'string' ? e : e && e.message ? e.message : String(e));
function action(value) {
  if (value === undefined || value === null) return { tag: 'continue' };
  if (value.tag === 'continue' || value.tag === 'respond') return value;
  if (typeof value.status === 'number') {
    const headers = Array.isArray(value.headers)
      ? value.headers
      : Object.entries(value.headers ?? {}).map(([k, v]) => [k, String(v)]);
    const body = value.body === undefined ? new Uint8Array() : typeof value.body === 'string' ? encoder.encode(value.body) : value.body;
    return { tag: 'respond', val: { status: value.status, headers, body } };
  }
  throw new Error('onRequest returned something that is not an action or a response');
}
export const handler = {
  init(config) {
    let hooks;
    try {
      hooks = plugin.init ? plugin.init(config) : undefined;
    } catch (e) {
      throw message(e);
    }
    return hooks ?? { onRequest: !!plugin.onRequest, onResponse: !!plugin.onResponse };
  },
  onRequest() {
    return action(plugin.onRequest ? plugin.onRequest(request) : undefined);
  },
  onResponse() {
    if (plugin.onResponse) plugin.onResponse(request, response);
  },
};
`;

const ALL = ['stdio', 'random', 'clocks', 'http', 'fetch-event'];
const DEFAULT_ENABLED = ['stdio', 'random'];

function usage(message) {
  if (message) console.error(`error: ${message}`);
  console.error('usage: node build.mjs <plugin.js> -o <out.wasm> [--wit DIR] [--enable FEATURE,...]');
  console.error(`features: ${ALL.join(', ')} (default: ${DEFAULT_ENABLED.join(', ')})`);
  process.exit(2);
}

const args = process.argv.slice(2);
let source;
let out;
let wit = join(dirname(fileURLToPath(import.meta.url)), 'wit');
let enabled = [...DEFAULT_ENABLED];
for (let i = 0; i < args.length; i++) {
  const arg = args[i];
  const value = () => args[++i] ?? usage(`${arg} needs a value`);
  if (arg === '-o' || arg === '--out') out = value();
  else if (arg === '--wit') wit = value();
  else if (arg === '--enable') {
    const extra = value().split(',').filter(Boolean);
    const unknown = extra.filter((f) => !ALL.includes(f));
    if (unknown.length) usage(`unknown feature(s): ${unknown.join(', ')}`);
    enabled.push(...extra);
  } else if (arg === '-h' || arg === '--help') usage();
  else if (arg.startsWith('-')) usage(`unknown option ${arg}`);
  else if (source === undefined) source = arg;
  else usage(`unexpected argument ${arg}`);
}
if (!source) usage('no plugin source given');
if (!out) out = source.replace(/\.[cm]?[jt]s$/, '') + '.wasm';

// Imports name the world's version (`sluice:plugin/log@0.2.3`). Versions within 0.2 only
// add, so a plugin written for an earlier 0.2.x builds unchanged: its imports are pointed
// at this SDK's version, in a copy next to it (so its relative imports still resolve).
const worldWit = await readFile(join(resolve(wit), 'world.wit'), 'utf8').catch(() => '');
const WORLD = worldWit.match(/^package sluice:plugin@([0-9.]+);/m)?.[1];
if (!WORLD) {
  console.error(`error: no \`package sluice:plugin@X.Y.Z;\` line in ${join(resolve(wit), 'world.wit')}: the wrapper imports the world's interfaces by version`);
  process.exit(1);
}
const text = await readFile(source, 'utf8');
const older = new RegExp(`(['"]sluice:plugin/[a-z-]+@)(0\\.2\\.\\d+)(['"])`, 'g');
const stale = [...new Set([...text.matchAll(older)].map((m) => m[2]).filter((v) => v !== WORLD))];
let module = './' + basename(source);
let copy;
if (stale.length) {
  console.error(`note: ${source} imports sluice:plugin@${stale.join(', @')}; building it against @${WORLD} (0.2 versions only add)`);
  copy = join(dirname(resolve(source)), `.sluice-plugin-${process.pid}.mjs`);
  await writeFile(copy, text.replace(older, `$1${WORLD}$3`));
  module = './' + basename(copy);
}

// The component's entry is a small wrapper around the plugin module (see ENTRY below),
// written next to it so its relative import resolves.
const entry = join(dirname(resolve(source)), `.sluice-entry-${process.pid}.mjs`);
await writeFile(entry, ENTRY.replace('PLUGIN', JSON.stringify(module)).replaceAll('VERSION', WORLD));
const started = Date.now();
try {
  const { component } = await componentize({
    sourcePath: entry,
    witPath: resolve(wit),
    worldName: 'handler-plugin',
    disableFeatures: ALL.filter((f) => !enabled.includes(f)),
  });
  await writeFile(out, component);
  const mb = (component.length / 1e6).toFixed(1);
  // `sluice plugin build` runs this with SLUICE_BUILD_QUIET and prints its own summary.
  if (!process.env.SLUICE_BUILD_QUIET) {
    console.error(`built ${out} (${mb} MB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  }
} catch (e) {
  console.error(`error: building ${source} failed: ${e?.message ?? e}`);
  process.exitCode = 1;
} finally {
  await rm(entry, { force: true });
  if (copy) await rm(copy, { force: true });
}
