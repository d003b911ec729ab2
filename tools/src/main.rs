//! `mlog`: the admin CLI. Topics, produce from stdin, consume to stdout, group offsets, cluster
//! status. Human tables by default, `-o json` for scripts; an error is one line on stderr and a
//! non-zero exit code (1: the broker refused or failed, 2: bad arguments or unreachable broker).

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use mlog_client::{
    Acks, Admin, ClientError, Consumer, ConsumerConfig, ConsumerRecord, OffsetSpec, Producer,
    ProducerConfig,
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "mlog",
    version,
    about = "Administer and use an mlog cluster.",
    after_help = "Examples:
  mlog topic create orders --partitions 3 --config retention.ms=86400000
  mlog topic describe orders -o json
  printf 'a\\nb\\n' | mlog produce orders --acks all --print-offsets
  mlog consume orders --from-beginning --max-messages 10 --format '{partition}:{offset} {key} {value}'
  mlog group offsets billing
  mlog completions bash > /etc/bash_completion.d/mlog"
)]
struct Cli {
    /// Broker to connect to.
    #[arg(
        long,
        global = true,
        env = "MLOG_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Produce one record per stdin line.
    Produce(ProduceArgs),
    /// Consume records to stdout.
    Consume(ConsumeArgs),
    /// Consumer group offsets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Cluster status.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print shell completions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Configuration override, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = parse_kv)]
        configs: Vec<(String, String)>,
    },
    /// List topics.
    List,
    /// Partitions (leader, shard, offsets) and configuration of a topic.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Committed offsets of a group (for every partition of every topic it committed).
    Offsets { group: String },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Brokers, shards and topics.
    Status,
}

#[derive(Clone, Copy, ValueEnum)]
enum AcksArg {
    All,
    Leader,
    None,
}

#[derive(clap::Args)]
struct ProduceArgs {
    topic: String,
    /// Key of every record.
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long)]
    key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    partition: Option<u32>,
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Print `PARTITION OFFSET` per input line, in input order, once acknowledged.
    #[arg(long)]
    print_offsets: bool,
}

#[derive(clap::Args)]
struct ConsumeArgs {
    topic: String,
    /// Only this partition.
    #[arg(long)]
    partition: Option<u32>,
    /// Start at the earliest offset.
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    from_beginning: bool,
    /// Start at this offset (with --partition).
    #[arg(long, requires = "partition", conflicts_with = "from_time")]
    offset: Option<i64>,
    /// Start at the first record at or after this time (RFC 3339, e.g. 2026-11-25T10:00:00Z).
    #[arg(long, value_parser = parse_rfc3339_ms)]
    from_time: Option<i64>,
    /// Consumer group (start at its committed offsets; commit what was printed each second, and
    /// at the end, also on Ctrl-C or SIGTERM).
    #[arg(long)]
    group: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<u64>,
    /// Stop when no record arrived for this long.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Output template: {topic} {partition} {offset} {timestamp} {key} {value} {headers}.
    #[arg(long, default_value = "{value}")]
    format: String,
}

/// Writes one line to stdout; a closed stdout (`mlog topic list | head -1`) ends the program
/// quietly instead of panicking as `println!` would.
macro_rules! out {
    ($($arg:tt)*) => {
        if writeln!(std::io::stdout(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    };
}

/// An RFC 3339 time (`2026-11-25T10:00:00Z`, `2026-11-25T11:00:00+01:00`) as Unix milliseconds.
fn parse_rfc3339_ms(s: &str) -> Result<i64, String> {
    let at = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time such as 2026-11-25T10:00:00Z: {e}"))?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).map_err(|_| "out of range".to_string())
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(2, &format!("starting the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Client(e @ ClientError::Broker { .. })) => fail(1, &e.to_string()),
        Err(CliError::Client(e)) => fail(2, &e.to_string()),
        Err(CliError::Usage(message)) => fail(2, &message),
    }
}

/// What ends a command: the client's error, or arguments that do not go together.
enum CliError {
    Client(ClientError),
    Usage(String),
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> Self {
        CliError::Client(e)
    }
}

/// Help and version as clap prints them; a usage error as one line (clap's own adds a usage block
/// and a hint).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            fail(2, "a subcommand is missing (see --help)")
        }
        _ => {
            // clap's first paragraph is the error (names of missing arguments on lines of their
            // own); a usage block and a hint follow.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.strip_prefix("error: ").unwrap_or(&first);
            fail(2, &format!("{first} (see --help)"))
        }
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("mlog: {message}");
    ExitCode::from(code)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "mlog", &mut std::io::stdout());
            Ok(())
        }
        Command::Topic(cmd) => topic(&cli.bootstrap, cmd, json).await,
        Command::Produce(args) => produce(&cli.bootstrap, args).await,
        Command::Consume(args) => consume(&cli.bootstrap, args, json).await,
        Command::Group(GroupCommand::Offsets { group }) => {
            group_offsets(&cli.bootstrap, &group, json).await
        }
        Command::Cluster(ClusterCommand::Status) => cluster_status(&cli.bootstrap, json).await,
    }
}

