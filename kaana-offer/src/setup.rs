//! Node set-up: `init`, `id`, `recovery-phrase`, `peer add`, `peer list`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Serialize;

use kaana_proto::net::transport::Traffic;
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::{Settings, now_from_env};
use kaana_proto::protocol::identity::{Identity, NodeId};
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::size::format_size;
use kaana_proto::store::config::{Config, Key, PeerAddr, is_host_port};
use kaana_proto::store::home::{Home, Schema, create_dir, free_space};
use kaana_proto::store::node::Node;

use crate::{InitArgs, PeerArg};

#[derive(Serialize)]
struct NodeLine<'a> {
    node: NodeId,
    home: &'a Path,
}

#[derive(Serialize)]
struct PhraseLine {
    node: NodeId,
    recovery_phrase: String,
}

#[derive(Serialize)]
struct PeerLine {
    node: NodeId,
    addrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
}

#[derive(Serialize)]
struct InitLine<'a> {
    node: NodeId,
    home: &'a Path,
    listen: SocketAddr,
    capacity: u64,
    recovered: bool,
    /// With `--recover` and the DHT: the peers its recovery locator named.
    #[serde(skip_serializing_if = "Option::is_none")]
    peers_found: Option<usize>,
    /// With `--recover` and the DHT: the contracts those peers gave back, to restore from.
    #[serde(skip_serializing_if = "Option::is_none")]
    contracts_found: Option<Vec<RecordId>>,
}

pub(crate) fn init(home: &Path, settings: &Settings, args: InitArgs) -> anyhow::Result<Exit> {
    if !(0.0..=1.0).contains(&args.audit_rate) {
        bail!("--audit-rate must be between 0 and 1, not {}", args.audit_rate);
    }
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    if args.history > kaana_proto::protocol::history::MAX_KEEP_SECS {
        bail!("--history must be at most 400d");
    }
    if !(1..=400).contains(&args.history_percent) {
        bail!("--history-percent must be from 1 to 400, not {}", args.history_percent);
    }
    if let Some(bad) = args.advertise.iter().find(|a| !is_host_port(a)) {
        bail!("--advertise {bad:?} is not HOST:PORT");
    }
    let dht_bootstrap = if args.dht_bootstrap.is_empty() {
        None
    } else {
        kaana_proto::protocol::discovery::parse_bootstrap(&args.dht_bootstrap.join(",")).map_err(anyhow::Error::msg)?
    };
    let home = Home::at(home);
    kaana_proto::store::home::check_same_user(home.root())?;
    let identity = if args.recover {
        let mut phrase = String::new();
        std::io::stdin().read_to_string(&mut phrase).context("reading the recovery phrase from stdin")?;
        Identity::from_recovery_phrase(&phrase).context("reading the recovery phrase from stdin")?
    } else {
        Identity::generate().context("getting randomness for a new key")?
    };
    let volume = match args.volume {
        Some(v) => Some(std::fs::canonicalize(&v).with_context(|| format!("volume {}", v.display()))?),
        None => None,
    };
    let storage = args.storage.unwrap_or_else(|| home.root().to_owned());
    create_dir(&storage)?;
    let storage = std::fs::canonicalize(&storage).with_context(|| format!("storage {}", storage.display()))?;
    let free = free_space(&storage)?;
    if args.capacity > free {
        bail!(
            "--capacity {} is more than the {} free in {}: a node never promises space it does not have",
            format_size(args.capacity),
            format_size(free),
            storage.display()
        );
    }
    let config = Config {
        schema: Schema,
        listen: args.listen,
        volume,
        storage,
        capacity: args.capacity,
        replicas: args.replicas,
        grace_secs: args.grace,
        audit_rate: args.audit_rate,
        advertise: args.advertise,
        history_secs: args.history,
        history_percent: args.history_percent,
        dht_bootstrap,
        port_mapping: !args.no_port_mapping,
        limit_rate: None,
    };
    let node = Node::init(home, identity, config)?;
    let mut found = (None, None);
    let mut exit = Exit::Ok;
    if args.recover {
        node.mark_recovered(kaana_proto::node::machine::now_from_env()?)?;
        if settings.discovery(&node).enabled() {
            match recover_from_dht(&node, settings) {
                Ok((peers, contracts, all_answered)) => {
                    found = (peers, contracts);
                    if !all_answered {
                        exit = Exit::Attention;
                    }
                }
                Err(e) => {
                    eprintln!(
                        "kaana-offer: {e:#}. Run `kaana-offer contracts --fetch` to try again (it looks for the \
                         locator while the address book is empty), or add a peer with `kaana-offer peer add ID` (or \
                         ID@HOST:PORT) first"
                    );
                    exit = Exit::Attention;
                }
            }
        }
    }
    emit(&InitLine {
        node: node.id(),
        home: node.home.root(),
        listen: node.config.listen,
        capacity: node.config.capacity,
        recovered: args.recover,
        peers_found: found.0,
        contracts_found: found.1,
    })?;
    if !args.recover {
        eprintln!(
            "kaana-offer: node {} created. Run `kaana-offer recovery-phrase` and write the phrase down \
             somewhere safe, off this machine: without it, a lost disk means a lost backup.",
            node.id()
        );
    }
    Ok(exit)
}

