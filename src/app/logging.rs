//! rhaiflow's own log on stderr: human lines (tracing's compact text) or, with `[logging] format =
//! "json"`, one JSON object a line (`timestamp`, `level`, `target`, `message` and the event's
//! fields), filtered by `[logging] level` / `RUST_LOG`.

use crate::config::{LogFormat, LoggingConfig, is_plain_level};
use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the subscriber (once per process; a second call does nothing). `default_level` applies
/// when neither `[logging] level` nor `RUST_LOG` says: `info` for the scheduler, `warn` otherwise.
pub fn init(logging: &LoggingConfig, default_level: &str) {
    let filter = filter_directives(logging.level.as_deref().unwrap_or(default_level));
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("rhaiflow={default_level}")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match logging.format {
        LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).try_init()
        }
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
}

/// A plain level applies to rhaiflow only (its dependencies stay quiet); directives are taken as
/// `RUST_LOG` takes them.
fn filter_directives(level: &str) -> String {
    if is_plain_level(level) { format!("rhaiflow={}", level.trim().to_ascii_lowercase()) } else { level.to_string() }
}

/// One JSON object per event.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut object = serde_json::Map::new();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        object.insert("timestamp".into(), now.into());
        object.insert("level".into(), meta.level().as_str().into());
        object.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut object));
        writeln!(writer, "{}", serde_json::Value::Object(object))
    }
}

struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_levels_apply_to_rhaiflow_and_directives_pass_through() {
        assert_eq!(filter_directives("info"), "rhaiflow=info");
        assert_eq!(filter_directives(" DEBUG "), "rhaiflow=debug");
        assert_eq!(filter_directives("warn,rhaiflow::scheduler=debug"), "warn,rhaiflow::scheduler=debug");
    }
}
