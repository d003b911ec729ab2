//! `mlog-bench`: produce, consume and end-to-end load against an mlog broker, with throughput in
//! MB/s and msgs/s and latency percentiles from an HDR histogram (microseconds).
//!
//! * `produce`: latency is send-to-acknowledgement of each record.
//! * `consume`: reads the topic from the start; throughput only.
//! * `e2e`: producers and consumers at once; latency is producer-send to consumer-receive, taken
//!   from the send time each record carries in its first 8 bytes (one machine, one clock).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use mlog_client::{
    Acks, Admin, ClientError, Consumer, ConsumerConfig, OffsetSpec, Producer, ProducerConfig,
    SendFuture,
};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "mlog-bench",
    version,
    about = "Measure an mlog deployment.",
    after_help = "Examples:
  mlog-bench produce --messages 200000 --message-size 1024 --acks all --producers 4
  mlog-bench consume --messages 200000
  mlog-bench e2e --rate 20000 --duration 20 --json"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Producers only; latency = send to acknowledgement.
    Produce,
    /// Consumers only, from the beginning of the topic.
    Consume,
    /// Producers and consumers; latency = send to receive.
    E2e,
}

#[derive(Clone, Copy, ValueEnum)]
enum AcksArg {
    All,
    Leader,
    None,
}

