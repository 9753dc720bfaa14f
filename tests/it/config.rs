//! Configuration fixtures: exact messages, every problem at once, layering, secrets never printed.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crmsync::config::{Config, ConfigError, Schedule};
use crmsync_connectors::settings::MapSecrets;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(name)
}

fn secrets() -> MapSecrets {
    MapSecrets(BTreeMap::from(
        [
            ("SF_SECRET", "sf-s3cr3t"),
            ("ZOHO_SECRET", "zoho-s3cr3t"),
            ("ZOHO_REFRESH", "zoho-refresh-s3cr3t"),
            ("CRMSYNC_API_TOKEN", "api-s3cr3t"),
            ("SF_CLIENT_SECRET", "a"),
            ("SF_REFRESH_TOKEN", "b"),
            ("SF_WEBHOOK_SECRET", "c"),
            ("ZOHO_CLIENT_SECRET", "d"),
            ("ZOHO_REFRESH_TOKEN", "e"),
            ("ZOHO_WEBHOOK_TOKEN", "f"),
            ("D365_CLIENT_SECRET", "g"),
            ("D365_WEBHOOK_KEY", "h"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    ))
}

fn load(name: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> =
        env.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    Config::load(Some(&fixture(name)), Some(env), &secrets())
}

fn problems(name: &str) -> Vec<String> {
    match load(name, &[]) {
        Err(ConfigError::Invalid(problems)) => problems.iter().map(ToString::to_string).collect(),
        Err(other) => panic!("{name}: expected validation problems, got {other}"),
        Ok(_) => panic!("{name}: expected validation problems, got a valid config"),
    }
}

#[test]
fn valid_config_loads_with_implicit_jobs_and_expanded_routes() {
    let config = load("valid.toml", &[]).unwrap();
    assert_eq!(config.connections.len(), 2);
    let sf = &config.connections[&"sf_prod".into()];
    assert_eq!(sf.settings.poll_interval, std::time::Duration::from_secs(30));
    assert_eq!(config.jobs.len(), 2, "one implicit job per connection");
    assert!(config.jobs.iter().all(|job| job.implicit));
    assert_eq!(config.jobs[0].schedule, Schedule::Every(std::time::Duration::from_secs(30)));
    let route = &config.routes[0];
    assert_eq!(route.from.len(), 2);
    assert_eq!(route.to.len(), 2);
}

#[test]
fn unknown_keys_are_rejected_with_a_suggestion() {
    assert_eq!(
        problems("unknown_key.toml"),
        [
            "daemon.shutdown_grase: unknown key (did you mean `shutdown_grace`?)",
            "connections.sf_prod.pol_interval: unknown key (did you mean `poll_interval`?)",
        ]
    );
}

#[test]
fn a_bad_duration_names_the_key_and_the_value() {
    assert_eq!(
        problems("bad_duration.toml"),
        ["connections.sf_prod.poll_interval: invalid duration \"2 minuets\" (expected e.g. \"2m\")"]
    );
}

#[test]
fn a_missing_secret_names_the_variable() {
    assert_eq!(
        problems("missing_secret.toml"),
        [
            "connections.sf_prod.auth.refresh_token: secret from environment variable SF_REFRESH_TOKEN_NOT_SET is not set"
        ]
    );
}

#[test]
fn five_mistakes_are_all_reported() {
    assert_eq!(
        problems("several_errors.toml"),
        [
            "daemon.listen: invalid socket address \"localhost-8080\" (expected e.g. \"127.0.0.1:9090\")",
            "connections.sf_prod.poll_interval: invalid duration \"2 minuets\" (expected e.g. \"2m\")",
            "connections.zoho_eu.kind: unknown kind \"zohoo\" (expected salesforce, zoho or dynamics365)",
            "routes[0].entity: unknown entity \"invoice\" (expected one of account, lead, opportunity, order)",
            "metrics.fx.USD: invalid exchange rate \"-1\" (expected a positive decimal, e.g. \"1.08\")",
        ]
    );
}

#[test]
fn default_and_example_configs_validate() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Config::load(None, Some(HashMap::new()), &secrets()).unwrap();
    let example = Config::load(Some(&root.join("config/example.toml")), Some(HashMap::new()), &secrets()).unwrap();
    assert_eq!(example.connections.len(), 3);
    assert_eq!(example.jobs.len(), 2);
}

#[test]
fn environment_overrides_win_over_the_file() {
    let config = load(
        "valid.toml",
        &[("CRMSYNC__CONNECTIONS__SF_PROD__POLL_INTERVAL", "45s"), ("CRMSYNC__DAEMON__SHUTDOWN_GRACE", "3s")],
    )
    .unwrap();
    assert_eq!(config.connections[&"sf_prod".into()].settings.poll_interval, std::time::Duration::from_secs(45));
    assert_eq!(config.daemon.shutdown_grace, std::time::Duration::from_secs(3));
}

#[test]
fn secrets_never_appear_in_debug_or_summary() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config =
        Config::load(Some(&root.join("tests/fixtures/config/valid.toml")), Some(HashMap::new()), &secrets()).unwrap();
    let printed = format!("{config:?}\n{}", config.summary());
    for secret in ["sf-s3cr3t", "zoho-s3cr3t", "zoho-refresh-s3cr3t"] {
        assert!(!printed.contains(secret), "secret {secret} leaked");
    }
}

