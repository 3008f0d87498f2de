//! This module exists because `lazy_static` causes TSAN to
//! be very unhappy. We rely heavily on TSAN for finding
//! races, so we don't use `lazy_static`.
//!
//! Twill patch: the upstream version spins (compare-and-swap in a loop, no
//! yield) while another thread runs the initializer. The threadpool's
//! initializer starts seven threads that each dereference the pool at once,
//! so every short-lived process burned most of its CPU spinning there. This
//! version blocks waiters on `std::sync::OnceLock` instead.

use std::sync::OnceLock;

/// A lazily initialized value
pub struct Lazy<T, F> {
    cell: OnceLock<T>,
    init: F,
}

impl<T, F> Lazy<T, F> {
    /// Create a new Lazy
    pub const fn new(init: F) -> Self
    where
        F: Sized,
    {
        Self { cell: OnceLock::new(), init }
    }
}

impl<T, F> std::ops::Deref for Lazy<T, F>
where
    F: Fn() -> T,
{
    type Target = T;

    fn deref(&self) -> &T {
        self.cell.get_or_init(|| (self.init)())
    }
}
