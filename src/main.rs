//! The `crmsync` binary: parse the command line, run the command, print errors with their causes,
//! and exit with a meaningful code.

use std::process::ExitCode;

use clap::Parser;
use crmsync::cli::Cli;

/// mimalloc instead of glibc malloc: the ingest path allocates many small, short-lived values, and
/// glibc spent about 40 % of the daemon's CPU in `malloc`/`free` in `crmsync bench` (README, Performance).
/// Built with `no_thp`: mimalloc no longer asks for transparent huge pages, which made every 2 MiB of
/// its arena that held any live value resident in full (about 45–55 MiB more at 100,000 records).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Every file crmsync creates is readable by its user only, as the systemd unit's UMask=0077 makes
    // it: the store's files (sled creates snapshot files whenever it opens the store and while it
    // runs, with the process umask) and backups hold customer data.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crmsync::commands::run(cli)) {
        Ok(code) => code,
        // `crmsync export … | head -1`: the reader has what it wanted; that is not an error.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
