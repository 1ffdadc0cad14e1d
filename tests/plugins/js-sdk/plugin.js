// The JS SDK's fixture (tests/sdks.rs): it throws when asked (`x-throw: 1`), deep in its own
// calls, so the tests can check that the exception's message reaches the failure's log
// line; and with `x-batch: 1` it makes world 0.2.2's batched calls, so the tests can check
// what they return to JavaScript against what the single calls return.

import { incrAndGet } from 'sluice:plugin/kv@0.2.3';

function deeper(n) {
  if (n === 0) {
    throw new Error('js-sdk was asked to throw');
  }
  return deeper(n - 1);
}

// Two headers the case sends (one spelled in capitals here) and one it does not.
const NAMES = ['x-one', 'X-TWO', 'x-absent'];

// "ok" if `headers` returned, for each name, what `header` returns; otherwise what differs.
function batchAgrees(req) {
  const values = req.headers(NAMES);
  if (values.length !== NAMES.length) {
    return `${values.length} values for ${NAMES.length} names`;
  }
  for (const [i, name] of NAMES.entries()) {
    if (values[i] !== req.header(name)) {
      return `${name}: batch ${values[i]}, single ${req.header(name)}`;
    }
  }
  return 'ok';
}

export const filter = {
  init(_json) {},

  onRequest(req) {
    if (req.header('x-throw') === '1') {
      deeper(20);
    }
    if (req.header('x-batch') === '1') {
      // Counts twice: the second call reads back the count the first one left.
      incrAndGet('n', 1n, 0n, 'n');
      const [n, value] = incrAndGet('n', 1n, 0n, 'n');
      const missing = incrAndGet('m', 5n, 0n, 'never-set')[1];
      req.editHeaders([
        { tag: 'set', val: ['x-batch-headers', batchAgrees(req)] },
        { tag: 'set', val: ['x-batch-count', `${n} ${new TextDecoder().decode(value)}`] },
        { tag: 'set', val: ['x-batch-missing', String(missing)] },
      ]);
    }
  },
};
