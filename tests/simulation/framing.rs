//! A framing owner's attempts, with real signed records and the real third-party check. The
//! owner fails on purpose to get its honest holder judging it failing, then forges evidence
//! that the holder failed inside that grace. Each attempt is one attack; it succeeds only if
//! `Evidence::check` accepts the forgery.

use kaana_proto::protocol::challenge::{self, Answer, Challenge, Outcome, Receipt, Reply, Verdict};
use kaana_proto::protocol::encoding::hex_encode;
use kaana_proto::protocol::fairness::evidence::{Evidence, Statement};
use kaana_proto::protocol::fairness::standing::Standing;
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::manifest::{Manifest, encode_list, list_hash};
use kaana_proto::protocol::market::{ContractBody, Notice, RecordId, countersign};
use kaana_proto::protocol::proof;
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::home::Schema;

/// How many attacks there are.
pub const ATTACKS: usize = 10;
/// Not an attack: the holder really lost a sample inside its grace (what every attack must
/// fail to look like, and what the check must accept).
pub const REAL_BREACH: usize = ATTACKS;
const EXTENT: usize = 16 * 1024;

fn t(s: u64) -> Timestamp {
    Timestamp::from_unix(s)
}

/// What an honest holder signs for `challenge` of the copy `extents` it receipted as
/// `receipted`, judging the owner `standing`, at `at`: the same decisions as
/// `kaana_proto::node::answer`.
fn honest_reply(
    holder: &Identity,
    challenge: &Challenge,
    receipted: &Manifest,
    extents: &[Vec<u8>],
    standing: Standing,
    at: Timestamp,
) -> (Signed<Answer>, Vec<u8>) {
    let mut raw = Vec::new();
    let g = receipted.geometry().unwrap();
    let reply = if challenge.manifest != RecordId::of(receipted).unwrap() {
        Reply::Refused { reason: "not a manifest this node receipted".into() }
    } else if let Err(reason) = challenge::check_request(g, &challenge.picks, challenge.depth) {
        Reply::Refused { reason }
    } else {
        for [e, c] in &challenge.picks {
            let d = &extents[*e as usize];
            let (groups, _) = proof::outboard(d);
            let siblings = proof::prove(d.len() as u64, *c, d, &groups);
            let at = (*c * proof::CHUNK) as usize;
            challenge::encode_item(&mut raw, &d[at..at + proof::chunk_len(d.len() as u64, *c)], &siblings);
        }
        Reply::Proof { proof: hex_encode(blake3::hash(&raw).as_bytes()) }
    };
    let answer = Answer { challenge: RecordId::of(challenge).unwrap(), holder: holder.node_id(), reply, standing, at };
    (Signed::sign(answer, holder).unwrap(), raw)
}

