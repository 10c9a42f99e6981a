//! Exponential backoff with full jitter (retries) and jittered exponential open periods
//! (circuit breaker). Pure functions of a random source so the bounds can be tested.

use std::time::Duration;

/// The un-jittered ceiling of backoff number `n` (1-based): `min(max, base * 2^(n-1))`.
pub fn ceiling(base: Duration, max: Duration, n: u32) -> Duration {
    let factor = 1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX);
    base.checked_mul(factor).map_or(max, |d| d.min(max))
}

/// Backoff before retry `n` (1-based) with "full jitter": uniform in `[0, ceiling]`.
pub fn full_jitter(base: Duration, max: Duration, n: u32, rng: &mut fastrand::Rng) -> Duration {
    ceiling(base, max, n).mul_f64(rng.f64())
}

/// Open period number `n` (1-based) of a circuit breaker: the ceiling `min(max, base * 2^(n-1))`
/// shortened by up to `jitter` of itself, so endpoints that failed together do not all probe at
/// the same instant.
pub fn jittered_open(
    base: Duration,
    max: Duration,
    n: u32,
    jitter: f64,
    rng: &mut fastrand::Rng,
) -> Duration {
    let d = ceiling(base, max, n);
    let j = jitter.clamp(0.0, 1.0);
    d.mul_f64(1.0 - j * rng.f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_and_saturates() {
        let (b, m) = (Duration::from_millis(25), Duration::from_secs(1));
        let got: Vec<_> = (1..=8).map(|n| ceiling(b, m, n).as_millis()).collect();
        assert_eq!(got, [25, 50, 100, 200, 400, 800, 1000, 1000]);
        assert_eq!(ceiling(b, m, 200), m);
    }

    #[test]
    fn full_jitter_stays_within_bounds_and_spreads() {
        let mut rng = fastrand::Rng::with_seed(7);
        let (b, m) = (Duration::from_millis(100), Duration::from_secs(10));
        for n in 1..=5 {
            let c = ceiling(b, m, n);
            let samples: Vec<_> = (0..500).map(|_| full_jitter(b, m, n, &mut rng)).collect();
            assert!(samples.iter().all(|s| *s <= c));
            assert!(samples.iter().any(|s| *s < c / 4), "low values occur");
            assert!(samples.iter().any(|s| *s > c * 3 / 4), "high values occur");
        }
    }

    #[test]
    fn open_period_jitter_bounds() {
        let mut rng = fastrand::Rng::with_seed(3);
        let (b, m) = (Duration::from_secs(1), Duration::from_secs(60));
        for n in 1..=8 {
            let c = ceiling(b, m, n);
            for _ in 0..200 {
                let d = jittered_open(b, m, n, 0.5, &mut rng);
                assert!(d <= c && d >= c / 2, "{d:?} outside [{:?}, {c:?}]", c / 2);
            }
        }
        assert_eq!(
            jittered_open(b, m, 3, 0.0, &mut rng),
            Duration::from_secs(4)
        );
    }
}
