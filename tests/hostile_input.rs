//! Hostile input through the public API: what fuzzing found, and the cases of the bad-input
//! table in docs/reliability.md that no other test file covers. Each test is named for what
//! broke or what must hold.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue, Response};
use tower_outbound::dead_letter::Sink;
#[cfg(feature = "lehnz")]
use tower_outbound::lehnz::{ApiKey, Client, KeyError};
use tower_outbound::rate_limit::{
    parse_duration, parse_retry_after, HeaderError, MAX_ITEMS, MAX_VALUE_LEN, MAX_WAIT,
};
use tower_outbound::{JsonLinesSink, RateLimitInfo};

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// Found by the `lehnz_key` fuzz target: the check for a `Bearer ` prefix sliced the first
/// seven bytes of the key as a `str`, inside a multi-byte character.
#[cfg(feature = "lehnz")]
#[test]
fn lehnz_key_with_a_multibyte_char_across_byte_seven_is_refused_not_panicking() {
    for raw in [
        "are\u{fffd}\u{fffd}s_",
        "béarer x",
        "ééééééé",
        "lehnz_ä_key",
    ] {
        assert!(
            matches!(
                ApiKey::parse(raw),
                Err(KeyError::NotVisibleAscii | KeyError::InnerWhitespace)
            ),
            "{raw:?}"
        );
        assert!(Client::builder(raw).build().is_err());
    }
}

/// A `RateLimit` header of a few KB with many items; only the first [`MAX_ITEMS`]
/// count, and the result is the same as for those items alone.
#[test]
fn ratelimit_header_with_hundreds_of_items_reads_only_the_first_ones() {
    let items: Vec<String> = (0..200)
        .map(|i| format!("\"p{i}\";r={};t=5", 200 - i))
        .collect();
    let policies: Vec<String> = (0..200).map(|i| format!("\"p{i}\";q=1000;w=60")).collect();
    // A few KB each, under the line bound: read, but only so far.
    assert!(items.join(",").len() <= MAX_VALUE_LEN && policies.join(",").len() <= MAX_VALUE_LEN);
    let mut full = HeaderMap::new();
    full.insert(
        "ratelimit",
        HeaderValue::from_str(&items.join(",")).unwrap(),
    );
    full.insert(
        "ratelimit-policy",
        HeaderValue::from_str(&policies.join(",")).unwrap(),
    );
    let mut first = HeaderMap::new();
    first.insert(
        "ratelimit",
        HeaderValue::from_str(&items[..MAX_ITEMS].join(",")).unwrap(),
    );
    first.insert(
        "ratelimit-policy",
        HeaderValue::from_str(&policies[..MAX_ITEMS].join(",")).unwrap(),
    );
    let info = RateLimitInfo::from_headers_at(&full, now()).unwrap();
    assert_eq!(Some(info), RateLimitInfo::from_headers_at(&first, now()));
    assert_eq!(info.remaining, Some(200 - MAX_ITEMS as u64 + 1));
    assert_eq!(info.limit, Some(1000));
}

#[test]
fn header_values_that_are_not_utf8_are_skipped_not_fatal() {
    let mut headers = HeaderMap::new();
    headers.append(
        "retry-after",
        HeaderValue::from_bytes(b"\xff\xfe12").unwrap(),
    );
    headers.append(
        "ratelimit",
        HeaderValue::from_bytes(b"\"\xe9\";r=0;t=9").unwrap(),
    );
    headers.append(
        "x-ratelimit-reset-requests",
        HeaderValue::from_bytes(b"1\xb5s").unwrap(),
    );
    headers.append("retry-after", HeaderValue::from_static("3"));
    let info = RateLimitInfo::from_headers_at(&headers, now()).unwrap();
    assert_eq!(info.retry_after, Some(Duration::from_secs(3)));
}

