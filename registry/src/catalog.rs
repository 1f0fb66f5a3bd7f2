//! The catalog: the in-memory model every read is served from, and the one write path
//! (validate → commit durably → apply → notify) every change goes through.
//!
//! Reads (API, watch, DNS) take a short read lock on [`State`]. Writers are serialized by
//! `write_lock` only while they validate, submit to the store and apply; they wait for
//! durability after releasing it, so concurrent writes share one fsync (group commit).
//! A writer is answered, and watchers are woken, only once its commit is durable. Readers
//! may see a write up to one group commit early; a restart fences the revision past every
//! revision that could have been seen, so revisions never go backwards.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use skiff_registry_client::{HealthStatus, InstanceSnapshot, NamespaceSnapshot, ServiceSnapshot};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::model::{self, Instance, Namespace, Operation, Service};
use crate::store::{LeaseId, Mutation, Store, StoreError, lock};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{0}")]
    NamespaceNotFound(String),
    #[error("{0}")]
    ServiceNotFound(String),
    #[error("{0}")]
    InstanceNotFound(String),
    #[error("{0}")]
    OperationNotFound(String),
    #[error("{message}")]
    NamespaceAlreadyExists {
        message: String,
        namespace_id: String,
        creator_request_id: Option<String>,
    },
    #[error("{message}")]
    ServiceAlreadyExists {
        message: String,
        service_id: String,
        service_arn: String,
        creator_request_id: Option<String>,
    },
    #[error("{message}")]
    DuplicateRequest {
        message: String,
        operation_id: String,
    },
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    CustomHealthNotFound(String),
    #[error("{0}")]
    ResourceLimitExceeded(String),
    #[error("store failed")]
    Store(#[from] StoreError),
    #[error("stored record {key} cannot be decoded")]
    Decode {
        key: String,
        source: serde_json::Error,
    },
}

/// Everything the registry knows, at `revision`.
#[derive(Debug, Default)]
pub struct State {
    pub revision: u64,
    pub namespaces: HashMap<String, Namespace>,
    pub ns_by_name: HashMap<String, String>,
    /// Lowercase DNS apex (no trailing dot) → namespace id.
    pub zones: HashMap<String, String>,
    pub services: HashMap<String, Service>,
    /// (namespace id, service name) → service id.
    pub svc_by_name: HashMap<(String, String), String>,
    /// (namespace id, lowercase service name) → service id, for DNS.
    pub svc_by_lname: HashMap<(String, String), String>,
    /// Service id → instance id → instance.
    pub instances: HashMap<String, BTreeMap<String, Instance>>,
    pub operations: HashMap<String, Operation>,
    pub op_order: VecDeque<String>,
    /// Heartbeat bookkeeping (not durable).
    pub leases: HashMap<(String, String), LeaseId>,
    pub lease_owner: HashMap<LeaseId, (String, String)>,
    pub heartbeat_lost_at: HashMap<(String, String), Instant>,
    /// The last `REMOVED_KEPT` removed instances, so their history says why they went away
    /// (not durable).
    pub removed: VecDeque<Instance>,
    /// Pre-encoded DNS answers, rebuilt for every service a commit touches.
    pub dns: crate::dns::prepared::Index,
    /// `DiscoverInstances` fragments per service, built on demand at its revision.
    pub discover_cache: std::sync::Mutex<HashMap<String, Arc<crate::api::Fragments>>>,
}

/// Most writes submitted to the store and not yet durable. Revisions up to this many past
/// the last durable one may have been seen by readers; a restart fences past them.
pub const MAX_IN_FLIGHT: usize = 1024;

#[derive(Debug)]
struct Sequencer {
    /// Revision the next submitted transaction will get.
    next: u64,
    /// Set when a commit failed: memory may be ahead of disk, so writes stop.
    failed: bool,
}

/// Removed instances whose history is kept.
pub const REMOVED_KEPT: usize = 1024;

/// A record to write.
#[derive(Clone, Debug)]
pub enum Record {
    Namespace(Namespace),
    Service(Service),
    Instance(Instance),
    Operation(Operation),
}

/// A key to delete.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Namespace(String),
    Service(String),
    Instance(String, String),
    Operation(String),
}

/// What one write changes.
#[derive(Debug, Default)]
pub struct Txn {
    pub puts: Vec<Record>,
    pub deletes: Vec<Key>,
    /// Why instances are deleted, for their history.
    pub removal_reasons: HashMap<(String, String), String>,
}

