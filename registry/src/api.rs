//! Cloud Map's API over AWS JSON 1.1: `POST /` with `X-Amz-Target:
//! Route53AutoNaming_v20170314.<Operation>`; request and response shapes, ids, ARNs and
//! error names as botocore's `servicediscovery` model (2017-03-14) states them, so that the
//! AWS CLI and SDKs work unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};
use skiff_registry_client::HealthStatus;

use crate::catalog::{Catalog, CatalogError, State};
use crate::model::{
    self, ACCOUNT, DnsConfig, DnsRecord, HealthCheckConfig, HealthCheckCustomConfig, Instance,
    Namespace, NamespaceType, Service,
};
use crate::store::lock;

pub const TARGET_PREFIX: &str = "Route53AutoNaming_v20170314.";
const DEFAULT_PAGE: usize = 100;

/// An error in AWS's shape: `{"__type": code, "Message": message, ...extra}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub message: String,
    pub status: u16,
    pub extra: Map<String, Value>,
}

// === impl ApiError ===

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            status: 400,
            extra: Map::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new("InvalidInput", message)
    }

    pub fn with_status(mut self, status: u16) -> ApiError {
        self.status = status;
        self
    }

    pub fn body(&self) -> Value {
        let mut m = self.extra.clone();
        m.insert("__type".into(), json!(self.code));
        m.insert("Message".into(), json!(self.message));
        Value::Object(m)
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        let msg = e.to_string();
        match e {
            CatalogError::NamespaceNotFound(_) => ApiError::new("NamespaceNotFound", msg),
            CatalogError::ServiceNotFound(_) => ApiError::new("ServiceNotFound", msg),
            CatalogError::InstanceNotFound(_) => ApiError::new("InstanceNotFound", msg),
            CatalogError::OperationNotFound(_) => ApiError::new("OperationNotFound", msg),
            CatalogError::NamespaceAlreadyExists {
                namespace_id,
                creator_request_id,
                ..
            } => {
                let mut e = ApiError::new("NamespaceAlreadyExists", msg);
                e.extra.insert("NamespaceId".into(), json!(namespace_id));
                if let Some(c) = creator_request_id {
                    e.extra.insert("CreatorRequestId".into(), json!(c));
                }
                e
            }
            CatalogError::ServiceAlreadyExists {
                service_id,
                service_arn,
                creator_request_id,
                ..
            } => {
                let mut e = ApiError::new("ServiceAlreadyExists", msg);
                e.extra.insert("ServiceId".into(), json!(service_id));
                e.extra.insert("ServiceArn".into(), json!(service_arn));
                if let Some(c) = creator_request_id {
                    e.extra.insert("CreatorRequestId".into(), json!(c));
                }
                e
            }
            CatalogError::DuplicateRequest { operation_id, .. } => {
                let mut e = ApiError::new("DuplicateRequest", msg);
                e.extra
                    .insert("DuplicateOperationId".into(), json!(operation_id));
                e
            }
            CatalogError::ResourceInUse(_) => ApiError::new("ResourceInUse", msg),
            CatalogError::InvalidInput(_) => ApiError::invalid(msg),
            CatalogError::CustomHealthNotFound(_) => ApiError::new("CustomHealthNotFound", msg),
            CatalogError::ResourceLimitExceeded(_) => ApiError::new("ResourceLimitExceeded", msg),
            CatalogError::Store(_) | CatalogError::Decode { .. } => {
                tracing::error!(error = %e, "registry store failed");
                ApiError::new(
                    "InternalFailure",
                    "the registry store failed; the request was not applied",
                )
                .with_status(500)
            }
        }
    }
}

/// The operation name in `X-Amz-Target`, validated.
pub fn operation_name(target: Option<&str>) -> Result<&str, ApiError> {
    let Some(target) = target else {
        return Err(ApiError::new(
            "MissingAction",
            "missing X-Amz-Target header",
        ));
    };
    let Some(op) = target.strip_prefix(TARGET_PREFIX) else {
        return Err(ApiError::new(
            "UnknownOperationException",
            format!("unknown target {target}"),
        ));
    };
    Ok(op)
}

/// A response body: a JSON value, or bytes already serialized.
#[derive(Debug)]
pub enum Output {
    Json(Value),
    Bytes(Vec<u8>),
}

// === impl Output ===

impl Output {
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Output::Json(v) => serde_json::to_vec(&v).unwrap_or_default(),
            Output::Bytes(b) => b,
        }
    }
}

