//! The header parsers behind [`RateLimitInfo`].
//!
//! Everything here works on borrowed `&[u8]`/`&str` slices of the header values: no allocation,
//! no regex, and every header name is a `static` [`HeaderName`] so a lookup only hashes it.
//! See the [module docs](super) for the formats and the rules.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{DATE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::RateLimitInfo;

/// The longest wait any parser returns: 365 days. A longer wait, or a date further away, is
/// treated as a broken header ([`HeaderError::OutOfRange`]) rather than honored.
pub const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// At most this many lines of one header name are read (`Retry-After`, `Date`, each
/// `RateLimit*` header); later lines are ignored.
pub const MAX_LINES: usize = 64;

/// At most this many members of one list header (`RateLimit`, `RateLimit-Policy`,
/// `X-RateLimit-Remaining`, ...) are read, counted over all its lines; later members are
/// ignored. Parameters are bounded the same way: at most this many per member.
pub const MAX_ITEMS: usize = 16;

/// A header line longer than this many bytes is ignored as a whole, unread.
pub const MAX_VALUE_LEN: usize = 4096;

/// Why a rate-limit header could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderError {
    /// The value is not valid UTF-8 / visible ASCII.
    NotText,
    /// The value does not have the expected syntax.
    Malformed,
    /// The value parses but is out of range (overflowing, negative, or an absurd wait).
    OutOfRange,
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::NotText => "header value is not text",
            HeaderError::Malformed => "header value is malformed",
            HeaderError::OutOfRange => "header value is out of range",
        })
    }
}

impl std::error::Error for HeaderError {}

// ---------------------------------------------------------------------------------------------
// Work accounting for the tests: how many bytes the splitters scanned, so a test can show that
// the work grows with the input's length and no faster.

#[cfg(test)]
pub(super) mod work {
    use std::cell::Cell;

    thread_local! {
        static SCANNED: Cell<usize> = const { Cell::new(0) };
    }

    pub(crate) fn add(bytes: usize) {
        SCANNED.with(|c| c.set(c.get() + bytes));
    }

    /// Bytes scanned on this thread since the last call.
    pub(crate) fn take() -> usize {
        SCANNED.with(|c| c.replace(0))
    }
}

#[cfg(not(test))]
mod work {
    #[inline(always)]
    pub(super) fn add(_bytes: usize) {}
}

// ---------------------------------------------------------------------------------------------
// Header names, declared once.

static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
static X_RATELIMIT_LIMIT_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-limit-requests");
static X_RATELIMIT_REMAINING_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-requests");
static X_RATELIMIT_RESET_REQUESTS: HeaderName =
    HeaderName::from_static("x-ratelimit-reset-requests");
static X_RATELIMIT_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
static X_RATELIMIT_REMAINING_TOKENS: HeaderName =
    HeaderName::from_static("x-ratelimit-remaining-tokens");
static X_RATELIMIT_RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// Integer resets at or above this are Unix timestamps in seconds (2001-09-09 onwards); below it
/// they are delta-seconds (anything from here up is far beyond [`MAX_WAIT`] as a delta anyway).
const EPOCH_SECONDS_FROM: u64 = 1_000_000_000;
/// Integer resets at or above this are Unix timestamps in milliseconds.
const EPOCH_MILLIS_FROM: u64 = 1_000_000_000_000;

