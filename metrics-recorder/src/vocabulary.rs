//! Label values a peer can choose (an HTTP method, a task's status, a
//! plugin's name), kept to a bounded set so that no peer can make a series
//! per request: the `fixed` values, the values declared by the operator
//! ([`Vocabulary::declare`], e.g. the statuses a blueprint names), then the
//! first `open` other values seen; anything else is [`OTHER`].

use std::collections::HashSet;
use std::sync::RwLock;

/// The label of every value outside a vocabulary.
pub const OTHER: &str = "other";

/// Most values [`Vocabulary::declare`] adds (beyond them, declared values
/// are [`OTHER`] too).
pub const MAX_DECLARED: usize = 4096;

pub struct Vocabulary {
    fixed: &'static [&'static str],
    /// How many undeclared values are admitted as they are first seen.
    open: usize,
    known: RwLock<Known>,
}

#[derive(Default)]
struct Known {
    declared: HashSet<String>,
    seen: HashSet<String>,
}

impl Vocabulary {
    pub fn new(fixed: &'static [&'static str], open: usize) -> Self {
        Self {
            fixed,
            open,
            known: RwLock::default(),
        }
    }

    /// Admits `value` for good (up to [`MAX_DECLARED`] values).
    pub fn declare(&self, value: &str) {
        if self.fixed.contains(&value) {
            return;
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.declared.len() < MAX_DECLARED && !known.declared.contains(value) {
            known.declared.insert(value.to_string());
        }
    }

    /// The label for `value`: itself when admitted, else [`OTHER`].
    pub fn label(&self, value: &str) -> String {
        if let Some(fixed) = self.fixed.iter().find(|f| **f == value) {
            return (*fixed).to_string();
        }
        {
            let known = self.known.read().unwrap_or_else(|p| p.into_inner());
            if known.declared.contains(value) || known.seen.contains(value) {
                return value.to_string();
            }
            if known.seen.len() >= self.open {
                return OTHER.to_string();
            }
        }
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.seen.len() < self.open {
            known.seen.insert(value.to_string());
            return value.to_string();
        }
        OTHER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_declared_then_the_first_open_values_and_other_for_the_rest() {
        let v = Vocabulary::new(&["GET", "POST"], 2);
        assert_eq!(v.label("GET"), "GET");
        v.declare("needs_review");
        assert_eq!(v.label("needs_review"), "needs_review");
        assert_eq!(v.label("a"), "a");
        assert_eq!(v.label("b"), "b");
        assert_eq!(v.label("c"), OTHER);
        assert_eq!(v.label("a"), "a");
        let closed = Vocabulary::new(&["x"], 0);
        assert_eq!(closed.label("y"), OTHER);
        for i in 0..(MAX_DECLARED + 10) {
            closed.declare(&format!("d{i}"));
        }
        assert_eq!(closed.label(&format!("d{}", MAX_DECLARED + 5)), OTHER);
        assert_eq!(closed.label("d1"), "d1");
    }
}
