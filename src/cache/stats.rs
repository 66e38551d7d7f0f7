//! Cache counters for `strata stats`: bytes fetched, hits, prefetch progress, fetch latency.
//! Atomics (and one small mutex for the latency sample); calls nothing.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct Stats {
    bytes_fetched: AtomicU64,
    requests: AtomicU64,
    mem_hits: AtomicU64,
    disk_hits: AtomicU64,
    joined: AtomicU64,
    prefetched_spans: AtomicU64,
    spans_fetched: AtomicU64,
    partial_spans: AtomicU64,
    ahead_spans: AtomicU64,
    /// Fetch latencies in microseconds (bounded sample).
    latencies: Mutex<Vec<u32>>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Default)]
pub struct StatsSnapshot {
    pub bytes_fetched: u64,
    pub requests: u64,
    pub mem_hits: u64,
    pub disk_hits: u64,
    pub joined_inflight: u64,
    pub prefetched_spans: u64,
    pub spans_fetched: u64,
    /// Spans of which only a prefix (the blocks a file read needed) was fetched.
    #[serde(default)]
    pub partial_spans: u64,
    /// Spans fetched ahead of reads on demand (neighbour fetch-ahead).
    #[serde(default)]
    pub ahead_spans: u64,
    pub fetch_avg_ms: f64,
    pub fetch_p99_ms: f64,
}

const MAX_SAMPLES: usize = 100_000;

impl Stats {
    pub(super) fn fetched(&self, bytes: u64, took: Duration) {
        self.bytes_fetched.fetch_add(bytes, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        let mut l = self.latencies.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() < MAX_SAMPLES {
            l.push(took.as_micros().min(u32::MAX as u128) as u32);
        }
    }
    pub(super) fn spans(&self, n: u64) {
        self.spans_fetched.fetch_add(n, Relaxed);
    }
    pub(super) fn partial(&self) {
        self.partial_spans.fetch_add(1, Relaxed);
    }
    pub(super) fn fetched_ahead(&self, n: u64) {
        self.ahead_spans.fetch_add(n, Relaxed);
    }
    pub(super) fn mem_hit(&self) {
        self.mem_hits.fetch_add(1, Relaxed);
    }
    pub(super) fn disk_hit(&self) {
        self.disk_hits.fetch_add(1, Relaxed);
    }
    pub(super) fn joined(&self) {
        self.joined.fetch_add(1, Relaxed);
    }
    pub(super) fn prefetched(&self, n: u64) {
        self.prefetched_spans.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let mut l = self
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        l.sort_unstable();
        let avg = if l.is_empty() {
            0.0
        } else {
            l.iter().map(|&v| v as f64).sum::<f64>() / l.len() as f64 / 1000.0
        };
        let p99 = if l.is_empty() {
            0.0
        } else {
            l[((l.len() - 1) as f64 * 0.99) as usize] as f64 / 1000.0
        };
        StatsSnapshot {
            bytes_fetched: self.bytes_fetched.load(Relaxed),
            requests: self.requests.load(Relaxed),
            mem_hits: self.mem_hits.load(Relaxed),
            disk_hits: self.disk_hits.load(Relaxed),
            joined_inflight: self.joined.load(Relaxed),
            prefetched_spans: self.prefetched_spans.load(Relaxed),
            spans_fetched: self.spans_fetched.load(Relaxed),
            partial_spans: self.partial_spans.load(Relaxed),
            ahead_spans: self.ahead_spans.load(Relaxed),
            fetch_avg_ms: avg,
            fetch_p99_ms: p99,
        }
    }
}