const SECOND: Duration = Duration::from_secs(1);
const MILLISECOND: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// Single-value parsers.

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP-date in any of the three
/// forms RFC 9110 asks recipients to accept (IMF-fixdate, RFC 850, asctime).
///
/// A date becomes a wait counted from `server_date` (the response's own `Date` header) when
/// there is one, else from `now`, so a client clock that runs ahead of or behind the server's
/// does not shorten the wait. A date in the past is a zero wait. When the reference has
/// sub-second precision the wait is rounded up to whole seconds, so it is never shorter than
/// asked.
///
/// # Errors
///
/// [`HeaderError::NotText`] for bytes that are not visible ASCII, [`HeaderError::Malformed`]
/// for anything that is neither delta-seconds nor an HTTP-date (`+5`, `5.0`, `10abc`, an empty
/// value), [`HeaderError::OutOfRange`] for a negative or overflowing number, for any wait
/// longer than [`MAX_WAIT`] (such as a date in the year 9999) and for a value longer than
/// [`MAX_VALUE_LEN`].
///
/// # Example
///
/// ```
/// use std::time::{Duration, SystemTime, UNIX_EPOCH};
/// use http::HeaderValue;
/// use tower_outbound::rate_limit::parse_retry_after;
///
/// let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
/// let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:50:07 GMT");
/// assert_eq!(parse_retry_after(&date, None, now), Ok(Duration::from_secs(30)));
/// let delta = HeaderValue::from_static("120");
/// assert_eq!(parse_retry_after(&delta, None, now), Ok(Duration::from_secs(120)));
/// ```
pub fn parse_retry_after(
    value: &HeaderValue,
    server_date: Option<SystemTime>,
    now: SystemTime,
) -> Result<Duration, HeaderError> {
    retry_after_with(value.as_bytes(), || server_date.unwrap_or(now))
}

/// Parses delta-seconds (RFC 9110 §10.2.3): one or more ASCII digits, nothing else but
/// surrounding spaces or tabs.
///
/// # Errors
///
/// [`HeaderError::NotText`] for bytes that are not visible ASCII; [`HeaderError::Malformed`]
/// for an empty value, a sign (`+5`), a fraction (`5.0`) or any other character (`10abc`);
/// [`HeaderError::OutOfRange`] for a negative number (`-5`), one that overflows, one longer
/// than [`MAX_WAIT`], or a value longer than [`MAX_VALUE_LEN`] bytes.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_outbound::rate_limit::{parse_delta_seconds, HeaderError};
///
/// assert_eq!(parse_delta_seconds(b" 30 "), Ok(Duration::from_secs(30)));
/// assert_eq!(parse_delta_seconds(b"5.0"), Err(HeaderError::Malformed));
/// assert_eq!(parse_delta_seconds(b"-5"), Err(HeaderError::OutOfRange));
/// ```
pub fn parse_delta_seconds(value: &[u8]) -> Result<Duration, HeaderError> {
    seconds(unsigned(text(value)?)?)
}

/// Parses a duration string as Go's `time.Duration` prints them and OpenAI's
/// `x-ratelimit-reset-*` headers carry them: one or more decimal numbers, each with a unit,
/// such as `1s`, `6m0s`, `1h2m3.5s`, `250ms`, `0.5s`.
///
/// Units: `h`, `m`, `s`, `ms`, `us` (also `µs` and `μs`), `ns`. A fraction finer than a
/// nanosecond is rounded up. A bare number (`30`) has no unit and is rejected, as are signs.
///
/// # Errors
///
/// [`HeaderError::NotText`] for control or non-ASCII characters (other than the micro sign);
/// [`HeaderError::Malformed`] for an empty value, a number without unit, an unknown unit or
/// stray characters; [`HeaderError::OutOfRange`] for a negative duration, an overflowing number,
/// a total longer than [`MAX_WAIT`] or a value longer than [`MAX_VALUE_LEN`] bytes.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use tower_outbound::rate_limit::parse_duration;
///
/// assert_eq!(parse_duration("6m0s"), Ok(Duration::from_secs(360)));
/// assert_eq!(parse_duration("1h2m3.5s"), Ok(Duration::from_millis(3_723_500)));
/// assert_eq!(parse_duration("20ms"), Ok(Duration::from_millis(20)));
/// assert!(parse_duration("30").is_err());
/// ```
pub fn parse_duration(value: &str) -> Result<Duration, HeaderError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(HeaderError::OutOfRange);
    }
    let ok_char = |c: char| c == '\t' || (' '..='~').contains(&c) || c == 'µ' || c == 'μ';
    if !value.chars().all(ok_char) {
        return Err(HeaderError::NotText);
    }
    let s = trim_ows(value.as_bytes());
    match s {
        [] => Err(HeaderError::Malformed),
        // A negative duration: say so, unless what follows is not a duration at all.
        [b'-', rest @ ..] => match duration_nanos(rest) {
            Ok(_) | Err(HeaderError::OutOfRange) => Err(HeaderError::OutOfRange),
            Err(e) => Err(e),
        },
        _ => duration_nanos(s).map(Duration::from_nanos),
    }
}

