//! Splitting records into request bodies within Lehnz's limits.

use bytes::Bytes;

use super::model::Record;

/// One request body: a JSON array of records, and which input records it holds.
#[derive(Debug)]
pub(crate) struct Batch {
    pub(crate) body: Bytes,
    pub(crate) indices: Vec<usize>,
}

/// A record that was not sent, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// The record's position in the input.
    pub index: usize,
    /// The record's id (`item_id`, `user_id`, or the event's client id), when it has one.
    pub id: Option<String>,
    /// Why it was not sent or not accepted.
    pub reason: String,
}

/// Splits `records` into JSON-array bodies of at most `max_records` records and `max_bytes`
/// bytes. A record that alone does not fit in `max_bytes` is rejected, naming it; the others
/// still go.
pub(crate) fn split<T: Record>(
    records: &[T],
    max_records: usize,
    max_bytes: usize,
) -> (Vec<Batch>, Vec<Rejected>) {
    let max_records = max_records.max(1);
    let mut batches = Vec::new();
    let mut rejected = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut indices = Vec::new();
    let flush = |body: &mut Vec<u8>, indices: &mut Vec<usize>, batches: &mut Vec<Batch>| {
        if !indices.is_empty() {
            body.push(b']');
            batches.push(Batch {
                body: Bytes::from(std::mem::take(body)),
                indices: std::mem::take(indices),
            });
        }
    };
    for (index, record) in records.iter().enumerate() {
        let json = match serde_json::to_vec(record) {
            Ok(json) => json,
            Err(err) => {
                rejected.push(Rejected {
                    index,
                    id: record.id().map(str::to_owned),
                    reason: format!("could not be serialized: {err}"),
                });
                continue;
            }
        };
        // `[` + record + `]`
        if json.len() + 2 > max_bytes {
            rejected.push(Rejected {
                index,
                id: record.id().map(str::to_owned),
                reason: format!(
                    "record is {} bytes serialized, over the {max_bytes}-byte request limit",
                    json.len()
                ),
            });
            continue;
        }
        // The body so far, a comma, the record and the closing bracket must fit.
        if !indices.is_empty()
            && (indices.len() >= max_records || body.len() + 1 + json.len() + 1 > max_bytes)
        {
            flush(&mut body, &mut indices, &mut batches);
        }
        body.push(if indices.is_empty() { b'[' } else { b',' });
        body.extend_from_slice(&json);
        indices.push(index);
    }
    flush(&mut body, &mut indices, &mut batches);
    (batches, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lehnz::model::{Item, User};

    #[test]
    fn batches_respect_the_record_count() {
        let users: Vec<User> = (0..25).map(|i| User::new(format!("u{i}"))).collect();
        let (batches, rejected) = split(&users, 10, 1_000_000);
        assert!(rejected.is_empty());
        let sizes: Vec<usize> = batches.iter().map(|b| b.indices.len()).collect();
        assert_eq!(sizes, vec![10, 10, 5]);
        let back: Vec<User> = batches
            .iter()
            .flat_map(|b| serde_json::from_slice::<Vec<User>>(&b.body).unwrap())
            .collect();
        assert_eq!(back, users);
    }

    #[test]
    fn batches_respect_the_byte_limit_exactly() {
        let items: Vec<Item> = (0..50)
            .map(|i| Item::new(format!("item-{i:03}")).attr("pad", "x".repeat(90)))
            .collect();
        let limit = 1_000;
        let (batches, rejected) = split(&items, 1_000, limit);
        assert!(rejected.is_empty());
        let mut seen = Vec::new();
        for batch in &batches {
            assert!(batch.body.len() <= limit, "{} > {limit}", batch.body.len());
            let parsed: Vec<Item> = serde_json::from_slice(&batch.body).unwrap();
            assert_eq!(parsed.len(), batch.indices.len());
            seen.extend(batch.indices.iter().copied());
        }
        assert_eq!(seen, (0..50).collect::<Vec<_>>());
        // Batches are full: adding the next record would have gone over.
        assert!(batches.len() < 10);
    }

    #[test]
    fn an_oversized_record_is_rejected_by_name_and_the_rest_still_go() {
        let items = vec![
            Item::new("small-1"),
            Item::new("huge").attr("blob", "x".repeat(2_000)),
            Item::new("small-2"),
        ];
        let (batches, rejected) = split(&items, 100, 1_000);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].index, 1);
        assert_eq!(rejected[0].id.as_deref(), Some("huge"));
        assert!(rejected[0]
            .reason
            .contains("over the 1000-byte request limit"));
        assert_eq!(batches.len(), 1);
        assert_eq!(batches[0].indices, vec![0, 2]);
    }

    #[test]
    fn nothing_to_send_makes_no_batch() {
        let (batches, rejected) = split::<User>(&[], 10, 100);
        assert!(batches.is_empty() && rejected.is_empty());
    }
}
