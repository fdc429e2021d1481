//! The directory replicas share, in PostgreSQL: an ordered change log and the net state of
//! every entity it touched, written in one transaction; every replica follows the log.
//!
//! ```text
//! migrate ─▶ iotgate_migrations: each version applied once, under the advisory lock
//! load    ─▶ one REPEATABLE READ view: the last seq + every entity's net change
//! write   ─▶ BEGIN; lock and statement timeouts; pg_advisory_xact_lock ─▶ the rows after
//!            the writer's last seq (it catches up first) ─▶ the net changes of its batch
//!            (the state it leaves its entities in) as seq = last + 1, the same upserted
//!            into iotgate_entities, pg_notify('iotgate_changes', seq) ─▶ COMMIT
//! listen  ─▶ LISTEN iotgate_changes on a connection of its own: each notification's seq
//! since   ─▶ the rows after a seq, in order, a page of SINCE_PAGE at a time (a follower's
//!            catch-up); a log that ends before that seq is StoreError::Behind (restored)
//! import  ─▶ BEGIN; the advisory lock ─▶ the entities of the imported types as stored ─▶
//!            a put for each new or different one, a delete for each the import lacks,
//!            appended as one batch ─▶ COMMIT (`iotgate import --to`)
//! ```
//!
//! The advisory lock makes writers take turns, so sequence numbers are given in commit
//! order without gaps: a follower that has read up to N never misses a row below N. A row
//! holds whole entities (or removals), never a change relative to what a replica has, so
//! every replica (and every later start, from iotgate_entities) reaches the same state.
//! Every call is bounded in time: a dead connection fails it rather than hanging it.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::TryStreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::model::directory::change::Change;
use crate::model::directory::journal::Entry;

/// The channel a committed change is announced on (the payload is its seq).
const CHANNEL: &str = "iotgate_changes";
/// The advisory lock writers (and migrations) take turns on: "iotgate" in ASCII.
const LOCK: i64 = 0x0069_6f74_6761_7465;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a write (lock, catch-up rows, append, commit) or a catch-up read may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// The most change-log rows a catch-up reads at once (a replica far behind reads pages,
/// each bounded in time, rather than one answer that may outlast its bound).
pub(crate) const SINCE_PAGE: usize = 1000;
/// How long loading the whole directory may take.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Idle time after which TCP keepalives probe a connection, and how long sent data may go
/// unacknowledged: a dead peer (a failover, a cut link) ends the connection in seconds.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// The database schema, version by version; a version is never edited once released.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE iotgate_changes (
         seq bigint PRIMARY KEY,
         at timestamptz NOT NULL DEFAULT now(),
         changes jsonb NOT NULL
     );
     CREATE TABLE iotgate_entities (
         type text NOT NULL,
         id text NOT NULL,
         net jsonb NOT NULL,
         seq bigint NOT NULL,
         PRIMARY KEY (type, id)
     );",
)];

/// Why the database could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The database refused or the connection failed.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool.
    #[error("postgres: no connection: {0}")]
    Pool(String),
    /// A row iotgate did not write (or a newer iotgate did).
    #[error("postgres: {0}")]
    Data(String),
    /// The database did not answer in time.
    #[error("postgres: no answer within {0:?}")]
    Timeout(Duration),
    /// The change log ends before what this replica applied: the database was restored
    /// from a backup or replaced, and this replica's directory is not what it holds.
    #[error("postgres: the change log ends at seq {head}, before this replica's {applied}: the database was restored or replaced; restart this replica to load it")]
    Behind {
        /// The last seq of the log.
        head: u64,
        /// The last seq this replica applied.
        applied: u64,
    },
}

/// `work`, failed with [`StoreError::Timeout`] when it takes longer than `limit`.
async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(StoreError::Timeout(limit)))
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(e.to_string())
    }
}

/// What an import changed (or would change) in the shared directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Imported {
    /// Entities written (new or different).
    pub(crate) written: usize,
    /// Entities removed (of the imported types, not in the import).
    pub(crate) removed: usize,
    /// The batch's sequence number (`None`: nothing written).
    pub(crate) seq: Option<u64>,
}

/// An entity's net state, as a load reads it.
#[derive(Debug)]
pub(crate) enum Net<'a> {
    /// The whole entity (a put), as Cedar entity JSON.
    Entity(&'a str),
    /// Any other net change (a removal).
    Change(Change),
}

/// The shared database.
#[derive(Clone)]
pub(crate) struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the config may hold a password
        f.debug_struct("Postgres").finish_non_exhaustive()
    }
}

impl Postgres {
    /// A pool on `url` (nothing is connected yet).
    ///
    /// # Errors
    /// `url` is not a PostgreSQL URL.
    pub(crate) fn new(url: &str) -> Result<Postgres, StoreError> {
        let mut config: tokio_postgres::Config = url.trim().parse()?;
        config.connect_timeout(CONNECT_TIMEOUT);
        config.keepalives_idle(KEEPALIVE);
        config.tcp_user_timeout(KEEPALIVE);
        if config.get_application_name().is_none() {
            config.application_name("iotgate");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        Ok(Postgres { pool, config })
    }

    /// Creates or upgrades iotgate's tables.
    ///
    /// # Errors
    /// The database cannot be reached, refuses, or was migrated by a newer iotgate.
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        bounded(WRITE_TIMEOUT, self.migrate_now()).await
    }