async fn topic(bootstrap: &str, cmd: TopicCommand, json: bool) -> Result<(), CliError> {
    let admin = Admin::connect(bootstrap).await?;
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            configs,
        } => {
            let configs: Vec<(&str, &str)> = configs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            admin.create_topic(&name, partitions, &configs).await?;
            print(
                json,
                json!({ "created": name, "partitions": partitions }),
                &format!("created topic {name} ({partitions} partitions)"),
            );
        }
        TopicCommand::List => {
            let topics = admin.list_topics().await?;
            if json {
                let list: Vec<_> = topics
                    .iter()
                    .map(|t| json!({ "name": t.name, "partitions": t.partitions }))
                    .collect();
                out!("{}", serde_json::Value::Array(list));
            } else {
                out!("{:<40} {:>10}", "TOPIC", "PARTITIONS");
                for t in topics {
                    out!("{:<40} {:>10}", t.name, t.partitions);
                }
            }
        }
        TopicCommand::Describe { name } => {
            let d = admin.describe_topic(&name).await?;
            if json {
                let parts: Vec<_> = d
                    .partitions
                    .iter()
                    .map(|p| {
                        json!({ "partition": p.partition, "leader": p.leader, "shard": p.shard,
                        "log_start_offset": p.log_start_offset, "log_end_offset": p.log_end_offset,
                        "high_watermark": p.high_watermark })
                    })
                    .collect();
                let configs: serde_json::Map<String, serde_json::Value> = d
                    .configs
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v)))
                    .collect();
                out!(
                    "{}",
                    json!({ "name": d.name, "partitions": parts, "configs": configs })
                );
            } else {
                out!("topic {}", d.name);
                for (k, v) in &d.configs {
                    out!("  {k}={v}");
                }
                out!(
                    "{:>9} {:>6} {:>5} {:>12} {:>12} {:>14}",
                    "PARTITION",
                    "LEADER",
                    "SHARD",
                    "LOG_START",
                    "LOG_END",
                    "HIGH_WATERMARK"
                );
                for p in d.partitions {
                    out!(
                        "{:>9} {:>6} {:>5} {:>12} {:>12} {:>14}",
                        p.partition,
                        p.leader,
                        p.shard,
                        p.log_start_offset,
                        p.log_end_offset,
                        p.high_watermark
                    );
                }
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            print(
                json,
                json!({ "deleted": name }),
                &format!("deleted topic {name}"),
            );
        }
    }
    Ok(())
}

fn print(json: bool, value: serde_json::Value, text: &str) {
    if json {
        out!("{value}");
    } else {
        out!("{text}");
    }
}

