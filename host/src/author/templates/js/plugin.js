// {{name}}: stamps requests with a greeting, answers GET /hello, marks responses.
// Types: sluice.d.ts. Build: `sluice plugin build` (or `npm run build`).
import { log } from 'sluice:plugin/log@0.2.1';

let greeting;

export const filter = {
  init(json) {
    const config = JSON.parse(json);
    // A typo in the config is an unknown key, reported at load, not a silent default.
    for (const key of Object.keys(config)) {
      if (key !== 'greeting') throw new Error(`config.${key}: unknown field (expected greeting)`);
    }
    if (typeof config.greeting !== 'string' || config.greeting.trim() === '') {
      throw new Error('config.greeting: must be a non-empty string');
    }
    greeting = config.greeting;
  },

  onRequest(req) {
    log('info', `${req.method()} ${req.path()}`);
    if (req.path() === '/hello') {
      return { status: 200, headers: { 'content-type': 'text/plain' }, body: `${greeting} from {{name}}\n` };
    }
    req.setHeader('x-greeting', greeting);
  },

  onResponse(_req, resp) {
    resp.setHeader('x-plugin', '{{name}}');
  },
};
