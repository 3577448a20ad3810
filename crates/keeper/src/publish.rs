//! What the keeper tells the sentinel: the keeper info its machine made, stored under a
//! lease by a task of its own, so that a store slow to answer holds no heartbeat back.

use crate::Keeper;
use stolon_engine::keeper::machine::Publication;
use stolon_store::InfoKind;

impl Keeper {
    /// Stores the publication in the background and gives its answer to the machine.
    pub(crate) fn send(&self, publication: Publication) {
        let store = self.store.clone();
        let machine = self.machine.clone();
        let fence_lifted = self.fence_lifted.clone();
        let uid = self.uid.clone();
        tokio::spawn(async move {
            let stored = stolon_store::publish_info(
                store.as_ref(),
                InfoKind::Keeper,
                uid.as_str(),
                &publication.info,
                publication.ttl,
            )
            .await;
            if let Err(e) = &stored {
                tracing::warn!(error = %e, "cannot publish keeper info");
            }
            let now = machine.now();
            let lifted = machine
                .lock()
                .published(now, publication.sent, stored.is_ok());
            if let Some(note) = lifted {
                tracing::info!("{note}");
                fence_lifted.notify_one();
            }
        });
    }
}
