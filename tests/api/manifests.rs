//! The Kubernetes manifests under `deploy/kubernetes`, run as Kubernetes
//! would run them: each Deployment's container started with its command,
//! its environment and its Secrets (the example ones, with test databases)
//! mounted where it says. The probes answer SERVING on the port and service
//! names they give (the health listener's, apart from the clients'), the ports and the scrape annotation agree, the drain fits
//! the grace period, and an invoice is created through both services with
//! the example tokens.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use numbering::{
    access::bearer::BearerToken, db::Backend, proto::invoice_writer_client::InvoiceWriterClient,
};
use serde::Deserialize as _;
use serde_json::Value;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::{Running, TestDb, invoice_request, start, wait_for_health};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifests_run_as_written() {
    let secrets = secrets();
    let files = tempfile::tempdir().unwrap();
    let allocator_db = TestDb::create(Backend::Postgres).await;
    let writer_db = TestDb::create(Backend::Postgres).await;

    let allocator = Pod::of(&only(&documents("allocator.yaml"), "Deployment"));
    let (command, _) = allocator.command(&secrets, &allocator_db.url, files.path());
    let allocator_running = allocator.start(command).await;

    let writer = Pod::of(&only(&documents("writer.yaml"), "Deployment"));
    let (mut command, env) = writer.command(&secrets, &writer_db.url, files.path());
    // The allocator's Service name, here the process started above.
    assert_eq!(
        env["NUMBERING_ALLOCATOR_URL"],
        "http://number-allocator:50051"
    );
    command.args(["--allocator-url", &allocator_running.url()]);
    let writer_running = writer.start(command).await;

    // The example tokens fit together: a caller's token for the writer, and
    // the writer's own for the allocator.
    let channel = Channel::from_shared(writer_running.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        InvoiceWriterClient::with_interceptor(channel, BearerToken::fixed("test").unwrap());
    let invoice = client
        .create_invoice(invoice_request("acme"))
        .await
        .expect("an invoice through both services")
        .into_inner()
        .invoice
        .unwrap();
    assert_eq!(invoice.number, 1);

    // The kustomization lists every manifest but the example Secrets.
    let kustomization = only(&documents("kustomization.yaml"), "Kustomization");
    let mut listed: Vec<_> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file.as_str().unwrap().to_owned())
        .collect();
    listed.sort();
    let mut manifests: Vec<_> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| {
            Path::new(name).extension().is_some_and(|ext| ext == "yaml")
                && name != "kustomization.yaml"
                && name != "secrets.example.yaml"
        })
        .collect();
    manifests.sort();
    assert_eq!(listed, manifests);

    for file in ["allocator.yaml", "writer.yaml"] {
        let documents = documents(file);
        let pod = Pod::of(&only(&documents, "Deployment"));
        let service = only(&documents, "Service");
        for port in service["spec"]["ports"].as_array().unwrap() {
            let target = port["targetPort"].as_str().unwrap();
            assert!(
                pod.ports.contains_key(target),
                "{file}: the Service targets port {target:?}, which the container does not name"
            );
        }
        let budget = only(&documents, "PodDisruptionBudget");
        assert_eq!(
            budget["spec"]["selector"], pod.deployment["spec"]["selector"],
            "{file}: the disruption budget selects other pods"
        );
    }
}

/// One Deployment's pod: its container, volumes and settings.
struct Pod {
    deployment: Value,
    container: Value,
    /// Container ports by name.
    ports: HashMap<String, u16>,
}

impl Pod {
    fn of(deployment: &Value) -> Self {
        let containers = deployment["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap();
        assert_eq!(containers.len(), 1, "one container per pod");
        let container = containers[0].clone();
        let ports = container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|port| {
                (
                    port["name"].as_str().unwrap().to_owned(),
                    u16::try_from(port["containerPort"].as_u64().unwrap()).unwrap(),
                )
            })
            .collect();
        Self {
            deployment: deployment.clone(),
            container,
            ports,
        }
    }

