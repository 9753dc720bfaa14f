//! `crmsync simulate <vendor>`: one simulator alone, until Ctrl-C.

use std::process::ExitCode;

use crmsync_connectors::canonical::Timestamp;
use crmsync_connectors::dynamics365::sim::{self as d365_sim, Dynamics365SimOptions};
use crmsync_connectors::salesforce::sim::{self, SalesforceSimOptions};
use crmsync_connectors::sim::{World, WorldSize};
use crmsync_connectors::zoho::sim::{self as zoho_sim, ZohoSimOptions};

use super::print;
use crate::cli::{SimulateArgs, SimulatedVendor};
use crate::telemetry::{self, LogStyle};

/// Runs one simulator and prints how to point a connection at it.
pub async fn run(args: SimulateArgs) -> anyhow::Result<ExitCode> {
    telemetry::init_logging(LogStyle::Auto);
    let size = if args.shared_world {
        WorldSize::scaled(args.records)
    } else {
        WorldSize { accounts: args.records, leads: args.records, opportunities: args.records, orders: args.records }
    };
    let world = World::generate(args.seed, size, args.anchor.unwrap_or_else(Timestamp::now), args.shared_world);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], args.port));
    let running = if args.vendor == SimulatedVendor::Dynamics365 {
        let simulator =
            d365_sim::start(Dynamics365SimOptions { addr, ..Dynamics365SimOptions::with_world(world) }).await?;
        let base_url = simulator.base_url();
        Running {
            label: "Dynamics 365 (Dataverse)",
            snippet: d365_sim::connection_toml("dynamics365", &base_url),
            secrets: d365_sim::demo_secrets(),
            base_url,
            _simulator: Box::new(simulator),
        }
    } else if args.vendor == SimulatedVendor::Zoho {
        let simulator = zoho_sim::start(ZohoSimOptions { addr, ..ZohoSimOptions::with_world(world) }).await?;
        let base_url = simulator.base_url();
        Running {
            label: "Zoho CRM",
            snippet: zoho_sim::connection_toml("zoho", &base_url),
            secrets: zoho_sim::demo_secrets(),
            base_url,
            _simulator: Box::new(simulator),
        }
    } else {
        let corporate = crmsync_connectors::canonical::Currency::new(&args.corporate_currency)
            .map_err(|error| anyhow::anyhow!("--corporate-currency: {error}"))?;
        let mut options = SalesforceSimOptions { addr, ..SalesforceSimOptions::with_world(world) };
        if !args.multi_currency {
            options = options.single_currency(corporate.as_str());
        }
        corporate.as_str().clone_into(&mut options.corporate_currency);
        let simulator = sim::start(options).await?;
        let base_url = simulator.base_url();
        Running {
            label: "Salesforce",
            snippet: sim::connection_toml("salesforce", &base_url),
            secrets: sim::demo_secrets(),
            base_url,
            _simulator: Box::new(simulator),
        }
    };
    let Running { label, base_url, snippet, secrets, _simulator: simulator } = running;
    let exports: Vec<String> = secrets.iter().map(|(name, value)| format!("export {name}={value}")).collect();
    print(&format!(
        "{label} simulator listening on {base_url} ({}, seed {})\n\
         faults: POST {base_url}/__sim/faults, counters: GET {base_url}/__sim/stats\n\n\
         # connection to add to your config:\n{}\n# its demo credentials:\n{}\n",
        if args.shared_world {
            format!("its slice of a shared world of {} records", size.total())
        } else {
            format!("{} records per entity", args.records)
        },
        args.seed,
        snippet,
        exports.join("\n")
    ));
    tokio::signal::ctrl_c().await?;
    drop(simulator);
    Ok(ExitCode::SUCCESS)
}

/// A started simulator and what to tell the user about it.
struct Running {
    label: &'static str,
    base_url: String,
    snippet: String,
    secrets: Vec<(&'static str, &'static str)>,
    /// Keeps the simulator serving until dropped.
    _simulator: Box<dyn std::any::Any>,
}
