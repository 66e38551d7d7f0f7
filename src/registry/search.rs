//! Docker Hub's search API (`GET /v1/search?q=TERM&n=N` on index.docker.io), which `strata
//! search` uses for Docker Hub; other registries are searched through `_catalog`
//! ([`Client::catalog`]). Uses the parent's client, error type and helpers.

use super::{check_status, read_limited, Client, Error};
use crate::reference::Repository;
use reqwest::Method;

/// Where Docker Hub's search API lives.
pub const HUB_SEARCH_BASE: &str = "https://index.docker.io";

/// Test hook: another base URL for the search API (a loopback server in the tests).
pub const HUB_SEARCH_ENV: &str = "STRATA_HUB_SEARCH_URL";

/// Whether `registry` is Docker Hub (its search API applies).
pub fn is_docker_hub(registry: &str) -> bool {
    matches!(
        registry,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// One search result as Docker Hub answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct SearchResult {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub star_count: u64,
    #[serde(default)]
    pub is_official: bool,
    #[serde(default)]
    pub is_automated: bool,
}

impl Client {
    /// Docker Hub's search for `term`, at most `limit` results (the API caps at 100).
    pub async fn hub_search(&self, term: &str, limit: usize) -> Result<Vec<SearchResult>, Error> {
        let base = std::env::var(HUB_SEARCH_ENV).unwrap_or_else(|_| HUB_SEARCH_BASE.to_string());
        let ep = self.upstream(&Repository {
            registry: crate::reference::DEFAULT_REGISTRY.to_string(),
            name: String::new(),
        })?;
        let url = reqwest::Url::parse_with_params(
            &format!("{}/v1/search", base.trim_end_matches('/')),
            &[("q", term), ("n", &limit.clamp(1, 100).to_string())],
        )
        .map_err(|e| Error::BadManifest {
            what: base.clone(),
            msg: format!("bad search URL: {e}"),
        })?;
        let resp = ep
            .http
            .get(url.clone())
            .timeout(std::time::Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| Error::SearchUnavailable {
                url: url.to_string(),
                detail: root_cause(&e),
            })?;
        let resp = check_status(resp, Method::GET, url.as_str(), "docker.io").await?;
        let body = read_limited(resp, 8 << 20, url.as_str()).await?;
        #[derive(serde::Deserialize)]
        struct Answer {
            #[serde(default)]
            results: Vec<SearchResult>,
        }
        let a: Answer = serde_json::from_slice(&body).map_err(|e| Error::BadManifest {
            what: url.to_string(),
            msg: format!("not a search answer: {e}"),
        })?;
        Ok(a.results.into_iter().take(limit).collect())
    }
}

/// The innermost cause of a request failure ("Connection refused", "dns error: ...").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}