    /// The container's command with its environment, each Secret volume
    /// written under `dir` and the paths that name it moved there, and
    /// `database_url` for the Secret's (a placeholder); also the environment
    /// as the manifest gives it.
    fn command(
        &self,
        secrets: &HashMap<String, HashMap<String, String>>,
        database_url: &str,
        dir: &Path,
    ) -> (tokio::process::Command, HashMap<String, String>) {
        let spec = &self.deployment["spec"]["template"]["spec"];
        let binary = self.container["command"][0].as_str().unwrap();
        let binary = match binary.rsplit('/').next().unwrap() {
            "number-allocator" => env!("CARGO_BIN_EXE_number-allocator"),
            "invoice-writer" => env!("CARGO_BIN_EXE_invoice-writer"),
            other => panic!("no binary {other}"),
        };
        // Each mounted Secret volume, written to a directory of its own.
        let mut mounts: Vec<(String, PathBuf)> = Vec::new();
        for mount in self.container["volumeMounts"].as_array().unwrap() {
            let name = mount["name"].as_str().unwrap();
            let volume = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|volume| volume["name"] == name)
                .unwrap_or_else(|| panic!("no volume {name}"));
            let secret = &secrets[volume["secret"]["secretName"].as_str().unwrap()];
            let local = dir.join(format!(
                "{}-{name}",
                self.container["name"].as_str().unwrap()
            ));
            std::fs::create_dir_all(&local).unwrap();
            for item in volume["secret"]["items"].as_array().unwrap() {
                let key = item["key"].as_str().unwrap();
                let value = secret
                    .get(key)
                    .unwrap_or_else(|| panic!("the example Secret has no {key}"));
                std::fs::write(local.join(item["path"].as_str().unwrap()), value).unwrap();
            }
            mounts.push((mount["mountPath"].as_str().unwrap().to_owned(), local));
        }

        let mut command = tokio::process::Command::new(binary);
        let mut env = HashMap::new();
        for variable in self.container["env"].as_array().unwrap() {
            let name = variable["name"].as_str().unwrap();
            let value = if let Some(value) = variable["value"].as_str() {
                env.insert(name.to_owned(), value.to_owned());
                mounts
                    .iter()
                    .find_map(|(mount, local)| {
                        value
                            .strip_prefix(mount.as_str())
                            .map(|rest| format!("{}{rest}", local.display()))
                    })
                    .unwrap_or_else(|| value.to_owned())
            } else {
                let reference = &variable["valueFrom"]["secretKeyRef"];
                let key = reference["key"].as_str().unwrap();
                assert!(
                    secrets[reference["name"].as_str().unwrap()].contains_key(key),
                    "the example Secret has no {key}"
                );
                assert_eq!(key, "database-url", "{name} from a Secret");
                database_url.to_owned()
            };
            command.env(name, value);
        }
        (command, env)
    }

    /// Starts `command` on ports of its own (the manifest's are fixed), and
    /// checks that the ports and probes it names are the ones it serves on.
    async fn start(&self, mut command: tokio::process::Command) -> Running {
        let env: HashMap<_, _> = self.container["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| Some((v["name"].as_str()?, v["value"].as_str()?)))
            .collect();
        let port_of = |address: &str| address.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        assert_eq!(port_of(env["NUMBERING_LISTEN"]), self.ports["grpc"]);
        assert_eq!(
            port_of(env["NUMBERING_HEALTH_LISTEN"]),
            self.ports["health"]
        );
        assert_eq!(
            port_of(env["NUMBERING_METRICS_LISTEN"]),
            self.ports["metrics"]
        );
        let annotations = &self.deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(
            annotations["prometheus.io/port"].as_str().unwrap(),
            self.ports["metrics"].to_string()
        );
        let grace = Duration::from_secs(
            self.deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap(),
        );
        // Serving on, then calls in flight finishing, then the pool closing.
        let drain = humantime::parse_duration(env["NUMBERING_DRAIN_DELAY"]).unwrap()
            + humantime::parse_duration(env["NUMBERING_SHUTDOWN_GRACE"]).unwrap()
            + humantime::parse_duration(env["NUMBERING_DB_TIMEOUT"]).unwrap();
        assert!(drain < grace, "a drain of {drain:?} does not fit {grace:?}");

        command.args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
        ]);
        let mut running = start(command).await;
        let health = format!("http://{}", running.health_addr().await);
        // The probes are answered on a listener of their own, whatever the
        // clients hold of the gRPC port's connections.
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            let grpc = &self.container[probe]["grpc"];
            assert_eq!(grpc["port"].as_u64(), Some(u64::from(self.ports["health"])));
            let service = grpc["service"].as_str().unwrap_or("");
            let channel = Channel::from_shared(health.clone())
                .unwrap()
                .connect()
                .await
                .unwrap();
            wait_for_health(channel, service, ServingStatus::Serving).await;
        }
        running
    }
}

/// The YAML documents of a file of the manifests.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(DIR).join(file)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect()
}

/// The one document of `kind`.
fn only(documents: &[Value], kind: &str) -> Value {
    let mut of_kind = documents.iter().filter(|document| document["kind"] == kind);
    let found = of_kind.next().unwrap_or_else(|| panic!("no {kind}"));
    assert!(of_kind.next().is_none(), "more than one {kind}");
    found.clone()
}

/// The example Secrets: name, then key, then value.
fn secrets() -> HashMap<String, HashMap<String, String>> {
    documents("secrets.example.yaml")
        .iter()
        .map(|secret| {
            let data = secret["stringData"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap().to_owned()))
                .collect();
            (
                secret["metadata"]["name"].as_str().unwrap().to_owned(),
                data,
            )
        })
        .collect()
}
