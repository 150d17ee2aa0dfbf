//! The wire format: versioned, length-prefixed JSON messages, where a message says so followed
//! by a counted run of raw bytes.
//!
//! Longer than 400 lines: every message of the protocol in one place, as the wire's reference; a
//! seventh is tests.
//!
//! A frame is a 4-byte big-endian length and that many bytes of JSON, at most [`MAX_FRAME`].
//! Every message carries `"v"` ([`PROTOCOL_VERSION`]) and a `"kind"`. Each request opens its own bidirectional
//! QUIC stream: request frame (and its raw bytes), then the reply frame (and its raw bytes).
//! This module is pure: it encodes and decodes; `transport` moves the bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::challenge::{Answer, Challenge, Receipt, Verdict};
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{ExtentHash, Manifest};
use crate::protocol::market::{Contract, ContractBody, Notice, Offer, RecordId};
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;

/// The protocol version every frame carries. 2: every answer states how the holder judges the
/// challenger, challenges state the reverse, and a peer can be asked for its standing and a
/// rechallenge (version 1 nodes cannot take part in the fairness rules).
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest JSON frame accepted, in bytes.
pub const MAX_FRAME: usize = 1 << 20;

/// Why a frame could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`] bytes.
    #[error("frame of {0} bytes is over the {1}-byte cap")]
    TooLarge(u64, usize),
    /// The frame is not JSON, or not a message this version knows.
    #[error("frame is not a valid message: {0}")]
    Malformed(String),
    /// The frame is from another protocol version.
    #[error("frame is protocol version {0}; this node speaks version {PROTOCOL_VERSION}")]
    Version(u32),
}

/// A message in its envelope: `{"v": 2, "kind": ..., ...}`.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    #[serde(flatten)]
    msg: T,
}

#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Encodes `msg` as a frame: length prefix, then JSON.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    serde_json::to_writer(&mut out, &Envelope { v: PROTOCOL_VERSION, msg })
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len as u64, MAX_FRAME));
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// Reads a length prefix, refusing one over [`MAX_FRAME`].
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    frame_len_within(prefix, MAX_FRAME)
}

/// Reads a length prefix, refusing one over `cap` (at most [`MAX_FRAME`]).
pub fn frame_len_within(prefix: [u8; 4], cap: usize) -> Result<usize, FrameError> {
    let (len, cap) = (u32::from_be_bytes(prefix) as usize, cap.min(MAX_FRAME));
    if len > cap {
        return Err(FrameError::TooLarge(len as u64, cap));
    }
    Ok(len)
}

/// Decodes a frame's JSON (without its length prefix).
pub fn decode<T: DeserializeOwned>(json: &[u8]) -> Result<T, FrameError> {
    match serde_json::from_slice::<Envelope<T>>(json) {
        Ok(env) if env.v == PROTOCOL_VERSION => Ok(env.msg),
        Ok(env) => Err(FrameError::Version(env.v)),
        Err(e) => match serde_json::from_slice::<VersionOnly>(json) {
            Ok(VersionOnly { v }) if v != PROTOCOL_VERSION => Err(FrameError::Version(v)),
            _ => Err(FrameError::Malformed(e.to_string())),
        },
    }
}

/// One generation a holder keeps, as it lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeptGeneration {
    /// Its number.
    pub generation: u64,
    /// When the holder committed it (its receipt's time).
    pub committed_at: Timestamp,
    /// Its manifest's record id.
    pub manifest: RecordId,
    /// The volume's size in it.
    pub bytes: u64,
    /// Bytes of extents no other kept generation names.
    pub unique_bytes: u64,
}

