//! Offers waiting to be forwarded to other boards. Each new offer costs a connection to every
//! board in the address book, so forwarding is bounded: offers vouched for wait in a queue of
//! [`VOUCHED_QUEUE`], strangers' offers in one of [`STRANGER_QUEUE`] and go out at most one per
//! [`STRANGER_GAP`]; an offer that finds its queue full is not forwarded (it stays on this
//! board, where others can list it). A flood of strangers' offers never delays a vouched one.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::node::report::Report;
use crate::protocol::identity::NodeId;
use crate::protocol::market::Offer;
use crate::protocol::record::Signed;

/// Vouched offers waiting to be forwarded, at most.
const VOUCHED_QUEUE: usize = 256;
/// Strangers' offers waiting to be forwarded, at most.
const STRANGER_QUEUE: usize = 16;
/// The least time between two strangers' offers forwarded.
const STRANGER_GAP: Duration = Duration::from_secs(2);

/// An offer to forward, and the node it came from.
type Job = (NodeId, Signed<Offer>);

/// Where new offers are queued.
#[derive(Debug)]
pub(super) struct Forwarding {
    vouched: mpsc::Sender<Job>,
    strangers: mpsc::Sender<Job>,
    /// Offers not forwarded because their queue was full, not yet logged.
    dropped: Arc<AtomicU64>,
}

impl Forwarding {
    /// The queues, and their receiving ends, which [`ForwardQueues::run`] takes.
    pub(super) fn new() -> (Self, ForwardQueues) {
        let (vouched, vouched_rx) = mpsc::channel(VOUCHED_QUEUE);
        let (strangers, strangers_rx) = mpsc::channel(STRANGER_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let queues = ForwardQueues { vouched: vouched_rx, strangers: strangers_rx, dropped: dropped.clone() };
        (Forwarding { vouched, strangers, dropped }, queues)
    }

    /// Queues `offer` (from `from`), or drops it if its queue is full.
    pub(super) fn queue(&self, from: NodeId, offer: Signed<Offer>, vouched: bool) {
        let queue = if vouched { &self.vouched } else { &self.strangers };
        if queue.try_send((from, offer)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The receiving ends of [`Forwarding`].
#[derive(Debug)]
pub(super) struct ForwardQueues {
    vouched: mpsc::Receiver<Job>,
    strangers: mpsc::Receiver<Job>,
    dropped: Arc<AtomicU64>,
}

impl ForwardQueues {
    /// Forwards queued offers with `send` until the server stops: vouched ones as they come,
    /// strangers' one per [`STRANGER_GAP`], each lane in its own task.
    pub(super) fn run<F, Fut>(self, send: F, report: Arc<dyn Report>)
    where
        F: Fn(NodeId, Signed<Offer>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let ForwardQueues { mut vouched, mut strangers, dropped } = self;
        let first = send.clone();
        let report_first = report.clone();
        let dropped_first = dropped.clone();
        tokio::spawn(async move {
            while let Some((from, offer)) = vouched.recv().await {
                first(from, offer).await;
                say_dropped(&dropped_first, report_first.as_ref());
            }
        });
        tokio::spawn(async move {
            while let Some((from, offer)) = strangers.recv().await {
                let next = tokio::time::Instant::now() + STRANGER_GAP;
                send(from, offer).await;
                say_dropped(&dropped, report.as_ref());
                tokio::time::sleep_until(next).await;
            }
        });
    }
}

/// Says how many offers found their queue full since it was last said.
fn say_dropped(dropped: &AtomicU64, report: &dyn Report) {
    let n = dropped.swap(0, Ordering::Relaxed);
    if n > 0 {
        report.say(&format!("{n} offer(s) not forwarded: too many at once"));
    }
}
