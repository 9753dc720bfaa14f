//! `crmsync simulate <vendor>`: one simulator alone, until Ctrl-C.

use std::process::ExitCode;

use crmsync_connectors::canonical::Timestamp;
use crmsync_connectors::sim::{World, WorldSize};
use crmsync_connectors::{dynamics365, salesforce, zoho};

use super::print;
use crate::cli::{SimulateArgs, SimulatedVendor};
use crate::telemetry::{self, LogStyle};

/// Runs one simulator and prints how to point a connection at it.
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogStyle::Auto);
    let size = WorldSize { accounts: args.records, leads: args.records, opportunities: args.records, orders: args.records };
    let world = World::generate(args.seed, size, Timestamp::now(), false);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let (base_url, snippet, secrets, _guard): (String, String, Vec<(&str, &str)>, Box<dyn std::any::Any>) = match args.vendor {
        SimulatedVendor::Salesforce => {
            let sim = salesforce::sim::start(salesforce::sim::SalesforceSimOptions { addr, ..salesforce::sim::SalesforceSimOptions::with_world(world) }).await?;
            let url = sim.base_url();
            (url.clone(), salesforce::sim::connection_toml("salesforce", &url), salesforce::sim::demo_secrets(), Box::new(sim))
        }
        SimulatedVendor::Zoho => {
            let sim = zoho::sim::start(zoho::sim::ZohoSimOptions { addr, ..zoho::sim::ZohoSimOptions::with_world(world) }).await?;
            let url = sim.base_url();
            (url.clone(), zoho::sim::connection_toml("zoho", &url), zoho::sim::demo_secrets(), Box::new(sim))
        }
        SimulatedVendor::Dynamics365 => {
            let sim = dynamics365::sim::start(dynamics365::sim::Dynamics365SimOptions { addr, ..dynamics365::sim::Dynamics365SimOptions::with_world(world) }).await?;
            let url = sim.base_url();
            (url.clone(), dynamics365::sim::connection_toml("dynamics365", &url), dynamics365::sim::demo_secrets(), Box::new(sim))
        }
    };
    let exports: Vec<String> = secrets.iter().map(|(name, value)| format!("export {name}={value}")).collect();
    print(&format!(
        "simulator listening on {base_url} ({} records per entity, seed {})\n\
         faults: POST {base_url}/__sim/faults, counters: GET {base_url}/__sim/stats\n\n\
         # connection to add to your config:\n{snippet}\n# its demo credentials:\n{}\n",
        args.records,
        args.seed,
        exports.join("\n")
    ));
    tokio::signal::ctrl_c().await?;
    Ok(ExitCode::SUCCESS)
}
