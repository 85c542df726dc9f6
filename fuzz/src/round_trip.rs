//! Round trips: a value the fuzzer picks, written in every form a server may send it (and the
//! simulator does send), parsed back by the crate, and compared with the value. Unlike
//! "nothing panics", these fail when the crate reads a well-formed header wrong.
//!
//! Every function takes its values from `u` and returns early when the input runs out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::{Result, Unstructured};
use http::header::{DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};
use tower_outbound::rate_limit::{
    parse_delta_seconds, parse_duration, parse_http_date, parse_retry_after, HeaderError, MAX_WAIT,
};
use tower_outbound::RateLimitInfo;

use super::{now, LAST_SECOND};

/// Integer resets from here on are Unix seconds, from [`EPOCH_MILLIS`] on Unix milliseconds
/// (the rule the crate documents in `rate_limit`).
const EPOCH_SECONDS: u64 = 1_000_000_000;
const EPOCH_MILLIS: u64 = 1_000_000_000_000;
/// The largest structured-field integer (15 digits).
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;
/// Optional whitespace a server may put around a value.
const OWS: &[&str] = &["", " ", "\t", "  "];

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|e| panic!("{text:?} is a header value: {e}"))
}

/// The wait the crate must return for a server asking `wait`: itself, or out of range past
/// `MAX_WAIT`.
fn expect(wait: Duration) -> std::result::Result<Duration, HeaderError> {
    if wait <= MAX_WAIT {
        Ok(wait)
    } else {
        Err(HeaderError::OutOfRange)
    }
}

// ---- HTTP-dates in the three RFC 9110 forms ----

/// IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn imf_fixdate(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

const WEEKDAYS: &[(&str, &str)] = &[
    ("Mon", "Monday"),
    ("Tue", "Tuesday"),
    ("Wed", "Wednesday"),
    ("Thu", "Thursday"),
    ("Fri", "Friday"),
    ("Sat", "Saturday"),
    ("Sun", "Sunday"),
];

/// (weekday, day, month, year, hh:mm:ss) of `t`, read off its IMF-fixdate.
fn parts(t: SystemTime) -> (String, u32, String, u32, String) {
    let s = imf_fixdate(t);
    (
        s[0..3].to_owned(),
        s[5..7].parse().unwrap(),
        s[8..11].to_owned(),
        s[12..16].parse().unwrap(),
        s[17..25].to_owned(),
    )
}

/// RFC 850: `Sunday, 06-Nov-94 08:49:37 GMT`, for the years its two digits name as the crate
/// reads them (1970–2069); `None` for other years.
pub fn rfc850(t: SystemTime) -> Option<String> {
    let (wday, day, month, year, hms) = parts(t);
    if !(1970..=2069).contains(&year) {
        return None;
    }
    let long = WEEKDAYS.iter().find(|(short, _)| *short == wday)?.1;
    Some(format!(
        "{long}, {day:02}-{month}-{:02} {hms} GMT",
        year % 100
    ))
}

/// asctime: `Sun Nov  6 08:49:37 1994`.
pub fn asctime(t: SystemTime) -> String {
    let (wday, day, month, year, hms) = parts(t);
    format!("{wday} {month} {day:>2} {hms} {year}")
}

/// `t` in every form RFC 9110 asks recipients to accept that can name it.
pub fn http_dates(t: SystemTime) -> Vec<String> {
    let mut forms = vec![imf_fixdate(t), asctime(t)];
    forms.extend(rfc850(t));
    forms
}

