use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderName, HeaderValue, Response};
use proptest::prelude::*;

use super::*;

/// Sun, 06 Nov 1994 08:49:37 GMT, the RFC 9110 example date.
const RFC_DATE_SECS: u64 = 784_111_777;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn at(unix_secs: u64) -> SystemTime {
    UNIX_EPOCH + secs(unix_secs)
}

fn hv(s: &'static str) -> HeaderValue {
    HeaderValue::from_static(s)
}

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for &(name, value) in pairs {
        map.append(HeaderName::from_static(name), hv(value));
    }
    map
}

fn info(pairs: &[(&'static str, &'static str)]) -> Option<RateLimitInfo> {
    RateLimitInfo::from_headers_at(&headers(pairs), at(RFC_DATE_SECS))
}

fn quota(
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<u64>,
    window: Option<u64>,
) -> RateLimitInfo {
    RateLimitInfo {
        retry_after: None,
        limit,
        remaining,
        reset: reset.map(secs),
        window: window.map(secs),
    }
}

// ---------------------------------------------------------------------------------------------
// delta-seconds

#[test]
fn delta_seconds_plain_values() {
    assert_eq!(parse_delta_seconds(b"0"), Ok(Duration::ZERO));
    assert_eq!(parse_delta_seconds(b"1"), Ok(secs(1)));
    assert_eq!(parse_delta_seconds(b"120"), Ok(secs(120)));
    assert_eq!(parse_delta_seconds(b"007"), Ok(secs(7)));
}

#[test]
fn delta_seconds_tolerates_surrounding_whitespace() {
    assert_eq!(parse_delta_seconds(b"  30"), Ok(secs(30)));
    assert_eq!(parse_delta_seconds(b"30 \t"), Ok(secs(30)));
    assert_eq!(parse_delta_seconds(b"\t30\t"), Ok(secs(30)));
}

#[test]
fn delta_seconds_empty_is_malformed() {
    assert_eq!(parse_delta_seconds(b""), Err(HeaderError::Malformed));
}

#[test]
fn delta_seconds_whitespace_only_is_malformed() {
    assert_eq!(parse_delta_seconds(b"   "), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b" \t "), Err(HeaderError::Malformed));
}

#[test]
fn delta_seconds_non_utf8_is_not_text() {
    assert_eq!(parse_delta_seconds(b"\xff"), Err(HeaderError::NotText));
    assert_eq!(parse_delta_seconds(b"3\xff0"), Err(HeaderError::NotText));
    assert_eq!(
        parse_delta_seconds("3０".as_bytes()),
        Err(HeaderError::NotText)
    );
}

#[test]
fn delta_seconds_control_bytes_are_not_text() {
    assert_eq!(parse_delta_seconds(b"30\r\n"), Err(HeaderError::NotText));
    assert_eq!(parse_delta_seconds(b"\x0030"), Err(HeaderError::NotText));
    assert_eq!(parse_delta_seconds(b"30\x7f"), Err(HeaderError::NotText));
}

#[test]
fn delta_seconds_negative_is_out_of_range() {
    assert_eq!(parse_delta_seconds(b"-5"), Err(HeaderError::OutOfRange));
    assert_eq!(parse_delta_seconds(b"-0"), Err(HeaderError::OutOfRange));
    // A lone or doubled sign is not a number at all.
    assert_eq!(parse_delta_seconds(b"-"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"--5"), Err(HeaderError::Malformed));
}

#[test]
fn delta_seconds_plus_sign_is_malformed() {
    assert_eq!(parse_delta_seconds(b"+5"), Err(HeaderError::Malformed));
}

#[test]
fn delta_seconds_fraction_is_malformed() {
    assert_eq!(parse_delta_seconds(b"5.0"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"0.5"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"5."), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"1e3"), Err(HeaderError::Malformed));
}

#[test]
fn delta_seconds_overflow_is_out_of_range() {
    assert_eq!(
        parse_delta_seconds(b"99999999999999999999"),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_delta_seconds(b"18446744073709551616"),
        Err(HeaderError::OutOfRange)
    );
}

#[test]
fn delta_seconds_over_a_year_is_out_of_range() {
    let year = MAX_WAIT.as_secs();
    assert_eq!(year, 365 * 24 * 3600);
    assert_eq!(
        parse_delta_seconds(year.to_string().as_bytes()),
        Ok(MAX_WAIT)
    );
    assert_eq!(
        parse_delta_seconds((year + 1).to_string().as_bytes()),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_delta_seconds(b"18446744073709551615"),
        Err(HeaderError::OutOfRange)
    );
}

#[test]
fn delta_seconds_garbage_suffix_is_malformed() {
    assert_eq!(parse_delta_seconds(b"10abc"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"10s"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"10,20"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"1 0"), Err(HeaderError::Malformed));
    assert_eq!(parse_delta_seconds(b"abc"), Err(HeaderError::Malformed));
}

// ---------------------------------------------------------------------------------------------
// HTTP-dates

#[test]
fn http_date_accepts_all_three_rfc_9110_forms() {
    let expected = Ok(at(RFC_DATE_SECS));
    assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), expected);
    assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), expected);
    assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), expected);
    assert_eq!(
        parse_http_date(b"  Sun, 06 Nov 1994 08:49:37 GMT\t"),
        expected
    );
}

