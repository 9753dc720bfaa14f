//! Connection settings and the reader that builds them from configuration tables.
//!
//! Configuration is validated by walking TOML tables with [`TableReader`], which never stops at the
//! first mistake: every problem is collected as a [`ConfigProblem`] with its full key path and the
//! offending value, and unknown keys are reported with the closest valid key. Each vendor module
//! reads its own keys (`salesforce::SalesforceConfig::read`), so vendor knowledge stays in its folder.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use crate::canonical::{ConnectionId, Entity, Timestamp, Vocabulary};
use crate::http::{HttpSettings, RetryPolicy};

/// One configuration mistake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path (`connections.sf_prod.poll_interval`).
    pub path: String,
    /// What is wrong, with the offending value.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Where `{ env = "…" }` and `{ file = "…" }` secrets are read from (injected, so tests need no real env).
pub trait SecretSource {
    /// Returns an environment variable.
    fn env(&self, name: &str) -> Option<String>;
    /// Reads a file.
    fn file(&self, path: &std::path::Path) -> std::io::Result<String>;
}

/// The process environment and file system.
pub struct SystemSecrets;

impl SecretSource for SystemSecrets {
    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
    fn file(&self, path: &std::path::Path) -> std::io::Result<String> {
        read_secret_file(path)
    }
}

/// Expands `${NAME}` in the path of a `{ file = "…" }` secret from the environment: systemd's
/// `LoadCredential=name:/path` hands the service its credentials as files in
/// `$CREDENTIALS_DIRECTORY`, so `{ file = "${CREDENTIALS_DIRECTORY}/name" }` reads them there.
pub fn expand_secret_path(path: &str, secrets: &dyn SecretSource) -> Result<PathBuf, String> {
    let mut expanded = String::with_capacity(path.len());
    let mut rest = path;
    while let Some((before, after)) = rest.split_once("${") {
        expanded.push_str(before);
        let (name, remainder) =
            after.split_once('}').ok_or_else(|| format!("secret file path {path:?} has an unclosed ${{"))?;
        match secrets.env(name) {
            Some(value) if !value.is_empty() => expanded.push_str(&value),
            _ if name == "CREDENTIALS_DIRECTORY" => {
                return Err(format!(
                    "secret file path {path:?} needs $CREDENTIALS_DIRECTORY, which is not set (systemd sets it \
                     for a unit with LoadCredential=)"
                ));
            }
            _ => return Err(format!("secret file path {path:?} needs ${name}, which is not set")),
        }
        rest = remainder;
    }
    expanded.push_str(rest);
    Ok(PathBuf::from(expanded))
}

/// Largest secret file accepted: a 8192-bit RSA key in PEM is about 6.5 KB; anything far larger is a
/// mistake (`{ file = "/dev/zero" }`, a log file) that must not be read whole into memory.
pub const MAX_SECRET_FILE_BYTES: u64 = 16 * 1024;

/// Reads a secret file: a regular file of at most [`MAX_SECRET_FILE_BYTES`], as UTF-8.
pub fn read_secret_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {} KiB, which no credential is", MAX_SECRET_FILE_BYTES / 1024),
        ));
    }
    String::from_utf8(bytes).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// Returns the permission bits of a secret file that group or other users can read, `None` when
/// only its owner can (or the file cannot be inspected: reading it reports that).
pub fn loose_secret_file_mode(path: &std::path::Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
        (mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Shows a URL without the credentials it may embed (`https://user:pass@host` → `https://[redacted]@host`).
pub fn redact_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    let mut shown = url.clone();
    // Both setters fail only for URLs that cannot have credentials, which this one has.
    let _ = shown.set_password(None);
    let _ = shown.set_username("[redacted]");
    shown.to_string().replace("%5Bredacted%5D", "[redacted]")
}

/// Like [`redact_url`] for text that may not parse as a URL.
fn redact_url_text(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(url) => redact_url(&url),
        Err(_) => match text.split_once("://").and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?.1))) {
            Some((scheme, rest)) => format!("{scheme}://[redacted]@{rest}"),
            None => text.to_owned(),
        },
    }
}

