//! Which row a message is about: its `type`, its key columns and its key text.
//!
//! The State Protocol identifies a row by (`type`, `key`), so the key must be the same for
//! every operation on a row, deletes included, and distinct rows of a table must never share
//! one. Deletes carry only the replica identity, which decides the key columns; the text
//! PostgreSQL sent, not the JSON value, makes the key, so it does not depend on the mapping
//! of types to JSON.

use std::sync::Arc;

use super::direct::JsonShape;
use super::{Cell, MessageError, Operation};
use crate::pgoutput::Relation;

/// How a row's key columns become the State Protocol `key`, for docs and `--help`.
pub const KEY_ENCODING_DOC: &str = "\
The key is built from the text PostgreSQL sent for the key columns. With one key column it is \
that text exactly, e.g. 42 or a/b, unless the text is empty, starts with '[', or the value is \
NULL; then, and always with several key columns, it is a compact JSON array of the texts with \
null for NULL, e.g. [\"7\",\"x,y\"], [\"\"] or [null]. Plain keys never start with '[' and \
array keys always do, so rows of a table with different key values never share a key.";

/// A relation as the message builder and the router see it: its schema, the message
/// `type`, and which columns make the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    pub relation: Arc<Relation>,
    /// The State Protocol `type`: `name` in schema `public`, `schema.name` otherwise.
    pub type_name: String,
    /// Indexes into `relation.columns`, in table order for identity and all-column keys,
    /// in primary key order for primary keys.
    pub key_columns: Vec<usize>,
    /// `schema.name`, as errors and logs show it: kept, since capture names the table of
    /// every row it records.
    qualified: String,
    /// How its messages are written as JSON (see `direct`).
    pub(super) json: JsonShape,
}

impl TableInfo {
    /// Picks the key columns: the primary key when every one of its columns exists and the
    /// replica identity carries it (always so for DEFAULT and FULL, or when no column is
    /// flagged and only inserts are published); else the identity columns (a USING INDEX
    /// identity, or a primary key that is not in the relation any more); else every column,
    /// for a keyless table that publishes only inserts. With REPLICA IDENTITY FULL pgoutput
    /// flags every column, which is why a primary key, when known, comes first.
    pub fn new(relation: Arc<Relation>, primary_key: Option<Vec<String>>) -> TableInfo {
        let flagged: Vec<usize> = (0..relation.columns.len())
            .filter(|&i| relation.columns[i].is_key())
            .collect();
        let primary: Option<Vec<usize>> = primary_key.and_then(|names| {
            let position = |name: &String| relation.columns.iter().position(|c| &c.name == name);
            names.iter().map(position).collect()
        });
        let key_columns = match primary {
            Some(pk)
                if !pk.is_empty()
                    && pk.iter().all(|i| flagged.is_empty() || flagged.contains(i)) =>
            {
                pk
            }
            _ if !flagged.is_empty() => flagged,
            _ => (0..relation.columns.len()).collect(),
        };
        let type_name = match relation.namespace.as_str() {
            "public" | "" => relation.name.clone(),
            schema => format!("{schema}.{}", relation.name),
        };
        let names: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        let json = JsonShape::new(&type_name, &names);
        TableInfo {
            qualified: relation.qualified_name(),
            relation,
            type_name,
            key_columns,
            json,
        }
    }

    /// `schema.name`, as errors show it.
    pub fn qualified_name(&self) -> String {
        self.qualified.clone()
    }

    /// [`TableInfo::qualified_name`], borrowed.
    pub fn qualified(&self) -> &str {
        &self.qualified
    }
}

/// The key of a row, per [`KEY_ENCODING_DOC`].
pub(super) fn encode_key(
    table: &TableInfo,
    cells: &[Cell<'_>],
    operation: Operation,
) -> Result<String, MessageError> {
    let mut texts: Vec<Option<&str>> = Vec::with_capacity(table.key_columns.len());
    for &index in &table.key_columns {
        // `get`: the fields are public, so a hand-made TableInfo may not match its cells.
        texts.push(match cells.get(index).copied().unwrap_or(Cell::Absent) {
            Cell::Null => None,
            Cell::Text(text) => Some(text),
            Cell::Absent => {
                let column = table.relation.columns.get(index);
                return Err(MessageError::KeyUnavailable {
                    table: table.qualified_name(),
                    column: column.map_or_else(|| format!("#{index}"), |c| c.name.clone()),
                    operation,
                });
            }
        });
    }
    Ok(match texts.as_slice() {
        [Some(text)] if !text.is_empty() && !text.starts_with('[') => (*text).to_owned(),
        // Serializing strings and nulls cannot fail.
        _ => serde_json::to_string(&texts).unwrap_or_default(),
    })
}
