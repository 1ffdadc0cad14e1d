//! Host-side bindings for the `sluice:plugin` WIT world in `wit/`.
//!
//! This crate holds the single `bindgen!` call, so that ordinary edits to the gateway do not
//! re-expand it (it costs tens of seconds). The host re-exports only what it needs.

/// The marker behind a `request` resource handle.
///
/// The request itself lives in the host's per-call state, not in the resource table: a
/// plugin only ever borrows the request of the call it is in, so the handle needs no data.
pub struct RequestHandle;

/// The marker behind a `response` resource handle; see [`RequestHandle`].
pub struct ResponseHandle;

wasmtime::component::bindgen!({
    path: "../../wit",
    // Both worlds a plugin may be built for, in one set of bindings: their imports are
    // shared (one `Host` trait per interface), and a component is called through whichever
    // of the two exports it has (`exports::sluice::plugin::{filter, handler}`).
    inline: "
        package sluice:host;
        world gateway {
            include sluice:plugin/plugin@0.2.3;
            include sluice:plugin/handler-plugin@0.2.3;
        }
    ",
    imports: {
        // Reading a body waits for the peer, and the key-value store may be remote (Redis);
        // everything else answers from memory.
        "sluice:plugin/http.[method]request.body": async | trappable,
        "sluice:plugin/http.[method]response.body": async | trappable,
        "sluice:plugin/request.body": async | trappable,
        "sluice:plugin/response.body": async | trappable,
        "sluice:plugin/kv.get": async | trappable,
        "sluice:plugin/kv.set": async | trappable,
        "sluice:plugin/kv.incr": async | trappable,
        "sluice:plugin/kv.incr-and-get": async | trappable,
        "sluice:plugin/kv.compare-and-swap": async | trappable,
        "sluice:plugin/kv.delete": async | trappable,
        default: trappable,
    },
    exports: { default: async },
    with: {
        "sluice:plugin/http.request": crate::RequestHandle,
        "sluice:plugin/http.response": crate::ResponseHandle,
    },
});

/// The world's version this host implements. Components built for an earlier 0.2.x load
/// too: wasmtime matches their imports and their export ([`FILTER_INTERFACE`] or
/// [`HANDLER_INTERFACE`]) by semver (0.2.x versions are compatible with each other, and
/// versions only add within 0.2).
pub const WORLD_VERSION: &str = "0.2.3";

/// The versions this host loads: `sluice:plugin@0.2.*`.
pub const WORLD_COMPATIBLE: &str = "0.2.";

/// The interface a plugin of the `plugin` world exports (hooks given resource handles).
pub const FILTER_INTERFACE: &str = "sluice:plugin/filter@0.2.3";

/// The interface a plugin of the `handler-plugin` world exports (hooks without handles).
/// Since 0.2.3.
pub const HANDLER_INTERFACE: &str = "sluice:plugin/handler@0.2.3";
