//! A deterministic sales "world": customers, leads, deals and orders that each simulator renders in
//! its own vendor's shapes. Generated from a seed, so every run of `demo`, `bench` and the tests sees
//! the same data; customers overlap across CRMs so identity resolution has something to do.
//!
//! Shapes follow SPEC §1: the funnel is about 10 leads : 5 qualified : 3 budgeted : 2 planned : 1 won,
//! and orders come 50 % direct, 30 % through agents, 20 % through e-commerce.

use jiff::civil::Date;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

use crate::canonical::{OrderStatus, Stage, Timestamp, VendorKind};

/// How many records of each kind to generate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorldSize {
    /// Customer companies.
    pub accounts: usize,
    /// Leads.
    pub leads: usize,
    /// Opportunities.
    pub opportunities: usize,
    /// Orders.
    pub orders: usize,
}

impl WorldSize {
    /// The demo's size: big enough for a recognisable picture, small enough to sync in a second.
    pub const DEMO: Self = Self { accounts: 40, leads: 100, opportunities: 50, orders: 120 };

    /// About `total` records split across the entities as in the demo world (13 % accounts, 32 %
    /// leads, 16 % opportunities, 39 % orders); at least one of each.
    pub fn scaled(total: usize) -> Self {
        let demo = Self::DEMO;
        let demo_total = demo.accounts + demo.leads + demo.opportunities + demo.orders;
        let part = |count: usize| (total.saturating_mul(count) / demo_total).max(1);
        Self {
            accounts: part(demo.accounts),
            leads: part(demo.leads),
            opportunities: part(demo.opportunities),
            orders: part(demo.orders),
        }
    }

    /// The number of records.
    pub fn total(&self) -> usize {
        self.accounts + self.leads + self.opportunities + self.orders
    }
}

/// A customer company.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldAccount {
    /// Company name.
    pub name: String,
    /// Account number (`ACC-000001`).
    pub number: String,
    /// Web domain.
    pub domain: String,
    /// Industry.
    pub industry: &'static str,
    /// Billing country.
    pub country: &'static str,
    /// Which CRMs know it (bit 0 Salesforce, 1 Zoho, 2 Dynamics 365).
    pub presence: u8,
}

/// A prospect.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldLead {
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Company.
    pub company: String,
    /// E-mail.
    pub email: String,
    /// Lead source (`Web`, `Partner Referral`, `Phone Inquiry`).
    pub source: &'static str,
    /// Converted into an opportunity.
    pub converted: bool,
    /// Created.
    pub created_at: Timestamp,
    /// The one CRM that holds it (bit as in [`WorldAccount::presence`]).
    pub presence: u8,
}

/// A deal.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldOpportunity {
    /// Index into [`World::accounts`].
    pub account: usize,
    /// Deal name.
    pub name: String,
    /// Amount.
    pub amount: Decimal,
    /// Currency.
    pub currency: &'static str,
    /// Canonical stage (each simulator writes its own vendor value for it).
    pub stage: Stage,
    /// Lead source.
    pub source: &'static str,
    /// Close date.
    pub close_date: Date,
    /// Created.
    pub created_at: Timestamp,
    /// The one CRM that holds it.
    pub presence: u8,
}

/// An order line.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldOrderLine {
    /// Product name.
    pub product: &'static str,
    /// SKU.
    pub sku: &'static str,
    /// Quantity.
    pub quantity: Decimal,
    /// Unit price.
    pub unit_price: Decimal,
}

/// A sales order.
#[derive(Clone, Debug, PartialEq)]
pub struct WorldOrder {
    /// Index into [`World::accounts`].
    pub account: usize,
    /// Order number (`SO-000001`).
    pub number: String,
    /// Canonical status.
    pub status: OrderStatus,
    /// Channel value (lead source vocabulary).
    pub source: &'static str,
    /// Currency.
    pub currency: &'static str,
    /// Order date.
    pub order_date: Date,
    /// Lines (at least one).
    pub lines: Vec<WorldOrderLine>,
    /// The one CRM that holds it.
    pub presence: u8,
}

impl WorldOrder {
    /// Returns the sum of the lines.
    pub fn total(&self) -> Decimal {
        self.lines.iter().map(|line| line.quantity * line.unit_price).sum()
    }
}

/// The generated data set.
#[derive(Clone, Debug, PartialEq)]
pub struct World {
    /// Customers.
    pub accounts: Vec<WorldAccount>,
    /// Leads.
    pub leads: Vec<WorldLead>,
    /// Deals.
    pub opportunities: Vec<WorldOpportunity>,
    /// Orders.
    pub orders: Vec<WorldOrder>,
}

