//! Templates, routing and stream-name safety.

use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::pgoutput::{Column, Relation, ReplicaIdentity};

fn template(source: &str) -> Template {
    Template::parse(source).unwrap_or_else(|err| panic!("{source:?} should parse: {err}"))
}

/// `schema.name (id, session_id, note)`, keyed by `id`.
fn table(schema: &str, name: &str) -> TableInfo {
    let columns = ["id", "session_id", "note"]
        .iter()
        .map(|name| Column {
            flags: u8::from(*name == "id"),
            name: (*name).to_owned(),
            type_oid: 25,
            type_modifier: -1,
        })
        .collect();
    let relation = Relation {
        oid: 1,
        namespace: schema.to_owned(),
        name: name.to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns,
    };
    TableInfo::new(Arc::new(relation), None)
}

fn row(operation: Operation, columns: Value) -> RowMessage {
    let Value::Object(columns) = columns else {
        panic!("columns must be an object")
    };
    RowMessage {
        operation,
        message: Value::Null,
        extra_columns: columns,
    }
}

fn router(per_table: &[(&str, &str)]) -> Router {
    let per_table = per_table
        .iter()
        .map(|(table, source)| ((*table).to_owned(), template(source)))
        .collect();
    Router::new(template("pg-{table}"), per_table).expect("distinct tables")
}

fn stream(router: &Router, table: &TableInfo, columns: Value) -> String {
    let row = row(Operation::Insert, columns);
    router
        .stream_for(table, &row)
        .unwrap_or_else(|err| panic!("routing {columns:?} failed: {err}", columns = row.columns()))
}

#[test]
fn default_template_names_one_stream_per_table() {
    let router = router(&[]);
    let items = table("public", "items");
    assert_eq!(stream(&router, &items, json!({"id": "1"})), "pg-items");
    assert_eq!(
        stream(&router, &table("app", "items"), json!({})),
        "pg-items"
    );
    let schema = Router::new(template("{schema}/{table}"), Vec::new()).expect("router");
    assert_eq!(
        stream(&schema, &table("app", "my items"), json!({})),
        "app/my items"
    );
}

#[test]
fn per_table_routes_match_the_type_name_or_the_qualified_name() {
    let router = router(&[
        ("items", "items-stream"),
        ("app.orders", "orders"),
        ("public.users", "u"),
    ]);
    assert_eq!(
        stream(&router, &table("public", "items"), json!({})),
        "items-stream"
    );
    assert_eq!(
        stream(&router, &table("app", "items"), json!({})),
        "pg-items",
        "other schema"
    );
    assert_eq!(
        stream(&router, &table("app", "orders"), json!({})),
        "orders"
    );
    assert_eq!(stream(&router, &table("public", "users"), json!({})), "u");
    let template_for = router.template_for(&table("public", "items"));
    assert_eq!(template_for.as_str(), "items-stream");
}

#[test]
fn duplicate_routes_are_refused() {
    let routes = vec![
        ("items".to_owned(), template("a")),
        ("public.items".to_owned(), template("b")),
    ];
    let err = Router::new(template("pg-{table}"), routes);
    assert_eq!(
        err,
        Err(RouteError::DuplicateRoute {
            table: "items".to_owned()
        })
    );
}

#[test]
fn column_templates_fan_rows_out_by_value() {
    let router = router(&[("items", "sessions/{session_id}")]);
    let items = table("public", "items");
    let cases = [
        (json!("42"), "sessions/42"),
        (json!(42), "sessions/42"),
        (json!(true), "sessions/true"),
        (json!(1.5), "sessions/1.5"),
        (json!(null), "sessions/_null_"),
        (json!("_null_"), "sessions/%5Fnull_"),
        (json!(""), "sessions/_empty_"),
        (json!("_empty_"), "sessions/%5Fempty_"),
        (json!("a/b"), "sessions/a%2Fb"),
        (json!("50%"), "sessions/50%25"),
        (json!("a%2Fb"), "sessions/a%252Fb"),
        (json!("%5Fnull_"), "sessions/%255Fnull_"),
        (json!(".."), "sessions/%2E%2E"),
        (json!("."), "sessions/%2E"),
        (json!("%2E"), "sessions/%252E"),
        (json!("..."), "sessions/..."),
        (json!("x?y#z"), "sessions/x?y#z"),
        (json!("a b@c.com"), "sessions/a b@c.com"),
        (json!("tab\there\n"), "sessions/tab\there\n"),
        (json!("héllo wörld"), "sessions/héllo wörld"),
        (json!("A-z_0.9~"), "sessions/A-z_0.9~"),
        (json!({"a": [1]}), "sessions/{\"a\":[1]}"),
    ];
    for (value, expected) in cases {
        let got = stream(&router, &items, json!({"id": "1", "session_id": value}));
        assert_eq!(got, expected, "session_id = {value}");
    }
}

#[test]
fn missing_column_names_the_operation_and_how_to_fix_it() {
    let router = router(&[("items", "sessions/{session_id}")]);
    let delete = row(Operation::Delete, json!({"id": "1"}));
    let err = router
        .stream_for(&table("public", "items"), &delete)
        .expect_err("the key tuple lacks session_id");
    let expected = RouteError::ColumnUnavailable {
        table: "public.items".to_owned(),
        column: "session_id".to_owned(),
        operation: Operation::Delete,
    };
    assert_eq!(err, expected);
    assert!(
        err.to_string().contains("Set REPLICA IDENTITY FULL"),
        "{err}"
    );
}

