//! The simulated world: nodes that play strategies, symmetric contracts between them, time in
//! hours, and the fairness rules ([`kaana_proto::protocol::fairness`]) deciding everything a real node's
//! tools would decide: deliberate failures and their audits, judgements, breaches, rechallenges,
//! what a node's own connection allows, and deletions. What the network and the disks do is
//! drawn at random; the rules are the real ones.

use std::collections::BTreeMap;

use kaana_proto::protocol::challenge::{DEFAULT_SAMPLES, Rng};
use kaana_proto::protocol::fairness::deletion::{self, Decision};
use kaana_proto::protocol::fairness::deliberate::{self, Mode, Plan, Pretence, Situation};
use kaana_proto::protocol::fairness::evidence::{self, Breach, Failed};
use kaana_proto::protocol::fairness::health::{self, Health, Reach};
use kaana_proto::protocol::fairness::judge::{self, Admission, Effect, PeerRecord, Seen};
use kaana_proto::protocol::fairness::standing::Standing;
use kaana_proto::protocol::fairness::{DAY, HOUR, RETRY_WINDOW_SECS, margin};
use kaana_proto::protocol::time::Timestamp;

use super::framing;

/// Every contract's grace period.
pub const GRACE: u64 = 7 * DAY;
/// Extents in a copy (what a few unreadable ones weigh against).
const EXTENTS: f64 = 10_000.0;
/// Packets a lossy node loses, taken as whole exchanges lost (QUIC would retransmit them).
const LOSS: f64 = 0.05;
const T0: u64 = 1_800_000_000;

/// How a node behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strategy {
    /// Follows the protocol, always on.
    Honest,
    /// Honest, down now and then for 1 to 20 hours (less than the retry window).
    Offline,
    /// Honest, behind a link that loses 5% of exchanges.
    Lossy,
    /// Honest, with real failures: outages of days, unreadable extents, a dead disk, death.
    Unlucky,
    /// Honest, cut off from everyone once for nine days (longer than the grace).
    CutOff,
    /// Deletes a peer's data the moment it judges the peer failing.
    Greedy,
    /// Deletes a failing peer's data only when the failure looks real: a day of failing with
    /// no word from the peer.
    Clever,
    /// Deletes like the greedy one, and signs "ok" in every word it gives the peer (standing,
    /// verdicts, challenges, answers), so that no failing answer of its states a grace.
    TwoFaced,
    /// Deletes only on real failures, knowing which are (no real node can): an upper bound.
    Oracle,
    /// Fails on purpose often, then tries to frame its peer with forged evidence.
    Framing,
    /// Keeps 80% of a peer's data, declines (as if busy) any challenge it would fail, and asks
    /// to be challenged again every hour.
    BestOfN,
}

impl Strategy {
    /// Whether it breaks the rules (deletes early, lies, forges, holds part of the data).
    pub fn cheats(self) -> bool {
        !matches!(self, Strategy::Honest | Strategy::Offline | Strategy::Lossy | Strategy::Unlucky | Strategy::CutOff)
    }
}

/// Nodes of each strategy: every strategy at once, with many real failures.
pub const EVERY_STRATEGY: &[(Strategy, usize)] = &[
    (Strategy::Honest, 20),
    (Strategy::Offline, 10),
    (Strategy::Lossy, 10),
    (Strategy::Unlucky, 12),
    (Strategy::CutOff, 4),
    (Strategy::Greedy, 6),
    (Strategy::Clever, 6),
    (Strategy::TwoFaced, 4),
    (Strategy::Oracle, 4),
    (Strategy::Framing, 4),
    (Strategy::BestOfN, 4),
];

/// Greedy holders among honest peers, a few of them unlucky: how often a greedy holder that
/// deletes only on failures it believes real is caught, when most failures are deliberate.
pub const AMONG_HONEST: &[(Strategy, usize)] = &[
    (Strategy::Honest, 30),
    (Strategy::Offline, 10),
    (Strategy::Lossy, 10),
    (Strategy::Unlucky, 4),
    (Strategy::Greedy, 6),
    (Strategy::Clever, 6),
];