fn quoted(path: &std::path::Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A fixed map of variables and no files (tests).
pub struct MapSecrets(pub BTreeMap<String, String>);

impl SecretSource for MapSecrets {
    fn env(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
    fn file(&self, path: &std::path::Path) -> std::io::Result<String> {
        read_secret_file(path)
    }
}

/// Reads one TOML table, collecting problems instead of failing.
pub struct TableReader<'a> {
    path: String,
    table: &'a toml::Table,
    used: BTreeSet<String>,
    problems: &'a mut Vec<ConfigProblem>,
    secrets: &'a dyn SecretSource,
}

impl<'a> TableReader<'a> {
    /// Starts reading `table` found at `path` (empty for the root).
    pub fn new(
        path: impl Into<String>,
        table: &'a toml::Table,
        problems: &'a mut Vec<ConfigProblem>,
        secrets: &'a dyn SecretSource,
    ) -> Self {
        Self { path: path.into(), table, used: BTreeSet::new(), problems, secrets }
    }

    /// Returns the dotted path of a key in this table.
    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// Records a problem at `key`.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.key_path(key);
        self.problems.push(ConfigProblem { path, message: message.into() });
    }

    fn take(&mut self, key: &str) -> Option<&'a toml::Value> {
        self.used.insert(key.to_owned());
        self.table.get(key)
    }

    /// Returns whether the key is present.
    pub fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// Returns the keys of this table.
    pub fn keys(&self) -> Vec<String> {
        self.table.keys().cloned().collect()
    }

    /// Reads an optional string.
    pub fn opt_string(&mut self, key: &str) -> Option<String> {
        match self.take(key)? {
            toml::Value::String(text) => Some(text.clone()),
            other => {
                self.problem(key, format!("expected a string, found {}", describe(other)));
                None
            }
        }
    }

    /// Reads a required string.
    pub fn string(&mut self, key: &str) -> Option<String> {
        if !self.has(key) {
            self.problem(key, "missing required key");
            self.used.insert(key.to_owned());
            return None;
        }
        self.opt_string(key)
    }

    /// Reads a string with a default.
    pub fn string_or(&mut self, key: &str, default: &str) -> String {
        self.opt_string(key).unwrap_or_else(|| default.to_owned())
    }

    /// Reads an optional non-negative integer (numbers from env overrides arrive as text).
    pub fn opt_u64(&mut self, key: &str) -> Option<u64> {
        match self.take(key)? {
            toml::Value::Integer(number) if *number >= 0 => u64::try_from(*number).ok(),
            toml::Value::String(text) if text.trim().parse::<u64>().is_ok() => text.trim().parse().ok(),
            other => {
                self.problem(key, format!("expected a non-negative integer, found {}", describe(other)));
                None
            }
        }
    }

    /// Reads an optional boolean.
    pub fn opt_bool(&mut self, key: &str) -> Option<bool> {
        match self.take(key)? {
            toml::Value::Boolean(flag) => Some(*flag),
            toml::Value::String(text) if text == "true" || text == "false" => Some(text == "true"),
            other => {
                self.problem(key, format!("expected true or false, found {}", describe(other)));
                None
            }
        }
    }

    /// Reads an optional humantime-style duration (`30s`, `2m`, `1h30m`, `1d`).
    pub fn opt_duration(&mut self, key: &str) -> Option<Duration> {
        let value = self.take(key)?;
        let parsed = match value {
            toml::Value::String(text) => parse_duration(text),
            _ => None,
        };
        if parsed.is_none() {
            self.problem(key, format!("invalid duration {} (expected e.g. \"2m\")", describe(value)));
        }
        parsed
    }

    /// Reads a duration with a default.
    pub fn duration_or(&mut self, key: &str, default: Duration) -> Duration {
        self.opt_duration(key).unwrap_or(default)
    }

    /// Reads an optional URL. Plain `http://` is accepted only for loopback hosts (tests, simulators).
    pub fn opt_url(&mut self, key: &str) -> Option<url::Url> {
        let text = self.opt_string(key)?;
        match url::Url::parse(&text) {
            Ok(url) if url.scheme() == "https" => Some(url),
            Ok(url) if url.scheme() == "http" && is_loopback(&url) => Some(url),
            Ok(_) => {
                let shown = redact_url_text(&text);
                self.problem(key, format!("insecure URL {shown:?} (https is required except for loopback addresses)"));
                None
            }
            Err(error) => {
                let shown = redact_url_text(&text);
                self.problem(key, format!("invalid URL {shown:?}: {error}"));
                None
            }
        }
    }

    /// Reads a URL with a default.
    pub fn url_or(&mut self, key: &str, default: &str) -> Option<url::Url> {
        if self.has(key) {
            return self.opt_url(key);
        }
        match url::Url::parse(default) {
            Ok(url) => Some(url),
            Err(error) => {
                self.problem(key, format!("invalid default URL {default:?}: {error}"));
                None
            }
        }
    }

    /// Reads an optional secret: `{ env = "NAME" }` or `{ file = "/path" }`. Inline strings are refused
    /// so secrets never sit in config files.
    pub fn opt_secret(&mut self, key: &str) -> Option<SecretString> {
        let value = self.take(key)?;
        let resolved = match value {
            toml::Value::Table(spec) => match (spec.get("env"), spec.get("file"), spec.len()) {
                (Some(toml::Value::String(name)), None, 1) => match self.secrets.env(name) {
                    Some(secret) if !secret.is_empty() => Ok(secret),
                    _ => Err(format!("secret from environment variable {name} is not set")),
                },
                (None, Some(toml::Value::String(path)), 1) => {
                    match expand_secret_path(path, self.secrets).map(|file| (self.secrets.file(&file), file)) {
                        Ok((Ok(secret), _)) if !secret.trim().is_empty() => {
                            Ok(secret.trim_end_matches(['\n', '\r']).to_owned())
                        }
                        Ok((Ok(_), file)) => Err(format!("secret file {} is empty", quoted(&file))),
                        Ok((Err(error), file)) => Err(format!("cannot read secret file {}: {error}", quoted(&file))),
                        Err(message) => Err(message),
                    }
                }
                _ => Err("expected { env = \"NAME\" } or { file = \"/path\" }".to_owned()),
            },
            toml::Value::String(_) => {
                Err("inline secrets are not accepted: use { env = \"NAME\" } or { file = \"/path\" }".to_owned())
            }
            other => Err(format!("expected {{ env = \"NAME\" }} or {{ file = \"/path\" }}, found {}", describe(other))),
        };
        match resolved {
            Ok(secret) => Some(SecretString::from(secret)),
            Err(message) => {
                self.problem(key, message);
                None
            }
        }
    }

    /// Reads a required secret.
    pub fn secret(&mut self, key: &str) -> Option<SecretString> {
        if !self.has(key) {
            self.problem(key, "missing required secret");
            self.used.insert(key.to_owned());
            return None;
        }
        self.opt_secret(key)
    }

    /// Reads a list of strings.
    pub fn opt_string_list(&mut self, key: &str) -> Option<Vec<String>> {
        let value = self.take(key)?;
        match value {
            toml::Value::Array(items) => {
                let mut strings = Vec::with_capacity(items.len());
                for (index, item) in items.iter().enumerate() {
                    match item {
                        toml::Value::String(text) => strings.push(text.clone()),
                        other => self.problem(
                            &format!("{key}[{index}]"),
                            format!("expected a string, found {}", describe(other)),
                        ),
                    }
                }
                Some(strings)
            }
            // Env overrides arrive as one comma-separated string.
            toml::Value::String(text) => {
                Some(text.split(',').map(|part| part.trim().to_owned()).filter(|part| !part.is_empty()).collect())
            }
            other => {
                self.problem(key, format!("expected a list of strings, found {}", describe(other)));
                None
            }
        }
    }

    /// Reads a list of entity names.
    pub fn opt_entities(&mut self, key: &str) -> Option<Vec<Entity>> {
        let names = self.opt_string_list(key)?;
        let mut entities = Vec::new();
        for name in names {
            match name.parse::<Entity>() {
                Ok(entity) if !entities.contains(&entity) => entities.push(entity),
                Ok(_) => {}
                Err(error) => self.problem(key, error.to_string()),
            }
        }
        Some(entities)
    }

    /// Opens a sub-table (an absent key gives an empty table).
    pub fn table<'b>(&'b mut self, key: &str) -> Option<TableReader<'b>>
    where
        'a: 'b,
    {
        static EMPTY: std::sync::OnceLock<toml::Table> = std::sync::OnceLock::new();
        let path = self.key_path(key);
        let table = match self.take(key) {
            None => EMPTY.get_or_init(toml::Table::new),
            Some(toml::Value::Table(table)) => table,
            Some(other) => {
                let message = format!("expected a table, found {}", describe(other));
                self.problems.push(ConfigProblem { path, message });
                return None;
            }
        };
        Some(TableReader { path, table, used: BTreeSet::new(), problems: self.problems, secrets: self.secrets })
    }

    /// Returns the raw value of a key (for shapes this reader does not know) and marks it used.
    pub fn raw(&mut self, key: &str) -> Option<&'a toml::Value> {
        self.take(key)
    }

    /// Returns the secret source.
    pub fn secrets(&self) -> &'a dyn SecretSource {
        self.secrets
    }

    /// Returns the problem list (to read nested tables by hand).
    pub fn problems(&mut self) -> &mut Vec<ConfigProblem> {
        self.problems
    }

    /// Reports every key that was never read, with the closest known key as a suggestion.
    pub fn finish(&mut self, known_extra: &[&str]) {
        for key in self.table.keys() {
            if self.used.contains(key) || known_extra.contains(&key.as_str()) {
                continue;
            }
            let candidates: Vec<&str> =
                self.used.iter().map(String::as_str).chain(known_extra.iter().copied()).collect();
            let message = match closest(key, &candidates) {
                Some(suggestion) => format!("unknown key (did you mean `{suggestion}`?)"),
                None => "unknown key".to_owned(),
            };
            let path = if self.path.is_empty() { key.clone() } else { format!("{}.{key}", self.path) };
            self.problems.push(ConfigProblem { path, message });
            self.used.insert(key.clone());
        }
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(address)) => address.is_loopback(),
        Some(url::Host::Ipv6(address)) => address.is_loopback(),
        None => false,
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => format!("{text:?}"),
        toml::Value::Table(_) => "a table".to_owned(),
        toml::Value::Array(_) => "a list".to_owned(),
        other => other.to_string(),
    }
}

