//! What a vendor says an object has (its fields or columns), read once per connection and shared by
//! pulls, fetches and pushes, and the check every connector makes on it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::canonical::Entity;
use crate::error::ConnectorError;
use crate::settings::FieldPolicy;

/// Per-entity metadata of one connection (`T`: the vendor's describe result).
pub struct DescribeCache<T> {
    entries: Mutex<HashMap<Entity, Arc<T>>>,
}

impl<T> Default for DescribeCache<T> {
    fn default() -> Self {
        Self { entries: Mutex::new(HashMap::new()) }
    }
}

impl<T> DescribeCache<T> {
    /// The cached metadata of an entity, if it was read.
    pub fn get(&self, entity: Entity) -> Option<Arc<T>> {
        self.entries.lock().ok().and_then(|entries| entries.get(&entity).cloned())
    }

    /// Caches what was read and returns it shared.
    pub fn insert(&self, entity: Entity, value: T) -> Arc<T> {
        let value = Arc::new(value);
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(entity, value.clone());
        }
        value
    }
}

/// Fails with [`ConnectorError::SchemaDrift`] when `required` (the field the mapping cannot work
/// without, `noun` being what the vendor calls it) is missing from `object` and privacy does not
/// exclude it anyway.
pub fn require(
    fields: &BTreeSet<String>,
    required: &str,
    noun: &str,
    object: &str,
    entity: Entity,
    policy: &FieldPolicy,
) -> Result<(), ConnectorError> {
    if fields.contains(required) || !policy.allows(entity, required) {
        return Ok(());
    }
    Err(ConnectorError::SchemaDrift {
        object: object.to_owned(),
        message: format!("{noun} {required} is gone from {object} (renamed or removed); the mapping needs it"),
    })
}