pub struct Catalog {
    store: Arc<dyn Store>,
    /// Serializes writers while they prepare, submit and apply; never held across an await.
    write_lock: std::sync::Mutex<Sequencer>,
    /// Bounds submitted-but-not-yet-durable writes (see `MAX_IN_FLIGHT`).
    in_flight: tokio::sync::Semaphore,
    state: RwLock<State>,
    changed: watch::Sender<u64>,
    /// Per namespace name: the revision of its last durable change, for long-polls.
    ns_changed: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
    pub metrics: Metrics,
}

// === impl Key ===

impl Key {
    pub fn encode(&self) -> String {
        match self {
            Key::Namespace(id) => format!("ns/{id}"),
            Key::Service(id) => format!("svc/{id}"),
            Key::Instance(s, i) => format!("inst/{s}/{i}"),
            Key::Operation(id) => format!("op/{id}"),
        }
    }
}

// === impl Record ===

impl Record {
    fn key(&self) -> Key {
        match self {
            Record::Namespace(n) => Key::Namespace(n.id.clone()),
            Record::Service(s) => Key::Service(s.id.clone()),
            Record::Instance(i) => Key::Instance(i.service_id.clone(), i.id.clone()),
            Record::Operation(o) => Key::Operation(o.id.clone()),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        match self {
            Record::Namespace(n) => serde_json::to_vec(n),
            Record::Service(s) => serde_json::to_vec(s),
            Record::Instance(i) => serde_json::to_vec(i),
            Record::Operation(o) => serde_json::to_vec(o),
        }
    }
}

// === impl Txn ===

impl Txn {
    pub fn put(&mut self, r: Record) {
        self.puts.push(r);
    }

    pub fn delete(&mut self, k: Key) {
        self.deletes.push(k);
    }

    /// Deletes an instance, remembering why in its history.
    pub fn remove_instance(&mut self, service_id: &str, instance_id: &str, reason: &str) {
        self.removal_reasons.insert(
            (service_id.to_string(), instance_id.to_string()),
            reason.to_string(),
        );
        self.deletes.push(Key::Instance(
            service_id.to_string(),
            instance_id.to_string(),
        ));
    }

    pub fn is_empty(&self) -> bool {
        self.puts.is_empty() && self.deletes.is_empty()
    }

    /// Records a completed operation and returns its id.
    pub fn operation(&mut self, kind: &str, targets: &[(&str, &str)]) -> String {
        let now = model::epoch_now();
        let op = Operation {
            id: model::new_operation_id(),
            kind: kind.to_string(),
            status: "SUCCESS".to_string(),
            created: now,
            updated: now,
            targets: targets
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let id = op.id.clone();
        self.puts.push(Record::Operation(op));
        id
    }
}

// === impl State ===

impl State {
    pub fn namespace_by_name(&self, name: &str) -> Option<&Namespace> {
        self.ns_by_name
            .get(name)
            .and_then(|id| self.namespaces.get(id))
    }

    pub fn service_by_name(&self, ns_id: &str, name: &str) -> Option<&Service> {
        self.svc_by_name
            .get(&(ns_id.to_string(), name.to_string()))
            .and_then(|id| self.services.get(id))
    }

    pub fn instances_of(&self, svc_id: &str) -> impl Iterator<Item = &Instance> {
        self.instances
            .get(svc_id)
            .into_iter()
            .flat_map(|m| m.values())
    }

    pub fn services_of<'a>(&'a self, ns_id: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services
            .values()
            .filter(move |s| s.namespace_id == ns_id)
    }

    pub fn instance(&self, svc_id: &str, id: &str) -> Option<&Instance> {
        self.instances.get(svc_id).and_then(|m| m.get(id))
    }

    /// The watch snapshot of namespace `name`, if it exists.
    pub fn snapshot(&self, name: &str) -> Option<NamespaceSnapshot> {
        let ns = self.namespace_by_name(name)?;
        let mut services: Vec<ServiceSnapshot> = self
            .services_of(&ns.id)
            .map(|s| ServiceSnapshot {
                name: s.name.clone(),
                id: s.id.clone(),
                revision: s.revision,
                instances: self
                    .instances_of(&s.id)
                    .map(|i| InstanceSnapshot {
                        id: i.id.clone(),
                        attributes: i.attributes.clone(),
                        health: i.health,
                    })
                    .collect(),
            })
            .collect();
        services.sort_by(|a, b| a.name.cmp(&b.name));
        Some(NamespaceSnapshot {
            namespace: ns.name.clone(),
            namespace_id: ns.id.clone(),
            namespace_type: ns.kind.as_str().to_string(),
            revision: ns.revision,
            services,
        })
    }