/// `Retry-After` as delta-seconds and as an HTTP-date in each form, relative to a server
/// `Date` or to the client's clock, with a clock that has a fraction of a second, in a header
/// map, and several lines of it.
pub fn retry_after(u: &mut Unstructured<'_>) -> Result<()> {
    let reference = u.int_in_range(0..=LAST_SECOND)?;
    let delta = u.int_in_range(0..=2 * MAX_WAIT.as_secs())?;
    let ows = *u.choose(OWS)?;
    let zeros = "0".repeat(u.int_in_range(0..=3)?);
    let expected = expect(Duration::from_secs(delta));

    let text = format!("{ows}{zeros}{delta}{ows}");
    let delta_value = value(&text);
    assert_eq!(parse_delta_seconds(text.as_bytes()), expected, "{text:?}");
    assert_eq!(
        parse_retry_after(&delta_value, None, at(reference)),
        expected,
        "{text:?}"
    );
    assert_eq!(
        parse_retry_after(&delta_value, Some(at(reference)), now()),
        expected,
        "{text:?}"
    );

    if let Some(target) = reference.checked_add(delta).filter(|t| *t <= LAST_SECOND) {
        let fraction = Duration::from_nanos(u.int_in_range(1..=999_999_999)?);
        for form in http_dates(at(target)) {
            let text = format!("{ows}{form}{ows}");
            let date = value(&text);
            assert_eq!(parse_http_date(text.as_bytes()), Ok(at(target)), "{text:?}");
            // From the server's Date, whatever the client's clock; or from the client's.
            assert_eq!(
                parse_retry_after(&date, Some(at(reference)), now()),
                expected,
                "{text:?}"
            );
            assert_eq!(
                parse_retry_after(&date, None, at(reference)),
                expected,
                "{text:?}"
            );
            // A reference a fraction of a second earlier: rounded up to whole seconds.
            if let Some(early) = at(reference)
                .checked_sub(fraction)
                .filter(|_| reference > 0)
            {
                assert_eq!(
                    parse_retry_after(&date, None, early),
                    expect(Duration::from_secs(delta + 1)),
                    "{text:?} from {fraction:?} before {reference}"
                );
            }
            // In a response with the server's Date, read with a client clock in 1970.
            let mut map = HeaderMap::new();
            map.insert(RETRY_AFTER, date);
            map.insert(DATE, value(&imf_fixdate(at(reference))));
            let info = RateLimitInfo::from_headers_at(&map, UNIX_EPOCH);
            assert_eq!(info.and_then(|i| i.retry_after), expected.ok(), "{map:?}");
        }
    }
    if let Some(past) = reference.checked_sub(delta) {
        for form in http_dates(at(past)) {
            let date = value(&form);
            assert_eq!(
                parse_retry_after(&date, Some(at(reference)), now()),
                Ok(Duration::ZERO),
                "a date {delta} s before the server's Date: {form:?}"
            );
        }
    }

    // Several lines: the longest valid one wins, a broken one is skipped.
    let other = u.int_in_range(0..=2 * MAX_WAIT.as_secs())?;
    let mut map = HeaderMap::new();
    map.append(RETRY_AFTER, delta_value);
    map.append(RETRY_AFTER, value("soon"));
    map.append(RETRY_AFTER, value(&other.to_string()));
    let longest = [delta, other]
        .into_iter()
        .map(Duration::from_secs)
        .filter(|w| *w <= MAX_WAIT)
        .max();
    let info = RateLimitInfo::from_headers_at(&map, now());
    assert_eq!(info.and_then(|i| i.retry_after), longest, "{map:?}");
    Ok(())
}

// ---- resets: delta-seconds, Unix seconds, Unix milliseconds ----

/// A reset in one of its three integer forms, and the wait it means for a response whose
/// `Date` is `date`.
fn integer_reset(u: &mut Unstructured<'_>, date: u64) -> Result<(String, Option<Duration>)> {
    Ok(match u.int_in_range(0..=2)? {
        0 => {
            let delta = u.int_in_range(0..=EPOCH_SECONDS - 1)?;
            (delta.to_string(), expect(Duration::from_secs(delta)).ok())
        }
        1 => {
            let epoch = u.int_in_range(EPOCH_SECONDS..=EPOCH_MILLIS - 1)?;
            let wait = Duration::from_secs(epoch.saturating_sub(date));
            (epoch.to_string(), expect(wait).ok())
        }
        _ => {
            let epoch_ms = u.int_in_range(EPOCH_MILLIS..=u64::MAX / 2)?;
            let wait = Duration::from_millis(epoch_ms.saturating_sub(date * 1000));
            (epoch_ms.to_string(), expect(wait).ok())
        }
    })
}

/// A response `Date` from 2001-09-09 to 9999, so that any epoch reset is an epoch.
fn server_date(u: &mut Unstructured<'_>) -> Result<u64> {
    u.int_in_range(EPOCH_SECONDS..=LAST_SECOND)
}

fn expect_info(map: &HeaderMap, limit: u64, remaining: u64, reset: Option<Duration>) {
    for clock in [now(), UNIX_EPOCH, at(LAST_SECOND)] {
        let info = RateLimitInfo::from_headers_at(map, clock)
            .unwrap_or_else(|| panic!("nothing read from {map:?}"));
        assert_eq!(
            (info.limit, info.remaining, info.reset),
            (Some(limit), Some(remaining), reset),
            "{map:?}"
        );
    }
}

