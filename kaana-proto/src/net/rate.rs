//! A cap on the bytes a tool moves per second (`--limit-rate`): one shared pacer for every
//! stream of a push or restore, so that several extents in flight (and `push --all`'s several
//! contracts) together stay under it. And [`Allowance`], a cap on how often a peer may ask a
//! server for something.
//!
//! The pacer is a virtual clock: each chunk of bytes moves it on by the time the chunk takes at
//! the rate, from now or from where it stood if that is later; a chunk waits until the clock,
//! less a short burst, has come. Over any stretch of time the bytes let through are at most the
//! rate times that time, plus one burst.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How far ahead of the rate a sender may run: what a chunk may go early by. Short enough that
/// a 30-second transfer is within a fraction of a percent of the rate.
const BURST: Duration = Duration::from_millis(50);

/// The bytes a paced sender hands on at once (and a paced reader takes at once).
pub const PACED_CHUNK: usize = 64 << 10;

/// The pacing rule, without a clock: times are offsets from the pacer's start.
#[derive(Debug, Clone, PartialEq)]
pub struct Pacer {
    bytes_per_sec: u64,
    /// When the bytes let through so far would have finished at the rate.
    due: Duration,
}

impl Pacer {
    /// A pacer at `bytes_per_sec` (at least 1).
    pub fn new(bytes_per_sec: u64) -> Self {
        Pacer { bytes_per_sec: bytes_per_sec.max(1), due: Duration::ZERO }
    }

    /// Lets `bytes` through at `now`: how long they must wait first. Time left idle is not
    /// saved up: the clock starts again from now.
    pub fn admit(&mut self, now: Duration, bytes: u64) -> Duration {
        let takes = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        self.due = self.due.max(now) + takes;
        self.due.saturating_sub(now + BURST)
    }
}

/// A pacer shared by the tasks of one tool.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    started: Instant,
    pacer: Mutex<Pacer>,
}

impl RateLimit {
    /// A limit of `bytes_per_sec`.
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimit { bytes_per_sec, started: Instant::now(), pacer: Mutex::new(Pacer::new(bytes_per_sec)) }
    }

    /// The rate, in bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Waits until `bytes` may move.
    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut pacer = self.pacer.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            pacer.admit(self.started.elapsed(), bytes as u64)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// So many requests an hour: up to that many at once, then one each hour / that many. Times are
/// offsets from a fixed start.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowance {
    /// The time one request adds.
    every: Duration,
    /// How far ahead of now the allowance may run: all but one of the hour's.
    ahead: Duration,
    /// When the requests let through so far would have finished, one each `every`.
    due: Duration,
}

impl Allowance {
    /// `per_hour` requests an hour (at least 1).
    pub fn per_hour(per_hour: u32) -> Self {
        let n = per_hour.max(1);
        let every = Duration::from_secs(3600) / n;
        Allowance { every, ahead: every * (n - 1), due: Duration::ZERO }
    }

    /// Takes one request at `now`; if none is left, how long until one is. Time left idle is
    /// saved up to the hour's number, no more.
    pub fn take(&mut self, now: Duration) -> Result<(), Duration> {
        let next = self.due.saturating_sub(self.ahead);
        if now < next {
            return Err(next - now);
        }
        self.due = self.due.max(now) + self.every;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many of `n` requests at `now` are let through.
    fn taken(a: &mut Allowance, now: Duration, n: u32) -> u32 {
        (0..n).filter(|_| a.take(now).is_ok()).count() as u32
    }

    #[test]
    fn an_allowance_lets_the_hours_number_at_once_then_one_each_share_of_the_hour() {
        let mut a = Allowance::per_hour(600);
        assert_eq!(taken(&mut a, Duration::ZERO, 1000), 600);
        assert_eq!(a.take(Duration::ZERO), Err(Duration::from_secs(6)), "the next comes in an hour / 600");
        assert_eq!(a.take(Duration::from_secs(5)), Err(Duration::from_secs(1)));
        assert_eq!(taken(&mut a, Duration::from_secs(6), 10), 1);
        // A sender that asks all the time gets 600 an hour and no more.
        let got: u32 = (1..=3600).map(|s| taken(&mut a, Duration::from_secs(6 + s), 5)).sum();
        assert_eq!(got, 600);
        // Idle for a day: the hour's number again, not a day's.
        assert_eq!(taken(&mut a, Duration::from_secs(90_000), 2000), 600);
        let mut one = Allowance::per_hour(0);
        assert_eq!(taken(&mut one, Duration::ZERO, 3), 1, "at least one an hour");
        assert_eq!(one.take(Duration::from_secs(1800)), Err(Duration::from_secs(1800)));
    }

    /// Simulates a sender that sends whenever the pacer lets it, `chunk` bytes at a time, for
    /// `secs`: the bytes it got through.
    fn run(rate: u64, chunk: u64, secs: f64) -> u64 {
        let mut pacer = Pacer::new(rate);
        let (mut now, mut sent) = (Duration::ZERO, 0u64);
        loop {
            now += pacer.admit(now, chunk);
            if now.as_secs_f64() > secs {
                return sent;
            }
            sent += chunk;
        }
    }

    #[test]
    fn a_greedy_sender_gets_the_rate_and_no_more() {
        for (rate, chunk) in [(1 << 20, 64 << 10), (10_000_000, 64 << 10), (100 << 10, 64 << 10), (500 << 20, 1 << 20)]
        {
            let got = run(rate, chunk, 30.0) as f64 / 30.0;
            let r = rate as f64;
            assert!(got <= r * 1.01 + (chunk as f64 / 30.0), "rate {rate}: {got} per second");
            assert!(got >= r * 0.99 - (chunk as f64 / 30.0), "rate {rate}: {got} per second");
        }
    }

    #[test]
    fn idle_time_is_not_saved_up_beyond_one_burst() {
        let mut pacer = Pacer::new(1 << 20);
        // Quiet for ten seconds: then no more than a burst goes through at once.
        let now = Duration::from_secs(10);
        let mut free = 0u64;
        while pacer.admit(now, 4096).is_zero() {
            free += 4096;
        }
        assert!(free <= (1 << 20) / 20 + 4096, "{free} bytes went at once after a pause");
        // And the first bytes after a pause do not wait (up to a burst's worth).
        let mut fresh = Pacer::new(1 << 20);
        assert_eq!(fresh.admit(Duration::from_secs(5), 32 << 10), Duration::ZERO);
    }

    #[test]
    fn waits_grow_with_the_backlog() {
        let mut pacer = Pacer::new(1000);
        let first = pacer.admit(Duration::ZERO, 1000);
        let second = pacer.admit(Duration::ZERO, 1000);
        assert!(first < second);
        assert_eq!(second - first, Duration::from_secs(1));
    }
}
