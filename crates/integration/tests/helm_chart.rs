//! The Helm chart `deploy/helm/stolon`: lint, what it renders for the community chart's
//! install command, every object accepted by a real kube-apiserver, values that cannot work
//! refused at template time, and install, upgrade and uninstall with the real helm.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use stolon_store_k8s::{KubeOptions, KubeStore};
use stolon_testkit::{kube_program, EtcdServer, KubeApiServer, ADMIN_USER};

/// The install command users of the community chart run (Helm 3 spelling). Its
/// placeholder class `defaultScName` can name no StorageClass (they are lowercase), so the
/// chart refuses it (see `values_that_make_no_sense_fail_at_template_time`); the lowercase
/// spelling stands in for it.
const COMMUNITY_INSTALL: [&str; 6] = [
    "--set",
    "store.backend=kubernetes",
    "--set",
    "persistence.enabled=true",
    "--set",
    "persistence.storageClassName=defaultscname",
];
const NAMESPACE: &str = "test";

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/helm/stolon")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn helm(args: &[&str], kubeconfig: Option<&Path>) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(kube_program("helm"));
    // helm keeps its caches and repositories under these: none of the user's.
    for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
        cmd.env(var, home.path());
    }
    match kubeconfig {
        Some(path) => cmd.env("KUBECONFIG", path),
        None => cmd.env("KUBECONFIG", home.path().join("none")),
    };
    cmd.args(args).output().expect("running helm")
}

/// `helm template stolon <chart> -n test` with `extra` arguments; the rendered text or
/// helm's error.
fn template(extra: &[&str], kubeconfig: Option<&Path>) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "stolon",
        chart.to_str().unwrap(),
        "--namespace",
        NAMESPACE,
    ];
    args.extend_from_slice(extra);
    let out = helm(&args, kubeconfig);
    if out.status.success() {
        Ok(text(&out.stdout))
    } else {
        Err(text(&out.stderr))
    }
}

struct Api {
    api: KubeApiServer,
    _etcd: EtcdServer,
    dir: tempfile::TempDir,
}