#[test]
fn http_date_bad_dates_are_malformed() {
    for bad in [
        &b"Mon, 06 Nov 1994 08:49:37 GMT"[..], // wrong weekday
        b"Sun, 06 Nov 1994 08:49:37",          // no zone
        b"Sun, 06 Nov 1994 25:49:37 GMT",      // hour 25
        b"Thu, 30 Feb 2023 10:00:00 GMT",      // February 30th
        b"Sun, 06 Nov 1994",
        b"tomorrow",
        b"Sun, 06 Nov 1969 08:49:37 GMT", // before 1970
        b"1994-11-06T08:49:37Z",
    ] {
        assert_eq!(
            parse_http_date(bad),
            Err(HeaderError::Malformed),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(parse_http_date(b""), Err(HeaderError::Malformed));
    assert_eq!(
        parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT\xff"),
        Err(HeaderError::NotText)
    );
}

#[test]
fn http_date_in_year_9999_parses_but_is_no_wait() {
    let date = parse_http_date(b"Fri, 31 Dec 9999 23:59:59 GMT").unwrap();
    assert_eq!(date, at(253_402_300_799));
    assert_eq!(
        parse_retry_after(
            &hv("Fri, 31 Dec 9999 23:59:59 GMT"),
            None,
            at(RFC_DATE_SECS)
        ),
        Err(HeaderError::OutOfRange)
    );
}

// ---------------------------------------------------------------------------------------------
// Retry-After

#[test]
fn retry_after_delta_seconds() {
    let now = at(RFC_DATE_SECS);
    assert_eq!(parse_retry_after(&hv("120"), None, now), Ok(secs(120)));
    assert_eq!(parse_retry_after(&hv("0"), None, now), Ok(Duration::ZERO));
    // A server date changes nothing about a delta.
    assert_eq!(
        parse_retry_after(&hv("120"), Some(at(1)), now),
        Ok(secs(120))
    );
}

#[test]
fn retry_after_date_relative_to_now_in_all_three_forms() {
    let now = at(RFC_DATE_SECS - 30);
    for date in [
        "Sun, 06 Nov 1994 08:49:37 GMT",
        "Sunday, 06-Nov-94 08:49:37 GMT",
        "Sun Nov  6 08:49:37 1994",
    ] {
        assert_eq!(
            parse_retry_after(&hv(date), None, now),
            Ok(secs(30)),
            "{date}"
        );
    }
}

#[test]
fn retry_after_past_date_is_zero() {
    let date = hv("Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(
        parse_retry_after(&date, None, at(RFC_DATE_SECS + 100)),
        Ok(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after(&date, None, at(RFC_DATE_SECS)),
        Ok(Duration::ZERO)
    );
    assert_eq!(
        parse_retry_after(&date, Some(at(RFC_DATE_SECS + 1)), at(0)),
        Ok(Duration::ZERO)
    );
}

#[test]
fn retry_after_date_counts_from_server_date_when_client_clock_is_ahead() {
    // The client's clock is an hour ahead: counted from it, the date would be in the past.
    let date = hv("Sun, 06 Nov 1994 08:49:37 GMT");
    let server = at(RFC_DATE_SECS - 30);
    let client = at(RFC_DATE_SECS + 3600);
    assert_eq!(parse_retry_after(&date, Some(server), client), Ok(secs(30)));
}

#[test]
fn retry_after_date_counts_from_server_date_when_client_clock_is_behind() {
    // The client's clock is an hour behind: counted from it, the wait would be an hour longer.
    let date = hv("Sun, 06 Nov 1994 08:49:37 GMT");
    let server = at(RFC_DATE_SECS - 30);
    let client = at(RFC_DATE_SECS - 30 - 3600);
    assert_eq!(parse_retry_after(&date, Some(server), client), Ok(secs(30)));
}

#[test]
fn retry_after_date_rounds_up_from_a_sub_second_now() {
    let date = hv("Sun, 06 Nov 1994 08:49:37 GMT");
    let now = at(RFC_DATE_SECS - 5) + Duration::from_millis(300);
    assert_eq!(parse_retry_after(&date, None, now), Ok(secs(5)));
    let now = at(RFC_DATE_SECS - 1) + Duration::from_nanos(1);
    assert_eq!(parse_retry_after(&date, None, now), Ok(secs(1)));
    let now = at(RFC_DATE_SECS) - Duration::from_nanos(1);
    assert_eq!(parse_retry_after(&date, None, now), Ok(secs(1)));
}

#[test]
fn retry_after_date_more_than_a_year_ahead_is_out_of_range() {
    let date = hv("Sun, 06 Nov 1994 08:49:37 GMT");
    let now = at(RFC_DATE_SECS) - MAX_WAIT;
    assert_eq!(parse_retry_after(&date, None, now), Ok(MAX_WAIT));
    let now = now - Duration::from_millis(1);
    assert_eq!(
        parse_retry_after(&date, None, now),
        Err(HeaderError::OutOfRange)
    );
}

#[test]
fn retry_after_bad_values_say_what_is_wrong() {
    let now = at(RFC_DATE_SECS);
    let cases: [(&[u8], HeaderError); 12] = [
        (b"", HeaderError::Malformed),
        (b"   ", HeaderError::Malformed),
        (b"\xff", HeaderError::NotText),
        (b"12\xe9", HeaderError::NotText),
        (b"-5", HeaderError::OutOfRange),
        (b"+5", HeaderError::Malformed),
        (b"5.0", HeaderError::Malformed),
        (b"99999999999999999999", HeaderError::OutOfRange),
        (b"31536001", HeaderError::OutOfRange),
        (b"10abc", HeaderError::Malformed),
        (b"Sun, 32 Nov 1994 08:49:37 GMT", HeaderError::Malformed),
        (b"soon", HeaderError::Malformed),
    ];
    for (bytes, expected) in cases {
        let value = HeaderValue::from_bytes(bytes).unwrap();
        assert_eq!(
            parse_retry_after(&value, None, now),
            Err(expected),
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Duration strings

#[test]
fn duration_openai_and_go_forms() {
    let ms = Duration::from_millis;
    let cases = [
        ("1s", secs(1)),
        ("0s", Duration::ZERO),
        ("6m0s", secs(360)),
        ("1m30s", secs(90)),
        ("1h2m3.5s", ms(3_723_500)),
        ("250ms", ms(250)),
        ("20ms", ms(20)),
        ("0.5s", ms(500)),
        (".5s", ms(500)),
        ("5.s", secs(5)),
        ("2.5h", secs(9000)),
        ("7.66s", ms(7660)),
        ("1.5m", secs(90)),
        ("1us", Duration::from_micros(1)),
        ("1µs", Duration::from_micros(1)),
        ("1μs", Duration::from_micros(1)),
        ("5ns", Duration::from_nanos(5)),
        ("1h1ms1ns", secs(3600) + ms(1) + Duration::from_nanos(1)),
        ("1s1s", secs(2)),
        (" 6m0s\t", secs(360)),
    ];
    for (text, expected) in cases {
        assert_eq!(parse_duration(text), Ok(expected), "{text}");
    }
}

#[test]
fn duration_rounds_fractions_finer_than_a_nanosecond_up() {
    assert_eq!(parse_duration("0.1ns"), Ok(Duration::from_nanos(1)));
    assert_eq!(parse_duration("1.0001us"), Ok(Duration::from_nanos(1001)));
    assert_eq!(
        parse_duration("1.0000000001s"),
        Ok(secs(1) + Duration::from_nanos(1))
    );
    // Digits beyond the 18th still count.
    assert_eq!(
        parse_duration("0.0000000000000000001s"),
        Ok(Duration::from_nanos(1))
    );
    assert_eq!(
        parse_duration("0.5000000000000000000000s"),
        Ok(Duration::from_millis(500))
    );
}

#[test]
fn duration_bare_number_is_malformed() {
    assert_eq!(parse_duration("30"), Err(HeaderError::Malformed));
    assert_eq!(parse_duration("0"), Err(HeaderError::Malformed));
    assert_eq!(parse_duration("1.5"), Err(HeaderError::Malformed));
    assert_eq!(parse_duration("1s30"), Err(HeaderError::Malformed));
}

#[test]
fn duration_bad_syntax_is_malformed() {
    for bad in [
        "", "  ", "s", "ms", ".s", "1x", "1S", "1 s", "1s 2m", "+1s", "1d", "1.2.3s", "1,5s",
        "abc", "1sabc", "--1s",
    ] {
        assert_eq!(parse_duration(bad), Err(HeaderError::Malformed), "{bad:?}");
    }
}

#[test]
fn duration_negative_is_out_of_range() {
    assert_eq!(parse_duration("-1s"), Err(HeaderError::OutOfRange));
    assert_eq!(parse_duration("-0s"), Err(HeaderError::OutOfRange));
    assert_eq!(parse_duration("-1h2m"), Err(HeaderError::OutOfRange));
    assert_eq!(parse_duration("-"), Err(HeaderError::Malformed));
}

#[test]
fn duration_overflow_is_out_of_range() {
    assert_eq!(
        parse_duration("99999999999999999999s"),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_duration("18446744073709551615h"),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(parse_duration("9999999999h"), Err(HeaderError::OutOfRange));
}

#[test]
fn duration_over_a_year_is_out_of_range() {
    assert_eq!(parse_duration("8760h"), Ok(MAX_WAIT));
    assert_eq!(parse_duration("8760h1ns"), Err(HeaderError::OutOfRange));
    assert_eq!(parse_duration("8761h"), Err(HeaderError::OutOfRange));
    assert_eq!(
        parse_duration("8759h59m60.000000001s"),
        Err(HeaderError::OutOfRange)
    );
}

#[test]
fn duration_non_text_is_not_text() {
    assert_eq!(parse_duration("1s\u{1}"), Err(HeaderError::NotText));
    assert_eq!(parse_duration("1é"), Err(HeaderError::NotText));
    assert_eq!(parse_duration("1\u{7f}s"), Err(HeaderError::NotText));
}

// ---------------------------------------------------------------------------------------------
// from_headers: Retry-After

#[test]
fn no_rate_limit_headers_is_none() {
    assert_eq!(info(&[]), None);
    assert_eq!(
        info(&[
            ("content-type", "text/plain"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT")
        ]),
        None
    );
}

#[test]
fn only_unusable_headers_is_none() {
    assert_eq!(
        info(&[
            ("retry-after", "soon"),
            ("x-ratelimit-remaining", "-1"),
            ("ratelimit", "garbage"),
            ("x-ratelimit-reset-requests", "30"),
        ]),
        None
    );
}

#[test]
fn retry_after_header_alone() {
    let got = info(&[("retry-after", "7")]).unwrap();
    assert_eq!(got.retry_after, Some(secs(7)));
    assert_eq!(got.remaining, None);
    assert_eq!(got.wait(), Some(secs(7)));
}

#[test]
fn several_retry_after_lines_longest_valid_wins() {
    let got = info(&[
        ("retry-after", "5"),
        ("retry-after", "garbage"),
        ("retry-after", "Sun, 06 Nov 1994 08:50:37 GMT"), // 60s after now
        ("retry-after", "99999999999999999999"),
        ("retry-after", "20"),
    ])
    .unwrap();
    assert_eq!(got.retry_after, Some(secs(60)));
}

#[test]
fn retry_after_date_counts_from_the_date_header() {
    // The client clock is 2 minutes ahead of the server.
    let mut map = headers(&[
        ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("retry-after", "Sun, 06 Nov 1994 08:50:07 GMT"),
    ]);
    let ahead = RateLimitInfo::from_headers_at(&map, at(RFC_DATE_SECS + 120)).unwrap();
    assert_eq!(ahead.retry_after, Some(secs(30)));
    // ...and 2 minutes behind.
    let behind = RateLimitInfo::from_headers_at(&map, at(RFC_DATE_SECS - 120)).unwrap();
    assert_eq!(behind.retry_after, Some(secs(30)));
    // A broken Date header falls back to now.
    map.insert(http::header::DATE, hv("yesterday"));
    let fallback = RateLimitInfo::from_headers_at(&map, at(RFC_DATE_SECS + 10)).unwrap();
    assert_eq!(fallback.retry_after, Some(secs(20)));
}

// ---------------------------------------------------------------------------------------------
// from_headers: RateLimit-* separate headers

#[test]
fn separate_ratelimit_headers() {
    let got = info(&[
        ("ratelimit-limit", "100"),
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "30"),
    ]);
    assert_eq!(got, Some(quota(Some(100), Some(0), Some(30), None)));
}

#[test]
fn separate_ratelimit_headers_with_policy_members() {
    // Early drafts: the first member is the limit, later ones describe policies.
    let got = info(&[
        ("ratelimit-limit", "50, 10;w=1, 50;w=60"),
        ("ratelimit-remaining", "49"),
        ("ratelimit-reset", "12"),
    ]);
    assert_eq!(got, Some(quota(Some(50), Some(49), Some(12), Some(60))));
    // Or a RateLimit-Policy header alongside.
    let got = info(&[
        ("ratelimit-limit", "10"),
        ("ratelimit-remaining", "3"),
        ("ratelimit-policy", "10;w=1, 50;w=60"),
    ]);
    assert_eq!(got, Some(quota(Some(10), Some(3), None, Some(1))));
}

#[test]
fn separate_ratelimit_headers_bad_values_are_skipped_one_by_one() {
    let got = info(&[
        ("ratelimit-limit", "100"),
        ("ratelimit-remaining", "5.0"),
        ("ratelimit-reset", "-3"),
    ]);
    assert_eq!(got, Some(quota(Some(100), None, None, None)));
}

#[test]
fn separate_ratelimit_headers_fraction_is_skipped() {
    let got = info(&[("ratelimit-remaining", "0"), ("ratelimit-reset", "1.5")]);
    assert_eq!(got, Some(quota(None, Some(0), None, None)));
}

#[test]
fn repeated_lines_take_smallest_remaining_and_longest_reset() {
    let got = info(&[
        ("ratelimit-remaining", "7"),
        ("ratelimit-remaining", "2, 4"),
        ("ratelimit-reset", "10"),
        ("ratelimit-reset", "40"),
        ("ratelimit-reset", "nope"),
    ]);
    assert_eq!(got, Some(quota(None, Some(2), Some(40), None)));
}

// ---------------------------------------------------------------------------------------------
// from_headers: RateLimit dictionary and structured fields

#[test]
fn ratelimit_dictionary_with_policy() {
    let got = info(&[
        ("ratelimit", "limit=100, remaining=0, reset=30"),
        ("ratelimit-policy", "10;w=1, 100;w=60"),
    ]);
    assert_eq!(got, Some(quota(Some(100), Some(0), Some(30), Some(60))));
}

#[test]
fn ratelimit_dictionary_without_limit_takes_the_first_policy() {
    let got = info(&[
        ("ratelimit", "remaining=4, reset=3"),
        ("ratelimit-policy", "10;w=1;burst=5"),
    ]);
    assert_eq!(got, Some(quota(Some(10), Some(4), Some(3), Some(1))));
}

#[test]
fn ratelimit_dictionary_ignores_unknown_keys_and_bad_values() {
    let got = info(&[(
        "ratelimit",
        "policy=x, limit=abc, remaining=3, reset=-1, foo=9",
    )]);
    assert_eq!(got, Some(quota(None, Some(3), None, None)));
}

#[test]
fn structured_single_policy() {
    let got = info(&[
        ("ratelimit", "\"default\";r=0;t=30"),
        ("ratelimit-policy", "\"default\";q=100;w=60"),
    ]);
    assert_eq!(got, Some(quota(Some(100), Some(0), Some(30), Some(60))));
}

#[test]
fn structured_without_policy_header() {
    let got = info(&[("ratelimit", "\"default\";r=12;t=3")]);
    assert_eq!(got, Some(quota(None, Some(12), Some(3), None)));
}

#[test]
fn structured_several_items_fewest_remaining_wins() {
    let got = info(&[
        (
            "ratelimit",
            "\"hour\";r=40;t=3000, \"minute\";r=2;t=20, \"day\";r=900;t=80000",
        ),
        (
            "ratelimit-policy",
            "\"hour\";q=100;w=3600, \"minute\";q=10;w=60, \"day\";q=1000;w=86400",
        ),
    ]);
    assert_eq!(got, Some(quota(Some(10), Some(2), Some(20), Some(60))));
}

#[test]
fn structured_several_exhausted_items_longest_reset_wins() {
    let got = info(&[
        (
            "ratelimit",
            "\"minute\";r=0;t=20, \"hour\";r=0;t=1800, \"day\";r=5;t=9000",
        ),
        (
            "ratelimit-policy",
            "\"minute\";q=10;w=60, \"hour\";q=100;w=3600, \"day\";q=1000;w=86400",
        ),
    ]);
    let got = got.unwrap();
    assert_eq!(got, quota(Some(100), Some(0), Some(1800), Some(3600)));
    assert_eq!(got.wait(), Some(secs(1800)));
}

#[test]
fn structured_parameters_in_any_order_and_unknown_ones_ignored() {
    let got = info(&[
        ("ratelimit", "\"a\";t=30;x=\"r=99\";r=1;pk=:abc=:"),
        (
            "ratelimit-policy",
            "\"a\";w=60;comment=\"q=5, w=1\";qu=\"x\";q=10",
        ),
    ]);
    assert_eq!(got, Some(quota(Some(10), Some(1), Some(30), Some(60))));
}

#[test]
fn structured_token_names_and_names_with_commas() {
    let got = info(&[
        ("ratelimit", "default;r=3;t=9, \"per, user\";r=1;t=4"),
        (
            "ratelimit-policy",
            "default;q=50;w=10, \"per, user\";q=5;w=2",
        ),
    ]);
    assert_eq!(got, Some(quota(Some(5), Some(1), Some(4), Some(2))));
}

#[test]
fn structured_items_across_several_lines() {
    let got = info(&[
        ("ratelimit", "\"a\";r=9;t=1"),
        ("ratelimit", "\"b\";r=0;t=8"),
        ("ratelimit-policy", "\"a\";q=10"),
        ("ratelimit-policy", "\"b\";q=20;w=30"),
    ]);
    assert_eq!(got, Some(quota(Some(20), Some(0), Some(8), Some(30))));
}

#[test]
fn structured_malformed_items_and_parameters_are_skipped() {
    let got = info(&[
        (
            "ratelimit",
            "(\"a\" \"b\");r=0;t=99, \"open;r=0;t=50, -1;r=0, \"ok\";r=-1;t=1.5, \"good\";r=4;t=7",
        ),
        ("ratelimit-policy", "\"good\";q=-3;w=abc"),
    ]);
    // "open... is an unterminated string that swallows the rest of the line.
    assert_eq!(got, None);
    let got = info(&[
        (
            "ratelimit",
            "(\"a\" \"b\");r=0;t=99, \"ok\";r=-1;t=1.5, \"good\";r=4;t=7",
        ),
        ("ratelimit-policy", "\"good\";q=-3;w=abc"),
    ]);
    assert_eq!(got, Some(quota(None, Some(4), Some(7), None)));
}

// ---------------------------------------------------------------------------------------------
// from_headers: X-RateLimit-*

#[test]
fn x_ratelimit_delta_reset() {
    let got = info(&[
        ("x-ratelimit-limit", "60"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "42"),
    ]);
    assert_eq!(got, Some(quota(Some(60), Some(0), Some(42), None)));
}

#[test]
fn x_ratelimit_epoch_seconds_reset_counts_from_now_rounded_up() {
    let map = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000030"),
    ]);
    let now = at(1_700_000_000) + Duration::from_millis(250);
    let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
    assert_eq!(got.reset, Some(secs(30)));
}

#[test]
fn x_ratelimit_epoch_counts_from_the_date_header_both_ways() {
    // Date is 1_700_000_000 = Tue, 14 Nov 2023 22:13:20 GMT.
    let map = headers(&[
        ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000045"),
    ]);
    for skew in [-600i64, 600] {
        let now = at(1_700_000_000u64.checked_add_signed(skew).unwrap());
        let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
        assert_eq!(got.reset, Some(secs(45)), "skew {skew}");
    }
}

#[test]
fn x_ratelimit_epoch_milliseconds() {
    let map = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1700000001500"),
    ]);
    let got = RateLimitInfo::from_headers_at(&map, at(1_700_000_000)).unwrap();
    assert_eq!(got.reset, Some(Duration::from_millis(1500)));
    // Rounded up to whole milliseconds.
    let now = at(1_700_000_000) + Duration::from_micros(100);
    let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
    assert_eq!(got.reset, Some(Duration::from_millis(1500)));
}

#[test]
fn x_ratelimit_past_epoch_is_zero() {
    let map = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1600000000"),
    ]);
    let got = RateLimitInfo::from_headers_at(&map, at(1_700_000_000)).unwrap();
    assert_eq!(got.reset, Some(Duration::ZERO));
    assert_eq!(got.wait(), Some(Duration::ZERO));
}

#[test]
fn x_ratelimit_epoch_or_delta_detection_boundary() {
    let now = at(1_000_000_000 - 10);
    // Just below the boundary it is a delta, and an absurd one: skipped.
    let map = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "999999999"),
    ]);
    let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
    assert_eq!(got.reset, None);
    // At the boundary it is a timestamp.
    let map = headers(&[
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "1000000000"),
    ]);
    let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
    assert_eq!(got.reset, Some(secs(10)));
    // Likewise for RateLimit-Reset.
    let map = headers(&[
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "1000000000"),
    ]);
    let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
    assert_eq!(got.reset, Some(secs(10)));
}