/// What happened to the nodes of one strategy.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// How many nodes.
    pub nodes: usize,
    /// Deliberate failures they made.
    pub lies: u64,
    /// Times a peer judged one failing when it had not failed (no deliberate failure, data
    /// whole, not unreachable for a retry window).
    pub judged_wrongly: u64,
    /// Times a peer judged one failing for a real reason or its own deliberate failure.
    pub judged_rightly: u64,
    /// Breaches proven against one that held the data (evidence that framed it).
    pub accused: u64,
    /// Breaches proven against one for data it really lost.
    pub breaches: u64,
    /// Peers' data they deleted inside the grace.
    pub early_deletions: u64,
    /// Of those, proven by the peer's audit.
    pub caught: u64,
    /// Of the early deletions, those after a deliberate failure.
    pub on_deliberate: u64,
    /// Of the early deletions, those not caught because their node was away (dead, cut off)
    /// through the end of its grace.
    pub owner_gone: u64,
    /// Of the early deletions, those not caught although their node came back in time.
    pub unseen: u64,
    /// Of those, the ones whose node then judged the deleter failing (no proof, but the
    /// deleter's own copy there goes at the end of its grace unless it takes the data back).
    pub exposed: u64,
    /// Rechallenges it was granted.
    pub rechallenges: u64,
    /// Framing attempts, and forged evidence that passed the third-party check.
    pub frames: u64,
    /// Best-of-N: times one got back to ok while holding only part of the data.
    pub escapes: u64,
    /// Rechallenges asked for and refused as too soon.
    pub too_soon: u64,
    /// Peers' data they pruned although the peer was alive, had not failed, and did not judge
    /// them failing.
    pub pruned_wrongly: u64,
    /// Their own copies pruned, while they lived, by peers that follow the rules.
    pub copies_pruned: u64,
    /// Their own copies pruned, while they lived, by cheating peers.
    pub lost_to_cheaters: u64,
}

struct Node {
    strategy: Strategy,
    phase: u64,
    down: Vec<(u64, u64)>,
    cut: Vec<(u64, u64)>,
    dies_at: u64,
    wipes: Vec<u64>,
    damages: Vec<u64>,
    health: Health,
    rate: f64,
}

fn within(spans: &[(u64, u64)], h: u64) -> bool {
    spans.iter().any(|(a, b)| (*a..*b).contains(&h))
}

impl Node {
    fn up(&self, h: u64) -> bool {
        h < self.dies_at && !within(&self.down, h)
    }

    fn linked(&self, h: u64) -> bool {
        self.up(h) && !within(&self.cut, h)
    }

    /// Whether it was away (down or cut off) for a retry window's worth of the hours before
    /// `h` (and the few more a judge's tries span), less one cron interval (a try or two lost
    /// on a lossy link may start the window early): two outages an hour apart make one.
    fn gone_for_a_window(&self, h: u64) -> bool {
        let window = RETRY_WINDOW_SECS / HOUR;
        let from = h.saturating_sub(window + 6);
        (from..=h).filter(|x| !self.linked(*x)).count() as u64 >= window - 4
    }
}

/// One node's side of a contract: its judgement of the peer, what it learned of its own
/// standing there, its deliberate failure, and the peer's data it holds.
#[derive(Debug, Clone, Default)]
struct Side {
    their: Standing,
    record: PeerRecord,
    ours: Standing,
    /// The peer's latest signed word on this side's standing: when, and what.
    last_word: Option<(Timestamp, Standing)>,
    /// Whether the samples of this side's unanswered challenge of the peer would fail.
    pending_fail: Option<bool>,
    last_roll: Option<Timestamp>,
    plan: Option<Plan>,
    awaiting_repush: bool,
    held: f64,
    damaged: u32,
    last_heard: u64,
    deletion: Option<usize>,
    /// It deleted the peer's data inside the grace at least once.
    deleted_early: bool,
    /// The last hour it lacked part of the peer's data (until a push made it whole).
    last_lacked: Option<u64>,
    last_frame: u64,
}

struct Contract {
    ends: [usize; 2],
    sides: [Side; 2],
    /// Which sides have dropped the contract (pruned the peer's data and forgotten it).
    dropped: [bool; 2],
    log: Vec<String>,
}

/// One early deletion.
struct Deletion {
    strategy: Strategy,
    contract: usize,
    side: usize,
    deliberate: bool,
    /// The owner was dead or away through the end of its grace: nobody could ask for the data.
    owner_gone: bool,
    caught: bool,
    /// The owner judged the deleter failing afterwards.
    noticed: bool,
}

/// The world.
pub struct World {
    nodes: Vec<Node>,
    contracts: Vec<Contract>,
    /// Each node's contracts.
    by_node: Vec<Vec<usize>>,
    deletions: Vec<Deletion>,
    tally: BTreeMap<Strategy, Tally>,
    rng: Rng,
    horizon: u64,
    /// `SIM_DEBUG` set: keep a log of each contract and print it for what went wrong.
    debug: bool,
}

fn ts(h: u64) -> Timestamp {
    Timestamp::from_unix(T0 + h * HOUR)
}

fn hour_of(t: Timestamp) -> u64 {
    (t.unix() - T0) / HOUR
}

