//! The command line every Strom app gets from [`App::main`](crate::App::main):
//! `worker` (the default), `send`, `agents` and `topics`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use bytes::Bytes;
use clap::{Parser, Subcommand};

use crate::app::App;
use crate::error::{Error, Result};
use crate::topic::produce;
use crate::tracking::lock;
use crate::transport::OutMessage;

#[derive(Debug, Parser)]
#[command(about = "A Strom stream processing app", disable_version_flag = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the worker: consume, process, commit, until SIGINT/SIGTERM (the default).
    Worker,
    /// Send messages to a declared topic.
    Send {
        /// The topic.
        topic: String,
        /// The key, as the key codec reads it (text for strings, JSON for numbers).
        #[arg(long)]
        key: Option<String>,
        /// The value, as the value codec reads it (JSON for records).
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        value: Option<String>,
        /// A file of values, one message per non-empty line (JSON Lines).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List the agents: name, topic, concurrency.
    Agents,
    /// List the declared topics, with their partitions, codecs and configs.
    Topics,
}

/// Sets up logging from `RUST_LOG` (default `info`); JSON lines when
/// `STROM_LOG_FORMAT=json`; in colour when stderr is a terminal. Does nothing when a subscriber is already set.
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours for a terminal only, not in files and log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    let _ = if std::env::var("STROM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Parses `args` and runs the command. Prints help and usage errors and exits
/// the process, as command lines do.
pub(crate) async fn main(app: &App, args: impl IntoIterator<Item = OsString>) -> Result<()> {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    init_logging();
    match cli.command.unwrap_or(Command::Worker) {
        Command::Worker => app.run().await,
        // Not `stdout().lock()`: agents may print while a command runs.
        other => run(app, other, &mut std::io::stdout()).await,
    }
}

/// Runs one of the non-worker commands, writing to `out`. For tests and tools.
pub async fn run_command(app: &App, args: &[&str], out: &mut dyn Write) -> Result<()> {
    let argv = std::iter::once("app").chain(args.iter().copied());
    let cli = Cli::try_parse_from(argv).map_err(|e| Error::Usage(e.to_string()))?;
    match cli.command.unwrap_or(Command::Worker) {
        Command::Worker => app.run().await,
        other => run(app, other, out).await,
    }
}

async fn run(app: &App, command: Command, out: &mut dyn Write) -> Result<()> {
    let io = |source| Error::Io { context: "writing the output".into(), source };
    match command {
        Command::Worker => Ok(()),
        Command::Agents => {
            writeln!(out, "{:<24} {:<32} {:>11}", "AGENT", "TOPIC", "CONCURRENCY").map_err(io)?;
            for (name, topic, concurrency) in app.agents() {
                writeln!(out, "{name:<24} {topic:<32} {concurrency:>11}").map_err(io)?;
            }
            Ok(())
        }
        Command::Topics => {
            writeln!(out, "{:<32} {:>10} {:<6} {:<6} {:<32} CONFIG", "TOPIC", "PARTITIONS", "KEY", "VALUE", "TYPE")
                .map_err(io)?;
            let infos = lock(&app.core.topics).clone();
            for spec in app.topic_specs() {
                let info = infos.get(&spec.name);
                let config = spec.config.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                writeln!(
                    out,
                    "{:<32} {:>10} {:<6} {:<6} {:<32} {}",
                    spec.name,
                    spec.partitions,
                    info.map_or("raw", |i| i.key_codec),
                    info.map_or("raw", |i| i.value_codec),
                    info.map_or("(dead letters)", |i| i.value_type),
                    config
                )
                .map_err(io)?;
            }
            Ok(())
        }
        Command::Send { topic, key, value, file } => {
            let (info, declared) = {
                let topics = lock(&app.core.topics);
                let full = app.config().topic_name(&topic);
                (topics.get(&full).or_else(|| topics.get(&topic)).cloned(), topics.keys().cloned().collect::<Vec<_>>())
            };
            let info = info.ok_or_else(|| {
                Error::Usage(format!("unknown topic {topic:?}; declared topics: {}", declared.join(", ")))
            })?;
            let values: Vec<String> = match (value, file) {
                (Some(v), _) => vec![v],
                (None, Some(path)) => std::fs::read_to_string(&path)
                    .map_err(|source| Error::Io { context: format!("reading {}", path.display()), source })?
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned)
                    .collect(),
                (None, None) => Vec::new(),
            };
            // Check everything before sending anything.
            for (i, v) in values.iter().enumerate() {
                (info.check)(v.as_bytes()).map_err(|e| {
                    Error::Usage(format!("value #{} is not a valid {} ({e}): {v}", i + 1, info.value_type))
                })?;
            }
            app.core.transport.ensure_topics(std::slice::from_ref(&info.spec)).await?;
            let mut receipts = Vec::new();
            for v in &values {
                let msg = OutMessage {
                    topic: info.spec.name.as_str().into(),
                    partition: None,
                    key: key.as_ref().map(|k| Bytes::copy_from_slice(k.as_bytes())),
                    value: Some(Bytes::copy_from_slice(v.as_bytes())),
                    headers: Vec::new(),
                    timestamp_ms: None,
                };
                receipts.push(produce(&app.core, msg).await?);
            }
            for r in receipts {
                r.await?;
            }
            app.core.producer.flush(app.core.config.shutdown_timeout).await?;
            writeln!(out, "sent {} message(s) to {topic}", values.len()).map_err(io)?;
            Ok(())
        }
    }
}
