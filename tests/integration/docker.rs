//! `docker/`: the compose file parsed as YAML and checked against the image and the CLI
//! (the services, healthchecks and start order; every environment variable ds-sync is given
//! is one it reads). Running the image is `docker/test.sh`'s job.

use std::collections::BTreeSet;

use clap::CommandFactory;
use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE: &str = include_str!("../../docker/compose.yaml");
const DOCKERFILE: &str = include_str!("../../docker/Dockerfile");
const DS_SERVER_DOCKERFILE: &str = include_str!("../../docker/ds-server.Dockerfile");

/// Variables ds-sync reads that are not a flag's `env`.
const OTHER_ENV: [&str; 3] = ["DATABASE_URL", "PGPASSWORD", "RUST_LOG"];

fn cli_env_names(cmd: &clap::Command, out: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments() {
        if let Some(env) = arg.get_env() {
            out.insert(env.to_string_lossy().into_owned());
        }
    }
    for sub in cmd.get_subcommands() {
        cli_env_names(sub, out);
    }
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap_or_else(|| panic!("expected a list, got {y:?}"))
        .iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The JSON-form array of a Dockerfile instruction, e.g. `ENTRYPOINT ["a", "b"]`.
fn instruction_array(dockerfile: &str, instruction: &str) -> Vec<String> {
    let line = dockerfile
        .lines()
        .find(|l| l.starts_with(instruction))
        .unwrap_or_else(|| panic!("no {instruction} in the Dockerfile"));
    let json = &line[line.find('[').expect("JSON form")..];
    serde_json::from_str(json).expect("a JSON array")
}

#[test]
fn compose_starts_ds_sync_after_healthy_servers_with_env_it_reads() {
    let docs = YamlLoader::load_from_str(COMPOSE).expect("compose.yaml is YAML");
    let services = &docs[0]["services"];
    for name in ["postgres", "ds-server", "ds-sync"] {
        assert!(
            !services[name]["healthcheck"]["test"].is_badvalue(),
            "service {name} has a healthcheck"
        );
    }
    let pg = &services["postgres"];
    assert!(pg["image"].as_str().unwrap().starts_with("postgres:17"));
    assert!(strings(&pg["command"]).contains(&"wal_level=logical".to_owned()));

    let sync = &services["ds-sync"];
    assert_eq!(
        sync["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    for dep in ["postgres", "ds-server"] {
        assert_eq!(
            sync["depends_on"][dep]["condition"].as_str(),
            Some("service_healthy"),
            "ds-sync waits for {dep}"
        );
    }
    let entrypoint = instruction_array(DOCKERFILE, "ENTRYPOINT");
    let health = strings(&sync["healthcheck"]["test"]);
    assert_eq!(
        health,
        vec!["CMD".to_owned(), entrypoint[0].clone(), "health".to_owned()]
    );
    assert_eq!(
        instruction_array(DOCKERFILE, "  CMD"),
        vec![entrypoint[0].clone(), "health".to_owned()],
        "the image's HEALTHCHECK is ds-sync health"
    );
    let run = strings(&sync["command"]);
    assert_eq!(
        run,
        instruction_array(DOCKERFILE, "CMD [\"run"),
        "command matches the image's CMD"
    );

    let mut known = BTreeSet::new();
    cli_env_names(&ds_sync::cli::args::Cli::command(), &mut known);
    known.extend(OTHER_ENV.iter().map(|s| (*s).to_owned()));
    let env = sync["environment"].as_hash().expect("environment as a map");
    for (key, value) in env {
        let key = key.as_str().unwrap();
        assert!(
            known.contains(key),
            "ds-sync does not read {key}; it reads {known:?}"
        );
        assert!(value.as_str().is_some(), "{key} is a string");
    }
    let env_value = |k: &str| {
        env[&Yaml::String(k.to_owned())]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(env_value("POSTGRES_URL").contains("@postgres:5432/"));
    assert_eq!(env_value("DS_SERVER_URL"), "http://ds-server:4437");
    assert!(env_value("DS_SYNC_LISTEN").ends_with(":9464"));

    let ds = &services["ds-server"];
    assert_eq!(
        ds["build"]["dockerfile"].as_str(),
        Some("ds-server.Dockerfile")
    );
    let bind = ds["environment"]["DS_SERVER__BIND_ADDRESS"]
        .as_str()
        .unwrap();
    assert_eq!(bind, "0.0.0.0:4437");
    assert!(
        strings(&ds["healthcheck"]["test"])
            .iter()
            .any(|a| a.ends_with(":4437/healthz"))
    );
}

#[test]
fn the_image_runs_as_non_root_with_bases_as_build_arguments() {
    for arg in ["ARG BUILDER_IMAGE=", "ARG RUNTIME_IMAGE="] {
        assert!(DOCKERFILE.contains(arg), "{arg}");
        assert!(DS_SERVER_DOCKERFILE.contains(arg), "{arg}");
    }
    assert!(DOCKERFILE.contains("FROM ${RUNTIME_IMAGE} AS runtime"));
    assert!(DOCKERFILE.contains("cargo build --release --locked"));
    assert!(DOCKERFILE.contains("USER 65532:65532"));
    assert!(DOCKERFILE.contains("ENV DS_SYNC_LISTEN=0.0.0.0:9464"));
    assert!(DS_SERVER_DOCKERFILE.contains("--version \"${DS_SERVER_VERSION}\""));
    assert!(DS_SERVER_DOCKERFILE.contains("ARG DS_SERVER_VERSION=0.3.0"));
}
