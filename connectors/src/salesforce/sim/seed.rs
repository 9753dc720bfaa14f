//! Renders the seeded world as Salesforce rows.

use std::collections::HashMap;

use serde_json::{Map, json};

use super::schema::stage_probability;
use super::{API_VERSION, STANDARD_PRICEBOOK_ID, SalesforceSim, stamp_text};
use crate::canonical::{OrderStatus, Timestamp, VendorKind, Vocabulary, decimal_json};
use crate::sim::{PRODUCTS, World};

impl SalesforceSim {
    pub(super) fn seed(&self, world: &World, shared: usize, bit: u8) {
        let vocabulary = Vocabulary::defaults(VendorKind::Salesforce);
        let total = world.accounts.len() + world.leads.len() + world.opportunities.len() + world.orders.len();
        let mut inner = self.lock();
        let now = Timestamp::now().unix_millis();
        // Seeded rows are stamped one second apart, ending one second before now.
        let base = now - 1000 * (i64::try_from(total).unwrap_or(i64::MAX) + 1);
        let mut counter = 0i64;
        let mut per_object: HashMap<&str, usize> = HashMap::new();
        let mut stamp = |object: &'static str| {
            counter += 1;
            let seen = per_object.entry(object).or_default();
            *seen += 1;
            if *seen <= shared { base } else { base + counter * 1000 }
        };
        // The standard price book with one active entry per product (list price 10.00).
        let mut catalog = Map::new();
        catalog.insert("Name".into(), json!("Standard Price Book"));
        catalog.insert("IsStandard".into(), json!(true));
        catalog.insert("IsActive".into(), json!(true));
        inner.put_seed("Pricebook2", STANDARD_PRICEBOOK_ID.to_owned(), catalog, base, Vec::new());
        let mut entries = HashMap::new();
        for (product, sku) in PRODUCTS {
            let entry_id = inner.new_id("01u");
            let product_id = inner.new_id("01t");
            let mut entry = Map::new();
            entry.insert("Name".into(), json!(product));
            entry.insert("ProductCode".into(), json!(sku));
            entry.insert("Product2Id".into(), json!(product_id));
            entry.insert("Pricebook2Id".into(), json!(STANDARD_PRICEBOOK_ID));
            entry.insert("UnitPrice".into(), json!(10));
            entry.insert("IsActive".into(), json!(true));
            if self.multi_currency {
                entry.insert("CurrencyIsoCode".into(), json!(self.corporate_currency));
            }
            inner.put_seed("PricebookEntry", entry_id.clone(), entry, base, Vec::new());
            entries.insert(*sku, entry_id);
        }
        let mut account_ids = HashMap::new();
        for (index, account) in world.accounts.iter().enumerate() {
            if account.presence & bit == 0 {
                continue;
            }
            let id = inner.new_id("001");
            let mut fields = Map::new();
            fields.insert("Name".into(), json!(account.name));
            fields.insert("AccountNumber".into(), json!(account.number));
            fields.insert("Website".into(), json!(format!("https://www.{}", account.domain)));
            fields.insert("Industry".into(), json!(account.industry));
            fields.insert("BillingCountry".into(), json!(account.country));
            fields.insert("OwnerId".into(), json!("005000000000001AAA"));
            let modstamp = stamp("Account");
            inner.put_seed("Account", id.clone(), fields, modstamp, Vec::new());
            account_ids.insert(index, id);
        }
        for lead in &world.leads {
            if lead.presence & bit == 0 {
                continue;
            }
            let id = inner.new_id("00Q");
            let mut fields = Map::new();
            fields.insert("FirstName".into(), json!(lead.first_name));
            fields.insert("LastName".into(), json!(lead.last_name));
            fields.insert("Company".into(), json!(lead.company));
            fields.insert("Email".into(), json!(lead.email));
            fields.insert("LeadSource".into(), json!(lead.source));
            fields.insert(
                "Status".into(),
                json!(if lead.converted { "Closed - Converted" } else { "Open - Not Contacted" }),
            );
            fields.insert("IsConverted".into(), json!(lead.converted));
            let modstamp = stamp("Lead");
            fields.insert("CreatedDate".into(), json!(stamp_text(lead.created_at.unix_millis().min(modstamp))));
            inner.put_seed("Lead", id, fields, modstamp, Vec::new());
        }
        for opportunity in &world.opportunities {
            if opportunity.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&opportunity.account) else { continue };
            let id = inner.new_id("006");
            let stage = vocabulary.stages.reverse(opportunity.stage).unwrap_or("Prospecting").to_owned();
            let mut fields = Map::new();
            fields.insert("Name".into(), json!(opportunity.name));
            fields.insert("AccountId".into(), json!(account));
            fields.insert("Amount".into(), decimal_json(opportunity.amount));
            // A single-currency org has no currency field: its amounts are in the corporate currency.
            if self.multi_currency {
                fields.insert("CurrencyIsoCode".into(), json!(opportunity.currency));
            }
            fields.insert("Probability".into(), json!(stage_probability(&stage)));
            fields.insert("IsWon".into(), json!(stage == "Closed Won"));
            fields.insert("IsClosed".into(), json!(stage.starts_with("Closed")));
            fields.insert("StageName".into(), json!(stage));
            fields.insert("LeadSource".into(), json!(opportunity.source));
            fields.insert("CloseDate".into(), json!(opportunity.close_date.to_string()));
            let modstamp = stamp("Opportunity");
            let created = opportunity.created_at.unix_millis().min(modstamp);
            fields.insert("CreatedDate".into(), json!(stamp_text(created)));
            inner.put_seed("Opportunity", id, fields, modstamp, Vec::new());
        }
        for order in &world.orders {
            if order.presence & bit == 0 {
                continue;
            }
            let Some(account) = account_ids.get(&order.account) else { continue };
            let id = inner.new_id("801");
            let status = match order.status {
                OrderStatus::Draft => "Draft",
                OrderStatus::Confirmed => "Activated",
                OrderStatus::Shipped => "Shipped",
                OrderStatus::Delivered => "Delivered",
                OrderStatus::Invoiced => "Invoiced",
                OrderStatus::Cancelled => "Cancelled",
            };
            let mut fields = Map::new();
            fields.insert("OrderNumber".into(), json!(format!("{:08}", inner.next_id)));
            fields.insert("Crmsync_Order_Number__c".into(), json!(order.number));
            fields.insert("AccountId".into(), json!(account));
            fields.insert("Status".into(), json!(status));
            fields.insert("EffectiveDate".into(), json!(order.order_date.to_string()));
            fields.insert("TotalAmount".into(), decimal_json(order.total()));
            if self.multi_currency {
                fields.insert("CurrencyIsoCode".into(), json!(order.currency));
            }
            fields.insert("LeadSource".into(), json!(order.source));
            fields.insert("Pricebook2Id".into(), json!(STANDARD_PRICEBOOK_ID));
            let items = order
                .lines
                .iter()
                .map(|line| {
                    let item_id = inner.new_id("802");
                    let mut item = Map::new();
                    item.insert("attributes".into(), json!({"type": "OrderItem", "url": format!("/services/data/{API_VERSION}/sobjects/OrderItem/{item_id}")}));
                    item.insert("Id".into(), json!(item_id));
                    item.insert("PricebookEntryId".into(), json!(entries.get(line.sku)));
                    item.insert("Quantity".into(), decimal_json(line.quantity));
                    item.insert("UnitPrice".into(), decimal_json(line.unit_price));
                    item.insert("TotalPrice".into(), decimal_json(line.quantity * line.unit_price));
                    item.insert("Product2".into(), json!({"attributes": {"type": "Product2"}, "Name": line.product, "ProductCode": line.sku}));
                    item
                })
                .collect();
            let modstamp = stamp("Order");
            inner.put_seed("Order", id, fields, modstamp, items);
        }
        inner.clock = now;
    }
}
