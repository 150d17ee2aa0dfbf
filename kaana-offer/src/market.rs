//! The market: `create`, `publish`, `list`, `accept`, `contracts`, `terminate`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use serde::Serialize;
use serde_json::json;

use kaana_proto::net::transport::{Connection, NetError, Traffic};
use kaana_proto::net::wire::{Request, Response};
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::{Settings, now_from_env};
use kaana_proto::protocol::history::History;
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::market::{self, ContractBody, Notice, Offer, RecordId};
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::size::format_size;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::config::{PeerAddr, is_host_port};
use kaana_proto::store::files::{ContractState, ContractSummary, OfferList, OwnOffer, Role, Status, find_by_prefix};
use kaana_proto::store::home::Schema;
use kaana_proto::store::node::Node;

use crate::block_on;

/// An offer as printed: the fields of the signed offer, its id, and whether it is ours.
#[derive(Serialize)]
struct OfferLine<'a> {
    id: RecordId,
    node: NodeId,
    addrs: &'a [String],
    size: u64,
    grace_secs: u64,
    /// The history terms: how long, and how many bytes (0 and 0: the newest generation only).
    history_secs: u64,
    history_bytes: u64,
    expires_at: Timestamp,
    nonce: &'a str,
    own: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    taken_by: Option<RecordId>,
}

fn offer_line<'a>(id: RecordId, offer: &'a Offer, own: bool, taken_by: Option<RecordId>) -> OfferLine<'a> {
    OfferLine {
        id,
        node: offer.node,
        addrs: &offer.addrs,
        size: offer.size,
        grace_secs: offer.grace_secs,
        history_secs: offer.history.map_or(0, |h| h.keep_secs),
        history_bytes: offer.history.map_or(0, |h| h.bytes),
        expires_at: offer.expires_at,
        nonce: &offer.nonce,
        own,
        taken_by,
    }
}

/// The terms `create` is given.
pub(crate) struct Terms {
    pub size: u64,
    pub grace: Option<u64>,
    pub ttl: u64,
    pub history: Option<u64>,
    pub history_space: Option<String>,
}

/// The history terms an offer of `size` bytes makes, from its options and the config.
fn history_terms(node: &Node, size: u64, keep: Option<u64>, space: Option<&str>) -> anyhow::Result<Option<History>> {
    let keep_secs = keep.unwrap_or(node.config.history_secs);
    if keep_secs == 0 {
        return Ok(None);
    }
    let percent = |p: u64| (u128::from(size) * u128::from(p) / 100) as u64;
    let bytes = match space {
        None => percent(node.config.history_percent),
        Some(text) => match text.strip_suffix('%') {
            Some(p) => {
                percent(p.trim().parse().map_err(|_| anyhow!("--history-space {text:?} is not a percent such as 25%"))?)
            }
            None => kaana_proto::protocol::size::parse_size(text).map_err(|e| anyhow!("--history-space: {e}"))?,
        },
    };
    let terms = History { keep_secs, bytes };
    terms.check(size).map_err(|e| anyhow!("--history/--history-space: {e}"))?;
    Ok(Some(terms))
}

pub(crate) fn create(home: &Path, terms: Terms, addrs: Vec<String>) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let (id, offer) = make_offer(&node, terms, addrs, false, now)?;
    emit(&offer_line(id, &offer.body, true, None))?;
    Ok(Exit::Ok)
}