/// Parses a duration the way humantime writes them: `500ms`, `30s`, `2m`, `1h30m`, `1d`, `2 hours`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Formats a duration the way config writes it (`2m`, `1h 30m`, `500ms`).
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Returns the candidate closest to `key` by edit distance, if it is close enough to be a typo.
pub fn closest<'c>(key: &str, candidates: &[&'c str]) -> Option<&'c str> {
    candidates
        .iter()
        .map(|candidate| (strsim::levenshtein(key, candidate), *candidate))
        .filter(|(distance, candidate)| *distance <= (candidate.len().max(key.len()) / 3).max(2))
        .min()
        .map(|(_, candidate)| candidate)
}

/// Field allow/deny lists of one connection, by entity (SPEC §3 privacy). Names are canonical field
/// names or vendor field names; a denied field is never requested, stored, exported or pushed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldPolicy {
    /// Fields never to touch, by entity.
    pub deny: BTreeMap<Entity, BTreeSet<String>>,
    /// When present for an entity, only these fields (plus ids and modification times) are used.
    pub allow: BTreeMap<Entity, BTreeSet<String>>,
}

impl FieldPolicy {
    /// Returns whether a field (canonical or vendor name) may be used for an entity.
    pub fn allows(&self, entity: Entity, field: &str) -> bool {
        if self.deny.get(&entity).is_some_and(|denied| denied.contains(field)) {
            return false;
        }
        self.allow.get(&entity).is_none_or(|allowed| allowed.contains(field))
    }
}