/// Runs operation `op` with JSON `body`.
pub async fn dispatch(catalog: &Catalog, op: &str, body: &[u8]) -> Result<Output, ApiError> {
    if op == "DiscoverInstances" {
        let req = parse_body(body)?;
        return discover_instances(catalog, Req(&req));
    }
    dispatch_json(catalog, op, body).await.map(Output::Json)
}

fn parse_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let req: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                "SerializationException",
                format!("request body is not valid JSON: {e}"),
            )
        })?
    };
    match req {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::new(
            "SerializationException",
            "request body must be a JSON object",
        )),
    }
}

async fn dispatch_json(catalog: &Catalog, op: &str, body: &[u8]) -> Result<Value, ApiError> {
    let req = parse_body(body)?;
    let r = Req(&req);
    match op {
        "CreateHttpNamespace" => create_namespace(catalog, r, NamespaceType::Http).await,
        "CreatePrivateDnsNamespace" => {
            create_namespace(catalog, r, NamespaceType::DnsPrivate).await
        }
        "CreatePublicDnsNamespace" => create_namespace(catalog, r, NamespaceType::DnsPublic).await,
        "GetNamespace" => get_namespace(catalog, r),
        "ListNamespaces" => list_namespaces(catalog, r),
        "DeleteNamespace" => {
            let op = catalog.delete_namespace(&r.string("Id", 255)?).await?;
            Ok(json!({ "OperationId": op }))
        }
        "CreateService" => create_service(catalog, r).await,
        "GetService" => get_service(catalog, r),
        "ListServices" => list_services(catalog, r),
        "UpdateService" => update_service(catalog, r).await,
        "DeleteService" => {
            catalog.delete_service(&r.string("Id", 255)?).await?;
            Ok(json!({}))
        }
        "RegisterInstance" => register_instance(catalog, r).await,
        "DeregisterInstance" => {
            let op = catalog
                .deregister_instance(&r.string("ServiceId", 255)?, &r.string("InstanceId", 64)?)
                .await?;
            Ok(json!({ "OperationId": op }))
        }
        "GetInstance" => get_instance(catalog, r),
        "ListInstances" => list_instances(catalog, r),
        "GetInstancesHealthStatus" => get_instances_health(catalog, r),
        "UpdateInstanceCustomHealthStatus" => {
            let status = match r.string("Status", 16)?.as_str() {
                "HEALTHY" => HealthStatus::Healthy,
                "UNHEALTHY" => HealthStatus::Unhealthy,
                other => {
                    return Err(ApiError::invalid(format!(
                        "Status: {other:?} must be HEALTHY or UNHEALTHY"
                    )));
                }
            };
            catalog
                .update_custom_health(
                    &r.string("ServiceId", 255)?,
                    &r.string("InstanceId", 64)?,
                    status,
                )
                .await?;
            Ok(json!({}))
        }
        "DiscoverInstancesRevision" => {
            let st = catalog.read();
            let svc = discover_target(&st, r)?;
            Ok(json!({ "InstancesRevision": svc.revision }))
        }
        "GetOperation" => get_operation(catalog, r),
        "ListOperations" => list_operations(catalog, r),
        "ListTagsForResource" => {
            r.string("ResourceARN", 1011)?;
            Ok(json!({ "Tags": [] }))
        }
        other => Err(ApiError::new(
            "UnknownOperationException",
            format!("unknown operation {other}"),
        )),
    }
}

/// Typed access to request fields; errors name the field.
#[derive(Clone, Copy)]
struct Req<'a>(&'a Map<String, Value>);

