//! The writes behind the Cloud Map operations and the health checkers: namespaces,
//! services, instances, custom health, heartbeats and active-check verdicts.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use skiff_registry_client::HealthStatus;
use tokio::time::Instant;

use super::{Catalog, CatalogError, Key, Record, State};
use crate::model::{self, HealthCheckConfig, Instance, Namespace, NamespaceType, Service};
use crate::store::LeaseId;

// === impl Catalog ===

impl Catalog {
    pub async fn create_namespace(
        &self,
        name: &str,
        kind: NamespaceType,
        description: Option<String>,
        creator_request_id: Option<String>,
        soa_ttl: Option<u32>,
    ) -> Result<String, CatalogError> {
        self.write(|st, txn| {
            if let Some(existing) = st.namespace_by_name(name) {
                if creator_request_id.is_some() && existing.creator_request_id == creator_request_id
                {
                    return Ok(existing.operation_id.clone());
                }
                return Err(CatalogError::NamespaceAlreadyExists {
                    message: format!("Namespace {name} already exists."),
                    namespace_id: existing.id.clone(),
                    creator_request_id: existing.creator_request_id.clone(),
                });
            }
            if let Some(crid) = &creator_request_id
                && let Some(other) = st
                    .namespaces
                    .values()
                    .find(|n| n.creator_request_id.as_ref() == Some(crid))
            {
                return Err(CatalogError::DuplicateRequest {
                    message: format!(
                        "CreatorRequestId {crid} was already used to create namespace {}.",
                        other.name
                    ),
                    operation_id: other.operation_id.clone(),
                });
            }
            let id = model::new_id("ns");
            let op = txn.operation("CREATE_NAMESPACE", &[("NAMESPACE", &id)]);
            txn.put(Record::Namespace(Namespace {
                id,
                name: name.to_string(),
                kind,
                description,
                creator_request_id,
                operation_id: op.clone(),
                created: model::epoch_now(),
                soa_ttl: soa_ttl.unwrap_or(model::DEFAULT_SOA_TTL),
                revision: 0,
            }));
            Ok(op)
        })
        .await
    }

    pub async fn delete_namespace(&self, id: &str) -> Result<String, CatalogError> {
        let id = State::strip_arn(id).to_string();
        self.write(|st, txn| {
            if !st.namespaces.contains_key(&id) {
                return Err(CatalogError::NamespaceNotFound(format!(
                    "Namespace {id} not found."
                )));
            }
            if st.services_of(&id).next().is_some() {
                return Err(CatalogError::ResourceInUse(format!(
                    "Namespace {id} has services; delete them first."
                )));
            }
            let op = txn.operation("DELETE_NAMESPACE", &[("NAMESPACE", &id)]);
            txn.delete(Key::Namespace(id.clone()));
            Ok(op)
        })
        .await
    }

    pub async fn create_service(&self, mut svc: Service) -> Result<Service, CatalogError> {
        self.write(|st, txn| {
            let Some(ns) = st.namespaces.get(&svc.namespace_id) else {
                return Err(CatalogError::NamespaceNotFound(format!("Namespace {} not found.", svc.namespace_id)));
            };
            if let Some(existing) = st.service_by_name(&ns.id, &svc.name) {
                if svc.creator_request_id.is_some() && existing.creator_request_id == svc.creator_request_id {
                    return Ok(existing.clone());
                }
                return Err(CatalogError::ServiceAlreadyExists {
                    message: format!("Service {} already exists in namespace {}.", svc.name, ns.name),
                    service_id: existing.id.clone(),
                    service_arn: existing.arn(),
                    creator_request_id: existing.creator_request_id.clone(),
                });
            }
            if let Some(dns) = &mut svc.dns_config {
                dns.namespace_id = None;
                if ns.kind == NamespaceType::Http {
                    return Err(CatalogError::InvalidInput(format!(
                        "DnsConfig: namespace {} is an HTTP namespace; services in it cannot have DNS records.",
                        ns.name
                    )));
                }
            }
            svc.id = model::new_id("srv");
            svc.created = model::epoch_now();
            txn.put(Record::Service(svc.clone()));
            Ok(svc)
        })
        .await
    }

