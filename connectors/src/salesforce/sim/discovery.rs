//! What clients read before any data: the API versions, a version's resources and the org's limits.
//! References (REST API Developer Guide): resources_versions.htm (`GET /services/data/`, no
//! authentication), resources_discoveryresource.htm (`GET /services/data/vXX.X/`),
//! resources_limits.htm (`GET /services/data/vXX.X/limits/`).

use std::sync::atomic::Ordering;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::{DAILY_LIMIT, Shared};

/// The versions this org serves, oldest first (`Winter '15` = 32.0 … `Winter '25` = 62.0).
const VERSIONS: std::ops::RangeInclusive<u32> = 32..=62;

fn release(version: u32) -> String {
    // Three releases a year, Winter '15 being 32.0.
    let index = version - 32;
    let season = ["Winter", "Spring", "Summer"][(index % 3) as usize];
    let year = 15 + index / 3;
    format!("{season} '{year:02}")
}

/// `GET /services/data/`: every version, no authentication, no `Sforce-Limit-Info`.
pub(super) async fn versions() -> Response {
    let versions: Vec<Value> = VERSIONS
        .map(|version| json!({"label": release(version), "url": format!("/services/data/v{version}.0"), "version": format!("{version}.0")}))
        .collect();
    axum::Json(versions).into_response()
}

/// `GET /services/data/vXX.X/`: the resources of a version that this simulator serves.
pub(super) async fn resources(State(sim): Shared, headers: HeaderMap, Path(version): Path<String>) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let mut resources = Map::new();
    for name in ["sobjects", "query", "queryAll", "limits", "composite", "jobs"] {
        resources.insert(name.to_owned(), json!(format!("/services/data/{version}/{name}")));
    }
    sim.with_limit_info(axum::Json(Value::Object(resources)).into_response())
}

/// `GET /services/data/vXX.X/limits`: the org's allocations, `DailyApiRequests` counting this
/// simulator's calls.
pub(super) async fn limits(State(sim): Shared, headers: HeaderMap) -> Response {
    if let Err(response) = sim.gate(&headers).await {
        return sim.with_limit_info(response);
    }
    sim.counters.read.fetch_add(1, Ordering::SeqCst);
    let used = sim.api_usage.load(Ordering::SeqCst) + 1;
    let jobs = sim.lock().jobs_created;
    let allocation = |max: u64, used: u64| json!({"Max": max, "Remaining": max.saturating_sub(used)});
    let body = json!({
        "ConcurrentAsyncGetReportInstances": allocation(200, 0),
        "DailyApiRequests": allocation(DAILY_LIMIT, used),
        "DailyAsyncApexExecutions": allocation(250_000, 0),
        "DailyBulkApiBatches": allocation(15_000, 0),
        "DailyBulkV2QueryFileStorageMB": allocation(976_562, 0),
        "DailyBulkV2QueryJobs": allocation(10_000, jobs),
        "DataStorageMB": allocation(5, 0),
        "FileStorageMB": allocation(20, 0),
        "HourlyTimeBasedWorkflow": allocation(1000, 0),
        "SingleEmail": allocation(15, 0),
    });
    sim.with_limit_info(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_labels_follow_the_three_a_year_cadence() {
        assert_eq!(release(32), "Winter '15");
        assert_eq!(release(59), "Winter '24");
        assert_eq!(release(62), "Winter '25");
        assert_eq!(release(61), "Summer '24");
    }
}
