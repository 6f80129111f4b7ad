//! Feeds discovery from DNS, for networks that drop UDP broadcast (Kubernetes, most clouds):
//! every refresh period it resolves a name's SRV records (each target's A/AAAA records at
//! the record's port), or a name's A/AAAA records at a given port, into endpoints that
//! discovery gossips with as it does with static seeds. A Kubernetes headless Service, or
//! Consul's DNS interface, then lists the members and gossip does the rest.
//!
//! A lookup that fails keeps the last endpoints it found: a resolver hiccup must not empty
//! a running mesh's seeds. The resolver is hickory's, reading the system's resolv.conf
//! unless a name server is given (tests point it at a `dnsmasq` on loopback).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::config::{self, ConfigError};

/// Most endpoints taken from one lookup: a zone listing more is cut (and said so in the
/// logs) rather than making every gossip round that wide.
pub const MAX_DNS_ENDPOINTS: usize = 256;

/// Which DNS records discovery resolves into gossip seeds. Build with [`DnsSeeds::srv`] or
/// [`DnsSeeds::host`] and the chained setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DnsSeeds {
    /// The name to resolve: an SRV name (`_zmesh._tcp.billing.prod.svc.cluster.local`), or
    /// a host name when [`DnsSeeds::port`] is set.
    pub name: String,
    /// `None`: `name` has SRV records, each giving a target and its port. `Some(port)`:
    /// `name`'s A/AAAA records, every address at `port`.
    pub port: Option<u16>,
    /// How often the records are resolved again (default 5 s).
    pub refresh: Duration,
    /// The name server to ask (default: the system's, from resolv.conf).
    pub nameserver: Option<SocketAddr>,
}

impl DnsSeeds {
    /// Seeds from the SRV records of `name`.
    pub fn srv(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            port: None,
            refresh: Duration::from_secs(5),
            nameserver: None,
        }
    }

    /// Seeds from the A/AAAA records of `name`, every address at `port`.
    pub fn host(name: impl Into<String>, port: u16) -> Self {
        Self {
            port: Some(port),
            ..Self::srv(name)
        }
    }

    /// Sets how often the records are resolved again.
    #[must_use]
    pub fn refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        self
    }

    /// Asks this name server instead of the system's.
    #[must_use]
    pub fn nameserver(mut self, server: SocketAddr) -> Self {
        self.nameserver = Some(server);
        self
    }

    /// Checks the settings (see [`crate::config`]).
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        config::in_range("dns.name", self.name.len(), 1, 253)?;
        config::at_least("dns.refresh", self.refresh, Duration::from_millis(100))?;
        if self.port == Some(0) {
            return Err(ConfigError::new("dns.port", "must not be 0"));
        }
        Ok(())
    }
}

/// Why a lookup found nothing to use.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    /// The resolver could not be built from the system's configuration.
    #[error("cannot set up the DNS resolver: {0}")]
    Setup(#[source] hickory_resolver::net::NetError),
    /// The lookup failed (no such name, no answer, a server error).
    #[error("DNS lookup of {name} failed: {source}")]
    Lookup {
        name: String,
        #[source]
        source: hickory_resolver::net::NetError,
    },
}

/// Resolves one [`DnsSeeds`] into endpoints.
pub(crate) struct DnsSource {
    seeds: DnsSeeds,
    resolver: TokioResolver,
}

impl std::fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsSource")
            .field("seeds", &self.seeds)
            .finish_non_exhaustive()
    }
}

