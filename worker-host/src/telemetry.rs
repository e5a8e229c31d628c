//! Log setup: `RUST_LOG`-style filter, text (default) or JSON lines.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `json` selects JSON lines.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (e.g. in tests) keeps the first subscriber.
    drop(result);
}