impl World {
    /// A world of `population` (times `scale`), each node with two contracts, over `days`.
    pub fn new(population: &[(Strategy, usize)], seed: u64, scale: usize, days: u64) -> World {
        let mut rng = Rng::from_seed(*blake3::hash(&seed.to_le_bytes()).as_bytes());
        let horizon = days * 24;
        let mut nodes = Vec::new();
        for &(strategy, count) in population {
            for _ in 0..count * scale {
                let mut n = Node {
                    strategy,
                    phase: rng.below(4),
                    down: Vec::new(),
                    cut: Vec::new(),
                    dies_at: u64::MAX,
                    wipes: Vec::new(),
                    damages: Vec::new(),
                    health: Health::default(),
                    rate: if strategy == Strategy::Framing { 0.2 } else { 0.02 },
                };
                let at = |rng: &mut Rng| rng.below(horizon);
                match strategy {
                    Strategy::Offline => {
                        for _ in 0..24 {
                            let from = at(&mut rng);
                            n.down.push((from, from + 1 + rng.below(20)));
                        }
                    }
                    Strategy::Unlucky => {
                        for _ in 0..6 {
                            let from = at(&mut rng);
                            n.down.push((from, from + 24 + rng.below(4 * 24)));
                        }
                        n.damages = (0..2).map(|_| at(&mut rng)).collect();
                        n.wipes = vec![at(&mut rng)];
                        if rng.below(4) == 0 {
                            n.dies_at = at(&mut rng);
                        }
                    }
                    Strategy::CutOff => {
                        let from = at(&mut rng);
                        n.cut.push((from, from + 9 * 24));
                    }
                    _ => {}
                }
                nodes.push(n);
            }
        }
        // Two contracts a node, with distinct peers.
        let mut contracts: Vec<Contract> = Vec::new();
        let n = nodes.len();
        let mut degree = vec![0; n];
        let mut pairs = std::collections::BTreeSet::new();
        // Random pairs until every node has two, or the few left can only pair among
        // themselves again (then they keep fewer).
        let mut draws = 0;
        while contracts.len() < n && draws < 100 * n {
            draws += 1;
            let (a, b) = (rng.below(n as u64) as usize, rng.below(n as u64) as usize);
            if a == b || degree[a] >= 2 || degree[b] >= 2 || !pairs.insert((a.min(b), a.max(b))) {
                continue;
            }
            degree[a] += 1;
            degree[b] += 1;
            let held = |s: Strategy| if s == Strategy::BestOfN { 0.8 } else { 1.0 };
            let side = |holder: Strategy| Side { held: held(holder), ..Side::default() };
            contracts.push(Contract {
                ends: [a, b],
                sides: [side(nodes[a].strategy), side(nodes[b].strategy)],
                dropped: [false; 2],
                log: Vec::new(),
            });
        }
        let mut tally = BTreeMap::new();
        for node in &nodes {
            tally.entry(node.strategy).or_insert_with(Tally::default).nodes += 1;
        }
        let mut by_node = vec![Vec::new(); nodes.len()];
        for (c, contract) in contracts.iter().enumerate() {
            contract.ends.iter().for_each(|n| by_node[*n].push(c));
        }
        let debug = std::env::var_os("SIM_DEBUG").is_some();
        World { nodes, contracts, by_node, deletions: Vec::new(), tally, rng, horizon, debug }
    }

    /// Runs the span it was made for, and a retry window and a grace period more.
    pub fn run(&mut self) -> BTreeMap<Strategy, Tally> {
        let hours = self.horizon + (RETRY_WINDOW_SECS + GRACE) / HOUR + 24;
        for h in 0..hours {
            for i in 0..self.nodes.len() {
                self.real_events(i, h);
                if !self.nodes[i].up(h) {
                    continue;
                }
                let phase = self.nodes[i].phase;
                if h % 24 == (phase + 2) % 24 {
                    for c in self.contracts_of(i) {
                        self.push(c, i, h);
                    }
                }
                // A best-of-N holder runs every hour: as often as a failing peer may be
                // challenged again.
                if h % 4 == phase || self.nodes[i].strategy == Strategy::BestOfN {
                    self.challenge_run(i, h);
                }
                if h % 24 == (phase + 3) % 24 {
                    self.prune(i, h);
                }
            }
        }
        let mut tally = self.tally.clone();
        for d in &self.deletions {
            // Exposed: the victim judges the deleter failing (its copy there then goes).
            let exposed = !d.caught && !d.owner_gone && d.noticed;
            if !d.caught && !d.owner_gone && !d.noticed {
                self.report(d.contract, &format!("an early deletion by side {} nobody saw", d.side));
            }
            let t = tally.entry(d.strategy).or_default();
            t.exposed += u64::from(exposed);
            t.early_deletions += 1;
            t.on_deliberate += u64::from(d.deliberate);
            t.caught += u64::from(d.caught);
            t.owner_gone += u64::from(!d.caught && d.owner_gone);
            t.unseen += u64::from(!d.caught && !d.owner_gone);
        }
        tally
    }

