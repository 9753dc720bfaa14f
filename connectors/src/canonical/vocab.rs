//! Canonical vocabularies (opportunity stages, order statuses, sales channels) and the default
//! vendor-value mapping tables of SPEC §2, as data that configuration can override.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// Every value, in canonical order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// Returns the canonical spelling.
            pub fn as_str(&self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownValue {
                        vocabulary: stringify!($name),
                        value: text.to_owned(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

/// A value outside a canonical vocabulary.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {vocabulary} {value:?} (expected one of {})", expected.join(", "))]
pub struct UnknownValue {
    /// The vocabulary (`Stage`).
    pub vocabulary: &'static str,
    /// The offending value.
    pub value: String,
    /// The accepted spellings.
    pub expected: &'static [&'static str],
}

vocabulary!(
    /// Where a deal stands in the sales flow. Leads are `lead`; an opportunity exists from `qualified` on.
    Stage {
        /// A lead, not yet converted.
        Lead = "lead",
        /// Converted: an opportunity exists.
        Qualified = "qualified",
        /// Budget established.
        Budget = "budget",
        /// Solution planned with the decision makers.
        Plan = "plan",
        /// Proposal / quote out.
        Execute = "execute",
        /// Negotiation and follow-up.
        FollowUp = "follow_up",
        /// Closed won.
        Won = "won",
        /// Closed lost.
        Lost = "lost",
    }
);

impl Stage {
    /// The open stages of the funnel in order, ending with `won` (a won deal reached every one of them).
    pub const FUNNEL: &'static [Self] =
        &[Self::Lead, Self::Qualified, Self::Budget, Self::Plan, Self::Execute, Self::FollowUp, Self::Won];

    /// Returns whether the deal is closed (won or lost).
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Won | Self::Lost)
    }

    /// Returns the position in [`Stage::FUNNEL`] (`lost` has none).
    pub fn funnel_position(&self) -> Option<usize> {
        Self::FUNNEL.iter().position(|stage| stage == self)
    }
}

vocabulary!(
    /// The lifecycle of a sales order.
    OrderStatus {
        /// Being prepared.
        Draft = "draft",
        /// Accepted / activated.
        Confirmed = "confirmed",
        /// On its way.
        Shipped = "shipped",
        /// Received by the customer.
        Delivered = "delivered",
        /// Billed.
        Invoiced = "invoiced",
        /// Cancelled.
        Cancelled = "cancelled",
    }
);

impl OrderStatus {
    /// Returns whether the order counts as a sale (confirmed … invoiced), per SPEC §4.
    pub fn is_sale(&self) -> bool {
        matches!(self, Self::Confirmed | Self::Shipped | Self::Delivered | Self::Invoiced)
    }

    /// Returns the statuses an order in this status may move to: the canonical state machine
    /// draft → confirmed → shipped → delivered → invoiced, with cancelled reachable from any status
    /// before invoiced. Invoiced and cancelled are final.
    pub fn successors(&self) -> &'static [Self] {
        match self {
            Self::Draft => &[Self::Confirmed, Self::Cancelled],
            Self::Confirmed => &[Self::Shipped, Self::Cancelled],
            Self::Shipped => &[Self::Delivered, Self::Cancelled],
            Self::Delivered => &[Self::Invoiced, Self::Cancelled],
            Self::Invoiced | Self::Cancelled => &[],
        }
    }

    /// Returns whether an order in this status may move to `next` (see [`OrderStatus::successors`]).
    pub fn can_become(&self, next: Self) -> bool {
        self.successors().contains(&next)
    }

    /// Returns the statuses a vendor without a value for this one holds it as, nearest first: shipped
    /// and delivered stand for each other (SPEC §2 gives Zoho one `Delivered` and Dataverse one
    /// Fulfilled state for both), invoiced is held as the last status before it the vendor has, and
    /// every sale status is at least confirmed. Draft, confirmed and cancelled have no stand-in.
    pub fn coarser(&self) -> &'static [Self] {
        match self {
            Self::Shipped => &[Self::Delivered, Self::Confirmed],
            Self::Delivered => &[Self::Shipped, Self::Confirmed],
            Self::Invoiced => &[Self::Delivered, Self::Shipped, Self::Confirmed],
            Self::Draft | Self::Confirmed | Self::Cancelled => &[],
        }
    }
}

vocabulary!(
    /// How a deal or order reaches the customer.
    Channel {
        /// The company's own sales force.
        Direct = "direct",
        /// Partners, resellers, distributors.
        Agent = "agent",
        /// Web shop, marketplace.
        Ecommerce = "ecommerce",
        /// Anything else, including unmapped vendor values.
        Other = "other",
    }
);