    /// Resolves a Cloud Map `Id` that may be an ARN.
    pub fn strip_arn(id: &str) -> &str {
        if id.starts_with("arn:") {
            id.rsplit('/').next().unwrap_or(id)
        } else {
            id
        }
    }

    fn apply(
        &mut self,
        rev: u64,
        txn: Txn,
        store: &dyn Store,
        metrics: &Metrics,
    ) -> BTreeSet<String> {
        let mut touched_services = BTreeSet::new();
        for key in txn.deletes {
            match key {
                Key::Namespace(id) => {
                    if let Some(ns) = self.namespaces.remove(&id) {
                        self.ns_by_name.remove(&ns.name);
                        self.zones.retain(|_, v| *v != id);
                    }
                }
                Key::Service(id) => {
                    if let Some(s) = self.services.remove(&id) {
                        self.svc_by_name
                            .remove(&(s.namespace_id.clone(), s.name.clone()));
                        self.svc_by_lname
                            .remove(&(s.namespace_id.clone(), s.name.to_ascii_lowercase()));
                        for h in [
                            HealthStatus::Healthy,
                            HealthStatus::Unhealthy,
                            HealthStatus::Unknown,
                        ] {
                            let ns_name = self
                                .namespaces
                                .get(&s.namespace_id)
                                .map(|n| n.name.clone())
                                .unwrap_or_default();
                            let _ = metrics.instances.remove_label_values(&[
                                &ns_name,
                                &s.name,
                                h.as_str(),
                            ]);
                        }
                    }
                    self.instances.remove(&id);
                    self.dns.remove_service(&id);
                    self.discover_cache
                        .get_mut()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&id);
                }
                Key::Instance(s, i) => {
                    let k = (s.clone(), i.clone());
                    if let Some(mut gone) = self.instances.get_mut(&s).and_then(|m| m.remove(&i)) {
                        let reason = txn
                            .removal_reasons
                            .get(&k)
                            .map_or("deregistered", String::as_str);
                        gone.history.push_back(model::Transition {
                            at: model::rfc3339(std::time::SystemTime::now()),
                            from: gone.health,
                            to: HealthStatus::Unknown,
                            reason: format!("removed: {reason}"),
                        });
                        while gone.history.len() > model::HISTORY_LEN {
                            gone.history.pop_front();
                        }
                        self.removed
                            .retain(|r| (&r.service_id, &r.id) != (&k.0, &k.1));
                        if self.removed.len() >= REMOVED_KEPT {
                            self.removed.pop_front();
                        }
                        self.removed.push_back(gone);
                    }
                    if let Some(lease) = self.leases.remove(&k) {
                        store.revoke_lease(lease);
                        self.lease_owner.remove(&lease);
                    }
                    self.heartbeat_lost_at.remove(&k);
                    touched_services.insert(s);
                }
                Key::Operation(id) => {
                    self.operations.remove(&id);
                    self.op_order.retain(|o| *o != id);
                }
            }
        }
        for rec in txn.puts {
            match rec {
                Record::Namespace(mut ns) => {
                    ns.revision = rev;
                    self.ns_by_name.insert(ns.name.clone(), ns.id.clone());
                    if model::valid_dns_name(&ns.name) {
                        let apex = ns.name.trim_end_matches('.').to_ascii_lowercase();
                        self.zones.insert(apex, ns.id.clone());
                    }
                    self.namespaces.insert(ns.id.clone(), ns);
                }
                Record::Service(mut s) => {
                    s.revision = rev;
                    self.svc_by_name
                        .insert((s.namespace_id.clone(), s.name.clone()), s.id.clone());
                    self.svc_by_lname.insert(
                        (s.namespace_id.clone(), s.name.to_ascii_lowercase()),
                        s.id.clone(),
                    );
                    touched_services.insert(s.id.clone());
                    self.services.insert(s.id.clone(), s);
                }
                Record::Instance(mut i) => {
                    i.revision = rev;
                    let k = (i.service_id.clone(), i.id.clone());
                    let old_ttl = self
                        .instances
                        .get(&i.service_id)
                        .and_then(|m| m.get(&i.id))
                        .and_then(Instance::heartbeat_ttl);
                    match i.heartbeat_ttl() {
                        Some(ttl) => {
                            if old_ttl != Some(ttl) || !self.leases.contains_key(&k) {
                                if let Some(old) = self.leases.remove(&k) {
                                    store.revoke_lease(old);
                                    self.lease_owner.remove(&old);
                                }
                                let lease = store.grant_lease(ttl);
                                self.leases.insert(k.clone(), lease);
                                self.lease_owner.insert(lease, k.clone());
                            }
                        }
                        None => {
                            if let Some(lease) = self.leases.remove(&k) {
                                store.revoke_lease(lease);
                                self.lease_owner.remove(&lease);
                            }
                        }
                    }
                    touched_services.insert(i.service_id.clone());
                    self.instances
                        .entry(i.service_id.clone())
                        .or_default()
                        .insert(i.id.clone(), i);
                }
                Record::Operation(o) => {
                    if !self.operations.contains_key(&o.id) {
                        self.op_order.push_back(o.id.clone());
                    }
                    self.operations.insert(o.id.clone(), o);
                }
            }
        }
        self.revision = rev;
        for svc_id in &touched_services {
            let Some(svc) = self.services.get(svc_id) else {
                continue;
            };
            match self.namespaces.get(&svc.namespace_id) {
                Some(ns) => {
                    let instances = self
                        .instances
                        .get(svc_id)
                        .into_iter()
                        .flat_map(|m| m.values());
                    self.dns
                        .update_service(ns, svc, instances, crate::dns::MAX_ANSWERS);
                }
                None => self.dns.remove_service(svc_id),
            }
        }
        touched_services
    }