    fn note(&mut self, c: usize, h: u64, what: impl FnOnce() -> String) {
        if self.debug {
            let m = what();
            self.contracts[c].log.push(format!("h={h} {m}"));
        }
    }

    /// With `SIM_DEBUG`: prints the story of contract `c`, then what went wrong in it.
    fn report(&self, c: usize, what: &str) {
        if self.debug {
            eprintln!(
                "{}\ncontract {c} ({:?}): {what}",
                self.contracts[c].log.join("\n"),
                self.contracts[c].ends.map(|n| self.nodes[n].strategy)
            );
        }
    }

    fn t(&mut self, s: Strategy) -> &mut Tally {
        self.tally.entry(s).or_default()
    }

    /// The contracts node `i` has not dropped.
    fn contracts_of(&self, i: usize) -> Vec<usize> {
        let kept =
            |c: &&usize| self.contracts[**c].ends.iter().zip(self.contracts[**c].dropped).any(|(n, d)| *n == i && !d);
        self.by_node[i].iter().filter(kept).copied().collect()
    }

    /// (this node's side index, the peer's side index, the peer).
    fn ends(&self, c: usize, i: usize) -> (usize, usize, usize) {
        let e = self.contracts[c].ends;
        if e[0] == i { (0, 1, e[1]) } else { (1, 0, e[0]) }
    }

    fn silent_toward_peer(&self, c: usize, side: usize, h: u64) -> bool {
        self.contracts[c].sides[side].plan.as_ref().is_some_and(|p| p.silent(ts(h)))
    }

    fn roll(&mut self, p: f64) -> bool {
        const SCALE: u64 = 1 << 53;
        (self.rng.below(SCALE) as f64) < p * SCALE as f64
    }

    /// Whether an exchange from `i` to its peer on `c` gets through at `h`.
    fn reach(&mut self, c: usize, i: usize, h: u64) -> bool {
        let (_, ps, j) = self.ends(c, i);
        if !self.nodes[i].linked(h) || !self.nodes[j].linked(h) || self.silent_toward_peer(c, ps, h) {
            return false;
        }
        let lossy = [i, j].iter().any(|n| self.nodes[*n].strategy == Strategy::Lossy);
        !(lossy && self.roll(LOSS))
    }

    fn real_events(&mut self, i: usize, h: u64) {
        let (wiped, damaged) = (self.nodes[i].wipes.contains(&h), self.nodes[i].damages.contains(&h));
        if !wiped && !damaged {
            return;
        }
        for c in self.contracts_of(i) {
            let (ms, _, _) = self.ends(c, i);
            let side = &mut self.contracts[c].sides[ms];
            if wiped {
                side.held = 0.0;
            } else {
                side.damaged = 5;
            }
        }
    }

    /// This node's run of `kaana-challenge --all`.
    fn challenge_run(&mut self, i: usize, h: u64) {
        let (quiet, mine): (Vec<usize>, Vec<usize>) =
            self.contracts_of(i).into_iter().partition(|c| self.silent_toward_peer(*c, self.ends(*c, i).0, h));
        for c in quiet {
            let ms = self.ends(c, i).0;
            judge::forget_spell(&mut self.contracts[c].sides[ms].record);
        }
        let ok: Vec<bool> = mine.iter().map(|c| self.reach(*c, i, h)).collect();
        let suspect = self.check_health(i, h, &ok);
        for (c, ok) in mine.into_iter().zip(ok) {
            let _ = self.check(c, i, ok, suspect, h);
        }
        if self.nodes[i].strategy == Strategy::Clever {
            self.clever_deletes(i, h);
        }
    }

    /// Records what a run reached (asking witnesses when too few answered); whether it is suspect.
    fn check_health(&mut self, i: usize, h: u64, ok: &[bool]) -> bool {
        let mut reach = Reach { tried: ok.len(), reached: ok.iter().filter(|o| **o).count() };
        if health::suspect(reach) {
            for _ in 0..3 {
                let w = self.rng.below(self.nodes.len() as u64) as usize;
                reach.tried += 1;
                reach.reached += usize::from(w != i && self.nodes[i].linked(h) && self.nodes[w].linked(h));
            }
        }
        self.nodes[i].health = self.nodes[i].health.after_check(ts(h), reach);
        health::suspect(reach)
    }

