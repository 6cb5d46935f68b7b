//! The bookkeeping of one SSE connection, without I/O: rows waiting for their control event
//! (pending), rows whose control event came while a commit was in flight (ready), and what
//! that commit will do when it lands.
//!
//! ```text
//!  message ─▶ pending ──control (offset moved, or data)──▶ ready ──nothing in flight──▶ sent
//!                      control (same offset, no data) ───▶ its flags go to the latest of
//!                                                          ready / in flight, or are reached
//! ```
//!
//! One commit is in flight at a time; controls that arrive meanwhile gather into the next
//! (each row keeps the offset of its own control event). A control that does not move the
//! offset and ends no data carries nothing to store, but its flags still matter: `upToDate`
//! says the reader caught up, `streamClosed` that the stream ended. They are kept on the
//! commit that will land last, so that when it lands the subscription reports them (an
//! up-to-date flag is never lost behind a commit in flight, and a close is seen without
//! waiting for the server to end the connection).

use super::decode::{Decoded, Pending};
use crate::sse::Control;

/// What a commit handed to the writer will mean once it lands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub next_offset: String,
    pub up_to_date: bool,
    pub closed: bool,
    /// It stores rows or dead letters (not only an offset).
    pub stored_events: bool,
}

/// What a control event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// It ends data or moves the offset: it will be committed.
    Held,
    /// Nothing to commit and nothing in flight: the subscription is where the control says.
    Now { up_to_date: bool, closed: bool },
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Ledger {
    pending: Pending,
    ready: Pending,
    ready_control: Option<Control>,
    in_flight: Option<Sent>,
}

impl Ledger {
    /// A message of the current data event.
    pub fn push(&mut self, decoded: Decoded) {
        self.pending.push(decoded);
    }

    /// A control event; `committed` is the offset stored now.
    pub fn control(&mut self, control: Control, committed: Option<&str>) -> Reached {
        let latest = self
            .ready_control
            .as_ref()
            .map(|c| c.stream_next_offset.as_str())
            .or(self.in_flight.as_ref().map(|f| f.next_offset.as_str()))
            .or(committed);
        if latest != Some(control.stream_next_offset.as_str()) || !self.pending.is_empty() {
            self.pending.seal(&control.stream_next_offset);
            self.ready.append(self.pending.take());
            self.ready_control = Some(control);
            Reached::Held
        } else if let Some(ready) = self.ready_control.as_mut() {
            ready.up_to_date = control.up_to_date;
            ready.stream_closed |= control.stream_closed;
            Reached::Held
        } else if let Some(sent) = self.in_flight.as_mut() {
            sent.up_to_date = control.up_to_date;
            sent.closed |= control.stream_closed;
            Reached::Held
        } else {
            Reached::Now {
                up_to_date: control.up_to_date,
                closed: control.stream_closed,
            }
        }
    }

    /// The next commit to hand to the writer, when nothing is in flight and a control
    /// event ended something; it is in flight from now on.
    pub fn next_commit(&mut self) -> Option<(Pending, String)> {
        if self.in_flight.is_some() {
            return None;
        }
        let control = self.ready_control.take()?;
        let batch = self.ready.take();
        self.in_flight = Some(Sent {
            next_offset: control.stream_next_offset.clone(),
            up_to_date: control.up_to_date,
            closed: control.stream_closed,
            stored_events: !batch.is_empty(),
        });
        Some((batch, control.stream_next_offset))
    }

    /// The commit in flight landed (or failed): what it meant.
    pub fn landed(&mut self) -> Option<Sent> {
        self.in_flight.take()
    }

    #[must_use]
    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether rows or dead letters wait for their control event.
    #[must_use]
    pub fn has_unsealed(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes held by rows and dead letters not handed to the writer yet.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.pending.bytes() + self.ready.bytes()
    }

