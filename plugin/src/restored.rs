//! Values saved with the project that the inference thread must notice coming back.
//!
//! The host restores a project's state by handing each persisted field its saved value; nothing
//! else tells the plugin. [`Restored`] counts those hand-overs, so the inference thread can see
//! with one atomic load per poll that the take and style it holds are no longer the project's.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use nice_plug::params::persist::PersistentField;

#[derive(Debug, Default)]
struct Inner<T> {
    value: RwLock<T>,
    restores: AtomicU32,
}

/// A persisted value shared between the parameters and the inference thread (clones share it).
#[derive(Debug, Default)]
pub struct Restored<T>(Arc<Inner<T>>);

impl<T> Clone for Restored<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Restored<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(Inner {
            value: RwLock::new(value),
            restores: AtomicU32::new(0),
        }))
    }

    /// How many times the host has restored this value.
    pub fn restores(&self) -> u32 {
        self.0.restores.load(Ordering::Acquire)
    }

    /// The value; a poisoned lock (a panic while writing) still gives the last value.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        self.0.value.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the value without counting a restore (the plugin's own updates).
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        self.0.value.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl<'a, T> PersistentField<'a, T> for Restored<T>
where
    T: serde::Serialize + serde::Deserialize<'a> + Send + Sync,
{
    fn set(&self, new_value: T) {
        *self.write() = new_value;
        self.0.restores.fetch_add(1, Ordering::AcqRel);
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&T) -> R,
    {
        f(&self.read())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_is_counted_and_an_update_is_not() {
        let value = Restored::new(1);
        let shared = value.clone();
        *value.write() = 2;
        assert_eq!((shared.restores(), *shared.read()), (0, 2));
        PersistentField::set(&value, 3);
        assert_eq!((shared.restores(), *shared.read()), (1, 3));
        assert_eq!(PersistentField::map(&shared, |v| v * 10), 30);
    }
}