impl<'a> Req<'a> {
    fn opt_string(&self, name: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= max => Ok(Some(s.clone())),
            Some(Value::String(_)) => Err(ApiError::invalid(format!(
                "{name}: must be at most {max} characters"
            ))),
            Some(_) => Err(ApiError::invalid(format!("{name}: must be a string"))),
        }
    }

    fn string(&self, name: &str, max: usize) -> Result<String, ApiError> {
        match self.opt_string(name, max)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::invalid(format!(
                "{name}: required field is missing"
            ))),
        }
    }

    fn opt_u64(&self, name: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(format!(
                    "{name}: must be an integer from {min} to {max}"
                ))),
            },
        }
    }

    fn obj(&self, name: &str) -> Result<Option<Req<'a>>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Object(m)) => Ok(Some(Req(m))),
            Some(_) => Err(ApiError::invalid(format!("{name}: must be an object"))),
        }
    }

    fn attributes(&self, name: &str) -> Result<Option<BTreeMap<String, String>>, ApiError> {
        let Some(m) = self.obj(name)? else {
            return Ok(None);
        };
        let mut out = BTreeMap::new();
        for (k, v) in m.0 {
            let Value::String(v) = v else {
                return Err(ApiError::invalid(format!("{name}.{k}: must be a string")));
            };
            out.insert(k.clone(), v.clone());
        }
        Ok(Some(out))
    }

    /// A field decoded into an AWS shape; serde's message names the bad member.
    fn shape<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .map_err(|e| ApiError::invalid(format!("{name}: {e}"))),
        }
    }

    fn page(&self) -> Result<(usize, usize), ApiError> {
        let max = self
            .opt_u64("MaxResults", 1, 100)?
            .map_or(DEFAULT_PAGE, |n| n as usize);
        let start = match self.opt_string("NextToken", 4096)? {
            None => 0,
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| ApiError::invalid("NextToken: invalid pagination token"))?,
        };
        Ok((start, max))
    }

    fn filters(&self) -> Result<Vec<Filter>, ApiError> {
        match self.0.get("Filters") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| ApiError::invalid(format!("Filters: {e}"))),
        }
    }
}

#[derive(serde::Deserialize)]
struct Filter {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Values")]
    values: Vec<String>,
    #[serde(rename = "Condition", default)]
    condition: Option<String>,
}

impl Filter {
    fn matches(&self, value: &str) -> Result<bool, ApiError> {
        match self.condition.as_deref().unwrap_or("EQ") {
            "EQ" => Ok(self.values.first().is_some_and(|v| v == value)),
            "IN" => Ok(self.values.iter().any(|v| v == value)),
            "BEGINS_WITH" => Ok(self
                .values
                .first()
                .is_some_and(|v| value.starts_with(v.as_str()))),
            other => Err(ApiError::invalid(format!(
                "Filters.Condition: {other} is not supported for {}",
                self.name
            ))),
        }
    }
}

/// One page of the `items` that pass every filter, oldest first (then by id). `value` gives an
/// item's value for a filter name, `None` for a name `what` lists cannot be filtered by.
fn filtered_page<'a, T>(
    items: impl Iterator<Item = &'a T>,
    filters: &[Filter],
    what: &str,
    value: impl Fn(&'a T, &str) -> Option<&'a str>,
    order: impl Fn(&T) -> (f64, &str),
    (start, max): (usize, usize),
) -> Result<(Vec<&'a T>, Option<String>), ApiError> {
    let mut list = Vec::new();
    'item: for item in items {
        for f in filters {
            let Some(v) = value(item, f.name.as_str()) else {
                return Err(ApiError::invalid(format!(
                    "Filters.Name: {} is not a {what} filter",
                    f.name
                )));
            };
            if !f.matches(v)? {
                continue 'item;
            }
        }
        list.push(item);
    }
    list.sort_by(|a, b| {
        let ((ca, ia), (cb, ib)) = (order(a), order(b));
        ca.total_cmp(&cb).then_with(|| ia.cmp(ib))
    });
    Ok(paginate(list, start, max))
}

/// One page of `items` and the token of the next.
fn paginate<T>(items: Vec<T>, start: usize, max: usize) -> (Vec<T>, Option<String>) {
    let total = items.len();
    let page: Vec<T> = items.into_iter().skip(start).take(max).collect();
    let next = (start + max < total).then(|| (start + max).to_string());
    (page, next)
}

fn with_token(mut v: Value, next: Option<String>) -> Value {
    if let (Some(t), Value::Object(m)) = (next, &mut v) {
        m.insert("NextToken".into(), json!(t));
    }
    v
}

// === namespaces ===

async fn create_namespace(
    catalog: &Catalog,
    r: Req<'_>,
    kind: NamespaceType,
) -> Result<Value, ApiError> {
    let max = if kind == NamespaceType::Http {
        1024
    } else {
        253
    };
    let name = r.string("Name", max)?;
    if !model::valid_namespace_name(&name, max) {
        return Err(ApiError::invalid(format!(
            "Name: {name:?} must be 1-{max} printable ASCII characters not starting with arn:"
        )));
    }
    if kind != NamespaceType::Http && !model::valid_dns_name(&name) {
        return Err(ApiError::invalid(format!(
            "Name: {name:?} is not a valid domain name"
        )));
    }
    if kind == NamespaceType::DnsPrivate {
        r.string("Vpc", 64)?;
    }
    let soa_ttl = match r.obj("Properties")? {
        Some(p) => match p
            .obj("DnsProperties")?
            .map(|d| d.obj("SOA"))
            .transpose()?
            .flatten()
        {
            Some(soa) => soa.opt_u64("TTL", 0, 2_147_483_647)?.map(|t| t as u32),
            None => None,
        },
        None => None,
    };
    let op = catalog
        .create_namespace(
            &name,
            kind,
            r.opt_string("Description", 1024)?,
            r.opt_string("CreatorRequestId", 64)?,
            soa_ttl,
        )
        .await?;
    Ok(json!({ "OperationId": op }))
}

