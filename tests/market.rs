//! Offers, boards and contracts between three real nodes on 127.0.0.1.

use std::fs;
use std::time::{Duration, Instant};

use serde::Deserialize;

use kaana_proto::net::transport::{Client, NetError};
use kaana_proto::net::wire::{ErrorCode, Request, Response};
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::market::{Offer, RecordId};
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::files::{ContractFile, OfferList};

use crate::common::{ServerProc, TestNode, assert_exit, assert_success, json_lines, now_unix, one_json, stderr};

#[derive(Debug, Deserialize, PartialEq)]
struct OfferLine {
    id: String,
    node: String,
    addrs: Vec<String>,
    size: u64,
    grace_secs: u64,
    expires_at: String,
    own: bool,
}

#[derive(Debug, Deserialize, PartialEq)]
struct ContractLine {
    id: String,
    peer: String,
    role: String,
    size: u64,
    grace_secs: u64,
    status: String,
    their_standing: serde_json::Value,
    our_standing: serde_json::Value,
    delete_after: Option<String>,
}

/// A node with 1 GiB of capacity and its running server.
fn node_with_server() -> (TestNode, ServerProc) {
    let node = TestNode::init_with(&["--capacity", "1GiB"]);
    let server = ServerProc::start(&node, &[]);
    (node, server)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn create_offer(node: &TestNode, args: &[&str]) -> OfferLine {
    let mut all = vec!["create"];
    all.extend_from_slice(args);
    node.json("kaana-offer", &all)
}

/// Lists a board until `pred` holds (offers are forwarded in the background), at most 10 s.
fn list_until(node: &TestNode, board: &ServerProc, pred: impl Fn(&[OfferLine]) -> bool) -> Vec<OfferLine> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = node.run("kaana-offer", &["list", "--board", &board.peer()]);
        assert_success(&out);
        let offers: Vec<OfferLine> = json_lines(&out);
        if pred(&offers) || Instant::now() > deadline {
            return offers;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn contract_files(node: &TestNode) -> Vec<std::path::PathBuf> {
    let dir = node.home.join("contracts");
    let Ok(entries) = fs::read_dir(&dir) else { return Vec::new() };
    let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    files.sort();
    files
}

#[test]
fn an_offer_travels_through_a_forwarding_board_and_becomes_one_contract() {
    let (a, sa) = node_with_server();
    let (b, sb) = node_with_server();
    let (c, sc) = node_with_server();
    // A's board knows C's board; B asks C's board.
    assert_success(&a.run("kaana-offer", &["peer", "add", &sc.peer()]));

    let offer = create_offer(&a, &["--size", "512MiB", "--grace", "7d", "--ttl", "2d"]);
    assert_eq!(offer.node, sa.node);
    assert_eq!(offer.addrs, vec![sa.addr.clone()]);
    assert_eq!((offer.size, offer.grace_secs, offer.own), (512 << 20, 7 * 86_400, true));
    let publish: Vec<serde_json::Value> = json_lines(&a.run("kaana-offer", &["publish"]));
    assert_eq!(publish.len(), 1);
    assert_eq!(publish[0]["result"], "new");
    assert_eq!(publish[0]["board"], sa.node.as_str());

    let seen = list_until(&b, &sc, |o| o.iter().any(|o| o.id == offer.id));
    let through_c = seen.into_iter().find(|o| o.id == offer.id).expect("A's offer forwarded to C's board");
    assert_eq!(through_c, OfferLine { own: false, ..offer });

    let out = b.run("kaana-offer", &["accept", &through_c.id[..12]]);
    assert_success(&out);
    let at_b: ContractLine = one_json(&out);
    assert_eq!((at_b.peer.as_str(), at_b.role.as_str(), at_b.status.as_str()), (sa.node.as_str(), "taker", "active"));
    assert_eq!((at_b.size, at_b.grace_secs), (512 << 20, 7 * 86_400));
    assert_eq!(at_b.their_standing["state"], "ok");
    assert_eq!(at_b.our_standing["state"], "ok");
    let at_a: Vec<ContractLine> = json_lines(&a.run("kaana-offer", &["contracts"]));
    assert_eq!(at_a.len(), 1);
    assert_eq!(
        (at_a[0].id.as_str(), at_a[0].peer.as_str(), at_a[0].role.as_str()),
        (at_b.id.as_str(), sb.node.as_str(), "offerer")
    );

    // Both hold the same contract, byte for byte, with both signatures valid.
    let (fa, fb) = (contract_files(&a), contract_files(&b));
    let name = format!("{}.json", at_b.id);
    let (ca, cb) = (a.home.join("contracts").join(&name), b.home.join("contracts").join(&name));
    assert!(fa.contains(&ca) && fb.contains(&cb), "{fa:?} {fb:?}");
    assert_eq!(fs::read(&ca).unwrap(), fs::read(&cb).unwrap());
    let file: ContractFile = serde_json::from_slice(&fs::read(&ca).unwrap()).unwrap();
    file.contract.verify().unwrap();
    assert_eq!(file.contract.id().unwrap().to_string(), at_b.id);
    assert_eq!(file.contract.body.offerer.to_string(), sa.node);
    assert_eq!(file.contract.body.taker.to_string(), sb.node);

    // A second taker is refused, and stores nothing.
    let _ = list_until(&c, &sa, |_| true);
    let out = c.run("kaana-offer", &["accept", &offer_id_prefix(&through_c.id)]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("already taken"), "{}", stderr(&out));
    assert!(contract_files(&c).is_empty());
    // The taken offer is no longer on A's board.
    let listed: Vec<OfferLine> = json_lines(&c.run("kaana-offer", &["list", "--board", &sa.peer()]));
    assert!(listed.iter().all(|o| o.id != through_c.id));
    drop((sb, sc));
}

fn offer_id_prefix(id: &str) -> String {
    id[..16].to_owned()
}

#[test]
fn bad_offers_are_refused_and_nothing_is_stored() {
    let (a, sa) = node_with_server();
    let (b, _sb) = node_with_server();

    // One that would stay on boards for more than 30 days.
    let out = a.run("kaana-offer", &["create", "--size", "100MiB", "--ttl", "31d"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("at most 30d"), "{}", stderr(&out));

    // Its own offer.
    let own = create_offer(&a, &["--size", "100MiB", "--ttl", "1h"]);
    let out = a.run("kaana-offer", &["accept", &own.id]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("own"), "{}", stderr(&out));

    // Expired by the time B accepts it.
    assert_success(&a.run("kaana-offer", &["publish"]));
    let seen = list_until(&b, &sa, |o| !o.is_empty());
    assert_eq!(seen.len(), 1);
    let later = Timestamp::from_unix(Timestamp::from_unix(0).unix() + now_unix() + 2 * 3_600).to_string();
    let out = b.cmd("kaana-offer").args(["accept", &own.id]).env("KAANA_NOW", &later).output().unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("expired"), "{}", stderr(&out));

    // More than B's free capacity (1 GiB). (Without history: an offer takes its size alone.)
    let big = create_offer(&a, &["--size", "1GiB", "--history", "0"]);
    let with_history = a.cmd("kaana-offer").args(["create", "--size", "1GiB"]).output().unwrap();
    assert_exit(&with_history, 2);
    assert!(
        stderr(&with_history).contains("1.2 GiB is more than"),
        "its 25% history counts: {}",
        stderr(&with_history)
    );
    let bigger = a.cmd("kaana-offer").args(["create", "--size", "2GiB", "--history", "0"]).output().unwrap();
    assert_exit(&bigger, 2);
    assert!(stderr(&bigger).contains("free capacity"), "{}", stderr(&bigger));
    assert_success(&a.run("kaana-offer", &["publish", &big.id]));
    let _ = list_until(&b, &sa, |o| o.iter().any(|o| o.id == big.id));
    // B has promised half its capacity elsewhere: make that so by accepting the small offer.
    let small = create_offer(&a, &["--size", "600MiB"]);
    assert_success(&a.run("kaana-offer", &["publish", &small.id]));
    let _ = list_until(&b, &sa, |o| o.iter().any(|o| o.id == small.id));
    assert_success(&b.run("kaana-offer", &["accept", &small.id]));
    let out = b.run("kaana-offer", &["accept", &big.id]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("free capacity"), "{}", stderr(&out));

    // A flipped bit in an offer B has seen: refused before anything is sent.
    let seen_path = b.home.join("offers/seen.json");
    let mut list: OfferList = serde_json::from_slice(&fs::read(&seen_path).unwrap()).unwrap();
    let target = list.offers.iter().position(|o| RecordId::of(&o.body).unwrap().to_string() == big.id).unwrap();
    let mut sig = *list.offers[target].sig.as_bytes();
    sig[7] ^= 0x10;
    list.offers[target].sig = kaana_proto::protocol::identity::Signature::from_bytes(sig);
    fs::write(&seen_path, serde_json::to_vec(&list).unwrap()).unwrap();
    let out = b.run("kaana-offer", &["accept", &big.id]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("invalid signature"), "{}", stderr(&out));

    // Exactly one contract on each side: the small one.
    let at_b: Vec<ContractLine> = json_lines(&b.run("kaana-offer", &["contracts"]));
    assert_eq!(at_b.len(), 1);
    assert_eq!(at_b[0].size, 600 << 20);
    assert_eq!(json_lines::<ContractLine>(&a.run("kaana-offer", &["contracts"])).len(), 1);
}

#[test]
fn the_offerer_never_commits_more_than_its_capacity() {
    let (a, sa) = node_with_server();
    let (b, _sb) = node_with_server();
    let (c, _sc) = node_with_server();
    let first = create_offer(&a, &["--size", "700MiB"]);
    let second = create_offer(&a, &["--size", "700MiB"]);
    assert_success(&a.run("kaana-offer", &["publish"]));
    let _ = list_until(&b, &sa, |o| o.len() == 2);
    let _ = list_until(&c, &sa, |o| o.len() == 2);
    assert_success(&b.run("kaana-offer", &["accept", &first.id]));
    let out = c.run("kaana-offer", &["accept", &second.id]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no room"), "{}", stderr(&out));
    assert!(contract_files(&c).is_empty());
    // The contract's size and its history allowance (25% by default).
    let status: serde_json::Value = one_json(&a.run("kaana-offer", &["status"]));
    assert_eq!(status["committed"], 875u64 << 20);
    assert_eq!(status["free"], (1u64 << 30) - (875 << 20));
    // Nor can the capacity be set below what contracts already commit.
    let out = a.run("kaana-offer", &["config", "set", "capacity", "500MiB"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("already commit"), "{}", stderr(&out));
    // Raised, the running server takes the second offer's taker at once.
    let out = a.run("kaana-offer", &["config", "set", "capacity", "2GiB"]);
    assert_eq!(one_json::<serde_json::Value>(&out)["capacity"], 2u64 << 30);
    assert_success(&c.run("kaana-offer", &["accept", &second.id]));
}

/// An offer of `size` bytes by `ident` (reachable nowhere), signed.
fn signed_offer(ident: &Identity, size: u64, expires_at: Timestamp, nonce: String) -> Signed<Offer> {
    let body = Offer {
        node: ident.node_id(),
        addrs: vec!["127.0.0.1:9".into()],
        size,
        grace_secs: 60,
        expires_at,
        nonce,
        history: None,
    };
    Signed::sign(body, ident).unwrap()
}

#[test]
fn a_board_flooded_by_one_signer_keeps_its_cap_and_honest_offers() {
    let (_a, sa) = node_with_server();
    let board = sa.node.parse().unwrap();
    let addr = sa.addr.clone();
    let (kept, refused) = runtime().block_on(async move {
        let flooder = Identity::generate().unwrap();
        let expires = Timestamp::from_unix(now_unix() + 86_400);
        let client = std::sync::Arc::new(Client::new(flooder.clone()));
        let mut tasks = tokio::task::JoinSet::new();
        // Two lanes: a node the board does not know gets two connections at once.
        for lane in 0..2u64 {
            let (client, addr, flooder) = (client.clone(), addr.clone(), flooder.clone());
            tasks.spawn(async move {
                let conn = client.connect(board, &addr).await.unwrap();
                let mut refused = 0;
                for n in 0..5_000u64 {
                    let offer = signed_offer(&flooder, 1 << 20, expires, format!("{:032x}", lane * 10_000 + n));
                    match conn.request(&Request::Publish { offer }).await {
                        Ok(Response::Published { .. }) => {}
                        Err(NetError::Remote(e)) if e.code == ErrorCode::Refused => refused += 1,
                        other => panic!("unexpected {other:?}"),
                    }
                }
                refused
            });
        }
        let mut refused = 0;
        while let Some(r) = tasks.join_next().await {
            refused += r.unwrap();
        }
        // An honest node still gets its offer on the board.
        let honest = Identity::generate().unwrap();
        let honest_client = Client::new(honest.clone());
        let conn = honest_client.connect(board, &addr).await.unwrap();
        let offer = signed_offer(&honest, 1, expires, format!("{:032x}", 1));
        let reply = conn.request(&Request::Publish { offer }).await;
        assert!(matches!(reply, Ok(Response::Published { new: true })), "{reply:?}");
        let Ok(Response::Offers { offers, more: false }) = conn.request(&Request::ListOffers { after: None }).await
        else {
            panic!("list failed");
        };
        client.close().await;
        honest_client.close().await;
        let kept = offers.iter().filter(|o| o.body.node == flooder.node_id()).count();
        assert!(offers.iter().any(|o| o.body.node == honest.node_id()));
        (kept, refused)
    });
    assert_eq!(kept, kaana_proto::protocol::board::PER_SIGNER_CAP);
    assert_eq!(refused, 10_000 - kaana_proto::protocol::board::PER_SIGNER_CAP);
}

/// Throwaway keys fill a board to its 4096 offers. An offer from a node the board knows, or the
/// board's own node, is still taken (a stranger's makes room), and a friend's is forwarded at
/// once, while strangers' offers go on to other boards no faster than one every two seconds, and
/// arrive there as strangers' (a board that knows the forwarder vouches for none of them); and
/// the board on disk holds what it took.
#[test]
fn a_board_flooded_by_throwaway_keys_still_takes_and_forwards_a_friends_offer() {
    use kaana_proto::protocol::board::{PER_SIGNER_CAP, TOTAL_CAP};
    let (a, sa) = node_with_server();
    let (b, sb) = node_with_server();
    let (c, sc) = node_with_server();
    // A is B's friend; B forwards to C (and to A); C knows B.
    assert_success(&b.run("kaana-offer", &["peer", "add", &sa.peer()]));
    assert_success(&b.run("kaana-offer", &["peer", "add", &sc.peer()]));
    assert_success(&c.run("kaana-offer", &["peer", "add", &sb.peer()]));
    let board = sb.node.parse().unwrap();
    let addr = sb.addr.clone();
    const LANES: usize = 8;
    let keys_per_lane = TOTAL_CAP / PER_SIGNER_CAP / LANES + 4;
    let started = Instant::now();
    let (taken, refused) = runtime().block_on(async move {
        let expires = Timestamp::from_unix(now_unix() + 86_400);
        let mut tasks = tokio::task::JoinSet::new();
        for lane in 0..LANES {
            let addr = addr.clone();
            tasks.spawn(async move {
                let (mut taken, mut refused) = (0, 0);
                for key in 0..keys_per_lane {
                    let flooder = Identity::generate().unwrap();
                    let client = Client::new(flooder.clone());
                    let conn = client.connect(board, &addr).await.unwrap();
                    for n in 0..PER_SIGNER_CAP {
                        let offer = signed_offer(&flooder, 1 << 20, expires, format!("{lane:08x}{key:08x}{n:016x}"));
                        match conn.request(&Request::Publish { offer }).await {
                            Ok(Response::Published { new: true }) => taken += 1,
                            Err(NetError::Remote(e)) if e.code == ErrorCode::Refused => refused += 1,
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                    client.close().await;
                }
                (taken, refused)
            });
        }
        let (mut taken, mut refused) = (0, 0);
        while let Some(r) = tasks.join_next().await {
            let (t, r) = r.unwrap();
            (taken, refused) = (taken + t, refused + r);
        }
        (taken, refused)
    });
    let flood_secs = started.elapsed().as_secs();
    assert_eq!(taken, TOTAL_CAP, "the board filled");
    assert_eq!(refused, LANES * keys_per_lane * PER_SIGNER_CAP - TOTAL_CAP, "the rest found it full");

    // A's offer is taken, and reaches C well before the strangers' queue would let it.
    let offer = create_offer(&a, &["--size", "1MiB"]);
    let published: Vec<serde_json::Value> = json_lines(&a.run("kaana-offer", &["publish", "--board", &sb.peer()]));
    assert_eq!(published[0]["result"], "new", "{published:?}");
    let at_c = list_until(&a, &sc, |o| o.iter().any(|o| o.id == offer.id));
    // Of the strangers' 4096, C got a few: those queued (16) and one per two seconds.
    let strangers_at_c = at_c.iter().filter(|o| o.id != offer.id).count();
    let bound = 16 + 1 + (started.elapsed().as_secs() as usize).div_ceil(2);
    assert!(strangers_at_c <= bound, "{strangers_at_c} strangers' offers forwarded in {flood_secs}+ s");
    // C vouches for no stranger's offer, though B, whom it knows, forwarded them.
    let home = kaana_proto::store::home::Home::at(&c.home);
    let at_c_board = kaana_proto::store::board::StoredBoard::load(&home, Timestamp::from_unix(now_unix())).unwrap();
    let vouched_at_c = |id: &str| at_c_board.board().is_vouched(&id.parse::<RecordId>().unwrap());
    let strangers: Vec<&OfferLine> = at_c.iter().filter(|o| o.id != offer.id).collect();
    assert!(!strangers.is_empty(), "some strangers' offers reached C");
    assert!(strangers.iter().all(|o| !vouched_at_c(&o.id)), "C vouched for a stranger's offer");
    // B's own offer, published on its own board, is taken too (a stranger's makes room).
    let own = create_offer(&b, &["--size", "1MiB"]);
    let published: Vec<serde_json::Value> = json_lines(&b.run("kaana-offer", &["publish", &own.id]));
    assert_eq!(published[0]["result"], "new", "{published:?}");
    // On disk at B: the full board, A's offer and its own in it (read from board.json and board.log).
    let at_b: Vec<OfferLine> = json_lines(&b.run("kaana-offer", &["list"]));
    assert_eq!(at_b.len(), TOTAL_CAP);
    assert!(at_b.iter().any(|o| o.id == offer.id) && at_b.iter().any(|o| o.id == own.id));
    let log = fs::read_to_string(b.home.join("board.log")).unwrap_or_default();
    assert!(log.lines().count() <= TOTAL_CAP, "the log never outgrows the board");
}

/// A hostile board that answers every page with the same offers and "more" for ever: `list`
/// follows it no further than a board can hold, says so, and ends.
#[test]
fn a_board_that_always_says_more_is_followed_only_as_far_as_a_board_can_hold() {
    use kaana_proto::net::transport::{self, Traffic, read_frame, write_frame};
    let taker = TestNode::init();
    let rt = runtime();
    let board = Identity::generate().unwrap();
    let endpoint = rt
        .block_on(async {
            let config = transport::server_config(&board)?;
            transport::endpoint("127.0.0.1:0".parse().unwrap(), Some(config), Traffic::Short)
        })
        .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let expires = Timestamp::from_unix(now_unix() + 86_400);
    let page: Vec<Signed<Offer>> =
        (0..100u64).map(|n| signed_offer(&board, 1 << 20, expires, format!("{n:032x}"))).collect();
    let pages = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let served = pages.clone();
    rt.spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let (page, served) = (page.clone(), served.clone());
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    if let Ok(Some(Request::ListOffers { .. })) =
                        read_frame::<Request>(&mut recv, Duration::from_secs(10)).await
                    {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = write_frame(&mut send, &Response::Offers { offers: page.clone(), more: true }).await;
                        let _ = send.finish();
                    }
                }
            });
        }
    });
    let out = taker.run("kaana-offer", &["list", "--board", &format!("{}@{addr}", board.node_id())]);
    assert!(stderr(&out).contains("more offers than a board can hold; stopped"), "{}", stderr(&out));
    let lines: Vec<OfferLine> = json_lines(&out);
    assert_eq!(lines.len(), 100, "the same offers, each once");
    let asked = pages.load(std::sync::atomic::Ordering::Relaxed);
    let most = kaana_proto::protocol::board::TOTAL_CAP / 100 + 2;
    assert!(asked <= most, "{asked} pages asked for");
}