/// Makes, signs and keeps an offer of this node's on `terms` (checked as `create` checks them).
pub(crate) fn make_offer(
    node: &Node,
    terms: Terms,
    addrs: Vec<String>,
    for_a_new_peer: bool,
    now: Timestamp,
) -> anyhow::Result<(RecordId, Signed<Offer>)> {
    let Terms { size, grace, ttl, history, history_space } = terms;
    if size == 0 {
        bail!("--size must be more than 0");
    }
    let history = history_terms(node, size, history, history_space.as_deref())?;
    let grace_secs = grace.unwrap_or(node.config.grace_secs);
    if grace_secs == 0 || ttl == 0 {
        bail!("--grace and --ttl must be more than 0");
    }
    if ttl > market::MAX_OFFER_TTL_SECS {
        bail!("--ttl must be at most 30d: boards keep an offer no longer");
    }
    let addrs = if addrs.is_empty() { node.contact_addrs()? } else { addrs };
    if addrs.is_empty() {
        bail!(
            "no address peers can reach this node at: pass --addr HOST:PORT, start `kaana-sync serve` on a \
             reachable address, or init with --advertise"
        );
    }
    if let Some(bad) = addrs.iter().find(|a| !is_host_port(a)) {
        bail!("--addr {bad:?} is not HOST:PORT");
    }
    let _lock = node.home.lock()?;
    let held = size.saturating_add(kaana_proto::protocol::history::allowance(history.as_ref()));
    check_room(node, held)?;
    let body = Offer {
        node: node.id(),
        addrs,
        size,
        grace_secs,
        expires_at: now.plus_secs(ttl),
        nonce: kaana_proto::node::machine::new_nonce()?,
        history,
    };
    let offer = Signed::sign(body, &node.identity)?;
    let id = RecordId::of(&offer.body)?;
    let own = OwnOffer { schema: Schema, offer: offer.clone(), taken_by: None, for_a_new_peer, withdrawn: None };
    node.save_own_offer(&id, &own)?;
    node.log_event(now, "offer", json!({"offer": id, "size": size, "grace_secs": grace_secs}))?;
    Ok((id, offer))
}

/// Refuses a commitment of `size` more bytes that the capacity cannot hold.
fn check_room(node: &Node, size: u64) -> anyhow::Result<()> {
    if let Err(no) = market::room_for(size, node.committed()?, node.config.capacity) {
        bail!(
            "{} is more than this node's free capacity: {} free ({} capacity, {} committed to contracts); \
             a node never commits more than its capacity (raise it with `kaana-offer config set capacity SIZE`)",
            format_size(no.size),
            format_size(no.free),
            format_size(no.capacity),
            format_size(no.committed)
        );
    }
    Ok(())
}

#[derive(Serialize)]
pub(crate) struct PublishLine {
    pub(crate) offer: RecordId,
    pub(crate) board: NodeId,
    pub(crate) result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message: Option<String>,
}

/// Sends `offers` to `boards` (default: this node's own board, through its running server, which
/// forwards them to the boards it knows); one line per offer and board.
pub(crate) fn publish_offers(
    node: &Node,
    settings: &Settings,
    offers: &[(RecordId, Signed<Offer>)],
    boards: &[PeerAddr],
) -> anyhow::Result<Vec<PublishLine>> {
    let boards: Vec<PeerAddr> = if boards.is_empty() {
        vec![PeerAddr { node: node.id(), addr: node.own_server_addr()? }]
    } else {
        boards.to_vec()
    };
    let mut lines = Vec::new();
    block_on(async {
        let client = settings.client(node, Traffic::Short);
        for board in &boards {
            let conn = match client.connect(board.node, &board.addr).await {
                Ok(c) => Some(c),
                Err(e) => {
                    let hint = if board.node == node.id() { " (is `kaana-sync serve` running?)" } else { "" };
                    eprintln!("kaana-offer: board {board}: {e}{hint}");
                    None
                }
            };
            for (id, offer) in offers {
                let (result, message) = match &conn {
                    None => ("unreachable", None),
                    Some(conn) => match conn.request(&Request::Publish { offer: offer.clone() }).await {
                        Ok(Response::Published { new: true }) => ("new", None),
                        Ok(Response::Published { new: false }) => ("known", None),
                        Ok(other) => ("refused", Some(format!("unexpected reply {other:?}"))),
                        Err(NetError::Remote(e)) => ("refused", Some(e.message)),
                        Err(e) => ("failed", Some(e.to_string())),
                    },
                };
                lines.push(PublishLine { offer: *id, board: board.node, result, message });
            }
            if let Some(c) = conn {
                c.close();
            }
        }
        client.close().await;
        Ok(())
    })?;
    Ok(lines)
}