/// After `init --recover`: finds the node's recovery locator on the DHT, takes its peers into
/// the address book, asks them for the contracts this node is a side of, and says what can be
/// restored. Returns how many peers the locator named, the contracts found, and whether every
/// peer answered.
fn recover_from_dht(node: &Node, settings: &Settings) -> anyhow::Result<(Option<usize>, Option<Vec<RecordId>>, bool)> {
    let peers = crate::found::peers_from_locator(node, settings)?;
    let fetched = crate::block_on(async {
        let client = settings.client(node, Traffic::Short);
        let r = kaana_proto::node::restore::fetch_contracts(&client, node).await;
        client.close().await;
        Ok(r?)
    })
    .context("asking the peers the locator named for this node's contracts")?;
    for (peer, why) in &fetched.unreached {
        eprintln!("kaana-offer: could not ask node {peer}: {why} (run `kaana-offer contracts --fetch` later)");
    }
    let contracts: Vec<RecordId> = node.contracts()?.iter().map(|e| e.id).collect();
    for id in &contracts {
        eprintln!("kaana-offer: contract {id} found: `kaana-sync restore {id} --out PATH` brings the volume back");
    }
    Ok((Some(peers), Some(contracts), fetched.unreached.is_empty()))
}

pub(crate) fn id(home: &Path) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    emit(&NodeLine { node: node.id(), home: node.home.root() })?;
    Ok(Exit::Ok)
}

pub(crate) fn recovery_phrase(home: &Path) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    emit(&PhraseLine { node: node.id(), recovery_phrase: node.identity.recovery_phrase() })?;
    Ok(Exit::Ok)
}

pub(crate) fn peer_add(home: &Path, settings: &Settings, peer: &PeerArg, no_check: bool) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let id = match peer {
        PeerArg::At(p) => p.node,
        PeerArg::Id(id) => *id,
    };
    if id == node.id() {
        bail!("{id} is this node's own id; add another node's");
    }
    let (candidates, found) = match peer {
        PeerArg::At(p) => (vec![p.addr.clone()], None),
        PeerArg::Id(id) => {
            let (record, seq) = crate::found::look_up_peer(&node, settings, *id)?;
            (record.addrs.clone(), Some((record, seq)))
        }
    };
    if !no_check {
        let mut errors = Vec::new();
        let mut answered = false;
        for addr in &candidates {
            let at = PeerAddr { node: id, addr: addr.clone() };
            match say_hello(&node, settings, &at) {
                Ok(()) => {
                    answered = true;
                    break;
                }
                Err(e) => errors.push(format!("{at}: {e:#}")),
            }
        }
        if !answered {
            bail!("checking that {id} answers (add --no-check to add it without checking): {}", errors.join("; "));
        }
    }
    // Only now, the node having answered (or not asked), does it go into the address book.
    let changed = match found {
        Some((record, seq)) => node.learn_record(id, seq, &record, now_from_env()?)?,
        None => node.add_peer(&PeerAddr { node: id, addr: candidates[0].clone() })?,
    };
    let addrs = node.address_book()?.addrs(&id).to_vec();
    emit(&PeerLine { node: id, addrs, changed: Some(changed) })?;
    Ok(Exit::Ok)
}

