//! Lending borrowed memory to UCX without a copy, for the length of a scope.
//!
//! An operation must own its buffer, because a dropped [`Request`](crate::Request) leaves
//! the operation running (see the request module). A blocking caller that holds a slice for
//! the whole call can still avoid copying it: [`lend`] hands out [`Lent`] views of a `&[u8]`
//! for sends, [`lend_mut`] hands out disjoint [`LentMut`] views of a `&mut [u8]` for
//! receives. Views are owned buffers like any other, and the lending function does not
//! return, not even by unwinding, until every view has been dropped, that is, until UCX has
//! finished every operation that uses them. The borrow therefore outlives every access,
//! whatever the futures in between do.
//!
//! What ends an operation is UCX's completion: it completes, or fails when its endpoint
//! fails or is closed (force-closing an endpoint completes its operations with `CANCELED`).
//! A caller whose calls time out must therefore drop the endpoint of a connection it gives
//! up on, or the scope waits for that peer.

use std::cell::{Cell, RefCell};
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
    /// The ranges of the live views of a writable loan, which must not overlap.
    writable_views: RefCell<Vec<(usize, usize)>>,
}

impl LoanState {
    fn view_dropped(&self) {
        let left = self.outstanding.get() - 1;
        self.outstanding.set(left);
        if left == 0 {
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }
}

/// A slice lent for one [`lend`] or [`lend_mut`] scope, from which views are taken.
pub struct Loan {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    state: Rc<LoanState>,
}

/// A view of part of a slice lent by [`lend`]: an owned send buffer (`AsRef<[u8]>`) that
/// reads the caller's memory in place. Not `Send`: it lives on the lending thread.
pub struct Lent {
    ptr: NonNull<u8>,
    len: usize,
    state: Rc<LoanState>,
}

/// A view of part of a slice lent by [`lend_mut`]: an owned receive buffer
/// (`AsMut<[u8]>`) that writes the caller's memory in place. Views of one loan never
/// overlap. Not `Send`.
pub struct LentMut {
    ptr: NonNull<u8>,
    start: usize,
    len: usize,
    state: Rc<LoanState>,
}

/// Lends `data` for the length of `scope`, then calls `settle` until every [`Lent`] taken
/// from the loan has been dropped, and returns what `scope` returned. `settle` must let
/// the operations holding them finish, typically by running the event loop until
/// [`Loan::returned`] resolves.
///
/// A view that is leaked (`mem::forget`) or never dropped keeps this function from
/// returning: the scope waits rather than let the caller free memory UCX may still use.
/// The same holds during a panic in `scope`. A panic in `settle` aborts the process, since
/// unwinding out would end the borrow while views are alive.
pub fn lend<R>(data: &[u8], scope: impl FnOnce(&Loan) -> R, settle: impl FnMut(&Loan)) -> R {
    let loan = Loan {
        ptr: NonNull::from(data).cast(),
        len: data.len(),
        writable: false,
        state: Rc::default(),
    };
    scoped(loan, scope, settle)
}

/// [`lend`] for receiving into `data`: views are [`LentMut`], taken with
/// [`Loan::lend_mut`].
pub fn lend_mut<R>(
    data: &mut [u8],
    scope: impl FnOnce(&Loan) -> R,
    settle: impl FnMut(&Loan),
) -> R {
    let len = data.len();
    let loan = Loan {
        ptr: NonNull::from(data).cast(),
        len,
        writable: true,
        state: Rc::default(),
    };
    scoped(loan, scope, settle)
}

fn scoped<R>(loan: Loan, scope: impl FnOnce(&Loan) -> R, settle: impl FnMut(&Loan)) -> R {
    /// Settles on every way out of the scope, unwinding included.
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
    let guard = Settle { loan, settle };
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

    /// A view of `range` of a slice lent by [`lend`], or `None` if the range is out of
    /// bounds or the loan is writable.
    pub fn lend(&self, range: Range<usize>) -> Option<Lent> {
        if self.writable || range.start > range.end || range.end > self.len {
            return None;
        }
        self.state.outstanding.set(self.state.outstanding.get() + 1);
        Some(Lent {
            ptr: self.at(range.start),
            len: range.end - range.start,
            state: Rc::clone(&self.state),
        })
    }

    /// A view of `range` of a slice lent by [`lend_mut`], or `None` if the range is out of
    /// bounds, overlaps a live view, or the loan is read-only.
    pub fn lend_mut(&self, range: Range<usize>) -> Option<LentMut> {
        if !self.writable || range.start > range.end || range.end > self.len {
            return None;
        }
        let mut views = self.state.writable_views.borrow_mut();
        if views
            .iter()
            .any(|&(start, end)| range.start < end && start < range.end)
        {
            return None;
        }
        views.push((range.start, range.end));
        self.state.outstanding.set(self.state.outstanding.get() + 1);
        Some(LentMut {
            ptr: self.at(range.start),
            start: range.start,
            len: range.end - range.start,
            state: Rc::clone(&self.state),
        })
    }

    /// The lent memory at `offset`, which is at most `len`.
    fn at(&self, offset: usize) -> NonNull<u8> {
        debug_assert!(offset <= self.len);
        // SAFETY: offset <= len, so the pointer stays within (or one past) the borrowed
        // slice.
        unsafe { NonNull::new_unchecked(self.ptr.as_ptr().add(offset)) }
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
        self.state.view_dropped();
    }
}

impl AsRef<[u8]> for LentMut {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: within the borrowed slice, which `lend_mut` keeps borrowed until this view
        // is dropped; no other view overlaps it (see `Loan::lend_mut`).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl AsMut<[u8]> for LentMut {
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_ref`; the range is this view's alone, and `&mut self` makes the
        // access unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for LentMut {
    fn drop(&mut self) {
        let mut views = self.state.writable_views.borrow_mut();
        let range = (self.start, self.start + self.len);
        if let Some(i) = views.iter().position(|&v| v == range) {
            views.swap_remove(i);
        }
        drop(views);
        self.state.view_dropped();
    }
}

impl std::fmt::Debug for LentMut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentMut")
            .field("start", &self.start)
            .field("len", &self.len)
            .finish()
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
                assert_eq!(loan.len(), data.len());
                assert!(loan.lend_mut(0..1).is_none(), "a read-only loan");
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

    #[test]
    fn writable_views_are_disjoint_and_write_in_place() {
        let mut data = vec![0u8; 32];
        lend_mut(
            &mut data,
            |loan| {
                assert!(loan.lend(0..1).is_none(), "a writable loan");
                let mut a = loan.lend_mut(0..16).unwrap();
                assert!(loan.lend_mut(8..24).is_none(), "overlaps a");
                assert!(loan.lend_mut(15..16).is_none(), "inside a");
                let mut b = loan.lend_mut(16..32).unwrap();
                let empty = loan.lend_mut(16..16).unwrap();
                assert!(loan.lend_mut(30..33).is_none(), "out of bounds");
                a.as_mut().fill(1);
                b.as_mut().fill(2);
                assert_eq!(b.as_ref(), &[2; 16]);
                drop((a, empty));
                let mut again = loan.lend_mut(8..16).expect("a's range is free again");
                again.as_mut().fill(3);
                assert_eq!(loan.outstanding(), 2);
            },
            |_| unreachable!("nothing outstanding"),
        );
        let want: Vec<u8> = [[1u8; 8], [3; 8], [2; 8], [2; 8]].concat();
        assert_eq!(data, want);
    }
}