    /// Bytes held by rows waiting for their control event.
    #[must_use]
    pub fn unsealed_bytes(&self) -> usize {
        self.pending.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::decode::decode;
    use crate::sse::ArrayItem;

    fn control(offset: &str, up_to_date: bool, closed: bool) -> Control {
        Control {
            stream_next_offset: offset.into(),
            stream_cursor: None,
            up_to_date,
            stream_closed: closed,
        }
    }

    fn message(ledger: &mut Ledger, text: &str) {
        let item = ArrayItem::Element {
            index: 0,
            text: text.as_bytes().to_vec(),
        };
        ledger.push(decode(item, 1 << 20));
    }

    #[test]
    fn data_then_control_is_one_commit_with_the_control_offset() {
        let mut l = Ledger::default();
        message(&mut l, r#"{"key":"a"}"#);
        assert!(l.has_unsealed() && l.held_bytes() > 0);
        assert_eq!(
            l.control(control("1", true, false), Some("0")),
            Reached::Held
        );
        let (batch, offset) = l.next_commit().expect("a commit");
        assert_eq!((batch.rows.len(), offset.as_str()), (1, "1"));
        assert_eq!(batch.rows[0].ds_offset.as_deref(), Some("1"));
        assert!(l.in_flight() && l.held_bytes() == 0);
        let sent = l.landed().unwrap();
        assert!(sent.up_to_date && sent.stored_events && !sent.closed);
    }

    #[test]
    fn controls_during_a_commit_gather_into_the_next() {
        let mut l = Ledger::default();
        message(&mut l, "1");
        l.control(control("1", false, false), None);
        l.next_commit().unwrap();
        message(&mut l, "2");
        l.control(control("2", false, false), Some("0"));
        message(&mut l, "3");
        l.control(control("3", true, false), Some("0"));
        assert!(l.next_commit().is_none(), "one in flight at a time");
        l.landed();
        let (batch, offset) = l.next_commit().unwrap();
        assert_eq!(offset, "3");
        let offsets: Vec<_> = batch.rows.iter().map(|r| r.ds_offset.as_deref()).collect();
        assert_eq!(offsets, [Some("2"), Some("3")]);
    }

    #[test]
    fn a_control_during_a_commit_keeps_its_up_to_date_flag() {
        let mut l = Ledger::default();
        message(&mut l, "1");
        l.control(control("5", false, false), Some("4"));
        l.next_commit().unwrap();
        // The server reached the tail while the commit was in flight: same offset, no data.
        assert_eq!(
            l.control(control("5", true, false), Some("4")),
            Reached::Held
        );
        let sent = l.landed().unwrap();
        assert!(
            sent.up_to_date,
            "the flag is reported when the commit lands"
        );
        assert!(l.next_commit().is_none(), "no commit of its own");
    }

    #[test]
    fn a_close_during_a_commit_is_kept_too() {
        let mut l = Ledger::default();
        message(&mut l, "1");
        l.control(control("5", true, false), Some("4"));
        l.next_commit().unwrap();
        l.control(control("5", true, true), Some("4"));
        assert!(l.landed().unwrap().closed);
    }

    #[test]
    fn flags_of_a_same_offset_control_go_to_the_ready_commit() {
        let mut l = Ledger::default();
        message(&mut l, "1");
        l.control(control("5", false, false), Some("4"));
        l.next_commit().unwrap();
        message(&mut l, "2");
        l.control(control("6", false, false), Some("4"));
        l.control(control("6", true, true), Some("4"));
        l.landed();
        l.next_commit().unwrap();
        let sent = l.landed().unwrap();
        assert!(sent.up_to_date && sent.closed && sent.next_offset == "6");
    }

    #[test]
    fn a_control_with_nothing_to_commit_is_reached_at_once() {
        let mut l = Ledger::default();
        assert_eq!(
            l.control(control("4", true, false), Some("4")),
            Reached::Now {
                up_to_date: true,
                closed: false
            }
        );
        assert_eq!(
            l.control(control("4", false, true), Some("4")),
            Reached::Now {
                up_to_date: false,
                closed: true
            }
        );
        assert!(l.next_commit().is_none());
    }

    #[test]
    fn an_offset_that_moves_without_data_is_committed() {
        let mut l = Ledger::default();
        assert_eq!(l.control(control("1", true, false), None), Reached::Held);
        let (batch, offset) = l.next_commit().unwrap();
        assert!(batch.is_empty() && offset == "1");
        assert!(!l.landed().unwrap().stored_events);
    }
}
