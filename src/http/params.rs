//! Query strings read parameter by parameter, so an unknown parameter or a bad value is refused with
//! its name (`{"error":{"code":"bad_request","field":"limit",…}}`) rather than serde's generic text.
#![deny(clippy::indexing_slicing, clippy::string_slice)] // outside data: no input may panic (issue 17 §3)

use std::collections::BTreeMap;

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use super::ApiError;

/// The parameters of one request, by name.
pub(crate) struct Params(BTreeMap<String, String>);

/// The raw pairs of a query string (axum's extractor, whose rejection this module turns into JSON).
pub(crate) type RawParams = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl Params {
    /// Reads the pairs, refusing parameters not in `allowed` and parameters given twice.
    pub(crate) fn parse(raw: RawParams, allowed: &[&str]) -> Result<Self, ApiError> {
        let Query(pairs) = raw.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
        let mut params = BTreeMap::new();
        for (name, value) in pairs {
            if !allowed.contains(&name.as_str()) {
                let expected = if allowed.is_empty() { "none".to_owned() } else { allowed.join(", ") };
                return Err(ApiError::invalid_parameter(&name, format!("unknown parameter (accepted: {expected})")));
            }
            if params.insert(name.clone(), value).is_some() {
                return Err(ApiError::invalid_parameter(&name, "given more than once"));
            }
        }
        Ok(Self(params))
    }

    /// A text parameter.
    pub(crate) fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }

    /// A non-negative integer parameter.
    pub(crate) fn number(&self, name: &str) -> Result<Option<usize>, ApiError> {
        self.0
            .get(name)
            .map(|text| {
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| ApiError::invalid_parameter(name, format!("{text:?} is not a non-negative integer")))
            })
            .transpose()
    }

    /// A boolean parameter (`true`/`false`/`1`/`0`; absent: false).
    pub(crate) fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(|text| text.trim().to_ascii_lowercase()) {
            None => Ok(false),
            Some(text) if text == "true" || text == "1" || text.is_empty() => Ok(true),
            Some(text) if text == "false" || text == "0" => Ok(false),
            Some(text) => Err(ApiError::invalid_parameter(name, format!("{text:?} is not true or false"))),
        }
    }
}