/// Parses an HTTP-date in any of the three forms RFC 9110 asks recipients to accept:
/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`)
/// and asctime (`Sun Nov  6 08:49:37 1994`). Surrounding spaces or tabs are ignored.
///
/// Any date from 1970 to 9999 parses; whether it makes a sensible wait is for the caller
/// ([`parse_retry_after`] rejects waits longer than [`MAX_WAIT`]).
///
/// # Errors
///
/// [`HeaderError::NotText`] for bytes that are not visible ASCII, [`HeaderError::Malformed`]
/// for anything else that is not a valid date (including a wrong weekday or February 30th),
/// [`HeaderError::OutOfRange`] for a value longer than [`MAX_VALUE_LEN`] bytes.
pub fn parse_http_date(value: &[u8]) -> Result<SystemTime, HeaderError> {
    let t = text(value)?;
    // `text` let through visible ASCII only, so this cannot fail.
    let s = std::str::from_utf8(t).map_err(|_| HeaderError::NotText)?;
    httpdate::parse_http_date(s).map_err(|_| HeaderError::Malformed)
}

fn retry_after_with(
    value: &[u8],
    reference: impl FnOnce() -> SystemTime,
) -> Result<Duration, HeaderError> {
    let t = text(value)?;
    // All three date forms start with a weekday name; anything else must be delta-seconds.
    match t {
        [first, ..] if first.is_ascii_alphabetic() => {
            wait_until(parse_http_date(t)?, reference(), SECOND)
        }
        _ => seconds(unsigned(t)?),
    }
}

/// Time from `reference` to `target`, rounded up to a multiple of `unit`; zero when `target`
/// has passed.
fn wait_until(
    target: SystemTime,
    reference: SystemTime,
    unit: Duration,
) -> Result<Duration, HeaderError> {
    let Ok(wait) = target.duration_since(reference) else {
        return Ok(Duration::ZERO);
    };
    let unit_nanos = unit.as_nanos();
    let nanos = wait.as_nanos().div_ceil(unit_nanos) * unit_nanos;
    if nanos > MAX_WAIT.as_nanos() {
        return Err(HeaderError::OutOfRange);
    }
    // At most MAX_WAIT, so it fits in u64 nanoseconds.
    Ok(Duration::from_nanos(nanos as u64))
}

fn seconds(secs: u64) -> Result<Duration, HeaderError> {
    if secs > MAX_WAIT.as_secs() {
        return Err(HeaderError::OutOfRange);
    }
    Ok(Duration::from_secs(secs))
}

// ---------------------------------------------------------------------------------------------
// Byte-level building blocks.

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_ows(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_ows(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Checks that `value` is visible ASCII, spaces and tabs, and returns it trimmed and non-empty.
fn text(value: &[u8]) -> Result<&[u8], HeaderError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(HeaderError::OutOfRange);
    }
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return Err(HeaderError::NotText);
    }
    match trim_ows(value) {
        [] => Err(HeaderError::Malformed),
        t => Ok(t),
    }
}

/// `1*DIGIT`, without sign; `-` followed by digits is out of range rather than malformed.
fn unsigned(s: &[u8]) -> Result<u64, HeaderError> {
    match s {
        [b'-', rest @ ..] if !rest.is_empty() && rest.iter().all(u8::is_ascii_digit) => {
            Err(HeaderError::OutOfRange)
        }
        [] => Err(HeaderError::Malformed),
        _ => s.iter().try_fold(0u64, |n, &b| {
            if !b.is_ascii_digit() {
                return Err(HeaderError::Malformed);
            }
            n.checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or(HeaderError::OutOfRange)
        }),
    }
}

/// The unsigned part of a Go duration, in nanoseconds.
fn duration_nanos(mut s: &[u8]) -> Result<u64, HeaderError> {
    const MAX_NANOS: u64 = MAX_WAIT.as_secs() * 1_000_000_000;
    if s.is_empty() {
        return Err(HeaderError::Malformed);
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        // Integer part.
        let int_len = s.iter().take_while(|b| b.is_ascii_digit()).count();
        let (int_digits, rest) = s.split_at(int_len);
        s = rest;
        // Fraction: up to 18 digits kept exactly, any further non-zero digit rounds up.
        let mut frac: u64 = 0;
        let mut frac_len: u32 = 0;
        let mut frac_digits = 0usize;
        let mut beyond = false;
        if let [b'.', rest @ ..] = s {
            frac_digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let (digits, after) = rest.split_at(frac_digits);
            for &b in digits {
                if frac_len < 18 {
                    frac = frac * 10 + u64::from(b - b'0');
                    frac_len += 1;
                } else if b != b'0' {
                    beyond = true;
                }
            }
            s = after;
        }
        if int_len == 0 && frac_digits == 0 {
            return Err(HeaderError::Malformed);
        }
        let (unit, rest): (u64, &[u8]) = match s {
            [b'n', b's', rest @ ..] => (1, rest),
            [b'u', b's', rest @ ..] => (1_000, rest),
            // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU, as Go accepts both.
            [0xC2, 0xB5, b's', rest @ ..] | [0xCE, 0xBC, b's', rest @ ..] => (1_000, rest),
            [b'm', b's', rest @ ..] => (1_000_000, rest),
            [b's', rest @ ..] => (1_000_000_000, rest),
            [b'm', rest @ ..] => (60_000_000_000, rest),
            [b'h', rest @ ..] => (3_600_000_000_000, rest),
            _ => return Err(HeaderError::Malformed),
        };
        s = rest;
        let whole = if int_digits.is_empty() {
            0
        } else {
            unsigned(int_digits)?
        };
        let frac = u128::from(frac + u64::from(beyond));
        let scale = 10u128.pow(frac_len);
        // At most `unit`, so it fits in u64.
        let frac_nanos = (u128::from(unit) * frac).div_ceil(scale) as u64;
        total = whole
            .checked_mul(unit)
            .and_then(|n| n.checked_add(frac_nanos))
            .and_then(|n| n.checked_add(total))
            .filter(|&n| n <= MAX_NANOS)
            .ok_or(HeaderError::OutOfRange)?;
    }
    Ok(total)
}

/// Splits `s` at the first `sep` outside quoted strings and parentheses: the part before it,
/// and the part after it (`None` when there is no such `sep`). Scans only up to the `sep`.
fn split_once(s: &[u8], sep: u8) -> (&[u8], Option<&[u8]>) {
    let at = split_point(s, sep);
    let (head, tail) = s.split_at(at);
    (head, tail.split_first().map(|(_, rest)| rest))
}

/// Index of the first `sep` in `s` outside quoted strings and parentheses, or `s.len()`.
fn split_point(s: &[u8], sep: u8) -> usize {
    let at = split_point_unaccounted(s, sep);
    work::add(at.saturating_add(1).min(s.len()));
    at
}

fn split_point_unaccounted(s: &[u8], sep: u8) -> usize {
    let mut quoted = false;
    let mut escaped = false;
    let mut depth = 0usize;
    for (i, &b) in s.iter().enumerate() {
        if quoted {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b'(' => depth += 1,
            b')' => depth = depth.saturating_sub(1),
            _ if b == sep && depth == 0 => return i,
            _ => {}
        }
    }
    s.len()
}

/// The pieces of `s` between top-level `sep`s, trimmed, empty ones skipped.
#[derive(Clone)]
struct Pieces<'a> {
    rest: &'a [u8],
    sep: u8,
}

impl<'a> Pieces<'a> {
    fn new(s: &'a [u8], sep: u8) -> Self {
        Pieces { rest: s, sep }
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        while !self.rest.is_empty() {
            let (piece, rest) = split_once(self.rest, self.sep);
            self.rest = rest.unwrap_or(&[]);
            let piece = trim_ows(piece);
            if !piece.is_empty() {
                return Some(piece);
            }
        }
        None
    }
}

/// The lines of header `name` that are read: the first [`MAX_LINES`], skipping any longer than
/// [`MAX_VALUE_LEN`].
fn lines<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .take(MAX_LINES)
        .map(HeaderValue::as_bytes)
        .filter(|line| line.len() <= MAX_VALUE_LEN)
}

/// The first [`MAX_ITEMS`] members of the lines of the list header `name`.
fn members<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    lines(headers, name)
        .flat_map(|line| Pieces::new(line, b','))
        .take(MAX_ITEMS)
}

/// A list member split into its bare item and its first [`MAX_ITEMS`] `;key[=value]`
/// parameters.
fn split_member(member: &[u8]) -> (&[u8], impl Iterator<Item = (&[u8], &[u8])>) {
    let (bare, params) = split_once(member, b';');
    let params = Pieces::new(params.unwrap_or(&[]), b';')
        .take(MAX_ITEMS)
        .map(|param| {
            let (key, value) = split_once(param, b'=');
            (trim_ows(key), trim_ows(value.unwrap_or(&[])))
        });
    (trim_ows(bare), params)
}

/// What the bare item of a structured-field list member is.
enum Bare<'a> {
    /// A policy name: a string's content between the quotes, or a token.
    Name(&'a [u8]),
    /// A `key=value` dictionary member.
    Entry(&'a [u8], &'a [u8]),
    /// A non-negative integer.
    Integer(u64),
    /// Anything else (inner lists, negative numbers, broken strings).
    Other,
}

fn classify(bare: &[u8]) -> Bare<'_> {
    match bare {
        // Names are compared by their raw content; servers escape a name the same way in both
        // headers.
        [b'"', inner @ .., b'"'] => {
            // The last quote must be the one that ends the string.
            let mut escaped = false;
            let closes_early = inner.iter().any(|&b| {
                let end = b == b'"' && !escaped;
                escaped = b == b'\\' && !escaped;
                end
            });
            if closes_early || escaped {
                Bare::Other
            } else {
                Bare::Name(inner)
            }
        }
        [first, ..] if first.is_ascii_digit() => unsigned(bare).map_or(Bare::Other, Bare::Integer),
        [first, ..] if first.is_ascii_alphabetic() || *first == b'*' => {
            match split_once(bare, b'=') {
                (key, Some(value)) => Bare::Entry(trim_ows(key), trim_ows(value)),
                (_, None) => Bare::Name(bare),
            }
        }
        _ => Bare::Other,
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a whole header map.

/// One quota as one header family reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Quota {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
    window: Option<Duration>,
}

impl Quota {
    fn is_empty(&self) -> bool {
        *self == Quota::default()
    }

    /// Whether `self` restricts more than `other`: fewer remaining (a known count beats an
    /// unknown one), and at equal remaining the longer reset.
    fn tighter_than(&self, other: &Quota) -> bool {
        match (self.remaining, other.remaining) {
            (Some(a), Some(b)) if a != b => a < b,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            _ => self.reset > other.reset,
        }
    }
}

/// The tightest quota seen so far.
#[derive(Default)]
struct Tightest(Option<Quota>);

impl Tightest {
    /// Keeps the tighter of the two quotas; the other one only fills fields the tighter lacks,
    /// and only when it reports the same remaining count or none (it then describes the same
    /// quota, as when a server sends both `RateLimit-*` and `X-RateLimit-*`).
    fn add(&mut self, quota: Quota) {
        if quota.is_empty() {
            return;
        }
        let Some(current) = self.0 else {
            self.0 = Some(quota);
            return;
        };
        let (mut tight, other) = if quota.tighter_than(&current) {
            (quota, current)
        } else {
            (current, quota)
        };
        if other.remaining.is_none() || other.remaining == tight.remaining {
            tight.limit = tight.limit.or(other.limit);
            tight.remaining = tight.remaining.or(other.remaining);
            tight.reset = tight.reset.or(other.reset);
            tight.window = tight.window.or(other.window);
        }
        self.0 = Some(tight);
    }
}

/// "Now" for dates and epochs: the response's `Date` when it has a valid one, else the caller's
/// clock. Looked up only when a header needs it.
struct Reference<'a> {
    headers: &'a HeaderMap,
    /// Read only when a date or an epoch needs it, so a response without one costs no clock
    /// read.
    now: &'a dyn Fn() -> SystemTime,
    cached: Option<SystemTime>,
}

impl Reference<'_> {
    fn get(&mut self) -> SystemTime {
        if let Some(at) = self.cached {
            return at;
        }
        let at = lines(self.headers, &DATE)
            .find_map(|v| parse_http_date(v).ok())
            .unwrap_or_else(self.now);
        self.cached = Some(at);
        at
    }
}

/// Whether any header the parsers read is present: one pass over the names, so that the usual
/// response without any costs a few comparisons instead of a look-up per header name.
fn has_rate_limit_headers(headers: &HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str().as_bytes();
        name == b"retry-after" || name.starts_with(b"ratelimit") || name.starts_with(b"x-ratelimit")
    })
}

pub(super) fn from_headers_at(
    headers: &HeaderMap,
    now: &dyn Fn() -> SystemTime,
) -> Option<RateLimitInfo> {
    if !has_rate_limit_headers(headers) {
        return None;
    }
    let mut reference = Reference {
        headers,
        now,
        cached: None,
    };

    // The longest valid Retry-After: never wait less than the server asked.
    let retry_after = lines(headers, &RETRY_AFTER)
        .filter_map(|v| retry_after_with(v, || reference.get()).ok())
        .max();

    // `RateLimit-Policy` is read once, and only when a header refers to it.
    let mut policies = None;
    let mut tightest = Tightest::default();
    tightest.add(separate_headers(headers, &mut reference, &mut policies));
    structured(headers, &mut tightest, &mut policies);
    tightest.add(family(
        headers,
        [
            &X_RATELIMIT_LIMIT,
            &X_RATELIMIT_REMAINING,
            &X_RATELIMIT_RESET,
        ],
        |v| reset_seconds_or_epoch(v, &mut reference),
    ));
    for names in [
        [
            &X_RATELIMIT_LIMIT_REQUESTS,
            &X_RATELIMIT_REMAINING_REQUESTS,
            &X_RATELIMIT_RESET_REQUESTS,
        ],
        [
            &X_RATELIMIT_LIMIT_TOKENS,
            &X_RATELIMIT_REMAINING_TOKENS,
            &X_RATELIMIT_RESET_TOKENS,
        ],
    ] {
        tightest.add(family(headers, names, |v| {
            parse_duration(std::str::from_utf8(v).map_err(|_| HeaderError::NotText)?)
        }));
    }

    if retry_after.is_none() && tightest.0.is_none() {
        return None;
    }
    let quota = tightest.0.unwrap_or_default();
    Some(RateLimitInfo {
        retry_after,
        limit: quota.limit,
        remaining: quota.remaining,
        reset: quota.reset,
        window: quota.window,
    })
}

/// A family of `limit`, `remaining` and `reset` headers. The limit is the first member of the
/// limit header (later members may describe policies: `10, 10;w=1, 50;w=60`), with the window
/// of the member for that quota; remaining is the smallest member, reset the longest.
fn family(
    headers: &HeaderMap,
    [limit, remaining, reset]: [&HeaderName; 3],
    mut parse_reset: impl FnMut(&[u8]) -> Result<Duration, HeaderError>,
) -> Quota {
    let mut quota = Quota::default();
    if let Some((l, w)) = limit_and_window(headers, limit) {
        quota.limit = Some(l);
        quota.window = w;
    }
    quota.remaining = members(headers, remaining)
        .filter_map(|m| unsigned(split_member(m).0).ok())
        .min();
    quota.reset = members(headers, reset)
        .filter_map(|m| parse_reset(split_member(m).0).ok())
        .max();
    quota
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`; the window may also come from a
/// `RateLimit-Policy` member for the same quota.
fn separate_headers<'a>(
    headers: &'a HeaderMap,
    reference: &mut Reference<'_>,
    policies: &mut Option<Policies<'a>>,
) -> Quota {
    let mut quota = family(
        headers,
        [&RATELIMIT_LIMIT, &RATELIMIT_REMAINING, &RATELIMIT_RESET],
        |v| reset_seconds_or_epoch(v, reference),
    );
    if let (Some(limit), None) = (quota.limit, quota.window) {
        quota.window = Policies::of(headers, policies)
            .find(|p| p.quota == Some(limit))
            .and_then(|p| p.window);
    }
    quota
}

