//! Retrieving files from the upstream API without becoming an SSRF proxy.
//!
//! Only http(s) URLs whose host (and port) is in UPSTREAM_ALLOWED_HOSTS are fetched. The host
//! is resolved once, every address is checked (never link-local or the EC2 metadata
//! service, whatever the allow-list says), and the connection is pinned to the checked
//! address so a second DNS answer cannot redirect it. Redirects are followed by hand, only to
//! the same host, at most five times.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use reqwest::header::{ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, LOCATION};
use reqwest::{StatusCode, Url};

const MAX_REDIRECTS: usize = 5;

#[derive(Debug)]
pub enum RetrievalError {
    /// The URL or its target is not allowed; nothing was fetched.
    Refused(String),
    /// The upstream failed or answered with an error.
    Upstream(String),
    TooLarge(u64),
}

impl std::fmt::Display for RetrievalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RetrievalError::Refused(why) => write!(f, "refused: {why}"),
            RetrievalError::Upstream(why) => write!(f, "upstream failed: {why}"),
            RetrievalError::TooLarge(limit) => write!(f, "larger than {limit} bytes"),
        }
    }
}

/// Validators from an earlier retrieval, for a conditional GET.
#[derive(Debug, Default, Clone)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

pub struct Retrieved {
    pub response: reqwest::Response,
    pub validators: Validators,
    pub url: Url,
}

pub enum Fetched {
    NotModified,
    Body(Box<Retrieved>),
}

#[derive(Clone)]
pub struct Upstream {
    allowed: Vec<(String, Option<u16>)>,
    timeout: Duration,
    max_size: u64,
}

impl Upstream {
    pub fn new(allowed_hosts: &[String], timeout: Duration, max_size: u64) -> Upstream {
        let allowed = allowed_hosts
            .iter()
            .filter(|h| !h.trim().is_empty())
            .map(|entry| {
                let entry = entry.trim().to_ascii_lowercase();
                match entry.rsplit_once(':') {
                    Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                        match port.parse() {
                            Ok(port) => (host.trim_matches(['[', ']']).to_string(), Some(port)),
                            Err(_) => (entry.clone(), None),
                        }
                    }
                    _ => (entry.trim_matches(['[', ']']).to_string(), None),
                }
            })
            .collect();
        Upstream {
            allowed,
            timeout,
            max_size,
        }
    }

    /// Checks scheme and allow-list; returns host and port.
    pub fn check_url(&self, url: &Url) -> Result<(String, u16), RetrievalError> {
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(RetrievalError::Refused(format!(
                "scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RetrievalError::Refused(
                "URLs with credentials are not fetched".into(),
            ));
        }
        let host = url
            .host_str()
            .ok_or_else(|| RetrievalError::Refused("the URL has no host".into()))?
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| RetrievalError::Refused("the URL has no port".into()))?;
        let allowed = self.allowed.iter().any(|(h, p)| {
            *h == host && p.is_none_or(|p| p == port) && (p.is_some() || url.port().is_none())
        });
        if !allowed {
            return Err(RetrievalError::Refused(format!(
                "host `{host}:{port}` is not in UPSTREAM_ALLOWED_HOSTS"
            )));
        }
        Ok((host, port))
    }

    /// Fetches `url`, following same-host redirects; checks every hop.
    pub async fn fetch(
        &self,
        url: &str,
        validators: &Validators,
    ) -> Result<Fetched, RetrievalError> {
        let mut url =
            Url::parse(url).map_err(|e| RetrievalError::Refused(format!("not a URL: {e}")))?;
        let (first_host, _) = self.check_url(&url)?;
        for _ in 0..=MAX_REDIRECTS {
            let (host, port) = self.check_url(&url)?;
            if host != first_host {
                return Err(RetrievalError::Refused(format!(
                    "redirect to another host (`{host}`) refused"
                )));
            }
            let address = resolve_safely(&host, port).await?;
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .resolve(&host, address)
                .connect_timeout(Duration::from_secs(10))
                .timeout(self.timeout)
                .build()
                .map_err(|e| RetrievalError::Upstream(format!("building an HTTP client: {e}")))?;
            let mut headers = HeaderMap::new();
            if let Some(etag) = validators.etag.as_deref().and_then(|v| v.parse().ok()) {
                headers.insert(IF_NONE_MATCH, etag);
            }
            if let Some(date) = validators
                .last_modified
                .as_deref()
                .and_then(|v| v.parse().ok())
            {
                headers.insert(IF_MODIFIED_SINCE, date);
            }
            let response = client
                .get(url.clone())
                .headers(headers)
                .send()
                .await
                .map_err(|e| RetrievalError::Upstream(format!("GET {url}: {e}")))?;
            let status = response.status();
            if status == StatusCode::NOT_MODIFIED {
                return Ok(Fetched::NotModified);
            }
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| {
                        RetrievalError::Upstream(format!("{status} without a Location"))
                    })?;
                url = url
                    .join(location)
                    .map_err(|e| RetrievalError::Refused(format!("bad redirect target: {e}")))?;
                continue;
            }
            if !status.is_success() {
                return Err(RetrievalError::Upstream(format!(
                    "GET {url} answered {status}"
                )));
            }
            if response
                .content_length()
                .is_some_and(|len| len > self.max_size)
            {
                return Err(RetrievalError::TooLarge(self.max_size));
            }
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                    .map(str::to_string)
            };
            let validators = Validators {
                etag: header(ETAG),
                last_modified: header(LAST_MODIFIED),
            };
            return Ok(Fetched::Body(Box::new(Retrieved {
                response,
                validators,
                url,
            })));
        }
        Err(RetrievalError::Upstream(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    }
}

