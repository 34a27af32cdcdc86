//! [`Repoll`]: a future whose wake-ups of itself are handled in place, by polling it again,
//! instead of going through the scheduler.
//!
//! A server that handles a connection in one task wakes that task from within itself: the h2
//! crate wakes the task that drives a connection whenever a frame is queued on it (the router's
//! gRPC front end), hyper's HTTP/1 server whenever the handler asks for the request body or the
//! connection hands it over (the runtime's and the agent's REST servers), so every request wakes
//! *the task that is running*. tokio's multi-thread scheduler treats such a wake-up as a yield:
//! the task goes to the back of the worker's run queue and an idle worker is woken to steal it
//! (futex calls, an eventfd write and that worker's `epoll_wait`), only to find the queue empty
//! again because the first worker ran the task first. `Repoll` gives the future a waker of its
//! own: a wake-up that arrives while the future is being polled only marks it for another poll,
//! which `Repoll` does at once, before returning; a wake-up at any other time (I/O readiness, a
//! timer, another task) wakes the task as usual. After [`MAX_REPOLLS`] polls in a row it yields
//! to the scheduler like any task that keeps waking itself, so one busy connection cannot starve
//! the others on its worker. (tokio's resources that refuse to go on once a task has used up its
//! cooperative budget wake it only after it has returned to the scheduler, so they still make it
//! yield.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Polls in a row before a future that keeps waking itself yields to the scheduler.
pub const MAX_REPOLLS: usize = 16;

/// Not being polled.
const IDLE: u8 = 0;
/// Being polled, not woken since the poll began.
const POLLING: u8 = 1;
/// Being polled and woken meanwhile: poll again before returning.
const WOKEN: u8 = 2;

/// A future whose wake-ups of itself during a poll are polls in place (see the module
/// documentation). Spawn a connection's task as `tokio::spawn(Repoll::new(connection))`.
pub struct Repoll<F> {
    inner: Pin<Box<F>>,
    shared: Arc<Shared>,
    /// The waker the inner future sees (wakes `shared`).
    waker: Waker,
}

impl<F: Future> Repoll<F> {
    pub fn new(inner: F) -> Self {
        let shared = Arc::new(Shared {
            state: AtomicU8::new(IDLE),
            task: Mutex::new(None),
        });
        Repoll {
            inner: Box::pin(inner),
            waker: Waker::from(Arc::clone(&shared)),
            shared,
        }
    }
}

struct Shared {
    state: AtomicU8,
    /// The waker of the task that polls the [`Repoll`], for wake-ups between polls.
    task: Mutex<Option<Waker>>,
}

impl Shared {
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.as_ref().is_some_and(|t| t.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }

    fn wake_task(&self) {
        let task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waker) = task.as_ref() {
            waker.wake_by_ref();
        }
    }
}

impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            // Marked: the poll under way polls again.
            Ok(_) => {}
            // Already marked.
            Err(WOKEN) => {}
            Err(_) => self.wake_task(),
        }
    }
}

impl<F: Future> Future for Repoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        this.shared.register(cx.waker());
        let mut inner_cx = Context::from_waker(&this.waker);
        for _ in 0..MAX_REPOLLS {
            this.shared.state.store(POLLING, Ordering::Release);
            if let Poll::Ready(out) = this.inner.as_mut().poll(&mut inner_cx) {
                this.shared.state.store(IDLE, Ordering::Release);
                return Poll::Ready(out);
            }
            if this
                .shared
                .state
                .compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
            // Woken while being polled: poll again here.
        }
        this.shared.state.store(IDLE, Ordering::Release);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts how often the task is woken.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Counter {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Wakes itself `times` times, one per poll, then is ready with the number of polls.
    fn wakes_itself(times: usize) -> impl Future<Output = usize> {
        let mut polls = 0;
        std::future::poll_fn(move |cx| {
            polls += 1;
            if polls > times {
                return Poll::Ready(polls);
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        })
    }

    #[test]
    fn wake_ups_during_a_poll_are_polls_in_place() {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let mut repoll = Repoll::new(wakes_itself(MAX_REPOLLS - 1));
        assert_eq!(
            Pin::new(&mut repoll).poll(&mut cx),
            Poll::Ready(MAX_REPOLLS)
        );
        assert_eq!(counter.count(), 0, "the task was never woken");
    }

    #[test]
    fn a_future_that_keeps_waking_itself_yields_to_the_scheduler() {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        let mut repoll = Repoll::new(wakes_itself(MAX_REPOLLS + 3));
        assert!(Pin::new(&mut repoll).poll(&mut cx).is_pending());
        assert_eq!(counter.count(), 1, "it yields with a wake-up of its task");
        assert_eq!(
            Pin::new(&mut repoll).poll(&mut cx),
            Poll::Ready(MAX_REPOLLS + 4)
        );
        assert_eq!(counter.count(), 1);
    }

    #[test]
    fn wake_ups_between_polls_wake_the_task() {
        let counter = Arc::new(Counter::default());
        let waker = Waker::from(Arc::clone(&counter));
        let mut cx = Context::from_waker(&waker);
        // Pending until `go` is set, keeping the waker it was given (as a socket would).
        let go = Arc::new(std::sync::Mutex::new((false, None::<Waker>)));
        let inner = {
            let go = Arc::clone(&go);
            std::future::poll_fn(move |cx| {
                let mut go = go.lock().unwrap();
                if go.0 {
                    return Poll::Ready(());
                }
                go.1 = Some(cx.waker().clone());
                Poll::Pending
            })
        };
        let mut repoll = Repoll::new(inner);
        assert!(Pin::new(&mut repoll).poll(&mut cx).is_pending());
        assert_eq!(counter.count(), 0);
        // From another thread, as the reactor would.
        let kept = {
            let mut go = go.lock().unwrap();
            go.0 = true;
            go.1.take().unwrap()
        };
        std::thread::spawn(move || kept.wake()).join().unwrap();
        assert_eq!(counter.count(), 1, "the task is woken");
        assert_eq!(Pin::new(&mut repoll).poll(&mut cx), Poll::Ready(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wake_ups_from_other_threads_during_polls_are_not_lost() {
        // A channel fed from another thread: every value must arrive whether its wake-up lands
        // during a poll or between polls.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
        let sender = std::thread::spawn(move || {
            for i in 0..20_000 {
                tx.send(i).unwrap();
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let received = Repoll::new(async move {
            let mut n = 0;
            while rx.recv().await.is_some() {
                n += 1;
                tokio::task::yield_now().await;
            }
            n
        });
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), received)
            .await
            .expect("every wake-up reached the task");
        sender.join().unwrap();
        assert_eq!(n, 20_000);
    }
}
