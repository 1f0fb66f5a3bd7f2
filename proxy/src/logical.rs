//! Logical targets: the name a client asked for (Host, authority, alias) → a service.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use crate::concrete::Concrete;

/// One immutable routing table built from a discovery snapshot.
pub(crate) struct Table {
    pub(crate) namespace: String,
    pub(crate) revision: u64,
    services: HashMap<String, Arc<Concrete>>,
    /// dnsName → (port, discovery name).
    aliases: HashMap<String, Vec<(u16, String)>>,
}

// === impl Table ===

impl Table {
    pub(crate) fn new(
        namespace: String,
        revision: u64,
        services: HashMap<String, Arc<Concrete>>,
        aliases: HashMap<String, Vec<(u16, String)>>,
    ) -> Self {
        Table {
            namespace,
            revision,
            services,
            aliases,
        }
    }

    pub(crate) fn service(&self, name: &str) -> Option<&Arc<Concrete>> {
        self.services.get(name)
    }

    pub(crate) fn services(&self) -> impl Iterator<Item = &Arc<Concrete>> {
        self.services.values()
    }

    /// The service a `host[:port]` names: an alias `dnsName:port`; an alias whose dnsName is
    /// unambiguous; or a discovery name. `name.namespace` is accepted for each.
    pub(crate) fn route(&self, host: &str, port: Option<u16>) -> Option<&Arc<Concrete>> {
        let host = normalize(host);
        if let Some(c) = self.route_exact(&host, port) {
            return Some(c);
        }
        let suffix = host
            .strip_suffix(self.namespace.as_str())
            .and_then(|h| h.strip_suffix('.'));
        suffix
            .filter(|s| !s.is_empty())
            .and_then(|short| self.route_exact(short, port))
    }

    fn route_exact(&self, host: &str, port: Option<u16>) -> Option<&Arc<Concrete>> {
        if let Some(entries) = self.aliases.get(host) {
            let by_port = port.and_then(|p| entries.iter().find(|(ap, _)| *ap == p));
            let pick = by_port.or_else(|| {
                let first = entries.first()?;
                entries.iter().all(|(_, s)| *s == first.1).then_some(first)
            });
            if let Some(c) = pick.and_then(|(_, svc)| self.services.get(svc)) {
                return Some(c);
            }
        }
        self.services.get(host)
    }
}

fn normalize(host: &str) -> Cow<'_, str> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// Splits `host[:port]` (IPv6 in brackets allowed).
pub(crate) fn split_authority(s: &str) -> (&str, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (h, tail.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
        return (s, None);
    }
    // By bytes: this runs for every traced request, and `str` patterns cost ten times more.
    let b = s.as_bytes();
    match b.iter().rposition(|&c| c == b':') {
        Some(i) if !b[..i].contains(&b':') => (&s[..i], s[i + 1..].parse().ok()),
        _ => (s, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_split() {
        assert_eq!(split_authority("orders:8080"), ("orders", Some(8080)));
        assert_eq!(split_authority("orders"), ("orders", None));
        assert_eq!(split_authority("orders:65535"), ("orders", Some(65535)));
        for bad in ["orders:65536", "orders:", "orders:8o", "orders:123456"] {
            assert_eq!(split_authority(bad).1, None, "{bad}");
        }
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
        assert_eq!(
            split_authority("Orders.prod.internal."),
            ("Orders.prod.internal.", None)
        );
    }

    #[test]
    fn normalize_lowercases_and_strips_dot() {
        assert_eq!(normalize("Orders.Prod."), "orders.prod");
        assert!(matches!(normalize("orders"), Cow::Borrowed(_)));
    }
}
