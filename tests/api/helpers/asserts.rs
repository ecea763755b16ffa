//! Assertions on statuses and on sets of numbers.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Asserts an INVALID_ARGUMENT whose BadRequest names `field` and whose
/// ErrorInfo has the reason INVALID_ARGUMENT.
pub fn assert_invalid_field(status: &Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let bad_request = status
        .get_details_bad_request()
        .expect("BadRequest details");
    let fields: Vec<_> = bad_request
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert!(fields.contains(&field), "{field} not named in {fields:?}");
    assert_reason(status, "INVALID_ARGUMENT");
}

/// Asserts the status' ErrorInfo reason.
pub fn assert_reason(status: &Status, reason: &str) {
    let info = status.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "numbering");
}

/// Asserts `values` are exactly `1..=n` (after sorting), naming what differs.
pub fn assert_exactly_one_to(values: &[i64], n: i64) {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for value in values {
        *seen.entry(*value).or_default() += 1;
    }
    let duplicates: Vec<_> = seen
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(v, _)| *v)
        .collect();
    assert!(duplicates.is_empty(), "duplicated numbers: {duplicates:?}");
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=n).collect::<Vec<_>>());
}