    pub async fn update_service(
        &self,
        id: &str,
        description: Option<String>,
        dns_records: Option<Vec<model::DnsRecord>>,
        health_check: Option<HealthCheckConfig>,
    ) -> Result<String, CatalogError> {
        let id = State::strip_arn(id).to_string();
        self.write(|st, txn| {
            let Some(s) = st.services.get(&id) else {
                return Err(CatalogError::ServiceNotFound(format!("Service {id} not found.")));
            };
            let mut s = s.clone();
            if let Some(d) = description {
                s.description = Some(d);
            }
            if let Some(records) = dns_records {
                match &mut s.dns_config {
                    Some(c) => c.dns_records = records,
                    None => {
                        return Err(CatalogError::InvalidInput(format!(
                            "Service.DnsConfig: service {id} was created without DNS records and cannot get some."
                        )));
                    }
                }
            }
            if let Some(hc) = health_check {
                if s.health_check_config.is_none() {
                    return Err(CatalogError::InvalidInput(
                        "Service.HealthCheckConfig: a health check can only be updated, not added.".to_string(),
                    ));
                }
                s.health_check_config = Some(hc);
            }
            let op = txn.operation("UPDATE_SERVICE", &[("SERVICE", &id)]);
            txn.put(Record::Service(s));
            Ok(op)
        })
        .await
    }

    pub async fn delete_service(&self, id: &str) -> Result<(), CatalogError> {
        let id = State::strip_arn(id).to_string();
        self.write(|st, txn| {
            if !st.services.contains_key(&id) {
                return Err(CatalogError::ServiceNotFound(format!(
                    "Service {id} not found."
                )));
            }
            if st.instances_of(&id).next().is_some() {
                return Err(CatalogError::ResourceInUse(format!(
                    "Service {id} has registered instances; deregister them first."
                )));
            }
            txn.delete(Key::Service(id.clone()));
            Ok(())
        })
        .await
    }