#[test]
fn the_store_page_cache_defaults_to_16_mib_and_is_set_in_mib() {
    assert_eq!(load("valid.toml", &[]).unwrap().daemon.store_cache_mib, 16);
    let set = load("valid.toml", &[("CRMSYNC__DAEMON__STORE_CACHE_MIB", "64")]).unwrap();
    assert_eq!(set.daemon.store_cache_mib, 64);
    match load("valid.toml", &[("CRMSYNC__DAEMON__STORE_CACHE_MIB", "0")]) {
        Err(ConfigError::Invalid(problems)) => {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            assert_eq!(problems, ["daemon.store_cache_mib: 0 is out of range (expected 1 to 1048576 MiB)"]);
        }
        other => panic!("expected the zero cache refused, got {other:?}"),
    }
}

#[test]
fn zero_and_absurd_intervals_are_refused_with_their_bound_and_why() {
    let problems = problems("bad_intervals.toml");
    assert_eq!(
        problems[0],
        "daemon.drift_sweep_interval: 0s is too short: the minimum is 5m (a sweep lists every id of every entity; use \"off\" to disable it)"
    );
    let expected = [
        ("connections.sf_eu.poll_interval: too long: the maximum is 30days", "typo"),
        ("connections.sf_prod.poll_interval: 0s is too short: the minimum is 10s", "daily API allowance"),
        ("jobs[0].schedule.every: 0s is too short: the minimum is 10s", "webhooks"),
        ("jobs[1].schedule.cron: \"* * * * * *\" fires 1s apart: the minimum is 10s", "API allowance"),
    ];
    assert_eq!(problems.len(), 1 + expected.len(), "{problems:#?}");
    for ((start, why), problem) in expected.iter().zip(&problems[1..]) {
        assert!(problem.starts_with(start) && problem.contains(why), "{problem}");
    }
}

#[test]
fn secret_files_must_be_small_regular_files() {
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge");
    std::fs::write(&huge, "x".repeat(17 * 1024)).unwrap();
    for (path, reason) in
        [("/dev/zero".to_owned(), "not a regular file"), (huge.display().to_string(), "larger than 16 KiB")]
    {
        let table: toml::Table =
            toml::from_str(&format!("[daemon]\n[api]\ntoken = {{ file = {path:?} }}\n[reconcile]\n[metrics]\n"))
                .unwrap();
        match Config::from_table(&table, &secrets()) {
            Err(ConfigError::Invalid(problems)) => {
                assert_eq!(problems.len(), 1);
                let problem = problems[0].to_string();
                assert!(
                    problem.starts_with("api.token: cannot read secret file") && problem.contains(reason),
                    "{problem}"
                );
            }
            other => panic!("{path}: expected a problem, got {other:?}"),
        }
    }
}
