//! Lending borrowed memory to sends without a copy, for the length of a scope.
//!
//! A send must own its buffer, because a dropped [`Request`](crate::Request) leaves the
//! operation running (see the request module). A blocking caller that holds `&[u8]` for the
//! whole call can still avoid copying it: [`lend`] hands out [`Lent`] views of the slice,
//! which sends own like any buffer, and does not return, not even by unwinding, until every
//! `Lent` has been dropped, that is, until UCX has finished every operation that reads
//! them. The borrow therefore outlives every read, whatever the futures in between do.
//!
//! What ends an operation is UCX's completion: a send completes locally, or with an error
//! when its endpoint fails or is closed (force-closing an endpoint completes its sends with
//! `CANCELED`). A caller whose calls time out must therefore drop the endpoint of a
//! connection it gives up on, or the scope waits for that peer.

use std::cell::Cell;
use std::future::poll_fn;
use std::ops::Range;
use std::ptr::NonNull;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Counts the views of a loan still alive, and wakes the lender when the last one goes.
#[derive(Default)]
struct LoanState {
    outstanding: Cell<usize>,
    waker: Cell<Option<Waker>>,
}

/// A slice lent for one [`lend`] scope, from which [`Lent`] views are taken.
pub struct Loan {
    ptr: NonNull<u8>,
    len: usize,
    state: Rc<LoanState>,
}

/// A view of part of a lent slice: an owned send buffer (`AsRef<[u8]>`) that reads the
/// caller's memory in place. Not `Send`: it lives on the lending thread.
pub struct Lent {
    ptr: NonNull<u8>,
    len: usize,
    state: Rc<LoanState>,
}

/// Lends `data` for the length of `scope`, then calls `settle` until every [`Lent`] taken
/// from the loan has been dropped, and returns what `scope` returned. `settle` must let
/// the operations holding them finish, typically by running the event loop until
/// [`Loan::returned`] resolves.
///
/// A `Lent` that is leaked (`mem::forget`) or never dropped keeps this function from
/// returning: the scope waits rather than let the caller free memory UCX may still read.
/// The same holds during a panic in `scope`. A panic in `settle` aborts the process, since
/// unwinding out would end the borrow while views are alive.
pub fn lend<R>(data: &[u8], scope: impl FnOnce(&Loan) -> R, settle: impl FnMut(&Loan)) -> R {
    /// Settles on every way out of `lend`, unwinding included.
    struct Settle<S: FnMut(&Loan)> {
        loan: Loan,
        settle: S,
    }
    impl<S: FnMut(&Loan)> Drop for Settle<S> {
        fn drop(&mut self) {
            // A panic out of `settle` would end the borrow with views still alive.
            let abort = AbortOnUnwind;
            while self.loan.outstanding() > 0 {
                (self.settle)(&self.loan);
            }
            std::mem::forget(abort);
        }
    }
    /// Aborts the process if dropped, which only happens when a panic unwinds past it.
    struct AbortOnUnwind;
    impl Drop for AbortOnUnwind {
        fn drop(&mut self) {
            std::process::abort();
        }
    }
    let guard = Settle {
        loan: Loan {
            ptr: NonNull::from(data).cast(),
            len: data.len(),
            state: Rc::default(),
        },
        settle,
    };
    scope(&guard.loan)
}

impl Loan {
    /// Length of the lent slice.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the lent slice is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The lent bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the slice `lend` borrowed, alive and unchanged for the whole scope, which
        // outlives `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// A view of `range` of the lent slice, or `None` if the range is out of bounds.
    pub fn lend(&self, range: Range<usize>) -> Option<Lent> {
        if range.start > range.end || range.end > self.len {
            return None;
        }
        self.state.outstanding.set(self.state.outstanding.get() + 1);
        Some(Lent {
            // SAFETY: range.start <= len, so the pointer stays within (or one past) the
            // borrowed slice.
            ptr: unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(range.start)) },
            len: range.end - range.start,
            state: Rc::clone(&self.state),
        })
    }

    /// Views not yet dropped.
    pub fn outstanding(&self) -> usize {
        self.state.outstanding.get()
    }

    /// Resolves once no view is outstanding. One waiter at a time: a second `returned`
    /// polled meanwhile takes over the wakeup.
    pub async fn returned(&self) {
        poll_fn(|cx| {
            if self.outstanding() == 0 {
                Poll::Ready(())
            } else {
                self.state.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

impl std::fmt::Debug for Loan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loan")
            .field("len", &self.len)
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: within the borrowed slice (see `Loan::lend`), which `lend` keeps borrowed
        // until this view is dropped.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let left = self.state.outstanding.get() - 1;
        self.state.outstanding.set(left);
        if left == 0 {
            if let Some(waker) = self.state.waker.take() {
                waker.wake();
            }
        }
    }
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").field("len", &self.len).finish()
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;

    #[test]
    fn views_read_the_lent_bytes_and_bounds_are_checked() {
        let data: Vec<u8> = (0..=255).collect();
        let total = lend(
            &data,
            |loan| {
                assert_eq!(loan.as_slice(), &data[..]);
                let a = loan.lend(10..20).unwrap();
                let b = loan.lend(256..256).unwrap();
                assert_eq!(a.as_ref(), &data[10..20]);
                assert!(b.as_ref().is_empty());
                assert!(loan.lend(200..257).is_none());
                #[allow(clippy::reversed_empty_ranges)]
                let backwards = loan.lend(5..4);
                assert!(backwards.is_none());
                assert_eq!(loan.outstanding(), 2);
                drop((a, b));
                loan.outstanding()
            },
            |_| unreachable!("nothing outstanding"),
        );
        assert_eq!(total, 0);
    }

    #[test]
    fn the_scope_settles_until_every_view_is_dropped() {
        let data = vec![7u8; 64];
        let held = std::cell::RefCell::new(Vec::new());
        let settles = Cell::new(0);
        lend(
            &data,
            |loan| {
                // Views escaping the closure, as a detached send's buffers do.
                held.borrow_mut()
                    .extend((0..3).map(|i| loan.lend(i..i + 8).unwrap()));
            },
            |loan| {
                settles.set(settles.get() + 1);
                assert_eq!(loan.outstanding(), held.borrow().len());
                held.borrow_mut().pop();
            },
        );
        assert_eq!(settles.get(), 3);
        assert!(held.borrow().is_empty());
    }

    #[test]
    fn returned_wakes_when_the_last_view_drops() {
        let data = [1u8; 16];
        lend(
            &data,
            |loan| {
                let view = loan.lend(0..16).unwrap();
                let mut returned = std::pin::pin!(loan.returned());
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                assert!(returned.as_mut().poll(&mut cx).is_pending());
                drop(view);
                assert!(returned.as_mut().poll(&mut cx).is_ready());
            },
            |_| unreachable!("nothing outstanding"),
        );
    }
}
