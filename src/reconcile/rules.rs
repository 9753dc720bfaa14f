//! The rules reconciliation follows: merge policies, match keys and routes, as plain data built
//! from configuration.

use std::collections::BTreeMap;

use crmsync_connectors::canonical::{ConnectionId, Entity};

use crate::config::{Config, ConflictPolicy, DeletePolicy, FieldPolicy};

/// How one field's value is chosen when connections disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// The newest vendor modification wins; ties go to `source_priority`.
    Newest,
    /// The earliest connection in this list wins (unlisted connections rank last, then newest).
    Priority(Vec<ConnectionId>),
    /// Only this connection may set the field (others may fill it while it is empty).
    Authoritative(ConnectionId),
    /// A conflict is held (the current value stays) until a person resolves it.
    Manual,
}

/// What a route does when the source deletes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteAction {
    /// Delete the target's copy.
    Delete,
    /// Leave the target's copy.
    Ignore,
    /// Mark it instead (orders: status `cancelled`).
    Mark,
}

/// Changes of `entity` (any entity when `None`) from `from` are queued for every connection in `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Entity filter.
    pub entity: Option<Entity>,
    /// Source connections.
    pub from: Vec<ConnectionId>,
    /// Target connections.
    pub to: Vec<ConnectionId>,
    /// Delete behaviour.
    pub on_delete: DeleteAction,
}

/// Everything reconciliation needs to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Tie-break order of connections (first = strongest).
    pub source_priority: Vec<ConnectionId>,
    /// The policy of fields without a more specific one.
    pub default_policy: Policy,
    /// Entity → field (or `"*"` for the entity's default) → policy.
    pub policies: BTreeMap<Entity, BTreeMap<String, Policy>>,
    /// Entity → match keys; each key is a list of canonical fields that must all be present and equal.
    pub match_keys: BTreeMap<Entity, Vec<Vec<String>>>,
    /// Routes.
    pub routes: Vec<Route>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            source_priority: Vec::new(),
            default_policy: Policy::Newest,
            policies: BTreeMap::new(),
            match_keys: default_match_keys(),
            routes: Vec::new(),
        }
    }
}

/// SPEC §3's default match keys.
pub fn default_match_keys() -> BTreeMap<Entity, Vec<Vec<String>>> {
    let key = |fields: &[&str]| fields.iter().map(|field| (*field).to_owned()).collect::<Vec<_>>();
    BTreeMap::from([
        (Entity::Account, vec![key(&["name", "domain"]), key(&["number"])]),
        (Entity::Lead, vec![key(&["email"])]),
        (Entity::Opportunity, vec![key(&["name", "account"])]),
        (Entity::Order, vec![key(&["number"])]),
    ])
}

impl Rules {
    /// Translates the `[reconcile]` and `[[routes]]` configuration into rules.
    pub fn from_config(config: &Config) -> Self {
        let policy = |policy: &FieldPolicy| match policy {
            FieldPolicy::Newest => Policy::Newest,
            FieldPolicy::Priority(order) => Policy::Priority(order.clone()),
            FieldPolicy::Authoritative(owner) => Policy::Authoritative(owner.clone()),
            FieldPolicy::Manual => Policy::Manual,
        };
        let default_policy = match config.reconcile.conflict {
            ConflictPolicy::Newest => Policy::Newest,
            ConflictPolicy::Priority => Policy::Priority(config.reconcile.source_priority.clone()),
            ConflictPolicy::Manual => Policy::Manual,
        };
        Self {
            source_priority: config.reconcile.source_priority.clone(),
            default_policy,
            policies: config
                .reconcile
                .policies
                .iter()
                .map(|(entity, fields)| {
                    (*entity, fields.iter().map(|(field, rule)| (field.clone(), policy(rule))).collect())
                })
                .collect(),
            match_keys: if config.reconcile.match_keys.is_empty() {
                default_match_keys()
            } else {
                config.reconcile.match_keys.clone()
            },
            routes: config
                .routes
                .iter()
                .map(|route| Route {
                    entity: route.entity,
                    from: route.from.clone(),
                    to: route.to.clone(),
                    on_delete: match route.on_delete {
                        DeletePolicy::Delete => DeleteAction::Delete,
                        DeletePolicy::Ignore => DeleteAction::Ignore,
                        DeletePolicy::Mark => DeleteAction::Mark,
                    },
                })
                .collect(),
        }
    }

    /// Returns the policy of one field.
    pub fn policy(&self, entity: Entity, field: &str) -> &Policy {
        self.policies
            .get(&entity)
            .and_then(|fields| fields.get(field).or_else(|| fields.get("*")))
            .unwrap_or(&self.default_policy)
    }

    /// Returns a connection's rank in `source_priority` (unlisted connections rank after every listed one).
    pub fn rank(&self, connection: Option<&ConnectionId>) -> usize {
        connection
            .and_then(|connection| self.source_priority.iter().position(|listed| listed == connection))
            .unwrap_or(self.source_priority.len())
    }

    /// Returns the connections a change of `entity` from `source` must be queued for, with the delete
    /// behaviour of the route that selected each (the first matching route wins per target).
    pub fn targets(&self, entity: Entity, source: Option<&ConnectionId>) -> Vec<(ConnectionId, DeleteAction)> {
        let mut targets: Vec<(ConnectionId, DeleteAction)> = Vec::new();
        for route in &self.routes {
            if route.entity.is_some_and(|routed| routed != entity) {
                continue;
            }
            // Local changes (CLI/API, no source connection) go to every target of every matching route.
            if let Some(source) = source
                && !route.from.contains(source)
            {
                continue;
            }
            for target in &route.to {
                if Some(target) == source || targets.iter().any(|(seen, _)| seen == target) {
                    continue;
                }
                targets.push((target.clone(), route.on_delete));
            }
        }
        targets
    }
}
