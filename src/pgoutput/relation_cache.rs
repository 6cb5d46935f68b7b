//! The schemas that give tuples their meaning, keyed by relation oid.
//!
//! pgoutput sends a Relation message before the first change of a table in a
//! session and again after every schema change, so the cache replaces an entry
//! on every Relation message and never merges: after `ALTER TABLE ... ADD
//! COLUMN` the next tuples are read against the new column list. Entries are
//! `Arc`s so that rows in flight keep the schema they were decoded with.

use std::collections::HashMap;
use std::sync::Arc;

use super::error::DecodeError;
use super::messages::{Relation, TupleData};

/// The latest [`Relation`] seen for each relation oid.
#[derive(Debug, Clone, Default)]
pub struct RelationCache {
    relations: HashMap<u32, Arc<Relation>>,
}

impl RelationCache {
    pub fn new() -> RelationCache {
        RelationCache::default()
    }

    /// Stores `relation` under its oid, replacing any earlier entry, which is
    /// returned.
    pub fn insert(&mut self, relation: impl Into<Arc<Relation>>) -> Option<Arc<Relation>> {
        let relation = relation.into();
        self.relations.insert(relation.oid, relation)
    }

    pub fn get(&self, oid: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&oid)
    }

    /// The relation a change refers to, checked against the change's tuple.
    pub fn resolve(&self, oid: u32, tuple: &TupleData) -> Result<&Arc<Relation>, DecodeError> {
        let relation = self
            .get(oid)
            .ok_or(DecodeError::UnknownRelation { relation_oid: oid })?;
        relation.check_tuple(tuple)?;
        Ok(relation)
    }

    pub fn remove(&mut self, oid: u32) -> Option<Arc<Relation>> {
        self.relations.remove(&oid)
    }

    /// Forgets every relation, e.g. when a new replication session starts
    /// (the server re-sends each Relation before its first change).
    pub fn clear(&mut self) {
        self.relations.clear();
    }

    pub fn len(&self) -> usize {
        self.relations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.relations.is_empty()
    }
}

impl Relation {
    /// `namespace.name`, as error messages show it.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.namespace, self.name)
    }

    /// Fails unless `tuple` has exactly one value per column of this relation.
    pub fn check_tuple(&self, tuple: &TupleData) -> Result<(), DecodeError> {
        if tuple.columns.len() == self.columns.len() {
            return Ok(());
        }
        Err(DecodeError::ColumnCountMismatch {
            relation_oid: self.oid,
            relation: self.qualified_name(),
            relation_columns: self.columns.len(),
            tuple_columns: tuple.columns.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::{Column, ReplicaIdentity, TupleValue};
    use super::*;

    fn relation(oid: u32, column_names: &[&str]) -> Relation {
        Relation {
            oid,
            namespace: "public".to_owned(),
            name: format!("t{oid}"),
            replica_identity: ReplicaIdentity::Default,
            columns: column_names
                .iter()
                .map(|name| Column {
                    flags: 0,
                    name: (*name).to_owned(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    fn tuple(len: usize) -> TupleData {
        TupleData {
            columns: vec![TupleValue::Null; len],
        }
    }

    #[test]
    fn insert_replaces_the_entry_for_the_same_oid() {
        let mut cache = RelationCache::new();
        assert!(cache.is_empty());
        assert_eq!(cache.insert(relation(1, &["id"])), None);
        assert_eq!(cache.insert(relation(2, &["id"])), None);
        let held = Arc::clone(cache.get(1).expect("relation 1 cached"));

        let previous = cache.insert(relation(1, &["id", "extra"]));

        assert_eq!(previous.as_deref(), Some(&relation(1, &["id"])));
        assert_eq!(cache.len(), 2, "replacing must not add an entry");
        let current = cache.get(1).expect("relation 1 still cached");
        assert_eq!(current.columns.len(), 2, "the new schema wins");
        assert_eq!(
            held.columns.len(),
            1,
            "an Arc taken earlier keeps the old schema"
        );
    }

    #[test]
    fn remove_and_clear_forget_relations() {
        let mut cache = RelationCache::new();
        cache.insert(Arc::new(relation(1, &["id"])));
        cache.insert(relation(2, &["id"]));
        assert_eq!(cache.remove(1).map(|r| r.oid), Some(1));
        assert_eq!(cache.remove(1), None);
        assert!(cache.get(1).is_none());
        assert_eq!(cache.len(), 1);
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn check_tuple_names_the_relation_and_both_counts() {
        let rel = relation(7, &["a", "b"]);
        assert_eq!(rel.check_tuple(&tuple(2)), Ok(()));
        let err = rel
            .check_tuple(&tuple(3))
            .expect_err("3 values for 2 columns");
        assert_eq!(
            err,
            DecodeError::ColumnCountMismatch {
                relation_oid: 7,
                relation: "public.t7".to_owned(),
                relation_columns: 2,
                tuple_columns: 3,
            }
        );
        assert_eq!(
            err.to_string(),
            "tuple has 3 columns but relation public.t7 (oid 7) has 2"
        );
    }

    #[test]
    fn resolve_requires_a_known_relation_of_the_right_width() {
        let mut cache = RelationCache::new();
        assert_eq!(
            cache.resolve(9, &tuple(1)).map(|r| r.oid),
            Err(DecodeError::UnknownRelation { relation_oid: 9 })
        );
        cache.insert(relation(9, &["id"]));
        assert_eq!(cache.resolve(9, &tuple(1)).map(|r| r.oid), Ok(9));
        assert!(matches!(
            cache.resolve(9, &tuple(0)),
            Err(DecodeError::ColumnCountMismatch { .. })
        ));
    }
}