    async fn migrate_now(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS iotgate_migrations (
                 version integer PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
        let done: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM iotgate_migrations",
                &[],
            )
            .await?
            .get(0);
        let latest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if done > latest {
            return Err(StoreError::Data(format!(
                "the database is at schema version {done}, newer than this iotgate's {latest}"
            )));
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > done) {
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO iotgate_migrations (version) VALUES ($1)",
                &[version],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The net change of every entity the log touched, each given to `each` as it is read
    /// (never all held at once), and the last sequence number, in one consistent view.
    ///
    /// # Errors
    /// The database cannot be reached, holds a row iotgate cannot read, or `each` refused
    /// a row (`each` may have been given some rows).
    pub(crate) async fn load(
        &self,
        each: impl FnMut(Net<'_>) -> Result<(), String> + Send,
    ) -> Result<u64, StoreError> {
        bounded(LOAD_TIMEOUT, self.load_now(each)).await
    }

    async fn load_now(
        &self,
        mut each: impl FnMut(Net<'_>) -> Result<(), String> + Send,
    ) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let seq = last_seq(&tx).await?;
        let rows = tx
            .query_raw(
                // a put as the entity itself: parsed once, by the directory's loader
                "SELECT coalesce(net->>'op' = 'put', false), \
                        CASE WHEN net->>'op' = 'put' THEN (net - 'op')::text ELSE net::text END \
                 FROM iotgate_entities",
                std::iter::empty::<i64>(),
            )
            .await?;
        let mut rows = std::pin::pin!(rows);
        while let Some(row) = rows.try_next().await? {
            let text: &str = row.get(1);
            let net = match row.get(0) {
                true => Net::Entity(text),
                false => Net::Change(
                    serde_json::from_str(text)
                        .map_err(|e| StoreError::Data(format!("an entity row: {e}")))?,
                ),
            };
            each(net).map_err(|e| StoreError::Data(format!("an entity row: {e}")))?;
        }
        tx.commit().await?;
        Ok(seq)
    }

    /// The change-log entries after `seq`, in order: at most [`SINCE_PAGE`] of them.
    ///
    /// # Errors
    /// The database cannot be reached, or holds a row iotgate cannot read.
    pub(crate) async fn since(&self, seq: u64) -> Result<Vec<Entry>, StoreError> {
        bounded(WRITE_TIMEOUT, async {
            let client = self.pool.get().await?;
            entries_since(&client, seq, Some(SINCE_PAGE as i64)).await
        })
        .await
    }

    /// The last sequence number of the log.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub(crate) async fn head(&self) -> Result<u64, StoreError> {
        bounded(WRITE_TIMEOUT, async {
            let client = self.pool.get().await?;
            last_seq(&client).await
        })
        .await
    }

    /// Writes one batch, in turn with every other writer: `prepare` is given the entries
    /// after `last` (what this writer has not applied yet) and the sequence number the batch
    /// gets, and says what to append: the net change of every entity the batch touches
    /// (`None`: nothing, the batch changes nothing). Its refusal rolls everything back.
    ///
    /// # Errors
    /// The database failed or did not answer in time. Nothing was written, unless the
    /// connection failed during the COMMIT itself: then the batch may be in the log, and
    /// every replica (this one too) applies it from there.
    pub(crate) async fn write<T, E>(
        &self,
        last: u64,
        prepare: impl FnOnce(Vec<Entry>, u64) -> Result<(T, Option<Vec<Change>>), E>,
    ) -> Result<Result<T, E>, StoreError> {
        bounded(WRITE_TIMEOUT, async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.batch_execute("SET LOCAL lock_timeout = '5s'; SET LOCAL statement_timeout = '10s'")
                .await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                .await?;
            let missed = entries_since(&tx, last, None).await?;
            let seq = missed.last().map_or(last, |e| e.seq) + 1;
            let (out, net) = match prepare(missed, seq) {
                Ok(prepared) => prepared,
                Err(refused) => return Ok(Err(refused)),
            };
            if let Some(net) = net {
                append_batch(&tx, seq, &net).await?;
            }
            tx.commit().await?;
            Ok(Ok(out))
        })
        .await
    }

    /// Makes the shared directory's entities of `types` what `entities` (puts) say, as one
    /// batch, in turn with every writer; with `dry_run`, only counts.
    ///
    /// # Errors
    /// The database failed, or holds a row iotgate cannot read (nothing written).
    pub(crate) async fn import(
        &self,
        types: &[String],
        entities: Vec<Change>,
        dry_run: bool,
    ) -> Result<Imported, StoreError> {
        bounded(LOAD_TIMEOUT, async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK])
                .await?;
            let rows = tx
                .query(
                    "SELECT net::text FROM iotgate_entities WHERE type = ANY($1)",
                    &[&types],
                )
                .await?;
            let mut stored = std::collections::HashMap::new();
            for row in &rows {
                let change: Change = serde_json::from_str(row.get(0))
                    .map_err(|e| StoreError::Data(format!("an entity row: {e}")))?;
                stored.insert(change.uid().clone(), change);
            }
            let mut batch: Vec<Change> = Vec::new();
            for entity in entities {
                if stored.remove(entity.uid()).as_ref() != Some(&entity) {
                    batch.push(entity);
                }
            }
            let written = batch.len();
            let mut gone: Vec<Change> = stored
                .into_values()
                .filter(|c| !matches!(c, Change::Delete { .. }))
                .map(|c| Change::Delete {
                    uid: c.uid().clone(),
                })
                .collect();
            gone.sort_by(|a, b| (&a.uid().ty, &a.uid().id).cmp(&(&b.uid().ty, &b.uid().id)));
            let removed = gone.len();
            batch.extend(gone);
            if dry_run || batch.is_empty() {
                return Ok(Imported {
                    written,
                    removed,
                    seq: None,
                });
            }
            let seq = last_seq(&tx).await? + 1;
            append_batch(&tx, seq, &batch).await?;
            tx.commit().await?;
            Ok(Imported {
                written,
                removed,
                seq: Some(seq),
            })
        })
        .await
    }

    /// A connection of its own that listens for committed changes: each notification's
    /// sequence number arrives on the receiver, which closes when the connection ends.
    ///
    /// # Errors
    /// The database cannot be reached.
    pub(crate) async fn listen(
        &self,
    ) -> Result<(tokio_postgres::Client, mpsc::UnboundedReceiver<u64>), StoreError> {
        let (client, mut connection) = self.config.connect(NoTls).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if let Ok(seq) = n.payload().parse() {
                            if tx.send(seq).is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "postgres listening connection ended");
                        return;
                    }
                }
            }
        });
        bounded(WRITE_TIMEOUT, async {
            Ok(client.batch_execute(&format!("LISTEN {CHANNEL}")).await?)
        })
        .await?;
        Ok((client, rx))
    }
}