/// A vendor value → canonical value table. Lookups are exact first, then case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValueMap<T>(BTreeMap<String, T>);

impl<T: Copy> ValueMap<T> {
    /// Builds a table from pairs.
    pub fn from_pairs(pairs: &[(&str, T)]) -> Self {
        Self(pairs.iter().map(|(vendor, canonical)| ((*vendor).to_owned(), *canonical)).collect())
    }

    /// Returns the canonical value for a vendor value, if mapped.
    pub fn get(&self, vendor_value: &str) -> Option<T> {
        self.0.get(vendor_value).copied().or_else(|| {
            self.0.iter().find(|(key, _)| key.eq_ignore_ascii_case(vendor_value)).map(|(_, canonical)| *canonical)
        })
    }

    /// Returns the vendor value to write for a canonical value: the first mapped key, alphabetically,
    /// unless `preferred` lists one.
    pub fn reverse(&self, canonical: T) -> Option<&str>
    where
        T: PartialEq,
    {
        self.0.iter().find(|(_, value)| **value == canonical).map(|(key, _)| key.as_str())
    }

    /// Adds or replaces entries (config overrides on top of the defaults).
    pub fn extend(&mut self, overrides: &ValueMap<T>) {
        for (vendor, canonical) in &overrides.0 {
            self.0.insert(vendor.clone(), *canonical);
        }
    }

    /// Iterates over the entries.
    pub fn iter(&self) -> impl Iterator<Item = (&str, T)> {
        self.0.iter().map(|(key, value)| (key.as_str(), *value))
    }
}

impl<T> Default for ValueMap<T> {
    fn default() -> Self {
        Self(BTreeMap::new())
    }
}

/// The three vendor families crmsync speaks.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VendorKind {
    /// Salesforce (REST, Bulk API 2.0).
    Salesforce,
    /// Zoho CRM (REST v8).
    Zoho,
    /// Microsoft Dynamics 365 / Dataverse Web API.
    Dynamics365,
}

impl VendorKind {
    /// Returns the config spelling (`salesforce`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Salesforce => "salesforce",
            Self::Zoho => "zoho",
            Self::Dynamics365 => "dynamics365",
        }
    }
}

impl fmt::Display for VendorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The mapping tables a connector uses: vendor stage, order status and channel values → canonical.
///
/// Dataverse keys are the option-set integers as text: stages key on `salesstage` (`"0"`…`"3"`), with
/// `statecode` 1/2 (won/lost) decided by the connector; order statuses key on the salesorder `statecode`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Vocabulary {
    /// Opportunity stage names → canonical stage.
    pub stages: ValueMap<Stage>,
    /// Order status values → canonical order status.
    pub order_statuses: ValueMap<OrderStatus>,
    /// Channel field values (lead source) → canonical channel.
    pub channels: ValueMap<Channel>,
}

impl Vocabulary {
    /// Returns SPEC §2's default tables for a vendor.
    pub fn defaults(kind: VendorKind) -> Self {
        use Channel::{Agent, Direct, Ecommerce, Other};
        use OrderStatus::{Cancelled, Confirmed, Delivered, Draft, Invoiced};
        use Stage::{Budget, Execute, FollowUp, Lost, Plan, Qualified, Won};
        let channels = ValueMap::from_pairs(&[
            ("Web", Ecommerce),
            ("Online Store", Ecommerce),
            ("Marketplace", Ecommerce),
            ("Partner", Agent),
            ("Partner Referral", Agent),
            ("Reseller", Agent),
            ("Distributor", Agent),
            ("Phone Inquiry", Direct),
            ("Cold Call", Direct),
            ("Employee Referral", Direct),
            ("Trade Show", Direct),
            ("Direct", Direct),
            ("Purchased List", Other),
            ("Other", Other),
        ]);
        match kind {
            VendorKind::Salesforce => Self {
                stages: ValueMap::from_pairs(&[
                    ("Prospecting", Qualified),
                    ("Qualification", Qualified),
                    ("Needs Analysis", Budget),
                    ("Value Proposition", Plan),
                    ("Id. Decision Makers", Plan),
                    ("Perception Analysis", Plan),
                    ("Proposal/Price Quote", Execute),
                    ("Negotiation/Review", FollowUp),
                    ("Closed Won", Won),
                    ("Closed Lost", Lost),
                ]),
                order_statuses: ValueMap::from_pairs(&[("Draft", Draft), ("Activated", Confirmed)]),
                channels,
            },
            VendorKind::Zoho => Self {
                stages: ValueMap::from_pairs(&[
                    ("Qualification", Qualified),
                    ("Needs Analysis", Budget),
                    ("Value Proposition", Plan),
                    ("Identify Decision Makers", Plan),
                    ("Proposal/Price Quote", Execute),
                    ("Negotiation/Review", FollowUp),
                    ("Closed Won", Won),
                    ("Closed Lost", Lost),
                    ("Closed Lost to Competition", Lost),
                    ("Closed-Lost to Competition", Lost),
                ]),
                order_statuses: ValueMap::from_pairs(&[
                    ("Created", Draft),
                    ("Approved", Confirmed),
                    ("Delivered", Delivered),
                    ("Cancelled", Cancelled),
                ]),
                channels,
            },
            VendorKind::Dynamics365 => Self {
                stages: ValueMap::from_pairs(&[("0", Qualified), ("1", Plan), ("2", Execute), ("3", FollowUp)]),
                order_statuses: ValueMap::from_pairs(&[
                    ("0", Draft),
                    ("1", Confirmed),
                    ("2", Cancelled),
                    ("3", Delivered),
                    ("4", Invoiced),
                ]),
                channels,
            },
        }
    }