pub(crate) fn publish(
    home: &Path,
    settings: &Settings,
    prefix: Option<&str>,
    boards: &[PeerAddr],
) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let own = node.own_offers()?;
    let offers: Vec<(RecordId, Signed<Offer>)> = match prefix {
        Some(p) => {
            let (id, o) = find_by_prefix(own, p, "offer of this node")?;
            if let Some(c) = o.taken_by {
                bail!("offer {id} is already taken (contract {c})");
            }
            market::check_offer(&o.offer, now)?;
            vec![(id, o.offer)]
        }
        None => own.into_iter().filter(|(_, o)| o.open(now)).map(|(id, o)| (id, o.offer)).collect(),
    };
    if offers.is_empty() {
        bail!("no open offer to publish: make one with `kaana-offer create --size SIZE --grace DURATION`");
    }
    let lines = publish_offers(&node, settings, &offers, boards)?;
    for line in &lines {
        emit(line)?;
    }
    let ok = lines.iter().filter(|l| matches!(l.result, "new" | "known")).count();
    let failed = lines.len() - ok;
    Ok(match (ok, failed) {
        (_, 0) => Exit::Ok,
        (0, _) => Exit::Error,
        _ => Exit::Attention,
    })
}

pub(crate) fn list(home: &Path, settings: &Settings, boards: &[PeerAddr], dht: bool) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let me = node.id();
    let own: BTreeMap<RecordId, OwnOffer> = node.own_offers()?.into_iter().collect();
    let mut shown: BTreeMap<RecordId, Signed<Offer>> = BTreeMap::new();
    let mut exit = Exit::Ok;
    if boards.is_empty() && !dht {
        // A withdrawn offer of this node's stays on its board until it expires: not shown.
        let withdrawn: Vec<RecordId> = own.iter().filter(|(_, o)| o.withdrawn.is_some()).map(|(id, _)| *id).collect();
        for o in node.board_offers(now)?.into_iter().chain(own.values().map(|o| o.offer.clone())) {
            if let Ok(id) = market::check_offer(&o, now)
                && !withdrawn.contains(&id)
            {
                shown.insert(id, o);
            }
        }
    } else {
        let fetched = block_on(fetch_boards(&node, settings, boards, dht, now))?;
        let asked = boards.len() + usize::from(dht);
        if fetched.failed > 0 {
            exit = if fetched.offers.is_empty() && fetched.failed == asked { Exit::Error } else { Exit::Attention };
        }
        shown = fetched.offers;
        remember_seen(&node, &shown, now)?;
    }
    for (id, offer) in &shown {
        let taken_by = own.get(id).and_then(|o| o.taken_by);
        emit(&offer_line(*id, &offer.body, offer.body.node == me, taken_by))?;
    }
    Ok(exit)
}

pub(crate) struct Fetched {
    pub(crate) offers: BTreeMap<RecordId, Signed<Offer>>,
    /// Sources that failed: a board each, and the DHT as one.
    pub(crate) failed: usize,
}

pub(crate) async fn fetch_boards(
    node: &Node,
    settings: &Settings,
    boards: &[PeerAddr],
    dht: bool,
    now: Timestamp,
) -> anyhow::Result<Fetched> {
    let client = settings.client(node, Traffic::Short);
    let mut out = Fetched { offers: BTreeMap::new(), failed: 0 };
    for board in boards {
        let fetched = async {
            let conn = client.connect(board.node, &board.addr).await?;
            fetch_board(&conn, now, &mut out.offers).await
        };
        if let Err(e) = fetched.await {
            eprintln!("kaana-offer: board {board}: {e}");
            out.failed += 1;
        }
    }
    if dht {
        crate::found::fetch_dht_boards(node, settings, now, &mut out).await;
    }
    client.close().await;
    Ok(out)
}

