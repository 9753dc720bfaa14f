//! Storage faults (issue 17, the suite): the store on a full file system, on a read-only one, and
//! with its file damaged (bytes flipped or zeroed, the file cut short). Each must end in a clear error
//! or a recovery, never a panic or a wedge, and nothing acknowledged may be lost.
//!
//! A full or read-only file system is a small tmpfs mounted for the test: `mount` needs root or
//! `CAP_SYS_ADMIN`, which CI's container has. Where it cannot mount, the full-disk test says so and
//! checks nothing (no unprivileged way fills a disk under sled deterministically: a file-size limit
//! only bites when sled grows its file by a whole segment), and the read-only test uses a directory
//! without write permission instead.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use crmsync_connectors::canonical::{Entity, Timestamp};
use crmsync_connectors::salesforce::sim::WEBHOOK_SECRET;
use crmsync_connectors::sim::FaultSettings;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

use super::{Dice, ENTITIES, canonical_set, outbound_message, soak};
use crate::support::{Env, accounts, bound_ports, export, ok, salesforce, signal};

/// How long a command or a stopping daemon may take before the test calls it wedged. Generous: it
/// only has to tell "finished" from "never finishes" on a loaded machine.
const WEDGED: Duration = Duration::from_secs(180);

/// A tmpfs mounted for one test, unmounted on drop (lazily: a daemon killed by the drop of a failed
/// test may still hold a file open).
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one with `options` (e.g. `size=8m`), or `None` where this process may not mount.
    fn mount(options: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        mounted.then(|| Self { path: dir.path().to_owned(), _dir: dir })
    }

    fn remount(&self, options: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// The store directory the config names.
fn data_dir(env: &Env) -> PathBuf {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let line = config.lines().find(|line| line.starts_with("data_dir = ")).unwrap();
    PathBuf::from(line.trim_start_matches("data_dir = ").trim_matches('"'))
}

/// Points the config's store at `dir`.
fn store_in(env: &Env, dir: &Path) {
    let config = std::fs::read_to_string(&env.config).unwrap();
    let old = format!("data_dir = {:?}", data_dir(env).display().to_string());
    std::fs::write(&env.config, config.replace(&old, &format!("data_dir = {:?}", dir.display().to_string()))).unwrap();
}

/// Runs a command to its end, failing the test if it never ends or panics.
async fn finishes(env: &Env, args: &[&str]) -> Output {
    let output = tokio::time::timeout(WEDGED, env.command(args).env("RUST_BACKTRACE", "0").output())
        .await
        .unwrap_or_else(|_| panic!("crmsync {args:?} is wedged"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // A panic caught inside (sled's, on some damaged files) is reported as the error, not printed.
    assert!(
        output.status.code() != Some(101) && !stderr.contains("panicked at"),
        "crmsync {args:?} panicked: {stderr}"
    );
    output
}

/// Asserts a failed command ended with one `error:` line naming the store and saying `reason`.
fn clear_store_error(output: &Output, store: &Path, reason: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        !output.status.success()
            && last.starts_with("error: ")
            && last.matches(&store.display().to_string()).count() == 1
            && last.contains(reason),
        "expected a clear error naming {} once ({reason}), got {}:\n{stderr}",
        store.display(),
        output.status
    );
}

/// Starts `crmsync run` and waits until it serves; its log is kept for [`stop`].
async fn start_daemon(env: &Env) -> (Child, tokio::task::JoinHandle<String>, (u16, u16)) {
    // Ports the system picks as the daemon binds them (then named in the configuration for `status`).
    env.point_at((0, 0));
    let mut daemon = env
        .command(&["run"])
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "0")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(daemon.stderr.take().unwrap()).lines();
    let mut log = String::new();
    let ports = loop {
        let line = logs.next_line().await.unwrap().unwrap_or_else(|| panic!("the daemon did not start:\n{log}"));
        log.push_str(&line);
        log.push('\n');
        if let Some(ports) = bound_ports(&line) {
            break ports;
        }
    };
    env.point_at(ports);
    let rest = tokio::spawn(async move {
        while let Ok(Some(line)) = logs.next_line().await {
            log.push_str(&line);
            log.push('\n');
        }
        log
    });
    (daemon, rest, ports)
}

/// Stops the daemon with SIGTERM: it must exit (not wedge) without a panic. Returns its log.
async fn stop(mut daemon: Child, log: tokio::task::JoinHandle<String>) -> String {
    signal(&daemon, "TERM").await;
    let status = tokio::time::timeout(WEDGED, daemon.wait()).await.expect("the daemon is wedged on SIGTERM").unwrap();
    let log = log.await.unwrap();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    assert_ne!(status.code(), Some(101), "the daemon panicked:\n{log}");
    log
}

/// Delivers one Salesforce outbound message; `true` if acknowledged. A refusal must be a server
/// error, so that Salesforce delivers it again.
async fn deliver(http: &reqwest::Client, port: u16, (account, industry, stamp): &(String, &str, String)) -> bool {
    let response = http
        .post(format!("http://127.0.0.1:{port}/webhooks/salesforce?secret={WEBHOOK_SECRET}"))
        .header("content-type", "text/xml; charset=utf-8")
        .body(outbound_message(account, industry, stamp))
        .send()
        .await
        .unwrap();
    let status = response.status();
    assert!(status.is_success() || status.is_server_error(), "a delivery answered {status}");
    status.is_success()
}

/// Fills the file system under `dir` to the last byte.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while file.write_all(&block).is_ok() {}
    for _ in 0..64 * 1024 {
        if file.write_all(&[0]).is_err() {
            break;
        }
    }
    path
}

