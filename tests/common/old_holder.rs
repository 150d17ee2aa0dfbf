//! A holder from before `patch_extent`, for the tests: a front that answers as the holder (with
//! its key) and passes every stream on to the real holder (as the owner, with the owner's key),
//! except a `patch_extent`, which it answers as an older server answers a request it cannot
//! decode (`unknown_request`), reading nothing of the parts that follow. Started with a
//! [`Lie`], it is also a holder that lies about when it committed each generation, or one too
//! busy to serve any extent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use kaana_proto::net::transport::{self, Traffic};
use kaana_proto::net::wire::{self, ErrorCode, ErrorReply, KeptGeneration, Response};
use kaana_proto::protocol::identity::Identity;
use quinn::{RecvStream, SendStream};

/// The front, running on its own runtime until dropped.
pub struct OldHolder {
    refused: Arc<AtomicU64>,
    _runtime: tokio::runtime::Runtime,
}

impl OldHolder {
    /// Listens on `listen` as `holder`, passing streams on to the holder's server at `upstream`
    /// as `owner`.
    pub fn start(listen: &str, holder: &Identity, owner: &Identity, upstream: &str) -> Self {
        Self::lying(listen, holder, owner, upstream, Lie::Nothing)
    }

    /// The same, telling `lie` too.
    pub fn lying(listen: &str, holder: &Identity, owner: &Identity, upstream: &str, lie: Lie) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let (listen, upstream): (SocketAddr, SocketAddr) = (listen.parse().unwrap(), upstream.parse().unwrap());
        let (tls, _) = kaana_proto::net::tls::client_config(owner, Some(holder.node_id())).unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let config = quinn::ClientConfig::new(Arc::new(quic));
        let refused = Arc::new(AtomicU64::new(0));
        let (server, client) = runtime.block_on(async {
            // The address may still be held a moment by a front just dropped.
            let mut server =
                transport::endpoint(listen, Some(transport::server_config(holder).unwrap()), Traffic::Bulk);
            for _ in 0..50 {
                if server.is_ok() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                server = transport::endpoint(listen, Some(transport::server_config(holder).unwrap()), Traffic::Bulk);
            }
            let client = transport::endpoint("127.0.0.1:0".parse().unwrap(), None, Traffic::Bulk);
            (server.unwrap(), client.unwrap())
        });
        let count = refused.clone();
        runtime.spawn(async move {
            while let Some(incoming) = server.accept().await {
                tokio::spawn(relay(incoming, client.clone(), config.clone(), upstream, count.clone(), lie));
            }
        });
        OldHolder { refused, _runtime: runtime }
    }

    /// How many `patch_extent` requests it answered `unknown_request`.
    pub fn patches_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

/// What the front says besides not knowing patches.
#[derive(Clone, Copy)]
pub enum Lie {
    /// Nothing more.
    Nothing,
    /// The generations the holder lists pass through this on their way back.
    Times(fn(&mut Vec<KeptGeneration>)),
    /// Every `get_extent` is answered `busy`.
    BusyExtents,
}

/// One connection: each stream the owner opens goes to its own stream upstream, and each one
/// the holder opens (a rechallenge) to one toward the owner.
async fn relay(
    incoming: quinn::Incoming,
    client: quinn::Endpoint,
    config: quinn::ClientConfig,
    upstream: SocketAddr,
    refused: Arc<AtomicU64>,
    lie: Lie,
) -> anyhow::Result<()> {
    let down = incoming.await?;
    transport::open_up(&down);
    let up = client.connect_with(config, upstream, "kaana")?.await?;
    loop {
        tokio::select! {
            opened = down.accept_bi() => match opened {
                Ok((send, recv)) => drop(tokio::spawn(request(send, recv, up.clone(), refused.clone(), lie))),
                Err(_) => break,
            },
            opened = up.accept_bi() => match opened {
                Ok((up_send, up_recv)) => {
                    let (send, recv) = down.open_bi().await?;
                    tokio::spawn(pipe(up_recv, send));
                    tokio::spawn(pipe(recv, up_send));
                }
                Err(_) => break,
            },
        }
    }
    up.close(0u32.into(), b"");
    down.close(0u32.into(), b"");
    Ok(())
}

/// One request: its frame read and looked at, then answered here or passed on with what
/// follows it, and the reply passed back.
async fn request(mut send: SendStream, mut recv: RecvStream, up: quinn::Connection, refused: Arc<AtomicU64>, lie: Lie) {
    let Some((prefix, frame)) = read_raw_frame(&mut recv).await else { return };
    let kind: serde_json::Value = serde_json::from_slice(&frame).unwrap_or_default();
    if matches!(lie, Lie::BusyExtents) && kind["kind"] == "get_extent" {
        answer(&mut send, &Response::Error(ErrorReply::new(ErrorCode::Busy, "too busy to serve extents"))).await;
        return;
    }
    if kind["kind"] == "patch_extent" {
        refused.fetch_add(1, Ordering::Relaxed);
        let reply = Response::Error(ErrorReply::new(
            ErrorCode::UnknownRequest,
            "frame is malformed: unknown variant `patch_extent`",
        ));
        answer(&mut send, &reply).await;
        let _ = recv.stop(0u32.into());
        return;
    }
    let Ok((mut up_send, up_recv)) = up.open_bi().await else { return };
    if up_send.write_all(&prefix).await.is_err() || up_send.write_all(&frame).await.is_err() {
        return;
    }
    if let Lie::Times(rewrite) = lie
        && kind["kind"] == "list_generations"
    {
        let _ = up_send.finish();
        let mut up_recv = up_recv;
        let Some((_, frame)) = read_raw_frame(&mut up_recv).await else { return };
        let mut reply: Response = wire::decode(&frame).unwrap();
        if let Response::Generations { generations } = &mut reply {
            rewrite(generations);
        }
        answer(&mut send, &reply).await;
        return;
    }
    tokio::join!(pipe(recv, up_send), pipe(up_recv, send));
}

/// One frame as it came: its length prefix and its bytes.
async fn read_raw_frame(recv: &mut RecvStream) -> Option<([u8; 4], Vec<u8>)> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.ok()?;
    let mut frame = vec![0u8; wire::frame_len(prefix).unwrap_or(0)];
    recv.read_exact(&mut frame).await.ok()?;
    Some((prefix, frame))
}

/// Answers here, and ends the stream.
async fn answer(send: &mut SendStream, reply: &Response) {
    let _ = send.write_all(&wire::encode(reply).unwrap()).await;
    let _ = send.finish();
}

/// Copies one direction of a stream until it ends.
async fn pipe(mut from: RecvStream, mut to: SendStream) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.finish();
}
