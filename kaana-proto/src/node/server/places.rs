//! The places extents come in through: a few in all, shared fairly among the peers pushing.
//!
//! An extent coming in holds a place (a buffer of up to 4 MiB) until its bytes are written. One
//! peer holds at most half the places. A place that comes free goes to the waiting peer that
//! holds the fewest. And a peer that holds none and finds none free takes one from the peer
//! holding the most beyond its fair share (the places over the peers holding or waiting for
//! one), if that peer has an extent that has been coming in for longer than the stall age (a
//! quarter of the server's read time-out): the oldest such extent is cut short (`busy`), and its
//! owner sends it again. So peers that send slowly on purpose cannot keep the places from
//! others: a newcomer gets one as soon as a held extent is that slow, and more as places come
//! free. An extent moving at a fair pace is never cut, and a peer takes one place so at a time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use crate::protocol::identity::NodeId;

/// How often a peer waiting for a place looks again for one to take (the extents held age).
const LOOK_AGAIN: Duration = Duration::from_millis(250);

/// A peer's fair share of `places` among `peers` holding or waiting for one: at least one.
pub(super) fn fair_share(places: usize, peers: usize) -> usize {
    (places / peers.max(1)).max(1)
}

/// Whom a peer holding `mine` places, finding none free, takes one from: the peer holding the
/// most of those holding more than `share` (and more than one beyond `mine`, so that two peers
/// do not take one place back and forth), if the asker holds less than `share`. Ties go to the
/// smallest id, so that the choice does not hang on a map's order.
pub(super) fn to_cut(held: impl IntoIterator<Item = (NodeId, usize)>, mine: usize, share: usize) -> Option<NodeId> {
    if mine >= share {
        return None;
    }
    held.into_iter()
        .filter(|&(_, n)| n > share && n > mine + 1)
        .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(peer, _)| peer)
}

/// Which of the waiters (each: the places its peer holds in all, those it keeps, the order it
/// came in) a free place goes to: among those holding fewer than `cap` in all, the one keeping
/// the fewest; the earliest of those.
pub(super) fn to_grant(waiting: impl IntoIterator<Item = (usize, usize, u64)>, cap: usize) -> Option<usize> {
    waiting
        .into_iter()
        .enumerate()
        .filter(|(_, (held, _, _))| *held < cap)
        .min_by_key(|&(_, (_, kept, order))| (kept, order))
        .map(|(i, _)| i)
}

/// The places, and who holds and who waits for them.
#[derive(Debug)]
pub(super) struct Places {
    total: usize,
    cap: usize,
    stall_age: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    free: usize,
    held: HashMap<NodeId, Vec<Holding>>,
    waiting: Vec<Waiter>,
    /// Peers for whom a place was cut and that have not been given one since.
    owed: HashSet<NodeId>,
    next: u64,
}

#[derive(Debug)]
struct Holding {
    id: u64,
    since: Instant,
    /// Its bytes are still coming in (it can be cut).
    receiving: bool,
    /// It was cut for another peer, and is on its way out: no longer counted as the peer's.
    given_up: bool,
    cut: Arc<Notify>,
}

/// The places a peer keeps (not counting those given up).
fn kept(holdings: &[Holding]) -> usize {
    holdings.iter().filter(|h| !h.given_up).count()
}

#[derive(Debug)]
struct Waiter {
    peer: NodeId,
    order: u64,
    grant: oneshot::Sender<Place>,
}

/// A place held: given back when dropped.
#[derive(Debug)]
pub(super) struct Place {
    places: Arc<Places>,
    peer: NodeId,
    id: u64,
    cut: Arc<Notify>,
}

impl Place {
    /// Resolves once another peer took this place: the extent is to be given up.
    pub(super) async fn cut(&self) {
        self.cut.notified().await;
    }