/// Limit, remaining and reset in a family of three headers (`RateLimit-*` draft 7 or
/// `X-RateLimit-*`), with a `Date`.
fn three_headers(u: &mut Unstructured<'_>, names: [&'static str; 3]) -> Result<()> {
    let (limit, remaining): (u64, u64) = (u.arbitrary()?, u.arbitrary()?);
    let date = server_date(u)?;
    let (reset, wait) = integer_reset(u, date)?;
    let ows = *u.choose(OWS)?;
    let mut map = HeaderMap::new();
    map.insert(
        HeaderName::from_static(names[0]),
        value(&format!("{ows}{limit}{ows}")),
    );
    map.insert(
        HeaderName::from_static(names[1]),
        value(&format!("{ows}{remaining}{ows}")),
    );
    map.insert(
        HeaderName::from_static(names[2]),
        value(&format!("{ows}{reset}{ows}")),
    );
    map.insert(DATE, value(&imf_fixdate(at(date))));
    expect_info(&map, limit, remaining, wait);
    Ok(())
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (draft 7).
pub fn draft7(u: &mut Unstructured<'_>) -> Result<()> {
    three_headers(
        u,
        ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"],
    )
}

/// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset`.
pub fn x_ratelimit(u: &mut Unstructured<'_>) -> Result<()> {
    three_headers(
        u,
        [
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        ],
    )
}

/// The OpenAI family: `x-ratelimit-{limit,remaining,reset}-requests` (or `-tokens`), the reset
/// a Go duration.
pub fn openai(u: &mut Unstructured<'_>) -> Result<()> {
    let (limit, remaining): (u64, u64) = (u.arbitrary()?, u.arbitrary()?);
    let nanos = u.int_in_range(0..=2 * MAX_WAIT.as_nanos() as u64)?;
    let reset = Duration::from_nanos(nanos);
    let micro = *u.choose(&["µs", "μs", "us"])?;
    let kind = *u.choose(&["requests", "tokens"])?;
    let mut map = HeaderMap::new();
    let name = |field: &str| HeaderName::try_from(format!("x-ratelimit-{field}-{kind}")).unwrap();
    map.insert(name("limit"), value(&limit.to_string()));
    map.insert(name("remaining"), value(&remaining.to_string()));
    map.insert(name("reset"), value(&go_duration(reset, micro)));
    expect_info(&map, limit, remaining, expect(reset).ok());
    Ok(())
}

/// The structured-field `RateLimit` with its `RateLimit-Policy`, as a list of named items
/// (`"name";r=..;t=..` with `"name";q=..;w=..`) or as a dictionary (`limit=.., remaining=..,
/// reset=..` with `limit;w=..`).
pub fn structured(u: &mut Unstructured<'_>) -> Result<()> {
    let limit = u.int_in_range(0..=SF_INTEGER_MAX)?;
    let remaining = u.int_in_range(0..=SF_INTEGER_MAX)?;
    let reset = u.int_in_range(0..=EPOCH_SECONDS - 1)?;
    let window = u.int_in_range(1..=EPOCH_SECONDS - 1)?;
    let name = *u.choose(&["default", "burst", "day", "a-b_c.d*"])?;
    let (items, policy) = if u.arbitrary()? {
        (
            format!("\"{name}\";r={remaining};t={reset}"),
            format!("\"{name}\";q={limit};w={window}"),
        )
    } else {
        (
            format!("limit={limit}, remaining={remaining}, reset={reset}"),
            format!("{limit};w={window}"),
        )
    };
    let mut map = HeaderMap::new();
    map.insert(HeaderName::from_static("ratelimit"), value(&items));
    map.insert(HeaderName::from_static("ratelimit-policy"), value(&policy));
    let reset = expect(Duration::from_secs(reset)).ok();
    expect_info(&map, limit, remaining, reset);
    let info = RateLimitInfo::from_headers_at(&map, now()).unwrap();
    assert_eq!(
        info.window,
        expect(Duration::from_secs(window)).ok(),
        "{map:?}"
    );
    Ok(())
}

// ---- durations ----

/// `d` as Go's `time.Duration` prints it (`1h2m3.5s`, `6m0s`, `250ms`, `1.5µs`, `17ns`),
/// with `micro` as the microsecond unit.
pub fn go_duration(d: Duration, micro: &str) -> String {
    let nanos = d.as_nanos();
    let fraction = |whole: u128, unit: u128, digits: usize| -> String {
        let rest = nanos % unit;
        let mut s = whole.to_string();
        if rest > 0 {
            let digits = format!("{rest:0digits$}");
            s.push('.');
            s.push_str(digits.trim_end_matches('0'));
        }
        s
    };
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos < 1_000 {
        format!("{nanos}ns")
    } else if nanos < 1_000_000 {
        format!("{}{micro}", fraction(nanos / 1_000, 1_000, 3))
    } else if nanos < 1_000_000_000 {
        format!("{}ms", fraction(nanos / 1_000_000, 1_000_000, 6))
    } else {
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        let seconds = format!("{}s", fraction(u128::from(s), 1_000_000_000, 9));
        match (h, m) {
            (0, 0) => seconds,
            (0, m) => format!("{m}m{seconds}"),
            (h, m) => format!("{h}h{m}m{seconds}"),
        }
    }
}

/// A duration in Go's form and in a few other exact spellings (whole nanoseconds, whole
/// milliseconds, seconds with nine decimals).
pub fn duration(u: &mut Unstructured<'_>) -> Result<()> {
    let nanos = u.int_in_range(0..=2 * MAX_WAIT.as_nanos() as u64)?;
    let d = Duration::from_nanos(nanos);
    let micro = *u.choose(&["µs", "μs", "us"])?;
    let expected = expect(d);
    let mut spellings = vec![
        go_duration(d, micro),
        format!("{nanos}ns"),
        format!("{}.{:09}s", d.as_secs(), d.subsec_nanos()),
    ];
    if nanos % 1_000_000 == 0 {
        spellings.push(format!("{}ms", nanos / 1_000_000));
    }
    for text in spellings {
        assert_eq!(parse_duration(&text), expected, "{text:?}");
    }
    Ok(())
}