/// Runs attack `attack` with keys from `seed`; whether the forgery was accepted.
pub fn attempt(attack: usize, seed: u64) -> bool {
    let key = |n: u8| Identity::from_seed(*blake3::hash(&[&seed.to_le_bytes()[..], &[n]].concat()).as_bytes());
    let (owner, holder) = (key(1), key(2));
    let body = ContractBody {
        offer: RecordId::of(&Receipt {
            contract: "00".repeat(32).parse().unwrap(),
            owner: owner.node_id(),
            holder: holder.node_id(),
            generation: seed,
            manifest: "00".repeat(32).parse().unwrap(),
            at: t(0),
        })
        .unwrap(),
        offerer: owner.node_id(),
        taker: holder.node_id(),
        size: 1 << 20,
        grace_secs: 500,
        created_at: t(10),
        history: None,
    };
    let contract = countersign(Signed::sign(body, &holder).unwrap(), &owner).unwrap();
    let id = contract.id().unwrap();
    let extents: Vec<Vec<u8>> =
        (0..4u8).map(|i| (0..EXTENT).map(|j| (j as u8).wrapping_mul(29) ^ i).collect()).collect();
    let list = encode_list(&extents.iter().map(|e| *blake3::hash(e).as_bytes()).collect::<Vec<_>>());
    let manifest = Manifest {
        contract: id,
        owner: owner.node_id(),
        generation: 2,
        volume_size: 4 * EXTENT as u64,
        extent_size: EXTENT as u32,
        extent_count: 4,
        extents: hex_encode(&list_hash(&list)),
        created_at: t(100),
    };
    let receipt = Receipt {
        contract: id,
        owner: owner.node_id(),
        holder: holder.node_id(),
        generation: 2,
        manifest: RecordId::of(&manifest).unwrap(),
        at: t(101),
    };
    // The holder judges the owner failing since 1000 (the owner failed on purpose to get it).
    let failing = Standing::Ok.after_failure(t(1_000), 500);
    let verdict = |standing, at, by: &Identity| {
        let v = Verdict {
            contract: id,
            challenge: None,
            answer: None,
            holder: owner.node_id(),
            result: Some(Outcome::Fail),
            standing,
            at: t(at),
        };
        Statement::Verdict(Signed::sign(v, by).unwrap())
    };
    let mut asked = manifest.clone();
    let mut picks = vec![[0, 1], [1, 7], [3, 15]];
    match attack {
        // Samples outside the copy.
        2 => picks[1] = [4, 0],
        // A second manifest for the same generation, never receipted.
        3 => asked.created_at = t(200),
        _ => {}
    }
    let challenge = Challenge {
        contract: id,
        challenger: owner.node_id(),
        holder: holder.node_id(),
        manifest: RecordId::of(&asked).unwrap(),
        generation: 2,
        standing: Standing::Ok,
        nonce: "ab".repeat(16),
        picks,
        depth: 0,
        at: t(1_199),
    };
    // The holder answers honestly; after its grace ran out it had deleted (attacks 6 and 8),
    // or the contract had ended by a notice the owner gave (attack 9: inside the grace the
    // holder states, but after the notice ran out).
    let (answer, mut raw) = match attack {
        9 => {
            let notice = Notice { contract: id, from: owner.node_id(), at: t(900) };
            let ended = Answer {
                challenge: RecordId::of(&challenge).unwrap(),
                holder: holder.node_id(),
                reply: Reply::Ended { notice: Signed::sign(notice, &owner).unwrap() },
                standing: failing,
                at: t(1_450),
            };
            (Signed::sign(ended, &holder).unwrap(), Vec::new())
        }
        6 | 8 => {
            let mut gone = Answer {
                challenge: RecordId::of(&challenge).unwrap(),
                holder: holder.node_id(),
                reply: Reply::NotHeld { reason: "gone".into() },
                standing: failing,
                at: t(1_600),
            };
            gone.standing = failing;
            (Signed::sign(gone, &holder).unwrap(), Vec::new())
        }
        REAL_BREACH => {
            let mut lost = extents.clone();
            lost[1].fill(0);
            honest_reply(&holder, &challenge, &manifest, &lost, failing, t(1_200))
        }
        _ => honest_reply(&holder, &challenge, &manifest, &extents, failing, t(1_200)),
    };
    let mut evidence = Evidence {
        schema: Schema,
        contract,
        manifest: Signed::sign(asked, &owner).unwrap(),
        receipt: Some(Signed::sign(receipt, &holder).unwrap()),
        extent_list: hex_encode(&list),
        challenge: Signed::sign(challenge, &owner).unwrap(),
        answer: Some(answer),
        answer_bytes: String::new(),
        tops: String::new(),
        contradiction: None,
    };
    match attack {
        // The honest answer, bytes changed after the holder signed them.
        0 => raw[3] ^= 0x40,
        // The answer's standing changed by the owner (the holder signed another).
        4 => {
            if let Some(a) = &mut evidence.answer {
                a.body.standing = Standing::Ok.after_failure(t(1_150), 500);
            }
        }
        // Tops that would make honest proofs fail.
        5 => evidence.tops = "11".repeat(32 * 4),
        // A deletion after the grace ran out, "contradicted" by the holder's own earlier word
        // that the owner was failing just so (no contradiction), or by one the owner forged.
        6 => evidence.contradiction = Some(verdict(failing, 1_300, &holder)),
        7 => {
            let mut gone = evidence.answer.clone().unwrap();
            gone.body.reply = Reply::NotHeld { reason: "gone".into() };
            gone.body.at = t(1_600);
            evidence.answer = Some(Signed::sign(gone.body, &holder).unwrap());
            evidence.contradiction = Some(verdict(Standing::Ok, 1_300, &owner));
        }
        // The holder's word that the owner was ok, at the very second it judged it failing
        // (the challenge that found the failure): no contradiction.
        8 => {
            let mut ok = Challenge { standing: Standing::Ok, at: t(1_000), ..evidence.challenge.body.clone() };
            (ok.challenger, ok.holder) = (holder.node_id(), owner.node_id());
            evidence.contradiction = Some(Statement::Challenge(Signed::sign(ok, &holder).unwrap()));
        }
        // 1: the honest answer as it is, hoping the check misjudges it.
        _ => {}
    }
    evidence.answer_bytes = hex_encode(&raw);
    evidence.check().is_ok()
}
