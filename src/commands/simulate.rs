//! `crmsync simulate <vendor>`: one simulator alone, until Ctrl-C.

use std::process::ExitCode;

use anyhow::bail;
use crmsync_connectors::canonical::Timestamp;
use crmsync_connectors::salesforce::sim::{self, SalesforceSimOptions};
use crmsync_connectors::sim::{World, WorldSize};

use super::print;
use crate::cli::{SimulateArgs, SimulatedVendor};
use crate::telemetry::{self, LogStyle};

/// Runs one simulator and prints how to point a connection at it.
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogStyle::Auto);
    if args.vendor != SimulatedVendor::Salesforce {
        bail!("the {:?} simulator is not available in this version of crmsync (only salesforce is)", args.vendor);
    }
    let size =
        WorldSize { accounts: args.records, leads: args.records, opportunities: args.records, orders: args.records };
    let world = World::generate(args.seed, size, Timestamp::now(), false);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let simulator = sim::start(SalesforceSimOptions { addr, ..SalesforceSimOptions::with_world(world) }).await?;
    let base_url = simulator.base_url();
    let exports: Vec<String> =
        sim::demo_secrets().iter().map(|(name, value)| format!("export {name}={value}")).collect();
    print(&format!(
        "Salesforce simulator listening on {base_url} ({} records per entity, seed {})\n\
         faults: POST {base_url}/__sim/faults, counters: GET {base_url}/__sim/stats\n\n\
         # connection to add to your config:\n{}\n# its demo credentials:\n{}\n",
        args.records,
        args.seed,
        sim::connection_toml("salesforce", &base_url),
        exports.join("\n")
    ));
    tokio::signal::ctrl_c().await?;
    simulator.stop().await;
    Ok(ExitCode::SUCCESS)
}