impl Api {
    fn start() -> Api {
        let dir = tempfile::tempdir().unwrap();
        let etcd = EtcdServer::start(dir.path(), dir.path());
        let api = KubeApiServer::start(&etcd, dir.path(), dir.path());
        let out = api.kubectl("default", &["create", "namespace", NAMESPACE]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        Api {
            api,
            _etcd: etcd,
            dir,
        }
    }

    fn admin(&self) -> PathBuf {
        self.api.kubeconfig(ADMIN_USER, NAMESPACE)
    }

    /// Every object of `manifest` through the API server's admission and validation,
    /// without storing them (`kubectl apply --dry-run=server`), as the server returns them.
    fn dry_run(&self, manifest: &str) -> Vec<Value> {
        let path = self.dir.path().join("rendered.yaml");
        std::fs::write(&path, manifest).unwrap();
        let out = self.api.kubectl(
            NAMESPACE,
            &[
                "apply",
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                path.to_str().unwrap(),
            ],
        );
        assert!(
            out.status.success(),
            "the API server refused the chart:\n{}",
            text(&out.stderr)
        );
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        list["items"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| vec![list])
    }

    /// The names of the objects of `kind` (kubectl's resource names) in the namespace that
    /// carry the release's label.
    fn release_objects(&self, kinds: &str) -> Vec<String> {
        let out = self.api.kubectl(
            NAMESPACE,
            &[
                "get",
                kinds,
                "-l",
                "app.kubernetes.io/instance=stolon",
                "-o",
                "name",
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mut names: Vec<String> = text(&out.stdout).lines().map(str::to_string).collect();
        names.sort();
        names
    }
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {}", kinds(objects)))
}

fn kinds(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
        .collect::<Vec<_>>()
        .join(", ")
}

fn container(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(workload: &'a Value, name: &str) -> Option<&'a Value> {
    container(workload)["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
}

fn env_value<'a>(workload: &'a Value, name: &str) -> &'a str {
    env(workload, name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no env {name} in {}", container(workload)))
}

/// The install command of the community chart, against a 1.20 API server: every object
/// it renders is accepted, with the names, sizes, probes and wiring the issue lists.
#[test]
fn the_community_install_renders_objects_a_real_api_server_accepts() {
    let api = Api::start();
    let admin = api.admin();
    let mut args = COMMUNITY_INSTALL.to_vec();
    // The capabilities of the server, not helm's built-in list.
    args.push("--validate");
    let rendered = template(&args, Some(&admin)).unwrap();
    let objects = api.dry_run(&rendered);

    let keepers = object(&objects, "StatefulSet", "stolon-stolon-keeper");
    assert_eq!(keepers["spec"]["replicas"], 3);
    assert_eq!(keepers["spec"]["podManagementPolicy"], "Parallel");
    assert_eq!(keepers["spec"]["serviceName"], "stolon-stolon-keeper");
    assert_eq!(env_value(keepers, "STKEEPER_UID_PREFIX"), "keeper");
    assert_eq!(env_value(keepers, "STKEEPER_CLUSTER_NAME"), "stolon-stolon");
    assert_eq!(env_value(keepers, "STKEEPER_STORE_BACKEND"), "kubernetes");
    assert_eq!(
        env_value(keepers, "STKEEPER_KUBE_RESOURCE_KIND"),
        "configmap"
    );
    assert_eq!(
        env_value(keepers, "STKEEPER_PG_SU_PASSWORDFILE"),
        "/etc/secrets/stolon/pg_su_password"
    );
    assert_eq!(
        env(keepers, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    let claim = &keepers["spec"]["volumeClaimTemplates"][0];
    assert_eq!(claim["metadata"]["name"], "stolon-data");
    assert_eq!(claim["spec"]["storageClassName"], "defaultscname");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "10Gi");
    let keeper = container(keepers);
    assert_eq!(keeper["readinessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(keeper["livenessProbe"]["tcpSocket"]["port"], "metrics");
    assert_eq!(keeper["resources"]["requests"]["memory"], "512Mi");
    let pod = &keepers["spec"]["template"];
    // The image's entrypoint (tini) stays process 1 and reaps the postmaster pg_ctl orphans.
    assert_eq!(keeper["args"][0], "stolon-keeper");
    assert!(keeper["command"].is_null());
    assert_eq!(pod["spec"]["securityContext"]["runAsUser"], 999);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["labels"]["component"], "stolon-keeper");
    assert_eq!(pod["metadata"]["labels"]["stolon-cluster"], "stolon-stolon");
    let spread = &pod["spec"]["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(
        spread["labelSelector"]["matchLabels"]["component"],
        "stolon-keeper"
    );

    for component in ["sentinel", "proxy"] {
        let deployment = object(
            &objects,
            "Deployment",
            &format!("stolon-stolon-{component}"),
        );
        assert_eq!(deployment["spec"]["replicas"], 2, "{component}");
        assert_eq!(
            deployment["spec"]["selector"]["matchLabels"]["component"],
            format!("stolon-{component}")
        );
    }
    // The sentinels write the initial spec into an empty store themselves, so that the
    // keepers get ready before the post-install Job (which `helm install --wait` runs last).
    let sentinels = object(&objects, "Deployment", "stolon-stolon-sentinel");
    assert_eq!(
        env_value(sentinels, "STSENTINEL_INITIAL_CLUSTER_SPEC"),
        "/etc/stolon/cluster-spec.json"
    );
    let initial = object(&objects, "ConfigMap", "stolon-stolon-spec");
    let spec: Value =
        serde_json::from_str(initial["data"]["cluster-spec.json"].as_str().unwrap()).unwrap();
    assert_eq!(spec["initMode"], "new");
    let proxies = object(&objects, "Deployment", "stolon-stolon-proxy");
    assert_eq!(env_value(proxies, "STPROXY_LISTEN_ADDRESS"), "0.0.0.0");
    assert_eq!(
        container(proxies)["readinessProbe"]["tcpSocket"]["port"],
        "postgres"
    );

    let service = object(&objects, "Service", "stolon-stolon-proxy");
    assert_eq!(service["spec"]["ports"][0]["port"], 5432);
    assert_eq!(service["spec"]["selector"]["component"], "stolon-proxy");
    let read_only = object(&objects, "Service", "stolon-stolon-proxy-ro");
    assert_eq!(read_only["spec"]["ports"][0]["targetPort"], "postgres-ro");
    assert_eq!(
        object(&objects, "Service", "stolon-stolon-keeper")["spec"]["clusterIP"],
        "None"
    );

    let secret = object(&objects, "Secret", "stolon-stolon");
    for key in ["pg_su_password", "pg_repl_password"] {
        let password = decode_base64(secret["data"][key].as_str().unwrap());
        assert_eq!(password.len(), 40, "{key}");
    }
    object(&objects, "ServiceAccount", "stolon-stolon");
    object(&objects, "Role", "stolon-stolon");
    object(&objects, "RoleBinding", "stolon-stolon");

    // The 1.20 server has only policy/v1beta1 PodDisruptionBudgets.
    for component in ["keeper", "sentinel", "proxy"] {
        let pdb = object(
            &objects,
            "PodDisruptionBudget",
            &format!("stolon-stolon-{component}"),
        );
        assert_eq!(pdb["apiVersion"], "policy/v1beta1");
    }

    let job = object(&objects, "Job", "stolon-stolon-init");
    assert_eq!(
        job["metadata"]["annotations"]["helm.sh/hook"],
        "post-install"
    );
    let command = container(job)["args"].as_array().unwrap();
    assert_eq!(command[..3], ["stolonctl", "init", "--keep-existing"]);
    let job_spec: Value = serde_json::from_str(command[3].as_str().unwrap()).unwrap();
    assert_eq!(job_spec, spec);
    assert_eq!(env_value(job, "STOLONCTL_CLUSTER_NAME"), "stolon-stolon");
}

/// Without a server, helm renders for a current cluster: policy/v1.
#[test]
fn current_clusters_get_policy_v1_disruption_budgets() {
    let rendered = template(&COMMUNITY_INSTALL, None).unwrap();
    assert!(rendered.contains("apiVersion: policy/v1\n"), "{rendered}");
    assert!(!rendered.contains("policy/v1beta1"));
}

#[test]
fn the_chart_lints_clean() {
    let chart = chart();
    let out = helm(&["lint", "--strict", chart.to_str().unwrap()], None);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The choices a user makes with values, as rendered.
#[test]
fn values_shape_what_is_rendered() {
    // Persistence off: an emptyDir, no claim.
    let rendered = template(&[], None).unwrap();
    assert!(rendered.contains("emptyDir: {}"));
    assert!(!rendered.contains("volumeClaimTemplates"));
    assert!(rendered.contains("WARNING") || !rendered.contains("NOTES"));

    // storageClassName "-" asks for no class at all; unset leaves the cluster's default.
    let none = template(
        &[
            "--set",
            "persistence.enabled=true",
            "--set",
            "persistence.storageClassName=-",
        ],
        None,
    )
    .unwrap();
    assert!(none.contains("storageClassName: \"\""), "{none}");
    let default = template(&["--set", "persistence.enabled=true"], None).unwrap();
    assert!(default.contains("volumeClaimTemplates"));
    assert!(!default.contains("storageClassName"));

    // etcd: endpoints instead of the ConfigMap, and no Kubernetes store rights in the Role.
    let etcd = template(
        &[
            "--set",
            "store.backend=etcdv3",
            "--set",
            "store.endpoints=http://etcd-0.etcd:2379",
        ],
        None,
    )
    .unwrap();
    assert!(etcd.contains("STKEEPER_STORE_ENDPOINTS"));
    assert!(etcd.contains("\"http://etcd-0.etcd:2379\""));
    assert!(!etcd.contains("configmaps"));
    assert!(!etcd.contains("kind: Role"));
    assert!(!etcd.contains("KUBE_RESOURCE_KIND"));

    // A Secret of the user's: none rendered, theirs mounted.
    let theirs = template(&["--set", "existingSecret=my-pg-secret"], None).unwrap();
    assert!(!theirs.contains("kind: Secret"));
    assert!(theirs.contains("secretName: my-pg-secret"));

    // Given passwords are used as given.
    let given = template(&["--set", "pgSuperuserPassword=s3cret"], None).unwrap();
    assert!(given.contains(&format!("pg_su_password: \"{}\"", encode_base64("s3cret"))));

    // pgParameters and slow_queries reach the initial spec; client_ssl mounts the certificate.
    let tuned = template(
        &[
            "--set",
            "pgParameters.max_connections=200",
            "--set",
            "slow_queries.enabled=true",
            "--set",
            "keeper.client_ssl.enabled=true",
        ],
        None,
    )
    .unwrap();
    assert!(
        tuned.contains(r#"\"max_connections\":\"200\""#)
            || tuned.contains(r#"\"max_connections\":200"#),
        "{tuned}"
    );
    assert!(
        tuned.contains(r#"\"log_min_duration_statement\":\"300\""#),
        "{tuned}"
    );
    assert!(tuned.contains(r#"\"ssl\":\"on\""#), "{tuned}");
    assert!(tuned.contains("secretName: pg-cert-secret"));

    // One replica: no disruption budget, which would block every node drain.
    let single = template(&["--set", "sentinel.replicas=1"], None).unwrap();
    assert!(budget(&single, "sentinel").is_none());
    assert_eq!(single.matches("kind: PodDisruptionBudget").count(), 2);

    // Each budget takes the one bound it is given, and a default when given none.
    let budgets = template(
        &[
            "--set",
            "keeper.podDisruptionBudget.minAvailable=2",
            "--set",
            "sentinel.podDisruptionBudget.maxUnavailable=1",
        ],
        None,
    )
    .unwrap();
    let budget = |component: &str| budget(&budgets, component).unwrap();
    assert!(budget("keeper").contains("minAvailable: 2"));
    assert!(!budget("keeper").contains("maxUnavailable"));
    assert!(budget("sentinel").contains("maxUnavailable: 1"));
    assert!(!budget("sentinel").contains("minAvailable"));
    assert!(budget("proxy").contains("minAvailable: 1"));
}

/// The rendered PodDisruptionBudget of a component, if there is one.
fn budget<'a>(rendered: &'a str, component: &str) -> Option<&'a str> {
    let name = format!("name: stolon-stolon-{component}\n");
    rendered
        .split("\n---")
        .find(|doc| doc.contains("kind: PodDisruptionBudget") && doc.contains(&name))
}

/// Values that cannot work fail the render, saying which value and why.
#[test]
fn values_that_make_no_sense_fail_at_template_time() {
    for (set, needle) in [
        ("keeper.replicas=0", "keeper.replicas must be at least 1"),
        ("proxy.replicas=0", "proxy.replicas must be at least 1"),
        (
            "store.backend=consul",
            "store.backend \"consul\" is not supported",
        ),
        (
            "store.backend=etcdv3",
            "store.backend etcdv3 needs store.endpoints",
        ),
        ("store.kubeResourceKind=secret", "only configmap"),
        ("clusterName=Bad_Name", "clusterName \"Bad_Name\""),
        ("keeper.uid_prefix=Keeper-", "keeper.uid_prefix"),
        (
            "persistence.enabled=true,persistence.storageClassName=defaultScName",
            "\"defaultScName\" cannot name a StorageClass",
        ),
        (
            "sentinel.podDisruptionBudget.maxUnavailable=1,sentinel.podDisruptionBudget.minAvailable=1",
            "give minAvailable or maxUnavailable, not both",
        ),
    ] {
        let err = template(&["--set", set], None).expect_err(set);
        assert!(err.contains(needle), "{set}: {err}");
    }
}

/// helm install into the real API server, the init Job's own command run with the chart's
/// Role and nothing more, an upgrade that keeps the generated passwords, and an uninstall
/// that leaves none of the chart's objects behind.
#[tokio::test(flavor = "multi_thread")]
async fn install_upgrade_and_uninstall_with_helm() {
    let api = Api::start();
    let admin = api.admin();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    // Hooks are Jobs, and this API server runs no controller to complete them: the test
    // runs the Job's command itself below.
    // `helm install|upgrade` of the community command, hooks left out.
    let release = |verb: &str| {
        let mut args = vec![
            verb,
            "stolon",
            chart,
            "--namespace",
            NAMESPACE,
            "--no-hooks",
        ];
        args.extend_from_slice(&COMMUNITY_INSTALL);
        helm(&args, Some(&admin))
    };
    let out = release("install");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let notes = text(&out.stdout);
    assert!(
        notes.contains("stolon-stolon-proxy.test.svc.cluster.local:5432"),
        "{notes}"
    );
    assert!(
        notes.contains("kubectl delete pod -n test stolon-stolon-keeper-"),
        "{notes}"
    );

    let expected = [
        "configmap/stolon-stolon-spec",
        "deployment.apps/stolon-stolon-proxy",
        "deployment.apps/stolon-stolon-sentinel",
        "poddisruptionbudget.policy/stolon-stolon-keeper",
        "poddisruptionbudget.policy/stolon-stolon-proxy",
        "poddisruptionbudget.policy/stolon-stolon-sentinel",
        "role.rbac.authorization.k8s.io/stolon-stolon",
        "rolebinding.rbac.authorization.k8s.io/stolon-stolon",
        "secret/stolon-stolon",
        "service/stolon-stolon-keeper",
        "service/stolon-stolon-proxy",
        "service/stolon-stolon-proxy-ro",
        "serviceaccount/stolon-stolon",
        "statefulset.apps/stolon-stolon-keeper",
    ];
    const KINDS: &str =
        "configmaps,deployments,statefulsets,services,secrets,serviceaccounts,roles,rolebindings,poddisruptionbudgets,jobs";
    assert_eq!(api.release_objects(KINDS), expected);

    // The components' user gets exactly the chart's Role (bound the way the chart binds its
    // service account), and the store works with it: the whole conformance suite, and the
    // init Job's command, which writes the cluster once and then leaves it alone.
    api.api.apply(
        NAMESPACE,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: stolon-user\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: stolon-stolon\nsubjects:\n- kind: User\n  name: stolon\n  apiGroup: rbac.authorization.k8s.io\n",
    );
    let options = KubeOptions {
        kubeconfig: Some(api.api.kubeconfig("stolon", NAMESPACE)),
        timeout: std::time::Duration::from_secs(5),
        ..Default::default()
    };
    let a = KubeStore::connect("rbac", &options).await.unwrap();
    let b = KubeStore::connect("rbac", &options).await.unwrap();
    stolon_store::conformance::run_all(&a, &b).await;

    let rendered = template(&COMMUNITY_INSTALL, None).unwrap();
    let job = rendered
        .split("\n---")
        .find(|doc| doc.contains("kind: Job"))
        .unwrap();
    let init = run_init_job(job, &api.api.kubeconfig("stolon", NAMESPACE));
    assert!(init.status.success(), "{}", text(&init.stderr));
    assert!(text(&init.stdout).contains("cluster initialized"));
    let first = cluster_data(&api);
    assert!(first.contains("\"initMode\":\"new\""), "{first}");
    let again = run_init_job(job, &api.api.kubeconfig("stolon", NAMESPACE));
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("left as it is"));
    assert_eq!(cluster_data(&api), first);

    // An upgrade renders new random passwords unless it reads the Secret it made.
    let secret = || {
        let out = api.api.kubectl(
            NAMESPACE,
            &["get", "secret", "stolon-stolon", "-o", "jsonpath={.data}"],
        );
        text(&out.stdout)
    };
    let before = secret();
    let out = release("upgrade");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(secret(), before);

    let out = helm(
        &["uninstall", "stolon", "--namespace", NAMESPACE],
        Some(&admin),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(api.release_objects(KINDS), Vec::<String>::new());
}

/// Runs the rendered Job's container command (`stolonctl init ...`) with its environment,
/// as `kubeconfig`'s user.
fn run_init_job(job: &str, kubeconfig: &Path) -> Output {
    let spec = job
        .lines()
        .find_map(|line| line.trim().strip_prefix("args: "))
        .expect("the Job's command");
    let command: Vec<String> = serde_json::from_str(spec).expect("the command as a JSON list");
    let mut cmd = Command::new(stolon_testkit::bin_dir().join(&command[0]));
    cmd.args(&command[1..])
        .env("KUBECONFIG", kubeconfig)
        .env("STOLONCTL_CLUSTER_NAME", "stolon-stolon")
        .env("STOLONCTL_STORE_BACKEND", "kubernetes")
        .env("STOLONCTL_KUBE_RESOURCE_KIND", "configmap");
    cmd.output().expect("running stolonctl")
}

fn cluster_data(api: &Api) -> String {
    let out = api.api.kubectl(
        NAMESPACE,
        &[
            "get",
            "configmap",
            "stolon-cluster-stolon-stolon",
            "-o",
            "jsonpath={.metadata.annotations.stolon-clusterdata}",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn decode_base64(encoded: &str) -> Vec<u8> {
    base64(&["-d"], encoded)
}

fn encode_base64(plain: &str) -> String {
    text(&base64(&["-w0"], plain))
}

/// coreutils' base64 with `args` over `input`.
fn base64(args: &[&str], input: &str) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("base64")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("running base64");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap().stdout
}
