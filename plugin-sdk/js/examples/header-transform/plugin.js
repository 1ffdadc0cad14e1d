// A header transform in JavaScript: sets request headers before the upstream sees them,
// removes some, and sets response headers on the way back. With `client_cert_header` it
// also tells the upstream who the client's verified TLS certificate (mTLS) names, and
// removes that header when there is none, so a client cannot claim an identity itself.
//
//   config = { request_headers = { "x-lang" = "js" }, remove_request_headers = ["x-debug"],
//              response_headers = { "x-served-by" = "sluice-js" },
//              client_cert_header = "x-client-subject" }
import { log } from 'sluice:plugin/log@0.2.3';

let config = {
  request_headers: {},
  remove_request_headers: [],
  response_headers: {},
  client_cert_header: undefined,
  request_edits: [],
  response_edits: [],
};

function headerMap(value, path) {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new Error(`config.${path}: expected a table of header names to values`);
  }
  for (const [name, v] of Object.entries(value)) {
    if (typeof v !== 'string') throw new Error(`config.${path}.${name}: expected a string`);
  }
  return value;
}

export const filter = {
  init(json) {
    const raw = JSON.parse(json);
    const known = ['request_headers', 'remove_request_headers', 'response_headers', 'client_cert_header'];
    for (const key of Object.keys(raw)) {
      if (!known.includes(key)) throw new Error(`config.${key}: unknown field (expected ${known.join(', ')})`);
    }
    const remove = raw.remove_request_headers ?? [];
    if (!Array.isArray(remove) || remove.some((h) => typeof h !== 'string')) {
      throw new Error('config.remove_request_headers: expected a list of header names');
    }
    config = {
      request_headers: headerMap(raw.request_headers, 'request_headers'),
      remove_request_headers: remove,
      response_headers: headerMap(raw.response_headers, 'response_headers'),
      client_cert_header: raw.client_cert_header,
    };
    // Each phase's edits, made once here and sent in one call to the host (`editHeaders`):
    // all of them, or none if the host refuses one (it throws an `EditError`).
    config.request_edits = [
      ...remove.map((name) => ({ tag: 'remove', val: name })),
      ...Object.entries(config.request_headers).map((h) => ({ tag: 'set', val: h })),
    ];
    config.response_edits = Object.entries(config.response_headers).map((h) => ({ tag: 'set', val: h }));
    if (config.client_cert_header !== undefined && typeof config.client_cert_header !== 'string') {
      throw new Error('config.client_cert_header: expected a header name');
    }
    return {
      onRequest: true,
      onResponse: Object.keys(config.response_headers).length > 0,
    };
  },

  onRequest(req) {
    req.editHeaders(config.request_edits);
    if (config.client_cert_header) {
      // { subject, issuer, sans, fingerprint }, or undefined without a verified certificate.
      const cert = req.clientCert();
      if (cert) req.setHeader(config.client_cert_header, cert.subject);
      else req.removeHeader(config.client_cert_header);
    }
    log('debug', `set ${Object.keys(config.request_headers).length} request header(s)`);
  },

  onResponse(_req, resp) {
    resp.editHeaders(config.response_edits);
  },
};
