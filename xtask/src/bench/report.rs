//! What a benchmark run measured: medians, ratios against the baselines measured in the same
//! run, targets, the terminal table and the JSON file.

use serde::Serialize;

use crate::measuring::percentile;

/// The three ways of moving the same bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Through the service over HTTP.
    Service,
    /// Direct to S3 with aws-sdk-s3, same part size and concurrency: the limit of our stack.
    Sdk,
    /// Direct to S3 with boto3's transfer manager: what users reach for.
    Boto3,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Service, Variant::Sdk, Variant::Boto3];

    pub fn letter(self) -> &'static str {
        match self {
            Variant::Service => "a",
            Variant::Sdk => "b",
            Variant::Boto3 => "c",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Service => "(a) service",
            Variant::Sdk => "(b) aws-sdk-s3",
            Variant::Boto3 => "(c) boto3",
        }
    }
}

/// One measured quantity for the three variants.
#[derive(Serialize, Debug, Clone)]
pub struct Metric {
    pub name: String,
    pub unit: &'static str,
    /// Rate per repetition, by variant (a, b, c), in run order.
    pub runs: [Vec<f64>; 3],
    pub median: [f64; 3],
    pub a_over_b: f64,
    pub a_over_c: f64,
    /// Latency percentiles in milliseconds by variant, where latency is measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<[Percentiles; 3]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
}

#[derive(Serialize, Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

/// A ratio the issue asks the service to reach; reported, never asserted.
#[derive(Serialize, Debug, Clone)]
pub struct Target {
    pub description: String,
    pub met: bool,
}

impl Metric {
    /// `runs` holds, per variant, the rate of every repetition.
    pub fn new(name: impl Into<String>, unit: &'static str, runs: [Vec<f64>; 3]) -> Metric {
        let median = [median(&runs[0]), median(&runs[1]), median(&runs[2])];
        Metric {
            name: name.into(),
            unit,
            a_over_b: median[0] / median[1],
            a_over_c: median[0] / median[2],
            runs,
            median,
            latency_ms: None,
            target: None,
        }
    }

    pub fn with_target_a_over_b(mut self, at_least: f64) -> Metric {
        self.target = Some(Target {
            description: format!("a/b >= {at_least}"),
            met: self.a_over_b >= at_least,
        });
        self
    }
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

pub fn percentiles(values: &[f64]) -> Percentiles {
    Percentiles {
        p50: percentile(values, 50.0),
        p99: percentile(values, 99.0),
    }
}

/// One workload on one S3 server.
#[derive(Serialize, Debug, Clone)]
pub struct Case {
    pub title: String,
    /// `s3s-fs` or `moto`.
    pub s3_server: String,
    pub objects: usize,
    pub object_bytes: u64,
    pub repetitions: u32,
    pub metrics: Vec<Metric>,
    pub service_peak_rss_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_target: Option<Target>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub unix_time: u64,
    pub cpus: usize,
    pub part_size: u64,
    pub parts_in_flight: usize,
    pub max_buffered_parts: usize,
    pub cases: Vec<Case>,
    /// 1, 2 and 4 instances sharing the queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
    pub notes: Vec<String>,
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

pub fn print_case(case: &Case) {
    println!(
        "\n{} on {} (median of {})",
        case.title, case.s3_server, case.repetitions
    );
    let header: Vec<&str> = Variant::ALL.iter().map(|v| v.label()).collect();
    println!(
        "  {:<22}{:>15}{:>17}{:>12}{:>8}{:>8}  target",
        "", header[0], header[1], header[2], "a/b", "a/c"
    );
    for metric in &case.metrics {
        let target = metric
            .target
            .as_ref()
            .map(|t| {
                format!(
                    "{} {}",
                    t.description,
                    if t.met { "met" } else { "NOT met" }
                )
            })
            .unwrap_or_default();
        println!(
            "  {:<22}{:>15.1}{:>17.1}{:>12.1}{:>8.2}{:>8.2}  {target}",
            format!("{} {}", metric.name, metric.unit),
            metric.median[0],
            metric.median[1],
            metric.median[2],
            metric.a_over_b,
            metric.a_over_c,
        );
        if let Some(latency) = &metric.latency_ms {
            let cells: Vec<String> = latency
                .iter()
                .map(|p| format!("{:.1}/{:.1}", p.p50, p.p99))
                .collect();
            println!(
                "  {:<22}{:>15}{:>17}{:>12}",
                "latency p50/p99 ms", cells[0], cells[1], cells[2]
            );
        }
    }
    let rss = match &case.rss_target {
        Some(t) => format!(
            " ({} {})",
            t.description,
            if t.met { "met" } else { "NOT met" }
        ),
        None => String::new(),
    };
    println!(
        "  service peak RSS (VmHWM): {:.1} MiB{rss}",
        mib(case.service_peak_rss_bytes)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), 50.0);
        assert_eq!(percentile(&values, 99.0), 99.0);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_and_targets_come_from_medians() {
        let metric = Metric::new(
            "upload",
            "MB/s",
            [
                vec![90.0, 80.0, 100.0],
                vec![100.0; 3],
                vec![45.0, 50.0, 55.0],
            ],
        )
        .with_target_a_over_b(0.9);
        assert_eq!(metric.median, [90.0, 100.0, 50.0]);
        assert!((metric.a_over_b - 0.9).abs() < 1e-9);
        assert!((metric.a_over_c - 1.8).abs() < 1e-9);
        assert!(metric.target.unwrap().met);
        let slow = Metric::new("x", "MB/s", [vec![80.0], vec![100.0], vec![1.0]])
            .with_target_a_over_b(0.9);
        assert!(!slow.target.unwrap().met);
    }
}

/// The fleet case: 1, 2 and 4 instances sharing the queue (bench/fleet.rs).
#[derive(Serialize, Debug, Clone)]
pub struct Fleet {
    pub files: usize,
    pub file_bytes: usize,
    pub runs: Vec<FleetRun>,
}

#[derive(Serialize, Debug, Clone)]
pub struct FleetRun {
    pub instances: usize,
    /// Files per second, first write to last output, per repetition.
    pub files_per_second: Vec<f64>,
    pub median_files_per_second: f64,
    /// Median throughput over the one-instance median.
    pub over_one_instance: f64,
    /// Upload returned → output written, in milliseconds, over all repetitions.
    pub lag_ms: Percentiles,
}