#[test]
fn validate_rejects_placeholders_for_columns_the_table_lacks() {
    let router = router(&[("items", "s/{session_id}/{table}"), ("other", "o/{nope}")]);
    assert_eq!(router.validate(&table("public", "items")), Ok(()));
    assert_eq!(
        router.validate(&table("public", "third")),
        Ok(()),
        "default template"
    );
    let err = router.validate(&table("public", "other"));
    let expected = RouteError::UnknownColumn {
        table: "public.other".to_owned(),
        column: "nope".to_owned(),
        template: "o/{nope}".to_owned(),
    };
    assert_eq!(err, Err(expected));
}

#[test]
fn templates_list_their_columns_and_reserve_table_and_schema() {
    let parsed = template("{schema}.{table}/{a}-{b}");
    assert_eq!(parsed.columns().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(parsed.as_str(), "{schema}.{table}/{a}-{b}");
}

#[test]
fn bad_templates_are_refused() {
    let cases = [
        ("pg-{table", '{', 3),
        ("pg-table}", '}', 8),
        ("a{b{c}}", '{', 1),
        ("{{table}}", '{', 0),
    ];
    for (source, brace, position) in cases {
        let template = source.to_owned();
        let expected = RouteError::UnbalancedBrace {
            template,
            brace,
            position,
        };
        assert_eq!(Template::parse(source), Err(expected), "{source:?}");
    }
    let empty = Template::parse("a{}b");
    assert_eq!(
        empty,
        Err(RouteError::EmptyPlaceholder {
            template: "a{}b".to_owned(),
            position: 1
        })
    );
    for source in [
        "",
        "/pg-{table}",
        "pg/",
        "a//{table}",
        "a/../{table}",
        "./x",
        "a/.",
    ] {
        let err = Template::parse(source).expect_err(source);
        assert!(
            matches!(err, RouteError::InvalidStreamName { .. }),
            "{source:?}: {err:?}"
        );
    }
    for (source, character) in [
        ("pg {table}", ' '),
        ("a?b", '?'),
        ("a#b", '#'),
        ("a%2F", '%'),
        ("é", 'é'),
    ] {
        let err = Template::parse(source);
        let expected = RouteError::InvalidCharacter {
            template: source.to_owned(),
            character,
        };
        assert_eq!(err, Err(expected), "{source:?}");
    }
    assert_eq!(
        template("x:{table}@v1,(a)").as_str(),
        "x:{table}@v1,(a)",
        "sub-delims are fine"
    );
}

#[test]
fn route_options_split_at_the_first_equals_sign() {
    let (table, parsed) = parse_route_option("items=items-stream").expect("valid");
    assert_eq!((table.as_str(), parsed.as_str()), ("items", "items-stream"));
    let (table, parsed) = parse_route_option("app.items=s/{a=b}").expect("valid");
    assert_eq!(
        (table.as_str(), parsed.columns().collect::<Vec<_>>()),
        ("app.items", vec!["a=b"])
    );
    for option in ["items", "=x", ".items=x", "app.=x", "my table=x"] {
        let err = parse_route_option(option).expect_err(option);
        assert!(
            matches!(err, RouteError::InvalidRouteOption { .. }),
            "{option:?}: {err:?}"
        );
        assert!(
            err.to_string().contains("Write it as TABLE=TEMPLATE"),
            "{err}"
        );
    }
    assert!(matches!(
        parse_route_option("items="),
        Err(RouteError::InvalidStreamName { .. })
    ));
}

#[test]
fn the_documented_encoding_is_what_the_code_does() {
    for fragment in [
        "a%2Fb",
        "%25",
        "_null_",
        "_empty_",
        "%5Fnull_",
        "%2E",
        "encodeURIComponent",
    ] {
        assert!(
            STREAM_NAME_DOC.contains(fragment),
            "{fragment} undocumented"
        );
    }
    assert_eq!(encode_value(&Value::Null), NULL_VALUE);
    assert_eq!(encode_text(""), EMPTY_VALUE);
}

#[test]
fn distinct_values_never_share_a_name_and_never_add_a_segment() {
    let mut values: Vec<Value> = [
        "",
        "_empty_",
        "%5Fempty_",
        "_null_",
        "%5Fnull_",
        ".",
        "..",
        "%2E",
        "%2E%2E",
        "/",
        "%2F",
        "a/b",
        "a%2Fb",
        "a%252Fb",
        "%",
        "%25",
        "a b",
        "a%20b",
        "...",
        "./",
        "/..",
    ]
    .iter()
    .map(|v| json!(v))
    .collect();
    values.push(Value::Null);
    let mut seen: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    for value in values {
        let text = encode_value(&value);
        assert!(
            !text.is_empty() && !text.contains('/') && text != "." && text != "..",
            "{value} became {text:?}, which is not one plain path segment"
        );
        if let Some(earlier) = seen.insert(text.clone(), value.clone()) {
            panic!("{earlier} and {value} both became {text:?}");
        }
    }
}
