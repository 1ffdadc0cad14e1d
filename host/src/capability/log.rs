//! WIT `log`: a plugin's log lines, tagged with the plugin, route and request id. Extism
//! plugins' log functions write through [`plugin_log`] too.

use sluice_bindings::sluice::plugin::log;
use wasmtime::component::{HasData, Linker};

use super::HostResult;
use crate::message::Call;

/// What a log line is tagged with.
pub struct LogView<'a> {
    plugin: &'a str,
    route: &'a str,
    request_id: &'a str,
    trace_id: u128,
}

impl<'a> LogView<'a> {
    /// `call` is the hook call in progress, if any (none during `init`).
    pub fn new(plugin: &'a str, call: Option<&'a Call>) -> Self {
        let (route, request_id, trace_id) = match call {
            Some(call) => {
                let meta = &call.request.meta;
                (&*meta.route, meta.id(), meta.trace_id)
            }
            None => ("", "", 0),
        };
        Self { plugin, route, request_id, trace_id }
    }
}

struct Log;

impl HasData for Log {
    type Data<'a> = LogView<'a>;
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> LogView<'_>,
) -> wasmtime::Result<()> {
    log::add_to_linker::<T, Log>(linker, get)
}

impl log::Host for LogView<'_> {
    fn log(&mut self, level: log::Level, message: String) -> HostResult<()> {
        let level = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        plugin_log(level, self.plugin, self.route, self.request_id, self.trace_id, &message);
        Ok(())
    }

    fn enabled(&mut self, level: log::Level) -> HostResult<bool> {
        Ok(match level {
            log::Level::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
            log::Level::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
            log::Level::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
            log::Level::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
            log::Level::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        })
    }
}

/// A plugin's log line, as every plugin kind emits it: target `plugin`, with the plugin,
/// route, request id and W3C trace id (0: none), at most 4 KiB.
pub fn plugin_log(
    level: tracing::Level,
    plugin: &str,
    route: &str,
    request_id: &str,
    trace_id: u128,
    message: &str,
) {
    let mut cut = message.len().min(4096);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    let message = &message[..cut];
    // Warnings and errors repeat when something is broken: a few a second per message.
    let mut note = String::new();
    if level <= tracing::Level::WARN {
        use crate::throttle::{Throttle, Verdict, suppressed_note};
        static THROTTLE: std::sync::LazyLock<Throttle> =
            std::sync::LazyLock::new(Throttle::default);
        match THROTTLE.check((plugin, message)) {
            Verdict::Write { suppressed } => note = suppressed_note(suppressed),
            Verdict::Suppress => return,
        }
    }
    macro_rules! emit {
        ($level:expr) => {
            match trace_id {
                0 => tracing::event!(
                    target: "plugin", $level, plugin, route, request_id, "{message}{note}"
                ),
                id => tracing::event!(
                    target: "plugin", $level, plugin, route, request_id,
                    trace_id = %format_args!("{id:032x}"), "{message}{note}"
                ),
            }
        };
    }
    match level {
        tracing::Level::TRACE => emit!(tracing::Level::TRACE),
        tracing::Level::DEBUG => emit!(tracing::Level::DEBUG),
        tracing::Level::INFO => emit!(tracing::Level::INFO),
        tracing::Level::WARN => emit!(tracing::Level::WARN),
        tracing::Level::ERROR => emit!(tracing::Level::ERROR),
    }
}
