//! The cost of reaching the store from async code (run with `cargo bench --bench handle`):
//! [`tandem::store::StoreHandle`] side by side, in the same run, with the pattern it replaced,
//! one store behind a `std::sync::Mutex` reached through `tokio::task::spawn_blocking` (kept
//! here only as the reference).
//!
//! - `write_*`: one small transaction (a cursor) from one task, awaited;
//! - `read_*`: one indexed read (a cursor) from one task, awaited;
//! - `reads_parallel_*`: 64 reads from 8 tasks at once, as HTTP handlers serving pages do
//!   (the handle has a pool of readers; the reference has one reader connection);
//! - `writes_parallel_*`: 64 small transactions from 8 tasks at once, as the loops do.
//!
//! Each benchmark opens a store in a temporary directory with a few thousand cursors.

use std::sync::{Arc, Mutex};

use divan::Bencher;
use tandem::identity::NodeKey;
use tandem::store::{CursorUpdate, READERS, Store, StoreError, StoreHandle};

fn main() {
    divan::main();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn filled(dir: &std::path::Path) -> Store {
    let mut store = Store::open_writer(dir, NodeKey::from_seed([3; 32]).id()).unwrap();
    let cursors: Vec<_> = (0..5_000)
        .map(|i| CursorUpdate::set(format!("kinto:/buckets/b{i}"), i))
        .collect();
    store.set_cursors(&cursors).unwrap();
    store
}

/// The replaced pattern: a writer and one reader, each behind a mutex, on blocking threads.
struct Reference {
    writer: Arc<Mutex<Store>>,
    reader: Arc<Mutex<Store>>,
}

impl Reference {
    fn new(dir: &std::path::Path) -> Reference {
        let writer = filled(dir);
        Reference {
            reader: Arc::new(Mutex::new(Store::open_read_only(dir).unwrap())),
            writer: Arc::new(Mutex::new(writer)),
        }
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.writer.clone();
        tokio::task::spawn_blocking(move || f(&mut store.lock().unwrap()))
            .await
            .unwrap()
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&store.lock().unwrap()))
            .await
            .unwrap()
    }
}

fn handle(dir: &std::path::Path) -> StoreHandle {
    StoreHandle::new(filled(dir), READERS).unwrap()
}

fn set(i: u64) -> impl FnOnce(&mut Store) -> Result<(), StoreError> + Send + 'static {
    move |s| s.set_cursors(&[CursorUpdate::set("bench", i)])
}

fn get(i: u64) -> impl FnOnce(&Store) -> Result<Option<String>, StoreError> + Send + 'static {
    move |s| s.cursor(&format!("kinto:/buckets/b{}", i % 5_000))
}

#[divan::bench(sample_count = 20, sample_size = 20)]
fn write_reference(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = Reference::new(dir.path());
    bencher.bench_local(|| rt.block_on(store.write(set(1))).unwrap());
}

#[divan::bench(sample_count = 20, sample_size = 20)]
fn write_handle(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = handle(dir.path());
    bencher.bench_local(|| rt.block_on(store.write(set(1))).unwrap());
}

#[divan::bench(sample_count = 20, sample_size = 200)]
fn read_reference(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = Reference::new(dir.path());
    bencher.bench_local(|| rt.block_on(store.read(get(7))).unwrap());
}

#[divan::bench(sample_count = 20, sample_size = 200)]
fn read_handle(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = handle(dir.path());
    bencher.bench_local(|| rt.block_on(store.read(get(7))).unwrap());
}

const TASKS: u64 = 8;
const PER_TASK: u64 = 8;

#[divan::bench(sample_count = 20, sample_size = 5)]
fn reads_parallel_reference(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = Arc::new(Reference::new(dir.path()));
    bencher.bench_local(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..PER_TASK {
                            store.read(get(t * PER_TASK + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
}

#[divan::bench(sample_count = 20, sample_size = 5)]
fn reads_parallel_handle(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = handle(dir.path());
    bencher.bench_local(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..PER_TASK {
                            store.read(get(t * PER_TASK + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn writes_parallel_reference(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = Arc::new(Reference::new(dir.path()));
    bencher.bench_local(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..PER_TASK {
                            store.write(set(t * PER_TASK + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn writes_parallel_handle(bencher: Bencher) {
    let (rt, dir) = (runtime(), tempfile::tempdir().unwrap());
    let store = handle(dir.path());
    bencher.bench_local(|| {
        rt.block_on(async {
            let tasks: Vec<_> = (0..TASKS)
                .map(|t| {
                    let store = store.clone();
                    tokio::spawn(async move {
                        for i in 0..PER_TASK {
                            store.write(set(t * PER_TASK + i)).await.unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    });
}