/// The first member that is an integer is the limit; its window is the `w` (or `window`)
/// parameter of the first member for that quota that has one.
fn limit_and_window(headers: &HeaderMap, name: &HeaderName) -> Option<(u64, Option<Duration>)> {
    let limit = members(headers, name).find_map(|m| match classify(split_member(m).0) {
        Bare::Integer(n) => Some(n),
        _ => None,
    })?;
    let window = members(headers, name).find_map(|m| {
        let (bare, params) = split_member(m);
        match classify(bare) {
            Bare::Integer(n) if n == limit => window_param(params),
            _ => None,
        }
    });
    Some((limit, window))
}

fn window_param<'a>(mut params: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Option<Duration> {
    params.find_map(|(k, v)| match k {
        b"w" | b"window" => parse_delta_seconds(v).ok(),
        _ => None,
    })
}

/// A reset that is delta-seconds, or a Unix timestamp in seconds or milliseconds when it can
/// only be one.
fn reset_seconds_or_epoch(
    value: &[u8],
    reference: &mut Reference<'_>,
) -> Result<Duration, HeaderError> {
    let n = unsigned(text(value)?)?;
    if n >= EPOCH_MILLIS_FROM {
        let at = UNIX_EPOCH.checked_add(Duration::from_millis(n));
        wait_until(
            at.ok_or(HeaderError::OutOfRange)?,
            reference.get(),
            MILLISECOND,
        )
    } else if n >= EPOCH_SECONDS_FROM {
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(n));
        wait_until(at.ok_or(HeaderError::OutOfRange)?, reference.get(), SECOND)
    } else {
        seconds(n)
    }
}

