//! Where the API server is, who we are to it, and which namespace holds the cluster: as
//! kubectl and Stolon decide it.

use kube::config::{KubeConfigOptions, Kubeconfig};
use std::path::PathBuf;
use std::time::Duration;
use stolon_store::StoreError;

/// How to reach the API server. Without a kubeconfig file named here: `$KUBECONFIG` or
/// `~/.kube/config` if there is one, otherwise the pod's service account
/// (`KUBERNETES_SERVICE_HOST`/`_PORT`, its token and CA).
#[derive(Debug, Clone, Default)]
pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use instead of its current one.
    pub context: Option<String>,
    /// The namespace of the cluster's objects; otherwise `$POD_NAMESPACE`, the service
    /// account's namespace or the kubeconfig context's, or `default`.
    pub namespace: Option<String>,
    /// The pod this process runs in (`$POD_NAME`): the infos it publishes belong to it.
    pub pod_name: Option<String>,
    /// Bounds every request.
    pub timeout: Duration,
}

impl KubeOptions {
    /// The options a component running in a pod takes from its environment
    /// (`POD_NAME`, `POD_NAMESPACE`, set through the downward API).
    pub fn from_env(timeout: Duration) -> KubeOptions {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        KubeOptions {
            namespace: var("POD_NAMESPACE"),
            pod_name: var("POD_NAME"),
            timeout,
            ..Default::default()
        }
    }
}

pub(crate) async fn connect(options: &KubeOptions) -> Result<(kube::Client, String), StoreError> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        ..Default::default()
    };
    let config = match &options.kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Refused(format!("reading the kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(file, &kube_options)
                .await
                .map_err(|e| StoreError::Refused(format!("kubeconfig {}: {e}", path.display())))?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&kube_options)
            .await
            .map_err(|e| StoreError::Refused(format!("kubeconfig: {e}")))?,
        None => kube::Config::infer().await.map_err(|e| {
            StoreError::Refused(format!(
                "no kubeconfig ($KUBECONFIG, ~/.kube/config) and not in a pod: {e}"
            ))
        })?,
    };
    let namespace = options
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let mut config = config;
    config.connect_timeout = Some(options.timeout);
    let client = kube::Client::try_from(config)
        .map_err(|e| StoreError::Refused(format!("the Kubernetes client configuration: {e}")))?;
    Ok((client, namespace))
}
