//! The board on disk: `board.json`, the offers as they were when last written whole (and which
//! were vouched for), and `board.log`, what changed since, one JSON line each.
//!
//! Taking an offer appends one line of a few hundred bytes (synced) instead of rewriting up to
//! 4096 offers; when the log has grown past the board, the server writes the board whole and
//! empties the log. A crash can leave the log's last line cut short: it is skipped. A crash
//! between writing the board whole and emptying the log leaves changes the board already holds:
//! replayed again, they change nothing.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;

use serde::{Deserialize, Serialize};

use crate::protocol::board::{Board, BoardRefusal, Inserted};
use crate::protocol::market::{Offer, RecordId};
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;
use crate::store::files::OfferList;
use crate::store::home::{Home, Schema, StateError};
use crate::store::node::Node;

/// A line of `board.log`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// An offer taken onto the board.
    Add {
        /// The offer.
        offer: Signed<Offer>,
        /// Whether it was vouched for.
        vouched: bool,
    },
    /// An offer taken off it (it became a contract).
    Remove {
        /// The offer's id.
        id: RecordId,
    },
}

/// Lines the log may reach before the board is written whole, at the least (else: the board's
/// size, so that writing it whole costs no more than the lines it replaces).
const MIN_LOG_LINES: usize = 1024;

/// A board kept on disk as it changes.
#[derive(Debug)]
pub struct StoredBoard {
    board: Board,
    /// Lines in `board.log`.
    logged: usize,
}

impl StoredBoard {
    /// Reads the board of the state directory `home`: `board.json`, then `board.log` replayed
    /// (offers expired at `now`, or no longer valid, are left out).
    pub fn load(home: &Home, now: Timestamp) -> Result<Self, StateError> {
        let whole: OfferList = home.read_optional(&home.board())?.unwrap_or_default();
        let vouched: BTreeSet<RecordId> = whole.vouched.into_iter().collect();
        let mut board = Board::default();
        for offer in whole.offers {
            let v = RecordId::of(&offer.body).is_ok_and(|id| vouched.contains(&id));
            let _ = board.insert_as(offer, now, v);
        }
        let path = home.board_log();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
            Err(e) => return Err(StateError::io(&path, e)),
        };
        let mut logged = 0;
        for line in text.lines() {
            logged += 1;
            match serde_json::from_str::<Change>(line) {
                Ok(Change::Add { offer, vouched }) => {
                    let _ = board.insert_as(offer, now, vouched);
                }
                Ok(Change::Remove { id }) => {
                    board.remove(&id);
                }
                Err(_) => {} // the last line, cut short by a crash
            }
        }
        Ok(StoredBoard { board, logged })
    }

    /// The board.
    pub fn board(&self) -> &Board {
        &self.board
    }

    /// Takes `offer` (see [`Board::insert_as`]) and, if new, records it on disk.
    pub fn insert(
        &mut self,
        home: &Home,
        offer: Signed<Offer>,
        now: Timestamp,
        vouched: bool,
    ) -> Result<Result<Inserted, BoardRefusal>, StateError> {
        let id = RecordId::of(&offer.body).ok();
        let was_vouched = id.is_some_and(|id| self.board.is_vouched(&id));
        let inserted = match self.board.insert_as(offer.clone(), now, vouched) {
            Ok(inserted) => inserted,
            Err(refusal) => return Ok(Err(refusal)),
        };
        // New, or known and vouched for only now: what a restart must find.
        if inserted == Inserted::New || (vouched && !was_vouched) {
            self.record(home, &Change::Add { offer, vouched })?;
        }
        Ok(Ok(inserted))
    }

    /// Removes offer `id`, on disk too; returns whether the board held it.
    pub fn remove(&mut self, home: &Home, id: &RecordId) -> Result<bool, StateError> {
        let held = self.board.remove(id);
        if held {
            self.record(home, &Change::Remove { id: *id })?;
        }
        Ok(held)
    }

    fn record(&mut self, home: &Home, change: &Change) -> Result<(), StateError> {
        if self.logged >= MIN_LOG_LINES.max(self.board.len()) {
            return self.write_whole(home);
        }
        home.append_line(&home.board_log(), change)?;
        self.logged += 1;
        Ok(())
    }

    /// Writes the board whole to `board.json` and empties `board.log`.
    pub fn write_whole(&mut self, home: &Home) -> Result<(), StateError> {
        let list = OfferList {
            schema: Schema,
            offers: self.board.offers().map(|(_, o)| o.clone()).collect(),
            vouched: self.board.vouched().copied().collect(),
        };
        home.write(&home.board(), &list)?;
        let path = home.board_log();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(StateError::io(&path, e)),
            _ => {}
        }
        self.logged = 0;
        Ok(())
    }
}

