//! Rate limits of public routes: one token bucket per client address.
//!
//! ```text
//! public route + client address (the first untrusted hop; IPv6 by /64)
//!   ──PublicLimiter::admit──▶ bucket refilled at `rate` up to `burst` ─▶ a token? forward
//!                                                                       : 429 + Retry-After
//! ```
//!
//! Buckets live in a bounded cache (idle ones expire once full again), so a flood of
//! addresses costs memory once, not forever.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::Rate;

/// Buckets kept at most; the least recently used go first.
const MAX_CLIENTS: u64 = 100_000;

/// Per-address token buckets for the public routes.
#[derive(Debug)]
pub(crate) struct PublicLimiter {
    rate: Rate,
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl PublicLimiter {
    pub(crate) fn new(rate: Rate) -> PublicLimiter {
        let refill = Duration::from_secs_f64(rate.burst / rate.per_second);
        PublicLimiter {
            rate,
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(refill + Duration::from_secs(1))
                .build(),
        }
    }

    /// Takes a token of `client`'s bucket.
    ///
    /// # Errors
    /// The bucket is empty: the seconds until it holds a token again (at least 1).
    pub(crate) fn admit(&self, client: IpAddr) -> Result<(), u64> {
        let key = group(client);
        let bucket = self.buckets.get_with(key, || {
            Arc::new(Mutex::new(Bucket {
                tokens: self.rate.burst,
                at: Instant::now(),
            }))
        });
        let mut bucket = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let refilled = now.duration_since(bucket.at).as_secs_f64() * self.rate.per_second;
        bucket.tokens = (bucket.tokens + refilled).min(self.rate.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait = (1.0 - bucket.tokens) / self.rate.per_second;
        Err((wait.ceil() as u64).max(1))
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one host holds a whole /64).
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_per_client() {
        let limiter = PublicLimiter::new(Rate {
            per_second: 1.0,
            burst: 3.0,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.admit(a), Ok(()));
        }
        assert_eq!(limiter.admit(a), Err(1));
        assert_eq!(
            limiter.admit(b),
            Ok(()),
            "another client has its own bucket"
        );
    }

    #[test]
    fn an_ipv6_host_is_one_client_across_its_slash_64() {
        let limiter = PublicLimiter::new(Rate {
            per_second: 1.0,
            burst: 1.0,
        });
        assert_eq!(limiter.admit("2001:db8::1".parse().unwrap()), Ok(()));
        assert!(limiter.admit("2001:db8::ffff:2".parse().unwrap()).is_err());
        assert_eq!(limiter.admit("2001:db8:0:1::1".parse().unwrap()), Ok(()));
    }
}
