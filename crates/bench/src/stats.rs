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

/// The smallest, middle and largest of one figure over the repetitions of a run.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Spread {
    pub(crate) min: f64,
    pub(crate) median: f64,
    pub(crate) max: f64,
}

impl Spread {
    /// Of `values` (the median of an even count is the mean of the middle two); not a
    /// number for none.
    pub(crate) fn of(mut values: Vec<f64>) -> Spread {
        if values.is_empty() {
            return Spread {
                min: f64::NAN,
                median: f64::NAN,
                max: f64::NAN,
            };
        }
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Spread {
            min: values[0],
            median,
            max: values[n - 1],
        }
    }
}

/// One latency figure measured once per repetition, in the order measured.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Series {
    pub(crate) runs: Vec<Latency>,
}

impl Series {
    pub(crate) fn push(&mut self, latency: Latency) {
        self.runs.push(latency);
    }

    /// The spread of the runs' p50s.
    pub(crate) fn p50(&self) -> Spread {
        Spread::of(self.runs.iter().map(|l| l.p50_us).collect())
    }

    /// The spread of the runs' p99s.
    pub(crate) fn p99(&self) -> Spread {
        Spread::of(self.runs.iter().map(|l| l.p99_us).collect())
    }

    /// The spread, over the repetitions, of this series' p50 divided by `other`'s in the
    /// same repetition: a ratio of figures measured side by side.
    pub(crate) fn ratio_to(&self, other: &Series) -> Spread {
        let ratios = self
            .runs
            .iter()
            .zip(&other.runs)
            .map(|(a, b)| a.p50_us / b.p50_us)
            .collect();
        Spread::of(ratios)
    }
}

/// A latency figure and the floor measured just before it, in every repetition
/// (floor, figure, floor, figure, ...).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Paired {
    pub(crate) floor: Series,
    pub(crate) figure: Series,
}

impl Paired {
    /// The figure over its floor, repetition by repetition.
    pub(crate) fn ratio(&self) -> Spread {
        self.figure.ratio_to(&self.floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_side_by_side_ratios() {
        let spread = Spread::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((spread.min, spread.median, spread.max), (1.0, 2.0, 3.0));
        let even = Spread::of(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!(even.median, 2.5);
        assert!(Spread::of(Vec::new()).median.is_nan());

        let series = |p50s: &[f64]| Series {
            runs: p50s
                .iter()
                .map(|&p50_us| Latency {
                    p50_us,
                    p99_us: p50_us * 2.0,
                    samples: 10,
                })
                .collect(),
        };
        // Paired run by run: 10/5, 30/10, 20/20.
        let paired = Paired {
            floor: series(&[5.0, 10.0, 20.0]),
            figure: series(&[10.0, 30.0, 20.0]),
        };
        let ratio = paired.ratio();
        assert_eq!((ratio.min, ratio.median, ratio.max), (1.0, 2.0, 3.0));
        assert_eq!(paired.figure.p99().median, 40.0);
    }

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
