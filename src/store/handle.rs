//! [`StoreHandle`]: the one way async code reaches the store.
//!
//! SQLite calls block, and the store has exactly one writer (see the module docs of
//! [`crate::store`]). So the writing connection lives on a thread of its own that runs one job at
//! a time, in the order they were sent, and a small pool of read-only connections serves readers
//! beside it (WAL lets them read while the writer writes). Callers hand a closure and await its
//! result; nobody holds a lock across an `.await`, and nobody needs to know about threads.
//!
//! What the handle guarantees:
//! - **A write is never cut in half.** A job, once sent, runs to its end even if the caller stops
//!   waiting (a loop cancelled at shutdown): each job is whole transactions, as before.
//! - **Panics are the caller's.** A job that panics has its panic re-raised in the caller; the
//!   writer thread lives on (any open transaction was rolled back when it unwound).
//! - **Closing waits for the last write.** [`StoreHandle::close`] stops taking jobs, lets the
//!   ones already sent finish, and returns once the writer connection and its lock file are
//!   released, so that whatever opens the store next (a restarted daemon, a command) finds it
//!   free.
//! - **Idle moments copy the log back.** When the writer has had nothing to do for a moment,
//!   it copies the write-ahead log into the database file, so that closing has little left to
//!   copy.
//!
//! This is also the seam for other storage: callers depend on the handle and on
//! [`StoreError`], not on SQLite.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::{Store, StoreError};

/// How long the writer waits with nothing to do before it copies the write-ahead log back into
/// the database file. Waiting on the network (the next page of a source or a peer) is what
/// leaves it idle, so the copy is done then rather than all at once when the store closes
/// (100 ms for 100,000 Kinto records at the end of a `tandem sync`); a job sent meanwhile
/// waits for at most the copy of what the jobs since the last idle moment wrote.
const IDLE_CHECKPOINT: Duration = Duration::from_millis(25);

/// Read-only connections opened beside the writer: enough for the HTTP handlers that serve
/// pages and documents at once, few enough that idle ones cost little.
pub const READERS: usize = 4;

type Job = Box<dyn FnOnce(&mut Store) + Send>;
type Outcome<T> = std::thread::Result<T>;