#[test]
fn a_tampered_offer_is_refused_by_a_board() {
    let (a, sa) = node_with_server();
    let offer = create_offer(&a, &["--size", "10MiB"]);
    let file = a.home.join("offers").join(format!("{}.json", offer.id));
    let own: kaana_proto::store::files::OwnOffer = serde_json::from_slice(&fs::read(file).unwrap()).unwrap();
    let board = sa.node.parse().unwrap();
    let addr = sa.addr.clone();
    runtime().block_on(async move {
        let client = Client::new(Identity::generate().unwrap());
        let conn = client.connect(board, &addr).await.unwrap();
        let mut bigger = own.offer.clone();
        bigger.body.size *= 2;
        let err = conn.request(&Request::Publish { offer: bigger }).await.unwrap_err();
        assert!(
            matches!(&err, NetError::Remote(e) if e.code == ErrorCode::Refused && e.message.contains("signature")),
            "{err}"
        );
        let Ok(Response::Offers { offers, .. }) = conn.request(&Request::ListOffers { after: None }).await else {
            panic!("list failed")
        };
        assert!(offers.is_empty());
        client.close().await;
    });
}

#[test]
fn terminate_gives_notice_to_both_sides() {
    let (a, sa) = node_with_server();
    let (b, _sb) = node_with_server();
    let offer = create_offer(&a, &["--size", "100MiB", "--grace", "3d"]);
    assert_success(&a.run("kaana-offer", &["publish"]));
    let _ = list_until(&b, &sa, |o| !o.is_empty());
    let contract: ContractLine = b.json("kaana-offer", &["accept", &offer.id]);

    let before = now_unix();
    let out = b.run("kaana-offer", &["terminate", &contract.id[..10]]);
    assert_success(&out);
    let line: serde_json::Value = one_json(&out);
    assert_eq!(line["status"], "terminated");
    assert_eq!(line["delivered"], true);
    let delete_after: Timestamp = line["delete_after"].as_str().unwrap().parse().unwrap();
    assert!((before + 3 * 86_400..=now_unix() + 3 * 86_400).contains(&delete_after.unix()), "{delete_after}");
    let at_a: Vec<ContractLine> = json_lines(&a.run("kaana-offer", &["contracts"]));
    assert_eq!(at_a[0].status, "terminated");
    assert_eq!(at_a[0].delete_after.as_deref(), line["delete_after"].as_str());
    // Again: nothing changes, nothing more to tell.
    let again: serde_json::Value = one_json(&b.run("kaana-offer", &["terminate", &contract.id]));
    assert_eq!(again["delete_after"], line["delete_after"]);
}