/// Lists every offer on the board at the other end of `conn` into `into`, each checked.
pub(crate) async fn fetch_board(
    conn: &Connection,
    now: Timestamp,
    into: &mut BTreeMap<RecordId, Signed<Offer>>,
) -> Result<(), NetError> {
    let board = conn.node();
    let mut after = None;
    // A board holds at most TOTAL_CAP offers: a board that says "more" beyond that is not
    // followed further (and every page must bring at least one).
    let mut listed = 0;
    loop {
        if listed > kaana_proto::protocol::board::TOTAL_CAP {
            eprintln!("kaana-offer: board {} lists more offers than a board can hold; stopped", board.short());
            break;
        }
        match conn.request(&Request::ListOffers { after }).await? {
            Response::Offers { offers, more } => {
                listed += offers.len();
                after = offers.last().and_then(|o| RecordId::of(&o.body).ok());
                for offer in offers {
                    match market::check_offer(&offer, now) {
                        Ok(id) => {
                            into.insert(id, offer);
                        }
                        Err(e) => eprintln!("kaana-offer: board {} listed an invalid offer: {e}", board.short()),
                    }
                }
                if !more || after.is_none() {
                    break;
                }
            }
            other => {
                return Err(NetError::Unexpected { request: "list_offers", reply: format!("{other:?}") });
            }
        }
    }
    conn.close();
    Ok(())
}

/// Keeps offers seen on boards, so that `accept` can find them: those just listed, then those
/// seen before and not yet expired, most recent first (the file keeps that order), at most
/// [`kaana_proto::protocol::board::SEEN_CAP`] besides the last listing.
fn remember_seen(node: &Node, seen: &BTreeMap<RecordId, Signed<Offer>>, now: Timestamp) -> anyhow::Result<()> {
    let _lock = node.home.lock()?;
    let path = node.home.seen_offers();
    let held = node.offer_list(&path)?.offers.into_iter().filter_map(|o| Some((market::check_offer(&o, now).ok()?, o)));
    let listed = seen.iter().map(|(id, o)| (*id, o.clone()));
    let offers = kaana_proto::protocol::board::keep_seen(listed, held).into_iter().map(|(_, o)| o).collect();
    kaana_proto::store::home::create_dir(&node.home.offers_dir())?;
    node.home.write(&path, &OfferList { schema: Schema, offers, vouched: Vec::new() })?;
    Ok(())
}

pub(crate) fn accept(home: &Path, settings: &Settings, prefix: &str) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let own = node.own_offers()?;
    let candidates = node
        .offer_list(&node.home.seen_offers())?
        .offers
        .into_iter()
        .chain(node.board_offers(now)?)
        .chain(own.into_iter().map(|(_, o)| o.offer))
        .filter_map(|o| RecordId::of(&o.body).ok().map(|id| (id, o)));
    let mut unique: BTreeMap<RecordId, Signed<Offer>> = BTreeMap::new();
    unique.extend(candidates);
    let (offer_id, offer) = find_by_prefix(unique, prefix, "offer seen on a board")
        .map_err(|e| anyhow!("{e} (list a board first: `kaana-offer list --board ID@HOST:PORT`)"))?;
    let id = take_offer(&node, settings, offer_id, &offer, false, now)?;
    emit(&node.contract(&id)?.summary())?;
    Ok(Exit::Ok)
}

