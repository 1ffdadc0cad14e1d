// A JS plugin that throws when asked (`x-throw: 1`), deep in its own calls, so the tests
// can check that the exception's message reaches the failure's log line (tests/sdks.rs).

function deeper(n) {
  if (n === 0) {
    throw new Error('js-throw was asked to throw');
  }
  return deeper(n - 1);
}

export const filter = {
  init(_json) {},

  onRequest(req) {
    if (req.header('x-throw') === '1') {
      deeper(20);
    }
  },
};