#[test]
fn capacity_beyond_the_free_disk_is_refused_and_status_says_what_is_missing() {
    let node = TestNode::new();
    let out = node.run("kaana-offer", &["init", "--capacity", "100PiB"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("free"), "{}", stderr(&out));
    assert!(!node.home.join("identity.json").exists());

    let volume = node.dir.path().join("volume.img");
    fs::write(&volume, vec![7u8; 1 << 20]).unwrap();
    let node = TestNode::init_with(&["--volume", volume.to_str().unwrap(), "--replicas", "2", "--capacity", "10MiB"]);
    let out = node.run("kaana-offer", &["status"]);
    assert_exit(&out, 1);
    let status: serde_json::Value = one_json(&out);
    assert_eq!(status["volume_size"], 1 << 20);
    assert_eq!(status["missing"], 2);
    assert_eq!(status["capacity"], 10 << 20);
    assert!(stderr(&out).contains("2 more contract"), "{}", stderr(&out));
}

/// Offers seen on boards are kept for `accept`, but not without end: a node that has seen more
/// than `SEEN_CAP` (boards listed again and again, a hostile one bringing fresh offers each time)
/// keeps that many, the last listing's whole and first, then the most recent of the others;
/// and an offer just listed can be taken.
#[test]
fn offers_seen_on_boards_are_kept_up_to_a_cap_the_last_listing_first() {
    use kaana_proto::protocol::board::SEEN_CAP;
    let (a, sa) = node_with_server();
    let offer = create_offer(&a, &["--size", "1MiB"]);
    assert_success(&a.run("kaana-offer", &["publish"]));
    let (taker, _st) = node_with_server();
    // What earlier listings left: more than the cap, unexpired, from throwaway keys.
    let expires = Timestamp::from_unix(now_unix() + 86_400);
    let keys: Vec<Identity> = (0..64).map(|_| Identity::generate().unwrap()).collect();
    let offers: Vec<Signed<Offer>> = (0..SEEN_CAP + 500)
        .map(|n| signed_offer(&keys[n % keys.len()], 1 << 20, expires, format!("{n:032x}")))
        .collect();
    let seen = taker.home.join("offers/seen.json");
    fs::create_dir_all(seen.parent().unwrap()).unwrap();
    let most_recent = offers[0].clone();
    let list = OfferList { schema: kaana_proto::store::home::Schema, offers, vouched: Vec::new() };
    fs::write(&seen, serde_json::to_vec(&list).unwrap()).unwrap();

    let listed: Vec<OfferLine> = json_lines(&taker.run("kaana-offer", &["list", "--board", &sa.peer()]));
    assert_eq!(listed.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [offer.id.as_str()]);
    let kept: OfferList = serde_json::from_slice(&fs::read(&seen).unwrap()).unwrap();
    assert_eq!(kept.offers.len(), SEEN_CAP);
    assert_eq!(kept.offers[0].body.node.to_string(), sa.node, "the offer just listed is kept, first");
    assert_eq!(kept.offers[1], most_recent, "then the most recent of those seen before");
    let took: serde_json::Value = taker.json("kaana-offer", &["accept", &offer.id[..12]]);
    assert_eq!(took["peer"], sa.node.as_str(), "{took}");
}