/// A stored `bigint` sequence number (never negative: iotgate writes from 1).
fn seq_of(seq: i64) -> u64 {
    u64::try_from(seq).unwrap_or(0)
}

fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// The last sequence number of the log (0: empty).
async fn last_seq(client: &impl GenericClient) -> Result<u64, StoreError> {
    let seq: i64 = client
        .query_one("SELECT coalesce(max(seq), 0) FROM iotgate_changes", &[])
        .await?
        .get(0);
    Ok(seq_of(seq))
}

/// The entries after `seq`, in order; [`StoreError::Behind`] when the log ends before `seq`
/// (a restored database: what is written there next would reuse numbers already applied).
/// At most `limit` of them (`None`: all).
async fn entries_since(
    client: &impl GenericClient,
    seq: u64,
    limit: Option<i64>,
) -> Result<Vec<Entry>, StoreError> {
    let rows = client
        .query(
            "SELECT seq, extract(epoch FROM at)::bigint, changes::text FROM iotgate_changes \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&seq_param(seq), &limit],
        )
        .await?;
    if rows.is_empty() {
        let head = last_seq(client).await?;
        if head < seq {
            return Err(StoreError::Behind { head, applied: seq });
        }
    }
    rows.iter()
        .map(|row| {
            let seq = seq_of(row.get(0));
            let changes = serde_json::from_str(row.get(2))
                .map_err(|e| StoreError::Data(format!("change {seq}: {e}")))?;
            Ok(Entry {
                seq,
                at: seq_of(row.get(1)),
                changes,
            })
        })
        .collect()
}

/// Appends the net changes of a batch as `seq`, upserts them into the entities and
/// announces it (delivered to listeners when the transaction commits).
async fn append_batch(
    tx: &tokio_postgres::Transaction<'_>,
    seq: u64,
    net: &[Change],
) -> Result<(), StoreError> {
    let changes = json(&net)?;
    tx.execute(
        "INSERT INTO iotgate_changes (seq, changes) VALUES ($1, $2::text::jsonb)",
        &[&seq_param(seq), &changes],
    )
    .await?;
    let (mut types, mut ids, mut nets) = (Vec::new(), Vec::new(), Vec::new());
    for change in net {
        types.push(change.uid().ty.clone());
        ids.push(change.uid().id.clone());
        nets.push(json(change)?);
    }
    tx.execute(
        "INSERT INTO iotgate_entities (type, id, net, seq) \
         SELECT t, i, n::jsonb, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS u(t, i, n) \
         ON CONFLICT (type, id) DO UPDATE SET net = EXCLUDED.net, seq = EXCLUDED.seq",
        &[&types, &ids, &nets, &seq_param(seq)],
    )
    .await?;
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &seq.to_string()])
        .await?;
    Ok(())
}

/// A batch or a change as JSON text.
fn json(value: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Data(e.to_string()))
}
