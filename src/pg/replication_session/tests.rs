use bytes::{BufMut, BytesMut};
use postgres_protocol::message::backend::Message;

use super::*;

/// One backend message from its tag and body, parsed as the session would.
fn backend(tag: u8, body: &[u8]) -> Message {
    let mut buf = BytesMut::new();
    buf.put_u8(tag);
    buf.put_i32(body.len() as i32 + 4);
    buf.put_slice(body);
    Message::parse(&mut buf).unwrap().expect("a whole message")
}

fn auth(code: i32, rest: &[u8]) -> Message {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(rest);
    backend(b'R', &body)
}

fn data_row(values: &[Option<&str>]) -> Message {
    let mut body = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        match v {
            Some(text) => {
                body.extend_from_slice(&(text.len() as i32).to_be_bytes());
                body.extend_from_slice(text.as_bytes());
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    backend(b'D', &body)
}

fn sent(reply: AuthReply) -> Vec<u8> {
    match reply {
        AuthReply::Send(bytes) => bytes.to_vec(),
        other => panic!("expected bytes to send, got {other:?}"),
    }
}

#[test]
fn the_slot_row_becomes_an_exported_slot() {
    let Message::DataRow(row) = data_row(&[
        Some("s1"),
        Some("0/16B3748"),
        Some("00000003-00000002-1"),
        Some("pgoutput"),
    ]) else {
        panic!("not a data row")
    };
    let texts = row_texts(&row).unwrap();
    let slot = ExportedSlot::from_row(&texts).unwrap();
    assert_eq!(slot.slot_name, "s1");
    assert_eq!(slot.consistent_point, Lsn::from_u64(0x16B3748));
    assert_eq!(slot.snapshot_name, "00000003-00000002-1");
    assert_eq!(slot.output_plugin, "pgoutput");
}

#[test]
fn a_row_without_a_snapshot_or_with_a_bad_lsn_is_refused() {
    let Message::DataRow(row) = data_row(&[Some("s1"), Some("0/1"), None, Some("pgoutput")]) else {
        panic!("not a data row")
    };
    let texts = row_texts(&row).unwrap();
    assert_eq!(texts[2], None);
    let err = ExportedSlot::from_row(&texts).unwrap_err();
    assert!(err.contains("NULL"), "{err}");
    let bad = vec![
        Some("s".into()),
        Some("nope".into()),
        Some("x".into()),
        Some("p".into()),
    ];
    assert!(
        ExportedSlot::from_row(&bad)
            .unwrap_err()
            .contains("not an LSN")
    );
    assert!(
        ExportedSlot::from_row(&[])
            .unwrap_err()
            .contains("0 columns")
    );
}

#[test]
fn the_create_command_follows_the_server_version_and_quotes_the_name() {
    assert_eq!(
        create_slot_command("ds_sync", 150_004, false).unwrap(),
        "CREATE_REPLICATION_SLOT \"ds_sync\" LOGICAL pgoutput (SNAPSHOT 'export')"
    );
    assert_eq!(
        create_slot_command("ds_sync", 140_010, false).unwrap(),
        "CREATE_REPLICATION_SLOT \"ds_sync\" LOGICAL pgoutput EXPORT_SNAPSHOT"
    );
    assert_eq!(
        create_slot_command("ds_sync", 170_002, true).unwrap(),
        "CREATE_REPLICATION_SLOT \"ds_sync\" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"
    );
    assert!(create_slot_command("bad name\"; DROP", 150_000, false).is_err());
    assert_eq!(
        alter_failover_command("ds_sync").unwrap(),
        "ALTER_REPLICATION_SLOT \"ds_sync\" (FAILOVER true)"
    );
    assert!(alter_failover_command("bad name").is_err());
}

#[test]
fn versions_read_from_server_version() {
    assert_eq!(version_num("15.4"), 150_004);
    assert_eq!(version_num("14.10 (Debian 14.10-1)"), 140_010);
    assert_eq!(version_num("16devel"), 160_000);
    assert_eq!(version_num("garbage"), 0);
}

#[test]
fn cleartext_and_md5_answer_with_a_password_message() {
    let mut a = Auth::new("app", Some(b"secret"));
    let clear = sent(a.step(&auth(3, &[])).unwrap());
    assert_eq!(clear[0], b'p');
    assert!(clear.ends_with(b"secret\0"));
    let md5 = sent(a.step(&auth(5, &[1, 2, 3, 4])).unwrap());
    let expected = md5_hash(b"app", b"secret", [1, 2, 3, 4]);
    assert!(md5.ends_with(format!("{expected}\0").as_bytes()));
    assert!(!String::from_utf8_lossy(&md5).contains("secret"));
    assert_eq!(a.step(&auth(0, &[])).unwrap(), AuthReply::Done);
}

#[test]
fn scram_starts_with_the_mechanism_and_a_client_nonce() {
    let mut a = Auth::new("app", Some(b"secret"));
    let first = sent(a.step(&auth(10, b"SCRAM-SHA-256\0\0")).unwrap());
    let text = String::from_utf8_lossy(&first);
    assert!(text.contains("SCRAM-SHA-256"), "{text}");
    assert!(text.contains("n,,n=,r="), "{text}");
    assert!(!text.contains("secret"));
    // A server-first message with a nonce that does not extend ours is refused.
    let err = a.step(&auth(11, b"r=other,s=c2FsdA==,i=4096")).unwrap_err();
    assert!(matches!(err, AuthFailure::Failed(_)), "{err:?}");
}

#[test]
fn missing_passwords_and_unknown_methods_are_clear_failures() {
    let mut a = Auth::new("app", None);
    assert_eq!(a.step(&auth(3, &[])).unwrap_err(), AuthFailure::NoPassword);
    assert_eq!(
        a.step(&auth(10, b"SCRAM-SHA-256\0\0")).unwrap_err(),
        AuthFailure::NoPassword
    );
    let mut b = Auth::new("app", Some(b"x"));
    assert!(matches!(
        b.step(&auth(7, &[])).unwrap_err(),
        AuthFailure::Unsupported(m) if m == "GSSAPI"
    ));
    assert!(matches!(
        b.step(&auth(10, b"SCRAM-SHA-256-PLUS\0\0")).unwrap_err(),
        AuthFailure::Unsupported(_)
    ));
    assert!(matches!(
        b.step(&auth(11, b"r=x")).unwrap_err(),
        AuthFailure::Failed(_)
    ));
    assert_eq!(b.step(&backend(b'Z', b"I")).unwrap(), AuthReply::Wait);
}

#[test]
fn error_responses_keep_code_message_and_detail() {
    let body = b"SERROR\0VERROR\0C42710\0Mreplication slot \"s\" already exists\0Dsome detail\0\0";
    let Message::ErrorResponse(e) = backend(b'E', body) else {
        panic!("not an error")
    };
    let error = ServerError::from_fields(&e);
    assert_eq!(error.code, "42710");
    assert_eq!(error.severity, "ERROR");
    assert_eq!(error.detail.as_deref(), Some("some detail"));
    assert_eq!(
        error.to_string(),
        "ERROR 42710: replication slot \"s\" already exists (some detail)"
    );
}