fn namespace_json(st: &State, ns: &Namespace, full: bool) -> Value {
    let mut props = Map::new();
    if ns.kind == NamespaceType::Http {
        props.insert("HttpProperties".into(), json!({ "HttpName": ns.name }));
    } else {
        props.insert(
            "DnsProperties".into(),
            json!({ "HostedZoneId": ns.hosted_zone_id(), "SOA": { "TTL": ns.soa_ttl } }),
        );
        props.insert("HttpProperties".into(), json!({ "HttpName": ns.name }));
    }
    let mut v = json!({
        "Id": ns.id,
        "Arn": ns.arn(),
        "ResourceOwner": ACCOUNT,
        "Name": ns.name,
        "Type": ns.kind.as_str(),
        "ServiceCount": st.services_of(&ns.id).count(),
        "Properties": props,
        "CreateDate": ns.created,
    });
    if let Value::Object(m) = &mut v {
        if let Some(d) = &ns.description {
            m.insert("Description".into(), json!(d));
        }
        if full && let Some(c) = &ns.creator_request_id {
            m.insert("CreatorRequestId".into(), json!(c));
        }
    }
    v
}

fn get_namespace(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let id = r.string("Id", 255)?;
    let st = catalog.read();
    let ns = st
        .namespaces
        .get(State::strip_arn(&id))
        .ok_or_else(|| ApiError::new("NamespaceNotFound", format!("Namespace {id} not found.")))?;
    Ok(json!({ "Namespace": namespace_json(&st, ns, true) }))
}

fn list_namespaces(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let (start, max) = r.page()?;
    let filters = r.filters()?;
    let st = catalog.read();
    let (page, next) = filtered_page(
        st.namespaces.values(),
        &filters,
        "namespace",
        |ns, filter| match filter {
            "TYPE" => Some(ns.kind.as_str()),
            "NAME" | "HTTP_NAME" => Some(ns.name.as_str()),
            "RESOURCE_OWNER" => Some(ACCOUNT),
            _ => None,
        },
        |ns| (ns.created, ns.id.as_str()),
        (start, max),
    )?;
    let items: Vec<Value> = page
        .into_iter()
        .map(|ns| namespace_json(&st, ns, false))
        .collect();
    Ok(with_token(json!({ "Namespaces": items }), next))
}

// === services ===

async fn create_service(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let name = r.string("Name", 127)?;
    if !model::valid_service_name(&name) {
        return Err(ApiError::invalid(format!(
            "Name: {name:?} must be DNS labels of letters, digits, '_' and '-', at most 127 characters"
        )));
    }
    let dns_config: Option<DnsConfig> = r.shape("DnsConfig")?;
    let namespace_id = match (
        r.opt_string("NamespaceId", 255)?,
        dns_config.as_ref().and_then(|d| d.namespace_id.clone()),
    ) {
        (Some(id), _) | (None, Some(id)) => State::strip_arn(&id).to_string(),
        (None, None) => return Err(ApiError::invalid("NamespaceId: required field is missing")),
    };
    if let Some(d) = &dns_config {
        validate_records(&d.dns_records, "DnsConfig.DnsRecords")?;
    }
    let health_check_config: Option<HealthCheckConfig> = r.shape("HealthCheckConfig")?;
    let health_check_custom_config: Option<HealthCheckCustomConfig> =
        r.shape("HealthCheckCustomConfig")?;
    if health_check_config.is_some() && health_check_custom_config.is_some() {
        return Err(ApiError::invalid(
            "HealthCheckConfig and HealthCheckCustomConfig: a service can have one or the other, not both",
        ));
    }
    if let Some(hc) = &health_check_config {
        validate_health_check(hc)?;
    }
    if let Some(t) = health_check_custom_config
        .as_ref()
        .and_then(|c| c.failure_threshold)
        && !(1..=10).contains(&t)
    {
        return Err(ApiError::invalid(
            "HealthCheckCustomConfig.FailureThreshold: must be from 1 to 10",
        ));
    }
    let svc = Service {
        id: String::new(),
        name,
        namespace_id,
        description: r.opt_string("Description", 1024)?,
        dns_config,
        health_check_config,
        health_check_custom_config,
        creator_request_id: r.opt_string("CreatorRequestId", 64)?,
        created: 0.0,
        revision: 0,
    };
    let svc = catalog.create_service(svc).await?;
    let st = catalog.read();
    Ok(json!({ "Service": service_json(&st, &svc, true) }))
}