async fn produce(bootstrap: &str, args: ProduceArgs) -> Result<(), CliError> {
    if args.print_offsets && matches!(args.acks, AcksArg::None) {
        return Err(CliError::Usage(
            "--print-offsets needs --acks all or leader: with none, nothing is acknowledged".into(),
        ));
    }
    let acks = match args.acks {
        AcksArg::All => Acks::All,
        AcksArg::Leader => Acks::Leader,
        AcksArg::None => Acks::None,
    };
    let producer = Producer::connect(
        bootstrap,
        ProducerConfig {
            acks,
            ..ProducerConfig::default()
        },
    )
    .await?;
    // Sends are started in input order; offsets are printed in input order as they are acknowledged.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let printer = tokio::spawn(async move {
        let stdout = std::io::stdout();
        while let Some(task) = rx.recv().await {
            let task: tokio::task::JoinHandle<Result<mlog_client::RecordMetadata, ClientError>> =
                task;
            let m = task
                .await
                .map_err(|e| ClientError::Protocol(e.to_string()))??;
            if args.print_offsets {
                let mut out = stdout.lock();
                let _ = writeln!(out, "{} {}", m.partition, m.offset);
                let _ = out.flush();
            }
        }
        Ok::<(), ClientError>(())
    });
    // Lines are bytes (any encoding), without their `\n` or `\r\n`. On an error part-way, the
    // records already sent are still awaited and their offsets printed before it is reported.
    let sent = async {
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = tokio::io::AsyncBufReadExt::read_until(&mut stdin, b'\n', &mut line)
                .await
                .map_err(|e| ClientError::Protocol(format!("reading stdin: {e}")))?;
            if n == 0 {
                return Ok(());
            }
            if line.last() == Some(&b'\n') {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            let (key, value) = match (&args.key, &args.key_separator) {
                (Some(k), _) => (Some(k.as_bytes()), &line[..]),
                (None, Some(sep)) => match split_once(&line, sep.as_bytes()) {
                    Some((k, v)) => (Some(k), v),
                    None => (None, &line[..]),
                },
                (None, None) => (None, &line[..]),
            };
            // Buffered in input order (so stored in input order within a partition); the
            // acknowledgements are awaited by the printer, in input order too.
            let ack = producer
                .begin_send(&args.topic, args.partition, key, value, &[])
                .await?;
            if tx.send(tokio::spawn(ack)).await.is_err() {
                return Ok(()); // the printer stopped on an error: it reports it below
            }
        }
    }
    .await;
    drop(tx);
    let printed = printer
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))
        .and_then(|r| r);
    let closed = producer.close().await;
    Ok(sent.and(printed).and(closed)?)
}

/// Splits `line` at the first `sep`.
fn split_once<'a>(line: &'a [u8], sep: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    if sep.is_empty() {
        return None;
    }
    let at = line.windows(sep.len()).position(|w| w == sep)?;
    Some((&line[..at], &line[at + sep.len()..]))
}

async fn consume(bootstrap: &str, args: ConsumeArgs, json: bool) -> Result<(), CliError> {
    // Handlers first: a signal during the set-up below ends the command at once (nothing was
    // printed, so nothing is committed), and one later ends the loop below.
    let stop = stop_signal();
    tokio::pin!(stop);
    let consumer = tokio::select! {
        consumer = consume_setup(bootstrap, &args) => consumer?,
        _ = &mut stop => return Ok(()),
    };
    consume_loop(consumer, &args, json, stop).await
}