    fn update_instance_gauges(&self, svc_ids: &BTreeSet<String>, metrics: &Metrics) {
        for id in svc_ids {
            let Some(s) = self.services.get(id) else {
                continue;
            };
            let ns_name = self
                .namespaces
                .get(&s.namespace_id)
                .map(|n| n.name.as_str())
                .unwrap_or_default();
            let mut counts = [0i64; 3];
            for i in self.instances_of(id) {
                counts[match i.health {
                    HealthStatus::Healthy => 0,
                    HealthStatus::Unhealthy => 1,
                    HealthStatus::Unknown => 2,
                }] += 1;
            }
            for (h, n) in [
                HealthStatus::Healthy,
                HealthStatus::Unhealthy,
                HealthStatus::Unknown,
            ]
            .iter()
            .zip(counts)
            {
                metrics
                    .instances
                    .with_label_values(&[ns_name, &s.name, h.as_str()])
                    .set(n);
            }
        }
    }
}

// === impl Catalog ===

impl Catalog {
    /// Loads everything from `store`; heartbeat instances get a fresh TTL window.
    pub async fn open(store: Arc<dyn Store>, metrics: Metrics) -> Result<Catalog, CatalogError> {
        let loaded = store.load().await?;
        let mut state = State::default();
        let mut txn = Txn::default();
        for e in loaded.entries {
            let decode_err = |source| CatalogError::Decode {
                key: e.key.clone(),
                source,
            };
            if e.key.starts_with("ns/") {
                let mut ns: Namespace = serde_json::from_slice(&e.value).map_err(decode_err)?;
                ns.revision = e.mod_revision;
                txn.puts.push(Record::Namespace(ns));
            } else if e.key.starts_with("svc/") {
                let mut s: Service = serde_json::from_slice(&e.value).map_err(decode_err)?;
                s.revision = e.mod_revision;
                txn.puts.push(Record::Service(s));
            } else if e.key.starts_with("inst/") {
                let mut i: Instance = serde_json::from_slice(&e.value).map_err(decode_err)?;
                i.revision = e.mod_revision;
                txn.puts.push(Record::Instance(i));
            } else if e.key.starts_with("op/") {
                let o: Operation = serde_json::from_slice(&e.value).map_err(decode_err)?;
                txn.puts.push(Record::Operation(o));
            } else {
                tracing::warn!(key = %e.key, "ignoring unknown key in store");
            }
        }
        // Apply keeps each record's loaded revision: apply with revision 0, then restore.
        let mut revs: HashMap<Key, u64> = HashMap::new();
        for r in &txn.puts {
            let rev = match r {
                Record::Namespace(n) => n.revision,
                Record::Service(s) => s.revision,
                Record::Instance(i) => i.revision,
                Record::Operation(_) => 0,
            };
            revs.insert(r.key(), rev);
        }
        let touched = state.apply(loaded.revision, txn, &*store, &metrics);
        for ns in state.namespaces.values_mut() {
            ns.revision = revs
                .get(&Key::Namespace(ns.id.clone()))
                .copied()
                .unwrap_or(0);
        }
        for s in state.services.values_mut() {
            s.revision = revs.get(&Key::Service(s.id.clone())).copied().unwrap_or(0);
        }
        for m in state.instances.values_mut() {
            for i in m.values_mut() {
                i.revision = revs
                    .get(&Key::Instance(i.service_id.clone(), i.id.clone()))
                    .copied()
                    .unwrap_or(0);
            }
        }
        let mut order: Vec<(f64, String)> = state
            .operations
            .values()
            .map(|o| (o.created, o.id.clone()))
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0));
        state.op_order = order.into_iter().map(|(_, id)| id).collect();
        state.update_instance_gauges(&touched, &metrics);
        metrics
            .store_revision
            .set(i64::try_from(loaded.revision).unwrap_or(i64::MAX));

        // Readers may have seen revisions that were in flight at a crash: skip past them.
        let mut revision = loaded.revision;
        if revision > 0 {
            revision = store.fence(MAX_IN_FLIGHT as u64 + 1).await?;
        }
        let catalog = Catalog {
            store,
            write_lock: std::sync::Mutex::new(Sequencer {
                next: revision + 1,
                failed: false,
            }),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            state: RwLock::new(state),
            changed: watch::channel(revision).0,
            ns_changed: std::sync::Mutex::new(HashMap::new()),
            metrics,
        };
        // Every namespace gets a new revision (watchers refresh after a restart), and
        // heartbeat instances start a fresh TTL window: whoever lost their heartbeat before
        // the restart gets the TTL to renew it rather than all flipping at once.
        catalog
            .write(|st, txn| {
                for ns in st.namespaces.values() {
                    txn.put(Record::Namespace(ns.clone()));
                }
                for i in st.instances.values().flat_map(|m| m.values()) {
                    if i.heartbeat.is_some() && i.heartbeat != Some(HealthStatus::Healthy) {
                        let mut i = i.clone();
                        i.heartbeat = Some(HealthStatus::Healthy);
                        i.recompute("registry restarted: fresh heartbeat window");
                        txn.put(Record::Instance(i));
                    }
                }
                Ok(())
            })
            .await?;
        Ok(catalog)
    }

    pub fn store(&self) -> &dyn Store {
        &*self.store
    }

    pub fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Revision of the last applied commit; changes whenever anything changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes to the namespace named `name` (also its creation and deletion): wakes only
    /// the watchers of that namespace.
    pub fn subscribe_namespace(&self, name: &str) -> watch::Receiver<u64> {
        let mut map = lock(&self.ns_changed);
        if map.len() > 256 {
            map.retain(|_, tx| tx.receiver_count() > 0);
        }
        map.entry(name.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// True while writes are accepted (false after a failed commit, until a restart).
    pub fn writable(&self) -> bool {
        !lock(&self.write_lock).failed
    }

    /// The one write path: `f` inspects the state and fills a transaction, which is submitted
    /// to the store and applied; the call returns once the store says it is durable.
    pub async fn write<R>(
        &self,
        f: impl FnOnce(&State, &mut Txn) -> Result<R, CatalogError>,
    ) -> Result<R, CatalogError> {
        let Ok(_permit) = self.in_flight.acquire().await else {
            return Err(CatalogError::Store(StoreError::Closed));
        };
        let (out, pending, rev, transitions) = {
            let mut seq = lock(&self.write_lock);
            if seq.failed {
                return Err(CatalogError::Store(StoreError::Closed));
            }
            let mut txn = Txn::default();
            let (out, transitions) = {
                let st = self.read();
                let out = f(&st, &mut txn)?;
                if txn.is_empty() {
                    return Ok(out);
                }
                touch_parents(&st, &mut txn);
                let mut names: Vec<String> = txn
                    .puts
                    .iter()
                    .filter_map(|r| match r {
                        Record::Namespace(ns) => Some(ns.name.clone()),
                        _ => None,
                    })
                    .collect();
                names.extend(txn.deletes.iter().filter_map(|k| match k {
                    Key::Namespace(id) => st.namespaces.get(id).map(|ns| ns.name.clone()),
                    _ => None,
                }));
                let transitions: Vec<HealthStatus> = txn
                    .puts
                    .iter()
                    .filter_map(|r| match r {
                        Record::Instance(i) => Some(i),
                        _ => None,
                    })
                    .filter(|i| {
                        st.instance(&i.service_id, &i.id)
                            .is_some_and(|old| old.health != i.health)
                    })
                    .map(|i| i.health)
                    .collect();
                (out, (transitions, names))
            };
            let mut mutations = Vec::with_capacity(txn.puts.len() + txn.deletes.len());
            for k in &txn.deletes {
                mutations.push(Mutation::Delete { key: k.encode() });
            }
            for r in &txn.puts {
                let value = r.encode().map_err(|source| CatalogError::Decode {
                    key: r.key().encode(),
                    source,
                })?;
                mutations.push(Mutation::Put {
                    key: r.key().encode(),
                    value,
                });
            }
            let pending = self.store.commit(mutations);
            let rev = seq.next;
            seq.next += 1;
            let mut state = self.write_state();
            let touched = state.apply(rev, txn, &*self.store, &self.metrics);
            state.update_instance_gauges(&touched, &self.metrics);
            (out, pending, rev, transitions)
        };
        let (transitions, names) = transitions;
        let started = Instant::now();
        match pending.await {
            Ok(durable) => {
                if durable != rev {
                    tracing::error!(
                        expected = rev,
                        got = durable,
                        "store revision differs from the catalog's"
                    );
                }
                self.metrics
                    .store_commit_latency
                    .observe(started.elapsed().as_secs_f64());
                self.metrics
                    .store_revision
                    .set(i64::try_from(durable).unwrap_or(i64::MAX));
                for t in transitions {
                    self.metrics
                        .health_transitions
                        .with_label_values(&[t.as_str()])
                        .inc();
                }
                let advance = |cur: &mut u64| {
                    let newer = *cur < rev;
                    if newer {
                        *cur = rev;
                    }
                    newer
                };
                self.changed.send_if_modified(advance);
                let watched = lock(&self.ns_changed);
                for name in &names {
                    if let Some(tx) = watched.get(name) {
                        tx.send_if_modified(advance);
                    }
                }
                Ok(out)
            }
            Err(e) => {
                lock(&self.write_lock).failed = true;
                tracing::error!(error = %e, "registry store commit failed: writes are refused until the registry is restarted");
                Err(e.into())
            }
        }
    }
}

/// Every change to an instance or service also rewrites its service and namespace, so that
/// their modification revisions are the namespace's and service's revisions; old
/// operations beyond the limit are dropped in the same transaction.
fn touch_parents(st: &State, txn: &mut Txn) {
    let mut services: BTreeSet<String> = BTreeSet::new();
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    let deleted: BTreeSet<Key> = txn.deletes.iter().cloned().collect();
    for r in &txn.puts {
        match r {
            Record::Instance(i) => {
                services.insert(i.service_id.clone());
            }
            Record::Service(s) => {
                namespaces.insert(s.namespace_id.clone());
            }
            Record::Namespace(_) | Record::Operation(_) => {}
        }
    }
    for k in &txn.deletes {
        match k {
            Key::Instance(s, _) => {
                services.insert(s.clone());
            }
            Key::Service(s) => {
                if let Some(svc) = st.services.get(s) {
                    namespaces.insert(svc.namespace_id.clone());
                }
            }
            Key::Namespace(_) | Key::Operation(_) => {}
        }
    }
    let put_keys: BTreeSet<Key> = txn.puts.iter().map(Record::key).collect();
    for s in services {
        let Some(svc) = st.services.get(&s) else {
            continue;
        };
        namespaces.insert(svc.namespace_id.clone());
        let k = Key::Service(s);
        if !put_keys.contains(&k) && !deleted.contains(&k) {
            txn.puts.push(Record::Service(svc.clone()));
        }
    }
    for n in namespaces {
        let Some(ns) = st.namespaces.get(&n) else {
            continue;
        };
        let k = Key::Namespace(n);
        if !put_keys.contains(&k) && !deleted.contains(&k) {
            txn.puts.push(Record::Namespace(ns.clone()));
        }
    }
    let new_ops = txn
        .puts
        .iter()
        .filter(|r| matches!(r, Record::Operation(_)))
        .count();
    let excess = (st.op_order.len() + new_ops).saturating_sub(model::MAX_OPERATIONS);
    for id in st.op_order.iter().take(excess) {
        txn.deletes.push(Key::Operation(id.clone()));
    }
}

mod ops;
#[cfg(test)]
mod tests;