    /// Side `i`'s run against its peer on `c`: standing, a challenge (an audit when failing
    /// there), a rechallenge when due. Whether it found a breach.
    fn check(&mut self, c: usize, i: usize, ok: bool, suspect: bool, h: u64) -> bool {
        let (ms, ps, j) = self.ends(c, i);
        if !ok {
            self.judge(c, i, Seen::Unreachable, suspect, h, false);
            return false;
        }
        if self.contracts[c].dropped[ps] {
            // The peer pruned our data and forgot the contract: it answers that it holds none.
            self.judge(c, i, Seen::Fail { asked: false }, suspect, h, false);
            return false;
        }
        self.contracts[c].sides[ps].last_heard = h;
        // How does the peer see us? (Its signed word, now.)
        let word = self.word(c, ms, h);
        self.learn(c, ms, word, h);
        let failing_here = self.contracts[c].sides[ms].ours.is_failing();
        let samples = DEFAULT_SAMPLES;
        let last = self.contracts[c].sides[ms].last_word;
        let Some((failed, standing)) = self.answer(c, ps, j, samples, h) else {
            // Declined: as if unreachable, the same samples asked again next time.
            self.judge(c, i, Seen::Unreachable, suspect, h, false);
            return false;
        };
        self.contracts[c].sides[ms].pending_fail = None;
        let seen = if failed { Seen::Fail { asked: false } } else { Seen::Pass { samples, asked: false } };
        self.judge(c, i, seen, suspect, h, true);
        let mut breached = false;
        if failed
            && evidence::breach(Failed::Signed { at: ts(h), standing }, last.as_slice(), 0, GRACE, ts(h))
                == Breach::Proven
        {
            self.proven(c, ps, j);
            breached = true;
        }
        if self.nodes[i].strategy == Strategy::Framing && failing_here && !failed {
            self.frame(c, i, j, h);
        }
        let me = &self.contracts[c].sides[ms];
        let greedy_luck = self.nodes[i].strategy == Strategy::BestOfN;
        if failing_here
            && !breached
            && (greedy_luck || deliberate::asks_rechallenge(me.plan.as_ref(), me.awaiting_repush, true, ts(h)))
        {
            self.rechallenge(c, i, h);
        }
        let me = &mut self.contracts[c].sides[ms];
        let failing = me.ours.is_failing();
        if me.plan.as_ref().is_some_and(|p| deliberate::plan_over(p, !failed, failing, ts(h))) {
            me.plan = me.plan.take().map(|p| p.ended("pass"));
        }
        breached
    }

    /// The peer's signed word on side `about`'s standing, as the peer (side `1 - about`) gives
    /// it: the truth, but from a two-faced node always "ok".
    fn word(&self, c: usize, about: usize, h: u64) -> (Timestamp, Standing) {
        let judge = self.ends_node(c, 1 - about);
        let standing = if self.nodes[judge].strategy == Strategy::TwoFaced {
            Standing::Ok
        } else {
            self.contracts[c].sides[1 - about].their
        };
        (ts(h), standing)
    }

    fn ends_node(&self, c: usize, side: usize) -> usize {
        self.contracts[c].ends[side]
    }

    /// Side `s` learns the peer's word on its standing.
    fn learn(&mut self, c: usize, s: usize, (at, standing): (Timestamp, Standing), _h: u64) {
        let side = &mut self.contracts[c].sides[s];
        if side.last_word.is_none_or(|(x, _)| x <= at) {
            side.last_word = Some((at, standing));
            side.ours = standing;
        }
    }