/// An async handle on the store: one writer thread, a pool of readers. Cheap to clone; every
/// clone reaches the same store.
#[derive(Clone)]
pub struct StoreHandle {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` once closed.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    readers: Mutex<Vec<Store>>,
    /// One permit per connection in `readers`.
    free_readers: Arc<Semaphore>,
}

impl StoreHandle {
    /// Takes over `writer` (a store opened with [`Store::open_writer`]) and opens `readers`
    /// read-only connections beside it.
    pub fn new(writer: Store, readers: usize) -> Result<StoreHandle, StoreError> {
        let data_dir = writer.path().parent().unwrap_or(writer.path()).to_owned();
        let pool = (0..readers.max(1))
            .map(|_| {
                // What the writer opens, the readers read: they share its keys.
                Store::open_read_only(&data_dir).map(|mut reader| {
                    reader.keys = writer.keys.clone();
                    reader
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("tandem-store".into())
            .spawn(move || {
                let mut store = writer;
                // Whether jobs ran since the log was last copied back.
                let mut written = false;
                loop {
                    let next = if written {
                        rx.recv_timeout(IDLE_CHECKPOINT)
                    } else {
                        rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
                    };
                    match next {
                        Ok(job) => {
                            job(&mut store);
                            written = true;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = store.checkpoint_passive() {
                                tracing::debug!(error = %e, "copying the log back while idle");
                            }
                            written = false;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                // Closed: the database file is left whole on its own. Read-only connections
                // cannot do this when they close last, and copies of the file taken after a
                // clean stop must hold everything.
                if let Err(e) = store.checkpoint() {
                    tracing::warn!(error = %e, "closing the store: the log stays beside the database file");
                }
            })
            .map_err(|source| StoreError::NotWritable {
                dir: data_dir.clone(),
                source,
            })?;
        Ok(StoreHandle {
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(thread)),
                free_readers: Arc::new(Semaphore::new(pool.len())),
                readers: Mutex::new(pool),
            }),
        })
    }

    /// Runs `f` on the writer, after every job sent before it. The job runs to its end even if
    /// the returned future is dropped.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel::<Outcome<Result<T, StoreError>>>();
        let job: Job = Box::new(move |store| {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| f(store)));
            let _ = tx.send(outcome);
        });
        {
            let jobs = lock(&self.inner.jobs);
            let Some(jobs) = jobs.as_ref() else {
                return Err(StoreError::Closed);
            };
            if jobs.send(job).is_err() {
                return Err(StoreError::Closed);
            }
        }
        match rx.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            // The writer thread is gone without answering: it was closed under us.
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Sends `f` to the writer without waiting for it, for code that cannot await (a `Drop`).
    /// False if the handle is closed and `f` will not run.
    pub fn write_later(&self, f: impl FnOnce(&mut Store) + Send + 'static) -> bool {
        // Nobody waits to be handed a panic: it is logged, and the writer goes on (an open
        // transaction was rolled back as the panic unwound).
        let job: Job = Box::new(move |store| {
            if std::panic::catch_unwind(AssertUnwindSafe(|| f(store))).is_err() {
                tracing::error!("a background store write panicked; it was rolled back");
            }
        });
        lock(&self.inner.jobs)
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }

    /// Runs `f` on one of the read-only connections, beside the writer. It sees the last
    /// committed state when it starts (each statement outside a transaction; `f` opens one
    /// where it needs a consistent view across statements).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
        T: Send + 'static,
    {
        // The permit goes with the connection into the blocking task: if the caller stops
        // waiting, the connection stays taken until the task puts it back.
        let Ok(permit) = self.inner.free_readers.clone().acquire_owned().await else {
            return Err(StoreError::Closed);
        };
        let Some(store) = lock(&self.inner.readers).pop() else {
            return Err(StoreError::Closed);
        };
        let inner = self.inner.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(&store)));
            // After close() the pool stays empty: the connection is dropped instead.
            if !inner.free_readers.is_closed() {
                lock(&inner.readers).push(store);
            }
            drop(permit);
            result
        })
        .await;
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Stops taking jobs, lets the ones already sent finish, and waits up to `wait` for the
    /// writer to release the store. False if it was still busy after `wait` (it then releases
    /// the store when its last job ends). Every clone is closed.
    pub async fn close(&self, wait: Duration) -> bool {
        drop(lock(&self.inner.jobs).take());
        self.inner.free_readers.close();
        lock(&self.inner.readers).clear();
        let Some(thread) = lock(&self.inner.writer).take() else {
            return true;
        };
        let joined = tokio::task::spawn_blocking(move || thread.join());
        matches!(tokio::time::timeout(wait, joined).await, Ok(Ok(_)))
    }
}

/// Locks a mutex that a panicking job cannot have left inconsistent (each holds plain data).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::CursorUpdate;

    fn open(dir: &std::path::Path) -> StoreHandle {
        let node = crate::identity::NodeKey::from_seed([7; 32]).id();
        StoreHandle::new(Store::open_writer(dir, node).unwrap(), 2).unwrap()
    }

    #[tokio::test]
    async fn writes_run_in_the_order_sent_and_readers_see_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for i in 0..50 {
            assert!(store.write_later(move |s| {
                let so_far = s.cursor("log").unwrap().unwrap_or_default();
                s.set_cursors(&[CursorUpdate::set("log", format!("{so_far}{i},"))])
                    .unwrap();
            }));
        }
        let last = store.write(|s| s.cursor("log")).await.unwrap().unwrap();
        let expected: String = (0..50).map(|i| format!("{i},")).collect();
        assert_eq!(last, expected);
        let read = store.read(|s| s.cursor("log")).await.unwrap();
        assert_eq!(
            read.as_deref(),
            Some(expected.as_str()),
            "a reader sees what the writer committed"
        );
    }

    #[tokio::test]
    async fn an_idle_writer_copies_the_log_back_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let file = dir.path().join(crate::store::DB_FILE);
        let before = std::fs::metadata(&file).unwrap().len();
        // A megabyte: far below the 64 MiB at which SQLite copies the log back on its own.
        let big = "x".repeat(1 << 20);
        store
            .write(move |s| s.set_cursors(&[CursorUpdate::set("big", big)]))
            .await
            .unwrap();
        let started = std::time::Instant::now();
        while std::fs::metadata(&file).unwrap().len() < before + (1 << 20) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the database file still has {} bytes, {before} before the write",
                std::fs::metadata(&file).unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Still open: the write is in the file before any close.
        assert_eq!(
            store
                .read(|s| s.cursor("big"))
                .await
                .unwrap()
                .map(|v| v.len()),
            Some(1 << 20)
        );
    }

    #[tokio::test]
    async fn a_panicking_job_is_the_callers_and_the_writer_lives_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let panicked = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(|_| -> Result<(), StoreError> { panic!("boom") })
                    .await
            }
        })
        .await;
        assert!(panicked.unwrap_err().is_panic());
        let read_panic = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .read(|_| -> Result<(), StoreError> { panic!("boom") })
                    .await
            }
        })
        .await;
        assert!(read_panic.unwrap_err().is_panic());
        // A background job's panic has no caller: the writer survives it too.
        assert!(store.write_later(|_| panic!("boom in the background")));
        store
            .write(|s| s.set_cursors(&[CursorUpdate::set("after", 1)]))
            .await
            .unwrap();
        // Both readers are back in the pool.
        for _ in 0..4 {
            assert_eq!(
                store.read(|s| s.cursor("after")).await.unwrap().as_deref(),
                Some("1")
            );
        }
    }

    #[tokio::test]
    async fn close_finishes_sent_writes_then_releases_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        // A slow write already sent when close is called, whose caller stopped waiting.
        let slow = store.write(|s| {
            std::thread::sleep(Duration::from_millis(300));
            s.set_cursors(&[CursorUpdate::set("slow", 1)])
        });
        let _ = tokio::time::timeout(Duration::from_millis(10), slow).await;
        assert!(store.close(Duration::from_secs(10)).await);
        assert!(matches!(
            store.write(|s| s.cursor("slow")).await,
            Err(StoreError::Closed)
        ));
        assert!(matches!(
            store.read(|s| s.cursor("slow")).await,
            Err(StoreError::Closed)
        ));
        let node = crate::identity::NodeKey::from_seed([7; 32]).id();
        let again = Store::open_writer(dir.path(), node).expect("the lock is released");
        assert_eq!(again.cursor("slow").unwrap().as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn after_close_the_database_file_alone_holds_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store
            .write(|s| s.set_cursors(&[CursorUpdate::set("kept", 1)]))
            .await
            .unwrap();
        // A reader still holds its connection while the writer closes.
        let reader = Store::open_read_only(dir.path()).unwrap();
        assert!(store.close(Duration::from_secs(10)).await);
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(
            dir.path().join(crate::store::DB_FILE),
            copy.path().join(crate::store::DB_FILE),
        )
        .unwrap();
        drop(reader);
        let node = crate::identity::NodeKey::from_seed([7; 32]).id();
        let copied = Store::open_writer(copy.path(), node).unwrap();
        assert_eq!(copied.cursor("kept").unwrap().as_deref(), Some("1"));
    }

    #[tokio::test]
    async fn close_gives_up_after_its_wait_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let busy = store.write(|_| {
            std::thread::sleep(Duration::from_millis(500));
            Ok(())
        });
        let _ = tokio::time::timeout(Duration::from_millis(10), busy).await;
        assert!(!store.close(Duration::from_millis(50)).await);
    }
}