fn validate_records(records: &[DnsRecord], field: &str) -> Result<(), ApiError> {
    if records.is_empty() {
        return Err(ApiError::invalid(format!(
            "{field}: at least one record is required"
        )));
    }
    for r in records {
        if r.ttl > 2_147_483_647 {
            return Err(ApiError::invalid(format!(
                "{field}.TTL: must be from 0 to 2147483647"
            )));
        }
        if r.kind == model::RecordType::CNAME && records.len() > 1 {
            return Err(ApiError::invalid(format!(
                "{field}: a CNAME record cannot be combined with others"
            )));
        }
    }
    Ok(())
}

fn validate_health_check(hc: &HealthCheckConfig) -> Result<(), ApiError> {
    if let Some(t) = hc.failure_threshold
        && !(1..=10).contains(&t)
    {
        return Err(ApiError::invalid(
            "HealthCheckConfig.FailureThreshold: must be from 1 to 10",
        ));
    }
    if let Some(p) = &hc.resource_path {
        if hc.kind == model::HealthCheckType::Tcp {
            return Err(ApiError::invalid(
                "HealthCheckConfig.ResourcePath: not allowed for TCP health checks",
            ));
        }
        if p.len() > 255 || !p.starts_with('/') {
            return Err(ApiError::invalid(
                "HealthCheckConfig.ResourcePath: must start with / and be at most 255 characters",
            ));
        }
    }
    Ok(())
}

fn service_json(st: &State, s: &Service, full: bool) -> Value {
    let mut m = Map::new();
    m.insert("Id".into(), json!(s.id));
    m.insert("Arn".into(), json!(s.arn()));
    m.insert("ResourceOwner".into(), json!(ACCOUNT));
    m.insert("Name".into(), json!(s.name));
    if full {
        m.insert("NamespaceId".into(), json!(s.namespace_id));
    }
    m.insert("Type".into(), json!(s.kind()));
    if let Some(d) = &s.description {
        m.insert("Description".into(), json!(d));
    }
    m.insert(
        "InstanceCount".into(),
        json!(st.instances.get(&s.id).map_or(0, BTreeMap::len)),
    );
    if let Some(d) = &s.dns_config {
        let mut d = d.clone();
        d.namespace_id = Some(s.namespace_id.clone());
        d.routing_policy = Some(d.routing_policy.unwrap_or(model::RoutingPolicy::Multivalue));
        m.insert("DnsConfig".into(), json!(d));
    }
    if let Some(h) = &s.health_check_config {
        let mut h = h.clone();
        if h.failure_threshold.is_none() {
            h.failure_threshold = Some(1);
        }
        m.insert("HealthCheckConfig".into(), json!(h));
    }
    if let Some(h) = &s.health_check_custom_config {
        m.insert("HealthCheckCustomConfig".into(), json!(h));
    }
    m.insert("CreateDate".into(), json!(s.created));
    if full && let Some(c) = &s.creator_request_id {
        m.insert("CreatorRequestId".into(), json!(c));
    }
    m.insert("CreatedByAccount".into(), json!(ACCOUNT));
    Value::Object(m)
}

fn get_service(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let id = r.string("Id", 255)?;
    let st = catalog.read();
    let svc = find_service(&st, &id)?;
    Ok(json!({ "Service": service_json(&st, svc, true) }))
}

fn find_service<'s>(st: &'s State, id: &str) -> Result<&'s Service, ApiError> {
    st.services
        .get(State::strip_arn(id))
        .ok_or_else(|| ApiError::new("ServiceNotFound", format!("Service {id} not found.")))
}

fn list_services(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let (start, max) = r.page()?;
    let filters = r.filters()?;
    let st = catalog.read();
    let (page, next) = filtered_page(
        st.services.values(),
        &filters,
        "service",
        |s, filter| match filter {
            "NAMESPACE_ID" => Some(s.namespace_id.as_str()),
            "RESOURCE_OWNER" => Some(ACCOUNT),
            _ => None,
        },
        |s| (s.created, s.id.as_str()),
        (start, max),
    )?;
    let items: Vec<Value> = page
        .into_iter()
        .map(|s| service_json(&st, s, false))
        .collect();
    Ok(with_token(json!({ "Services": items }), next))
}

