//! The real AWS CLI against the registry: the whole namespace → service → instance →
//! discover → deregister flow, and the errors it prints.

use serde_json::Value;

use crate::harness::TestRegistry;

fn s(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{ptr} missing in {v}"))
        .to_string()
}

async fn discover_ids(reg: &TestRegistry, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "discover-instances",
        "--namespace-name",
        "prod.internal",
        "--service-name",
        "orders",
    ];
    args.extend_from_slice(extra);
    let out = reg.aws(&args).await;
    assert!(out.ok, "{}", out.stderr);
    let mut ids: Vec<String> = out.json["Instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["InstanceId"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_namespace_service_instance_discover_deregister_flow() {
    let reg = TestRegistry::start().await;

    let out = reg
        .aws(&[
            "create-private-dns-namespace",
            "--name",
            "prod.internal",
            "--vpc",
            "vpc-1",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let op_id = s(&out.json, "/OperationId");

    let out = reg.aws(&["get-operation", "--operation-id", &op_id]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(s(&out.json, "/Operation/Status"), "SUCCESS");
    assert_eq!(s(&out.json, "/Operation/Type"), "CREATE_NAMESPACE");
    let ns_id = s(&out.json, "/Operation/Targets/NAMESPACE");
    assert!(ns_id.starts_with("ns-") && ns_id.len() == 19, "{ns_id}");

    let out = reg.aws(&["get-namespace", "--id", &ns_id]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(s(&out.json, "/Namespace/Name"), "prod.internal");
    assert_eq!(s(&out.json, "/Namespace/Type"), "DNS_PRIVATE");
    assert_eq!(
        s(&out.json, "/Namespace/Arn"),
        format!("arn:aws:servicediscovery:us-east-1:000000000000:namespace/{ns_id}")
    );

    let out = reg.aws(&["list-namespaces"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json["Namespaces"].as_array().unwrap().len(), 1);

    let out = reg
        .aws(&[
            "create-service",
            "--name",
            "orders",
            "--namespace-id",
            &ns_id,
            "--dns-config",
            "RoutingPolicy=MULTIVALUE,DnsRecords=[{Type=A,TTL=10},{Type=SRV,TTL=10}]",
            "--health-check-custom-config",
            "FailureThreshold=1",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let svc_id = s(&out.json, "/Service/Id");
    assert!(svc_id.starts_with("srv-"), "{svc_id}");
    assert_eq!(
        s(&out.json, "/Service/Arn"),
        format!("arn:aws:servicediscovery:us-east-1:000000000000:service/{svc_id}")
    );
    assert_eq!(s(&out.json, "/Service/DnsConfig/DnsRecords/0/Type"), "A");

    let out = reg
        .aws(&[
            "list-services",
            "--filters",
            &format!("Name=NAMESPACE_ID,Values={ns_id},Condition=EQ"),
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(s(&out.json, "/Services/0/Name"), "orders");

    let out = reg
        .aws(&[
            "update-service",
            "--id",
            &svc_id,
            "--service",
            "Description=orders api,DnsConfig={DnsRecords=[{Type=A,TTL=30},{Type=SRV,TTL=30}]}",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let out = reg.aws(&["get-service", "--id", &svc_id]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json["Service"]["DnsConfig"]["DnsRecords"][0]["TTL"], 30);
    assert_eq!(s(&out.json, "/Service/Description"), "orders api");

    for (id, ip) in [("t1", "10.0.0.1"), ("t2", "10.0.0.2")] {
        let attrs = format!("AWS_INSTANCE_IPV4={ip},AWS_INSTANCE_PORT=8080,team=blue");
        let out = reg
            .aws(&[
                "register-instance",
                "--service-id",
                &svc_id,
                "--instance-id",
                id,
                "--attributes",
                &attrs,
            ])
            .await;
        assert!(out.ok, "{}", out.stderr);
        assert!(!s(&out.json, "/OperationId").is_empty());
    }
    assert_eq!(discover_ids(&reg, &[]).await, ["t1", "t2"]);

    let out = reg
        .aws(&[
            "get-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "t1",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        s(&out.json, "/Instance/Attributes/AWS_INSTANCE_IPV4"),
        "10.0.0.1"
    );

    let out = reg.aws(&["list-instances", "--service-id", &svc_id]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.json["Instances"].as_array().unwrap().len(), 2);

    let out = reg
        .aws(&[
            "update-instance-custom-health-status",
            "--service-id",
            &svc_id,
            "--instance-id",
            "t1",
            "--status",
            "UNHEALTHY",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(discover_ids(&reg, &[]).await, ["t2"]);
    assert_eq!(
        discover_ids(&reg, &["--health-status", "ALL"]).await,
        ["t1", "t2"]
    );
    assert_eq!(
        discover_ids(&reg, &["--health-status", "UNHEALTHY"]).await,
        ["t1"]
    );
    assert_eq!(
        discover_ids(&reg, &["--query-parameters", "team=green"]).await,
        Vec::<String>::new()
    );

    let out = reg
        .aws(&["get-instances-health-status", "--service-id", &svc_id])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(s(&out.json, "/Status/t1"), "UNHEALTHY");
    assert_eq!(s(&out.json, "/Status/t2"), "HEALTHY");

    let out = reg
        .aws(&[
            "discover-instances-revision",
            "--namespace-name",
            "prod.internal",
            "--service-name",
            "orders",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let rev1 = out.json["InstancesRevision"].as_u64().unwrap();

    let out = reg
        .aws(&[
            "deregister-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "t1",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        discover_ids(&reg, &["--health-status", "ALL"]).await,
        ["t2"]
    );
    let out = reg
        .aws(&[
            "discover-instances-revision",
            "--namespace-name",
            "prod.internal",
            "--service-name",
            "orders",
        ])
        .await;
    assert!(out.json["InstancesRevision"].as_u64().unwrap() > rev1);

    let out = reg.aws(&["list-operations"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(out.json["Operations"].as_array().unwrap().len() >= 4);

    // Tear down in order; each step refuses while something depends on it.
    reg.aws_fails(
        &["delete-service", "--id", &svc_id],
        "An error occurred (ResourceInUse) when calling the DeleteService operation",
    )
    .await;
    let out = reg
        .aws(&[
            "deregister-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "t2",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let out = reg.aws(&["delete-service", "--id", &svc_id]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = reg.aws(&["delete-namespace", "--id", &ns_id]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = reg.aws(&["get-namespace", "--id", &ns_id]).await;
    assert!(
        out.stderr.contains(
            "An error occurred (NamespaceNotFound) when calling the GetNamespace operation"
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_prints_cloud_map_errors() {
    let reg = TestRegistry::start().await;
    reg.aws_fails(&["get-namespace", "--id", "ns-doesnotexist0000"], "An error occurred (NamespaceNotFound) when calling the GetNamespace operation: Namespace ns-doesnotexist0000 not found").await;

    let out = reg.aws(&["create-http-namespace", "--name", "shop"]).await;
    assert!(out.ok, "{}", out.stderr);
    reg.aws_fails(
        &["create-http-namespace", "--name", "shop"],
        "(NamespaceAlreadyExists)",
    )
    .await;
    let ns_id = reg.client().ensure_http_namespace("shop").await.unwrap();

    let out = reg
        .aws(&["create-service", "--name", "cart", "--namespace-id", &ns_id])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let svc_id = s(&out.json, "/Service/Id");
    reg.aws_fails(
        &["create-service", "--name", "cart", "--namespace-id", &ns_id],
        "(ServiceAlreadyExists) when calling the CreateService operation",
    )
    .await;

    reg.aws_fails(
        &[
            "register-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "i-1",
            "--attributes",
            "AWS_INSTANCE_IPV4=not-an-ip",
        ],
        "(InvalidInput) when calling the RegisterInstance operation: Attributes.AWS_INSTANCE_IPV4",
    )
    .await;

    reg.aws_fails(
        &[
            "register-instance",
            "--service-id",
            "srv-nope",
            "--instance-id",
            "i-1",
            "--attributes",
            "a=b",
        ],
        "(ServiceNotFound)",
    )
    .await;

    reg.aws_fails(
        &[
            "deregister-instance",
            "--service-id",
            &svc_id,
            "--instance-id",
            "ghost",
        ],
        "(InstanceNotFound) when calling the DeregisterInstance operation",
    )
    .await;

    reg.aws_fails(
        &[
            "discover-instances",
            "--namespace-name",
            "shop",
            "--service-name",
            "nope",
        ],
        "(ServiceNotFound) when calling the DiscoverInstances operation",
    )
    .await;

    reg.aws_fails(
        &[
            "update-instance-custom-health-status",
            "--service-id",
            &svc_id,
            "--instance-id",
            "ghost",
            "--status",
            "HEALTHY",
        ],
        "(InstanceNotFound)",
    )
    .await;

    reg.aws_fails(
        &["get-operation", "--operation-id", "nope"],
        "(OperationNotFound)",
    )
    .await;

    let out = reg
        .aws(&[
            "create-service",
            "--name",
            "both",
            "--namespace-id",
            &ns_id,
            "--health-check-config",
            "Type=HTTP,ResourcePath=/health",
            "--health-check-custom-config",
            "FailureThreshold=1",
        ])
        .await;
    assert!(
        out.stderr.contains("(InvalidInput)") && out.stderr.contains("HealthCheckCustomConfig"),
        "{}",
        out.stderr
    );
}