/// What every connection has, whatever its vendor.
#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    /// The connection name.
    pub id: ConnectionId,
    /// Entities to sync.
    pub entities: Vec<Entity>,
    /// Transport: rate, budget, timeout, retries.
    pub http: HttpSettings,
    /// Vendor value tables (defaults + overrides).
    pub vocabulary: Vocabulary,
    /// Privacy lists.
    pub fields: FieldPolicy,
    /// Where a full sync starts (`None`: the beginning).
    pub start: Option<Timestamp>,
    /// How far back incremental modstamp pulls re-read, for late-committed records.
    pub overlap: Duration,
    /// How often to poll when no webhook says otherwise.
    pub poll_interval: Duration,
    /// Exchange rates (`metrics.fx`), for writing an amount into a CRM that keeps one currency.
    pub fx: Option<crate::canonical::FxTable>,
}

impl ConnectionSettings {
    /// Settings with defaults, for tests and simulators.
    pub fn new(id: impl Into<ConnectionId>, vocabulary: Vocabulary) -> Self {
        Self {
            id: id.into(),
            entities: Entity::ALL.to_vec(),
            http: HttpSettings {
                per_second: NonZeroU32::new(1000).unwrap_or(NonZeroU32::MIN),
                daily_budget: None,
                headroom: 0.1,
                timeout: Duration::from_secs(30),
                retry: RetryPolicy::default(),
            },
            vocabulary,
            fields: FieldPolicy::default(),
            start: None,
            overlap: Duration::from_secs(60),
            poll_interval: Duration::from_secs(120),
            fx: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn a_secret_file_path_may_name_the_systemd_credentials_directory() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("sf_client_secret"), "from-a-credential\n").unwrap();
        let table: toml::Table =
            toml::from_str(r#"client_secret = { file = "${CREDENTIALS_DIRECTORY}/sf_client_secret" }"#).unwrap();
        let with_dir = MapSecrets(BTreeMap::from([("CREDENTIALS_DIRECTORY".to_owned(), dir.display().to_string())]));
        let mut problems = Vec::new();
        let mut reader = TableReader::new("connections.sf", &table, &mut problems, &with_dir);
        let secret = reader.secret("client_secret").unwrap();
        assert_eq!(secret.expose_secret(), "from-a-credential");
        reader.finish(&[]);
        assert!(problems.is_empty(), "{problems:?}");
        // Outside systemd the variable is unset: the problem says where it comes from.
        let without = MapSecrets(BTreeMap::new());
        let mut problems = Vec::new();
        let mut reader = TableReader::new("connections.sf", &table, &mut problems, &without);
        assert!(reader.secret("client_secret").is_none());
        reader.finish(&[]);
        let problem = problems[0].to_string();
        assert!(problem.contains("CREDENTIALS_DIRECTORY") && problem.contains("LoadCredential="), "{problem}");
        assert!(expand_secret_path("/run/${UNCLOSED", &without).is_err());
        assert_eq!(expand_secret_path("/plain/path", &without).unwrap(), PathBuf::from("/plain/path"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A fresh directory for one test (the connectors crate has no tempfile dependency).
    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crmsync-settings-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn read(text: &str, body: impl FnOnce(&mut TableReader<'_>)) -> Vec<String> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut problems = Vec::new();
        let secrets = MapSecrets(BTreeMap::from([("SET".to_owned(), "s3cr3t".to_owned())]));
        let mut reader = TableReader::new("connections.sf", &table, &mut problems, &secrets);
        body(&mut reader);
        reader.finish(&[]);
        problems.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let problems = read(
            r#"
            poll_interval = "2 minuets"
            login_url = "http://admin:hunter2@login.example.com"
            secret = { env = "UNSET" }
            inline = "hunter2"
            pol_interval = "2m"
            "#,
            |reader| {
                reader.opt_duration("poll_interval");
                reader.opt_url("login_url");
                reader.opt_secret("secret");
                reader.opt_secret("inline");
                reader.string("kind");
            },
        );
        assert_eq!(
            problems,
            [
                "connections.sf.poll_interval: invalid duration \"2 minuets\" (expected e.g. \"2m\")",
                "connections.sf.login_url: insecure URL \"http://[redacted]@login.example.com/\" (https is required except for loopback addresses)",
                "connections.sf.secret: secret from environment variable UNSET is not set",
                "connections.sf.inline: inline secrets are not accepted: use { env = \"NAME\" } or { file = \"/path\" }",
                "connections.sf.kind: missing required key",
                "connections.sf.pol_interval: unknown key (did you mean `poll_interval`?)",
            ]
        );
    }

    #[test]
    fn good_values_parse() {
        let problems = read(
            r#"
            poll_interval = "1h30m"
            login_url = "http://127.0.0.1:8080"
            secret = { env = "SET" }
            "#,
            |reader| {
                assert_eq!(reader.opt_duration("poll_interval"), Some(Duration::from_secs(5400)));
                assert!(reader.opt_url("login_url").is_some());
                assert!(reader.opt_secret("secret").is_some());
            },
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn durations_round_trip() {
        for (text, seconds, shown) in [
            ("30s", 30, "30s"),
            ("2m", 120, "2m"),
            ("1h30m", 5400, "1h 30m"),
            ("1d", 86_400, "1day"),
            ("2 hours", 7200, "2h"),
        ] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parsed, Duration::from_secs(seconds), "{text}");
            assert_eq!(format_duration(parsed), shown);
            assert_eq!(parse_duration(shown), Some(parsed), "what is shown parses back");
        }
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("two minutes"), None);
        assert_eq!(parse_duration("m"), None);
    }

    #[test]
    fn field_policy_denies_and_allows() {
        let mut policy = FieldPolicy::default();
        policy.deny.insert(Entity::Lead, BTreeSet::from(["email".to_owned()]));
        assert!(!policy.allows(Entity::Lead, "email"));
        assert!(policy.allows(Entity::Lead, "name"));
        policy.allow.insert(Entity::Account, BTreeSet::from(["name".to_owned()]));
        assert!(policy.allows(Entity::Account, "name"));
        assert!(!policy.allows(Entity::Account, "industry"));
    }
}
