//! `publication create/add` never break the application's writes: tables whose UPDATE and
//! DELETE PostgreSQL would refuse once published are refused first, insert-only tables go to
//! a publication of inserts, partitioned tables are published through their root, and
//! REPLICA IDENTITY FULL is set (and only set) where whole rows need it.

use crate::kit::{TestDb, test_db};

const SCHEMA: &str = "\
    CREATE TABLE docs (id int PRIMARY KEY, n int, body text); \
    CREATE TABLE counters (id int PRIMARY KEY, n int); \
    CREATE TABLE nokey (x int, note text); \
    CREATE TABLE ev (id int, at date, body text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at); \
    CREATE TABLE ev_2025 PARTITION OF ev FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
    CREATE TABLE ev_2026 PARTITION OF ev FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
    INSERT INTO docs VALUES (1, 0, 'b'); INSERT INTO counters VALUES (1, 0); \
    INSERT INTO nokey VALUES (1, 'a'); \
    INSERT INTO ev VALUES (1, '2025-06-01', 'x'), (2, '2026-06-01', 'y');";

async fn setup(label: &str) -> TestDb {
    let db = test_db(label).await;
    db.client().await.batch_execute(SCHEMA).await.unwrap();
    db
}

/// `relname → relreplident` of the test's tables.
async fn identities(db: &TestDb) -> std::collections::BTreeMap<String, String> {
    db.client()
        .await
        .query(
            "SELECT relname::text, relreplident::text FROM pg_class \
             WHERE relname IN ('docs', 'counters', 'nokey', 'ev', 'ev_2025', 'ev_2026')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The application's writes on every test table; panics with the server's error.
async fn app_writes_work(db: &TestDb, when: &str) {
    let sql = db.client().await;
    for statement in [
        "UPDATE docs SET n = n + 1",
        "UPDATE counters SET n = n + 1",
        "UPDATE nokey SET x = x + 1",
        "UPDATE ev SET body = body || '!'",
        "DELETE FROM nokey WHERE x > 100",
        "DELETE FROM ev WHERE id > 100",
    ] {
        if let Err(e) = sql.batch_execute(statement).await {
            panic!("{when}: the application's `{statement}` failed: {e:?}");
        }
    }
}

async fn publications(db: &TestDb) -> Vec<String> {
    db.client()
        .await
        .query("SELECT pubname::text FROM pg_publication ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_keyless_table_is_refused_with_the_fix_before_anything_changes() {
    let db = setup("rules_refuse").await;
    let before = identities(&db).await;
    let create = db
        .ds_sync(&["publication", "create", "p", "--tables", "docs,nokey"])
        .await
        .expect_code(1);
    assert!(
        create.stderr.contains(
            "error: table public.nokey has no primary key (which its replica identity DEFAULT \
             would use): published with its updates and deletes, every UPDATE and DELETE on \
             public.nokey would fail"
        ),
        "{}",
        create.stderr
    );
    for fix in [
        "ALTER TABLE public.nokey ADD PRIMARY KEY",
        "REPLICA IDENTITY FULL",
        "REPLICA IDENTITY USING INDEX",
        "--insert-only public.nokey",
    ] {
        assert!(
            create.stderr.contains(fix),
            "hint lacks {fix}: {}",
            create.stderr
        );
    }
    assert!(
        publications(&db).await.is_empty(),
        "no publication was created"
    );
    assert_eq!(identities(&db).await, before, "no table was changed");
    app_writes_work(&db, "after the refused create").await;

    db.ds_sync(&["publication", "create", "p", "--tables", "counters"])
        .await
        .ok();
    let add = db
        .ds_sync(&["publication", "add", "p", "--tables", "nokey"])
        .await
        .expect_code(1);
    assert!(
        add.stderr
            .contains("every UPDATE and DELETE on public.nokey would fail"),
        "{}",
        add.stderr
    );
    app_writes_work(&db, "after the refused add").await;
}

#[tokio::test]
async fn every_publication_path_leaves_the_applications_writes_working() {
    let db = setup("rules_paths").await;
    let created = db
        .ds_sync(&[
            "publication",
            "create",
            "p",
            "--tables",
            "counters",
            "--insert-only",
            "nokey",
        ])
        .await
        .ok();
    assert_eq!(publications(&db).await, ["p", "p_insert_only"]);
    assert!(
        !created.stdout.contains("REPLICA IDENTITY FULL"),
        "no TOASTable column, no change: {}",
        created.stdout
    );
    app_writes_work(&db, "after create with an insert-only table").await;
    let added = db
        .ds_sync(&["publication", "add", "p", "--tables", "docs,ev"])
        .await
        .ok();
    assert!(
        added.stdout.contains(
            "set REPLICA IDENTITY FULL on public.docs, public.ev, public.ev_2025, public.ev_2026"
        ),
        "the change to application tables is reported: {}",
        added.stdout
    );
    assert!(
        added
            .stderr
            .contains("set replica identity full on an application table"),
        "and logged: {}",
        added.stderr
    );
    app_writes_work(&db, "after add").await;
    let ids = identities(&db).await;
    assert_eq!(ids["docs"], "f", "docs has a TOASTable column");
    assert_eq!(ids["counters"], "d", "counters has none");
    assert_eq!(ids["nokey"], "d", "insert-only tables need no identity");
    assert_eq!(
        (ids["ev_2025"].as_str(), ids["ev_2026"].as_str()),
        ("f", "f")
    );
    let show = db
        .ds_sync(&["publication", "show", "p", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(show["via_root"], true);
    let names: Vec<&str> = show["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["counters", "docs", "ev", "nokey"],
        "the partitioned table, not its partitions"
    );
}

#[tokio::test]
async fn keep_replica_identity_and_partial_toast_change_no_table() {
    let db = setup("rules_keep").await;
    let before = identities(&db).await;
    let kept = db
        .ds_sync(&[
            "publication",
            "create",
            "p",
            "--tables",
            "docs",
            "--keep-replica-identity",
        ])
        .await
        .expect_code(1);
    assert!(
        kept.stderr
            .contains("public.docs has columns whose values can be TOASTed (body)")
            && kept.stderr.contains("--toast partial"),
        "{}",
        kept.stderr
    );
    assert!(publications(&db).await.is_empty());
    db.ds_sync(&[
        "publication",
        "create",
        "p",
        "--tables",
        "docs,ev",
        "--toast",
        "partial",
    ])
    .await
    .ok();
    assert_eq!(
        identities(&db).await,
        before,
        "partial updates need no table change"
    );
    app_writes_work(&db, "after a partial-toast create").await;
}

#[tokio::test]
async fn filters_and_column_lists_that_would_break_updates_are_refused() {
    let db = setup("rules_lists").await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--tables", "counters", "--columns", "counters=n"],
            "the column list of public.counters leaves out id",
        ),
        (
            &["--tables", "counters", "--row-filter", "counters=n > 0"],
            "the row filter of public.counters reads n, which is not part of the replica identity",
        ),
        (
            &["--tables", "docs", "--columns", "docs=id,body"],
            "REPLICA IDENTITY FULL, which whole rows need, is refused by PostgreSQL with a column list",
        ),
    ];
    // Before PostgreSQL 15 every one of them is refused for the version.
    let filters = crate::kit::has_row_filters(&db.client().await).await;
    for (args, expected) in cases {
        let expected = if filters {
            expected
        } else {
            crate::kit::NEEDS_PG15
        };
        let mut all = vec!["publication", "create", "p"];
        all.extend_from_slice(args);
        let run = db.ds_sync(&all).await.expect_code(1);
        assert!(
            run.stderr.contains(expected),
            "{args:?}: expected {expected:?} in\n{}",
            run.stderr
        );
        assert!(
            publications(&db).await.is_empty(),
            "{args:?} created nothing"
        );
    }
    app_writes_work(&db, "after the refusals").await;
    // A filter on the key is fine, and a filter on a TOASTable table is covered by FULL.
    let create = db
        .ds_sync(&[
            "publication",
            "create",
            "p",
            "--tables",
            "counters,docs",
            "--row-filter",
            "counters=id > 0",
            "--row-filter",
            "docs=n >= 0",
        ])
        .await;
    if filters {
        create.ok();
        app_writes_work(&db, "after filtered publications").await;
    } else {
        let run = create.expect_code(1);
        assert!(
            run.stderr.contains(crate::kit::NEEDS_PG15),
            "{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn partitions_published_on_their_own_are_refused_with_the_fix() {
    let db = setup("rules_parts").await;
    db.client()
        .await
        .batch_execute("CREATE PUBLICATION old FOR TABLE ev, counters")
        .await
        .unwrap();
    let add = db
        .ds_sync(&["publication", "add", "old", "--tables", "docs"])
        .await
        .ok();
    assert!(add.stdout.contains("added public.docs"), "{}", add.stdout);
    let old_parts = db
        .client()
        .await
        .batch_execute("CREATE PUBLICATION old2 FOR TABLE counters; CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id); CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (10)")
        .await;
    old_parts.unwrap();
    // No partition is published on its own yet: adding a partitioned table turns
    // publish_via_partition_root on.
    let add = db
        .ds_sync(&["publication", "add", "old2", "--tables", "parted"])
        .await
        .ok();
    assert!(
        add.stdout
            .contains("partitions are now published through their partitioned tables"),
        "{}",
        add.stdout
    );
    // `old` publishes ev's partitions as tables of their own: changing that would move their
    // streams, so a partitioned table is refused with the fix.
    let refused = db
        .ds_sync(&["publication", "add", "old", "--tables", "parted"])
        .await
        .expect_code(1);
    assert!(
        refused
            .stderr
            .contains("publishes partitions as tables of their own")
            && refused
                .stderr
                .contains("SET (publish_via_partition_root = true)"),
        "{}",
        refused.stderr
    );
    // `run` refuses such a publication before it creates a slot.
    let slot = db.slot("parts");
    let run = db
        .ds_sync(&[
            "run",
            "--publication",
            "old",
            "--slot",
            &slot,
            "--ds-server-url",
            "http://127.0.0.1:9",
            "--no-ingest",
        ])
        .await
        .expect_code(1);
    assert!(
        run.stderr.contains(
            "changes to public.ev_2025, public.ev_2026 would reach streams named after each partition"
        ),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn an_insert_only_publication_is_not_created_behind_an_existing_slot() {
    let db = setup("rules_slot").await;
    let sql = db.client().await;
    sql.batch_execute("CREATE PUBLICATION legacy FOR TABLE counters")
        .await
        .unwrap();
    let slot = db.slot("legacy");
    sql.execute(
        "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
        &[&slot],
    )
    .await
    .unwrap();
    let refused = db
        .ds_sync(&[
            "publication",
            "add",
            "legacy",
            "--insert-only",
            "nokey",
            "--slot",
            &slot,
        ])
        .await
        .expect_code(1);
    assert!(
        refused
            .stderr
            .contains("insert-only tables go to publication 'legacy_insert_only'")
            && refused
                .stderr
                .contains(&format!("ds-sync slot drop {slot}")),
        "{}",
        refused.stderr
    );
    assert_eq!(publications(&db).await, ["legacy"]);
    sql.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    db.ds_sync(&[
        "publication",
        "add",
        "legacy",
        "--insert-only",
        "nokey",
        "--slot",
        &slot,
    ])
    .await
    .ok();
    assert_eq!(publications(&db).await, ["legacy", "legacy_insert_only"]);
    app_writes_work(&db, "after insert-only add").await;
}