pub(crate) fn peer_list(home: &Path, records: bool) -> anyhow::Result<Exit> {
    use kaana_proto::protocol::fairness::replicas::PeerHistory;
    let node = Node::open_at(home)?;
    let mut histories: std::collections::BTreeMap<NodeId, PeerHistory> =
        if records { crate::ensure::copies_and_records(&node)?.1 } else { Default::default() };
    for (id, entry) in node.address_book()?.peers {
        if records {
            let h = histories.remove(&id).unwrap_or_default();
            emit(&RecordLine { node: id, addrs: entry.addrs, record: h, clean: h.clean() })?;
        } else {
            emit(&PeerLine { node: id, addrs: entry.addrs, changed: None })?;
        }
    }
    // Peers with contracts but no address (yet): their records all the same.
    for (id, h) in histories {
        emit(&RecordLine { node: id, addrs: Vec::new(), record: h, clean: h.clean() })?;
    }
    Ok(Exit::Ok)
}

/// `peers --records`: a peer and what this node knows of it across all its contracts with it.
#[derive(Serialize)]
struct RecordLine {
    node: NodeId,
    addrs: Vec<String>,
    record: kaana_proto::protocol::fairness::replicas::PeerHistory,
    /// No breach, no failure, never unreachable: `ensure` prefers such peers.
    clean: bool,
}

/// Asks `peer` who it is over an authenticated connection.
fn say_hello(node: &Node, settings: &Settings, peer: &PeerAddr) -> anyhow::Result<()> {
    crate::block_on(async {
        let client = settings.client(node, Traffic::Short);
        let result = crate::found::say_hello(&client, peer).await;
        client.close().await;
        result
    })
}

pub(crate) fn config_show(home: &Path) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    emit(&node.config)?;
    Ok(Exit::Ok)
}

pub(crate) fn config_get(home: &Path, key: &str) -> anyhow::Result<Exit> {
    let key: Key = key.parse().map_err(anyhow::Error::msg)?;
    let node = Node::open_at(home)?;
    emit(&serde_json::json!({ key.name(): node.config.get(key) }))?;
    Ok(Exit::Ok)
}

/// Changes one setting under the node's lock, checked as `init` checks it.
pub(crate) fn config_set(home: &Path, key: &str, value: &str) -> anyhow::Result<Exit> {
    let key: Key = key.parse().map_err(anyhow::Error::msg)?;
    let node = Node::open_at(home)?;
    let _lock = node.home.lock()?;
    // Read again under the lock: another tool may have changed it since the node was opened.
    let mut config: Config = node.home.read(&node.home.config())?;
    config.set(key, value).map_err(anyhow::Error::msg)?;
    match key {
        Key::Volume => {
            let path = config.volume.take().unwrap_or_default();
            let path = std::fs::canonicalize(&path).with_context(|| format!("volume {}", path.display()))?;
            kaana_proto::store::volume::size(&path).with_context(|| format!("volume {}", path.display()))?;
            config.volume = Some(path);
        }
        Key::Capacity => {
            // Never less than what contracts already commit, and what is not yet stored must
            // fit in the free space (a node never promises space it does not have).
            let committed = node.committed()?;
            if config.capacity < committed {
                bail!(
                    "capacity {} is less than the {} contracts already commit here: terminate some first",
                    format_size(config.capacity),
                    format_size(committed)
                );
            }
            let stored = node.stored_for_peers()?;
            let free = free_space(&config.storage)?;
            if config.capacity > free.saturating_add(stored) {
                bail!(
                    "capacity {} is more than the {} free in {} (plus the {} peers' data already takes): a node \
                     never promises space it does not have",
                    format_size(config.capacity),
                    format_size(free),
                    config.storage.display(),
                    format_size(stored)
                );
            }
        }
        _ => {}
    }
    node.home.write(&node.home.config(), &config)?;
    if matches!(key, Key::Listen | Key::Advertise | Key::AuditRate | Key::DhtBootstrap | Key::PortMapping) {
        // The server reads its configuration when it starts.
        eprintln!(
            "kaana-offer: restart `kaana-sync serve` (systemctl restart kaana-sync) for the server to use the new {}",
            key.name()
        );
    }
    emit(&serde_json::json!({ key.name(): config.get(key) }))?;
    Ok(Exit::Ok)
}