async fn update_service(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let id = r.string("Id", 255)?;
    let Some(change) = r.obj("Service")? else {
        return Err(ApiError::invalid("Service: required field is missing"));
    };
    let records = match change.obj("DnsConfig")? {
        Some(d) => {
            let records: Vec<DnsRecord> = d.shape("DnsRecords")?.ok_or_else(|| {
                ApiError::invalid("Service.DnsConfig.DnsRecords: required field is missing")
            })?;
            validate_records(&records, "Service.DnsConfig.DnsRecords")?;
            Some(records)
        }
        None => None,
    };
    let hc: Option<HealthCheckConfig> = change.shape("HealthCheckConfig")?;
    if let Some(hc) = &hc {
        validate_health_check(hc)?;
    }
    let op = catalog
        .update_service(&id, change.opt_string("Description", 1024)?, records, hc)
        .await?;
    Ok(json!({ "OperationId": op }))
}

// === instances ===

async fn register_instance(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let service_id = r.string("ServiceId", 255)?;
    let instance_id = r.string("InstanceId", 64)?;
    if !model::valid_instance_id(&instance_id) {
        return Err(ApiError::invalid(format!(
            "InstanceId: {instance_id:?} must be 1-64 characters of letters, digits and _/:.@-"
        )));
    }
    let attributes = r
        .attributes("Attributes")?
        .ok_or_else(|| ApiError::invalid("Attributes: required field is missing"))?;
    let op = catalog
        .register_instance(
            &service_id,
            &instance_id,
            r.opt_string("CreatorRequestId", 64)?,
            attributes,
        )
        .await?;
    Ok(json!({ "OperationId": op }))
}

fn get_instance(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let service_id = r.string("ServiceId", 255)?;
    let instance_id = r.string("InstanceId", 64)?;
    let st = catalog.read();
    let svc = find_service(&st, &service_id)?;
    let i = st.instance(&svc.id, &instance_id).ok_or_else(|| {
        ApiError::new(
            "InstanceNotFound",
            format!("Instance {instance_id} not found in service {service_id}."),
        )
    })?;
    let mut inst = json!({ "Id": i.id, "Attributes": i.attributes, "CreatedByAccount": ACCOUNT });
    if let (Some(c), Value::Object(m)) = (&i.creator_request_id, &mut inst) {
        m.insert("CreatorRequestId".into(), json!(c));
    }
    Ok(json!({ "ResourceOwner": ACCOUNT, "Instance": inst }))
}

fn list_instances(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let service_id = r.string("ServiceId", 255)?;
    let (start, max) = r.page()?;
    let st = catalog.read();
    let svc = find_service(&st, &service_id)?;
    let list: Vec<&Instance> = st.instances_of(&svc.id).collect();
    let (page, next) = paginate(list, start, max);
    let items: Vec<Value> = page
        .into_iter()
        .map(|i| json!({ "Id": i.id, "Attributes": i.attributes, "CreatedByAccount": ACCOUNT }))
        .collect();
    Ok(with_token(
        json!({ "ResourceOwner": ACCOUNT, "Instances": items }),
        next,
    ))
}

fn get_instances_health(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let service_id = r.string("ServiceId", 255)?;
    let (start, max) = r.page()?;
    let wanted: Option<Vec<String>> = r.shape("Instances")?;
    let st = catalog.read();
    let svc = find_service(&st, &service_id)?;
    let list: Vec<&Instance> = match &wanted {
        Some(ids) => {
            let mut out = Vec::new();
            for id in ids {
                out.push(st.instance(&svc.id, id).ok_or_else(|| {
                    ApiError::new(
                        "InstanceNotFound",
                        format!("Instance {id} not found in service {service_id}."),
                    )
                })?);
            }
            out
        }
        None => st.instances_of(&svc.id).collect(),
    };
    let (page, next) = paginate(list, start, max);
    let status: Map<String, Value> = page
        .into_iter()
        .map(|i| (i.id.clone(), json!(i.health.as_str())))
        .collect();
    Ok(with_token(json!({ "Status": status }), next))
}