/// Addresses a retrieval may never reach, whatever the allow-list says: link-local
/// (including the instance metadata service 169.254.169.254), its IPv6 twin fd00:ec2::254,
/// unspecified and multicast addresses.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden(IpAddr::V4(v4));
            }
            let metadata: std::net::Ipv6Addr = "fd00:ec2::254".parse().expect("valid address");
            v6 == metadata
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6.is_unspecified()
                || v6.is_multicast()
        }
    }
}

async fn resolve_safely(host: &str, port: u16) -> Result<SocketAddr, RetrievalError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| RetrievalError::Upstream(format!("resolving {host}: {e}")))?
        .collect();
    if let Some(bad) = addresses.iter().find(|a| forbidden(a.ip())) {
        return Err(RetrievalError::Refused(format!(
            "{host} resolves to {} (link-local or metadata address)",
            bad.ip()
        )));
    }
    addresses
        .into_iter()
        .next()
        .ok_or_else(|| RetrievalError::Upstream(format!("{host} has no address")))
}

/// A file name from the URL's last path segment.
pub fn name_from_url(url: &str) -> Option<String> {
    let url = Url::parse(url).ok()?;
    let segment = url.path_segments()?.rev().find(|s| !s.is_empty())?;
    String::from_utf8(crate::names::percent_decode(segment)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(hosts: &[&str]) -> Upstream {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        Upstream::new(&hosts, Duration::from_secs(5), 1 << 20)
    }

    #[test]
    fn only_allowed_hosts_and_web_schemes_pass() {
        let up = upstream(&["api.example.com", "127.0.0.1:9000"]);
        let ok = |u: &str| up.check_url(&Url::parse(u).unwrap()).is_ok();
        assert!(ok("https://api.example.com/data.csv"));
        assert!(ok("http://api.example.com/data.csv"));
        assert!(ok("http://127.0.0.1:9000/x"));
        assert!(!ok("http://127.0.0.1:9001/x"), "other port");
        assert!(
            !ok("https://api.example.com:8443/x"),
            "non-default port needs listing"
        );
        assert!(!ok("https://evil.example.com/x"));
        assert!(!ok("ftp://api.example.com/x"));
        assert!(!ok("file:///etc/passwd"));
        assert!(!ok("https://user:pw@api.example.com/x"));
    }

    #[test]
    fn metadata_and_link_local_addresses_are_forbidden() {
        for ip in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "0.0.0.0",
            "::ffff:169.254.169.254",
            "224.0.0.1",
        ] {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["127.0.0.1", "10.1.2.3", "203.0.113.7", "2001:db8::1"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn allow_listed_metadata_address_is_still_refused() {
        let up = upstream(&["169.254.169.254"]);
        let result = up
            .fetch(
                "http://169.254.169.254/latest/meta-data/",
                &Validators::default(),
            )
            .await;
        assert!(
            matches!(result, Err(RetrievalError::Refused(_))),
            "{:?}",
            result.err()
        );
    }

    #[test]
    fn names_come_from_the_last_path_segment() {
        assert_eq!(
            name_from_url("https://h/a/b/report%20v2.csv?x=1").as_deref(),
            Some("report v2.csv")
        );
        assert_eq!(name_from_url("https://h/a/").as_deref(), Some("a"));
        assert_eq!(name_from_url("https://h/"), None);
    }
}
