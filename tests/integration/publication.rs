//! `ds-sync publication ...` against a real cluster.

use crate::kit::{TestDb, test_db};

async fn tables(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE items (id serial primary key, title text not null, body text); \
             CREATE TABLE orders (id int primary key, status text, total numeric); \
             ALTER TABLE orders REPLICA IDENTITY FULL; \
             CREATE TABLE logs (line text); \
             CREATE TABLE \"Mixed Case\" (id int primary key); \
             CREATE VIEW item_titles AS SELECT title FROM items;",
        )
        .await
        .unwrap();
}

fn table<'a>(show: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    show["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == name)
        .unwrap_or_else(|| panic!("table {name} missing from {show:#}"))
}

#[tokio::test]
async fn create_with_row_filter_and_columns_then_show() {
    let db = test_db("pub_filters").await;
    tables(&db).await;
    let create = db
        .ds_sync(&[
            "publication",
            "create",
            "p1",
            "--tables",
            "items,orders,\"Mixed Case\"",
            "--row-filter",
            "orders=status <> 'draft'",
            "--columns",
            "items=id,title",
            // A column list rules out REPLICA IDENTITY FULL, which whole rows need for title.
            "--toast",
            "partial",
        ])
        .await;
    if !crate::kit::has_row_filters(&db.client().await).await {
        let run = create.expect_code(1);
        assert!(
            run.stderr.contains(crate::kit::NEEDS_PG15) && run.stderr.contains("orders"),
            "{}",
            run.stderr
        );
        return;
    }
    create.ok();
    let show = db
        .ds_sync(&["publication", "show", "p1", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(show["all_tables"], false);
    assert_eq!(
        show["operations"],
        serde_json::json!(["insert", "update", "delete", "truncate"])
    );
    let orders = table(&show, "orders");
    assert_eq!(orders["row_filter"], "(status <> 'draft'::text)");
    assert_eq!(orders["columns"], serde_json::Value::Null);
    assert_eq!(orders["replica_identity"], "full");
    let items = table(&show, "items");
    assert_eq!(items["columns"], serde_json::json!(["id", "title"]));
    assert_eq!(items["replica_identity"], "default");
    assert_eq!(items["identity_index"], "items_pkey");
    assert_eq!(items["warning"], serde_json::Value::Null);
    table(&show, "Mixed Case");

    let text = db.ds_sync(&["publication", "show", "p1"]).await.ok();
    assert!(
        text.stdout.contains("(status <> 'draft'::text)"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("default (items_pkey)"),
        "{}",
        text.stdout
    );
}

#[tokio::test]
async fn add_remove_drop() {
    let db = test_db("pub_cycle").await;
    tables(&db).await;
    db.ds_sync(&["publication", "create", "p2", "--tables", "items"])
        .await
        .ok();
    db.ds_sync(&["publication", "add", "p2", "--insert-only", "logs"])
        .await
        .ok();
    let show = db
        .ds_sync(&["publication", "show", "p2", "--output", "json"])
        .await
        .ok()
        .json();
    let logs = table(&show, "logs");
    assert_eq!(logs["insert_only"], true, "{logs}");
    assert_eq!(
        logs["warning"],
        serde_json::Value::Null,
        "inserts need no key: {logs}"
    );
    // Published with its updates by hand, a keyless table is flagged.
    db.client()
        .await
        .batch_execute("CREATE TABLE logs2 (line text); ALTER PUBLICATION p2 ADD TABLE logs2")
        .await
        .unwrap();
    let show = db
        .ds_sync(&["publication", "show", "p2", "--output", "json"])
        .await
        .ok()
        .json();
    let logs2 = table(&show, "logs2");
    assert!(
        logs2["warning"]
            .as_str()
            .unwrap()
            .contains("no primary key"),
        "a table without a key is flagged: {logs2}"
    );
    db.ds_sync(&["publication", "remove", "p2", "--tables", "items"])
        .await
        .ok();
    let show = db
        .ds_sync(&["publication", "show", "p2", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(
        show["tables"].as_array().unwrap().len(),
        2,
        "logs and logs2: {show}"
    );
    db.ds_sync(&["publication", "remove", "p2", "--tables", "logs"])
        .await
        .ok();
    let show = db
        .ds_sync(&["publication", "show", "p2", "--output", "json"])
        .await
        .ok()
        .json();
    assert_eq!(show["tables"].as_array().unwrap().len(), 1, "logs2: {show}");
    db.ds_sync(&["publication", "drop", "p2"]).await.ok();
    let left: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname LIKE 'p2%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "drop removes the insert-only companion too");
    let gone = db
        .ds_sync(&["publication", "show", "p2"])
        .await
        .expect_code(1);
    assert!(
        gone.stderr.contains("publication 'p2' does not exist"),
        "{}",
        gone.stderr
    );
    let again = db
        .ds_sync(&["publication", "drop", "p2"])
        .await
        .expect_code(1);
    assert!(again.stderr.contains("does not exist"), "{}", again.stderr);
}

#[tokio::test]
async fn the_configured_publication_is_the_default_name() {
    let db = test_db("pub_default").await;
    tables(&db).await;
    db.ds_sync(&[
        "publication",
        "create",
        "--tables",
        "items",
        "--publication",
        "from_flag",
    ])
    .await
    .ok();
    db.ds_sync(&["publication", "show", "from_flag"]).await.ok();
}

#[tokio::test]
async fn bad_input_is_refused_with_clear_errors() {
    let db = test_db("pub_errors").await;
    tables(&db).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "publication",
                "create",
                "p\"; DROP TABLE items; --",
                "--tables",
                "items",
            ],
            "invalid publication name",
        ),
        (
            &[
                "publication",
                "create",
                "p3",
                "--tables",
                "items; DROP TABLE orders",
            ],
            "is not a valid table name",
        ),
        (
            &["publication", "create", "p3", "--tables", "nosuch"],
            "table 'nosuch' does not exist",
        ),
        (
            &["publication", "create", "p3", "--tables", "item_titles"],
            "is a view, not a table",
        ),
        (
            &[
                "publication",
                "create",
                "p3",
                "--tables",
                "orders",
                "--row-filter",
                "orders=true); DROP TABLE items; --",
            ],
            "not a single expression",
        ),
        (
            &[
                "publication",
                "create",
                "p3",
                "--tables",
                "orders",
                "--row-filter",
                "items=true",
            ],
            "not in --tables or --insert-only",
        ),
        (
            &[
                "publication",
                "create",
                "p3",
                "--tables",
                "orders",
                "--row-filter",
                "orders=nosuchcol = 1",
            ],
            "nosuchcol",
        ),
    ];
    let filters = crate::kit::has_row_filters(&db.client().await).await;
    for &(args, expected) in cases {
        let run = db.ds_sync(args).await.expect_code(1);
        // Before PostgreSQL 15 a row filter may be refused for the version instead.
        let for_version = !filters
            && args.contains(&"--row-filter")
            && run.stderr.contains(crate::kit::NEEDS_PG15);
        assert!(
            run.stderr.contains(expected) || for_version,
            "{args:?}: expected '{expected}' in:\n{}",
            run.stderr
        );
    }
    let survivors: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('items', 'orders')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(survivors, 2, "no input reached SQL as code");
    db.ds_sync(&["publication", "create", "p4", "--tables", "items"])
        .await
        .ok();
    let dup = db
        .ds_sync(&["publication", "create", "p4", "--tables", "items"])
        .await
        .expect_code(1);
    assert!(
        dup.stderr.contains("already exists") && dup.stderr.contains("publication add"),
        "{}",
        dup.stderr
    );
}
