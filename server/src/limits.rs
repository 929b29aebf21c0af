//! Per-connection message rate limiting and per-address connection caps.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// A token bucket: `burst` tokens, refilled at `rate` per second; each message takes one.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A bucket that starts full. `rate == 0` makes an unlimited bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why a connection was refused by [`ConnectionLimiter`].
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    PerIp(u32),
    Total(u32),
}

/// Counts open connections per address and in total. A slot is held by a
/// [`ConnectionSlot`] and given back when it drops, so no exit path can leak one.
#[derive(Debug)]
pub struct ConnectionLimiter {
    per_ip: u32,
    total: u32,
    state: Mutex<(HashMap<IpAddr, u32>, u32)>,
}

#[derive(Debug)]
pub struct ConnectionSlot {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl ConnectionLimiter {
    pub fn new(per_ip: u32, total: u32) -> Arc<Self> {
        Arc::new(Self {
            per_ip,
            total,
            state: Mutex::new((HashMap::new(), 0)),
        })
    }

    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (map, total) = &mut *guard;
        if self.total > 0 && *total >= self.total {
            return Err(Refusal::Total(self.total));
        }
        let n = map.entry(ip).or_insert(0);
        if self.per_ip > 0 && *n >= self.per_ip {
            return Err(Refusal::PerIp(self.per_ip));
        }
        *n += 1;
        *total += 1;
        Ok(ConnectionSlot {
            limiter: Arc::clone(self),
            ip,
        })
    }

    pub fn open_from(&self, ip: IpAddr) -> u32 {
        let guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        guard.0.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut guard = self
            .limiter
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (map, total) = &mut *guard;
        *total = total.saturating_sub(1);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.try_take(t0)).count(), 5);
        assert!(!b.try_take(t0));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 5);
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0, 1, t0);
        assert!((0..10_000).all(|_| b.try_take(t0)));
    }

    #[test]
    fn limiter_caps_per_ip_and_total_and_frees_on_drop() {
        let lim = ConnectionLimiter::new(2, 3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = lim.try_acquire(a).expect("1");
        let _s2 = lim.try_acquire(a).expect("2");
        assert_eq!(lim.try_acquire(a).err(), Some(Refusal::PerIp(2)));
        let _s3 = lim.try_acquire(b).expect("3");
        assert_eq!(lim.try_acquire(b).err(), Some(Refusal::Total(3)));
        drop(s1);
        assert_eq!(lim.open_from(a), 1);
        assert!(lim.try_acquire(a).is_ok());
    }
}