    /// Returns the defaults for `kind` with `overrides` laid on top.
    pub fn with_overrides(kind: VendorKind, overrides: &Vocabulary) -> Self {
        let mut merged = Self::defaults(kind);
        merged.stages.extend(&overrides.stages);
        merged.order_statuses.extend(&overrides.order_statuses);
        merged.channels.extend(&overrides.channels);
        merged
    }

    /// The vendor value to write for an order status: its own, else that of the nearest status the
    /// vendor holds it as ([`OrderStatus::coarser`]); `None`: the status is not written (the vendor
    /// keeps what it had).
    pub fn order_status_value(&self, status: OrderStatus) -> Option<&str> {
        std::iter::once(status)
            .chain(status.coarser().iter().copied())
            .find_map(|candidate| self.order_statuses.reverse(candidate))
    }

    /// The canonical status a vendor's copy of an order in `status` reads back as (see
    /// [`Vocabulary::order_status_value`]): `shipped` in a vendor that has only a delivered value
    /// reads back `delivered`.
    pub fn order_status_read_back(&self, status: OrderStatus) -> Option<OrderStatus> {
        self.order_status_value(status).and_then(|value| self.order_statuses.get(value))
    }

    /// Returns `data` as the vendor reads it back: without the stage this vocabulary has no vendor
    /// value for (a connector does not write it, so it reads back as whatever the vendor had), and
    /// with the order status the vendor holds it as ([`Vocabulary::order_status_read_back`]).
    pub fn representable(&self, data: &super::EntityData) -> super::EntityData {
        let mut data = data.clone();
        match &mut data {
            super::EntityData::Opportunity(opportunity) => {
                if opportunity.stage.is_some_and(|stage| self.stages.reverse(stage).is_none()) {
                    opportunity.stage = None;
                }
            }
            super::EntityData::Order(order) => {
                order.status = order.status.and_then(|status| self.order_status_read_back(status));
            }
            super::EntityData::Account(_) | super::EntityData::Lead(_) => {}
        }
        data
    }

    /// The vendor value to write for a channel: the vendor's `preferred` value when this vocabulary
    /// maps it back to the same channel, else any value that does (none: the field is not written).
    pub fn vendor_channel(&self, channel: Channel, preferred: &str) -> Option<String> {
        if self.channels.get(preferred) == Some(channel) {
            Some(preferred.to_owned())
        } else {
            self.channels.reverse(channel).map(str::to_owned)
        }
    }

