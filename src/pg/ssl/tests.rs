use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn resolve(url: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<SslOptions, String> {
    SslOptions::resolve(&extract(url).ssl, env)
}

#[test]
fn url_parameters_are_taken_out_and_the_rest_kept() {
    let e = extract(
        "postgres://u:p%3Fw@h:5/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem&sslcert=c&sslkey=k",
    );
    assert_eq!(e.rest, "postgres://u:p%3Fw@h:5/db?application_name=x");
    assert_eq!(e.ssl.mode.as_deref(), Some("verify-full"));
    assert_eq!(e.ssl.root_cert.as_deref(), Some("/etc/ca.pem"));
    assert_eq!(e.ssl.cert.as_deref(), Some("c"));
    assert_eq!(e.ssl.key.as_deref(), Some("k"));
    assert!(e.keys.contains(&"application_name".to_owned()));
    let only = extract("postgresql://u@h/db?sslmode=require");
    assert_eq!(only.rest, "postgresql://u@h/db");
    let none = extract("postgres://u:pw?x@h/db");
    assert_eq!(
        none.rest, "postgres://u:pw?x@h/db",
        "a ? in the password is not a query"
    );
    assert_eq!(none.ssl, SslParams::default());
}

#[test]
fn key_value_parameters_are_taken_out_and_the_rest_kept() {
    let e = extract(
        "host=h user=u password='a b\\'c' sslmode = verify-ca sslrootcert='/my certs/ca.pem' dbname=d",
    );
    assert_eq!(e.rest, "host=h user=u password='a b\\'c' dbname=d");
    assert_eq!(e.ssl.mode.as_deref(), Some("verify-ca"));
    assert_eq!(e.ssl.root_cert.as_deref(), Some("/my certs/ca.pem"));
    let bad = "host=h user=u password='unterminated";
    assert_eq!(
        extract(bad).rest,
        bad,
        "left whole for tokio-postgres to refuse"
    );
}

#[test]
fn the_default_is_prefer_without_verification() {
    let o = resolve("postgres://u@h/db", &no_env).unwrap();
    assert_eq!(o.mode, SslMode::Prefer);
    assert_eq!(o.verify(), Verify::None);
    assert_eq!(o.steps(false), [Step::TlsIfOffered, Step::Plain]);
    assert_eq!(o.steps(true), [Step::Plain], "no TLS over a Unix socket");
}

#[test]
fn the_url_wins_over_the_environment() {
    let env = |k: &str| match k {
        "PGSSLMODE" => Some("verify-full".to_owned()),
        "PGSSLROOTCERT" => Some("/env/ca.pem".to_owned()),
        _ => None,
    };
    let o = resolve("postgres://u@h/db", &env).unwrap();
    assert_eq!(o.mode, SslMode::VerifyFull);
    assert_eq!(o.root_cert, Some(RootCert::File("/env/ca.pem".into())));
    let o = resolve(
        "postgres://u@h/db?sslmode=require&sslrootcert=/url/ca.pem",
        &env,
    )
    .unwrap();
    assert_eq!(o.mode, SslMode::Require);
    assert_eq!(o.root_cert, Some(RootCert::File("/url/ca.pem".into())));
}

#[test]
fn require_checks_the_chain_only_when_a_root_certificate_is_given() {
    let plain = resolve("postgres://u@h/db?sslmode=require", &no_env).unwrap();
    assert_eq!(
        plain.verify(),
        Verify::None,
        "libpq: require = encrypt only"
    );
    let with_root = resolve(
        "postgres://u@h/db?sslmode=require&sslrootcert=ca.pem",
        &no_env,
    )
    .unwrap();
    assert_eq!(with_root.verify(), Verify::Chain, "libpq: like verify-ca");
    let ca = resolve(
        "postgres://u@h/db?sslmode=verify-ca&sslrootcert=ca.pem",
        &no_env,
    )
    .unwrap();
    assert_eq!(ca.verify(), Verify::Chain);
    let full = resolve(
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=ca.pem",
        &no_env,
    )
    .unwrap();
    assert_eq!(full.verify(), Verify::Full);
    assert_eq!(full.steps(false), [Step::Tls]);
}

#[test]
fn verify_modes_need_a_root_certificate() {
    let e = resolve("postgres://u@h/db?sslmode=verify-full", &no_env).unwrap_err();
    assert!(e.contains("needs a root certificate"), "{e}");
    assert!(e.contains("sslrootcert=system"), "{e}");
}

#[test]
fn system_roots_mean_verify_full() {
    let o = resolve("postgres://u@h/db?sslrootcert=system", &no_env).unwrap();
    assert_eq!(o.mode, SslMode::VerifyFull);
    assert_eq!(o.root_cert, Some(RootCert::System));
    let e = resolve(
        "postgres://u@h/db?sslrootcert=system&sslmode=require",
        &no_env,
    )
    .unwrap_err();
    assert!(e.contains("needs sslmode=verify-full"), "{e}");
}

#[test]
fn libpq_default_files_under_home_are_used_when_present() {
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join(".postgresql");
    std::fs::create_dir(&dir).unwrap();
    for f in ["root.crt", "postgresql.crt", "postgresql.key"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    let h = home.path().display().to_string();
    let env = move |k: &str| (k == "HOME").then(|| h.clone());
    let o = resolve("postgres://u@h/db?sslmode=verify-full", &env).unwrap();
    assert_eq!(o.root_cert, Some(RootCert::File(dir.join("root.crt"))));
    assert_eq!(o.cert, Some(dir.join("postgresql.crt")));
    assert_eq!(o.key, Some(dir.join("postgresql.key")));
    let disabled = resolve("postgres://u@h/db?sslmode=disable", &env).unwrap();
    assert_eq!(disabled.root_cert, None, "disable reads no files");
}

#[test]
fn a_client_certificate_needs_its_key() {
    let e = resolve("postgres://u@h/db?sslcert=c.pem", &no_env).unwrap_err();
    assert!(e.contains("sslkey"), "{e}");
    let e = resolve("postgres://u@h/db?sslkey=k.pem", &no_env).unwrap_err();
    assert!(e.contains("sslcert"), "{e}");
    let o = resolve("postgres://u@h/db?sslcert=c.pem&sslkey=k.pem", &no_env).unwrap();
    assert_eq!(o.cert, Some(PathBuf::from("c.pem")));
}

#[test]
fn bad_values_are_named() {
    let e = resolve("postgres://u@h/db?sslmode=on", &no_env).unwrap_err();
    assert!(e.contains("\"on\" is not one of"), "{e}");
    let e = resolve("postgres://u@h/db?sslnegotiation=direct", &no_env).unwrap_err();
    assert!(e.contains("sslnegotiation"), "{e}");
    assert!(resolve("postgres://u@h/db?sslnegotiation=postgres", &no_env).is_ok());
}

#[test]
fn fallback_follows_libpq() {
    // allow: plain refused → TLS; prefer: a TLS attempt refused → plain; a server that
    // declined TLS was already tried plain; an unreachable server is not tried again.
    assert!(SslOptions::retry_after(Step::Plain, false, true));
    assert!(SslOptions::retry_after(Step::TlsIfOffered, true, true));
    assert!(!SslOptions::retry_after(Step::TlsIfOffered, false, true));
    assert!(!SslOptions::retry_after(Step::Plain, false, false));
    let allow = resolve("postgres://u@h/db?sslmode=allow", &no_env).unwrap();
    assert_eq!(allow.steps(false), [Step::Plain, Step::Tls]);
}

#[test]
fn env_vars_round_trip() {
    let o = resolve(
        "postgres://u@h/db?sslmode=verify-ca&sslrootcert=/ca.pem&sslcert=/c.pem&sslkey=/k.pem",
        &no_env,
    )
    .unwrap();
    let vars = o.env_vars();
    let env = move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(resolve("postgres://u@h/db", &env).unwrap(), o);
}
