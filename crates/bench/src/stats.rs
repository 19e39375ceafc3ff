//! Percentiles of latency samples.

use serde::Serialize;

/// p50 and p99 of a run, in microseconds, and how many samples they come from.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) samples: usize,
}

impl Latency {
    /// From samples in nanoseconds (nearest-rank percentiles).
    pub(crate) fn from_nanos(mut nanos: Vec<u64>) -> Option<Latency> {
        if nanos.is_empty() {
            return None;
        }
        nanos.sort_unstable();
        let rank = |p: f64| {
            let n = nanos.len() as f64;
            let index = ((p * n).ceil() as usize).clamp(1, nanos.len()) - 1;
            nanos[index] as f64 / 1000.0
        };
        Some(Latency {
            p50_us: rank(0.50),
            p99_us: rank(0.99),
            samples: nanos.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let latency = Latency::from_nanos((1..=100).map(|n| n * 1000).collect()).unwrap();
        assert_eq!(
            (latency.p50_us, latency.p99_us, latency.samples),
            (50.0, 99.0, 100)
        );
        let one = Latency::from_nanos(vec![7000]).unwrap();
        assert_eq!((one.p50_us, one.p99_us), (7.0, 7.0));
        assert!(Latency::from_nanos(Vec::new()).is_none());
    }
}