fn discover_target<'s>(st: &'s State, r: Req<'_>) -> Result<&'s Service, ApiError> {
    let ns_name = r.string("NamespaceName", 1024)?;
    let svc_name = r.string("ServiceName", 127)?;
    let ns = st.namespace_by_name(&ns_name).ok_or_else(|| {
        ApiError::new(
            "NamespaceNotFound",
            format!("Namespace {ns_name} not found."),
        )
    })?;
    st.service_by_name(&ns.id, &svc_name).ok_or_else(|| {
        ApiError::new(
            "ServiceNotFound",
            format!("Service {svc_name} not found in namespace {ns_name}."),
        )
    })
}

fn discover_instances(catalog: &Catalog, r: Req<'_>) -> Result<Output, ApiError> {
    let max = r
        .opt_u64("MaxResults", 1, 1000)?
        .map_or(100, |n| n as usize);
    let query = r.attributes("QueryParameters")?.unwrap_or_default();
    let optional = r.attributes("OptionalParameters")?.unwrap_or_default();
    let filter = r
        .opt_string("HealthStatus", 32)?
        .unwrap_or_else(|| "HEALTHY".to_string());
    if !matches!(
        filter.as_str(),
        "HEALTHY" | "UNHEALTHY" | "ALL" | "HEALTHY_OR_ELSE_ALL"
    ) {
        return Err(ApiError::invalid(format!(
            "HealthStatus: {filter:?} must be HEALTHY, UNHEALTHY, ALL or HEALTHY_OR_ELSE_ALL"
        )));
    }
    let st = catalog.read();
    let svc = discover_target(&st, r)?;
    if query.is_empty() && optional.is_empty() {
        let ns_name = st
            .namespaces
            .get(&svc.namespace_id)
            .map_or("", |n| n.name.as_str());
        let frags = fragments(&st, svc, ns_name);
        return Ok(Output::Bytes(frags.render(&filter, max)));
    }
    let ns_name = st
        .namespaces
        .get(&svc.namespace_id)
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let matches_all = |i: &Instance, params: &BTreeMap<String, String>| {
        params.iter().all(|(k, v)| i.attributes.get(k) == Some(v))
    };
    let mut candidates: Vec<&Instance> = st
        .instances_of(&svc.id)
        .filter(|i| matches_all(i, &query))
        .collect();
    if !optional.is_empty() && candidates.iter().any(|i| matches_all(i, &optional)) {
        candidates.retain(|i| matches_all(i, &optional));
    }
    let mut chosen: Vec<&Instance> = match filter.as_str() {
        "HEALTHY" => candidates
            .into_iter()
            .filter(|i| i.health == HealthStatus::Healthy)
            .collect(),
        "UNHEALTHY" => candidates
            .into_iter()
            .filter(|i| i.health == HealthStatus::Unhealthy)
            .collect(),
        "ALL" => candidates,
        _ => {
            let healthy: Vec<&Instance> = candidates
                .iter()
                .copied()
                .filter(|i| i.health == HealthStatus::Healthy)
                .collect();
            if healthy.is_empty() {
                candidates
            } else {
                healthy
            }
        }
    };
    chosen.shuffle(&mut rand::rng());
    chosen.truncate(max);
    // Serialized straight from the catalog (no intermediate `Value`): this is the hot call.
    let out = DiscoverOutput {
        instances: chosen
            .into_iter()
            .map(|i| HttpInstanceSummary {
                instance_id: &i.id,
                namespace_name: &ns_name,
                service_name: &svc.name,
                health_status: i.health.as_str(),
                attributes: &i.attributes,
            })
            .collect(),
        instances_revision: svc.revision,
    };
    serde_json::to_vec(&out)
        .map(Output::Bytes)
        .map_err(|e| ApiError::new("InternalFailure", e.to_string()).with_status(500))
}

/// Every instance of a service serialized once as an `HttpInstanceSummary`, at the
/// service's revision; a plain `DiscoverInstances` shuffles and concatenates them.
#[derive(Debug)]
pub struct Fragments {
    revision: u64,
    items: Vec<(HealthStatus, Vec<u8>)>,
}

fn fragments(st: &State, svc: &Service, ns_name: &str) -> Arc<Fragments> {
    let mut cache = lock(&st.discover_cache);
    if let Some(f) = cache.get(&svc.id)
        && f.revision == svc.revision
    {
        return f.clone();
    }
    let items = st
        .instances_of(&svc.id)
        .map(|i| {
            let summary = HttpInstanceSummary {
                instance_id: &i.id,
                namespace_name: ns_name,
                service_name: &svc.name,
                health_status: i.health.as_str(),
                attributes: &i.attributes,
            };
            (i.health, serde_json::to_vec(&summary).unwrap_or_default())
        })
        .collect();
    let f = Arc::new(Fragments {
        revision: svc.revision,
        items,
    });
    cache.insert(svc.id.clone(), f.clone());
    f
}

