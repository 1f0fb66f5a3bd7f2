//! Names with ECS's rules: port and discovery names, client alias DNS names,
//! and the resource names (family, container, service, cluster).
//!
//! Newtypes exist for the names that travel on through Skiff (a `PortName`
//! is matched against port mappings, a `DiscoveryName` becomes a Cloud Map
//! service): once built, they are known to be valid.

use std::fmt;

/// The longest port name or discovery name ECS accepts.
pub const MAX_SERVICE_CONNECT_NAME_LEN: usize = 64;
/// The longest client alias `dnsName` ECS accepts.
pub const MAX_DNS_NAME_LEN: usize = 127;
/// The longest family, container, service or cluster name ECS accepts.
pub const MAX_RESOURCE_NAME_LEN: usize = 255;

/// A `portMappings[].name`, referenced by a service's `portName`: up to 64
/// characters of `[a-z0-9_-]`, not starting with `-`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortName(String);

/// A Service Connect `discoveryName`, the Cloud Map service name: the same
/// rules as [`PortName`]; unique within a namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiscoveryName(String);

/// A client alias `dnsName`: up to 127 characters of `[a-z0-9_.-]`, not
/// starting with `-`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DnsName(String);

macro_rules! name_impls {
    ($($ty:ident => $check:ident;)*) => {$(
        impl $ty {
            /// Checks the name; the error says what is wrong with it.
            pub fn parse(name: &str) -> Result<$ty, String> {
                $check(name)?;
                Ok($ty(name.to_owned()))
            }

            /// The name as written.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    )*};
}

name_impls! {
    PortName => check_service_connect_name;
    DiscoveryName => check_service_connect_name;
    DnsName => check_dns_name;
}

impl From<PortName> for DiscoveryName {
    /// ECS uses the port name when `discoveryName` is not given.
    fn from(port: PortName) -> DiscoveryName {
        DiscoveryName(port.0)
    }
}

impl From<DiscoveryName> for DnsName {
    /// ECS uses the discovery name when a client alias has no `dnsName`.
    fn from(name: DiscoveryName) -> DnsName {
        DnsName(name.0)
    }
}

/// Port and discovery names: `[a-z0-9_-]{1,64}`, not starting with `-`.
pub fn check_service_connect_name(name: &str) -> Result<(), String> {
    check_lowercase_name(
        name,
        MAX_SERVICE_CONNECT_NAME_LEN,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-',
        "lowercase letters, digits, '_' and '-'",
    )
}

/// Client alias DNS names: `[a-z0-9_.-]{1,127}`, not starting with `-`.
pub fn check_dns_name(name: &str) -> Result<(), String> {
    check_lowercase_name(
        name,
        MAX_DNS_NAME_LEN,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '.'),
        "lowercase letters, digits, '_', '-' and '.'",
    )
}

fn check_lowercase_name(
    name: &str,
    max_len: usize,
    allowed: impl Fn(char) -> bool,
    allowed_text: &str,
) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(bad) = name.chars().find(|&c| !allowed(c)) {
        if name.chars().any(|c| c.is_ascii_uppercase())
            && name.chars().all(|c| allowed(c.to_ascii_lowercase()))
        {
            return Err(format!("{name:?} must be lowercase"));
        }
        return Err(format!(
            "{name:?} contains {bad:?}; only {allowed_text} are allowed"
        ));
    }
    if name.len() > max_len {
        return Err(format!(
            "{name:?} is {} characters long; at most {max_len} are allowed",
            name.len()
        ));
    }
    if name.starts_with('-') {
        return Err(format!("{name:?} must not start with '-'"));
    }
    Ok(())
}

/// Family, container, service and cluster names: `[A-Za-z0-9_-]{1,255}`.
pub fn check_resource_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; only letters, digits, '_' and '-' are allowed"
        ));
    }
    if name.len() > MAX_RESOURCE_NAME_LEN {
        return Err(format!(
            "{name:?} is {} characters long; at most {MAX_RESOURCE_NAME_LEN} are allowed",
            name.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