    /// Registers or updates an instance; idempotent on id + CreatorRequestId + attributes.
    pub async fn register_instance(
        &self,
        service_id: &str,
        instance_id: &str,
        creator_request_id: Option<String>,
        attributes: BTreeMap<String, String>,
    ) -> Result<String, CatalogError> {
        let service_id = State::strip_arn(service_id).to_string();
        let op = self
            .write(|st, txn| {
                let Some(svc) = st.services.get(&service_id) else {
                    return Err(CatalogError::ServiceNotFound(format!(
                        "Service {service_id} not found."
                    )));
                };
                check_required_attributes(svc, &attributes)?;
                if let Some(old) = st.instance(&service_id, instance_id) {
                    if old.attributes == attributes
                        && creator_request_id.is_some()
                        && old.creator_request_id == creator_request_id
                    {
                        return Ok(old.operation_id.clone());
                    }
                    let mut i = old.clone();
                    let op = txn.operation(
                        "REGISTER_INSTANCE",
                        &[("INSTANCE", instance_id), ("SERVICE", &service_id)],
                    );
                    i.attributes = attributes;
                    i.creator_request_id = creator_request_id;
                    i.operation_id = op.clone();
                    // Re-registering renews the heartbeat: the registrant is evidently alive.
                    if i.heartbeat_ttl().is_some() {
                        i.heartbeat = Some(HealthStatus::Healthy);
                    } else {
                        i.heartbeat = None;
                    }
                    i.recompute("re-registered");
                    txn.put(Record::Instance(i));
                    return Ok(op);
                }
                let count = st.instances.get(&service_id).map_or(0, BTreeMap::len);
                if count >= model::MAX_INSTANCES_PER_SERVICE {
                    return Err(CatalogError::ResourceLimitExceeded(format!(
                        "Service {service_id} already has {count} instances, the most allowed."
                    )));
                }
                let op = txn.operation(
                    "REGISTER_INSTANCE",
                    &[("INSTANCE", instance_id), ("SERVICE", &service_id)],
                );
                let init = match attributes
                    .get(skiff_registry_client::attrs::AWS_INIT_HEALTH_STATUS)
                    .map(String::as_str)
                {
                    Some("UNHEALTHY") => HealthStatus::Unhealthy,
                    _ => HealthStatus::Healthy,
                };
                let mut i = Instance {
                    service_id: service_id.clone(),
                    id: instance_id.to_string(),
                    creator_request_id,
                    operation_id: op.clone(),
                    custom: svc.health_check_custom_config.as_ref().map(|_| init),
                    active: svc
                        .health_check_config
                        .as_ref()
                        .map(|_| HealthStatus::Unknown),
                    heartbeat: None,
                    health: HealthStatus::Healthy,
                    history: VecDeque::new(),
                    attributes,
                    revision: 0,
                };
                if i.heartbeat_ttl().is_some() {
                    i.heartbeat = Some(HealthStatus::Healthy);
                }
                let initial = model::combine([i.custom, i.active, i.heartbeat]);
                i.history.push_back(model::Transition {
                    at: model::rfc3339(std::time::SystemTime::now()),
                    from: HealthStatus::Unknown,
                    to: initial,
                    reason: "registered".to_string(),
                });
                i.health = initial;
                txn.put(Record::Instance(i));
                Ok(op)
            })
            .await?;
        // A registration is a heartbeat: the registrant is evidently alive.
        let key = (service_id, instance_id.to_string());
        let mut st = self.write_state();
        if let Some(lease) = st.leases.get(&key).copied() {
            let _ = self.store.keep_alive(lease);
        }
        st.heartbeat_lost_at.remove(&key);
        Ok(op)
    }

    pub async fn deregister_instance(
        &self,
        service_id: &str,
        instance_id: &str,
    ) -> Result<String, CatalogError> {
        let service_id = State::strip_arn(service_id).to_string();
        self.write(|st, txn| {
            if !st.services.contains_key(&service_id) {
                return Err(CatalogError::ServiceNotFound(format!(
                    "Service {service_id} not found."
                )));
            }
            if st.instance(&service_id, instance_id).is_none() {
                return Err(CatalogError::InstanceNotFound(format!(
                    "Instance {instance_id} not found in service {service_id}."
                )));
            }
            let op = txn.operation(
                "DEREGISTER_INSTANCE",
                &[("INSTANCE", instance_id), ("SERVICE", &service_id)],
            );
            txn.remove_instance(&service_id, instance_id, "deregistered");
            Ok(op)
        })
        .await
    }

    pub async fn update_custom_health(
        &self,
        service_id: &str,
        instance_id: &str,
        status: HealthStatus,
    ) -> Result<(), CatalogError> {
        let service_id = State::strip_arn(service_id).to_string();
        self.write(|st, txn| {
            let Some(svc) = st.services.get(&service_id) else {
                return Err(CatalogError::ServiceNotFound(format!(
                    "Service {service_id} not found."
                )));
            };
            let Some(old) = st.instance(&service_id, instance_id) else {
                return Err(CatalogError::InstanceNotFound(format!(
                    "Instance {instance_id} not found in service {service_id}."
                )));
            };
            if svc.health_check_custom_config.is_none() {
                return Err(CatalogError::CustomHealthNotFound(format!(
                    "Service {service_id} has no HealthCheckCustomConfig."
                )));
            }
            if old.custom == Some(status) {
                return Ok(());
            }
            let mut i = old.clone();
            i.custom = Some(status);
            i.recompute(&format!("custom health status set to {status}"));
            txn.put(Record::Instance(i));
            Ok(())
        })
        .await
    }

