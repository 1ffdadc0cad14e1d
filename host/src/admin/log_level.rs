//! The log filter at run time (`GET`/`POST /api/v1/log-level`). The binary installs the
//! switch (it owns the subscriber); the library only calls it.

use std::sync::{Mutex, OnceLock};

type Switch = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

static SWITCH: OnceLock<Switch> = OnceLock::new();
static CURRENT: Mutex<String> = Mutex::new(String::new());

/// Installs the function that replaces the log filter (`tracing`'s `EnvFilter` syntax),
/// with the filter in force now.
pub fn install(current: &str, switch: impl Fn(&str) -> Result<(), String> + Send + Sync + 'static) {
    *CURRENT.lock().unwrap_or_else(|p| p.into_inner()) = current.to_owned();
    let _ = SWITCH.set(Box::new(switch));
}

/// The filter in force, if the binary installed a switch.
pub fn current() -> Option<String> {
    SWITCH.get()?;
    Some(CURRENT.lock().unwrap_or_else(|p| p.into_inner()).clone())
}

/// Replaces the filter; an invalid one is refused and changes nothing.
pub fn set(filter: &str) -> Result<(), String> {
    let switch = SWITCH.get().ok_or("this process cannot change its log filter")?;
    let mut current = CURRENT.lock().unwrap_or_else(|p| p.into_inner());
    switch(filter)?;
    *current = filter.to_owned();
    Ok(())
}