/// One member of `RateLimit-Policy`.
#[derive(Clone, Copy, Default)]
struct Policy<'a> {
    name: Option<&'a [u8]>,
    quota: Option<u64>,
    window: Option<Duration>,
}

/// The first [`MAX_ITEMS`] members of `RateLimit-Policy`, parsed once: `"name";q=100;w=60`
/// (structured fields) or `100;w=60` (earlier drafts, where the quota is the item itself).
/// Looking a policy up is then a walk over at most [`MAX_ITEMS`] parsed entries, not another
/// scan of the header, so a `RateLimit` header with many items costs work linear in its length.
struct Policies<'a> {
    items: [Policy<'a>; MAX_ITEMS],
    len: usize,
}

impl<'a> Policies<'a> {
    /// The parsed `RateLimit-Policy` of `headers`, parsing it into `cache` the first time.
    fn of<'c>(headers: &'a HeaderMap, cache: &'c mut Option<Policies<'a>>) -> &'c Policies<'a> {
        cache.get_or_insert_with(|| Policies::parse(headers))
    }

    fn parse(headers: &'a HeaderMap) -> Self {
        let mut policies = Policies {
            items: [Policy::default(); MAX_ITEMS],
            len: 0,
        };
        for member in members(headers, &RATELIMIT_POLICY) {
            let (bare, params) = split_member(member);
            let mut p = Policy::default();
            match classify(bare) {
                Bare::Name(name) => p.name = Some(name),
                Bare::Integer(n) => p.quota = Some(n),
                Bare::Entry(..) | Bare::Other => continue,
            }
            for (key, value) in params {
                match key {
                    b"q" => p.quota = unsigned(value).ok(),
                    b"w" | b"window" => p.window = parse_delta_seconds(value).ok(),
                    _ => {}
                }
            }
            // `members` yields at most MAX_ITEMS, so there is always room.
            if let Some(slot) = policies.items.get_mut(policies.len) {
                *slot = p;
                policies.len += 1;
            }
        }
        policies
    }

    /// The first policy that `matches`.
    fn find(&self, matches: impl Fn(&Policy<'a>) -> bool) -> Option<Policy<'a>> {
        self.items
            .get(..self.len)
            .unwrap_or(&[])
            .iter()
            .find(|p| matches(p))
            .copied()
    }
}

/// The `RateLimit` header: either a dictionary `limit=100, remaining=0, reset=30` (earlier
/// drafts; one quota, with its window from the `RateLimit-Policy` member of that quota) or a
/// list of policies `"default";r=0;t=30` whose quota and window come from the
/// `RateLimit-Policy` member of the same name. Later dictionary keys and parameters override
/// earlier ones, as structured fields have it.
fn structured<'a>(
    headers: &'a HeaderMap,
    tightest: &mut Tightest,
    policies: &mut Option<Policies<'a>>,
) {
    let mut entries = Quota::default();
    for member in members(headers, &RATELIMIT) {
        let (bare, params) = split_member(member);
        match classify(bare) {
            Bare::Entry(key, value) => {
                if key.eq_ignore_ascii_case(b"limit") {
                    entries.limit = unsigned(value).ok();
                } else if key.eq_ignore_ascii_case(b"remaining") {
                    entries.remaining = unsigned(value).ok();
                } else if key.eq_ignore_ascii_case(b"reset") {
                    entries.reset = parse_delta_seconds(value).ok();
                }
            }
            Bare::Name(name) => {
                let mut quota = Quota::default();
                for (key, value) in params {
                    match key {
                        b"r" => quota.remaining = unsigned(value).ok(),
                        b"t" => quota.reset = parse_delta_seconds(value).ok(),
                        _ => {}
                    }
                }
                if quota.is_empty() {
                    continue;
                }
                if let Some(p) = Policies::of(headers, policies).find(|p| p.name == Some(name)) {
                    quota.limit = p.quota;
                    quota.window = p.window;
                }
                tightest.add(quota);
            }
            Bare::Integer(_) | Bare::Other => {}
        }
    }
    if !entries.is_empty() {
        let policies = Policies::of(headers, policies);
        let found = match entries.limit {
            Some(limit) => policies.find(|p| p.quota == Some(limit)),
            None => policies.find(|p| p.quota.is_some()),
        };
        if let Some(p) = found {
            entries.limit = entries.limit.or(p.quota);
            entries.window = p.window;
        }
        tightest.add(entries);
    }
}