#[derive(clap::Args, Clone)]
struct Opts {
    /// Broker to connect to.
    #[arg(
        long,
        global = true,
        env = "MLOG_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// Topic (created with --partitions if missing).
    #[arg(long, global = true, default_value = "mlog-bench")]
    topic: String,
    /// Partitions of a created topic.
    #[arg(long, global = true, default_value_t = 4)]
    partitions: u32,
    /// Producer clients (each with its own connections).
    #[arg(long, global = true, default_value_t = 4)]
    producers: usize,
    /// Consumer clients (partitions are split among them).
    #[arg(long, global = true, default_value_t = 1)]
    consumers: usize,
    /// Bytes of each message value.
    #[arg(long, global = true, default_value_t = 1024)]
    message_size: usize,
    /// Producer batch size in bytes.
    #[arg(long, global = true, default_value_t = 256 << 10)]
    batch_bytes: usize,
    /// Producer linger in milliseconds.
    #[arg(long, global = true, default_value_t = 2)]
    linger_ms: u64,
    #[arg(long, global = true, value_enum, default_value_t = AcksArg::All)]
    acks: AcksArg,
    /// Producers without idempotence (no producer id or sequence numbers in their batches).
    #[arg(long, global = true)]
    no_idempotence: bool,
    /// Messages to send (or read) in all, after the warm-up.
    #[arg(long, global = true)]
    messages: Option<u64>,
    /// Seconds to run, after the warm-up (default when --messages is absent: 10; at most a year).
    #[arg(long, global = true, value_parser = clap::value_parser!(u64).range(..=MAX_SECONDS))]
    duration: Option<u64>,
    /// Target messages per second over all producers (latency under load); unlimited when absent.
    #[arg(long, global = true)]
    rate: Option<u64>,
    /// Seconds of warm-up whose records are not counted (at most a year).
    #[arg(long, global = true, default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(..=MAX_SECONDS))]
    warmup: u64,
    /// Records each producer may have unacknowledged.
    #[arg(long, global = true, default_value_t = 2048)]
    in_flight: usize,
    /// Print one JSON result object instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

/// Counters and latencies shared by the workers.
struct Stats {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Sends that failed.
    errors: AtomicU64,
    /// Nanoseconds from the start of measurement to the last counted record: throughput is
    /// measured up to it, not up to when the workers noticed they were done.
    last_ns: AtomicU64,
}

/// Longest `--duration` or `--warmup`: keeps every deadline computed from them representable.
const MAX_SECONDS: u64 = 365 * 24 * 3600;

impl Stats {
    /// Counts a record unless `limit` are counted already (consumers racing for the last ones
    /// never count more).
    fn count_up_to(&self, limit: u64, bytes: usize, measure_from: Instant) -> bool {
        let counted = self
            .messages
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m < limit).then_some(m + 1)
            })
            .is_ok();
        if counted {
            self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            let ns = measure_from.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            self.last_ns.fetch_max(ns, Ordering::Relaxed);
        }
        counted
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mlog-bench: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.mode, cli.opts)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlog-bench: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(mode: Mode, opts: Opts) -> Result<(), ClientError> {
    let admin = Admin::connect(opts.bootstrap.as_str()).await?;
    if admin.describe_topic(&opts.topic).await.is_err() {
        admin
            .create_topic(&opts.topic, opts.partitions, &[])
            .await?;
    }
    let partitions = admin.describe_topic(&opts.topic).await?.partitions.len() as u32;
    let stats = Arc::new(Stats {
        messages: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
    });
    // A consumer reading what is already stored has nothing to warm up.
    let warmup = Duration::from_secs(if mode == Mode::Consume {
        0
    } else {
        opts.warmup
    });
    let start = Instant::now();
    let measure_from = start + warmup;
    let run_for = opts
        .duration
        .map(Duration::from_secs)
        .or(opts.messages.is_none().then_some(Duration::from_secs(10)));
    let from_wall_ns = now_ns().saturating_add(warmup.as_nanos() as u64);
    let window = Window {
        from: measure_from,
        from_wall_ns,
        until: run_for.map(|d| measure_from + d),
        until_wall_ns: run_for.map(|d| from_wall_ns.saturating_add(d.as_nanos() as u64)),
    };
    // `--messages` split exactly: the first `m % producers` producers send one more.
    let producers = opts.producers.max(1) as u64;
    let per_producer = |i: u64| {
        opts.messages
            .map(|m| m / producers + u64::from(i < m % producers))
    };

    let progress = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = stats.messages.load(Ordering::Relaxed);
                eprint!("\r{:>10} msgs/s {:>10} messages", now - last, now);
                last = now;
            }
        })
    };
    let mut consumers = Vec::new();
    // e2e: the consumers' barrier, which the producers wait for too.
    let mut assigned = None;
    if mode != Mode::Produce {
        let expected = opts.messages;
        let assignments: Vec<Vec<u32>> = (0..opts.consumers.max(1))
            .map(|i| {
                (0..partitions)
                    .filter(|p| *p as usize % opts.consumers.max(1) == i)
                    .collect::<Vec<u32>>()
            })
            .filter(|mine| !mine.is_empty())
            .collect();
        // Every consumer waits until all are connected and assigned: in consume mode they then
        // start the clock; in e2e mode the producers start only then too (e2e consumers start at
        // the log end, so they would miss records sent before).
        let waiting = assignments.len() + usize::from(mode == Mode::E2e);
        let ready = Arc::new(tokio::sync::Barrier::new(waiting));
        assigned = (mode == Mode::E2e).then(|| ready.clone());
        for mine in assignments {
            consumers.push(tokio::spawn(consume_worker(
                opts.clone(),
                mine,
                stats.clone(),
                window,
                expected,
                mode,
                ready.clone(),
            )));
        }
    }
    if let Some(ready) = assigned {
        // Bounded: a consumer that failed to connect never arrives (its error is reported below).
        let _ = tokio::time::timeout(Duration::from_secs(30), ready.wait()).await;
    }
    let mut workers = Vec::new();
    if mode != Mode::Consume {
        for i in 0..opts.producers {
            workers.push(tokio::spawn(produce_worker(
                opts.clone(),
                stats.clone(),
                window,
                per_producer(i as u64),
                mode == Mode::Produce,
            )));
        }
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    for p in workers {
        let h = p
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
        let _ = histogram.add(&h);
    }
    for c in consumers {
        let h = c
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))??;
        let _ = histogram.add(&h);
    }
    progress.abort();
    eprintln!();
    let elapsed = (stats.last_ns.load(Ordering::Relaxed) as f64 / 1e9).max(1e-9);
    let errors = stats.errors.load(Ordering::Relaxed);
    let messages = stats.messages.load(Ordering::Relaxed);
    let bytes = stats.bytes.load(Ordering::Relaxed);
    let mb_s = bytes as f64 / (1024.0 * 1024.0) / elapsed;
    let msgs_s = messages as f64 / elapsed;
    let q = |v: f64| histogram.value_at_quantile(v);
    if opts.json {
        println!(
            "{}",
            json!({
                "mode": mode_name(mode),
                "throughput_mb_s": mb_s, "throughput_msgs_s": msgs_s, "messages": messages, "bytes": bytes,
                "elapsed_s": elapsed, "message_size": opts.message_size, "producers": opts.producers,
                "consumers": opts.consumers, "partitions": partitions, "errors": errors,
                "latency_us": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "max": histogram.max() }
            })
        );
    } else {
        println!(
            "{} {messages} messages, {:.1} MB/s, {:.0} msgs/s over {elapsed:.1} s",
            mode_name(mode),
            mb_s,
            msgs_s
        );
        if !histogram.is_empty() {
            println!(
                "latency us: p50 {} p90 {} p99 {} p99.9 {} max {}",
                q(0.5),
                q(0.9),
                q(0.99),
                q(0.999),
                histogram.max()
            );
        }
    }
    if errors > 0 {
        return Err(ClientError::Protocol(format!("{errors} sends failed")));
    }
    Ok(())
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Produce => "produce",
        Mode::Consume => "consume",
        Mode::E2e => "e2e",
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Records sent at once share one clock reading (their send time, taken before the first of them,
/// so a record's latency can only be overstated, by at most the burst's sending time).
const MAX_SEND_BURST: u64 = 64;

/// A record in flight, with what its acknowledgement is measured against.
struct Pending {
    ack: SendFuture,
    /// When the record was sent (or, with `--rate`, due).
    sent_at: Instant,
    /// Sent after the warm-up: counted and timed.
    counted: bool,
    len: usize,
}

/// Records in flight, one FIFO per partition. A partition's records are acknowledged in the order
/// they were sent, so only the front of each FIFO needs watching: no future, allocation or wakeup
/// per record, which at a million records a second would cost the machine the broker shares.
#[derive(Default)]
struct InFlight {
    queues: Vec<VecDeque<Pending>>,
    len: usize,
}

impl InFlight {
    fn push(&mut self, p: Pending) {
        let i = p.ack.partition() as usize;
        if self.queues.len() <= i {
            self.queues.resize_with(i + 1, VecDeque::new);
        }
        self.queues[i].push_back(p);
        self.len += 1;
    }

    /// Waits until a record is done, then hands every record that is done to `tally`, with one
    /// clock reading for all (a batch's records complete together). Cancellation-safe.
    async fn settle(&mut self, tally: &mut Tally) {
        if self.len == 0 {
            return;
        }
        std::future::poll_fn(|cx| match self.take_done(cx, tally) {
            0 => Poll::Pending,
            _ => Poll::Ready(()),
        })
        .await;
    }

    /// `settle` without the wait: takes only what is done already.
    async fn take_ready(&mut self, tally: &mut Tally) {
        std::future::poll_fn(|cx| {
            self.take_done(cx, tally);
            Poll::Ready(())
        })
        .await;
    }

    /// Hands every record that is done to `tally` and returns how many; the fronts still pending
    /// keep `cx`'s waker. The clock is read once, and only if something is done.
    fn take_done(&mut self, cx: &mut Context<'_>, tally: &mut Tally) -> usize {
        let mut acked = None;
        let mut done = 0;
        for q in &mut self.queues {
            while let Some(front) = q.front_mut() {
                let Poll::Ready(result) = Pin::new(&mut front.ack).poll(cx) else {
                    break;
                };
                let p = q.pop_front().expect("a front");
                self.len -= 1;
                done += 1;
                tally.add(&p, result.is_ok(), *acked.get_or_insert_with(Instant::now));
            }
        }
        if done > 0 {
            tally.publish();
        }
        done
    }
}

/// One producer's acknowledgements: latencies and counts, published to the shared `Stats` once
/// per burst of acknowledgements rather than once per record.
struct Tally {
    h: Histogram<u64>,
    /// Time and count records (produce mode); in e2e mode the consumers do.
    record: bool,
    stats: Arc<Stats>,
    measure_from: Instant,
    messages: u64,
    bytes: u64,
    errors: u64,
    last: Option<Instant>,
}

impl Tally {
    fn add(&mut self, p: &Pending, ok: bool, acked: Instant) {
        if !ok {
            self.errors += 1;
        } else if p.counted && self.record {
            self.messages += 1;
            self.bytes += p.len as u64;
            self.last = Some(acked);
            let latency = acked.saturating_duration_since(p.sent_at).as_micros() as u64;
            // Beyond the histogram's 60 s bound a latency counts as 60 s, not as nothing.
            self.h.saturating_record(latency.max(1));
        }
    }

    fn publish(&mut self) {
        let s = &self.stats;
        s.errors
            .fetch_add(std::mem::take(&mut self.errors), Ordering::Relaxed);
        if let Some(last) = self.last.take() {
            s.messages
                .fetch_add(std::mem::take(&mut self.messages), Ordering::Relaxed);
            s.bytes
                .fetch_add(std::mem::take(&mut self.bytes), Ordering::Relaxed);
            let ns = last.saturating_duration_since(self.measure_from).as_nanos();
            s.last_ns
                .fetch_max(ns.min(u64::MAX as u128) as u64, Ordering::Relaxed);
        }
    }
}

/// The measured part of a run.
#[derive(Clone, Copy)]
struct Window {
    /// The end of the warm-up.
    from: Instant,
    /// The same instant on the wall clock, as e2e records carry their send time: producers and
    /// consumers both count a record by its stamp against this one value.
    from_wall_ns: u64,
    /// The end of a `--duration` run.
    until: Option<Instant>,
    /// The same instant on the wall clock: e2e records stamped later are not measured.
    until_wall_ns: Option<u64>,
}

/// How long e2e consumers go on reading after the window ends, for the records sent inside it that
/// are still on their way (the slowest ones: dropping them would flatter the latency figures).
const E2E_GRACE: Duration = Duration::from_secs(5);
/// Past the window, how long an e2e consumer may see nothing before it stops early.
const E2E_IDLE_END: Duration = Duration::from_secs(2);

/// Sends until the window ends or `limit` messages; returns send-to-ack latencies (when `record`).
async fn produce_worker(
    opts: Opts,
    stats: Arc<Stats>,
    window: Window,
    limit: Option<u64>,
    record: bool,
) -> Result<Histogram<u64>, ClientError> {
    let acks = match opts.acks {
        AcksArg::All => Acks::All,
        AcksArg::Leader => Acks::Leader,
        AcksArg::None => Acks::None,
    };
    let config = ProducerConfig {
        acks,
        batch_bytes: opts.batch_bytes,
        linger: Duration::from_millis(opts.linger_ms),
        idempotence: !opts.no_idempotence,
        ..ProducerConfig::default()
    };
    let producer = Producer::connect(&opts.bootstrap, config).await?;
    let mut tally = Tally {
        h: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
            .map_err(|e| ClientError::Protocol(e.to_string()))?,
        record,
        stats,
        measure_from: window.from,
        messages: 0,
        bytes: 0,
        errors: 0,
        last: None,
    };
    let interval = opts
        .rate
        .map(|r| Duration::from_secs_f64(opts.producers.max(1) as f64 / r.max(1) as f64));
    let started = Instant::now();
    // Records sent after the warm-up (what `limit` counts), and all records sent (the schedule).
    let mut sent = 0u64;
    let mut scheduled = 0u64;
    let mut value = vec![0x5au8; opts.message_size.max(8)];
    let mut in_flight = InFlight::default();
    loop {
        let now = Instant::now();
        if window.until.is_some_and(|d| now >= d) || limit.is_some_and(|l| sent >= l) {
            break;
        }
        let room = opts.in_flight.max(1).saturating_sub(in_flight.len) as u64;
        if room == 0 {
            in_flight.settle(&mut tally).await;
            continue;
        }
        let due = match interval {
            None => u64::MAX,
            Some(i) => {
                let next_at = started + i.mul_f64(scheduled as f64);
                if now < next_at {
                    tokio::select! {
                        _ = in_flight.settle(&mut tally), if in_flight.len > 0 => {}
                        _ = tokio::time::sleep_until(next_at.into()) => {}
                    }
                    continue;
                }
                // Every record due by now: after a stall the schedule catches up in bursts.
                let due_by_now =
                    (now.duration_since(started).as_secs_f64() / i.as_secs_f64()) as u64;
                (due_by_now + 1).saturating_sub(scheduled).max(1)
            }
        };
        // e2e: records carry their send time; one wall-clock reading serves the burst.
        let wall_ns = if record { 0 } else { now_ns() };
        for _ in 0..room.min(due).min(MAX_SEND_BURST) {
            // With --rate, latency counts from when the record was due, so a bench that falls behind
            // its schedule reports the wait instead of hiding it (coordinated omission).
            let sent_at = interval.map_or(now, |i| started + i.mul_f64(scheduled as f64));
            // e2e consumers count a record by the send time it carries, so the producer does too.
            let late_ns = now.saturating_duration_since(sent_at).as_nanos() as u64;
            let stamp_ns = wall_ns.saturating_sub(late_ns);
            let counted = if record {
                sent_at >= window.from
            } else {
                stamp_ns >= window.from_wall_ns
            };
            if counted {
                if limit.is_some_and(|l| sent >= l) {
                    break;
                }
                sent += 1;
            }
            scheduled += 1;
            if !record {
                value[..8].copy_from_slice(&stamp_ns.to_be_bytes());
            }
            // Keyless records, as Kafka's own perf tool sends: the producer's sticky partitioner
            // fills one partition's batch at a time. The value is copied into the batch right here.
            let len = value.len();
            match producer
                .begin_send(&opts.topic, None, None, &value, &[])
                .await
            {
                Ok(ack) => in_flight.push(Pending {
                    ack,
                    sent_at,
                    counted,
                    len,
                }),
                Err(_) => {
                    tally.errors += 1;
                    tally.publish();
                }
            }
        }
        // Acknowledgements that came in while sending are timed now, not when the window fills.
        in_flight.take_ready(&mut tally).await;
    }
    while in_flight.len > 0 {
        in_flight.settle(&mut tally).await;
    }
    producer.flush().await?;
    Ok(tally.h)
}

/// Reads the given partitions until `deadline` or `expected` messages; returns send-to-receive
/// latencies in e2e mode.
async fn consume_worker(
    opts: Opts,
    partitions: Vec<u32>,
    stats: Arc<Stats>,
    window: Window,
    expected: Option<u64>,
    mode: Mode,
    ready: Arc<tokio::sync::Barrier>,
) -> Result<Histogram<u64>, ClientError> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    if partitions.is_empty() {
        return Ok(h);
    }
    let reset = if mode == Mode::E2e {
        OffsetSpec::Latest
    } else {
        OffsetSpec::Earliest
    };
    let config = ConsumerConfig {
        max_wait: Duration::from_millis(100),
        reset,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::connect(&opts.bootstrap, config).await?;
    consumer.assign(&opts.topic, Some(partitions)).await?;
    let mut window = window;
    // Bounded: a consumer that failed to connect never arrives.
    let _ = tokio::time::timeout(Duration::from_secs(30), ready.wait()).await;
    if mode == Mode::Consume {
        // Consume throughput counts from when every consumer is connected and assigned, not from
        // before the connections were made.
        let now = Instant::now();
        // A `--duration` window keeps its length.
        window.until = window
            .until
            .map(|u| u + now.saturating_duration_since(window.from));
        window.from = now;
    }
    // e2e consumers read on past the window's end for the records sent inside it.
    let stop_at = window
        .until
        .map(|d| if mode == Mode::E2e { d + E2E_GRACE } else { d });
    let mut idle_since = Instant::now();
    loop {
        let now = Instant::now();
        if stop_at.is_some_and(|d| now >= d)
            || expected.is_some_and(|e| stats.messages.load(Ordering::Relaxed) >= e)
        {
            break;
        }
        if idle_since.elapsed() > Duration::from_secs(10) {
            break; // nothing more is coming
        }
        // Past the window, an e2e consumer idle for longer than any latency this machine showed
        // (up to 1.3 s) has everything sent inside it.
        if window.until.is_some_and(|d| now >= d) && idle_since.elapsed() > E2E_IDLE_END {
            break;
        }
        let records = consumer.poll().await?;
        if !records.is_empty() {
            idle_since = Instant::now();
        }
        let arrived = now_ns();
        for r in records {
            if mode != Mode::E2e && Instant::now() < window.from {
                continue;
            }
            let value = r.value.unwrap_or_default();
            let sent = (mode == Mode::E2e && value.len() >= 8)
                .then(|| u64::from_be_bytes(value[..8].try_into().unwrap_or_default()));
            // Records sent during the warm-up, or after the window, are not measured.
            if sent.is_some_and(|t| {
                t < window.from_wall_ns || window.until_wall_ns.is_some_and(|u| t >= u)
            }) {
                continue;
            }
            // The rest of a poll past `--messages` is not counted.
            if !stats.count_up_to(expected.unwrap_or(u64::MAX), value.len(), window.from) {
                break;
            }
            if let Some(t) = sent {
                h.saturating_record((arrived.saturating_sub(t) / 1000).max(1));
            }
        }
    }
    Ok(h)
}
