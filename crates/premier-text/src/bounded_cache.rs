//! A cache bounded by bytes that evicts the least recently used entry first: the prompt
//! features of [`crate::TextEncoder`], and the Δ per (prompt, user) of premier-pipeline's
//! generator, which a long-running app would otherwise grow without end.

use std::collections::HashMap;
use std::hash::Hash;

use burn::prelude::*;

/// Bytes of a tensor's values.
pub fn tensor_bytes<B: Backend, const D: usize>(tensor: &Tensor<B, D>) -> usize {
    tensor.shape().num_elements() * tensor.dtype().size()
}

/// Entries of at most `budget` bytes in all; the least recently used go first.
#[derive(Debug, Clone)]
pub struct BoundedCache<K, V> {
    entries: HashMap<K, Entry<V>>,
    budget: usize,
    used: usize,
    clock: u64,
}

#[derive(Debug, Clone)]
struct Entry<V> {
    value: V,
    bytes: usize,
    last_used: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> BoundedCache<K, V> {
    /// An empty cache of at most `budget` bytes (0: caches nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            budget,
            used: 0,
            clock: 0,
        }
    }

    /// The value of `key`, marked as used now.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.clock += 1;
        let entry = self.entries.get_mut(key)?;
        entry.last_used = self.clock;
        Some(entry.value.clone())
    }

    /// Whether `key` is cached (without marking it used).
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Keeps `value` (of `bytes` bytes) under `key`, evicting the least recently used entries
    /// until it fits; a value larger than the whole budget is not kept.
    pub fn insert(&mut self, key: K, value: V, bytes: usize) {
        if let Some(old) = self.entries.remove(&key) {
            self.used -= old.bytes;
        }
        if bytes > self.budget {
            return;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some(e) = self.entries.remove(&oldest) {
                self.used -= e.bytes;
            }
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.insert(
            key,
            Entry {
                value,
                bytes,
                last_used: self.clock,
            },
        );
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// The most bytes the cache holds.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// A new budget, evicting the least recently used entries until the cache fits it.
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        let entries: Vec<(K, Entry<V>)> = self.entries.drain().collect();
        self.used = 0;
        let mut entries = entries;
        entries.sort_by_key(|(_, e)| e.last_used);
        for (k, e) in entries {
            let last_used = e.last_used;
            self.insert(k.clone(), e.value, e.bytes);
            if let Some(entry) = self.entries.get_mut(&k) {
                entry.last_used = last_used;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_and_nothing_outgrows_the_budget() {
        let mut c = BoundedCache::new(10);
        c.insert("a", 1, 4);
        c.insert("b", 2, 4);
        assert_eq!(c.get(&"a"), Some(1), "a is now the most recent");
        c.insert("c", 3, 4);
        assert!(!c.contains(&"b"), "b was the least recently used");
        assert_eq!((c.get(&"a"), c.get(&"c")), (Some(1), Some(3)));
        assert_eq!(c.bytes(), 8);
        // Replacing a key frees its old bytes; a value larger than the budget is not kept.
        c.insert("a", 10, 6);
        assert_eq!((c.bytes(), c.len()), (10, 2));
        c.insert("huge", 99, 11);
        assert!(!c.contains(&"huge") && c.bytes() <= 10);
        // A smaller budget evicts the oldest first.
        c.get(&"a");
        c.set_budget(6);
        assert_eq!(
            (c.get(&"a"), c.contains(&"c"), c.bytes()),
            (Some(10), false, 6)
        );
        let mut off = BoundedCache::new(0);
        off.insert("x", 1, 1);
        assert!(off.is_empty());
    }
}