    /// The holder on side `hs` (node `j`) answers a challenge of `samples`: whether it fails,
    /// and the standing its answer states; `None` if it declines (a best-of-N holder, when it
    /// would fail).
    fn answer(&mut self, c: usize, hs: usize, j: usize, samples: usize, h: u64) -> Option<(bool, Standing)> {
        let t = ts(h);
        // The challenge says, signed, how the challenger judges the holder: learned first.
        let view = self.word(c, hs, h);
        self.learn(c, hs, view, h);
        let stated = self.word(c, 1 - hs, h).1;
        let holder = &self.contracts[c].sides[hs];
        let situation = Situation {
            rate: self.nodes[j].rate,
            forced: None,
            grace_secs: GRACE,
            pending: holder.plan.as_ref().is_some_and(Plan::pending),
            copy_at_peer: true,
            failing_at_peer: holder.ours.is_failing(),
            judging_failing: holder.their.is_failing(),
            last_roll: holder.last_roll,
            ending: false,
        };
        let (held, damaged) = (holder.held, holder.damaged);
        let (mode, rolled) = deliberate::decide(&situation, t, &mut self.rng);
        if rolled {
            self.contracts[c].sides[hs].last_roll = Some(t);
        }
        if let Some(mode) = mode {
            let picked: Vec<[u8; 32]> = (0..samples as u8).map(|b| [b; 32]).collect();
            let all: Vec<[u8; 32]> = (0..=255u8).map(|b| [b; 32]).collect();
            let plan = deliberate::plan(mode, t, GRACE, &picked, &all, &mut self.rng);
            self.contracts[c].sides[hs].plan = Some(plan);
            self.note(c, h, || format!("side {hs} lies: {mode:?}"));
            self.t(self.nodes[j].strategy).lies += 1;
            if mode != Mode::Silent {
                return Some((true, stated));
            }
        }
        let pretence = self.contracts[c].sides[hs].plan.as_ref().map_or(Pretence::Nothing, |p| p.pretence(t));
        let k = samples as i32;
        let pass = match pretence {
            Pretence::All => 0.0,
            Pretence::Extents(bad) => (1.0 - bad.len() as f64 / EXTENTS).powi(k),
            Pretence::Nothing => 1.0,
        } * held.powi(k)
            * (1.0 - f64::from(damaged) / EXTENTS).powi(k);
        // Samples asked before and not answered are asked again: their outcome is the same.
        let challenger = &self.contracts[c].sides[1 - hs];
        let fails = match challenger.pending_fail {
            Some(fails) => fails,
            None => !self.roll(pass),
        };
        if fails && self.nodes[j].strategy == Strategy::BestOfN {
            self.contracts[c].sides[1 - hs].pending_fail = Some(true);
            self.note(c, h, || format!("side {hs} declines"));
            return None;
        }
        self.note(c, h, || format!("side {hs} answers fails={fails} stating {stated:?}"));
        Some((fails, stated))
    }

    /// Side `i`'s judgement of its peer after `seen`; the verdict reaches the peer if `told`.
    fn judge(&mut self, c: usize, i: usize, seen: Seen, suspect: bool, h: u64, told: bool) {
        let (ms, ps, j) = self.ends(c, i);
        let t = ts(h);
        let me = &self.contracts[c].sides[ms];
        let was_failing = me.their.is_failing();
        let judged = judge::judge(me.their, &me.record, seen, t, GRACE, suspect);
        let st = judged.standing;
        self.note(c, h, || format!("side {ms} judges {seen:?} -> {st:?} effect {:?}", judged.effect));
        let me = &mut self.contracts[c].sides[ms];
        me.their = judged.standing;
        me.record = judged.record;
        if let Some(d) = self.contracts[c].sides[ps].deletion.filter(|_| judged.standing.is_failing()) {
            self.deletions[d].noticed = true;
        }
        let me = &mut self.contracts[c].sides[ms];
        if judged.effect != Effect::Verdict {
            return;
        }
        if judged.standing.is_failing()
            && let Some(plan) = me.plan.take()
        {
            me.plan = Some(if plan.pending() { plan.abandoned(t) } else { plan });
        }
        if told {
            let word = self.word(c, ps, h);
            self.learn(c, ps, word, h);
            // A holder told it failed checks its copy: real damage means waiting for a re-push.
            let peer = &mut self.contracts[c].sides[ps];
            if matches!(seen, Seen::Fail { .. }) && (peer.held < 1.0 || peer.damaged > 0) {
                peer.awaiting_repush = true;
            }
        }
        if judged.standing.is_failing() && !was_failing {
            let peer = &self.contracts[c].sides[ps];
            // Its own doing: a deliberate failure under way, or a silent one that spanned most of
            // the unanswered spell (it came back, and the first try after was lost).
            let spell = RETRY_WINDOW_SECS / HOUR;
            let deliberate = peer
                .plan
                .as_ref()
                .is_some_and(|p| p.pending() || (p.mode == Mode::Silent && hour_of(p.audit_at) + spell / 2 >= h));
            let lost = peer.held < 1.0 || peer.damaged > 0;
            let gone = seen == Seen::Unreachable && self.nodes[j].gone_for_a_window(h);
            let strategy = self.nodes[j].strategy;
            if deliberate || lost || gone {
                self.t(strategy).judged_rightly += 1;
            } else {
                self.t(strategy).judged_wrongly += 1;
                let away: Vec<u64> = (h.saturating_sub(40)..=h).filter(|x| !self.nodes[j].linked(*x)).collect();
                let plan = self.contracts[c].sides[ps].plan.clone();
                self.report(
                    c,
                    &format!(
                        "side {ps} judged failing wrongly at h={h}; its hours away before: {away:?}; its plan {plan:?}"
                    ),
                );
            }
            let real = !deliberate;
            match self.nodes[i].strategy {
                Strategy::Greedy | Strategy::TwoFaced => self.delete(c, i, h),
                Strategy::Oracle if real => self.delete(c, i, h),
                _ => {}
            }
        }
    }

