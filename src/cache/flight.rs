//! Single-flight: concurrent requests for one key share one piece of work. A table of
//! in-flight shared futures, generic over key, value and error, used for span fetches (runs of
//! whole spans and span prefixes, `fetcher.rs`) and for the stored gzip windows
//! (`windows.rs`). Calls nothing else in the crate and does no I/O itself.
//!
//! Work runs as a spawned tokio task, so a reader that stops waiting never cancels it halfway.
//! Its keys leave the table when the task ends (also when it panics), after the work has
//! published its result (to a local tier): a reader that finds a key gone finds its bytes
//! local. The table's lock is held only for map operations: callers must not do I/O (a pread
//! of a local tier, a file write) while they hold a [`Table`].

use futures::future::{BoxFuture, FutureExt, Shared};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// A shared, cloneable future for one key's value.
pub(super) type Flight<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

type Map<K, V, E, T> = HashMap<K, (T, Flight<V, E>)>;

/// In-flight work by key; each entry carries a tag `T` the caller chooses (for a partial
/// span fetch: the last block it produces).
pub(super) struct SingleFlight<K, V, E, T = ()> {
    map: Arc<Mutex<Map<K, V, E, T>>>,
}

fn lock<M>(m: &Mutex<M>) -> MutexGuard<'_, M> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The locked table: look up and start flights atomically. Map operations only (see the
/// module docs).
pub(super) struct Table<'a, K, V, E, T> {
    map: MutexGuard<'a, Map<K, V, E, T>>,
    shared: &'a Arc<Mutex<Map<K, V, E, T>>>,
}

/// Removes a task's keys from the table when the task ends, however it ends.
struct Leave<K: Eq + Hash, V, E, T> {
    map: Arc<Mutex<Map<K, V, E, T>>>,
    keys: Vec<K>,
}

impl<K: Eq + Hash, V, E, T> Drop for Leave<K, V, E, T> {
    fn drop(&mut self) {
        let mut m = lock(&self.map);
        for k in &self.keys {
            m.remove(k);
        }
    }
}

impl<K, V, E, T> SingleFlight<K, V, E, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    pub(super) fn new() -> Self {
        SingleFlight {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub(super) fn lock(&self) -> Table<'_, K, V, E, T> {
        Table {
            map: lock(&self.map),
            shared: &self.map,
        }
    }

    /// Whether work for `key` is in flight.
    pub(super) fn contains(&self, key: &K) -> bool {
        lock(&self.map).contains_key(key)
    }

    /// Join the work for `key`, or start `work()` for it (tag `tag`). `failed` turns a task
    /// that panicked or was cancelled into an error.
    pub(super) fn join_or_start<F>(
        &self,
        key: K,
        tag: T,
        work: F,
        failed: impl FnOnce(tokio::task::JoinError) -> E + Send + 'static,
    ) -> Flight<V, E>
    where
        F: FnOnce() -> BoxFuture<'static, Result<V, E>>,
    {
        let mut t = self.lock();
        if let Some((_, f)) = t.get(&key) {
            return f.clone();
        }
        let group = t.spawn(vec![key.clone()], work(), failed);
        let f: Flight<V, E> = async move { group.await.map(|v| (*v).clone()) }
            .boxed()
            .shared();
        t.insert(key, tag, f.clone());
        f
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.map).len()
    }
}

impl<K, V, E, T> Table<'_, K, V, E, T>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
    T: Send + 'static,
{
    pub(super) fn get(&self, key: &K) -> Option<&(T, Flight<V, E>)> {
        self.map.get(key)
    }

    /// Run `work` as a task on behalf of `keys` (which the caller then [`insert`](Self::insert)s
    /// while it still holds this table, so they are in the table before the task can remove
    /// them); returns the task's shared result. The keys leave the table when the task ends.
    pub(super) fn spawn<G: Send + Sync + 'static>(
        &mut self,
        keys: Vec<K>,
        work: BoxFuture<'static, Result<G, E>>,
        failed: impl FnOnce(tokio::task::JoinError) -> E + Send + 'static,
    ) -> Flight<Arc<G>, E> {
        let leave = Leave {
            map: self.shared.clone(),
            keys,
        };
        let task = tokio::spawn(async move {
            let r = work.await;
            drop(leave);
            r
        });
        async move {
            match task.await {
                Ok(r) => r.map(Arc::new),
                Err(e) => Err(failed(e)),
            }
        }
        .boxed()
        .shared()
    }

    /// Register the future serving `key`.
    pub(super) fn insert(&mut self, key: K, tag: T, flight: Flight<V, E>) {
        self.map.insert(key, (tag, flight));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_requests_share_one_task_and_the_key_leaves_when_it_ends() {
        let sf: Arc<SingleFlight<u32, u32, String>> = Arc::new(SingleFlight::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let rx = Arc::new(Mutex::new(Some(rx)));
        let mut waits = Vec::new();
        for _ in 0..8 {
            let (runs, rx) = (runs.clone(), rx.clone());
            waits.push(sf.join_or_start(
                7,
                (),
                move || {
                    async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let rx = lock(&rx).take();
                        if let Some(rx) = rx {
                            let _ = rx.await;
                        }
                        Ok(42)
                    }
                    .boxed()
                },
                |e| e.to_string(),
            ));
        }
        assert!(sf.contains(&7));
        tx.send(()).unwrap();
        for w in waits {
            assert_eq!(w.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sf.len(), 0);
    }

    #[tokio::test]
    async fn a_panicking_task_fails_its_waiters_and_leaves_the_table() {
        let sf: SingleFlight<u32, u32, String> = SingleFlight::new();
        let f = sf.join_or_start(
            1,
            (),
            || async { panic!("boom") }.boxed(),
            |e| format!("task failed: {e}"),
        );
        let err = f.await.unwrap_err();
        assert!(err.starts_with("task failed"), "{err}");
        assert_eq!(sf.len(), 0);
    }
}
