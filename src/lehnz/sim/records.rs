//! The batch bodies Lehnz accepts and the rules each record must follow.

use serde_json::{json, Map, Value};

/// The three collections the API writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Collection {
    Events,
    Items,
    Users,
}

impl Collection {
    /// The key of the wrapped form of a batch: `{"events": [...]}`.
    pub(crate) fn wrapper(self) -> &'static str {
        match self {
            Collection::Events => "events",
            Collection::Items => "items",
            Collection::Users => "users",
        }
    }
}

/// Why a well-formed JSON body was refused.
#[derive(Debug, PartialEq)]
pub(crate) enum BatchError {
    /// Neither an array nor the wrapped form (400 `invalid_body`).
    Shape(String),
    /// Some records break the rules (422 `validation_failed`); nothing is stored.
    Invalid(Vec<Problem>),
}

/// One broken rule of one record: an entry of the 422 `details`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Problem {
    pub(crate) index: usize,
    pub(crate) field: &'static str,
    pub(crate) message: &'static str,
}

impl Problem {
    pub(crate) fn to_json(&self) -> Value {
        json!({ "index": self.index, "field": self.field, "message": self.message })
    }
}

/// A record as stored: a JSON object that passed its collection's rules.
pub(crate) type Record = Map<String, Value>;

/// Takes the records out of a batch body and checks every one of them; all problems of all
/// records are reported, in order.
pub(crate) fn records(collection: Collection, body: Value) -> Result<Vec<Record>, BatchError> {
    let list = match body {
        Value::Array(list) => list,
        Value::Object(mut wrapped) => match wrapped.remove(collection.wrapper()) {
            Some(Value::Array(list)) => list,
            _ => return Err(shape_error(collection)),
        },
        _ => return Err(shape_error(collection)),
    };
    let mut problems = Vec::new();
    let mut out = Vec::with_capacity(list.len());
    for (index, record) in list.into_iter().enumerate() {
        match record {
            Value::Object(record) => {
                check(collection, index, &record, &mut problems);
                out.push(record);
            }
            _ => problems.push(Problem {
                index,
                field: "record",
                message: "must be a JSON object",
            }),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(BatchError::Invalid(problems))
    }
}

fn shape_error(collection: Collection) -> BatchError {
    let key = collection.wrapper();
    BatchError::Shape(format!(
        "expected a JSON array of {key} or an object {{\"{key}\": [...]}}"
    ))
}

fn check(collection: Collection, index: usize, record: &Record, problems: &mut Vec<Problem>) {
    let mut required = |field: &'static str| {
        let message = match record.get(field) {
            None | Some(Value::Null) => "is required",
            Some(Value::String(s)) if s.is_empty() => "must not be empty",
            Some(Value::String(_)) => return,
            Some(_) => "must be a string",
        };
        problems.push(Problem {
            index,
            field,
            message,
        });
    };
    match collection {
        Collection::Events => {
            required("user_id");
            required("item_id");
            required("event_type");
            if !matches!(
                record.get("timestamp"),
                None | Some(Value::Null | Value::String(_))
            ) {
                problems.push(Problem {
                    index,
                    field: "timestamp",
                    message: "must be a string",
                });
            }
            if !matches!(
                record.get("context"),
                None | Some(Value::Null | Value::Object(_))
            ) {
                problems.push(Problem {
                    index,
                    field: "context",
                    message: "must be an object",
                });
            }
        }
        Collection::Items => required("item_id"),
        Collection::Users => required("user_id"),
    }
}

/// The client's id of an event, `context.client_event_id`, when it is a string.
pub(crate) fn client_event_id(event: &Record) -> Option<&str> {
    event.get("context")?.get("client_event_id")?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_arrays_and_the_matching_wrapper() {
        let event = json!({"user_id": "u", "item_id": "i", "event_type": "view"});
        assert_eq!(
            records(Collection::Events, json!([event.clone()]))
                .unwrap()
                .len(),
            1
        );
        let wrapped = json!({ "events": [event.clone(), event.clone()] });
        assert_eq!(records(Collection::Events, wrapped).unwrap().len(), 2);
        let wrong = json!({ "items": [event.clone()] });
        assert!(matches!(
            records(Collection::Events, wrong),
            Err(BatchError::Shape(_))
        ));
        assert!(matches!(
            records(Collection::Events, event),
            Err(BatchError::Shape(_))
        ));
    }

    #[test]
    fn reports_every_problem_with_its_index() {
        let body = json!([
            {"user_id": "u", "item_id": "i", "event_type": "view"},
            {"user_id": "", "item_id": 3, "timestamp": 5, "context": "x"},
            "not an object",
        ]);
        let Err(BatchError::Invalid(problems)) = records(Collection::Events, body) else {
            panic!("expected validation problems");
        };
        let got: Vec<_> = problems.iter().map(|p| (p.index, p.field)).collect();
        assert_eq!(
            got,
            [
                (1, "user_id"),
                (1, "item_id"),
                (1, "event_type"),
                (1, "timestamp"),
                (1, "context"),
                (2, "record")
            ]
        );
        assert_eq!(problems[0].message, "must not be empty");
        assert_eq!(problems[1].message, "must be a string");
        assert_eq!(problems[2].message, "is required");
    }

    #[test]
    fn items_and_users_need_only_their_id() {
        let items = json!([{"item_id": "a", "status": "inactive", "price": 3}]);
        assert!(records(Collection::Items, items).is_ok());
        let users = json!({"users": [{"name": "no id"}]});
        let Err(BatchError::Invalid(problems)) = records(Collection::Users, users) else {
            panic!("expected validation problems");
        };
        assert_eq!(
            problems,
            [Problem {
                index: 0,
                field: "user_id",
                message: "is required"
            }]
        );
    }

    #[test]
    fn finds_the_client_event_id() {
        let with = json!({"context": {"client_event_id": "e-1"}});
        let without = json!({"context": {"client_event_id": 7}});
        assert_eq!(client_event_id(with.as_object().unwrap()), Some("e-1"));
        assert_eq!(client_event_id(without.as_object().unwrap()), None);
    }
}
