//! Group commit: concurrent writers share one transaction and one fsync.
//!
//! A writer hands its request to [`GroupCommit::submit`] and waits. If no
//! commit is running, the writer's task starts one: it takes every request
//! pending at that moment, runs the blocking `commit` function on the whole
//! batch, answers each writer with its own result, and goes on with what
//! arrived meanwhile until nothing is pending. Every writer still returns
//! only after its own write is durable; under load the cost of one fsync is
//! shared by many.
//!
//! [`GroupCommit::kick`] asks for a commit without a request of its own (the
//! `commit` function then runs with an empty batch), for work the owner keeps
//! elsewhere and wants written soon (the embedded queue's acks).
//!
//! The committer decides whether to go on *before* it answers a batch, and
//! drops `commit` (and with it whatever database handle it holds) before the
//! last answers go out: when the last writer hears back, nothing of the
//! group holds the database any more, so a closed store can be reopened at
//! once (a restart in tests, say).

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// The writers waiting for a commit, and whether a committer runs.
struct State<Req, Out> {
    pending: Vec<(Req, oneshot::Sender<Out>)>,
    /// A commit was asked for by [`GroupCommit::kick`].
    flush: bool,
    committing: bool,
}

/// A group-commit queue of `Req`s answered with `Out`s (see the module docs).
pub struct GroupCommit<Req, Out> {
    state: Mutex<State<Req, Out>>,
}

impl<Req, Out> Default for GroupCommit<Req, Out> {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::new(State {
                pending: Vec::new(),
                flush: false,
                committing: false,
            }),
        }
    }
}

impl<Req: Send + 'static, Out: Send + 'static> GroupCommit<Req, Out> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queue `req` and wait for its result. `commit` must return one `Out`
    /// per request, in order; it is used only if this call has to start the
    /// committer (so building it should be cheap: an `Arc` clone). `None`:
    /// the committer went away without answering (the runtime shut down).
    pub async fn submit<C>(self: &Arc<Self>, req: Req, commit: C) -> Option<Out>
    where
        C: FnMut(Vec<Req>) -> Vec<Out> + Send + 'static,
    {
        let (done, answer) = oneshot::channel();
        let start = {
            let mut st = self.lock();
            st.pending.push((req, done));
            !std::mem::replace(&mut st.committing, true)
        };
        if start {
            tokio::spawn(self.clone().run(commit));
        }
        answer.await.ok()
    }

    /// Have `commit` run soon (with an empty batch if nothing else is
    /// pending), without waiting for it.
    pub fn kick<C>(self: &Arc<Self>, commit: C)
    where
        C: FnMut(Vec<Req>) -> Vec<Out> + Send + 'static,
    {
        let start = {
            let mut st = self.lock();
            st.flush = true;
            !std::mem::replace(&mut st.committing, true)
        };
        if start {
            tokio::spawn(self.clone().run(commit));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<Req, Out>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is pending; `None` (and no committer any more) if nothing is.
    fn take(&self) -> Option<Vec<(Req, oneshot::Sender<Out>)>> {
        let mut st = self.lock();
        if st.pending.is_empty() && !st.flush {
            st.committing = false;
            return None;
        }
        st.flush = false;
        Some(std::mem::take(&mut st.pending))
    }

    async fn run<C>(self: Arc<Self>, commit: C)
    where
        C: FnMut(Vec<Req>) -> Vec<Out> + Send + 'static,
    {
        let Some(mut batch) = self.take() else {
            return;
        };
        // If `commit` panics (or the task is dropped mid-commit), the
        // writers of this batch and the pending ones get `None` instead of
        // waiting for ever, and the next writer starts a new committer.
        let mut abandon = Abandon {
            group: &self,
            armed: true,
            in_flight: Vec::new(),
        };
        let mut commit = Some(commit);
        loop {
            let (reqs, dones): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
            // Held by the guard: on a panic they are answered only after the
            // reset, so a writer that submits again at once starts a new
            // committer instead of queueing behind the dying one.
            abandon.in_flight = dones;
            let mut c = commit.take().expect("commit is put back while looping");
            let (c, outs) = blocking(move || {
                let outs = c(reqs);
                (c, outs)
            })
            .await;
            let next = self.take();
            let dones = std::mem::take(&mut abandon.in_flight);
            if next.is_some() {
                commit = Some(c);
            } else {
                // `take` ended this committer; a new one may already run,
                // which the guard must leave alone.
                abandon.armed = false;
                drop(c);
            }
            debug_assert_eq!(outs.len(), dones.len());
            for (done, out) in dones.into_iter().zip(outs) {
                let _ = done.send(out);
            }
            match next {
                Some(b) => batch = b,
                None => return,
            }
        }
    }
}

/// Resets a [`GroupCommit`] whose committer stopped before its normal end
/// (disarmed on the normal end, where `take` already handed the role on).
struct Abandon<'a, Req, Out> {
    group: &'a GroupCommit<Req, Out>,
    armed: bool,
    /// The writers of the batch being committed.
    in_flight: Vec<oneshot::Sender<Out>>,
}