    /// Maps a channel value; unmapped or missing values are `other` (never an error, SPEC §2).
    pub fn channel(&self, vendor_value: Option<&str>) -> Channel {
        vendor_value.and_then(|value| self.channels.get(value)).unwrap_or(Channel::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spec_default_stage_maps() {
        let salesforce = Vocabulary::defaults(VendorKind::Salesforce);
        let expected = [
            ("Prospecting", Stage::Qualified),
            ("Qualification", Stage::Qualified),
            ("Needs Analysis", Stage::Budget),
            ("Value Proposition", Stage::Plan),
            ("Id. Decision Makers", Stage::Plan),
            ("Perception Analysis", Stage::Plan),
            ("Proposal/Price Quote", Stage::Execute),
            ("Negotiation/Review", Stage::FollowUp),
            ("Closed Won", Stage::Won),
            ("Closed Lost", Stage::Lost),
        ];
        for (vendor, canonical) in expected {
            assert_eq!(salesforce.stages.get(vendor), Some(canonical), "{vendor}");
        }
        let zoho = Vocabulary::defaults(VendorKind::Zoho);
        assert_eq!(zoho.stages.get("Closed Lost to Competition"), Some(Stage::Lost));
        assert_eq!(zoho.order_statuses.get("Approved"), Some(OrderStatus::Confirmed));
        let dataverse = Vocabulary::defaults(VendorKind::Dynamics365);
        assert_eq!(dataverse.order_statuses.get("4"), Some(OrderStatus::Invoiced));
    }

    #[test]
    fn an_order_moves_forward_one_status_at_a_time_and_is_cancelled_only_before_it_is_invoiced() {
        use OrderStatus::{Cancelled, Confirmed, Delivered, Draft, Invoiced, Shipped};
        let forward = [Draft, Confirmed, Shipped, Delivered, Invoiced];
        for pair in forward.windows(2) {
            assert!(pair[0].can_become(pair[1]), "{} -> {}", pair[0], pair[1]);
            assert!(!pair[1].can_become(pair[0]), "{} -> {} goes back", pair[1], pair[0]);
        }
        assert!(!Draft.can_become(Shipped), "no status is skipped");
        for status in [Draft, Confirmed, Shipped, Delivered] {
            assert!(status.can_become(Cancelled), "{status} can be cancelled");
        }
        assert!(Invoiced.successors().is_empty() && Cancelled.successors().is_empty(), "final statuses");
        assert!(!Draft.can_become(Draft), "staying put is not a transition");
    }

    #[test]
    fn a_status_the_vendor_lacks_is_written_as_the_nearest_one_it_has() {
        use OrderStatus::{Cancelled, Confirmed, Delivered, Draft, Invoiced, Shipped};
        let zoho = Vocabulary::defaults(VendorKind::Zoho);
        assert_eq!(zoho.order_status_value(Shipped), Some("Delivered"), "SPEC §2: shipped / delivered");
        assert_eq!(zoho.order_status_value(Invoiced), Some("Delivered"));
        assert_eq!(zoho.order_status_read_back(Shipped), Some(Delivered));
        let dataverse = Vocabulary::defaults(VendorKind::Dynamics365);
        assert_eq!(dataverse.order_status_value(Shipped), Some("3"), "Fulfilled");
        assert_eq!(dataverse.order_status_value(Invoiced), Some("4"));
        let salesforce = Vocabulary::defaults(VendorKind::Salesforce);
        for status in [Shipped, Delivered, Invoiced] {
            assert_eq!(salesforce.order_status_read_back(status), Some(Confirmed), "{status} is still Activated");
        }
        assert_eq!(salesforce.order_status_value(Draft), Some("Draft"));
        assert_eq!(salesforce.order_status_value(Cancelled), None, "no stand-in for cancelled: not written");
    }

    #[test]
    fn overrides_replace_and_extend_defaults() {
        let overrides = Vocabulary {
            stages: ValueMap::from_pairs(&[("Discovery", Stage::Budget), ("Prospecting", Stage::Lead)]),
            ..Vocabulary::default()
        };
        let merged = Vocabulary::with_overrides(VendorKind::Salesforce, &overrides);
        assert_eq!(merged.stages.get("Discovery"), Some(Stage::Budget));
        assert_eq!(merged.stages.get("Prospecting"), Some(Stage::Lead));
        assert_eq!(merged.stages.get("Closed Won"), Some(Stage::Won));
    }

    #[test]
    fn unmapped_channel_is_other_and_lookup_ignores_case() {
        let vocabulary = Vocabulary::defaults(VendorKind::Zoho);
        assert_eq!(vocabulary.channel(Some("web")), Channel::Ecommerce);
        assert_eq!(vocabulary.channel(Some("Carrier Pigeon")), Channel::Other);
        assert_eq!(vocabulary.channel(None), Channel::Other);
    }

    #[test]
    fn vocabulary_text_round_trips() {
        for stage in Stage::ALL {
            assert_eq!(stage.as_str().parse::<Stage>().unwrap(), *stage);
        }
        let error = "won't".parse::<Stage>().unwrap_err();
        assert!(error.to_string().contains("expected one of lead, qualified"), "{error}");
    }
}
