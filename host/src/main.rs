//! The `sluice` command: `run`, `check`, `demo`, `echo`, `ctl`, and `plugin new|build|test`.

// The plugin author's loop (`sluice plugin new/build/test`) lives in the binary, not in the
// gateway library, which holds only what serves requests (no wit-component, no WASI adapter).
mod author;
// `sluice ctl`: a client of the admin API, as any other would be.
mod ctl;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

/// `0.1.0 (commit 0123456789ab, plugin world sluice:plugin@0.2.0)`.
static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (commit {}, plugin world sluice:plugin@{})",
        env!("CARGO_PKG_VERSION"),
        env!("SLUICE_GIT_COMMIT"),
        sluice_bindings::WORLD_VERSION
    )
});

#[derive(Parser)]
#[command(
    name = "sluice",
    version = VERSION.as_str(),
    about = "A programmable HTTP gateway extended by Wasm component plugins"
)]
struct Cli {
    /// Log line format. The level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve traffic as the config file says, until SIGTERM or Ctrl-C. Reloads on SIGHUP
    /// and when the config file or a plugin module changes.
    Run {
        /// The TOML config file (see docs/config.md).
        #[arg(long, short)]
        config: PathBuf,
        /// Do not watch files; reload only on SIGHUP.
        #[arg(long)]
        no_watch: bool,
    },
    /// Check a config without serving: schema, names, plugin modules and their init.
    /// Exits 1 and prints every error, each with its TOML path.
    Check {
        /// The TOML config file to check.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run the demo: config/demo.toml in front of a built-in echo upstream.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Run only the echo upstream (answers with what it received, as JSON).
    Echo {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
    },
    /// Talk to a running gateway's admin API: status, routes, upstreams, plugins, drain,
    /// breakers, reload, rollback (docs/admin.md).
    Ctl(ctl::Ctl),
    /// Write, build and test plugins: `new`, `build`, `test`.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Print a shell completion script: `sluice completions bash > /etc/bash_completion.d/sluice`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin project in ./NAME that builds, passes its own test cases, and runs.
    New {
        #[arg(long, value_enum)]
        lang: author::Lang,
        name: String,
        /// Create it in this folder instead of the current one.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the plugin project in DIR (default: here) into DIR/<folder name>.wasm.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Write the component here instead.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Replay the requests in a cases file through one plugin, without a proxy; print what
    /// it did and its logs; exit 1 if an expectation fails.
    Test {
        #[arg(default_value = "cases.toml")]
        cases: PathBuf,
    },
}

/// The demo config, built into the binary; `sluice demo` points its `echo` upstream at a
/// built-in echo server and listens where `--listen` says.
const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");
const DEMO_LISTEN: &str = "127.0.0.1:8080";
const DEMO_UPSTREAM: &str = "127.0.0.1:9000";

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `plugin test` sets up its own logging: it captures plugin log lines per case.
    if !matches!(cli.command, Command::Plugin(PluginCommand::Test { .. })) {
        init_logging(cli.log_format);
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(shell, &mut Cli::command(), "sluice", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ctl(ctl) => ctl.run(),
        Command::Check { config } => {
            let config = match sluice::config::load(&config) {
                Ok(c) => c,
                Err(e) => return Ok(report(&e.to_string())),
            };
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            let summary = format!(
                "{} routes, {} plugins, {} upstreams",
                config.routes.len(),
                config.plugins.len(),
                config.upstreams.len()
            );
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match rt.block_on(sluice::build(config)) {
                Ok(_) => {
                    println!("config ok: {summary}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => Ok(report(&e.to_string())),
            }
        }
        Command::Run { config, no_watch } => {
            serve(sluice::ConfigSource::File(config), None, !no_watch)
        }
        Command::Demo { listen } => {
            let source = sluice::ConfigSource::Text {
                text: DEMO_CONFIG.replace(DEMO_LISTEN, &listen.to_string()),
                name: "config/demo.toml (built in)".into(),
                base_dir: std::env::current_dir()?,
            };
            serve(source, Some(()), true)
        }
        Command::Plugin(PluginCommand::New { lang, name, dir }) => {
            let (dir, files) = author::new_project(lang, &name, &dir)?;
            println!("created {} ({} plugin):", dir.display(), lang.title());
            for f in files.iter().filter(|f| !f.starts_with("sdk/") && !f.starts_with("wit/")) {
                println!("  {f}");
            }
            // The SDK and WIT copies, by folder (the JS SDK's files were listed above).
            println!("  {}", if lang == author::Lang::Js { "wit/" } else { "wit/, sdk/" });
            println!("next: cd {} && sluice plugin build && sluice plugin test", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Build { dir, output }) => {
            let built = author::build(&dir, output.as_deref())?;
            println!(
                "built {} ({} plugin, {:.1} MB) in {:.1}s",
                built.output.display(),
                built.lang.title(),
                built.bytes as f64 / 1e6,
                built.took.as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugin(PluginCommand::Test { cases }) => plugin_test(&cases),
        Command::Echo { listen } => {
            let rt = runtime(None)?;
            rt.block_on(async {
                let addr = sluice::echo::spawn(listen).await.context("starting the echo server")?;
                tracing::info!("echo upstream listening on {addr}");
                shutdown_signal().await;
                anyhow::Ok(ExitCode::SUCCESS)
            })
        }
    }
}

/// `sluice plugin test`: plugin log lines are captured per case and printed with it; the
/// gateway's own warnings still go to stderr.
fn plugin_test(cases: &std::path::Path) -> anyhow::Result<ExitCode> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let logs = author::CaptureLogs::default();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        // Compiles are announced (a JavaScript plugin takes tens of seconds, once).
        tracing_subscriber::EnvFilter::new(
            "warn,plugin=trace,extism=off,sluice::plugin::module=info,sluice::plugin::runtime=info",
        )
    });
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour())
        .with_filter(tracing_subscriber::filter::filter_fn(|m| m.target() != "plugin"));
    tracing_subscriber::registry().with(filter).with(logs.clone()).with(stderr).init();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let summary = rt.block_on(author::run_cases(cases, &logs, &mut std::io::stdout()))?;
    Ok(if summary.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn report(errors: &str) -> ExitCode {
    eprintln!("{errors}");
    ExitCode::FAILURE
}

/// One worker means a single-threaded runtime: no work stealing and no cross-thread
/// wake-ups, which a one-core deployment (or one process per core) pays for nothing.
fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    Ok(builder.enable_all().thread_name("sluice-worker").build()?)
}

/// Serves until SIGTERM or Ctrl-C, reloading on SIGHUP and when the config file or a plugin
/// module changes. With `demo`, first starts the echo upstream the demo config points at.
fn serve(
    mut source: sluice::ConfigSource,
    demo: Option<()>,
    watch: bool,
) -> anyhow::Result<ExitCode> {
    let workers = match &source {
        sluice::ConfigSource::File(_) => match source.read().and_then(|t| source.parse(&t)) {
            Ok(config) => config.server.workers,
            Err(e) => return Ok(report(&e.to_string())),
        },
        sluice::ConfigSource::Text { .. } => None,
    };
    let rt = runtime(workers)?;
    rt.block_on(async move {
        if demo.is_some() {
            let echo = sluice::echo::spawn("127.0.0.1:0".parse()?).await?;
            if let sluice::ConfigSource::Text { text, .. } = &mut source {
                *text = text.replace(DEMO_UPSTREAM, &echo.to_string());
            }
            tracing::info!("demo: built-in echo upstream on {echo}");
        }
        let running = match sluice::start(source).await {
            Ok(r) => r,
            Err(sluice::StartError::Config(e)) => return Ok(report(&e.to_string())),
            Err(e) => return Err(e.into()),
        };
        running.gateway.load().log_summary();
        // Watches and the SIGHUP handler go in before "listening" is announced, so an edit
        // made by anyone who waited for that line is never missed.
        let _watch = match watch.then(|| sluice::reload::watch(running.reloader.clone())) {
            Some(Ok(w)) => Some(w),
            Some(Err(e)) => {
                tracing::warn!("cannot watch files, reload with SIGHUP instead: {e}");
                None
            }
            None => None,
        };
        let _hup = tokio::spawn(reload_on_sighup(running.reloader.clone()));
        let workers =
            workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        tracing::info!("sluice listening on http://{} ({workers} worker threads)", running.addr);
        shutdown_signal().await;
        running.shutdown().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Registers the SIGHUP handler now (so a SIGHUP right after start reloads rather than
/// killing the process) and returns the task that reloads on each one.
fn reload_on_sighup(
    reloader: std::sync::Arc<sluice::Reloader>,
) -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    async move {
        #[cfg(unix)]
        {
            let mut hup = match hup {
                Ok(hup) => hup,
                Err(e) => return tracing::warn!("cannot handle SIGHUP: {e}"),
            };
            while hup.recv().await.is_some() {
                // Outcomes, good or bad, are logged by the reloader.
                let _ = reloader.reload("SIGHUP").await;
            }
        }
        #[cfg(not(unix))]
        drop(reloader);
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// The `extism` crate logs every failed call itself, tagged with an instance UUID; Sluice
/// reports each one already (plugin, route, request id, cause), so its copy is left out.
const DEFAULT_LOG_FILTER: &str = "info,extism=off";

/// h2 warns once per connection a client makes it refuse (rapid reset and the like): a
/// line any client could print at will. The gateway logs those itself, throttled, so h2's
/// own lines show only when a filter names h2.
fn quiet_deps(filter: &str) -> String {
    match filter.contains("h2=") {
        true => filter.to_owned(),
        false => format!("{filter},h2=error"),
    }
}

/// Colour in logs only for a person at a terminal, and never with `NO_COLOR` (no-color.org).
fn colour() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let text = std::env::var("RUST_LOG")
        .ok()
        .filter(|f| EnvFilter::try_new(f).is_ok())
        .unwrap_or_else(|| DEFAULT_LOG_FILTER.to_owned());
    // The admin API changes the filter at run time through this switch.
    macro_rules! init_with_switch {
        ($builder:expr) => {{
            let builder = $builder
                .with_env_filter(EnvFilter::new(quiet_deps(&text)))
                .with_writer(std::io::stderr)
                .with_ansi(colour())
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            sluice::admin::log_level::install(&text, move |f| {
                let filter = EnvFilter::try_new(quiet_deps(f))
                    .map_err(|e| format!("invalid filter: {e}"))?;
                handle.reload(filter).map_err(|e| e.to_string())
            });
        }};
    }
    match format {
        LogFormat::Text => init_with_switch!(tracing_subscriber::fmt()),
        LogFormat::Json => init_with_switch!(tracing_subscriber::fmt().json().flatten_event(true)),
    }
}