impl Node {
    /// The offers on this node's board (`board.json` and `board.log`), as of `now`.
    pub fn board_offers(&self, now: Timestamp) -> Result<Vec<Signed<Offer>>, StateError> {
        let stored = StoredBoard::load(&self.home, now)?;
        Ok(stored.board().offers().map(|(_, o)| o.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;
    use crate::protocol::market::Offer;

    fn offer(ident: &Identity, n: u64) -> Signed<Offer> {
        let body = Offer {
            node: ident.node_id(),
            addrs: vec!["127.0.0.1:9".into()],
            size: 1 << 20,
            grace_secs: 60,
            expires_at: Timestamp::from_unix(2_000),
            nonce: format!("{n:032x}"),
            history: None,
        };
        Signed::sign(body, ident).unwrap()
    }

    #[test]
    fn changes_survive_a_reload_a_cut_line_and_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let now = Timestamp::from_unix(1_000);
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let mut stored = StoredBoard::load(&home, now).unwrap();
        let (first, second) = (offer(&a, 1), offer(&b, 2));
        let first_id = RecordId::of(&first.body).unwrap();
        assert_eq!(stored.insert(&home, first.clone(), now, false).unwrap().unwrap(), Inserted::New);
        assert_eq!(stored.insert(&home, second, now, true).unwrap().unwrap(), Inserted::New);
        assert_eq!(stored.insert(&home, first, now, false).unwrap().unwrap(), Inserted::Known);
        assert!(stored.remove(&home, &first_id).unwrap());
        assert!(!home.board().exists(), "nothing written whole yet");
        assert_eq!(fs::read_to_string(home.board_log()).unwrap().lines().count(), 3);

        // A crash cut a line short.
        let mut log = fs::read(home.board_log()).unwrap();
        log.extend_from_slice(b"{\"add\":{\"offer\":{\"bo");
        fs::write(home.board_log(), log).unwrap();
        let mut again = StoredBoard::load(&home, now).unwrap();
        assert_eq!(again.board().len(), 1);
        assert_eq!(again.board().vouched().count(), 1);

        // Written whole: the log is gone, the board the same, vouched still.
        again.write_whole(&home).unwrap();
        assert!(!home.board_log().exists());
        let whole = StoredBoard::load(&home, now).unwrap();
        assert_eq!(
            whole.board().offers().map(|(id, _)| *id).collect::<Vec<_>>(),
            again.board().offers().map(|(id, _)| *id).collect::<Vec<_>>()
        );
        assert_eq!(whole.board().vouched().count(), 1);
        // Expired by the next load: left out.
        assert!(StoredBoard::load(&home, Timestamp::from_unix(3_000)).unwrap().board().is_empty());
    }

    #[test]
    fn the_log_is_folded_into_the_board_once_it_outgrows_it() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        let now = Timestamp::from_unix(1_000);
        let mut stored = StoredBoard::load(&home, now).unwrap();
        let ident = Identity::generate().unwrap();
        let kept = offer(&ident, 0);
        stored.insert(&home, kept, now, false).unwrap().unwrap();
        // Offers taken and then accepted, one after another: the board stays small, its log not.
        for n in 1..=(MIN_LOG_LINES as u64) {
            let o = offer(&ident, n);
            let id = RecordId::of(&o.body).unwrap();
            stored.insert(&home, o, now, false).unwrap().unwrap();
            assert!(stored.remove(&home, &id).unwrap());
        }
        let lines = fs::read_to_string(home.board_log()).map(|t| t.lines().count()).unwrap_or(0);
        assert!(
            lines <= MIN_LOG_LINES,
            "{lines} lines in the log: it never holds more than the board or {MIN_LOG_LINES}"
        );
        let whole: OfferList = home.read(&home.board()).unwrap();
        assert!(!whole.offers.is_empty() && whole.offers.len() <= 2, "{}", whole.offers.len());
        assert_eq!(StoredBoard::load(&home, now).unwrap().board().len(), 1);
    }
}
