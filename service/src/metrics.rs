//! Prometheus text metrics, kept small on purpose: a few counters, gauges and histograms.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Event to output: seconds to an hour.
const LAG_BUCKETS: [f64; 12] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram::with_bounds(&BUCKETS)
    }
}

impl Histogram {
    fn with_bounds(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            count: 0,
            sum: 0.0,
        }
    }

    fn observe(&mut self, seconds: f64) {
        for (i, bound) in self.bounds.iter().enumerate() {
            if seconds <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

/// What became of the queue messages this instance received.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum MessageOutcome {
    /// Received (every delivery).
    Received,
    /// Received again after an earlier delivery (its ApproximateReceiveCount > 1).
    Redelivered,
    /// Deleted: its file version is processed, superseded or gone.
    Deleted,
    /// Deleted without work: the version's output was already there (a duplicate event, or
    /// another instance won the race).
    Duplicate,
    /// Deleted without work: the raw object has a newer version, whose own event counts.
    Superseded,
    /// Left for a later delivery (failed, or lost a conditional write), and counted by the
    /// queue towards its dead-letter limit.
    Released,
    /// Its visibility was extended while a long file was processed.
    Extended,
}

impl MessageOutcome {
    fn label(self) -> &'static str {
        match self {
            MessageOutcome::Received => "received",
            MessageOutcome::Redelivered => "redelivered",
            MessageOutcome::Deleted => "deleted",
            MessageOutcome::Duplicate => "duplicate",
            MessageOutcome::Superseded => "superseded",
            MessageOutcome::Released => "released",
            MessageOutcome::Extended => "visibility_extended",
        }
    }
}

pub struct Metrics {
    instance: String,
    messages: Mutex<BTreeMap<MessageOutcome, u64>>,
    /// Messages the queue held (visible and in flight) when this instance last asked.
    queue_seen: Mutex<Option<(u64, u64)>>,
    lag: Mutex<Histogram>,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    processing: Mutex<Histogram>,
    retries: AtomicU64,
    failures: Mutex<BTreeMap<&'static str, u64>>,
    queue_depth: AtomicI64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new("")
    }
}

impl Metrics {
    /// Metrics of the instance named `instance` (the EC2 instance id; empty: unnamed).
    pub fn new(instance: &str) -> Metrics {
        Metrics {
            instance: instance.to_string(),
            messages: Mutex::default(),
            queue_seen: Mutex::default(),
            lag: Mutex::new(Histogram::with_bounds(&LAG_BUCKETS)),
            requests: Mutex::default(),
            latency: Mutex::default(),
            bytes_in: AtomicU64::default(),
            bytes_out: AtomicU64::default(),
            processed: AtomicU64::default(),
            failed: AtomicU64::default(),
            processing: Mutex::default(),
            retries: AtomicU64::default(),
            failures: Mutex::default(),
            queue_depth: AtomicI64::default(),
        }
    }

    pub fn message(&self, outcome: MessageOutcome) {
        *self.messages.lock().unwrap().entry(outcome).or_default() += 1;
    }

    /// The queue's approximate counts: visible messages, and those in flight.
    pub fn queue_seen(&self, visible: u64, in_flight: u64) {
        *self.queue_seen.lock().unwrap() = Some((visible, in_flight));
    }

    /// From the event that announced a file version to its output being written.
    pub fn lag(&self, lag: Duration) {
        self.lag.lock().unwrap().observe(lag.as_secs_f64());
    }