    /// A clever holder deletes what it holds for peers that have been failing a day without a
    /// word: what a dead node looks like.
    fn clever_deletes(&mut self, i: usize, h: u64) {
        for c in self.contracts_of(i) {
            let (ms, _, _) = self.ends(c, i);
            let me = &self.contracts[c].sides[ms];
            if let Some((since, _)) = me.their.failing()
                && h >= hour_of(since) + 24
                && me.last_heard < hour_of(since)
            {
                self.delete(c, i, h);
            }
        }
    }

    /// Side `i` deletes the peer's data it holds (greedy holders stop at the end of the
    /// simulated span, so that each deletion has a whole grace to be caught in).
    fn delete(&mut self, c: usize, i: usize, h: u64) {
        if h >= self.horizon {
            return;
        }
        let (ms, ps, j) = self.ends(c, i);
        let deliberate = self.contracts[c].sides[ps].plan.as_ref().is_some_and(Plan::pending);
        let me = &mut self.contracts[c].sides[ms];
        if me.held == 0.0 || me.deletion.is_some() {
            return;
        }
        me.held = 0.0;
        self.note(c, h, || format!("side {ms} DELETES"));
        // A peer that dropped the contract (pruned ours) gave up its copy here too.
        let owner_left = self.contracts[c].dropped[ps];
        let me = &mut self.contracts[c].sides[ms];
        let Some((_, until)) = me.their.failing().filter(|(_, d)| ts(h) <= *d && !owner_left) else {
            return;
        };
        me.deletion = Some(self.deletions.len());
        me.deleted_early = true;
        // Gone: dead, or away through the end of its grace (when it would have come back to
        // audit): nobody can ask for the data in time.
        let d = hour_of(until);
        let owner_gone = !(d.saturating_sub(margin(GRACE) / HOUR)..d).any(|x| self.nodes[j].linked(x));
        self.deletions.push(Deletion {
            strategy: self.nodes[i].strategy,
            contract: c,
            side: ms,
            deliberate,
            owner_gone,
            caught: false,
            noticed: false,
        });
    }

    /// The owner proved a breach by the holder on side `hs` (node `j`).
    fn proven(&mut self, c: usize, hs: usize, j: usize) {
        self.note(c, 0, || format!("breach proven against side {hs}"));
        let holder = &mut self.contracts[c].sides[hs];
        let strategy = self.nodes[j].strategy;
        if let Some(d) = holder.deletion.take() {
            self.deletions[d].caught = true;
            self.t(strategy).breaches += 1;
        } else if holder.held < 1.0 || holder.damaged > 0 {
            self.t(strategy).breaches += 1;
        } else {
            self.t(strategy).accused += 1;
        }
    }

    /// A framing owner forges evidence against its peer, once a day at most.
    fn frame(&mut self, c: usize, i: usize, j: usize, h: u64) {
        let (ms, _, _) = self.ends(c, i);
        if self.contracts[c].sides[ms].last_frame + 24 > h && h >= 24 {
            return;
        }
        self.contracts[c].sides[ms].last_frame = h;
        let attack = self.rng.below(framing::ATTACKS as u64) as usize;
        self.t(self.nodes[i].strategy).frames += 1;
        if framing::attempt(attack, self.rng.below(u64::MAX)) {
            self.t(self.nodes[j].strategy).accused += 1;
        }
    }

    /// Side `i`, failing at its peer, asks to be challenged again.
    fn rechallenge(&mut self, c: usize, i: usize, h: u64) {
        let (ms, ps, j) = self.ends(c, i);
        let t = ts(h);
        let judge_side = &self.contracts[c].sides[ps];
        let adm = judge::admit_rechallenge(&judge_side.their, &judge_side.record, t);
        self.note(c, h, || format!("side {ms} asks rechallenge: {adm:?}"));
        match adm {
            Admission::AlreadyOk => self.contracts[c].sides[ms].ours = Standing::Ok,
            Admission::TooSoon { .. } => self.t(self.nodes[i].strategy).too_soon += 1,
            Admission::Challenge { samples } => {
                self.t(self.nodes[i].strategy).rechallenges += 1;
                self.contracts[c].sides[ps].record.last_rechallenge = Some(t);
                let me = &self.contracts[c].sides[ms];
                let k = samples as i32;
                let pass = me.held.powi(k) * (1.0 - f64::from(me.damaged) / EXTENTS).powi(k);
                // A holder that declines the samples it cannot prove has failed that rechallenge.
                let seen =
                    if self.roll(pass) { Seen::Pass { samples, asked: true } } else { Seen::Fail { asked: true } };
                self.judge(c, j, seen, false, h, true);
                let (me, judge_side) = (&self.contracts[c].sides[ms], &self.contracts[c].sides[ps]);
                if !judge_side.their.is_failing() && me.held < 1.0 {
                    self.report(c, &format!("side {ms} back to ok holding part of the data"));
                    self.t(self.nodes[i].strategy).escapes += 1;
                }
            }
        }
    }

