//! Keeps metric label values bounded: the first few distinct values of a client-chosen
//! label (such as the task name) are used as they are, later ones become `other`.

use std::collections::HashSet;
use std::sync::Mutex;

#[derive(Debug)]
pub struct BoundedLabel {
    limit: usize,
    seen: Mutex<HashSet<String>>,
}

pub const OVERFLOW_LABEL: &str = "other";

impl BoundedLabel {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            seen: Mutex::new(HashSet::new()),
        }
    }

    pub fn get(&self, value: &str) -> String {
        let mut seen = match self.seen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < self.limit {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        OVERFLOW_LABEL.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_beyond_the_limit_become_other() {
        let label = BoundedLabel::new(2);
        assert_eq!(label.get("a"), "a");
        assert_eq!(label.get("b"), "b");
        assert_eq!(label.get("c"), OVERFLOW_LABEL);
        assert_eq!(label.get("a"), "a");
    }
}
