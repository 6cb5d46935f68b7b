use super::*;

fn relation(name: &str, identity: Identity, key: Option<&[&str]>) -> RelationFacts {
    RelationFacts {
        oid: name.len() as u32,
        schema: "public".into(),
        name: name.into(),
        partitioned: false,
        identity,
        key: key.map(|k| k.iter().map(|c| c.to_string()).collect()),
        columns: vec!["id".into(), "n".into(), "body".into()],
        toastable: vec!["body".into()],
    }
}

fn plain(identity: Identity, key: Option<&[&str]>) -> TableFacts {
    TableFacts {
        table: relation("t", identity, key),
        partitions: Vec::new(),
    }
}

const ALL: Publishing<'static> = Publishing {
    columns: None,
    updates: true,
    deletes: true,
    filter: None,
};

const COMPLETE: IdentityPolicy = IdentityPolicy {
    toast: ToastMode::Complete,
    keep_replica_identity: false,
};

fn names(plan: &[&RelationFacts]) -> Vec<String> {
    plan.iter().map(|r| r.display_name()).collect()
}

#[test]
fn a_keyless_table_is_refused_with_every_way_out() {
    for (identity, key) in [
        (Identity::Default, None),
        (Identity::Nothing, None),
        (Identity::Index, None),
    ] {
        let err = plan(&plain(identity, key), ALL, COMPLETE).unwrap_err();
        assert!(matches!(err, Refusal::NoKey { .. }), "{identity}: {err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("every UPDATE and DELETE on public.t would fail"),
            "{msg}"
        );
        let hint = err.hint();
        for fix in [
            "ADD PRIMARY KEY",
            "REPLICA IDENTITY FULL",
            "USING INDEX",
            "--insert-only public.t",
        ] {
            assert!(hint.contains(fix), "{fix} missing from {hint}");
        }
    }
    let inserts_only = Publishing {
        updates: false,
        deletes: false,
        ..ALL
    };
    assert_eq!(
        plan(&plain(Identity::Default, None), inserts_only, COMPLETE).unwrap(),
        Vec::<&RelationFacts>::new()
    );
}

#[test]
fn toastable_tables_get_full_unless_partial_or_kept() {
    let keyed = plain(Identity::Default, Some(&["id"]));
    assert_eq!(names(&plan(&keyed, ALL, COMPLETE).unwrap()), ["public.t"]);
    let partial = IdentityPolicy {
        toast: ToastMode::Partial,
        ..COMPLETE
    };
    assert!(plan(&keyed, ALL, partial).unwrap().is_empty());
    let kept = IdentityPolicy {
        keep_replica_identity: true,
        ..COMPLETE
    };
    let err = plan(&keyed, ALL, kept).unwrap_err();
    assert!(
        matches!(
            err,
            Refusal::ToastWithoutFull {
                why: NoFull::Kept,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("(body)"), "{err}");
    assert!(err.hint().contains("--toast partial"), "{}", err.hint());
    let full = plain(Identity::Full, Some(&["id", "n", "body"]));
    assert!(plan(&full, ALL, kept).unwrap().is_empty(), "already FULL");
    let mut fixed = keyed.clone();
    fixed.table.toastable.clear();
    assert!(
        plan(&fixed, ALL, COMPLETE).unwrap().is_empty(),
        "nothing to TOAST"
    );
}

#[test]
fn column_lists_must_cover_the_key_and_cannot_take_full() {
    let keyed = plain(Identity::Default, Some(&["id"]));
    let list = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let with = |columns: &[String]| -> Result<Vec<String>, Refusal> {
        let publishing = Publishing {
            columns: Some(columns),
            ..ALL
        };
        plan(&keyed, publishing, COMPLETE).map(|p| names(&p))
    };
    let err = with(&list(&["n"])).unwrap_err();
    assert!(
        matches!(&err, Refusal::ColumnListMissesKey { missing, .. } if missing == "id"),
        "{err:?}"
    );
    assert!(
        with(&list(&["id", "n"])).unwrap().is_empty(),
        "body is not published"
    );
    let toast = list(&["id", "body"]);
    let err = with(&toast).unwrap_err();
    assert!(
        matches!(
            err,
            Refusal::ToastWithoutFull {
                why: NoFull::ColumnList,
                ..
            }
        ),
        "{err:?}"
    );
    let partial = IdentityPolicy {
        toast: ToastMode::Partial,
        ..COMPLETE
    };
    let publishing = Publishing {
        columns: Some(&toast),
        ..ALL
    };
    assert!(plan(&keyed, publishing, partial).unwrap().is_empty());
    let full = plain(Identity::Full, Some(&["id", "n", "body"]));
    let err = plan(&full, publishing, partial).unwrap_err();
    assert!(matches!(err, Refusal::FullWithColumnList { .. }), "{err:?}");
}

#[test]
fn partitions_are_checked_and_set_one_by_one() {
    let mut root = relation("ev", Identity::Default, Some(&["id"]));
    root.partitioned = true;
    let facts = TableFacts {
        table: root,
        partitions: vec![
            relation("ev_2025", Identity::Default, Some(&["id"])),
            relation("ev_2026", Identity::Full, Some(&["id", "n", "body"])),
        ],
    };
    assert_eq!(
        names(&plan(&facts, ALL, COMPLETE).unwrap()),
        ["public.ev", "public.ev_2025"]
    );
    let mut keyless = facts.clone();
    keyless.partitions[0].key = None;
    let err = plan(&keyless, ALL, COMPLETE).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("partition public.ev_2025 of table public.ev has no primary key"),
        "{err}"
    );
    assert!(
        err.hint().contains("--insert-only public.ev"),
        "{}",
        err.hint()
    );
}

#[test]
fn a_row_filter_must_read_identity_columns_unless_the_table_becomes_full() {
    let keyed = plain(Identity::Default, Some(&["id"]));
    let on = |cols: &[&str]| cols.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    let partial = IdentityPolicy {
        toast: ToastMode::Partial,
        ..COMPLETE
    };
    let filter = on(&["n"]);
    let publishing = Publishing {
        filter: Some(&filter),
        ..ALL
    };
    let err = plan(&keyed, publishing, partial).unwrap_err();
    assert!(
        matches!(&err, Refusal::FilterOutsideKey { missing, .. } if missing == "n"),
        "{err:?}"
    );
    assert!(err.to_string().contains("every UPDATE and DELETE"), "{err}");
    assert_eq!(
        names(&plan(&keyed, publishing, COMPLETE).unwrap()),
        ["public.t"],
        "FULL for TOAST covers the filter too"
    );
    let key_filter = on(&["id"]);
    let on_key = Publishing {
        filter: Some(&key_filter),
        ..ALL
    };
    assert!(plan(&keyed, on_key, partial).unwrap().is_empty());
    let inserts_only = Publishing {
        updates: false,
        deletes: false,
        ..publishing
    };
    assert!(plan(&keyed, inserts_only, partial).unwrap().is_empty());
}