/// Connects, assigns and seeks as `args` say.
async fn consume_setup(bootstrap: &str, args: &ConsumeArgs) -> Result<Consumer, CliError> {
    let config = ConsumerConfig {
        group: args.group.clone(),
        max_wait: Duration::from_millis(200),
        reset: if args.from_beginning {
            OffsetSpec::Earliest
        } else {
            OffsetSpec::Latest
        },
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(bootstrap, config).await?;
    consumer
        .assign(&args.topic, args.partition.map(|p| vec![p]))
        .await?;
    let admin = Admin::connect(bootstrap).await?;
    let partitions: Vec<u32> = match args.partition {
        Some(p) => vec![p],
        None => (0..admin.describe_topic(&args.topic).await?.partitions.len() as u32).collect(),
    };
    if let Some(ms) = args.from_time {
        for &p in &partitions {
            consumer
                .seek(&args.topic, p, OffsetSpec::Timestamp(ms))
                .await?;
        }
    } else if args.from_beginning && args.group.is_none() {
        for &p in &partitions {
            consumer.seek(&args.topic, p, OffsetSpec::Earliest).await?;
        }
    }
    if let (Some(offset), Some(p)) = (args.offset, args.partition) {
        consumer.seek_to_offset(&args.topic, p, offset)?;
    }
    Ok(consumer)
}

/// Prints records until a limit, the idle timeout or `stop`, committing as it goes with `--group`.
async fn consume_loop(
    mut consumer: Consumer,
    args: &ConsumeArgs,
    json: bool,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<(), CliError> {
    let mut seen = 0u64;
    let mut last = Instant::now();
    let mut committed_at = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut line = Vec::new();
    // Records printed since the last commit.
    let mut uncommitted = false;
    'poll: loop {
        if args.max_messages.is_some_and(|m| seen >= m) {
            break;
        }
        // Ctrl-C or SIGTERM ends the loop between polls (a poll is cancellation-safe), so what was
        // printed is committed below.
        let records = tokio::select! {
            records = consumer.poll() => records,
            _ = &mut stop => break,
        };
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                // What was printed is still committed if the broker lets it be (best effort).
                if args.group.is_some() && uncommitted {
                    let _ = consumer.commit().await;
                }
                return Err(e.into());
            }
        };
        if !records.is_empty() {
            last = Instant::now();
        }
        let mut records = records.into_iter().peekable();
        while let Some(r) = records.next() {
            if args.max_messages.is_some_and(|m| seen >= m) {
                // Stopped part-way through a poll: the unprinted records must not be committed.
                rewind(
                    &mut consumer,
                    &args.topic,
                    std::iter::once(r).chain(records),
                )?;
                break 'poll;
            }
            line.clear();
            if json {
                let text = json!({ "topic": &*r.topic, "partition": r.partition, "offset": r.offset, "timestamp": r.timestamp,
                    "key": r.key.as_deref().map(String::from_utf8_lossy),
                    "value": r.value.as_deref().map(String::from_utf8_lossy),
                    "headers": r.headers.iter().map(|(k, v)| json!([String::from_utf8_lossy(k), v.as_deref().map(String::from_utf8_lossy)])).collect::<Vec<_>>() });
                line.extend_from_slice(text.to_string().as_bytes());
            } else {
                render(&args.format, &r, &mut line);
            }
            line.push(b'\n');
            if out.write_all(&line).is_err() {
                rewind(
                    &mut consumer,
                    &args.topic,
                    std::iter::once(r).chain(records),
                )?;
                break 'poll;
            }
            seen += 1;
            uncommitted = true;
            if args.max_messages.is_some_and(|m| seen >= m) {
                rewind(&mut consumer, &args.topic, records)?;
                break 'poll;
            }
        }
        let _ = out.flush();
        // Committed as it goes, so a consumer stopped any way (even killed) repeats at most about
        // a second of records next time.
        if args.group.is_some() && uncommitted && committed_at.elapsed() >= AUTO_COMMIT_INTERVAL {
            match consumer.commit().await {
                Ok(()) => uncommitted = false,
                // Tried again at the next interval, and at the end.
                Err(e) if e.is_retriable() => eprintln!("mlog: committing offsets: {e}; retrying"),
                Err(e) => return Err(e.into()),
            }
            committed_at = Instant::now();
        }
        if args
            .timeout_ms
            .is_some_and(|t| last.elapsed() >= Duration::from_millis(t))
        {
            break;
        }
    }
    let _ = out.flush();
    if args.group.is_some() {
        consumer.commit().await?;
    }
    Ok(())
}

/// How often `mlog consume --group` commits what it printed.
const AUTO_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// Installs handlers for SIGINT (Ctrl-C) and SIGTERM at once, and resolves when either comes
/// (never, for a handler that could not be installed).
fn stop_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let [interrupt, terminate] =
        [SignalKind::interrupt(), SignalKind::terminate()].map(|k| signal(k).ok());
    async move {
        tokio::select! {
            _ = next_signal(interrupt) => {}
            _ = next_signal(terminate) => {}
        }
    }
}

