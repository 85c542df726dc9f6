//! Splitting records into request bodies within Lehnz's limits.

use bytes::Bytes;

use super::model::Record;

/// One request body: a JSON array of records, and which input records it holds.
///
/// A batch covers the offsets `start..end` of its source: the records it sends, and the
/// records between them that were refused before sending (in `refused`).
#[derive(Debug)]
pub(crate) struct Batch {
    /// The JSON array, `None` when every record of the range was refused.
    pub(crate) body: Option<Bytes>,
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Offsets of the records sent.
    pub(crate) indices: Vec<usize>,
    /// Their ids, for errors.
    pub(crate) ids: Vec<Option<String>>,
    /// Records of the range that were not sent (too large, not serializable).
    pub(crate) refused: Vec<Rejected>,
}

impl Batch {
    /// Records sent in this batch.
    pub(crate) fn len(&self) -> usize {
        self.indices.len()
    }
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

/// Packs records, one at a time, into JSON-array bodies of at most `max_records` records and
/// `max_bytes` bytes. A record that alone does not fit in `max_bytes` is refused, naming it;
/// the others still go. Holds one batch at a time.
#[derive(Debug)]
pub(crate) struct Packer {
    max_records: usize,
    max_bytes: usize,
    body: Vec<u8>,
    start: usize,
    next: usize,
    indices: Vec<usize>,
    ids: Vec<Option<String>>,
    refused: Vec<Rejected>,
}

impl Packer {
    /// A packer whose first record has offset `start`.
    pub(crate) fn new(start: usize, max_records: usize, max_bytes: usize) -> Self {
        Packer {
            max_records: max_records.max(1),
            max_bytes,
            body: Vec::new(),
            start,
            next: start,
            indices: Vec::new(),
            ids: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Adds the next record (offset `self.next`). Batches that are complete are pushed to
    /// `ready`: the one this record did not fit in, and this one when it is full.
    pub(crate) fn push<T: Record>(&mut self, record: &T, ready: &mut Vec<Batch>) {
        let index = self.next;
        self.next = self.next.saturating_add(1);
        let json = match serde_json::to_vec(record) {
            Ok(json) => json,
            Err(err) => {
                self.refused.push(Rejected {
                    index,
                    id: record.id().map(str::to_owned),
                    reason: format!("could not be serialized: {err}"),
                });
                return;
            }
        };
        // `[` + record + `]`
        if json.len().saturating_add(2) > self.max_bytes {
            self.refused.push(Rejected {
                index,
                id: record.id().map(str::to_owned),
                reason: format!(
                    "record is {} bytes serialized, over the {}-byte request limit",
                    json.len(),
                    self.max_bytes
                ),
            });
            return;
        }
        // The body so far, a comma, the record and the closing bracket must fit.
        if !self.indices.is_empty()
            && self.body.len().saturating_add(json.len()).saturating_add(2) > self.max_bytes
        {
            ready.push(self.take(index));
        }
        self.body
            .push(if self.indices.is_empty() { b'[' } else { b',' });
        self.body.extend_from_slice(&json);
        self.indices.push(index);
        self.ids.push(record.id().map(str::to_owned));
        if self.indices.len() >= self.max_records {
            ready.push(self.take(self.next));
        }
    }

    /// What is left, as a last batch, when anything is.
    pub(crate) fn finish(&mut self) -> Option<Batch> {
        (self.start < self.next).then(|| self.take(self.next))
    }

    /// The records so far as a batch covering offsets up to `end`.
    fn take(&mut self, end: usize) -> Batch {
        let body = (!self.indices.is_empty()).then(|| {
            self.body.push(b']');
            Bytes::from(std::mem::take(&mut self.body))
        });
        let batch = Batch {
            body,
            start: self.start,
            end,
            indices: std::mem::take(&mut self.indices),
            ids: std::mem::take(&mut self.ids),
            refused: std::mem::take(&mut self.refused),
        };
        self.start = end;
        batch
    }
}

/// Splits `records` into batches, as a [`Packer`] does; the refused records are returned
/// apart.
#[cfg(test)]
pub(crate) fn split<T: Record>(
    records: &[T],
    max_records: usize,
    max_bytes: usize,
) -> (Vec<Batch>, Vec<Rejected>) {
    let mut packer = Packer::new(0, max_records, max_bytes);
    let mut ready = Vec::new();
    for record in records {
        packer.push(record, &mut ready);
    }
    ready.extend(packer.finish());
    let rejected = ready
        .iter_mut()
        .flat_map(|b| std::mem::take(&mut b.refused))
        .collect();
    ready.retain(|b| b.body.is_some());
    (ready, rejected)
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
            .flat_map(|b| serde_json::from_slice::<Vec<User>>(b.body.as_ref().unwrap()).unwrap())
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
            let len = batch.body.as_ref().unwrap().len();
            assert!(len <= limit, "{len} > {limit}");
            let parsed: Vec<Item> = serde_json::from_slice(batch.body.as_ref().unwrap()).unwrap();
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
    fn batches_cover_contiguous_ranges_refused_records_included() {
        let items = vec![
            Item::new("a"),
            Item::new("huge").attr("blob", "x".repeat(2_000)),
            Item::new("b"),
            Item::new("c"),
            Item::new("huge-2").attr("blob", "x".repeat(2_000)),
        ];
        let mut packer = Packer::new(10, 2, 1_000);
        let mut ready = Vec::new();
        for item in &items {
            packer.push(item, &mut ready);
        }
        ready.extend(packer.finish());
        let ranges: Vec<(usize, usize)> = ready.iter().map(|b| (b.start, b.end)).collect();
        assert_eq!(ranges, vec![(10, 13), (13, 15)]);
        assert_eq!(ready[0].indices, vec![10, 12]);
        assert_eq!(ready[0].refused[0].index, 11);
        assert_eq!(ready[1].indices, vec![13]);
        assert_eq!(ready[1].refused[0].index, 14);
        assert!(packer.finish().is_none());
    }

    #[test]
    fn nothing_to_send_makes_no_batch() {
        let (batches, rejected) = split::<User>(&[], 10, 100);
        assert!(batches.is_empty() && rejected.is_empty());
    }
}
