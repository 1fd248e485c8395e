//! The counters of a frontend: lock-free atomics bumped on the request path, read as a
//! [`FrontendCounters`] snapshot (JSON on the proxy's control socket, the log at exit,
//! and later the metrics of the stats issue).

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Upper bounds (milliseconds) of the response-time buckets; a last bucket takes the rest.
pub const RESPONSE_TIME_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

#[derive(Debug, Default)]
pub struct FrontendStats {
    connections: AtomicU64,
    open_connections: AtomicU64,
    handshakes: AtomicU64,
    handshake_failures: AtomicU64,
    handshake_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    requests: AtomicU64,
    /// 1xx to 5xx.
    status_classes: [AtomicU64; 5],
    /// Answered by the proxy itself, by reason.
    no_backend: AtomicU64,
    backend_connect_errors: AtomicU64,
    backend_timeouts: AtomicU64,
    backend_errors: AtomicU64,
    retries: AtomicU64,
    redirects: AtomicU64,
    response_time_buckets: [AtomicU64; RESPONSE_TIME_BUCKETS_MS.len() + 1],
    response_time_us_total: AtomicU64,
}

/// Why the proxy answered a request itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyFailure {
    /// 503: no backend is ready and UP.
    NoBackend,
    /// 503: the backend could not be connected to.
    Connect,
    /// 504: no response head in time.
    Timeout,
    /// 502: the backend closed or answered something that is not HTTP.
    Backend,
}

/// A snapshot of [`FrontendStats`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendCounters {
    pub connections: u64,
    pub open_connections: u64,
    pub handshakes: u64,
    pub handshake_failures: u64,
    pub handshake_timeouts: u64,
    pub idle_timeouts: u64,
    pub requests: u64,
    /// Responses by class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [u64; 5],
    pub no_backend: u64,
    pub backend_connect_errors: u64,
    pub backend_timeouts: u64,
    pub backend_errors: u64,
    pub retries: u64,
    pub redirects: u64,
    /// Counts per bucket of [`RESPONSE_TIME_BUCKETS_MS`] (time to the response head), the
    /// last one for anything slower.
    pub response_time_buckets: Vec<u64>,
    pub response_time_us_total: u64,
}

impl FrontendStats {
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Relaxed);
        self.open_connections.fetch_add(1, Relaxed);
    }

    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Relaxed);
    }

    pub fn handshake(&self) {
        self.handshakes.fetch_add(1, Relaxed);
    }

    pub fn handshake_failed(&self, timed_out: bool) {
        let counter = if timed_out {
            &self.handshake_timeouts
        } else {
            &self.handshake_failures
        };
        counter.fetch_add(1, Relaxed);
    }

    pub fn idle_timeout(&self) {
        self.idle_timeouts.fetch_add(1, Relaxed);
    }

    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    pub fn retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub fn redirect(&self) {
        self.redirects.fetch_add(1, Relaxed);
    }

    pub fn failure(&self, failure: ProxyFailure) {
        let counter = match failure {
            ProxyFailure::NoBackend => &self.no_backend,
            ProxyFailure::Connect => &self.backend_connect_errors,
            ProxyFailure::Timeout => &self.backend_timeouts,
            ProxyFailure::Backend => &self.backend_errors,
        };
        counter.fetch_add(1, Relaxed);
    }

    /// A response head sent with `status`, `elapsed` after the request arrived.
    pub fn response(&self, status: u16, elapsed: Duration) {
        if let Some(class) = (status / 100).checked_sub(1).filter(|c| *c < 5) {
            self.status_classes[class as usize].fetch_add(1, Relaxed);
        }
        let ms = elapsed.as_millis() as u64;
        let bucket = RESPONSE_TIME_BUCKETS_MS
            .iter()
            .position(|bound| ms < *bound)
            .unwrap_or(RESPONSE_TIME_BUCKETS_MS.len());
        self.response_time_buckets[bucket].fetch_add(1, Relaxed);
        self.response_time_us_total
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    pub fn snapshot(&self) -> FrontendCounters {
        let load = |c: &AtomicU64| c.load(Relaxed);
        FrontendCounters {
            connections: load(&self.connections),
            open_connections: load(&self.open_connections),
            handshakes: load(&self.handshakes),
            handshake_failures: load(&self.handshake_failures),
            handshake_timeouts: load(&self.handshake_timeouts),
            idle_timeouts: load(&self.idle_timeouts),
            requests: load(&self.requests),
            responses: self.status_classes.each_ref().map(load),
            no_backend: load(&self.no_backend),
            backend_connect_errors: load(&self.backend_connect_errors),
            backend_timeouts: load(&self.backend_timeouts),
            backend_errors: load(&self.backend_errors),
            retries: load(&self.retries),
            redirects: load(&self.redirects),
            response_time_buckets: self.response_time_buckets.iter().map(load).collect(),
            response_time_us_total: load(&self.response_time_us_total),
        }
    }
}

impl FrontendCounters {
    /// The upper bound (ms) of the response-time bucket holding the `quantile` (0 to 1)
    /// of responses: `Some(None)` beyond the last bound, `None` before any response.
    pub fn response_time_quantile_ms(&self, quantile: f64) -> Option<Option<u64>> {
        let total: u64 = self.response_time_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * quantile).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, count) in self.response_time_buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(RESPONSE_TIME_BUCKETS_MS.get(i).copied());
            }
        }
        Some(None)
    }

    /// The response-time bucket bound under which `quantile` of the responses fell, as
    /// people read it: `<5ms`, `>10000ms` beyond the last bucket, `-` before any.
    pub fn quantile_label(&self, quantile: f64) -> String {
        match self.response_time_quantile_ms(quantile) {
            None => "-".to_owned(),
            Some(Some(bound)) => format!("<{bound}ms"),
            Some(None) => format!(">{}ms", RESPONSE_TIME_BUCKETS_MS.last().unwrap_or(&0)),
        }
    }

    /// Failed handshakes (and timed out ones) and the proxy's own 502, 503 and 504.
    pub fn errors(&self) -> u64 {
        self.handshake_failures
            + self.handshake_timeouts
            + self.no_backend
            + self.backend_connect_errors
            + self.backend_timeouts
            + self.backend_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_land_in_their_class_and_bucket() {
        let stats = FrontendStats::default();
        stats.response(200, Duration::from_micros(300));
        stats.response(204, Duration::from_millis(7));
        stats.response(503, Duration::from_secs(9));
        stats.response(999, Duration::ZERO);
        let counters = stats.snapshot();
        assert_eq!(counters.responses, [0, 2, 0, 0, 1]);
        assert_eq!(counters.response_time_buckets[0], 2);
        assert_eq!(counters.response_time_buckets[3], 1);
        assert_eq!(counters.response_time_buckets[12], 1);
        assert_eq!(counters.response_time_us_total, 300 + 7000 + 9_000_000);
    }

    #[test]
    fn quantiles_name_the_bucket_bound() {
        let stats = FrontendStats::default();
        assert_eq!(stats.snapshot().response_time_quantile_ms(0.5), None);
        for _ in 0..98 {
            stats.response(200, Duration::from_micros(1500));
        }
        stats.response(200, Duration::from_millis(30));
        stats.response(200, Duration::from_secs(6));
        let counters = stats.snapshot();
        assert_eq!(counters.response_time_quantile_ms(0.5), Some(Some(2)));
        assert_eq!(counters.response_time_quantile_ms(0.99), Some(Some(50)));
        assert_eq!(counters.response_time_quantile_ms(1.0), Some(None));
    }
}
