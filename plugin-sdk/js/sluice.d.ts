// TypeScript declarations for the sluice:plugin@0.2.3 package (wit/), as componentize-js
// maps it to JavaScript. The WIT files are the reference; this mirrors them. `build.mjs`
// builds for the `handler-plugin` world: a plugin's `req` and `resp` are the `request` and
// `response` interfaces of the call in progress, which have the `Request` and `Response`
// methods below as functions of the same names (so no handles pass on a hook call).
//
// - kebab-case names become camelCase (`set-header` -> `setHeader`);
// - `option<T>` is `T | undefined`; `u64`/`s64` are `bigint`; `list<u8>` is `Uint8Array`;
// - a host function returning `result<T, E>` returns `T` or throws an `Error` whose
//   `payload` is the `E` (e.g. `{ tag: 'forbidden' }`);
// - `init` returns the hooks (or nothing), or throws to reject the config;
// - `onRequest` returns nothing to continue, or a response (see `Filter` below).
//
// A plugin module exports `filter`:
//
//   import { log } from 'sluice:plugin/log@0.2.3';
//   export const filter = {
//     init(config) { JSON.parse(config); },
//     onRequest(req) {
//       if (!req.header('authorization')) return { status: 401, body: 'who are you?\n' };
//       req.setHeader('x-hello', 'js');
//     },
//   };

declare module 'sluice:plugin/http@0.2.3' {
  /** Why a method, path, query, status or header could not be changed. */
  export type FieldError =
    | { tag: 'invalid-name' }
    | { tag: 'invalid-value' }
    | { tag: 'forbidden' };

  /** Why a body could not be read. `too-large` carries the route's `max_body_bytes`. */
  export type BodyError =
    | { tag: 'too-large'; val: bigint }
    | { tag: 'read-failed'; val: string };

  /** One change for `editHeaders`. Since 0.2.2. */
  export type HeaderEdit =
    | { tag: 'set'; val: [string, string] }
    | { tag: 'append'; val: [string, string] }
    | { tag: 'remove'; val: string };

  /** Which edit of a batch was refused (its index), and why. Since 0.2.2. */
  export interface EditError {
    index: number;
    error: FieldError;
  }

  /** Who the client's verified TLS certificate (mTLS) says it is. Since 0.2.1. */
  export interface ClientCert {
    /** The subject's distinguished name, e.g. `CN=alice, O=Example`. */
    subject: string;
    /** The issuer's distinguished name. */
    issuer: string;
    /** `DNS:...`, `URI:...`, `email:...`, `IP:...` */
    sans: string[];
    /** SHA-256 of the certificate's DER bytes, 64 lower-case hex digits. */
    fingerprint: string;
  }

  /** The request as it will be sent upstream. Owned by the host; valid during the call. */
  export class Request {
    private constructor();
    method(): string;
    /** @throws {FieldError} */
    setMethod(value: string): void;
    path(): string;
    /** @throws {FieldError} */
    setPath(value: string): void;
    query(): string | undefined;
    /** @throws {FieldError} */
    setQuery(value: string | undefined): void;
    header(name: string): string | undefined;
    headerAll(name: string): string[];
    headerNames(): string[];
    /** The first value of each name (at most 128), in one call. Since 0.2.2. */
    headers(names: string[]): (string | undefined)[];
    /** @throws {FieldError} */
    setHeader(name: string, value: string): void;
    /** @throws {FieldError} */
    appendHeader(name: string, value: string): void;
    /** @throws {FieldError} */
    removeHeader(name: string): void;
    /** Every edit (at most 128) in one call, or none if one is refused. Since 0.2.2. @throws {EditError} */
    editHeaders(edits: HeaderEdit[]): void;
    /** Buffers the body on the first call. @throws {BodyError} */
    body(): Uint8Array;
    setBody(body: Uint8Array): void;
    clientIp(): string;
    requestId(): string;
    route(): string;
    param(name: string): string | undefined;
    params(): [string, string][];
    /** The verified client certificate, or undefined (plain HTTP, or none sent). Since 0.2.1. */
    clientCert(): ClientCert | undefined;
    context(key: string): string | undefined;
    /** @throws {FieldError} past 32 keys or 16 KiB per plugin per request */
    setContext(key: string, value: string): void;
  }