const ALL_CRMS: u8 = 0b111;
const COMPANY_WORDS: &[&str] = &[
    "Acme",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Wonka",
    "Tyrell",
    "Cyberdyne",
    "Soylent",
    "Hooli",
    "Vandelay",
    "Zylker",
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Tailspin",
    "Litware",
    "Adatum",
    "Proseware",
];
const COMPANY_SUFFIX: &[&str] = &["Industries", "Labs", "Systems", "Foods", "Logistics", "Energy", "Retail", "Media"];
const INDUSTRIES: &[&str] = &["Manufacturing", "Technology", "Retail", "Energy", "Healthcare", "Finance"];
const COUNTRIES: &[&str] = &["Germany", "France", "United States", "India", "Japan", "Brazil"];
const FIRST_NAMES: &[&str] =
    &["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Linus"];
const LAST_NAMES: &[&str] =
    &["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman"];
/// The product catalogue every simulated org shares: `(name, SKU)`.
pub const PRODUCTS: &[(&str, &str)] =
    &[("Widget", "W-100"), ("Gadget", "G-200"), ("Gizmo", "Z-300"), ("Sprocket", "S-400"), ("Support plan", "SP-1")];

impl World {
    /// Generates a world. With `overlap`, each customer lives in one to three CRMs and each deal,
    /// lead and order in one CRM that knows its customer; without it, everything is everywhere
    /// (one simulator seeded alone).
    pub fn generate(seed: u64, size: WorldSize, anchor: Timestamp, overlap: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let day = 86_400_i64;
        let anchor_seconds = anchor.unix_millis() / 1000;
        let days_ago = |rng: &mut StdRng, max: i64| {
            Timestamp::from_unix_seconds(anchor_seconds - rng.random_range(0..max.max(1) * day)).unwrap_or(anchor)
        };
        let mut accounts = Vec::with_capacity(size.accounts);
        for index in 0..size.accounts {
            let word = COMPANY_WORDS[index % COMPANY_WORDS.len()];
            let suffix = COMPANY_SUFFIX[(index / COMPANY_WORDS.len()) % COMPANY_SUFFIX.len()];
            let round = index / (COMPANY_WORDS.len() * COMPANY_SUFFIX.len());
            let name = if round == 0 { format!("{word} {suffix}") } else { format!("{word} {suffix} {round}") };
            let domain = format!("{}.example", name.to_ascii_lowercase().replace(' ', "-"));
            let presence = if overlap { rng.random_range(1..=ALL_CRMS) } else { ALL_CRMS };
            accounts.push(WorldAccount {
                name,
                number: format!("ACC-{:06}", index + 1),
                domain,
                industry: INDUSTRIES[rng.random_range(0..INDUSTRIES.len())],
                country: COUNTRIES[rng.random_range(0..COUNTRIES.len())],
                presence,
            });
        }
        let pick_source = |rng: &mut StdRng| match rng.random_range(0..10) {
            0..=4 => "Phone Inquiry",
            5..=7 => "Partner Referral",
            _ => "Web",
        };
        let pick_single = |rng: &mut StdRng, allowed: u8| -> u8 {
            if !overlap {
                return ALL_CRMS;
            }
            let choices: Vec<u8> = (0..3).map(|bit| 1 << bit).filter(|bit| allowed & bit != 0).collect();
            choices[rng.random_range(0..choices.len())]
        };
        let mut leads = Vec::with_capacity(size.leads);
        for index in 0..size.leads {
            let first_name = FIRST_NAMES[index % FIRST_NAMES.len()].to_owned();
            let last_name = LAST_NAMES[(index / FIRST_NAMES.len()) % LAST_NAMES.len()].to_owned();
            let company = format!("{} {}", COMPANY_WORDS[rng.random_range(0..COMPANY_WORDS.len())], "Prospects");
            leads.push(WorldLead {
                email: format!(
                    "{}.{}{}@prospect.example",
                    first_name.to_ascii_lowercase(),
                    last_name.to_ascii_lowercase(),
                    index
                ),
                first_name,
                last_name,
                company,
                source: pick_source(&mut rng),
                converted: index % 2 == 0,
                created_at: days_ago(&mut rng, 60),
                presence: pick_single(&mut rng, ALL_CRMS),
            });
        }
        let mut opportunities = Vec::with_capacity(size.opportunities);
        for index in 0..size.opportunities {
            let account = if accounts.is_empty() { 0 } else { rng.random_range(0..accounts.len()) };
            let presence = pick_single(&mut rng, accounts.get(account).map_or(ALL_CRMS, |a| a.presence));
            // Reached-stage shares 100 : 60 : 40 : 20 → the SPEC's 5 : 3 : 2 : 1 below "lead"; as many
            // deals are lost as won (a lost deal has no funnel position), a win rate of about 50 %.
            let stage = match rng.random_range(0..22) {
                0..=7 => Stage::Qualified,
                8..=11 => Stage::Budget,
                12..=15 => Stage::Plan,
                16 => Stage::Execute,
                17 => Stage::FollowUp,
                18..=19 => Stage::Won,
                _ => Stage::Lost,
            };
            let created_at = days_ago(&mut rng, 90);
            // A closed deal closed between its creation and the anchor (so its sales cycle is real); an
            // open one expects to close within the next two months.
            let close_date = if stage.is_closed() {
                let age_days = (anchor.unix_millis() - created_at.unix_millis()).max(0) / (day * 1000);
                let cycle = rng.random_range(0..=age_days.max(0));
                created_at.saturating_add(std::time::Duration::from_secs(u64::try_from(cycle * day).unwrap_or(0)), true)
            } else {
                anchor.saturating_add(std::time::Duration::from_secs(rng.random_range(1..60) * 86_400), true)
            }
            .date();
            opportunities.push(WorldOpportunity {
                account,
                name: format!("Deal {:05}", index + 1),
                amount: Decimal::new(rng.random_range(1_000..200_000) * 100, 2),
                currency: if rng.random_range(0..5) == 0 { "USD" } else { "EUR" },
                stage,
                source: pick_source(&mut rng),
                close_date,
                created_at,
                presence,
            });
        }
        let mut orders = Vec::with_capacity(size.orders);
        for index in 0..size.orders {
            let account = if accounts.is_empty() { 0 } else { rng.random_range(0..accounts.len()) };
            let presence = pick_single(&mut rng, accounts.get(account).map_or(ALL_CRMS, |a| a.presence));
            let line_count = rng.random_range(1..=3);
            let lines = (0..line_count)
                .map(|_| {
                    let (product, sku) = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
                    WorldOrderLine {
                        product,
                        sku,
                        quantity: Decimal::from(rng.random_range(1..20)),
                        unit_price: Decimal::new(rng.random_range(500..50_000), 2),
                    }
                })
                .collect();
            let status = match rng.random_range(0..10) {
                0 => OrderStatus::Draft,
                1..=5 => OrderStatus::Confirmed,
                6..=7 => OrderStatus::Delivered,
                8 => OrderStatus::Invoiced,
                _ => OrderStatus::Cancelled,
            };
            orders.push(WorldOrder {
                account,
                number: format!("SO-{:06}", index + 1),
                status,
                source: pick_source(&mut rng),
                currency: "EUR",
                order_date: days_ago(&mut rng, 30).date(),
                lines,
                presence,
            });
        }
        Self { accounts, leads, opportunities, orders }
    }