/// Delivers one new message after another until the full disk refused three (sled first fills the
/// space of segments it freed earlier, so the disk shows as full after a varying number of writes).
/// Returns how many were acknowledged meanwhile and the indexes of the refused ones.
async fn deliver_until_refused(
    http: &reqwest::Client,
    port: u16,
    deliveries: &mut Vec<(String, &'static str, String)>,
    next: impl Fn(usize) -> (String, &'static str, String),
) -> (usize, Vec<usize>) {
    let (mut acknowledged, mut refused) = (0, Vec::new());
    let limit = deliveries.len() + 800;
    while refused.len() < 3 && deliveries.len() < limit {
        deliveries.push(next(deliveries.len()));
        let index = deliveries.len() - 1;
        if deliver(http, port, &deliveries[index]).await {
            acknowledged += 1;
        } else {
            refused.push(index);
        }
    }
    assert!(!refused.is_empty(), "the full disk refused none of {acknowledged} deliveries");
    (acknowledged, refused)
}

/// `crmsync status` (asking the running daemon): its text.
async fn status_text(env: &Env) -> String {
    let output = finishes(env, &["status"]).await;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "status failed: {}{text}", String::from_utf8_lossy(&output.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_what_it_cannot_store_keeps_what_it_acknowledged_and_resumes_when_space_returns() {
    let Some(disk) = Tmpfs::mount("size=8m,mode=0700") else {
        eprintln!("full-disk test skipped: this process may not mount a tmpfs (needs CAP_SYS_ADMIN)");
        return;
    };
    let simulator = salesforce(accounts(200), FaultSettings::default(), None).await;
    let env = Env::new(&[("salesforce", &simulator.base_url())], "");
    store_in(&env, &disk.path.join("store"));
    ok(env.run(&["sync"]).await);
    let http = reqwest::Client::new();
    // Round after round over the 200 accounts, each round another industry; kept with its
    // modification time, so a redelivery is the same message, as Salesforce's retries are.
    let ids = simulator.state().live_ids(Entity::Account);
    let industries = ["Banking", "Chemicals", "Consulting", "Education"];
    let delivery = |index: usize| {
        (
            ids[index % ids.len()].clone(),
            industries[index / ids.len() % industries.len()],
            Timestamp::now().to_salesforce(),
        )
    };
    let mut deliveries = Vec::new();

    let (daemon, log, (port, admin)) = start_daemon(&env).await;
    deliveries.push(delivery(0));
    assert!(deliver(&http, port, &deliveries[0]).await, "a delivery before the disk filled");
    let filler = fill(&disk.path);
    let (acknowledged, refused) = deliver_until_refused(&http, port, &mut deliveries, delivery).await;
    // Still answerable: liveness, and `status` names the storage error.
    let health = http.get(format!("http://127.0.0.1:{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "/healthz on a full disk");
    let readyz = || async {
        let answer = http.get(format!("http://127.0.0.1:{admin}/readyz")).send().await.unwrap();
        (answer.status().as_u16(), answer.text().await.unwrap())
    };
    let (code, reasons) = readyz().await;
    assert!(
        code == 503 && reasons.contains("\"store\"") && reasons.contains("No space left"),
        "/readyz: {code} {reasons}"
    );
    let status = status_text(&env).await;
    assert!(
        status.contains("STORAGE ERROR") && status.contains("No space left on device"),
        "status on a full disk:\n{status}"
    );

    // Space returns while the daemon runs; Salesforce delivers the refused messages again, and the
    // daemon takes them without a restart.
    std::fs::remove_file(&filler).unwrap();
    for index in &refused {
        assert!(deliver(&http, port, &deliveries[*index]).await, "a redelivery once space returned");
    }
    let status = status_text(&env).await;
    assert!(!status.contains("STORAGE ERROR"), "status once writes succeed again:\n{status}");
    let (code, reasons) = readyz().await;
    assert_eq!(code, 200, "/readyz once writes succeed again: {reasons}");

    // Full again, then stopped: SIGTERM is answered on a full disk; after a restart with space back
    // the messages refused this time are taken too.
    let filler = fill(&disk.path);
    let (acknowledged_again, refused_again) = deliver_until_refused(&http, port, &mut deliveries, delivery).await;
    let log = stop(daemon, log).await;
    assert!(log.contains("store reopened after a storage failure"), "the daemon reopened its store:\n{log}");
    std::fs::remove_file(filler).unwrap();
    let (daemon, log, (port, _)) = start_daemon(&env).await;
    for index in &refused_again {
        assert!(deliver(&http, port, &deliveries[*index]).await, "a redelivery after the restart");
    }
    stop(daemon, log).await;
    // Each account holds its last delivery (every delivery newer than its previous one).
    let mut last = std::collections::BTreeMap::new();
    for (account, industry, _) in &deliveries {
        last.insert(account.clone(), *industry);
    }
    let stored: std::collections::BTreeMap<String, String> = export(&env, "account", false)
        .await
        .iter()
        .flat_map(|record| {
            let industry = record["data"]["fields"]["industry"].as_str().unwrap_or_default().to_owned();
            record["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |link| (link["external_id"].as_str().unwrap().to_owned(), industry.clone()))
        })
        .collect();
    for (account, industry) in last {
        assert_eq!(
            stored.get(&account).map(String::as_str),
            Some(industry),
            "{account}: an acknowledged delivery was lost ({acknowledged} and {acknowledged_again} acknowledged \
             while the disk filled, {} and {} refused)",
            refused.len(),
            refused_again.len()
        );
    }
    eprintln!(
        "full disk: {acknowledged} deliveries acknowledged, {} refused and taken without a restart once space \
         returned; then {acknowledged_again} acknowledged, {} refused and taken after a restart",
        refused.len(),
        refused_again.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_or_unwritable_store_is_a_clear_error() {
    let simulator = salesforce(accounts(50), FaultSettings::default(), None).await;
    let env = Env::new(&[("salesforce", &simulator.base_url())], "");
    if let Some(disk) = Tmpfs::mount("size=16m,mode=0700") {
        // An existing store whose file system turned read-only.
        let store = disk.path.join("store");
        store_in(&env, &store);
        ok(env.run(&["sync"]).await);
        disk.remount("ro");
        for args in [&["sync"][..], &["run"], &["export", "--entity", "account"], &["status"]] {
            clear_store_error(&finishes(&env, args).await, &store, "Read-only file system");
        }
        disk.remount("rw");
        ok(env.run(&["sync"]).await);
    }
    // A new store in a directory this process may not write (moot for root, which writes anyway).
    let parent = tempfile::tempdir().unwrap();
    let store = parent.path().join("store");
    store_in(&env, &store);
    std::fs::set_permissions(parent.path(), std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
    if std::fs::create_dir(parent.path().join("probe")).is_err() {
        for args in [&["sync"][..], &["run"]] {
            clear_store_error(&finishes(&env, args).await, &store, "Permission denied");
        }
    }
    std::fs::set_permissions(parent.path(), std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
}

/// How a store file is damaged.
fn damage(db: &Path, dice: &mut Dice) -> String {
    let mut bytes = std::fs::read(db).unwrap();
    let len = u64::try_from(bytes.len()).unwrap();
    let at = |dice: &mut Dice| usize::try_from(dice.roll(len)).unwrap();
    let what = match dice.roll(4) {
        0 => {
            let index = at(dice);
            bytes[index] ^= 0xff;
            format!("byte {index} flipped")
        }
        1 => {
            let flipped: Vec<usize> = (0..8).map(|_| at(dice)).collect();
            for index in &flipped {
                bytes[*index] ^= 0x5a;
            }
            format!("bytes {flipped:?} flipped")
        }
        2 => {
            let start = at(dice);
            let end = (start + 4096).min(bytes.len());
            bytes[start..end].fill(0);
            format!("bytes {start}..{end} zeroed")
        }
        _ => {
            let cut = at(dice);
            bytes.truncate(cut);
            format!("cut at {cut} of {len}")
        }
    };
    std::fs::write(db, bytes).unwrap();
    what
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_file_is_a_clear_error_or_recovers_and_a_sync_restores_every_record() {
    let simulator = salesforce(accounts(200), FaultSettings::default(), None).await;
    let env = Env::new(&[("salesforce", &simulator.base_url())], "");
    let store = data_dir(&env);
    ok(env.run(&["sync"]).await);
    let expected = canonical_set(&env, None).await;
    assert_eq!(expected["account"].len(), 200);
    let pristine = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    };
    copy(&store, pristine.path());
    let mut dice = Dice(0x5eed_0de5 ^ soak());
    let (mut refused, mut recovered) = (0, 0);
    for _ in 0..8 * soak() {
        std::fs::remove_dir_all(&store).unwrap();
        copy(pristine.path(), &store);
        let what = damage(&store.join("db"), &mut dice);
        // Reading a damaged store ends (no spin), without a panic: data or a clear error.
        for args in [&["status"][..], &["export", "--entity", "account"]] {
            let output = finishes(&env, args).await;
            if !output.status.success() {
                clear_store_error(&output, &store, "");
            }
        }
        let synced = finishes(&env, &["sync"]).await;
        if synced.status.success() {
            recovered += 1;
        } else {
            // The error's advice: move the store aside and resync from the CRMs.
            clear_store_error(&synced, &store, "corrupt");
            refused += 1;
            std::fs::remove_dir_all(&store).unwrap();
            ok(env.run(&["sync"]).await);
        }
        let restored = canonical_set(&env, None).await;
        for entity in ENTITIES {
            assert_eq!(restored[entity], expected[entity], "{entity} after a sync of a store with {what}");
        }
    }
    eprintln!("damaged stores: {refused} refused as corrupt, {recovered} opened and resynced");
}

/// The bytes of the files under `dir`, its subdirectories included.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            if metadata.is_dir() { bytes_under(&entry.path()) } else { metadata.len() }
        })
        .sum()
}

/// The room a full disk leaves the sync of the full-disk sync test: enough for sled to create its
/// store (a few bytes of `conf` and the first writes of its log), far less than a store of 2,000
/// accounts (4.5–5.5 MiB in five runs, a pulled page committed in parts of 250 records).
const ROOM: u64 = 512 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_on_a_full_disk_prints_its_table_and_status_names_the_error_then_both_recover() {
    let Some(disk) = Tmpfs::mount("size=32m,mode=0700") else {
        eprintln!("full-disk sync test skipped: this process may not mount a tmpfs (needs CAP_SYS_ADMIN)");
        return;
    };
    let simulator = salesforce(accounts(2_000), FaultSettings::default(), None).await;
    let env = Env::new(&[("salesforce", &simulator.base_url())], "");
    // What a sync of these accounts needs, measured: a fresh store of them on a disk with room
    // (sled's log grows by whole segments of 512 KiB). The sync that must fail below also writes a
    // fresh store, so it has no space freed by earlier writes to reuse: a sync that only changed the
    // records of an existing store could fit in it whatever the room left (their old versions free
    // about what their new ones take, and the smaller its store transactions, the sooner), as the
    // 1,000 → 250 records a transaction change showed.
    ok(env.run(&["sync"]).await);
    let needed = bytes_under(&data_dir(&env));
    assert!(
        needed >= 4 * ROOM,
        "a store of 2,000 accounts takes {needed} bytes, not 4 times the {ROOM} left: the disk would not fill"
    );
    // The same sync into a fresh store on a disk full but for ROOM.
    let store = disk.path.join("store");
    store_in(&env, &store);
    let filler = fill(&disk.path);
    let filled = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&filler).unwrap().set_len(filled.saturating_sub(ROOM)).unwrap();
    eprintln!("full-disk sync: a store of 2,000 accounts takes {needed} bytes; {ROOM} were left");
    let synced = finishes(&env, &["sync"]).await;
    let (stdout, stderr) = (String::from_utf8_lossy(&synced.stdout), String::from_utf8_lossy(&synced.stderr));
    assert!(!synced.status.success(), "a sync that could not store its pages must fail:\n{stdout}{stderr}");
    // The table still comes, with the reason on the row that failed (issue 17 §8).
    assert!(
        stdout.lines().next().is_some_and(|header| header.starts_with("connection")),
        "no table:\n{stdout}{stderr}"
    );
    assert!(
        stdout.lines().any(|row| row.starts_with("salesforce")
            && row.contains("account")
            && row.contains("No space left on device")),
        "the account row names the full disk:\n{stdout}"
    );
    assert!(
        stderr.lines().last().is_some_and(|last| last.starts_with("error: ") && last.contains("No space left")),
        "one last error line:\n{stderr}"
    );
    // `status` says it too: the storage error, or that the store cannot be opened and why.
    let status = finishes(&env, &["status"]).await;
    if status.status.success() {
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(text.contains("No space left on device"), "status after a sync failed on a full disk:\n{text}");
    } else {
        clear_store_error(&status, &store, "No space left on device");
    }
    // Space returns: the next sync stores every account, and status shows no error.
    std::fs::remove_file(filler).unwrap();
    ok(env.run(&["sync"]).await);
    let status = ok(env.run(&["status"]).await);
    assert!(!status.contains("STORAGE ERROR") && !status.contains("No space left"), "{status}");
    assert_eq!(export(&env, "account", false).await.len(), 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_store_file_stays_private_and_reopening_the_store_warns_about_nothing() {
    // sled writes a snapshot file when it opens an existing store (and while it runs), with the
    // process umask: it used to be 0644, and every later command warned that the store was
    // readable by other users (issue 17 §6).
    let simulator = salesforce(accounts(300), FaultSettings::default(), None).await;
    let env = Env::new(&[("salesforce", &simulator.base_url())], "");
    ok(env.run(&["sync"]).await);
    for _ in 0..2 {
        let synced = env.run(&["sync"]).await;
        let stderr = String::from_utf8_lossy(&synced.stderr);
        assert!(synced.status.success() && !stderr.contains("readable by other users"), "{stderr}");
    }
    let store = data_dir(&env);
    let mut pending = vec![store.clone()];
    let mut files = 0;
    while let Some(path) = pending.pop() {
        let metadata = std::fs::symlink_metadata(&path).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", path.display());
        if metadata.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        } else {
            files += 1;
        }
    }
    assert!(
        std::fs::read_dir(&store).unwrap().any(|entry| entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("snap.")),
        "sled wrote a snapshot (what this test is about)"
    );
    assert!(files >= 4, "{files} files");
}