impl DnsSource {
    /// A source for `seeds`, its resolver built from the system's configuration or for the
    /// given name server.
    pub(crate) fn new(seeds: DnsSeeds) -> Result<Self, DnsError> {
        let mut builder = match seeds.nameserver {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let config = ResolverConfig::from_parts(
                    None,
                    Vec::new(),
                    vec![NameServerConfig::new(server.ip(), true, vec![udp, tcp])],
                );
                TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            }
            None => TokioResolver::builder_tokio().map_err(DnsError::Setup)?,
        };
        // Records change as members come and go: never trust an answer for longer than
        // one refresh period.
        builder.options_mut().positive_max_ttl = Some(seeds.refresh);
        builder.options_mut().negative_max_ttl = Some(seeds.refresh);
        builder.options_mut().timeout = seeds.refresh.min(Duration::from_secs(5));
        let resolver = builder.build().map_err(DnsError::Setup)?;
        Ok(Self { seeds, resolver })
    }

    /// How often to resolve again.
    pub(crate) fn refresh(&self) -> Duration {
        self.seeds.refresh
    }

    /// The endpoints the records give now.
    pub(crate) async fn resolve(&self) -> Result<Vec<String>, DnsError> {
        let lookup_failed = |name: &str| {
            let name = name.to_owned();
            move |source| DnsError::Lookup { name, source }
        };
        let mut addresses = Vec::new();
        match self.seeds.port {
            Some(port) => {
                let ips = self
                    .resolver
                    .lookup_ip(self.seeds.name.as_str())
                    .await
                    .map_err(lookup_failed(&self.seeds.name))?;
                addresses.extend(ips.iter().map(|ip| (ip, port)));
            }
            None => {
                let lookup = self
                    .resolver
                    .srv_lookup(self.seeds.name.as_str())
                    .await
                    .map_err(lookup_failed(&self.seeds.name))?;
                let targets: Vec<(String, u16)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::SRV(srv) => Some((srv.target.to_utf8(), srv.port)),
                        _ => None,
                    })
                    .collect();
                for (target, port) in targets {
                    // One target that does not resolve leaves the others usable.
                    match self.resolver.lookup_ip(target.as_str()).await {
                        Ok(ips) => addresses.extend(ips.iter().map(|ip| (ip, port))),
                        Err(e) => {
                            tracing::debug!(%target, error = %e, "SRV target does not resolve")
                        }
                    }
                }
            }
        }
        Ok(endpoints(addresses))
    }
}

/// Addresses as `tcp://` endpoints: sorted, without repeats, IPv6 in brackets, unspecified
/// addresses left out (they reach no one), at most [`MAX_DNS_ENDPOINTS`].
pub(crate) fn endpoints(addresses: impl IntoIterator<Item = (IpAddr, u16)>) -> Vec<String> {
    let mut addresses: Vec<(IpAddr, u16)> = addresses
        .into_iter()
        .filter(|(ip, port)| !ip.is_unspecified() && *port != 0)
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    if addresses.len() > MAX_DNS_ENDPOINTS {
        tracing::warn!(
            found = addresses.len(),
            kept = MAX_DNS_ENDPOINTS,
            "DNS lists more members than discovery seeds from"
        );
        addresses.truncate(MAX_DNS_ENDPOINTS);
    }
    addresses
        .into_iter()
        .map(|(ip, port)| match ip {
            IpAddr::V4(v4) => format!("tcp://{v4}:{port}"),
            IpAddr::V6(v6) => format!("tcp://[{v6}]:{port}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_sorted_distinct_reachable_endpoints() {
        let v4 = |s: &str| s.parse::<IpAddr>().expect("ip");
        let got = endpoints([
            (v4("10.0.0.9"), 4242),
            (v4("10.0.0.7"), 4242),
            (v4("10.0.0.7"), 4242),
            (v4("::1"), 4243),
            (v4("0.0.0.0"), 4242),
            (v4("10.0.0.8"), 0),
        ]);
        assert_eq!(
            got,
            [
                "tcp://10.0.0.7:4242",
                "tcp://10.0.0.9:4242",
                "tcp://[::1]:4243"
            ]
        );
        for endpoint in &got {
            assert!(endpoint.parse::<crate::Endpoint>().is_ok(), "{endpoint}");
        }
        let many = (0..1000u32).map(|i| (IpAddr::from(i.to_be_bytes()), 1));
        assert_eq!(endpoints(many).len(), MAX_DNS_ENDPOINTS);
    }

    #[test]
    fn settings_are_checked() {
        assert!(DnsSeeds::srv("_zmesh._tcp.prod").validate().is_ok());
        assert!(DnsSeeds::srv("").validate().is_err());
        assert!(DnsSeeds::host("prod", 0).validate().is_err());
        assert!(
            DnsSeeds::srv("x")
                .refresh(Duration::from_millis(1))
                .validate()
                .is_err()
        );
    }
}