impl<Req, Out> Drop for Abandon<'_, Req, Out> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let pending = {
            let mut st = self.group.state.lock().unwrap_or_else(|p| p.into_inner());
            st.committing = false;
            st.flush = false;
            std::mem::take(&mut st.pending)
        };
        // Only after the reset: dropping the senders answers their writers
        // with `None`, and one that submits again finds no committer running
        // and starts one (answered first, it would queue behind this one
        // and be dropped with the pending writers).
        drop(pending);
        self.in_flight.clear();
    }
}

/// Run blocking work (a transaction up to its fsync) from async code. On the
/// multi-threaded runtime it runs in place (`block_in_place`): handing each
/// commit to the blocking pool cost more in thread switches than the work.
/// A panic of `f` reaches the caller as a panic.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match try_blocking(f).await {
        Ok(t) => t,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("blocking task cancelled: {e}"),
    }
}

/// [`blocking`], but a panic or cancellation of `f` on the blocking pool
/// (current-thread runtime) comes back as an error (on the multi-threaded
/// runtime `f` runs in place and a panic stays a panic).
pub async fn try_blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        return Ok(tokio::task::block_in_place(f));
    }
    tokio::task::spawn_blocking(f).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_writer_gets_its_own_answer_and_batches_form() {
        let g: Arc<GroupCommit<u32, u32>> = Arc::new(GroupCommit::new());
        let commits = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200u32 {
            let (g, commits) = (g.clone(), commits.clone());
            tasks.spawn(async move {
                let out = g
                    .submit(i, move |reqs: Vec<u32>| {
                        commits.fetch_add(1, Ordering::SeqCst);
                        // A slow "fsync" lets the next batch gather.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        reqs.into_iter().map(|r| r * 10).collect()
                    })
                    .await;
                (i, out)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let (i, out) = r.unwrap();
            assert_eq!(out, Some(i * 10));
        }
        let n = commits.load(Ordering::SeqCst);
        assert!(n < 200, "200 writers took {n} commits: nothing was grouped");
        // Idle again: the next writer starts a new committer.
        assert_eq!(g.submit(7, |r: Vec<u32>| r).await, Some(7));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kick_runs_the_commit_with_an_empty_batch() {
        let g: Arc<GroupCommit<u8, u8>> = Arc::new(GroupCommit::new());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        g.kick(move |r: Vec<u8>| {
            if let Some(tx) = tx.take() {
                let _ = tx.send(r.len());
            }
            r
        });
        assert_eq!(rx.await.unwrap(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn works_on_the_current_thread_runtime() {
        let g: Arc<GroupCommit<u8, u8>> = Arc::new(GroupCommit::new());
        assert_eq!(g.submit(3, |r: Vec<u8>| r).await, Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_commit_fails_its_writers_and_the_next_commit_runs() {
        let g: Arc<GroupCommit<u8, u8>> = Arc::new(GroupCommit::new());
        let out = g
            .submit(1, |_: Vec<u8>| -> Vec<u8> { panic!("storage exploded") })
            .await;
        assert_eq!(out, None, "the writer hears of the failure");
        // Not stuck: a new committer serves the next writer (the timeout
        // only bounds a hang).
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            g.submit(2, |r: Vec<u8>| r),
        )
        .await
        .expect("the next writer is not left waiting");
        assert_eq!(next, Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_commit_function_is_dropped_before_the_last_answer() {
        // The committer holds a handle (think: the database); a writer that
        // got its answer must find it released.
        let g: Arc<GroupCommit<(), ()>> = Arc::new(GroupCommit::new());
        let handle = Arc::new(());
        let held = handle.clone();
        g.submit((), move |r: Vec<()>| {
            let _ = &held;
            r
        })
        .await
        .unwrap();
        assert_eq!(Arc::strong_count(&handle), 1);
    }
}
