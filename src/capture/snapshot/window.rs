//! What the changes streamed between a chunk's low and high watermarks say about the chunk's
//! rows (pure): which rows the chunk must leave out, which it must complete, and whether it
//! must be dropped whole.
//!
//! ```text
//!  low ── changes of the table (recorded by key) ── high: each chunk row is
//!        not seen ................................ sent as read (its state at high)
//!        complete row, delete, key change ........ left out (the change is as new)
//!        only updates without TOASTed columns .... sent with the updates' values over it
//!        TRUNCATE ................................ the whole chunk is left out
//! ```
//!
//! **Unchanged TOAST.** An update that leaves a TOASTed column unchanged does not carry it
//! (`headers.unchanged_toast`). A client that never had the row (the table was not captured
//! before, or its stream was lost: why snapshots are taken) would hold it without that
//! column if the chunk's copy were left out. When every change of a key inside the window
//! was such an update, the columns none of them carried stayed the same through the whole
//! window, so the chunk's values for them are the row's values at high; the columns the
//! updates did carry take the last update's values. The row sent at high is then whole and
//! current. A key changed by a delete, an insert or a complete update is left out: that
//! change already gave the client the row (or its absence).
//!
//! **Replays.** The window lives until its chunk is acknowledged, and records only while open
//! (from low to high in WAL order). A reconnect that resumes after low replays part of the
//! window, which changes nothing (every transition is idempotent for a suffix replayed on its
//! own result), so a re-sent chunk is the same rows with the same sequences as the first
//! time.
//!
//! **TRUNCATE.** Rows read before a TRUNCATE inside the window are gone at high; rows
//! inserted after it were streamed as inserts. Either way the chunk has nothing to add.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::super::message::{Operation, RowMessage};

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Window {
    open: bool,
    truncated: bool,
    keys: HashMap<String, Seen>,
}

/// What the window saw of one key.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    /// The client got the row's state (or its absence) from a change: leave the chunk's
    /// copy out.
    Streamed,
    /// Only updates without some TOASTed columns: the values they carried, the last one's
    /// winning.
    Partial(Map<String, Value>),
}

impl Window {
    /// The low watermark was decoded: record from here (again, after a reconnect that
    /// replays it).
    pub fn open(&mut self) {
        self.open = true;
    }

    /// The high watermark was decoded: nothing after it belongs to the window.
    pub fn close(&mut self) {
        self.open = false;
    }

    /// A streamed change of the chunk's table.
    pub fn change(&mut self, row: &RowMessage) {
        if !self.open {
            return;
        }
        let Some(key) = row.message["key"].as_str() else {
            return;
        };
        let carried = row.message["value"].as_object();
        let partial = row.message["headers"].get("unchanged_toast").is_some();
        let seen = match (row.operation, partial, carried) {
            (Operation::Update, true, Some(values)) => match self.keys.get(key) {
                Some(Seen::Streamed) => Seen::Streamed,
                Some(Seen::Partial(before)) => {
                    let mut merged = before.clone();
                    merged.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Seen::Partial(merged)
                }
                None => Seen::Partial(values.clone()),
            },
            // Deletes, inserts (a key change's new row too: its missing columns come from
            // another key's row) and complete updates.
            _ => Seen::Streamed,
        };
        self.keys.insert(key.to_owned(), seen);
    }

    /// A TRUNCATE of the chunk's table.
    pub fn truncate(&mut self) {
        if self.open {
            self.truncated = true;
        }
    }

    /// True when a TRUNCATE fell inside the window: the chunk is dropped whole.
    pub fn truncated(&self) -> bool {
        self.truncated
    }

    /// Keys changed inside the window.
    pub fn changed(&self) -> usize {
        self.keys.len()
    }