    /// Returns the presence bit of a vendor.
    pub fn bit(kind: VendorKind) -> u8 {
        match kind {
            VendorKind::Salesforce => 1,
            VendorKind::Zoho => 2,
            VendorKind::Dynamics365 => 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_shaped_like_the_spec() {
        let anchor: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
        let size = WorldSize { accounts: 200, leads: 1000, opportunities: 2000, orders: 2000 };
        let first = World::generate(7, size, anchor, true);
        assert_eq!(first, World::generate(7, size, anchor, true));
        let direct = first.orders.iter().filter(|order| order.source == "Phone Inquiry").count();
        let agent = first.orders.iter().filter(|order| order.source == "Partner Referral").count();
        assert!((900..1100).contains(&direct), "direct {direct}");
        assert!((500..700).contains(&agent), "agent {agent}");
        let won = first.opportunities.iter().filter(|opp| opp.stage == Stage::Won).count();
        let lost = first.opportunities.iter().filter(|opp| opp.stage == Stage::Lost).count();
        assert!((130..240).contains(&won), "won {won}");
        assert!((130..240).contains(&lost), "lost {lost}");
        for deal in &first.opportunities {
            let close = deal.close_date;
            if deal.stage.is_closed() {
                assert!(deal.created_at.date() <= close && close <= anchor.date(), "closed {close} of {deal:?}");
            } else {
                assert!(close > anchor.date(), "open deals close later: {deal:?}");
            }
        }
        for order in &first.orders {
            assert!(!order.lines.is_empty());
            assert_ne!(
                first.accounts[order.account].presence & order.presence,
                0,
                "order in a CRM without its customer"
            );
        }
        let everywhere = World::generate(7, size, anchor, false);
        assert!(everywhere.accounts.iter().all(|account| account.presence == 0b111));
    }
}