#[test]
fn huge_zero_and_negative_waits_are_bounded_or_refused() {
    let value = |s: &'static str| HeaderValue::from_static(s);
    assert_eq!(
        parse_retry_after(&value("0"), None, now()),
        Ok(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after(&value("-1"), None, now()),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_retry_after(&value("99999999999999999999999"), None, now()),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_retry_after(&value("31536001"), None, now()),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_retry_after(&value("31536000"), None, now()),
        Ok(MAX_WAIT)
    );
    assert_eq!(parse_duration("-5s"), Err(HeaderError::OutOfRange));
    assert_eq!(
        parse_duration("9999999999999h"),
        Err(HeaderError::OutOfRange)
    );
}

#[test]
fn dates_far_in_the_past_and_future_never_overflow() {
    let far_future = HeaderValue::from_static("Fri, 31 Dec 9999 23:59:59 GMT");
    let far_past = HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT");
    for clock in [
        UNIX_EPOCH,
        now(),
        UNIX_EPOCH + Duration::from_secs(253_402_300_799),
    ] {
        let future = parse_retry_after(&far_future, None, clock);
        assert!(future == Err(HeaderError::OutOfRange) || future == Ok(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&far_past, None, clock),
            Ok(Duration::ZERO)
        );
    }
    // Epoch resets of every size, against a `Date` in the year 9999 and in 1970.
    for date in [
        "Fri, 31 Dec 9999 23:59:59 GMT",
        "Thu, 01 Jan 1970 00:00:00 GMT",
    ] {
        for reset in [
            "1000000000",
            "18446744073709551615",
            "999999999999999",
            "1000000000000",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("date", HeaderValue::from_static(date));
            headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            headers.insert("x-ratelimit-reset", HeaderValue::from_static(reset));
            let info = RateLimitInfo::from_headers_at(&headers, now()).unwrap();
            assert!(
                info.wait().is_none_or(|w| w <= MAX_WAIT),
                "{date} {reset}: {info:?}"
            );
        }
    }
}

#[test]
fn a_megabyte_rate_limit_header_is_ignored_unread() {
    let huge = format!("\"a\";r=0;t=9,{}", "x,".repeat(512 * 1024));
    let mut response = Response::new(());
    response
        .headers_mut()
        .insert("ratelimit", HeaderValue::from_str(&huge).unwrap());
    response.headers_mut().insert(
        "retry-after",
        HeaderValue::from_str(&format!("{}7", " ".repeat(MAX_VALUE_LEN))).unwrap(),
    );
    assert_eq!(RateLimitInfo::of_response(&mut response), None);
}

#[tokio::test]
async fn a_torn_or_binary_dead_letter_file_reads_without_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters.jsonl");
    std::fs::write(
        &path,
        b"{\"version\":1,\"id\":\n\xff\xfe\x00garbage\n{}\n[1,2]\n\"x\"\n{\"vers",
    )
    .unwrap();
    let sink = JsonLinesSink::new(&path);
    assert_eq!(sink.read_all().await.unwrap(), vec![]);
    assert_eq!(sink.count().await.unwrap(), 0);
    assert!(sink.skipped_lines() >= 5);
}

/// The committed seed of the `dead_letter_file` fuzz target: two whole letters (one with a
/// binary header value and a base64 body) and a torn last line.
#[tokio::test]
async fn the_dead_letter_fuzz_seed_reads_two_letters_and_skips_the_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters.jsonl");
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/seeds/dead_letter_file/two_letters"
    );
    std::fs::copy(seed, &path).unwrap();
    let sink = JsonLinesSink::new(&path);
    let letters = sink.read_all().await.unwrap();
    assert_eq!(letters.len(), 2);
    assert_eq!(sink.skipped_lines(), 1);
    let first = letters[0].to_request().unwrap();
    assert_eq!(first.headers()["x-bin"].as_bytes(), b"\xff");
    assert!(first.headers().get("authorization").is_none());
    assert!(letters[1].to_request().is_some());
}

/// Found by the `dead_letter_file` fuzz target: a file holding one letter twice (written again
/// after a crash, or joined by hand) was counted once by `count` but read twice by `read_all`.
#[tokio::test]
async fn a_letter_written_twice_is_counted_as_often_as_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("letters.jsonl");
    let seed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/seeds/dead_letter_file/one_letter_twice"
    );
    std::fs::copy(seed, &path).unwrap();
    let sink = JsonLinesSink::new(&path);
    let letters = sink.read_all().await.unwrap();
    assert_eq!(letters.len(), sink.count().await.unwrap());
    let twice = letters
        .iter()
        .find(|l| letters.iter().filter(|m| m.id == l.id).count() == 2)
        .expect("the seed holds one id twice")
        .id
        .clone();
    // Removing the id removes both copies, and the count follows.
    let before = letters.len();
    assert_eq!(sink.remove(std::slice::from_ref(&twice)).await.unwrap(), 2);
    assert_eq!(sink.count().await.unwrap(), before - 2);
    assert_eq!(sink.read_all().await.unwrap().len(), before - 2);
}
