//! Following the shared directory (`[directory] store = "postgres"`): every replica applies
//! the change log in order, within moments of each commit.
//!
//! ```text
//! start ─▶ migrate, load the database's directory (before any port is bound), deliver the
//!          outbox; the database down: serve state_dir's cache with the outbox over it
//!          (degraded), or fail when there is none
//! follow: LISTEN ─▶ catch up (at once, then) ─┬─ on a notification, seq > applied
//!                                             ├─ every POLL (a missed notification)
//!                                             └─▶ Gateway::catch_up: the rows after the
//!                                                 last applied, in order; connected while
//!                                                 catch-ups succeed ─▶ deliver_queued
//!         the connection ends ─▶ not connected; retry after a backoff (100 ms … 2 s)
//! keep_cache: at once, then every CACHE_EVERY (ten times the last write's time, at most
//!            CACHE_AT_MOST_EVERY) ─▶ Gateway::write_cache (when applied moved on)
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::config::problem::{Problem, Problems};
use crate::proxy::Gateway;
use crate::store::postgres::StoreError;
use crate::store::Replica;

/// How often a follower asks the database even without a notification.
const POLL: Duration = Duration::from_secs(5);
/// How often the cache of the shared directory is written (when it changed), at most.
const CACHE_EVERY: Duration = Duration::from_secs(10);
/// The longest wait between two writes of the cache, however long one takes.
const CACHE_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// The longest wait between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Migrates the shared database and loads its directory into the serving snapshot, then
/// delivers what the outbox kept; with the database unreachable, serves the cache.
///
/// # Errors
/// The database cannot be reached or refuses, and there is no cache to start from (told
/// against the config file).
pub(crate) async fn start(gateway: &Gateway, config: &std::path::Path) -> Result<(), Problems> {
    let Some(replica) = gateway.replica() else {
        return Ok(());
    };
    let loaded = match replica.store.migrate().await {
        Ok(()) => gateway.catch_up().await,
        Err(e) => Err(e),
    };
    if let Err(e) = loaded {
        let seq = gateway.start_from_cache().await.map_err(|cache| {
            let mut problems =
                Problems::from(Problem::in_file(config, format!("[directory] store: {e}")));
            problems.extend(cache);
            problems
        })?;
        tracing::warn!(seq, error = %e, "shared directory unreachable; serving the local cache (degraded)");
        return Ok(());
    }
    tracing::info!(seq = replica.applied(), "shared directory loaded");
    if let Err(e) = gateway.deliver_queued().await {
        tracing::warn!(error = %e, "queued effects not delivered yet; retrying");
    }
    Ok(())
}

/// Writes the cache of the shared directory every [`CACHE_EVERY`] (when it changed), or
/// less often when writing it takes long (a large directory: at most a tenth of the time
/// goes to it), until the task is dropped.
pub(crate) async fn keep_cache(gateway: Arc<Gateway>) {
    let mut wait = Duration::ZERO; // the first at once: a crash soon after start finds it
    loop {
        tokio::time::sleep(wait).await;
        wait = match gateway.write_cache().await {
            Ok(took) => (took * 10).clamp(CACHE_EVERY, CACHE_AT_MOST_EVERY),
            Err(e) => {
                tracing::warn!(error = %e, "shared directory cache not written; retrying");
                CACHE_EVERY
            }
        };
    }
}

/// Follows the change log until the task is dropped.
pub(crate) async fn follow(gateway: Arc<Gateway>, replica: Arc<Replica>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match replica.store.listen().await {
            Ok((client, notified)) => {
                backoff = Duration::from_millis(100);
                listening(&gateway, &replica, &client, notified).await;
            }
            Err(e) => tracing::warn!(error = %e, "shared directory unreachable; retrying"),
        }
        replica.set_connected(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Applies the change log while the listening connection lasts: after a catch-up (only then
/// is the replica connected), on every notification past what it applied, and on every
/// poll whatever the notifications (a poll also notes the database's head, for the lag).
async fn listening(
    gateway: &Arc<Gateway>,
    replica: &Replica,
    client: &tokio_postgres::Client,
    mut notified: tokio::sync::mpsc::UnboundedReceiver<u64>,
) {
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            seq = notified.recv() => match seq {
                Some(seq) => {
                    replica.note_head(seq);
                    if seq > replica.applied() {
                        catch_up(gateway, replica).await;
                    }
                }
                None => return,
            },
            _ = poll.tick() => {
                if client.is_closed() {
                    return;
                }
                match replica.store.head().await {
                    Ok(head) => replica.note_head(head),
                    Err(e) => tracing::warn!(error = %e, "shared directory unreadable"),
                }
                catch_up(gateway, replica).await;
            }
        }
    }
}

/// A catch-up, then the outbox delivered (in a task of its own: it waits for the writer
/// lock, which a mutating request holds across its forward, and the follower must not);
/// the replica counts as connected while catch-ups succeed.
async fn catch_up(gateway: &Arc<Gateway>, replica: &Replica) {
    match gateway.catch_up().await {
        Ok(()) => {
            replica.set_connected(true);
            if replica.local.queued_count() > 0 && replica.start_delivering() {
                let gateway = gateway.clone();
                tokio::spawn(async move {
                    if let Err(e) = gateway.deliver_queued().await {
                        tracing::warn!(error = %e, "queued effects not delivered yet; retrying");
                    }
                    if let Some(replica) = gateway.replica() {
                        replica.done_delivering();
                    }
                });
            }
        }
        Err(e @ StoreError::Behind { .. }) => {
            replica.set_connected(false);
            tracing::error!(error = %e, "shared directory ahead of the database; not following it");
        }
        Err(e) => {
            replica.set_connected(false);
            tracing::warn!(error = %e, "shared directory catch-up failed; retrying");
        }
    }
}