/// A request, sent by a client on a new stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    /// "Who are you?": answered with [`Response::Hello`].
    Hello,
    /// "Put this offer on your board": answered with [`Response::Published`].
    Publish {
        /// The signed offer.
        offer: Signed<Offer>,
    },
    /// "Which offers does your board hold?": answered with [`Response::Offers`], a page at a
    /// time, in id order.
    ListOffers {
        /// List offers with ids after this one (the last of the previous page).
        after: Option<RecordId>,
    },
    /// "I accept your offer on these terms": answered with [`Response::Contract`].
    Accept {
        /// The contract body the taker proposes, signed by the taker.
        proposal: Signed<ContractBody>,
        /// Where the taker can be reached.
        addrs: Vec<String>,
    },
    /// "I end our contract": answered with [`Response::Ack`].
    Notice {
        /// The signed notice.
        notice: Signed<Notice>,
    },
    /// "I am about to push my volume under this contract": answered with
    /// [`Response::PushReady`], followed by the hashes the holder already has.
    PushBegin {
        /// The contract.
        contract: RecordId,
        /// The volume's size.
        volume_size: u64,
        /// The extent size.
        extent_size: u32,
    },
    /// "Store this extent": followed by `len` raw bytes; answered with [`Response::Stored`].
    PutExtent {
        /// The contract.
        contract: RecordId,
        /// Where the extent starts in the volume.
        offset: u64,
        /// The BLAKE3 hash of the bytes that follow.
        #[serde(with = "crate::protocol::encoding::hex32")]
        hash: ExtentHash,
        /// How many bytes follow.
        len: u32,
    },
    /// "Store this extent, made of the one of hash `base` you hold with these parts of it
    /// replaced": followed by the parts named in `parts` (a bit each, part `j` being the `j`th
    /// quarter of the `len` bytes), in order; answered with [`Response::Stored`]. A holder that
    /// does not hold `base`, or whose rebuilt extent does not hash to `hash`, refuses, and the
    /// owner sends the extent whole.
    PatchExtent {
        /// The contract.
        contract: RecordId,
        /// Where the extent starts in the volume.
        offset: u64,
        /// The extent it is rebuilt from.
        #[serde(with = "crate::protocol::encoding::hex32")]
        base: ExtentHash,
        /// The BLAKE3 hash of the rebuilt extent.
        #[serde(with = "crate::protocol::encoding::hex32")]
        hash: ExtentHash,
        /// The extent's length (the base's too).
        len: u32,
        /// Which parts follow.
        parts: u8,
    },
    /// "Commit this generation": followed by the extent list (32 bytes per extent); answered
    /// with [`Response::Committed`].
    Commit {
        /// The contract.
        contract: RecordId,
        /// The owner-signed manifest (boxed: the largest reply by far; the wire is the same).
        manifest: Box<Signed<Manifest>>,
    },
    /// "Send me the manifest you hold for me": answered with [`Response::ManifestIs`], followed by
    /// its extent list.
    GetManifest {
        /// The contract.
        contract: RecordId,
        /// The kept generation wanted [default: the newest].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        generation: Option<u64>,
    },
    /// "Which generations of mine do you keep?": answered with [`Response::Generations`].
    ListGenerations {
        /// The contract.
        contract: RecordId,
    },
    /// "Send me this extent of mine": answered with [`Response::ExtentIs`], followed by its bytes.
    GetExtent {
        /// The contract.
        contract: RecordId,
        /// The extent's hash.
        #[serde(with = "crate::protocol::encoding::hex32")]
        hash: ExtentHash,
    },
    /// "Which contracts do we have?" (for a node rebuilt from its recovery phrase): answered with
    /// [`Response::Contracts`].
    ListContracts,
    /// "Prove you hold these chunks of my copy": answered with [`Response::Answer`], followed by
    /// the raw chunks and proofs.
    Challenge {
        /// The signed challenge.
        challenge: Signed<Challenge>,
    },
    /// "Here is how I judged your answer": answered with [`Response::Ack`].
    Verdict {
        /// The signed verdict.
        verdict: Signed<Verdict>,
    },
    /// "How do you see me?": answered with [`Response::Standing`].
    Standing {
        /// The contract.
        contract: RecordId,
    },
    /// "Challenge me again, now, on this connection": if it sees the client as failing, the
    /// server opens a stream to the client with a (strong) [`Request::Challenge`], then answers
    /// this with [`Response::Rechallenged`]; if it sees it as ok, it answers at once. A failing
    /// client may ask once an hour.
    Rechallenge {
        /// The contract.
        contract: RecordId,
    },
}

impl Request {
    /// The request's kind, as written on the wire (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::Publish { .. } => "publish",
            Request::ListOffers { .. } => "list_offers",
            Request::Accept { .. } => "accept",
            Request::Notice { .. } => "notice",
            Request::PushBegin { .. } => "push_begin",
            Request::PutExtent { .. } => "put_extent",
            Request::PatchExtent { .. } => "patch_extent",
            Request::Commit { .. } => "commit",
            Request::GetManifest { .. } => "get_manifest",
            Request::ListGenerations { .. } => "list_generations",
            Request::GetExtent { .. } => "get_extent",
            Request::ListContracts => "list_contracts",
            Request::Challenge { .. } => "challenge",
            Request::Verdict { .. } => "verdict",
            Request::Standing { .. } => "standing",
            Request::Rechallenge { .. } => "rechallenge",
        }
    }
}

