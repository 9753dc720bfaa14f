//! Seeding: the world's records (and a few products) as Zoho records.

use std::collections::HashMap;

use serde_json::{Value, json};

use super::{ZohoSim, zoho_time};
use crate::canonical::{OrderStatus, Timestamp, VendorKind, Vocabulary, decimal_json};
use crate::sim::World;

/// A seeded record's fields with its world creation time (never after its first modification).
fn with_created(mut fields: Value, created: Timestamp, modified: i64) -> Value {
    fields["Created_Time"] = json!(zoho_time((created.unix_millis() / 1000).min(modified)));
    fields
}

impl ZohoSim {
    pub(super) fn seed(&self, world: &World, shared: usize) {
        let bit = World::bit(VendorKind::Zoho);
        let vocabulary = Vocabulary::defaults(VendorKind::Zoho);
        let mut inner = self.lock();
        let now = Timestamp::now().unix_millis() / 1000;
        let total =
            i64::try_from(world.accounts.len() + world.leads.len() + world.opportunities.len() + world.orders.len())
                .unwrap_or(0);
        let base = now - total - 1;
        let mut counter = 0i64;
        let mut per_module: HashMap<&str, usize> = HashMap::new();
        let mut stamp = |module: &'static str| {
            counter += 1;
            let seen = per_module.entry(module).or_default();
            *seen += 1;
            if *seen <= shared { base } else { base + counter }
        };
        for (name, code) in [
            ("Widget", "W-100"),
            ("Gadget", "G-200"),
            ("Gizmo", "Z-300"),
            ("Sprocket", "S-400"),
            ("Support plan", "SP-1"),
        ] {
            let fields = json!({"Product_Name": name, "Product_Code": code, "Product_Active": true});
            let id = inner.put("Products", fields, base);
            inner.products.push((id, name.to_owned(), code.to_owned()));
        }
        let mut account_ids = HashMap::new();
        for (index, account) in world.accounts.iter().enumerate() {
            if account.presence & bit == 0 {
                continue;
            }
            let fields = json!({
                "Account_Name": account.name, "Account_Number": account.number, "Website": format!("www.{}", account.domain),
                "Industry": account.industry, "Billing_Country": account.country,
                "Owner": {"name": "Patricia Boyle", "id": "4150868000000225013", "email": "p.boyle@zylker.example"},
            });
            let id = inner.put("Accounts", fields, stamp("Accounts"));
            account_ids.insert(index, (id, account.name.clone()));
        }
        for lead in &world.leads {
            if lead.presence & bit == 0 {
                continue;
            }
            let fields = json!({
                "First_Name": lead.first_name, "Last_Name": lead.last_name, "Company": lead.company, "Email": lead.email,
                "Lead_Source": lead.source, "Lead_Status": if lead.converted { "Converted" } else { "Not Contacted" },
            });
            let modified = stamp("Leads");
            inner.put("Leads", with_created(fields, lead.created_at, modified), modified);
        }
        for deal in &world.opportunities {
            if deal.presence & bit == 0 {
                continue;
            }
            let Some((account, account_name)) = account_ids.get(&deal.account).cloned() else { continue };
            let stage = vocabulary.stages.reverse(deal.stage).unwrap_or("Qualification");
            let fields = json!({
                "Deal_Name": deal.name, "Account_Name": {"name": account_name, "id": account}, "Amount": decimal_json(deal.amount),
                "Currency": deal.currency, "Stage": stage, "Lead_Source": deal.source, "Closing_Date": deal.close_date.to_string(),
            });
            let fields = self.without_currency_unless_multi(fields);
            let modified = stamp("Deals");
            inner.put("Deals", with_created(fields, deal.created_at, modified), modified);
        }
        for order in &world.orders {
            if order.presence & bit == 0 {
                continue;
            }
            let Some((account, account_name)) = account_ids.get(&order.account).cloned() else { continue };
            let status = match order.status {
                OrderStatus::Draft => "Created",
                OrderStatus::Confirmed | OrderStatus::Shipped | OrderStatus::Invoiced => "Approved",
                OrderStatus::Delivered => "Delivered",
                OrderStatus::Cancelled => "Cancelled",
            };
            let items: Vec<Value> = order
                .lines
                .iter()
                .map(|line| {
                    let product = inner.products.iter().find(|(_, name, _)| name == line.product).cloned();
                    let (product_id, name, code) = product.unwrap_or_default();
                    json!({"Product_Name": {"name": name, "id": product_id}, "Product_Code": code, "Quantity": decimal_json(line.quantity), "List_Price": decimal_json(line.unit_price), "Total": decimal_json(line.quantity * line.unit_price)})
                })
                .collect();
            let fields = json!({
                "Subject": order.number, "Account_Name": {"name": account_name, "id": account}, "Status": status,
                "Due_Date": order.order_date.to_string(), "Currency": order.currency, "Grand_Total": decimal_json(order.total()),
                "Lead_Source": order.source, "Ordered_Items": items,
            });
            let fields = self.without_currency_unless_multi(fields);
            inner.put("Sales_Orders", fields, stamp("Sales_Orders"));
        }
        inner.clock = now;
    }

    /// A single-currency org has no `Currency` field: its amounts are all in the org currency.
    fn without_currency_unless_multi(&self, mut fields: Value) -> Value {
        if !self.multi_currency
            && let Some(fields) = fields.as_object_mut()
        {
            fields.remove("Currency");
        }
        fields
    }
}
