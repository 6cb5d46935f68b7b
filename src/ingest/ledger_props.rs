//! Property tests of ingest's bookkeeping without I/O (proptest): [`Ledger`] driven as
//! `subscription::read` drives it, against a simulated DS stream (appends; each connection
//! sends them as data events of one or several appends, each followed by a control event
//! with the offset after it, and sometimes a repeated control) and a simulated database
//! whose writer stores a commit's rows and its offset in one transaction, only over the
//! offset the commit expects (as the checked upsert does).
//!
//! Random interleavings of appends, reads, commits landing or failing, connections ending
//! (what was sealed is committed first) and crashes (a commit in flight lands or not) must
//! leave the database holding exactly the messages before its stored offset, in stream
//! order, each once, each row tagged with the offset of a control at or after it.

use proptest::prelude::*;

use super::decode::{Pending, decode};
use super::ledger::{Ledger, Reached};
use crate::sse::{ArrayItem, Control};

#[derive(Debug, Clone)]
enum Step {
    /// The stream gets an append of `n` messages.
    Append { n: u8 },
    /// The server sends what the connection has not sent yet: `merge` + 1 appends as one
    /// data event (or a control without data when there is none), then maybe the same
    /// control again.
    Send { merge: u8, repeat: bool },
    /// The subscription takes up to `n` items from the connection.
    Read { n: u8 },
    /// The commit in flight lands, or fails (the subscription reconnects).
    Land { ok: bool },
    /// The connection ends: what control events sealed is committed, then it reconnects.
    Disconnect,
    /// The process dies; the commit in flight reached the database or not.
    Crash { landed: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..4u8).prop_map(|n| Step::Append { n }),
        3 => (0..3u8, prop::bool::weighted(0.3)).prop_map(|(merge, repeat)| Step::Send { merge, repeat }),
        6 => (1..6u8).prop_map(|n| Step::Read { n }),
        4 => prop::bool::weighted(0.85).prop_map(|ok| Step::Land { ok }),
        1 => Just(Step::Disconnect),
        1 => any::<bool>().prop_map(|landed| Step::Crash { landed }),
    ]
}

/// An item the connection delivers.
#[derive(Debug, Clone)]
enum Item {
    Message(String),
    Control(String),
}

/// Offsets as a server's opaque text: the number of appends before it.
fn offset(appends: usize) -> String {
    format!("{appends:06}")
}

fn appends_at(offset: &str) -> usize {
    offset.parse().expect("an offset this test made")
}

/// A commit handed to the writer.
struct Commit {
    prev: Option<String>,
    next: String,
    batch: Pending,
}

#[derive(Default)]
struct Db {
    /// `(payload, ds_offset)` of every stored row, in insertion order.
    rows: Vec<(String, String)>,
    offset: Option<String>,
}

struct World {
    /// Each append's messages.
    stream: Vec<Vec<String>>,
    db: Db,
    /// The connection: appends sent so far, items not read yet.
    sent: usize,
    outbox: std::collections::VecDeque<Item>,
    /// The subscription: its committed offset, ledger and commit in flight.
    committed: Option<String>,
    ledger: Ledger,
    in_flight: Option<Commit>,
    messages: usize,
}

impl World {
    fn new() -> World {
        World {
            stream: Vec::new(),
            db: Db::default(),
            sent: 0,
            outbox: std::collections::VecDeque::new(),
            committed: None,
            ledger: Ledger::default(),
            in_flight: None,
            messages: 0,
        }
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Append { n } => {
                let append = (0..n)
                    .map(|_| {
                        self.messages += 1;
                        format!(r#"{{"key":"m{}"}}"#, self.messages)
                    })
                    .collect();
                self.stream.push(append);
            }
            Step::Send { merge, repeat } => self.send(usize::from(merge), repeat),
            Step::Read { n } => {
                for _ in 0..n {
                    self.dispatch();
                    let Some(item) = self.outbox.pop_front() else {
                        break;
                    };
                    self.item(item);
                }
                self.dispatch();
            }
            Step::Land { ok } => {
                if self.in_flight.is_some() && !self.land(ok) {
                    self.reconnect(self.db.offset.clone());
                }
                self.dispatch();
            }
            Step::Disconnect => {
                // `subscription::settle`: the commit in flight, then what is ready.
                loop {
                    self.dispatch();
                    if self.in_flight.is_none() || !self.land(true) {
                        break;
                    }
                }
                self.reconnect(self.committed.clone());
            }
            Step::Crash { landed } => {
                if let Some(commit) = self.in_flight.take()
                    && landed
                {
                    self.write(commit);
                }
                self.reconnect(self.db.offset.clone());
            }
        }
    }

