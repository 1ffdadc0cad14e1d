//! WIT `clock`: wall-clock and monotonic time. No state.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use sluice_bindings::sluice::plugin::clock;
use wasmtime::component::{HasData, Linker};

use super::HostResult;

pub struct Clock;

impl HasData for Clock {
    type Data<'a> = Clock;
}

pub fn add_to_linker<T: Send + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    clock::add_to_linker::<T, Clock>(linker, |_| Clock)
}

impl clock::Host for Clock {
    fn now_ms(&mut self) -> HostResult<u64> {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        Ok(since_epoch.map_or(0, |d| d.as_millis() as u64))
    }

    fn monotonic_ns(&mut self) -> HostResult<u64> {
        static START: OnceLock<Instant> = OnceLock::new();
        Ok(START.get_or_init(Instant::now).elapsed().as_nanos() as u64)
    }
}
