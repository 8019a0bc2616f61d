//! Fork-join for the kernels: the calling thread and a few helper threads split a kernel's
//! independent parts between them.
//!
//! Why not rayon alone: a training step calls about a hundred kernels, with Burn's own (mostly
//! serial) operations in between. Rayon's idle workers go to sleep within microseconds, and
//! waking one costs 50 to 130 µs on a virtual machine (measured: a 345 µs GEMM takes 450 µs when
//! the second worker has slept). The helpers here instead keep polling for five
//! milliseconds after each job, yielding the core to any other thread that wants it, before
//! they park: the OpenMP model that PyTorch's CPU kernels get.
//!
//! How many threads take part follows rayon's `current_num_threads()` (the caller's pool), so
//! one setting sizes both. One job runs at a time; a kernel called while another is running
//! (tests run concurrently, or nested calls) runs its parts on the calling thread. Every kernel
//! gives the same bits whichever thread computes which part.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, TryLockError};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a helper keeps polling for the next job before it parks, unless the environment
/// variable `SLIVER_KERNEL_SPIN_MS` says otherwise (0 parks at once: for machines shared with
/// other work, at the price of a wake-up per kernel).
const SPIN: Duration = Duration::from_millis(5);

/// The polling time in force (read once).
fn spin() -> Duration {
    static SPIN_TIME: OnceLock<Duration> = OnceLock::new();
    *SPIN_TIME.get_or_init(|| {
        std::env::var("SLIVER_KERNEL_SPIN_MS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms.min(1000)))
            .unwrap_or(SPIN)
    })
}

/// Upper bound on helper threads.
const MAX_HELPERS: usize = 63;

/// A job as helpers see it. The pointers refer to the caller's stack frame, which outlives
/// every helper's use of them (see [`run`]).
#[derive(Clone, Copy)]
struct Job {
    task: *const (dyn Fn(usize) + Sync + 'static),
    parts: usize,
    next: *const AtomicUsize,
    done: *const AtomicUsize,
    panic: *const Mutex<Option<Payload>>,
    helpers: usize,
}

/// What a panicking part left, re-raised by the caller.
type Payload = Box<dyn std::any::Any + Send>;

// SAFETY: the pointees are `Sync` (atomics, a `Sync` closure) and stay alive while any helper
// holds the job (the caller waits for `active` to reach zero before returning).
unsafe impl Send for Job {}

struct Pool {
    /// The current job, `None` between jobs. Helpers join only while it is set.
    job: Mutex<Option<Job>>,
    /// Bumped when a job is published; helpers poll it.
    generation: AtomicU64,
    /// Helpers inside the current job.
    active: AtomicUsize,
    /// Helpers parked (not polling).
    parked: AtomicUsize,
    /// Handles of the helper threads, for unparking.
    threads: Mutex<Vec<Thread>>,
    /// Held by the caller of the running job.
    busy: Mutex<()>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        job: Mutex::new(None),
        generation: AtomicU64::new(0),
        active: AtomicUsize::new(0),
        parked: AtomicUsize::new(0),
        threads: Mutex::new(Vec::new()),
        busy: Mutex::new(()),
    })
}

impl Pool {
    /// Starts helper threads until there are `n` (a failed spawn leaves fewer: the caller then
    /// does more parts itself).
    fn ensure_helpers(&'static self, n: usize) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        while threads.len() < n.min(MAX_HELPERS) {
            let spawned = std::thread::Builder::new()
                .name(format!("sliver-kernels-{}", threads.len() + 1))
                .spawn(move || self.helper());
            match spawned {
                Ok(handle) => threads.push(handle.thread().clone()),
                Err(_) => break,
            }
        }
    }

    fn helper(&'static self) {
        let mut seen = self.generation.load(Ordering::SeqCst);
        loop {
            let mut since = Instant::now();
            loop {
                let g = self.generation.load(Ordering::SeqCst);
                if g != seen {
                    seen = g;
                    break;
                }
                if since.elapsed() < spin() {
                    std::hint::spin_loop();
                    std::thread::yield_now();
                    continue;
                }
                // Announce the park before the last check, so that a caller that publishes a
                // job after this check sees `parked` and unparks (both are SeqCst).
                self.parked.fetch_add(1, Ordering::SeqCst);
                if self.generation.load(Ordering::SeqCst) == seen {
                    std::thread::park_timeout(Duration::from_millis(50));
                }
                self.parked.fetch_sub(1, Ordering::SeqCst);
                since = Instant::now();
            }
            let job = {
                let guard = self.job.lock().unwrap_or_else(|e| e.into_inner());
                match *guard {
                    Some(job) if self.active.load(Ordering::SeqCst) < job.helpers => {
                        self.active.fetch_add(1, Ordering::SeqCst);
                        job
                    }
                    _ => continue,
                }
            };
            // SAFETY: `active` was raised under the job lock while the job was published, so
            // the caller has not returned and will not before `active` drops back.
            unsafe { work(&job) };
            self.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Claims and runs parts of `job` until none is left.
///
/// # Safety
/// The job's pointers must be alive for the duration of the call.
unsafe fn work(job: &Job) {
    let (task, next, done) = (&*job.task, &*job.next, &*job.done);
    loop {
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= job.parts {
            return;
        }
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| task(i))) {
            // Keep the first payload for the caller; later ones are leaked rather than dropped
            // here, where a panicking `Drop` would unwind past the bookkeeping below.
            let mut first = (*job.panic).lock().unwrap_or_else(|e| e.into_inner());
            match first.as_ref() {
                None => *first = Some(payload),
                Some(_) => std::mem::forget(payload),
            }
        }
        done.fetch_add(1, Ordering::SeqCst);
    }
}