  /** The response that will be sent to the client. */
  export class Response {
    private constructor();
    status(): number;
    /** @throws {FieldError} */
    setStatus(code: number): void;
    header(name: string): string | undefined;
    headerAll(name: string): string[];
    headerNames(): string[];
    /** The first value of each name (at most 128), in one call. Since 0.2.2. */
    headers(names: string[]): (string | undefined)[];
    /** @throws {FieldError} */
    setHeader(name: string, value: string): void;
    /** @throws {FieldError} */
    appendHeader(name: string, value: string): void;
    /** @throws {FieldError} */
    removeHeader(name: string): void;
    /** Every edit (at most 128) in one call, or none if one is refused. Since 0.2.2. @throws {EditError} */
    editHeaders(edits: HeaderEdit[]): void;
    /** @throws {BodyError} */
    body(): Uint8Array;
    setBody(body: Uint8Array): void;
  }
}

declare module 'sluice:plugin/log@0.2.3' {
  export type Level = 'trace' | 'debug' | 'info' | 'warn' | 'error';
  /** Written to the gateway log, tagged with the plugin, route and request id. */
  export function log(level: Level, message: string): void;
  export function enabled(level: Level): boolean;
}

declare module 'sluice:plugin/clock@0.2.3' {
  /** Wall-clock milliseconds since the Unix epoch. */
  export function nowMs(): bigint;
  /** Monotonic nanoseconds; only differences mean anything. */
  export function monotonicNs(): bigint;
}

declare module 'sluice:plugin/kv@0.2.3' {
  export type KvError =
    | { tag: 'unavailable'; val: string }
    | { tag: 'not-a-number' }
    | { tag: 'too-large' };
  /** @throws {KvError} */
  export function get(key: string): Uint8Array | undefined;
  /** `ttlMs` of 0n keeps the value until deleted. @throws {KvError} */
  export function set(key: string, value: Uint8Array, ttlMs: bigint): void;
  /** @throws {KvError} */
  export function incr(key: string, delta: bigint, ttlMs: bigint): bigint;
  /** `incr` of `key` and `get` of `other` in one call. Since 0.2.2. @throws {KvError} */
  export function incrAndGet(
    key: string,
    delta: bigint,
    ttlMs: bigint,
    other: string,
  ): [bigint, Uint8Array | undefined];
  /** @throws {KvError} */
  export function compareAndSwap(
    key: string,
    expected: Uint8Array | undefined,
    value: Uint8Array,
    ttlMs: bigint,
  ): boolean;
  /** @throws {KvError} */
  function delete_(key: string): boolean;
  export { delete_ as delete };
}

declare module 'sluice:plugin/metrics@0.2.3' {
  export function counterAdd(name: string, value: bigint): void;
  export function observe(name: string, value: number): void;
}

declare module 'sluice:plugin/filter@0.2.3' {
  import type { Request, Response } from 'sluice:plugin/http@0.2.3';

  /** The phases a plugin takes part in. */
  export interface Hooks {
    onRequest?: boolean;
    onResponse?: boolean;
  }

  /** A reply made by the plugin instead of the upstream's. */
  export interface LocalResponse {
    status: number;
    headers: [string, string][];
    body: Uint8Array;
  }

  export type Action = { tag: 'continue' } | { tag: 'respond'; val: LocalResponse };

  /** A reply written plainly; `build.mjs` turns it into a `respond` action. */
  export interface PlainResponse {
    status: number;
    headers?: Record<string, string> | [string, string][];
    body?: string | Uint8Array;
  }

  /**
   * What a plugin module exports as `filter`. Every member is optional.
   *
   * - `init` runs once per instance with the plugin's `config` table as JSON. Throw to
   *   reject the config (the message is reported with the TOML path). Return the hooks, or
   *   nothing: the hooks are then the handlers defined here.
   * - `onRequest` returns nothing to continue, an `Action`, or a `PlainResponse`.
   */
  export interface Filter {
    init?(config: string): Hooks | void;
    onRequest?(req: Request): Action | PlainResponse | void;
    onResponse?(req: Request, resp: Response): void;
  }
}