    /// The owner `i` pushes to its peer: what the holder lacks is sent again. A push first asks
    /// how the owner stands there; failing, it audits the holder before sending anything (else
    /// it would re-send what a greedy holder deleted before anyone saw it was gone).
    fn push(&mut self, c: usize, i: usize, h: u64) {
        let (ms, ps, j) = self.ends(c, i);
        if self.contracts[c].dropped[ps] || self.silent_toward_peer(c, ms, h) || !self.reach(c, i, h) {
            return;
        }
        let word = self.word(c, ms, h);
        self.learn(c, ms, word, h);
        let me = &self.contracts[c].sides[ms];
        if deliberate::audit_before_push(me.ours.is_failing(), me.plan.as_ref()) && self.check(c, i, true, false, h) {
            return; // A breach: nothing sent.
        }
        let t = ts(h);
        let best_of_n = self.nodes[j].strategy == Strategy::BestOfN;
        let holder = &mut self.contracts[c].sides[ps];
        holder.last_heard = h;
        if holder.held < 1.0 || holder.damaged > 0 {
            holder.last_lacked = Some(h);
        }
        if !best_of_n {
            holder.held = 1.0;
        }
        holder.damaged = 0;
        holder.awaiting_repush = false;
        holder.plan = holder.plan.take().map(|p| p.healed(t));
        self.note(c, h, || format!("side {ms} pushed"));
    }

    /// This node's run of `kaana-prune`: it checks it reaches its peers, then deletes what the
    /// rules say may go.
    fn prune(&mut self, i: usize, h: u64) {
        let (quiet, mine): (Vec<usize>, Vec<usize>) =
            self.contracts_of(i).into_iter().partition(|c| self.silent_toward_peer(*c, self.ends(*c, i).0, h));
        for c in quiet {
            let ms = self.ends(c, i).0;
            judge::forget_spell(&mut self.contracts[c].sides[ms].record);
        }
        let ok: Vec<bool> = mine.iter().map(|c| self.reach(*c, i, h)).collect();
        self.check_health(i, h, &ok);
        let health = self.nodes[i].health.clone();
        for c in self.contracts_of(i) {
            let (ms, ps, j) = self.ends(c, i);
            if let Decision::Delete(_) = deletion::decide(None, self.contracts[c].sides[ms].their, ts(h), &health) {
                self.contracts[c].dropped[ms] = true;
                self.note(c, h, || format!("side {ms} PRUNES"));
                self.contracts[c].sides[ms].held = 0.0;
                let peer = &self.contracts[c].sides[ps];
                // A peer that left first (pruned ours) lost nothing it still wanted.
                let (strategy, alive) =
                    (self.nodes[j].strategy, h < self.nodes[j].dies_at && !self.contracts[c].dropped[ps]);
                // The peer had its chance: it held our data whole, and could be reached through
                // the last stretch of its grace, when it should have come back.
                let d = hour_of(self.contracts[c].sides[ms].their.failing().map_or(ts(h), |w| w.1));
                let had_its_chance = (d.saturating_sub(margin(GRACE) / HOUR)..d).all(|x| self.nodes[j].linked(x));
                let since = hour_of(self.contracts[c].sides[ms].their.failing().map_or(ts(h), |w| w.0));
                let lacked = peer.held < 1.0 || peer.damaged > 0 || peer.last_lacked.is_some_and(|l| l >= since);
                // A split: the peer judges us failing too (it found our copy of its data lost).
                let split = peer.their.is_failing();
                let deserved = lacked || peer.deleted_early || !had_its_chance || split;
                if alive && self.nodes[i].strategy.cheats() {
                    self.t(strategy).lost_to_cheaters += 1;
                } else if alive {
                    self.t(strategy).copies_pruned += 1;
                }
                if alive && !deserved {
                    self.report(c, &format!("side {ms} pruned wrongly"));
                    self.t(self.nodes[i].strategy).pruned_wrongly += 1;
                }
            }
        }
    }
}
