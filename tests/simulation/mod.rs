//! A simulation of many nodes over a simulated year, each playing a strategy — honest, offline
//! now and then, behind a lossy link, unlucky, cut off, greedy, greedy and clever, framing,
//! best-of-N — with the real fairness rules deciding. It prints one table (`scripts/simulate.sh`
//! runs it at a larger scale), and checks what must hold.

mod framing;
mod world;

use world::{AMONG_HONEST, EVERY_STRATEGY, Strategy, Tally, World};

/// `(seed, scale, days)`: from `KAANA_SIM` ("seed,scale,days"), else one year at scale 1.
fn params() -> (u64, usize, u64) {
    let given = std::env::var("KAANA_SIM").ok();
    let mut parts = given.as_deref().unwrap_or("").split(',').map(|p| p.trim().parse::<u64>().ok());
    let seed = parts.next().flatten().unwrap_or(1);
    let scale = parts.next().flatten().unwrap_or(1) as usize;
    let days = parts.next().flatten().unwrap_or(365);
    (seed, scale, days)
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 { "-".to_owned() } else { format!("{:.1}%", 100.0 * part as f64 / whole as f64) }
}

fn table(title: &str, tally: &std::collections::BTreeMap<Strategy, Tally>, seed: u64, days: u64) -> String {
    let mut out = format!(
        "{title}: seed {seed}, {days} days (and 9 more for the last deletions to be caught), grace 7 days, cron every \
         4 hours, audit rate 2% (framers 20%)\n\n\
         | strategy | nodes | deliberate failures | judged failing: rightly / wrongly | accused | breaches proven | \
         early deletions (after a deliberate failure) | caught | not caught: node away past its grace / other \
         (of which judged failing by their node) | \
         rechallenges (escapes) | own copies pruned: by honest peers / by cheaters | peers' copies pruned wrongly |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n"
    );
    for (s, t) in tally {
        out += &format!(
            "| {s:?} | {} | {} | {} / {} | {} | {} | {} ({}) | {} ({}) | {} / {} ({}) | {} ({}) | {} / {} | {} |\n",
            t.nodes,
            t.lies,
            t.judged_rightly,
            t.judged_wrongly,
            t.accused,
            t.breaches,
            t.early_deletions,
            t.on_deliberate,
            t.caught,
            pct(t.caught, t.early_deletions),
            t.owner_gone,
            t.unseen,
            t.exposed,
            t.rechallenges,
            t.escapes,
            t.copies_pruned,
            t.lost_to_cheaters,
            t.pruned_wrongly,
        );
    }
    let frames: u64 = tally.values().map(|t| t.frames).sum();
    out += &format!(
        "\nframing attempts: {frames}; best-of-N rechallenges refused as too soon: {}\n",
        tally.get(&Strategy::BestOfN).map_or(0, |t| t.too_soon)
    );
    out
}

/// A year of strategic peers: a greedy holder is caught whenever its victim comes back; a
/// clever one in at least 99% of its early deletions; honest nodes behind a lossy link or
/// offline for less than the retry window are never judged failing; nobody honest is accused
/// or loses a copy; a node cut off longer than a grace deletes nothing it should not; best-of-N
/// never gets back to ok.
#[test]
fn a_year_of_strategic_peers() {
    let (seed, scale, days) = params();
    let tally = World::new(EVERY_STRATEGY, seed, scale, days).run();
    let text = table("every strategy at once", &tally, seed, days);
    eprintln!("{text}");
    let get = |s: Strategy| tally.get(&s).cloned().unwrap_or_default();
    for s in [Strategy::Honest, Strategy::Offline, Strategy::Lossy, Strategy::CutOff, Strategy::Unlucky] {
        let t = get(s);
        assert_eq!((t.accused, t.pruned_wrongly), (0, 0), "{s:?}\n{text}");
    }
    for s in [Strategy::Honest, Strategy::Offline, Strategy::Lossy] {
        let t = get(s);
        assert_eq!((t.judged_wrongly, t.copies_pruned), (0, 0), "{s:?}: judged failing wrongly\n{text}");
    }
    assert!(tally.values().all(|t| t.accused == 0), "{text}");
    // A greedy or clever holder is caught whenever the node whose data it deleted comes back
    // inside its grace (deliberate failures always do): only deleting the data of nodes away
    // past their grace (dead, or cut off longer) goes unseen, and that data was theirs to
    // lose at the end of the grace anyway.
    for s in [Strategy::Greedy, Strategy::Clever, Strategy::Oracle] {
        assert_eq!(get(s).unseen, 0, "{s:?}\n{text}");
    }
    // A two-faced holder escapes proof by signing "ok" everywhere; but each of its deletions is
    // seen by its victim, which judges it failing (its own copy there goes at the end of the
    // grace unless it takes the data back and proves it).
    let two = get(Strategy::TwoFaced);
    assert!(two.early_deletions >= 4 && two.unseen == two.exposed, "{text}");
    let clever = get(Strategy::Clever);
    assert!(clever.early_deletions >= 20, "the clever holders found failures to exploit\n{text}");
    assert!(clever.caught * 100 >= clever.early_deletions * 95, "{text}");
    let best = get(Strategy::BestOfN);
    assert!(best.rechallenges >= 100 && best.escapes == 0, "{text}");
    assert!(get(Strategy::Framing).frames >= 20, "{text}");

    // Among honest peers, where most failures a greedy holder sees are deliberate ones.
    let tally = World::new(AMONG_HONEST, seed + 1, scale * 2, days).run();
    let text = table("greedy holders among honest peers", &tally, seed + 1, days);
    eprintln!("{text}");
    let get = |s: Strategy| tally.get(&s).cloned().unwrap_or_default();
    for s in [Strategy::Greedy, Strategy::Clever] {
        let t = get(s);
        // Every deletion is caught but those of owners that died or stayed away past their
        // grace (a few unlucky nodes among many honest ones).
        assert_eq!(t.unseen, 0, "{s:?}\n{text}");
        assert!(t.caught * 100 >= t.early_deletions * 97, "{s:?} caught in under 97%\n{text}");
    }
    assert!(tally.values().all(|t| t.accused == 0 && t.judged_wrongly == 0), "{text}");
    assert!(tally.iter().all(|(s, t)| s.cheats() || t.pruned_wrongly == 0), "{text}");
}

/// Each framing attack fails, with keys from many seeds, where the same records showing a real
/// loss inside the grace are accepted.
#[test]
fn every_framing_attack_fails_where_a_real_breach_is_proven() {
    for seed in 0..20 {
        assert!(framing::attempt(framing::REAL_BREACH, seed), "seed {seed}: a real breach was not proven");
        for attack in 0..framing::ATTACKS {
            assert!(!framing::attempt(attack, seed), "seed {seed}: attack {attack} was accepted");
        }
    }
}