    /// Renews an instance's heartbeat; turns it healthy again if its heartbeat had lapsed.
    pub async fn heartbeat(
        &self,
        ns_name: &str,
        svc_name: &str,
        instance_id: &str,
    ) -> Result<(), CatalogError> {
        let (key, lapsed) = {
            let st = self.read();
            let Some(ns) = st.namespace_by_name(ns_name) else {
                return Err(CatalogError::NamespaceNotFound(format!(
                    "Namespace {ns_name} not found."
                )));
            };
            let Some(svc) = st.service_by_name(&ns.id, svc_name) else {
                return Err(CatalogError::ServiceNotFound(format!(
                    "Service {svc_name} not found in {ns_name}."
                )));
            };
            let Some(i) = st.instance(&svc.id, instance_id) else {
                return Err(CatalogError::InstanceNotFound(format!(
                    "Instance {instance_id} not found in service {svc_name}."
                )));
            };
            let key = (svc.id.clone(), i.id.clone());
            let Some(lease) = st.leases.get(&key) else {
                return Err(CatalogError::InvalidInput(format!(
                    "Instance {instance_id} has no {} attribute, so it has no heartbeat.",
                    skiff_registry_client::attrs::SKIFF_HEARTBEAT_TTL_SECONDS
                )));
            };
            self.store.keep_alive(*lease)?;
            (key, i.heartbeat == Some(HealthStatus::Unhealthy))
        };
        if lapsed {
            self.write(|st, txn| {
                if let Some(old) = st.instance(&key.0, &key.1)
                    && old.heartbeat == Some(HealthStatus::Unhealthy)
                {
                    let mut i = old.clone();
                    i.heartbeat = Some(HealthStatus::Healthy);
                    i.recompute("heartbeat resumed");
                    txn.put(Record::Instance(i));
                }
                Ok(())
            })
            .await?;
            self.write_state().heartbeat_lost_at.remove(&key);
        }
        Ok(())
    }

    /// Marks instances whose heartbeat lease expired unhealthy, and removes those that stayed
    /// so for `grace`. Returns (turned unhealthy, removed).
    pub async fn expire_heartbeats(
        &self,
        now: Instant,
        grace: Duration,
    ) -> Result<(usize, usize), CatalogError> {
        let expired = self.store.expired_leases(now);
        let (lapsed, stale) = {
            let mut st = self.write_state();
            let mut lapsed = Vec::new();
            for lease in expired {
                let Some(key) = st.lease_owner.get(&lease).cloned() else {
                    continue;
                };
                let healthy = st
                    .instance(&key.0, &key.1)
                    .is_some_and(|i| i.heartbeat == Some(HealthStatus::Healthy));
                if healthy {
                    lapsed.push(key.clone());
                }
                st.heartbeat_lost_at.entry(key).or_insert(now);
            }
            let stale: Vec<(String, String)> = st
                .heartbeat_lost_at
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) >= grace)
                .map(|(k, _)| k.clone())
                .collect();
            (lapsed, stale)
        };
        let mut turned = 0;
        let mut removed = 0;
        if lapsed.is_empty() && stale.is_empty() {
            return Ok((0, 0));
        }
        let store = self.store.clone();
        self.write(|st, txn| {
            let still_expired: std::collections::HashSet<LeaseId> = store.expired_leases(now).into_iter().collect();
            for (s, id) in &lapsed {
                if let Some(old) = st.instance(s, id)
                    && old.heartbeat == Some(HealthStatus::Healthy)
                    && st.leases.get(&(s.clone(), id.clone())).is_some_and(|l| still_expired.contains(l))
                {
                    let mut i = old.clone();
                    i.heartbeat = Some(HealthStatus::Unhealthy);
                    i.recompute("heartbeat ttl expired");
                    txn.put(Record::Instance(i));
                    turned += 1;
                }
            }
            for (s, id) in &stale {
                let still_lost = st.instance(s, id).is_some_and(|i| i.heartbeat == Some(HealthStatus::Unhealthy));
                if still_lost && !lapsed.contains(&(s.clone(), id.clone())) {
                    tracing::info!(service = %s, instance = %id, "removing instance whose heartbeat stopped");
                    txn.remove_instance(s, id, "heartbeat lost for longer than the removal grace period");
                    removed += 1;
                }
            }
            Ok(())
        })
        .await?;
        Ok((turned, removed))
    }

    /// Applies active check verdicts: (service id, instance id, new status, reason).
    pub async fn set_active_health(
        &self,
        verdicts: Vec<(String, String, HealthStatus, String)>,
    ) -> Result<(), CatalogError> {
        if verdicts.is_empty() {
            return Ok(());
        }
        self.write(|st, txn| {
            for (s, id, status, reason) in &verdicts {
                if let Some(old) = st.instance(s, id)
                    && old.active.is_some()
                    && old.active != Some(*status)
                {
                    let mut i = old.clone();
                    i.active = Some(*status);
                    i.recompute(reason);
                    txn.put(Record::Instance(i));
                }
            }
            Ok(())
        })
        .await
    }
}