#[test]
fn x_ratelimit_absurd_resets_are_skipped() {
    let now = at(1_700_000_000);
    for reset in [
        "99999999999999999999",
        "9999999999",    // year 2286 in seconds
        "9999999999999", // year 2286 in milliseconds
        "31536001",
        "-1",
    ] {
        let mut map = headers(&[("x-ratelimit-limit", "10"), ("x-ratelimit-remaining", "0")]);
        map.insert("x-ratelimit-reset", HeaderValue::from_str(reset).unwrap());
        let got = RateLimitInfo::from_headers_at(&map, now).unwrap();
        assert_eq!(got, quota(Some(10), Some(0), None, None), "{reset}");
    }
}

#[test]
fn x_ratelimit_non_text_values_are_skipped() {
    let mut map = headers(&[("x-ratelimit-limit", "10"), ("x-ratelimit-reset", "30")]);
    map.insert(
        "x-ratelimit-remaining",
        HeaderValue::from_bytes(b"\xff0").unwrap(),
    );
    map.insert("retry-after", HeaderValue::from_bytes(b"3\xff").unwrap());
    let got = RateLimitInfo::from_headers_at(&map, at(0)).unwrap();
    assert_eq!(got, quota(Some(10), None, Some(30), None));
}

// ---------------------------------------------------------------------------------------------
// from_headers: OpenAI

