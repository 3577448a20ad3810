//! `stolon-bench demo [--store etcdv3|kubernetes]`: a local HA cluster to try stolon-rs with
//! (2 sentinels, 3 keepers, 1 proxy on 127.0.0.1), brought up as the tests bring theirs up
//! (the test kit's `ClusterBuilder`), in a directory and on ports the instructions name.
//! It prints how to connect and runs until Ctrl-C, then stops everything it started and
//! keeps the logs and data.
//!
//! `STOLON_DEMO_DIR` (default /tmp/stolon-demo) is made anew at each run, and refused if
//! something else made it. The ports: `STOLON_DEMO_ETCD_PORT` (23790, and the next one for
//! its peers), `STOLON_DEMO_KUBE_PORT` (26443), `STOLON_DEMO_PROXY_PORT` (25432),
//! `STOLON_DEMO_PG_BASE_PORT` (25433 to 25435), `STOLON_DEMO_KEEPER_HTTP_BASE_PORT` (25533 to
//! 25535).

use std::path::{Path, PathBuf};
use std::time::Duration;
use stolon_testkit::{
    ClusterBuilder, FixedPorts, StoreBackend, TestCluster, KUBE_NAMESPACE, SU_PASSWORD, SU_USER,
};

/// Marks a directory this command made, so that a rerun may remove it.
const MARKER: &str = ".stolon-demo";
const KEEPERS: usize = 3;

pub(crate) fn demo(args: &[String]) {
    let store = match args {
        [] => StoreBackend::Etcd,
        [flag, store] if flag == "--store" => match store.as_str() {
            "etcdv3" => StoreBackend::Etcd,
            "kubernetes" => StoreBackend::Kubernetes,
            _ => usage(),
        },
        _ => usage(),
    };
    let dir = PathBuf::from(
        std::env::var("STOLON_DEMO_DIR").unwrap_or_else(|_| "/tmp/stolon-demo".into()),
    );
    if let Err(why) = fresh(&dir) {
        eprintln!("demo: {why}");
        std::process::exit(1);
    }
    let ports = FixedPorts {
        etcd: port("STOLON_DEMO_ETCD_PORT", 23790),
        kube: port("STOLON_DEMO_KUBE_PORT", 26443),
        proxy: port("STOLON_DEMO_PROXY_PORT", 25432),
        postgres: port("STOLON_DEMO_PG_BASE_PORT", 25433),
        keeper_http: port("STOLON_DEMO_KEEPER_HTTP_BASE_PORT", 25533),
    };
    tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(run(&dir, ports, store));
}

fn usage() -> ! {
    eprintln!("usage: stolon-bench demo [--store etcdv3|kubernetes]");
    std::process::exit(2);
}

fn port(variable: &str, default: u16) -> u16 {
    match std::env::var(variable) {
        Ok(text) => text.parse().unwrap_or_else(|_| {
            eprintln!("demo: {variable}={text} is not a port");
            std::process::exit(2);
        }),
        Err(_) => default,
    }
}

/// Empties `dir` when this command made it; refuses a directory someone else made.
fn fresh(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(format!(
                "{} exists and was not made by the demo; set STOLON_DEMO_DIR elsewhere",
                dir.display()
            ));
        }
        std::fs::remove_dir_all(dir).map_err(|e| format!("removing {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("making {}: {e}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "").map_err(|e| e.to_string())
}

async fn run(dir: &Path, ports: FixedPorts, store: StoreBackend) {
    println!(
        "demo: starting etcd{}, 2 sentinels, 3 keepers and a proxy in {}",
        store_name(store),
        dir.display()
    );
    let cluster = ClusterBuilder::new()
        .named("demo")
        .placed(dir, ports)
        .store_backend(store)
        .keepers(KEEPERS)
        .sentinels(2)
        .proxies(1)
        .start()
        .await;
    println!("demo: waiting for the primary to be reachable through the proxy...");
    cluster.wait_for_master(Duration::from_secs(120)).await;
    println!("{}", instructions(&cluster, ports));
    let _ = tokio::signal::ctrl_c().await;
    println!("\ndemo: stopping...");
    drop(cluster);
    println!("demo: stopped; logs and data are in {}", dir.display());
}

fn store_name(store: StoreBackend) -> &'static str {
    match store {
        StoreBackend::Etcd => "",
        StoreBackend::Kubernetes => " with a Kubernetes API server over it",
    }
}

/// How to use the cluster, with its own addresses and programs.
fn instructions(cluster: &TestCluster, ports: FixedPorts) -> String {
    let bin = stolon_testkit::bin_dir();
    let store_flags = match &cluster.kube {
        None => format!(
            "--store-backend etcdv3 --store-endpoints {}",
            cluster.etcd.endpoint
        ),
        Some(api) => format!(
            "--store-backend kubernetes --kube-resource-kind configmap --kubeconfig {} --kube-namespace {KUBE_NAMESPACE}",
            api.kubeconfig(stolon_testkit::ADMIN_USER, KUBE_NAMESPACE).display()
        ),
    };
    let kube_objects = cluster.kube.as_ref().map_or(String::new(), |api| {
        format!(
            "  the store's objects:\n    {} --kubeconfig {} get configmap,lease -n {KUBE_NAMESPACE}\n\n",
            stolon_testkit::kube_program("kubectl").display(),
            api.kubeconfig(stolon_testkit::ADMIN_USER, KUBE_NAMESPACE).display()
        )
    });
    let http: Vec<String> = (0..KEEPERS)
        .map(|i| (ports.keeper_http + i as u16).to_string())
        .collect();
    let pids: Vec<String> = cluster
        .keepers
        .iter()
        .map(|k| {
            let pid = k.process.as_ref().and_then(|p| p.pid()).unwrap_or_default();
            format!("{}={pid}", k.uid)
        })
        .collect();
    format!(
        "
stolon-rs demo cluster is up (2 sentinels, 3 keepers, 1 proxy on 127.0.0.1).

  connect through the proxy:
    psql \"postgres://{SU_USER}:{SU_PASSWORD}@127.0.0.1:{proxy}/postgres\"

  cluster status:
    {ctl} --cluster-name {name} {store_flags} status

{kube_objects}  what each keeper answers a load balancer (/primary, then /replica; also /health, /metrics):
    for p in {http}; do curl -s 127.0.0.1:$p/primary; curl -s 127.0.0.1:$p/replica; done

  logs: {root}/logs    keeper data: {root}/keeper0..2
  keeper processes: {pids}

Press Ctrl-C to stop everything.",
        proxy = ports.proxy,
        ctl = bin.join("stolonctl").display(),
        name = cluster.name,
        http = http.join(" "),
        root = cluster.root().display(),
        pids = pids.join(" "),
    )
}