// === impl Fragments ===

impl Fragments {
    fn render(&self, filter: &str, max: usize) -> Vec<u8> {
        let of = |h: HealthStatus| -> Vec<usize> {
            (0..self.items.len())
                .filter(|&i| self.items[i].0 == h)
                .collect()
        };
        let mut chosen = match filter {
            "HEALTHY" => of(HealthStatus::Healthy),
            "UNHEALTHY" => of(HealthStatus::Unhealthy),
            "ALL" => (0..self.items.len()).collect(),
            _ => {
                let healthy = of(HealthStatus::Healthy);
                if healthy.is_empty() {
                    (0..self.items.len()).collect()
                } else {
                    healthy
                }
            }
        };
        chosen.shuffle(&mut rand::rng());
        chosen.truncate(max);
        let len: usize = chosen.iter().map(|&i| self.items[i].1.len() + 1).sum();
        let mut out = Vec::with_capacity(len + 64);
        out.extend_from_slice(b"{\"Instances\":[");
        for (n, &i) in chosen.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.items[i].1);
        }
        out.extend_from_slice(format!("],\"InstancesRevision\":{}}}", self.revision).as_bytes());
        out
    }
}

#[derive(serde::Serialize)]
struct DiscoverOutput<'a> {
    #[serde(rename = "Instances")]
    instances: Vec<HttpInstanceSummary<'a>>,
    #[serde(rename = "InstancesRevision")]
    instances_revision: u64,
}

#[derive(serde::Serialize)]
struct HttpInstanceSummary<'a> {
    #[serde(rename = "InstanceId")]
    instance_id: &'a str,
    #[serde(rename = "NamespaceName")]
    namespace_name: &'a str,
    #[serde(rename = "ServiceName")]
    service_name: &'a str,
    #[serde(rename = "HealthStatus")]
    health_status: &'static str,
    #[serde(rename = "Attributes")]
    attributes: &'a BTreeMap<String, String>,
}

// === operations ===

fn operation_json(o: &model::Operation) -> Value {
    json!({
        "Id": o.id,
        "OwnerAccount": ACCOUNT,
        "Type": o.kind,
        "Status": o.status,
        "CreateDate": o.created,
        "UpdateDate": o.updated,
        "Targets": o.targets,
    })
}

fn get_operation(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let id = r.string("OperationId", 255)?;
    let st = catalog.read();
    let o = st
        .operations
        .get(&id)
        .ok_or_else(|| ApiError::new("OperationNotFound", format!("Operation {id} not found.")))?;
    Ok(json!({ "Operation": operation_json(o) }))
}

fn list_operations(catalog: &Catalog, r: Req<'_>) -> Result<Value, ApiError> {
    let (start, max) = r.page()?;
    let filters = r.filters()?;
    let st = catalog.read();
    let mut list = Vec::new();
    'op: for id in st.op_order.iter().rev() {
        let Some(o) = st.operations.get(id) else {
            continue;
        };
        for f in &filters {
            let ok = match f.name.as_str() {
                "NAMESPACE_ID" => o
                    .targets
                    .get("NAMESPACE")
                    .is_some_and(|v| f.matches(v).unwrap_or(false)),
                "SERVICE_ID" => o
                    .targets
                    .get("SERVICE")
                    .is_some_and(|v| f.matches(v).unwrap_or(false)),
                "STATUS" => f.matches(&o.status)?,
                "TYPE" => f.matches(&o.kind)?,
                "UPDATE_DATE" => {
                    let bound = |i: usize| f.values.get(i).and_then(|v| v.parse::<f64>().ok());
                    match (bound(0), bound(1)) {
                        (Some(a), Some(b)) => (a..=b).contains(&o.updated),
                        _ => {
                            return Err(ApiError::invalid(
                                "Filters.Values: UPDATE_DATE needs two epoch timestamps",
                            ));
                        }
                    }
                }
                other => {
                    return Err(ApiError::invalid(format!(
                        "Filters.Name: {other} is not an operation filter"
                    )));
                }
            };
            if !ok {
                continue 'op;
            }
        }
        list.push(o);
    }
    let (page, next) = paginate(list, start, max);
    let items: Vec<Value> = page
        .into_iter()
        .map(|o| json!({ "Id": o.id, "Status": o.status }))
        .collect();
    Ok(with_token(json!({ "Operations": items }), next))
}