/// Accepts `offer` (its id `offer_id`) from its maker: the contract, signed by both, is kept.
/// With `one_per_peer`, refused if this node already has a contract not ended with the maker
/// (checked under the lock the acceptance holds).
pub(crate) fn take_offer(
    node: &Node,
    settings: &Settings,
    offer_id: RecordId,
    offer: &Signed<Offer>,
    one_per_peer: bool,
    now: Timestamp,
) -> anyhow::Result<RecordId> {
    let me = node.id();
    if offer.body.node == me {
        bail!("offer {offer_id} is this node's own: another node must accept it");
    }
    market::check_offer(offer, now).with_context(|| format!("offer {offer_id}"))?;
    let addrs = node.contact_addrs()?;
    if addrs.is_empty() {
        bail!(
            "no address the offerer can reach this node at: start `kaana-sync serve` on a reachable address, \
             or init with --advertise HOST:PORT"
        );
    }
    // Checked first without the lock, so that an offer this node would refuse costs no
    // connection; and again under it.
    let check = || -> anyhow::Result<()> {
        let contracts = node.contracts()?;
        if let Some(existing) = contracts.iter().find(|e| e.contract.body.offer == offer_id) {
            bail!("this node already holds contract {} from offer {offer_id}", existing.id);
        }
        if one_per_peer
            && let Some(existing) =
                contracts.iter().find(|e| e.state.peer == offer.body.node && !e.state.status.is_ended())
        {
            bail!("this node already has contract {} with node {}", existing.id, offer.body.node);
        }
        check_room(node, offer.body.held_bytes()).with_context(|| format!("offer {offer_id}"))
    };
    check()?;
    let (contract, _lock, reached) = block_on(async {
        let client = settings.client(node, Traffic::Short);
        let result = async {
            // Reaching the offerer holds no lock: its addresses are its word, and some may only
            // time out. The state's lock, which answering a challenge needs too, is taken only
            // once it answered, for the request alone (one read time-out at most).
            let conn = client.connect_any(offer.body.node, &offer.body.addrs).await?;
            // Held across the request, so that two accepts at once cannot both take the last
            // free space.
            let lock = node.home.lock()?;
            check()?;
            let proposal = Signed::sign(ContractBody::for_offer(offer, offer_id, me, now), &node.identity)?;
            let reply = conn.request(&Request::Accept { proposal: proposal.clone(), addrs }).await;
            let reached = conn.remote_address().to_string();
            conn.close();
            match reply? {
                Response::Contract { contract } => anyhow::Ok((contract, lock, reached)),
                other => Err(NetError::Unexpected { request: "accept", reply: format!("{other:?}") }.into()),
            }
        }
        .await;
        client.close().await;
        result.with_context(|| format!("accepting offer {offer_id} from node {}", offer.body.node))
    })?;
    // The offerer may return the contract of an earlier, interrupted accept of ours: same offer,
    // same sides, same terms, signed by both.
    let b = &contract.body;
    let expected = ContractBody::for_offer(offer, offer_id, me, b.created_at);
    if *b != expected {
        bail!("the offerer returned a contract with other terms than offer {offer_id}; nothing stored");
    }
    contract.verify().context("the contract the offerer returned")?;
    let id = node.save_new_contract(&contract, &ContractState::new(Role::Taker, offer.body.node))?;
    // The offer's addresses, the one the maker was reached at first; or, when none of them
    // reached it (it was found on the DHT: they are old), that one alone. (A host name may
    // have been the one: it is kept.)
    let used = |a: &String| a.parse::<std::net::SocketAddr>().map_or(true, |a| a.to_string() == reached);
    if offer.body.addrs.iter().any(used) {
        node.remember_addrs(&offer.body.node, &offer.body.addrs)?;
    }
    node.remember_addrs(&offer.body.node, std::slice::from_ref(&reached))?;
    node.log_event(now, "contract", json!({"contract": id, "peer": offer.body.node, "role": "taker", "size": b.size}))?;
    Ok(id)
}

pub(crate) fn contracts(home: &Path, settings: &Settings, fetch: bool) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let mut exit = Exit::Ok;
    if fetch {
        if node.address_book()?.peers.is_empty() {
            if !settings.discovery(&node).enabled() {
                bail!("no peer to ask: add one first with `kaana-offer peer add ID@HOST:PORT`");
            }
            // After `init --recover`: the recovery locator on the DHT names the peers.
            let n = crate::found::peers_from_locator(&node, settings)
                .context("no peer to ask (add one with `kaana-offer peer add ID`)")?;
            eprintln!("kaana-offer: the recovery locator named {n} peer(s)");
        }
        let fetched = block_on(async {
            let client = settings.client(&node, Traffic::Short);
            let r = kaana_proto::node::restore::fetch_contracts(&client, &node).await;
            client.close().await;
            Ok(r?)
        })?;
        for (peer, why) in &fetched.unreached {
            eprintln!("kaana-offer: could not ask node {peer}: {why}");
        }
        let reached = fetched.asked - fetched.unreached.len();
        eprintln!(
            "kaana-offer: {} contract(s) recovered from {reached} of {} peer(s)",
            fetched.found.len(),
            fetched.asked
        );
        if !fetched.unreached.is_empty() {
            // Contracts with the peers not reached may be missing: run it again once they are.
            eprintln!("kaana-offer: run `kaana-offer contracts --fetch` again when they can be reached");
            exit = Exit::Attention;
        }
    }
    for entry in node.contracts()? {
        // The history each side holds: of ours at the peer (this node's record), of the peer's here.
        let record = kaana_proto::store::outbound::Outbound::at(node.home.root(), &entry.id);
        let ours = {
            let _shared = record.lock(false)?;
            record.manifests()?.len()
        };
        let store = kaana_proto::store::inbound::Inbound::new(&node.config.storage, &entry.id);
        let theirs = {
            let _shared = store.lock(false)?;
            store.manifests()?.len()
        };
        emit(&ContractLine { contract: entry.summary(), our_generations: ours, their_generations: theirs })?;
    }
    Ok(exit)
}

