//! The node server over real QUIC on 127.0.0.1: authentication by node keys, bad input, load,
//! and a graceful stop.

use std::time::Duration;

use kaana_proto::net::transport::{Client, NetError, read_frame};
use kaana_proto::net::wire::{ErrorCode, MAX_FRAME, Request, Response};
use kaana_proto::protocol::identity::{Identity, NodeId};

use crate::common::{
    ServerProc, TestNode, assert_exit, assert_state_consistent, assert_success, make_contract_sized, one_json,
    pseudo_random, stderr,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

async fn hello(client: &Client, node: NodeId, addr: &str) -> Result<Response, NetError> {
    let conn = client.connect(node, addr).await?;
    let reply = conn.request(&Request::Hello).await;
    conn.close();
    reply
}

/// Sends raw bytes on a fresh stream, finishes it, and reads what comes back (if anything).
async fn send_raw(client: &Client, node: NodeId, addr: &str, bytes: &[u8]) -> Result<Option<Response>, NetError> {
    let conn = client.connect(node, addr).await?;
    let mut ex = conn.open_stream().await?;
    // A server that stops reading may refuse the rest: that is one of the allowed outcomes.
    let _ = ex.send.write_all(bytes).await;
    let _ = ex.send.finish();
    read_frame::<Response>(&mut ex.recv, Duration::from_secs(10)).await
}

fn error_code(r: &Result<Option<Response>, NetError>) -> Option<ErrorCode> {
    match r {
        Ok(Some(Response::Error(e))) => Some(e.code),
        _ => None,
    }
}

#[test]
fn serve_prints_its_node_and_answers_hello() {
    let node = TestNode::init();
    let server = ServerProc::start(&node, &[]);
    assert_eq!(server.node, node.id());
    assert!(server.addr.starts_with("127.0.0.1:") && !server.addr.ends_with(":0"), "{}", server.addr);
    let me = Identity::generate().unwrap();
    let my_id = me.node_id();
    let reply = runtime().block_on(async {
        let client = Client::new(me);
        let r = hello(&client, server.node.parse().unwrap(), &server.addr).await;
        client.close().await;
        r
    });
    match reply.unwrap() {
        Response::Hello { node, you, protocol, .. } => {
            assert_eq!(node.to_string(), server.node);
            assert_eq!(you, my_id, "the server learns the client's id from the handshake");
            assert_eq!(protocol, 3);
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_client_expecting_another_node_is_refused_naming_both() {
    let node = TestNode::init();
    let server = ServerProc::start(&node, &[]);
    let impostor_for = Identity::generate().unwrap().node_id();
    let err = runtime()
        .block_on(async {
            let client = Client::new(Identity::generate().unwrap());
            let r = hello(&client, impostor_for, &server.addr).await;
            client.close().await;
            r
        })
        .unwrap_err();
    assert!(matches!(err, NetError::WrongNode { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&server.node) && text.contains(&impostor_for.to_string()), "{text}");

    // The same through the tool: `peer add` checks who answers.
    let other = TestNode::init();
    let out = other.run("kaana-offer", &["peer", "add", &format!("{impostor_for}@{}", server.addr)]);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains(&server.node) && stderr(&out).contains(&impostor_for.to_string()),
        "{}",
        stderr(&out)
    );
    let out = other.run("kaana-offer", &["peer", "add", &server.peer()]);
    assert_success(&out);
    let v: serde_json::Value = one_json(&out);
    assert_eq!(v["node"], server.node.as_str());
}

#[test]
fn peer_add_of_an_unreachable_node_says_so_and_no_check_adds_it() {
    let node = TestNode::init();
    let absent = TestNode::init().id();
    // A port nothing listens on: bind one and let it go.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let peer = format!("{absent}@127.0.0.1:{port}");
    let out = node.cmd("kaana-offer").args(["peer", "add", &peer]).env("KAANA_CONNECT_TIMEOUT", "1s").output().unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("cannot reach") && stderr(&out).contains("--no-check"), "{}", stderr(&out));
    assert_success(&node.run("kaana-offer", &["peer", "add", "--no-check", &peer]));
}

#[test]
fn bad_input_gets_an_error_and_the_server_keeps_serving() {
    let node = TestNode::init();
    let server = ServerProc::start(&node, &["--read-timeout", "2s"]);
    let id: NodeId = server.node.parse().unwrap();
    let addr = server.addr.clone();
    runtime().block_on(async move {
        let client = Client::new(Identity::generate().unwrap());

        let unknown = br#"{"v":3,"kind":"delete_everything"}"#;
        let mut frame = (unknown.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(unknown);
        assert_eq!(error_code(&send_raw(&client, id, &addr, &frame).await), Some(ErrorCode::UnknownRequest));

        let not_json = b"\x00\x00\x00\x08garbage!";
        assert_eq!(error_code(&send_raw(&client, id, &addr, not_json).await), Some(ErrorCode::BadFrame));

        let wrong_version = br#"{"v":9,"kind":"hello"}"#;
        let mut frame = (wrong_version.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(wrong_version);
        assert_eq!(error_code(&send_raw(&client, id, &addr, &frame).await), Some(ErrorCode::BadFrame));

        // Over the cap: the length alone is refused, the body is never read.
        let mut huge = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        huge.extend(std::iter::repeat_n(b'x', 64 * 1024));
        assert_eq!(error_code(&send_raw(&client, id, &addr, &huge).await), Some(ErrorCode::TooLarge));

        // A stream that stops half-way through a frame.
        let half = b"\x00\x00\x00\x40{\"v\":3,";
        assert_eq!(error_code(&send_raw(&client, id, &addr, half).await), Some(ErrorCode::BadFrame));

        // A frame that never finishes: the stream is held open; the read time-out answers it.
        let conn = client.connect(id, &addr).await.unwrap();
        let mut ex = conn.open_stream().await.unwrap();
        ex.send.write_all(b"\x00\x00\x00\x40{\"v\":3").await.unwrap();
        let held = read_frame::<Response>(&mut ex.recv, Duration::from_secs(10)).await;
        assert_eq!(error_code(&held), Some(ErrorCode::Timeout), "{held:?}");

        // Garbage right after the handshake, then an honest request on the same connection.
        let mut ex = conn.open_stream().await.unwrap();
        ex.send.write_all(&[0xff; 100]).await.unwrap();
        let _ = ex.send.finish();
        let garbage = read_frame::<Response>(&mut ex.recv, Duration::from_secs(10)).await;
        assert_eq!(error_code(&garbage), Some(ErrorCode::TooLarge), "{garbage:?}");
        assert!(matches!(conn.request(&Request::Hello).await, Ok(Response::Hello { .. })));

        // And a new client is served as ever.
        let fresh = Client::new(Identity::generate().unwrap());
        assert!(matches!(hello(&fresh, id, &addr).await, Ok(Response::Hello { .. })));
        client.close().await;
        fresh.close().await;
    });
}

#[test]
fn two_hundred_connections_from_twenty_nodes_are_all_answered() {
    // Twenty nodes the server knows (its peers).
    let node = TestNode::init();
    let peers: Vec<Identity> = (0..20).map(|_| Identity::generate().unwrap()).collect();
    for p in &peers {
        assert_success(
            &node.run("kaana-offer", &["peer", "add", "--no-check", &format!("{}@127.0.0.1:9", p.node_id())]),
        );
    }
    let server = ServerProc::start(&node, &[]);
    let id: NodeId = server.node.parse().unwrap();
    let addr = server.addr.clone();
    let answered = runtime().block_on(async move {
        let clients: Vec<std::sync::Arc<Client>> =
            peers.into_iter().map(|p| std::sync::Arc::new(Client::new(p))).collect();
        let mut tasks = tokio::task::JoinSet::new();
        for client in &clients {
            for _ in 0..10 {
                let (client, addr) = (client.clone(), addr.clone());
                tasks.spawn(async move {
                    // All 200 connections are open before any hello is answered and closed.
                    let conn = client.connect(id, &addr).await?;
                    let reply = conn.request(&Request::Hello).await;
                    Ok::<_, NetError>((conn, reply?))
                });
            }
        }
        let mut conns = Vec::new();
        while let Some(r) = tasks.join_next().await {
            let (conn, reply) = r.unwrap().unwrap();
            assert!(matches!(reply, Response::Hello { node, .. } if node == id));
            conns.push(conn);
        }
        let n = conns.len();
        for c in conns {
            c.close();
        }
        for c in clients {
            c.close().await;
        }
        n
    });
    assert_eq!(answered, 200);
}

#[test]
fn too_many_connections_from_one_node_are_refused_and_others_still_served() {
    // A node the server knows (a stranger gets two: see below).
    let node = TestNode::init();
    let greedy = Identity::generate().unwrap();
    assert_success(
        &node.run("kaana-offer", &["peer", "add", "--no-check", &format!("{}@127.0.0.1:9", greedy.node_id())]),
    );
    let server = ServerProc::start(&node, &[]);
    let id: NodeId = server.node.parse().unwrap();
    let addr = server.addr.clone();
    runtime().block_on(async move {
        let greedy = Client::new(greedy);
        let mut conns = Vec::new();
        let mut refused = 0;
        for _ in 0..40 {
            let conn = greedy.connect(id, &addr).await.unwrap();
            match conn.request(&Request::Hello).await {
                Ok(_) => conns.push(conn),
                Err(_) => refused += 1,
            }
        }
        assert_eq!(conns.len(), 16, "the per-node cap");
        assert_eq!(refused, 24);
        let other = Client::new(Identity::generate().unwrap());
        assert!(matches!(hello(&other, id, &addr).await, Ok(Response::Hello { .. })));
        for c in conns {
            c.close();
        }
        greedy.close().await;
        other.close().await;
    });
}

#[test]
fn sigterm_during_a_request_finishes_it_and_exits_zero() {
    let node = TestNode::init();
    let mut server = ServerProc::start(&node, &[]);
    let id: NodeId = server.node.parse().unwrap();
    let addr = server.addr.clone();
    let rt = runtime();
    let client = Client::new(Identity::generate().unwrap());
    let (conn, mut ex) = rt.block_on(async {
        let conn = client.connect(id, &addr).await.unwrap();
        let mut ex = conn.open_stream().await.unwrap();
        // Half a request: the server is now in the middle of reading it.
        ex.send.write_all(b"\x00\x00\x00\x16{\"v\":3,").await.unwrap();
        (conn, ex)
    });
    std::thread::sleep(Duration::from_millis(200));
    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    let reply = rt.block_on(async {
        ex.send.write_all(b"\"kind\":\"hello\"}").await.unwrap();
        ex.send.finish().unwrap();
        read_frame::<Response>(&mut ex.recv, Duration::from_secs(10)).await
    });
    assert!(matches!(reply, Ok(Some(Response::Hello { .. }))), "the request in flight was answered: {reply:?}");
    // No new work is taken once stopping.
    let late = rt.block_on(async {
        let fresh = Client::new(Identity::generate().unwrap());
        let r = tokio::time::timeout(Duration::from_secs(5), hello(&fresh, id, &addr)).await;
        matches!(r, Ok(Ok(_)))
    });
    assert!(!late, "a new connection was served after SIGTERM");
    drop(conn);
    assert_eq!(server.wait(20), Some(0));
    assert!(assert_state_consistent(&node.home) >= 2);
    rt.block_on(client.close());
}

/// Fresh keys cost nothing, so nodes the server does not know share one small budget of
/// connections (64, two each); a node it knows still gets in when strangers have taken it all.
#[test]
fn strangers_share_a_small_budget_and_known_nodes_still_get_in() {
    let node = TestNode::init();
    let friend = Identity::generate().unwrap();
    assert_success(
        &node.run("kaana-offer", &["peer", "add", "--no-check", &format!("{}@127.0.0.1:9", friend.node_id())]),
    );
    let server = ServerProc::start(&node, &[]);
    let id: NodeId = server.node.parse().unwrap();
    runtime().block_on(async {
        let mut held = Vec::new();
        let mut clients = Vec::new();
        for _ in 0..32 {
            let client = Client::new(Identity::generate().unwrap());
            for _ in 0..2 {
                let conn = client.connect(id, &server.addr).await.unwrap();
                assert!(matches!(conn.request(&Request::Hello).await, Ok(Response::Hello { .. })));
                held.push(conn);
            }
            clients.push(client);
        }
        // A third connection from one stranger, and a new stranger: refused.
        let refused = |r: Result<Response, NetError>| !matches!(r, Ok(Response::Hello { .. }));
        assert!(refused(hello(&clients[0], id, &server.addr).await), "a stranger's third connection");
        let late = Client::new(Identity::generate().unwrap());
        assert!(refused(hello(&late, id, &server.addr).await), "a 65th stranger connection");
        // The node in the address book gets in.
        let client = Client::new(friend.clone());
        assert!(matches!(hello(&client, id, &server.addr).await, Ok(Response::Hello { .. })));
        // It may send a frame of 100 KiB (this one is not JSON); a stranger may not: its requests
        // are small, and the length alone is refused.
        let mut big = (100u32 << 10).to_be_bytes().to_vec();
        big.extend(std::iter::repeat_n(b'x', 100 << 10));
        assert_eq!(error_code(&send_raw(&client, id, &server.addr, &big).await), Some(ErrorCode::BadFrame));
        let mut ex = held[3].open_stream().await.unwrap();
        let _ = ex.send.write_all(&big).await;
        let _ = ex.send.finish();
        let stranger = read_frame::<Response>(&mut ex.recv, Duration::from_secs(10)).await;
        assert!(
            matches!(&stranger, Ok(Some(Response::Error(e))) if e.code == ErrorCode::TooLarge && e.message.contains("65536")),
            "{stranger:?}"
        );
        // A stranger's connection holds four streams at once; the fifth waits for one to end.
        let conn = &held[2];
        let mut open = Vec::new();
        for _ in 0..4 {
            let mut ex = conn.open_stream().await.unwrap();
            ex.send.write_all(b"\x00\x00").await.unwrap();
            open.push(ex);
        }
        let fifth = tokio::time::timeout(Duration::from_secs(2), conn.open_stream()).await;
        assert!(fifth.is_err(), "a fifth stream was opened at once");
        drop(open);
        let fifth = tokio::time::timeout(Duration::from_secs(20), conn.open_stream()).await;
        assert!(matches!(fifth, Ok(Ok(_))), "the fifth stream never opened");
        // Strangers gone, a new one gets in again.
        for conn in held.drain(..) {
            conn.close();
        }
        drop(clients);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while refused(hello(&late, id, &server.addr).await) {
            assert!(std::time::Instant::now() < deadline, "the strangers' places were never given back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Strangers that keep idle connections alive cannot hold every stranger's place for good:
/// once all are taken, the oldest gives its place to a newcomer after 20 seconds.
#[test]
fn idle_strangers_give_their_places_to_newcomers_after_a_while() {
    let node = TestNode::init();
    let server = ServerProc::start(&node, &[]);
    let id: NodeId = server.node.parse().unwrap();
    runtime().block_on(async {
        let mut held = Vec::new();
        for _ in 0..64 {
            let client = Client::new(Identity::generate().unwrap());
            let conn = client.connect(id, &server.addr).await.unwrap();
            assert!(matches!(conn.request(&Request::Hello).await, Ok(Response::Hello { .. })));
            held.push((client, conn));
        }
        let late = Client::new(Identity::generate().unwrap());
        assert!(!matches!(hello(&late, id, &server.addr).await, Ok(Response::Hello { .. })), "all places taken");
        tokio::time::sleep(Duration::from_secs(21)).await;
        assert!(matches!(hello(&late, id, &server.addr).await, Ok(Response::Hello { .. })), "a newcomer gets in");
        let (_, first) = &held[0];
        assert!(first.request(&Request::Hello).await.is_err(), "the oldest gave its place");
        let (_, last) = &held[63];
        assert!(matches!(last.request(&Request::Hello).await, Ok(Response::Hello { .. })), "the others keep theirs");
    });
}

/// A tool's run ends right after its client's close: the close has gone out by then, so the
/// server frees the run's places at once, not at its idle time-out. Here the first run takes
/// all sixteen places of its node, drops them without closing them, closes its client and ends
/// (its runtime stops then and there); the next run of the same node gets all sixteen again.
#[test]
fn a_run_that_ends_right_after_its_close_leaves_no_place_taken() {
    let node = TestNode::init();
    let me = Identity::generate().unwrap();
    assert_success(&node.run("kaana-offer", &["peer", "add", "--no-check", &format!("{}@127.0.0.1:9", me.node_id())]));
    let server = ServerProc::start(&node, &[]);
    let id: NodeId = server.node.parse().unwrap();
    let run = |me: Identity, forget: bool| {
        let rt = runtime();
        let served = rt.block_on(async {
            let client = Client::new(me).for_one_run();
            let mut conns = Vec::new();
            for _ in 0..16 {
                let conn = client.connect(id, &server.addr).await.unwrap();
                if conn.request(&Request::Hello).await.is_ok() {
                    conns.push(conn);
                }
            }
            let served = conns.len();
            if forget {
                drop(conns);
            } else {
                conns.iter().for_each(|c| c.close());
            }
            client.close().await;
            served
        });
        rt.shutdown_timeout(Duration::ZERO);
        served
    };
    assert_eq!(run(me.clone(), true), 16);
    // The server learns of the closes within moments; a place held until the idle time-out
    // (60 s) would keep the next run out for a minute.
    let started = std::time::Instant::now();
    while run(me.clone(), false) < 16 {
        assert!(started.elapsed() < Duration::from_secs(10), "the first run's places were not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A run that ends in the middle of transfers (a push that failed on one extent while others
/// were on the wire) frees the holder's places as promptly: its close leaves while data still
/// does, on every connection its node may have. The next run gets all sixteen connections, and
/// a push then goes through at once (the places for incoming extents are free too).
#[test]
fn a_run_that_ends_in_the_middle_of_transfers_leaves_no_place_taken() {
    let work = tempfile::tempdir().unwrap();
    let holder = TestNode::init_with(&["--capacity", "1GiB"]);
    let server = ServerProc::start(&holder, &["--read-timeout", "120s"]);
    let volume = work.path().join("x.img");
    std::fs::write(&volume, pseudo_random(16 << 20, 7)).unwrap();
    let owner = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let owner_server = ServerProc::start(&owner, &[]);
    let contract = make_contract_sized(&owner, &owner_server, &holder, "64MiB");
    let id: NodeId = server.node.parse().unwrap();
    let rt = runtime();
    let finished_early = rt.block_on(async {
        let client = Client::new(owner.identity()).for_one_run();
        let mut writers = tokio::task::JoinSet::new();
        for i in 0..16u64 {
            let conn = client.connect(id, &server.addr).await.unwrap();
            let request = Request::PutExtent {
                contract: contract.parse().unwrap(),
                offset: (i % 8) << 22,
                hash: [i as u8; 32],
                len: 4 << 20,
            };
            let mut ex = conn.open(&request).await.unwrap();
            // 64 KiB every 5 ms: still on the wire when the run ends.
            writers.spawn(async move {
                let _conn = conn;
                for _ in 0..64 {
                    if ex.send.write_all(&[0u8; 64 << 10]).await.is_err() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                true
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let finished = std::iter::from_fn(|| writers.try_join_next()).count();
        client.close().await;
        finished
    });
    rt.shutdown_timeout(Duration::ZERO);
    assert_eq!(finished_early, 0, "every stream was still sending when the run closed");
    let hellos = || {
        let rt = runtime();
        let served = rt.block_on(async {
            let client = Client::new(owner.identity()).for_one_run();
            let mut served = 0;
            let mut conns = Vec::new();
            for _ in 0..16 {
                let conn = client.connect(id, &server.addr).await.unwrap();
                if conn.request(&Request::Hello).await.is_ok() {
                    served += 1;
                }
                conns.push(conn);
            }
            client.close().await;
            served
        });
        rt.shutdown_timeout(Duration::ZERO);
        served
    };
    let started = std::time::Instant::now();
    while hellos() < 16 {
        assert!(started.elapsed() < Duration::from_secs(10), "the first run's connections were not freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Had the holder kept the first run's places for incoming extents, this push would wait for
    // its 120 s read time-out; the push gives up on any reply after 10 s.
    let out = owner.cmd("kaana-sync").args(["push", &contract]).env("KAANA_READ_TIMEOUT", "10s").output().unwrap();
    assert_success(&out);
    assert!(started.elapsed() < Duration::from_secs(60), "the push waited {:?}", started.elapsed());
}

/// The server raises its soft limit of open files to the hard one: each extent going out holds
/// its file open, and a soft limit of 1 024 (a common default) would let a few peers taking
/// extents slowly leave no files for the others' puts and answers.
#[test]
fn the_server_raises_its_soft_limit_of_open_files_to_the_hard_one() {
    let limits = |pid: &str| -> (String, String) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
        let f: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        (f[3].clone(), f[4].clone())
    };
    let (_, hard) = limits("self");
    if hard.parse::<u64>().is_ok_and(|h| h <= 256) {
        eprintln!("the hard limit of open files is {hard}: nothing to raise");
        return;
    }
    let node = TestNode::init();
    let serve = node.cmd("kaana-sync");
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg("ulimit -Sn 256 && exec \"$0\" \"$@\"").arg(serve.get_program()).args(serve.get_args());
    for (key, value) in serve.get_envs() {
        match value {
            Some(v) => cmd.env(key, v),
            None => cmd.env_remove(key),
        };
    }
    let server = ServerProc::start_cmd(cmd);
    let (soft, hard) = limits(&server.child.id().to_string());
    assert_eq!(soft, hard, "started with a soft limit of 256");
}

/// The server's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS")).unwrap().to_owned();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Begins `n` handshakes with `addr`, each a fresh connection never finished, from one socket:
/// its first packet only (as from a made-up address); or, with `show_from` an address, from a
/// socket there, answering the server's retry (so showing its address) and then going quiet.
/// Returns how many retries were answered.
fn begin_handshakes(addr: std::net::SocketAddr, n: usize, show_from: Option<&str>) -> usize {
    use std::sync::Arc;
    let (tls, _) = kaana_proto::net::tls::client_config(&Identity::generate().unwrap(), None).unwrap();
    let crypto = Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    let mut forger = quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let socket = std::net::UdpSocket::bind((show_from.unwrap_or("127.0.0.1"), 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let (mut packet, mut got, mut answered) = (Vec::new(), vec![0u8; 65_536], 0);
    for i in 0..n {
        let now = std::time::Instant::now();
        let (handle, mut conn) = forger.connect(now, quinn::ClientConfig::new(crypto.clone()), addr, "kaana").unwrap();
        packet.clear();
        let first = conn.poll_transmit(now, 1, &mut packet).unwrap();
        socket.send_to(&packet[..first.size], addr).unwrap();
        // Past the packets the server sends the connections begun before, the retry of this one
        // (a long header of type 3), answered.
        while show_from.is_some() {
            let Ok((len, from)) = socket.recv_from(&mut got) else { break };
            if got[0] & 0xf0 != 0xf0 {
                continue;
            }
            let (datagram, mut reply) = (bytes::BytesMut::from(&got[..len]), Vec::new());
            if let Some(quinn_proto::DatagramEvent::ConnectionEvent(h, event)) =
                forger.handle(std::time::Instant::now(), from, None, None, datagram, &mut reply)
                && h == handle
            {
                conn.handle_event(event);
                packet.clear();
                if let Some(again) = conn.poll_transmit(std::time::Instant::now(), 1, &mut packet) {
                    socket.send_to(&packet[..again.size], addr).unwrap();
                    answered += 1;
                }
                break;
            }
        }
        if show_from.is_none() && i % 100 == 99 {
            // As fast as the server's socket takes them in.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Kept open, never read again: the server's packets to it go unanswered.
    std::mem::forget(socket);
    answered
}

/// A handshake from `from` to the server: whether it completes.
async fn handshake_from(from: &str, node: NodeId, addr: std::net::SocketAddr) -> Result<(), String> {
    use kaana_proto::net::transport::{Traffic, endpoint};
    let (tls, _) = kaana_proto::net::tls::client_config(&Identity::generate().unwrap(), Some(node)).unwrap();
    let crypto = std::sync::Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap());
    let ep = endpoint(from.parse().unwrap(), None, Traffic::Short).unwrap();
    let connecting = ep.connect_with(quinn::ClientConfig::new(crypto), addr, "kaana").map_err(|e| e.to_string())?;
    let done = tokio::time::timeout(Duration::from_secs(5), connecting).await;
    let out = match done {
        Ok(Ok(conn)) => {
            conn.close(0u32.into(), b"");
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    };
    ep.close(0u32.into(), b"");
    out
}

/// Handshakes begun from an address that never answers, as from made-up ones (QUIC's first
/// packets, each of a fresh connection, sent and forgotten): past a few under way, the server
/// asks each newcomer to show it receives at its address first (a QUIC retry, no state kept).
/// So 4 000 of them leave the server holding next to nothing for them (without the retry: 140
/// MB, 35 KiB each, for the handshake time-out), and another node still gets in (through the
/// retry) while they are under way.
#[test]
fn half_done_handshakes_by_the_thousand_leave_the_server_nothing_to_hold() {
    let b = TestNode::init();
    let server = ServerProc::start(&b, &[]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let node: NodeId = server.node.parse().unwrap();
    let rt = runtime();
    let friend = Client::new(Identity::generate().unwrap());
    assert!(matches!(rt.block_on(hello(&friend, node, &server.addr)), Ok(Response::Hello { .. })));
    let before = rss_kib(server.child.id());

    begin_handshakes(addr, 4_000, None);
    std::thread::sleep(Duration::from_secs(1));
    let during = rss_kib(server.child.id());
    eprintln!("server: {before} KiB before, {during} KiB with 4 000 handshakes begun");
    let reply = rt.block_on(hello(&friend, node, &server.addr));
    assert!(matches!(reply, Ok(Response::Hello { .. })), "{reply:?}");
    assert!(
        during < before + 16 * 1024,
        "4 000 half-done handshakes took the server from {before} KiB to {during} KiB"
    );
}

/// One host that answers the server's retries and then never finishes its handshakes holds a
/// few places at once, not all: past its share, its newcomers are refused while another host
/// gets in; once the half-done handshakes time out, it gets in again. (A network's share, four
/// hosts' worth, is the same count by a wider prefix: `door`'s unit tests.)
#[test]
fn one_host_that_shows_its_address_and_stalls_holds_few_handshake_places() {
    let b = TestNode::init();
    let server = ServerProc::start(&b, &[]);
    let addr: std::net::SocketAddr = server.addr.parse().unwrap();
    let node: NodeId = server.node.parse().unwrap();
    let rt = runtime();
    let refused = |from: &str| rt.block_on(handshake_from(from, node, addr)).is_err_and(|e| e.contains("refused"));
    // Past the first 64 (first packets only; a few more, in case some were not yet taken in),
    // every newcomer gets a retry. (All of 127.0.0.0/8 is this machine's loopback on Linux.)
    begin_handshakes(addr, 80, None);
    std::thread::sleep(Duration::from_millis(300));
    // A host's share (256) and a few more: each asked to show its address.
    assert_eq!(begin_handshakes(addr, 260, Some("127.0.0.1")), 260);
    std::thread::sleep(Duration::from_millis(300));
    assert!(refused("127.0.0.1:0"), "the stalling host's next newcomer is refused");
    rt.block_on(handshake_from("127.0.0.2:0", node, addr)).expect("another host gets in");
    // The half-done handshakes time out (10 s at most): the host gets in again.
    std::thread::sleep(Duration::from_secs(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = rt.block_on(handshake_from("127.0.0.1:0", node, addr)) {
        assert!(std::time::Instant::now() < deadline, "still refused 30 s on: {e}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
