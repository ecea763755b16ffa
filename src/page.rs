//! A page of a listing: its items and whether more follow.

/// Up to a page of items, and whether more follow them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items, in listing order.
    pub items: Vec<T>,
    /// Whether items follow the last one.
    pub more: bool,
}

impl<T> Page<T> {
    /// How many items to fetch for a page of `limit`: one more, which only
    /// tells whether more follow.
    #[must_use]
    pub fn fetch(limit: u32) -> u32 {
        limit.saturating_add(1)
    }

    /// The page of `limit` items out of what [`Page::fetch`] asked for.
    #[must_use]
    pub fn from_fetched(mut items: Vec<T>, limit: u32) -> Self {
        let limit = limit as usize;
        let more = items.len() > limit;
        items.truncate(limit);
        Self { items, more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extra_item_only_says_more_follow() {
        assert_eq!(Page::<u8>::fetch(2), 3);
        assert_eq!(
            Page::from_fetched(vec![1, 2, 3], 2),
            Page {
                items: vec![1, 2],
                more: true
            }
        );
        assert_eq!(
            Page::from_fetched(vec![1, 2], 2),
            Page {
                items: vec![1, 2],
                more: false
            }
        );
    }
}