    /// What to send at high for a chunk row: `None` to leave it out, or the row, completed
    /// with the values of updates that left TOASTed columns out.
    pub fn place(&self, mut row: RowMessage) -> Option<RowMessage> {
        if self.truncated {
            return None;
        }
        let key = row.message["key"].as_str()?;
        match self.keys.get(key) {
            None => Some(row),
            Some(Seen::Streamed) => None,
            Some(Seen::Partial(values)) => {
                let value = row.message.get_mut("value")?.as_object_mut()?;
                value.extend(values.iter().map(|(k, v)| (k.clone(), v.clone())));
                Some(row)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn msg(op: Operation, key: &str, value: Option<Value>, toast: bool) -> RowMessage {
        let mut headers = json!({"operation": op.as_str()});
        if toast {
            headers["unchanged_toast"] = json!(["body"]);
        }
        let mut message = json!({"key": key, "headers": headers});
        if let Some(value) = value {
            message["value"] = value;
        }
        RowMessage {
            operation: op,
            message,
            extra_columns: Map::new(),
        }
    }

    fn chunk_row(key: &str, v: i64) -> RowMessage {
        msg(
            Operation::Insert,
            key,
            Some(json!({"id": key, "v": v, "body": "long"})),
            false,
        )
    }

    fn partial(key: &str, v: i64) -> RowMessage {
        msg(
            Operation::Update,
            key,
            Some(json!({"id": key, "v": v})),
            true,
        )
    }

    fn placed(w: &Window, key: &str) -> Option<Value> {
        w.place(chunk_row(key, 0))
            .map(|r| r.message["value"].clone())
    }

    #[test]
    fn unseen_rows_are_sent_and_streamed_ones_left_out() {
        let mut w = Window::default();
        w.open();
        w.change(&msg(
            Operation::Insert,
            "2",
            Some(json!({"id": "2"})),
            false,
        ));
        w.change(&msg(Operation::Delete, "3", None, false));
        w.change(&msg(
            Operation::Update,
            "4",
            Some(json!({"id": "4", "v": 1, "body": "b"})),
            false,
        ));
        w.close();
        assert_eq!(
            placed(&w, "1"),
            Some(json!({"id": "1", "v": 0, "body": "long"}))
        );
        for key in ["2", "3", "4"] {
            assert_eq!(placed(&w, key), None, "key {key}");
        }
        assert_eq!(w.changed(), 3);
    }

    #[test]
    fn updates_without_toast_columns_complete_the_chunk_row() {
        let mut w = Window::default();
        w.open();
        w.change(&partial("1", 1));
        w.change(&partial("1", 2));
        w.close();
        assert_eq!(
            placed(&w, "1"),
            Some(json!({"id": "1", "v": 2, "body": "long"}))
        );
    }

    #[test]
    fn a_complete_row_before_or_after_a_partial_update_leaves_the_chunk_row_out() {
        for order in [[true, false], [false, true]] {
            let mut w = Window::default();
            w.open();
            for complete in order {
                if complete {
                    w.change(&msg(
                        Operation::Update,
                        "1",
                        Some(json!({"v": 5, "body": "x"})),
                        false,
                    ));
                } else {
                    w.change(&partial("1", 6));
                }
            }
            assert_eq!(placed(&w, "1"), None, "{order:?}");
        }
        let mut w = Window::default();
        w.open();
        w.change(&msg(Operation::Insert, "9", Some(json!({"id": "9"})), true));
        assert_eq!(
            placed(&w, "9"),
            None,
            "a key change's new row is not merged"
        );
    }

    #[test]
    fn only_changes_between_low_and_high_count() {
        let mut w = Window::default();
        w.change(&partial("1", 1));
        w.truncate();
        w.open();
        w.close();
        w.change(&msg(Operation::Delete, "2", None, false));
        w.truncate();
        assert_eq!(w.changed(), 0);
        assert!(!w.truncated());
        assert!(placed(&w, "2").is_some());
    }

    #[test]
    fn a_truncate_drops_the_whole_chunk() {
        let mut w = Window::default();
        w.open();
        w.truncate();
        w.change(&msg(
            Operation::Insert,
            "1",
            Some(json!({"id": "1"})),
            false,
        ));
        w.close();
        assert!(w.truncated());
        assert_eq!(placed(&w, "5"), None);
    }

    /// A reconnect replays a suffix of the window onto what the first pass recorded: the
    /// rows placed at high stay the same.
    #[test]
    fn replaying_part_of_the_window_changes_nothing() {
        let changes = [
            partial("1", 1),
            msg(Operation::Delete, "2", None, false),
            partial("3", 1),
            partial("1", 2),
            msg(
                Operation::Insert,
                "2",
                Some(json!({"id": "2", "v": 0, "body": "b"})),
                false,
            ),
            partial("2", 1),
        ];
        let mut first = Window::default();
        first.open();
        changes.iter().for_each(|c| first.change(c));
        first.close();
        let keys = ["1", "2", "3", "4"];
        let before: Vec<_> = keys.iter().map(|k| placed(&first, k)).collect();
        for from in 0..changes.len() {
            let mut w = Window {
                open: false,
                truncated: first.truncated,
                keys: first.keys.clone(),
            };
            w.open();
            changes[from..].iter().for_each(|c| w.change(c));
            w.close();
            let after: Vec<_> = keys.iter().map(|k| placed(&w, k)).collect();
            assert_eq!(after, before, "replay from change {from}");
        }
    }
}