/// A reply, sent by the server on the request's stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    /// The server's identity and version.
    Hello {
        /// The server's node id (the key it proved in the handshake).
        node: NodeId,
        /// The client's node id, as the server authenticated it.
        you: NodeId,
        /// The protocol version the server speaks.
        protocol: u32,
        /// The server's software and version.
        software: String,
    },
    /// The offer is on the board (`new`: it was not there before).
    Published {
        /// Whether the board did not have it yet.
        new: bool,
    },
    /// A page of a board's offers.
    Offers {
        /// The offers.
        offers: Vec<Signed<Offer>>,
        /// Whether more follow (ask again with `after` = the last id).
        more: bool,
    },
    /// The offerer countersigned: the contract both now hold.
    Contract {
        /// The double-signed contract.
        contract: Contract,
    },
    /// Done.
    Ack,
    /// Ready for a push: followed by `have` extent hashes (32 bytes each) already stored.
    PushReady {
        /// The generation committed here, if any.
        committed: Option<u64>,
        /// How many hashes follow.
        have: u64,
    },
    /// The extent is stored and synced.
    Stored,
    /// The generation is committed.
    Committed {
        /// Its number.
        generation: u64,
        /// Bytes of extents no longer referenced, dropped.
        freed: u64,
        /// The holder's signed receipt of the generation.
        receipt: Signed<Receipt>,
    },
    /// The committed manifest; followed by its extent list.
    ManifestIs {
        /// The owner-signed manifest (boxed: the largest reply by far; the wire is the same).
        manifest: Box<Signed<Manifest>>,
        /// The holder's signed receipt of it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipt: Option<Signed<Receipt>>,
    },
    /// An extent; followed by `len` bytes.
    ExtentIs {
        /// How many bytes follow.
        len: u32,
    },
    /// The contracts the asking node is a side of.
    Contracts {
        /// The double-signed contracts.
        contracts: Vec<Contract>,
    },
    /// The generations the holder keeps of the asker's copy, oldest first.
    Generations {
        /// One per kept generation.
        generations: Vec<KeptGeneration>,
    },
    /// The holder's signed answer; followed by `len` raw bytes (chunks and proofs).
    Answer {
        /// The signed answer.
        answer: Signed<Answer>,
        /// How many raw bytes follow.
        len: u64,
    },
    /// How the server sees the asking node: a verdict signed for the asking, saying so.
    Standing {
        /// The signed verdict (no challenge behind it; its `at` is the server's clock now).
        verdict: Signed<Verdict>,
    },
    /// The server challenged the client again; its verdict.
    Rechallenged {
        /// The signed verdict.
        verdict: Signed<Verdict>,
    },
    /// The request failed.
    Error(ErrorReply),
}

/// A refused or failed request: a code a program can match, a message a person can read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Error)]
#[error("{message} ({code:?})")]
pub struct ErrorReply {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// Error codes a server replies with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be read (not JSON, unfinished, wrong version).
    BadFrame,
    /// The frame is over the size cap.
    TooLarge,
    /// The request's kind is not one this server knows.
    UnknownRequest,
    /// The request is well-formed but its content is refused.
    BadRequest,
    /// The client may not do this (e.g. it is not the contract's peer).
    Unauthorized,
    /// What the request names does not exist here.
    NotFound,
    /// Refused for a reason the message explains (no room, already taken, …).
    Refused,
    /// The server is at its limit; try later.
    Busy,
    /// The client took too long to send its request.
    Timeout,
    /// The server failed; it logged why.
    Internal,
}

impl ErrorReply {
    /// An error reply.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorReply { code, message: message.into() }
    }
}

impl From<FrameError> for ErrorReply {
    fn from(e: FrameError) -> Self {
        let code = match &e {
            FrameError::TooLarge(..) => ErrorCode::TooLarge,
            FrameError::Malformed(m) if m.starts_with("unknown variant") => ErrorCode::UnknownRequest,
            FrameError::Malformed(_) | FrameError::Version(_) => ErrorCode::BadFrame,
        };
        ErrorReply::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;
    use proptest::prelude::*;

    #[test]
    fn a_frame_round_trips() {
        let frame = encode(&Request::Hello).unwrap();
        let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, frame.len() - 4);
        assert_eq!(&frame[4..], br#"{"v":3,"kind":"hello"}"#);
        assert_eq!(decode::<Request>(&frame[4..]), Ok(Request::Hello));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            frame_len((MAX_FRAME as u32 + 1).to_be_bytes()),
            Err(FrameError::TooLarge(MAX_FRAME as u64 + 1, MAX_FRAME))
        );
        assert_eq!(frame_len_within(100u32.to_be_bytes(), 64), Err(FrameError::TooLarge(100, 64)));
        // A version 1 node's frame, and one from the future.
        assert_eq!(decode::<Request>(br#"{"v":2,"kind":"hello"}"#), Err(FrameError::Version(2)));
        assert_eq!(decode::<Request>(br#"{"v":4,"kind":"hello"}"#), Err(FrameError::Version(4)));
        let unknown = ErrorReply::from(decode::<Request>(br#"{"v":3,"kind":"steal"}"#).unwrap_err());
        assert_eq!(unknown.code, ErrorCode::UnknownRequest);
        let garbage = ErrorReply::from(decode::<Request>(b"\x00\xffnot json").unwrap_err());
        assert_eq!(garbage.code, ErrorCode::BadFrame);
    }

    #[test]
    fn responses_round_trip() {
        let node = Identity::from_seed([1; 32]).node_id();
        for r in [
            Response::Hello { node, you: node, protocol: 1, software: "kaana 0.1.0".into() },
            Response::Error(ErrorReply::new(ErrorCode::Busy, "later")),
        ] {
            let frame = encode(&r).unwrap();
            assert_eq!(decode::<Response>(&frame[4..]), Ok(r));
        }
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }

        #[test]
        fn accepted_requests_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(req) = decode::<Request>(&bytes) {
                let frame = encode(&req).unwrap();
                prop_assert_eq!(decode::<Request>(&frame[4..]), Ok(req));
            }
        }
    }
}