/// Cloud Map's rules on which attributes a service's records need.
fn check_required_attributes(
    svc: &Service,
    attrs: &BTreeMap<String, String>,
) -> Result<(), CatalogError> {
    use skiff_registry_client::attrs::{AWS_INSTANCE_IPV4, AWS_INSTANCE_IPV6, AWS_INSTANCE_PORT};
    model::validate_attributes(attrs).map_err(CatalogError::InvalidInput)?;
    if let Some(v) = attrs.get(AWS_INSTANCE_IPV4)
        && v.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(CatalogError::InvalidInput(format!(
            "Attributes.{AWS_INSTANCE_IPV4}: {v:?} is not an IPv4 address"
        )));
    }
    if let Some(v) = attrs.get(AWS_INSTANCE_IPV6)
        && v.parse::<std::net::Ipv6Addr>().is_err()
    {
        return Err(CatalogError::InvalidInput(format!(
            "Attributes.{AWS_INSTANCE_IPV6}: {v:?} is not an IPv6 address"
        )));
    }
    if let Some(v) = attrs.get(AWS_INSTANCE_PORT)
        && v.parse::<u16>().is_err()
    {
        return Err(CatalogError::InvalidInput(format!(
            "Attributes.{AWS_INSTANCE_PORT}: {v:?} is not a port number"
        )));
    }
    if let Some(dns) = &svc.dns_config {
        let has = |t| dns.dns_records.iter().any(|r| r.kind == t);
        if has(model::RecordType::A) && !attrs.contains_key(AWS_INSTANCE_IPV4) {
            return Err(CatalogError::InvalidInput(format!(
                "Attributes.{AWS_INSTANCE_IPV4} is required: service {} has an A record.",
                svc.name
            )));
        }
        if has(model::RecordType::AAAA) && !attrs.contains_key(AWS_INSTANCE_IPV6) {
            return Err(CatalogError::InvalidInput(format!(
                "Attributes.{AWS_INSTANCE_IPV6} is required: service {} has an AAAA record.",
                svc.name
            )));
        }
        if has(model::RecordType::SRV) && !attrs.contains_key(AWS_INSTANCE_PORT) {
            return Err(CatalogError::InvalidInput(format!(
                "Attributes.{AWS_INSTANCE_PORT} is required: service {} has an SRV record.",
                svc.name
            )));
        }
    }
    if svc.health_check_config.is_some() && !attrs.contains_key(AWS_INSTANCE_IPV4) {
        return Err(CatalogError::InvalidInput(format!(
            "Attributes.{AWS_INSTANCE_IPV4} is required: service {} has a HealthCheckConfig.",
            svc.name
        )));
    }
    Ok(())
}