    /// Its bytes are all in: it is no longer cut for another peer.
    pub(super) fn received(&self) {
        let mut state = self.places.lock();
        if let Some(h) = state.held.get_mut(&self.peer).and_then(|v| v.iter_mut().find(|h| h.id == self.id)) {
            h.receiving = false;
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.release(self.peer, self.id);
    }
}

impl Places {
    /// `total` places, at most `cap` of them one peer's; an extent coming in for longer than
    /// `stall_age` may be cut for a peer that holds none.
    pub(super) fn new(total: usize, cap: usize, stall_age: Duration) -> Arc<Self> {
        Arc::new(Places { total, cap, stall_age, state: Mutex::new(State { free: total, ..State::default() }) })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while it was held leaves counts that are still whole (no step leaves them
        // half-updated), so the places go on.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for `peer`: at once if one is free (and the peer holds less than its cap), else
    /// when one comes free for it, or is cut for it from a peer holding more than its share.
    /// `None` only if the places went away meanwhile (never while this borrows them).
    pub(super) async fn take(self: &Arc<Self>, peer: NodeId) -> Option<Place> {
        let mut granted = {
            let mut state = self.lock();
            if state.free > 0 && state.held.get(&peer).map_or(0, Vec::len) < self.cap {
                return Some(self.hold(&mut state, peer));
            }
            let (tx, rx) = oneshot::channel();
            let order = state.next;
            state.next += 1;
            state.waiting.push(Waiter { peer, order, grant: tx });
            self.cut_for(&mut state, peer);
            rx
        };
        loop {
            tokio::select! {
                place = &mut granted => return place.ok(),
                () = tokio::time::sleep(LOOK_AGAIN) => self.cut_for(&mut self.lock(), peer),
            }
        }
    }

    fn hold(self: &Arc<Self>, state: &mut State, peer: NodeId) -> Place {
        state.free -= 1;
        state.owed.remove(&peer);
        let (id, cut) = (state.next, Arc::new(Notify::new()));
        state.next += 1;
        let holding = Holding { id, since: Instant::now(), receiving: true, given_up: false, cut: cut.clone() };
        state.held.entry(peer).or_default().push(holding);
        Place { places: self.clone(), peer, id, cut }
    }

    /// For `peer`, waiting, holding none and owed none: cuts short the oldest of the slow
    /// extents (coming in for longer than the stall age) of the peer that holds the most beyond
    /// the fair share, if any.
    fn cut_for(&self, state: &mut State, peer: NodeId) {
        if state.free > 0 || state.owed.contains(&peer) || state.held.get(&peer).is_some_and(|v| kept(v) > 0) {
            return;
        }
        let mut peers: Vec<NodeId> = state.held.keys().copied().collect();
        peers.extend(state.waiting.iter().filter(|w| !w.grant.is_closed()).map(|w| w.peer));
        peers.sort_unstable();
        peers.dedup();
        let share = fair_share(self.total, peers.len());
        let stall_age = self.stall_age;
        let slow = |h: &Holding| h.receiving && !h.given_up && h.since.elapsed() >= stall_age;
        let holders = state.held.iter().filter(|(p, v)| **p != peer && v.iter().any(slow)).map(|(p, v)| (*p, kept(v)));
        if let Some(victim) = to_cut(holders, 0, share)
            && let Some(h) = state.held.get_mut(&victim).and_then(|v| v.iter_mut().find(|h| slow(h)))
        {
            h.given_up = true;
            h.cut.notify_one();
            state.owed.insert(peer);
        }
    }

    fn release(self: &Arc<Self>, peer: NodeId, id: u64) {
        let mut state = self.lock();
        if let Some(v) = state.held.get_mut(&peer) {
            v.retain(|h| h.id != id);
            if v.is_empty() {
                state.held.remove(&peer);
            }
        }
        state.free += 1;
        // The free places to the waiters keeping the fewest; a waiter that gave up is passed by.
        while state.free > 0 {
            let count = |p: &NodeId| state.held.get(p).map_or((0, 0), |v| (v.len(), kept(v)));
            let waiting = state.waiting.iter().map(|w| {
                let (held, kept) = count(&w.peer);
                (held, kept, w.order)
            });
            let Some(i) = to_grant(waiting, self.cap) else { break };
            let waiter = state.waiting.swap_remove(i);
            if waiter.grant.is_closed() {
                continue;
            }
            let place = self.hold(&mut state, waiter.peer);
            if let Err(place) = waiter.grant.send(place) {
                // It gave up just now: the place goes back, by its drop, which takes the lock.
                drop(state);
                drop(place);
                return;
            }
        }
        state.waiting.retain(|w| !w.grant.is_closed());
        let State { waiting, owed, .. } = &mut *state;
        owed.retain(|p| waiting.iter().any(|w| w.peer == *p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;

    fn peers<const N: usize>() -> [NodeId; N] {
        let mut ids: [NodeId; N] = std::array::from_fn(|i| Identity::from_seed([i as u8 + 1; 32]).node_id());
        ids.sort_unstable();
        ids
    }

    #[test]
    fn a_share_is_the_places_over_the_peers_and_at_least_one() {
        assert_eq!(fair_share(8, 1), 8);
        assert_eq!(fair_share(8, 3), 2);
        assert_eq!(fair_share(8, 16), 1);
        assert_eq!(fair_share(8, 0), 8);
    }

    #[test]
    fn a_place_is_taken_from_the_peer_most_over_its_share_for_a_peer_under_it() {
        let [a, b, c] = peers();
        assert_eq!(to_cut([(a, 4), (b, 3)], 0, 2), Some(a));
        // Ties go to the smallest id.
        assert_eq!(to_cut([(b, 3), (a, 3)], 1, 2), Some(a));
        // Not for a peer at its share, nor from one at it or just one beyond the asker.
        assert_eq!(to_cut([(a, 4)], 2, 2), None);
        assert_eq!(to_cut([(a, 2), (b, 2)], 0, 2), None);
        assert_eq!(to_cut([(a, 2), (c, 1)], 0, 1), Some(a));
        assert_eq!(to_cut([(a, 2)], 1, 2), None);
    }

    #[test]
    fn a_free_place_goes_to_the_waiter_keeping_fewest_then_the_earliest() {
        assert_eq!(to_grant([(3, 3, 0), (1, 1, 5), (1, 1, 2)], 4), Some(2));
        assert_eq!(to_grant([(4, 4, 0), (2, 2, 1)], 4), Some(1));
        // Counted without the places given up; capped with them.
        assert_eq!(to_grant([(2, 2, 0), (3, 1, 1)], 4), Some(1));
        assert_eq!(to_grant([(2, 2, 0), (4, 1, 1)], 4), Some(0));
        assert_eq!(to_grant([(4, 4, 0)], 4), None);
        assert_eq!(to_grant([], 4), None);
    }

    /// What `f` comes to within a moment (for what must not happen).
    async fn soon<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_millis(200), f).await.ok()
    }

    /// What `f` comes to, waited for long enough on a loaded machine (for what must happen).
    async fn surely<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::time::timeout(Duration::from_secs(10), f).await.ok()
    }

    async fn take(places: Arc<Places>, peer: NodeId) -> Place {
        places.take(peer).await.unwrap()
    }

    /// Two peers hold every place; a third asks: the one holding more than its share gives one
    /// up (its oldest extent still coming in is cut), and the place is the third's once dropped.
    /// An extent whose bytes are in is not cut, and a peer holding a place cuts none.
    #[tokio::test]
    async fn a_newcomer_takes_a_place_from_a_peer_over_its_share() {
        let [a, b, c] = peers();
        let places = Places::new(4, 3, Duration::ZERO);
        let a1 = places.take(a).await.unwrap();
        let a2 = places.take(a).await.unwrap();
        let a3 = places.take(a).await.unwrap();
        let b1 = places.take(b).await.unwrap();
        // a is at its cap: a fourth waits, and takes nothing from b (a holds places).
        assert!(soon(places.take(a)).await.is_none());
        assert!(soon(b1.cut()).await.is_none());
        // a's oldest extent is in: c's ask cuts a's next oldest.
        a1.received();
        let c_gets = tokio::spawn(take(places.clone(), c));
        assert!(surely(a2.cut()).await.is_some(), "a's oldest extent still coming in is cut");
        assert!(soon(a1.cut()).await.is_none() && soon(a3.cut()).await.is_none() && soon(b1.cut()).await.is_none());
        assert!(!c_gets.is_finished(), "the place is c's only once given up");
        drop(a2);
        let c1 = surely(c_gets).await.expect("c got the place").unwrap();
        // c holds one: its next ask cuts nothing, and waits.
        assert!(soon(places.take(c)).await.is_none());
        assert!(soon(a3.cut()).await.is_none());
        // A place that comes free goes to the waiter keeping the fewest (b, over a).
        let (a_waits, b_waits) = (tokio::spawn(take(places.clone(), a)), tokio::spawn(take(places.clone(), b)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(c1);
        let _b2 = surely(b_waits).await.expect("b got it").unwrap();
        assert!(!a_waits.is_finished());
        a_waits.abort();
    }

    /// Asks in a burst take one place: the asker is owed it, and cuts no more until given it
    /// (and then holds one, so cuts none).
    #[tokio::test]
    async fn asks_in_a_burst_take_one_place() {
        let [a, b, c] = peers();
        let places = Places::new(8, 4, Duration::ZERO);
        let mut held = Vec::new();
        for peer in [a, a, a, a, b, b, b, b] {
            held.push(places.take(peer).await.unwrap());
        }
        let asks: Vec<_> = (0..4).map(|_| tokio::spawn(take(places.clone(), c))).collect();
        // a (the smaller id), its oldest.
        assert!(surely(held[0].cut()).await.is_some(), "a's oldest is cut");
        for h in &held[1..] {
            assert!(soon(h.cut()).await.is_none(), "one cut only, for the four asks");
        }
        drop(held.remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(asks.iter().filter(|a| a.is_finished()).count(), 1, "c got one place");
        for h in &held {
            assert!(soon(h.cut()).await.is_none(), "and, holding one, cuts no more");
        }
        asks.into_iter().for_each(|a| a.abort());
    }

    /// An extent moving along is not cut: only one coming in for longer than the stall age.
    #[tokio::test]
    async fn only_an_extent_older_than_the_stall_age_is_cut() {
        let [a, b] = peers();
        let places = Places::new(2, 2, Duration::from_millis(600));
        let a1 = places.take(a).await.unwrap();
        let _a2 = places.take(a).await.unwrap();
        let b_gets = tokio::spawn(take(places.clone(), b));
        assert!(soon(a1.cut()).await.is_none(), "a's extents are young");
        assert!(surely(a1.cut()).await.is_some(), "the waiter looks again, and cuts the oldest once it is slow");
        drop(a1);
        assert!(surely(b_gets).await.is_some());
    }
}