/// The next delivery of `handler`'s signal (never, without a handler).
async fn next_signal(handler: Option<tokio::signal::unix::Signal>) {
    match handler {
        Some(mut s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

/// Fills a `--format` template for one record: each placeholder once, left to right, with the
/// record's bytes as they are (a value in any encoding comes out byte for byte, and placeholders
/// inside a key or value are not expanded again).
fn render(template: &str, r: &ConsumerRecord, out: &mut Vec<u8>) {
    let mut rest = template;
    while let Some(at) = rest.find('{') {
        out.extend_from_slice(&rest.as_bytes()[..at]);
        rest = &rest[at..];
        let Some(close) = rest.find('}') else {
            break;
        };
        match &rest[1..close] {
            "topic" => out.extend_from_slice(r.topic.as_bytes()),
            "partition" => out.extend_from_slice(r.partition.to_string().as_bytes()),
            "offset" => out.extend_from_slice(r.offset.to_string().as_bytes()),
            "timestamp" => out.extend_from_slice(r.timestamp.to_string().as_bytes()),
            "key" => out.extend_from_slice(r.key.as_deref().unwrap_or_default()),
            "value" => out.extend_from_slice(r.value.as_deref().unwrap_or_default()),
            "headers" => {
                for (i, (k, v)) in r.headers.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(k);
                    out.push(b'=');
                    out.extend_from_slice(v.as_deref().unwrap_or_default());
                }
            }
            // Not a placeholder: the brace is text.
            _ => {
                out.push(b'{');
                rest = &rest[1..];
                continue;
            }
        }
        rest = &rest[close + 1..];
    }
    out.extend_from_slice(rest.as_bytes());
}

/// Moves each partition's position back to the first of `unprinted`, so that a commit covers only
/// what was printed.
fn rewind(
    consumer: &mut Consumer,
    topic: &str,
    unprinted: impl Iterator<Item = mlog_client::ConsumerRecord>,
) -> Result<(), ClientError> {
    let mut first = std::collections::BTreeMap::new();
    for r in unprinted {
        first.entry(r.partition).or_insert(r.offset);
    }
    for (partition, offset) in first {
        consumer.seek_to_offset(topic, partition, offset)?;
    }
    Ok(())
}

async fn group_offsets(bootstrap: &str, group: &str, json: bool) -> Result<(), CliError> {
    let mut consumer = Consumer::connect(
        bootstrap,
        ConsumerConfig {
            group: Some(group.to_string()),
            ..ConsumerConfig::default()
        },
    )
    .await?;
    let offsets = consumer.all_committed().await?;
    if json {
        let list: Vec<_> = offsets
            .iter()
            .map(|(t, p, o)| json!({ "topic": t, "partition": p, "offset": o }))
            .collect();
        out!("{}", json!({ "group": group, "offsets": list }));
    } else {
        out!("{:<40} {:>9} {:>12}", "TOPIC", "PARTITION", "OFFSET");
        for (t, p, o) in offsets {
            out!("{t:<40} {p:>9} {o:>12}");
        }
    }
    Ok(())
}

async fn cluster_status(bootstrap: &str, json: bool) -> Result<(), CliError> {
    let admin = Admin::connect(bootstrap).await?;
    let m = admin.metadata(None).await?;
    if json {
        let endpoints: Vec<_> = m.endpoints.iter().map(|e| json!({ "node": e.node_id, "shard": e.shard, "address": format!("{}:{}", e.host, e.port) })).collect();
        let topics: Vec<_> = m
            .topics
            .iter()
            .map(|t| json!({ "name": t.name, "partitions": t.partitions.len() }))
            .collect();
        out!(
            "{}",
            json!({ "revision": m.revision, "endpoints": endpoints, "topics": topics })
        );
    } else {
        out!("metadata revision {}", m.revision);
        out!("{:>5} {:>6} {:<24}", "NODE", "SHARD", "ADDRESS");
        for e in &m.endpoints {
            out!(
                "{:>5} {:>6} {:<24}",
                e.node_id,
                e.shard,
                format!("{}:{}", e.host, e.port)
            );
        }
        out!("{} topics", m.topics.len());
    }
    Ok(())
}