/// Runs `task(i)` for every `i < parts`, split between the calling thread and up to
/// `rayon::current_num_threads() - 1` helpers; returns when all parts are done. A panic in a
/// part is re-raised here (with its payload) after the others finish.
pub(crate) fn run(parts: usize, task: &(dyn Fn(usize) + Sync)) {
    let threads = rayon::current_num_threads().min(parts);
    if threads <= 1 {
        (0..parts).for_each(task);
        return;
    }
    let pool = pool();
    let busy = match pool.busy.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(e)) => e.into_inner(),
        Err(TryLockError::WouldBlock) => {
            (0..parts).for_each(task);
            return;
        }
    };
    pool.ensure_helpers(threads - 1);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let panic = Mutex::new(None);
    // SAFETY: only the lifetime is erased; the job is withdrawn and every helper has left it
    // before this function returns, so the closure is never used after its lifetime.
    let task_ptr: *const (dyn Fn(usize) + Sync + 'static) =
        unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), _>(task as *const _) };
    let job = Job {
        task: task_ptr,
        parts,
        next: &next,
        done: &done,
        panic: &panic,
        helpers: threads - 1,
    };
    *pool.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
    pool.generation.fetch_add(1, Ordering::SeqCst);
    if pool.parked.load(Ordering::SeqCst) > 0 {
        for t in pool.threads.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            t.unpark();
        }
    }
    // SAFETY: the pointees are the locals above, alive until the end of this function.
    unsafe { work(&job) };
    // Parts still running on helpers are short; yield now and then in case a helper was
    // descheduled.
    let wait = |done: &dyn Fn() -> bool| {
        let mut spins = 0u32;
        while !done() {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    };
    wait(&|| done.load(Ordering::SeqCst) >= parts);
    *pool.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
    wait(&|| pool.active.load(Ordering::SeqCst) == 0);
    drop(busy);
    if let Some(payload) = panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        std::panic::resume_unwind(payload);
    }
}

/// A slice that parts write through disjoint ranges.
pub(crate) struct Disjoint<'a, T> {
    cells: &'a [UnsafeCell<T>],
}

// SAFETY: parts only obtain disjoint ranges (the contract of `range`), and `T: Send` values may
// be written from another thread.
unsafe impl<T: Send> Sync for Disjoint<'_, T> {}

impl<'a, T> Disjoint<'a, T> {
    pub(crate) fn new(data: &'a mut [T]) -> Self {
        // SAFETY: `UnsafeCell<T>` has the layout of `T`; the exclusive borrow is held by `self`.
        let cells = unsafe { &*(data as *mut [T] as *const [UnsafeCell<T>]) };
        Disjoint { cells }
    }

    /// The elements in `r`.
    ///
    /// # Safety
    /// No two live results may overlap.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range(&self, r: std::ops::Range<usize>) -> &mut [T] {
        let cells = &self.cells[r];
        std::slice::from_raw_parts_mut(UnsafeCell::raw_get(cells.as_ptr()), cells.len())
    }
}

/// `f(i, chunk)` for the `chunk`-sized pieces of `data` (the last may be shorter), in parallel
/// as [`run`].
pub(crate) fn chunks_mut<T: Send>(
    data: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "chunk size");
    let len = data.len();
    let cells = Disjoint::new(data);
    run(len.div_ceil(chunk), &|i| {
        let r = i * chunk..((i + 1) * chunk).min(len);
        // SAFETY: part i is the only one given range i, and ranges of distinct parts are
        // disjoint.
        f(i, unsafe { cells.range(r) })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_runs_once_on_any_thread_count() {
        for threads in [1, 2, 4] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                for len in [0, 1, 7, 1000, 4097] {
                    let mut v = vec![0u32; len];
                    for round in 1..=3u32 {
                        chunks_mut(&mut v, 64, |i, c| {
                            for (j, x) in c.iter_mut().enumerate() {
                                *x += round * (i * 64 + j) as u32;
                            }
                        });
                    }
                    assert!(v.iter().enumerate().all(|(i, &x)| x == 6 * i as u32));
                }
            });
        }
    }

    #[test]
    fn concurrent_callers_both_finish() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let total = AtomicUsize::new(0);
        pool.install(|| {
            rayon::join(
                || {
                    (0..200).for_each(|_| {
                        run(8, &|_| {
                            total.fetch_add(1, Ordering::SeqCst);
                        })
                    })
                },
                || {
                    (0..200).for_each(|_| {
                        run(8, &|_| {
                            total.fetch_add(1, Ordering::SeqCst);
                        })
                    })
                },
            )
        });
        assert_eq!(total.load(Ordering::SeqCst), 2 * 200 * 8);
    }

    #[test]
    fn a_panicking_part_panics_the_caller() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let result = pool.install(|| {
            catch_unwind(|| {
                run(16, &|i| {
                    if i == 9 {
                        panic!("part 9");
                    }
                })
            })
        });
        // The part's own payload reaches the caller, whichever thread ran part 9.
        let payload = result.expect_err("the panic is re-raised");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"part 9"));
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        pool.install(|| {
            run(16, &|_| {
                n.fetch_add(1, Ordering::SeqCst);
            })
        });
        assert_eq!(n.load(Ordering::SeqCst), 16);
    }
}
