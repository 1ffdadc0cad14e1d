// Rewrites fields of a JSON request body before the upstream sees it: sets fields (dotted
// paths, objects created as needed) and removes others. Bodies that are not JSON pass
// untouched; a body that claims to be JSON but does not parse gets a 400.
//
//   config = { set = { "meta.source" = "gateway" }, remove = ["password"] }
import { log } from 'sluice:plugin/log@0.2.3';

let set = [];
let remove = [];
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function parsePath(path, where) {
  const parts = path.split('.');
  if (parts.some((p) => p === '')) throw new Error(`${where}: "${path}" is not a dotted field path`);
  return parts;
}

function setField(doc, parts, value) {
  let node = doc;
  for (const key of parts.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null || Array.isArray(node[key])) node[key] = {};
    node = node[key];
  }
  node[parts[parts.length - 1]] = value;
}

function removeField(doc, parts) {
  let node = doc;
  for (const key of parts.slice(0, -1)) {
    node = node?.[key];
    if (typeof node !== 'object' || node === null) return false;
  }
  const last = parts[parts.length - 1];
  if (!(last in node)) return false;
  delete node[last];
  return true;
}

function respond(status, message) {
  const body = JSON.stringify({ error: message }) + '\n';
  return { status, headers: { 'content-type': 'application/json' }, body };
}

export const filter = {
  init(json) {
    const raw = JSON.parse(json);
    for (const key of Object.keys(raw)) {
      if (key !== 'set' && key !== 'remove') throw new Error(`config.${key}: unknown field (expected set, remove)`);
    }
    const rawSet = raw.set ?? {};
    if (typeof rawSet !== 'object' || Array.isArray(rawSet)) throw new Error('config.set: expected a table');
    set = Object.entries(rawSet).map(([path, value]) => [parsePath(path, `config.set."${path}"`), value]);
    const rawRemove = raw.remove ?? [];
    if (!Array.isArray(rawRemove)) throw new Error('config.remove: expected a list of field paths');
    remove = rawRemove.map((path, i) => parsePath(String(path), `config.remove[${i}]`));
  },

  onRequest(req) {
    const type = req.header('content-type') ?? '';
    if (!/^application\/([a-z.+-]*\+)?json\b/i.test(type)) return;
    let doc;
    try {
      doc = JSON.parse(decoder.decode(req.body()));
    } catch (e) {
      if (e?.payload?.tag === 'too-large') return respond(413, 'body too large to rewrite');
      return respond(400, 'request body is not valid JSON');
    }
    if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return;
    for (const [parts, value] of set) setField(doc, parts, value);
    const removed = remove.filter((parts) => removeField(doc, parts)).length;
    req.setBody(encoder.encode(JSON.stringify(doc)));
    log('debug', `rewrote the body: ${set.length} set, ${removed} removed`);
  },
};