    fn send(&mut self, merge: usize, repeat: bool) {
        let end = (self.sent + 1 + merge).min(self.stream.len());
        for append in &self.stream[self.sent..end] {
            self.outbox
                .extend(append.iter().cloned().map(Item::Message));
        }
        self.sent = end.max(self.sent);
        let control = Item::Control(offset(self.sent));
        if repeat {
            self.outbox.push_back(control.clone());
        }
        self.outbox.push_back(control);
    }

    /// `subscription::item`.
    fn item(&mut self, item: Item) {
        match item {
            Item::Message(text) => {
                let element = ArrayItem::Element {
                    index: 0,
                    text: text.into_bytes(),
                };
                self.ledger.push(decode(element, 1 << 20));
            }
            Item::Control(next) => {
                let control = Control {
                    stream_next_offset: next,
                    stream_cursor: None,
                    up_to_date: true,
                    stream_closed: false,
                };
                // `Reached::Now`: nothing to store, the position is already committed.
                let _: Reached = self.ledger.control(control, self.committed.as_deref());
            }
        }
    }

    /// The top of `subscription::read`: one commit in flight at a time.
    fn dispatch(&mut self) {
        if self.in_flight.is_none()
            && let Some((batch, next)) = self.ledger.next_commit()
        {
            self.in_flight = Some(Commit {
                prev: self.committed.clone(),
                next,
                batch,
            });
        }
    }

    /// The writer's answer to the commit in flight; false when it failed (or none was).
    fn land(&mut self, ok: bool) -> bool {
        let Some(commit) = self.in_flight.take() else {
            return false;
        };
        let sent = self.ledger.landed().expect("the ledger knows its commit");
        assert_eq!(sent.next_offset, commit.next);
        if ok && self.write(commit) {
            self.committed = Some(sent.next_offset);
            return true;
        }
        false
    }

    /// One database transaction: the rows and the offset, only over the expected offset.
    fn write(&mut self, commit: Commit) -> bool {
        if self.db.offset != commit.prev {
            return false;
        }
        for row in commit.batch.rows {
            let at = row.ds_offset.as_deref().expect("a sealed row").to_owned();
            self.db.rows.push((row.payload, at));
        }
        assert!(commit.batch.dead.is_empty(), "every message is valid");
        self.db.offset = Some(commit.next);
        true
    }

    /// A new connection (and ledger) reading from `from`.
    fn reconnect(&mut self, from: Option<String>) {
        self.sent = from.as_deref().map_or(0, appends_at);
        self.committed = from;
        self.outbox.clear();
        self.ledger = Ledger::default();
        self.in_flight = None;
    }

    /// The database holds exactly the messages before its offset, in order, each tagged with
    /// an offset at or after it and not past the stored one.
    fn check(&self) {
        let stored = self.db.offset.as_deref().map_or(0, appends_at);
        let mut expected = Vec::new();
        for (i, append) in self.stream[..stored].iter().enumerate() {
            for message in append {
                expected.push((message.as_str(), i + 1));
            }
        }
        let rows: Vec<&str> = self.db.rows.iter().map(|(p, _)| p.as_str()).collect();
        let want: Vec<&str> = expected.iter().map(|(p, _)| *p).collect();
        assert_eq!(rows, want, "rows stored with offset {stored}");
        for ((_, at), (_, after)) in self.db.rows.iter().zip(&expected) {
            let at = appends_at(at);
            assert!(
                *after <= at && at <= stored,
                "a row of append {after} tagged with offset {at}, stored offset {stored}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Ingest never stores an offset without all the rows before it in the same
    /// transaction, never a row twice, never out of stream order.
    #[test]
    fn model_ingest_commits_offsets_only_with_their_rows_in_order(
        steps in prop::collection::vec(step(), 1..120)
    ) {
        let mut world = World::new();
        for step in &steps {
            world.apply(step);
            world.check();
        }
        // Then everything is sent, read and committed.
        world.apply(&Step::Disconnect);
        for _ in 0..1000 {
            if world.db.offset.as_deref().map_or(0, appends_at) == world.stream.len() {
                break;
            }
            world.apply(&Step::Send { merge: 2, repeat: false });
            world.apply(&Step::Read { n: 50 });
            world.apply(&Step::Land { ok: true });
        }
        world.check();
        prop_assert_eq!(
            world.db.offset.as_deref().map_or(0, appends_at),
            world.stream.len(),
            "everything is stored in the end"
        );
    }
}
