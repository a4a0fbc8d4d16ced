//! Where a panic is caught and turned into an error by the code around it (a task's run, a store
//! call on the blocking pool), so the panic hook knows not to end the process for it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

thread_local! {
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether the code running on this thread catches its panics.
pub fn is_caught() -> bool {
    DEPTH.with(|d| d.get() > 0)
}

struct Scope;

impl Scope {
    fn enter() -> Scope {
        DEPTH.with(|d| d.set(d.get().saturating_add(1)));
        Scope
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs `f` as code whose panics the caller catches.
pub fn caught<T>(f: impl FnOnce() -> T) -> T {
    let _scope = Scope::enter();
    f()
}

/// A future whose panics the caller catches (each poll runs inside the scope).
pub struct Caught<F>(Pin<Box<F>>);

impl<F: Future> Caught<F> {
    pub fn new(future: F) -> Caught<F> {
        Caught(Box::pin(future))
    }
}

impl<F: Future> Future for Caught<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _scope = Scope::enter();
        self.0.as_mut().poll(cx)
    }
}