#[test]
fn openai_fewest_remaining_picks_the_quota() {
    let got = info(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "59"),
        ("x-ratelimit-reset-requests", "1s"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "12"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    assert_eq!(got, Some(quota(Some(150000), Some(12), Some(360), None)));
}

#[test]
fn openai_requests_quota_tighter() {
    let got = info(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "20ms"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "149000"),
        ("x-ratelimit-reset-tokens", "400ms"),
    ])
    .unwrap();
    assert_eq!(got.limit, Some(60));
    assert_eq!(got.remaining, Some(0));
    assert_eq!(got.reset, Some(Duration::from_millis(20)));
    assert_eq!(got.wait(), Some(Duration::from_millis(20)));
}

#[test]
fn openai_both_exhausted_longest_reset_wins() {
    let got = info(&[
        ("x-ratelimit-limit-requests", "60"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "1h2m3.5s"),
        ("x-ratelimit-limit-tokens", "150000"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ])
    .unwrap();
    assert_eq!(got.limit, Some(60));
    assert_eq!(got.reset, Some(Duration::from_millis(3_723_500)));
}

#[test]
fn openai_bare_number_reset_is_skipped() {
    let got = info(&[
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-requests", "30"),
    ]);
    assert_eq!(got, Some(quota(None, Some(0), None, None)));
}

#[test]
fn openai_micro_sign_reset() {
    let mut map = headers(&[("x-ratelimit-remaining-tokens", "0")]);
    map.insert(
        "x-ratelimit-reset-tokens",
        HeaderValue::from_bytes("250µs".as_bytes()).unwrap(),
    );
    let got = RateLimitInfo::from_headers_at(&map, at(0)).unwrap();
    assert_eq!(got.reset, Some(Duration::from_micros(250)));
}

// ---------------------------------------------------------------------------------------------
// from_headers: combining sources

#[test]
fn sources_combine_to_the_smallest_remaining() {
    let got = info(&[
        ("ratelimit-limit", "100"),
        ("ratelimit-remaining", "5"),
        ("ratelimit-reset", "10"),
        ("x-ratelimit-limit", "20"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "50"),
    ]);
    assert_eq!(got, Some(quota(Some(20), Some(0), Some(50), None)));
}

#[test]
fn sources_exhausted_in_several_places_take_the_longest_reset() {
    let got = info(&[
        ("ratelimit", "\"a\";r=0;t=15"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "45"),
        ("x-ratelimit-remaining-tokens", "0"),
        ("x-ratelimit-reset-tokens", "30s"),
    ])
    .unwrap();
    assert_eq!(got.remaining, Some(0));
    assert_eq!(got.reset, Some(secs(45)));
}

#[test]
fn sources_describing_the_same_quota_fill_each_other_in() {
    let got = info(&[
        ("ratelimit-remaining", "0"),
        ("x-ratelimit-limit", "100"),
        ("x-ratelimit-remaining", "0"),
        ("x-ratelimit-reset", "30"),
        ("ratelimit-policy", "100;w=60"),
        ("ratelimit-limit", "100"),
    ]);
    assert_eq!(got, Some(quota(Some(100), Some(0), Some(30), Some(60))));
    // A reset alone (no remaining) completes a quota that lacks one.
    let got = info(&[("ratelimit-reset", "30"), ("x-ratelimit-remaining", "0")]);
    assert_eq!(got, Some(quota(None, Some(0), Some(30), None)));
}

#[test]
fn sources_with_a_different_remaining_do_not_fill_in() {
    // The tighter quota has no reset; a looser quota's reset does not describe it.
    let got = info(&[
        ("ratelimit-remaining", "0"),
        ("x-ratelimit-remaining", "50"),
        ("x-ratelimit-reset", "30"),
    ]);
    assert_eq!(got, Some(quota(None, Some(0), None, None)));
}

#[test]
fn retry_after_and_quotas_together() {
    let got = info(&[
        ("retry-after", "10"),
        ("ratelimit-remaining", "0"),
        ("ratelimit-reset", "25"),
    ])
    .unwrap();
    assert_eq!(got.retry_after, Some(secs(10)));
    assert_eq!(got.wait(), Some(secs(25)));
}

#[test]
fn absurd_policy_windows_are_skipped() {
    let got = info(&[
        ("ratelimit", "\"a\";r=1;t=5"),
        ("ratelimit-policy", "\"a\";q=10;w=99999999999"),
    ]);
    assert_eq!(got, Some(quota(Some(10), Some(1), Some(5), None)));
}

// ---------------------------------------------------------------------------------------------
// wait() and of_response()

#[test]
fn wait_is_retry_after_alone() {
    let info = RateLimitInfo {
        retry_after: Some(secs(3)),
        ..RateLimitInfo::default()
    };
    assert_eq!(info.wait(), Some(secs(3)));
    assert!(!info.is_exhausted());
}

#[test]
fn wait_is_the_reset_of_an_exhausted_quota() {
    let info = quota(Some(10), Some(0), Some(20), None);
    assert_eq!(info.wait(), Some(secs(20)));
    assert!(info.is_exhausted());
}

#[test]
fn wait_ignores_the_reset_of_a_quota_with_requests_left() {
    assert_eq!(quota(Some(10), Some(1), Some(20), None).wait(), None);
    assert_eq!(quota(Some(10), None, Some(20), None).wait(), None);
    let info = RateLimitInfo {
        retry_after: Some(secs(2)),
        ..quota(Some(10), Some(1), Some(20), None)
    };
    assert_eq!(info.wait(), Some(secs(2)));
}

#[test]
fn wait_is_the_longest_of_retry_after_and_reset() {
    let mut info = RateLimitInfo {
        retry_after: Some(secs(30)),
        ..quota(None, Some(0), Some(20), None)
    };
    assert_eq!(info.wait(), Some(secs(30)));
    info.retry_after = Some(secs(5));
    assert_eq!(info.wait(), Some(secs(20)));
}

#[test]
fn wait_is_none_without_hints() {
    assert_eq!(RateLimitInfo::default().wait(), None);
    assert_eq!(quota(None, Some(0), None, None).wait(), None);
}

#[test]
fn of_response_parses_once_and_inserts_the_extension() {
    let mut response = Response::builder()
        .header("retry-after", "9")
        .header("x-ratelimit-remaining", "0")
        .body(())
        .unwrap();
    assert!(response.extensions().get::<RateLimitInfo>().is_none());
    let first = RateLimitInfo::of_response(&mut response).unwrap();
    assert_eq!(first.retry_after, Some(secs(9)));
    assert_eq!(response.extensions().get::<RateLimitInfo>(), Some(&first));

    // The second call reads the extension: changed headers are not parsed again.
    response.headers_mut().insert("retry-after", hv("1"));
    response.headers_mut().remove("x-ratelimit-remaining");
    let second = RateLimitInfo::of_response(&mut response).unwrap();
    assert_eq!(second, first);
}

#[test]
fn of_response_returns_an_existing_extension_as_is() {
    let mut response = Response::builder()
        .header("retry-after", "9")
        .body(())
        .unwrap();
    let set = quota(Some(1), Some(0), Some(4), None);
    response.extensions_mut().insert(set);
    assert_eq!(RateLimitInfo::of_response(&mut response), Some(set));
}

#[test]
fn of_response_without_hints_inserts_nothing() {
    let mut response = Response::builder()
        .header("retry-after", "later")
        .body(())
        .unwrap();
    assert_eq!(RateLimitInfo::of_response(&mut response), None);
    assert!(response.extensions().get::<RateLimitInfo>().is_none());
}

// ---------------------------------------------------------------------------------------------
// Properties

static ALL_HEADERS: [&str; 15] = [
    "retry-after",
    "date",
    "ratelimit",
    "ratelimit-policy",
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-tokens",
];

/// Header-value bytes biased towards the characters the parsers care about.
fn value_bytes() -> impl Strategy<Value = Vec<u8>> {
    let interesting = prop_oneof![
        4 => b'0'..=b'9',
        2 => prop::sample::select(&b" \t\",;=()-+.:*\\rtqwhmsnuGMTSunNov"[..]),
        1 => 0x20u8..=0x7e,
        1 => 0x80u8..=0xff,
    ];
    let chunks = prop_oneof![
        Just(b"\"default\";r=0;t=".to_vec()),
        Just(b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec()),
        Just(b"limit=".to_vec()),
        Just(b"17000000".to_vec()),
        Just(b"99999999999".to_vec()),
        Just("µs".as_bytes().to_vec()),
        prop::collection::vec(interesting, 0..12),
    ];
    prop::collection::vec(chunks, 0..5).prop_map(|parts| parts.concat())
}

fn header_map() -> impl Strategy<Value = HeaderMap> {
    prop::collection::vec(
        (prop::sample::select(&ALL_HEADERS[..]), value_bytes()),
        0..10,
    )
    .prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, bytes) in pairs {
            // Header values cannot hold control characters; replace them as a server could not
            // send them.
            let bytes: Vec<u8> = bytes
                .into_iter()
                .map(|b| {
                    if b < 0x20 && b != b'\t' || b == 0x7f {
                        b'?'
                    } else {
                        b
                    }
                })
                .collect();
            let value = HeaderValue::from_bytes(&bytes).unwrap();
            map.append(HeaderName::from_static(name), value);
        }
        map
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_headers_never_panic_nor_ask_more_than_a_year(
        map in header_map(),
        now_secs in 0u64..20_000_000_000,
        now_nanos in 0u32..1_000_000_000,
    ) {
        let now = UNIX_EPOCH + Duration::new(now_secs, now_nanos);
        if let Some(info) = RateLimitInfo::from_headers_at(&map, now) {
            prop_assert!(info != RateLimitInfo::default());
            let waits = [info.retry_after, info.reset, info.window, info.wait()];
            for d in waits.into_iter().flatten() {
                prop_assert!(d <= MAX_WAIT, "{info:?}");
            }
        }
        for value in map.values() {
            let parsed = [
                parse_retry_after(value, None, now),
                parse_retry_after(value, Some(now), UNIX_EPOCH),
                parse_delta_seconds(value.as_bytes()),
                std::str::from_utf8(value.as_bytes())
                    .map_err(|_| HeaderError::NotText)
                    .and_then(parse_duration),
            ];
            for d in parsed.into_iter().flatten() {
                prop_assert!(d <= MAX_WAIT);
            }
            let _ = parse_http_date(value.as_bytes());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_single_value_parsers(
        bytes in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let now = UNIX_EPOCH + secs(1_700_000_000);
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            if let Ok(d) = parse_retry_after(&value, None, now) {
                prop_assert!(d <= MAX_WAIT);
            }
        }
        if let Ok(d) = parse_delta_seconds(&bytes) {
            prop_assert!(d <= MAX_WAIT);
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(d) = parse_duration(text) {
                prop_assert!(d <= MAX_WAIT);
            }
        }
        let _ = parse_http_date(&bytes);
    }

    #[test]
    fn duration_round_trips(
        h in 0u64..8760,
        m in 0u64..60,
        s in 0u64..60,
        ms in 0u64..1000,
        parts in 1u8..16,
        fractional in any::<bool>(),
    ) {
        // Each bit of `parts` includes one component; `fractional` writes seconds and
        // milliseconds as one decimal number of seconds.
        let has = |bit: u8| parts & bit != 0;
        let mut text = String::new();
        let mut expected = Duration::ZERO;
        if has(1) {
            text += &format!("{h}h");
            expected += Duration::from_secs(h * 3600);
        }
        if has(2) {
            text += &format!("{m}m");
            expected += Duration::from_secs(m * 60);
        }
        if fractional {
            text += &format!("{s}.{ms:03}s");
            expected += Duration::from_secs(s) + Duration::from_millis(ms);
        } else {
            if has(4) {
                text += &format!("{s}s");
                expected += Duration::from_secs(s);
            }
            if has(8) {
                text += &format!("{ms}ms");
                expected += Duration::from_millis(ms);
            }
        }
        prop_assume!(!text.is_empty());
        prop_assert_eq!(parse_duration(&text), Ok(expected), "{}", text);
    }
}

// ---------------------------------------------------------------------------------------------
// Bounds: the work is linear in the headers' length, and capped.

/// A `RateLimit` header of `n` named items and a `RateLimit-Policy` of the same names in
/// reverse order, so each item's policy is as far as it can be.
fn many_items(n: usize) -> (HeaderMap, usize) {
    let items: Vec<String> = (0..n)
        .map(|i| format!("\"p{i:04}\";r={};t=9", i + 1))
        .collect();
    let policies: Vec<String> = (0..n)
        .rev()
        .map(|i| format!("\"p{i:04}\";q=100;w=60"))
        .collect();
    let (items, policies) = (items.join(", "), policies.join(", "));
    let bytes = items.len() + policies.len();
    let mut map = HeaderMap::new();
    map.insert("ratelimit", HeaderValue::from_str(&items).unwrap());
    map.insert(
        "ratelimit-policy",
        HeaderValue::from_str(&policies).unwrap(),
    );
    (map, bytes)
}

/// Bytes the parsers scanned to read `map`.
fn work_of(map: &HeaderMap) -> (Option<RateLimitInfo>, usize) {
    parse::work::take();
    let info = RateLimitInfo::from_headers_at(map, at(RFC_DATE_SECS));
    (info, parse::work::take())
}

#[test]
fn ratelimit_header_with_many_items_is_parsed_in_linear_work() {
    for n in 1..=MAX_ITEMS {
        let (map, bytes) = many_items(n);
        let (info, scanned) = work_of(&map);
        assert_eq!(info, Some(quota(Some(100), Some(1), Some(9), Some(60))));
        // Each byte is looked at a few times (list, member, parameter, `=`), never once per
        // item: matching every item against every policy would scan ~n/2 times more.
        assert!(
            scanned <= 4 * bytes,
            "{n} items: {scanned} bytes scanned for {bytes} bytes of headers"
        );
    }
}

#[test]
fn ratelimit_items_past_the_bound_cost_nothing() {
    let (bounded, _) = many_items(MAX_ITEMS);
    let (_, bounded_work) = work_of(&bounded);
    for n in [MAX_ITEMS + 1, 100, 250] {
        let (map, bytes) = many_items(n);
        let (_, scanned) = work_of(&map);
        // The policies are reversed, so the matching ones are past the bound: work can only
        // go down, and never grows with n.
        assert!(
            scanned <= bounded_work + 64,
            "{n} items ({bytes} bytes): {scanned} scanned, {bounded_work} for {MAX_ITEMS} items"
        );
    }
}

#[test]
fn ratelimit_items_past_the_bound_are_ignored() {
    let mut items: Vec<String> = (0..MAX_ITEMS)
        .map(|i| format!("\"p{i}\";r=5;t=1"))
        .collect();
    items.push("\"late\";r=0;t=300".to_owned());
    let mut map = HeaderMap::new();
    map.insert(
        "ratelimit",
        HeaderValue::from_str(&items.join(",")).unwrap(),
    );
    let info = RateLimitInfo::from_headers_at(&map, at(RFC_DATE_SECS)).unwrap();
    assert_eq!(info.remaining, Some(5));
    assert_eq!(info.reset, Some(secs(1)));
}

#[test]
fn header_line_longer_than_the_bound_is_not_read() {
    let long_list = format!("\"a\";r=0;t=30, {}", "x, ".repeat(MAX_VALUE_LEN));
    let long_delta = format!("{}30", " ".repeat(MAX_VALUE_LEN));
    let mut map = HeaderMap::new();
    map.insert("ratelimit", HeaderValue::from_str(&long_list).unwrap());
    map.insert("retry-after", HeaderValue::from_str(&long_delta).unwrap());
    map.insert(
        "x-ratelimit-remaining",
        HeaderValue::from_str(&"0".repeat(MAX_VALUE_LEN + 1)).unwrap(),
    );
    let (info, scanned) = work_of(&map);
    assert_eq!(info, None);
    assert_eq!(scanned, 0);
    let long = HeaderValue::from_str(&long_delta).unwrap();
    assert_eq!(
        parse_retry_after(&long, None, at(0)),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_delta_seconds(long_delta.as_bytes()),
        Err(HeaderError::OutOfRange)
    );
    assert_eq!(
        parse_duration(&format!("{}1s", "0s".repeat(MAX_VALUE_LEN))),
        Err(HeaderError::OutOfRange)
    );
}

#[test]
fn header_lines_past_the_bound_are_ignored() {
    let mut map = HeaderMap::new();
    for _ in 0..MAX_LINES {
        map.append("retry-after", hv("1"));
        map.append("x-ratelimit-remaining", hv("5"));
    }
    map.append("retry-after", hv("600"));
    map.append("x-ratelimit-remaining", hv("0"));
    let info = RateLimitInfo::from_headers_at(&map, at(RFC_DATE_SECS)).unwrap();
    assert_eq!(info.retry_after, Some(secs(1)));
    assert_eq!(info.remaining, Some(5));
}

#[test]
fn parameters_past_the_bound_are_ignored() {
    let filler: String = (0..MAX_ITEMS).map(|i| format!(";x{i}=1")).collect();
    let item = format!("\"a\";r=3{filler};t=30");
    let mut map = HeaderMap::new();
    map.insert("ratelimit", HeaderValue::from_str(&item).unwrap());
    let info = RateLimitInfo::from_headers_at(&map, at(RFC_DATE_SECS)).unwrap();
    assert_eq!(info.remaining, Some(3));
    assert_eq!(info.reset, None);
}