    pub fn request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
        self.latency
            .lock()
            .unwrap()
            .entry(route.to_string())
            .or_default()
            .observe(elapsed.as_secs_f64());
    }

    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn processing_done(&self, ok: bool, elapsed: Duration) {
        if ok { &self.processed } else { &self.failed }.fetch_add(1, Ordering::Relaxed);
        self.processing
            .lock()
            .unwrap()
            .observe(elapsed.as_secs_f64());
    }

    /// A processing try failed transiently and is tried again.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// A processing run was recorded failed, for this reason (its record's code).
    pub fn failed_with(&self, code: &'static str) {
        *self.failures.lock().unwrap().entry(code).or_default() += 1;
    }

    pub fn queue_changed(&self, delta: i64) {
        self.queue_depth.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP filepipe_http_requests_total HTTP requests answered, by method, route and status.\n");
        out.push_str("# TYPE filepipe_http_requests_total counter\n");
        for ((method, route, status), n) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "filepipe_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP filepipe_http_request_duration_seconds Time to answer a request (until its body starts), by route.\n");
        out.push_str("# TYPE filepipe_http_request_duration_seconds histogram\n");
        for (route, histogram) in self.latency.lock().unwrap().iter() {
            histogram.render(
                &mut out,
                "filepipe_http_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        let _ = writeln!(
            out,
            "# HELP filepipe_bytes_in_total Bytes of request bodies received.\n# TYPE filepipe_bytes_in_total counter\nfilepipe_bytes_in_total {}",
            self.bytes_in.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP filepipe_bytes_out_total Bytes of processed files served.\n# TYPE filepipe_bytes_out_total counter\nfilepipe_bytes_out_total {}",
            self.bytes_out.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP filepipe_processing_total Processing runs that ended, by result.\n# TYPE filepipe_processing_total counter\nfilepipe_processing_total{{result=\"success\"}} {}\nfilepipe_processing_total{{result=\"failure\"}} {}",
            self.processed.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP filepipe_processing_retries_total Processing tries that failed transiently and were tried again.\n# TYPE filepipe_processing_retries_total counter\nfilepipe_processing_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        out.push_str("# HELP filepipe_processing_failures_total Files recorded failed, by reason (access_denied: the deployment's permissions are wrong).\n# TYPE filepipe_processing_failures_total counter\n");
        for (code, n) in self.failures.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "filepipe_processing_failures_total{{reason=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP filepipe_processing_duration_seconds Time of one processing run.\n");
        out.push_str("# TYPE filepipe_processing_duration_seconds histogram\n");
        self.processing.lock().unwrap().render(
            &mut out,
            "filepipe_processing_duration_seconds",
            "",
        );
        let _ = writeln!(
            out,
            "# HELP filepipe_queue_depth Files waiting for a processing worker.\n# TYPE filepipe_queue_depth gauge\nfilepipe_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP filepipe_instance_info The instance these metrics are of.\n# TYPE filepipe_instance_info gauge\nfilepipe_instance_info{{instance=\"{}\"}} 1",
            self.instance
        );
        let messages = self.messages.lock().unwrap();
        if !messages.is_empty() {
            out.push_str("# HELP filepipe_queue_messages_total Queue messages this instance received, and what became of them.\n# TYPE filepipe_queue_messages_total counter\n");
            for (outcome, n) in messages.iter() {
                let _ = writeln!(
                    out,
                    "filepipe_queue_messages_total{{outcome=\"{}\"}} {n}",
                    outcome.label()
                );
            }
        }
        drop(messages);
        if let Some((visible, in_flight)) = *self.queue_seen.lock().unwrap() {
            let _ = writeln!(
                out,
                "# HELP filepipe_queue_messages The queue's messages when this instance last asked (approximate, as SQS counts them).\n# TYPE filepipe_queue_messages gauge\nfilepipe_queue_messages{{state=\"visible\"}} {visible}\nfilepipe_queue_messages{{state=\"in_flight\"}} {in_flight}"
            );
        }
        out.push_str("# HELP filepipe_processing_lag_seconds From a file version's event to its output, for outputs this instance wrote.\n# TYPE filepipe_processing_lag_seconds histogram\n");
        self.lag
            .lock()
            .unwrap()
            .render(&mut out, "filepipe_processing_lag_seconds", "");
        if let Some(rss) = resident_bytes() {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory of the service.\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}"
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let _ = writeln!(
                out,
                "# HELP process_open_fds Open file descriptors (connections included).\n# TYPE process_open_fds gauge\nprocess_open_fds {}",
                fds.count()
            );
        }
        out
    }
}

/// VmRSS of this process, from /proc (Linux).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