/// A contract as `contracts` prints it: with the generations each side keeps of the other's.
#[derive(Serialize)]
struct ContractLine {
    #[serde(flatten)]
    contract: ContractSummary,
    /// Generations of this node's volume the peer keeps (by this node's record).
    our_generations: usize,
    /// Generations of the peer's volume this node keeps.
    their_generations: usize,
}

#[derive(Serialize)]
struct TerminateLine {
    #[serde(flatten)]
    contract: ContractSummary,
    delivered: bool,
}

pub(crate) fn terminate(home: &Path, settings: &Settings, prefix: &str) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let id = node.find_contract(prefix)?.id;
    let delivered = give_notice(&node, settings, id, now)?;
    emit(&TerminateLine { contract: node.contract(&id)?.summary(), delivered })?;
    Ok(if delivered { Exit::Ok } else { Exit::Attention })
}

/// Ends contract `id` with a signed notice at `now` (or the one already given) and tells the
/// peer; whether the peer was told (a notice it already has counts).
pub(crate) fn give_notice(node: &Node, settings: &Settings, id: RecordId, now: Timestamp) -> anyhow::Result<bool> {
    let me = node.id();
    // Under the lock, from the state as it is now: a notice already given stands.
    let given = node.update_contract(&id, |entry| -> anyhow::Result<Option<(Signed<Notice>, Option<Timestamp>)>> {
        match &entry.state.status {
            Status::Ended { at, .. } => bail!("contract {} already ended at {at}", entry.id),
            Status::Terminated { notice, delivered, .. } => {
                Ok((notice.body.from == me && !*delivered).then(|| (notice.clone(), None)))
            }
            Status::Active => {
                let notice = Signed::sign(Notice { contract: entry.id, from: me, at: now }, &node.identity)?;
                let delete_after = entry.take_notice(notice.clone(), false);
                Ok(Some((notice, delete_after)))
            }
        }
    })?;
    let Some((notice, newly)) = given else { return Ok(true) };
    if let Some(delete_after) = newly {
        let peer = node.contract(&id)?.state.peer;
        node.log_event(
            now,
            "notice",
            json!({"contract": id, "peer": peer, "from": "us", "delete_after": delete_after}),
        )?;
    }
    let entry = node.contract(&id)?;
    let addrs = node.address_book()?.addrs(&entry.state.peer).to_vec();
    let sent = block_on(async {
        let client = settings.client(node, Traffic::Short);
        let result = async {
            let conn = client.connect_any(entry.state.peer, &addrs).await?;
            let r = conn.request(&Request::Notice { notice }).await;
            conn.close();
            r
        }
        .await;
        client.close().await;
        Ok(result)
    })?;
    match sent {
        Ok(_) => {
            node.update_contract(&id, |entry| {
                entry.notice_delivered();
                Ok::<_, kaana_proto::store::home::StateError>(())
            })?;
            Ok(true)
        }
        Err(e) => {
            eprintln!("kaana-offer: the peer was not told yet ({e}); run `kaana-offer terminate {id}` again");
            Ok(false)
        }
    }
}
