//! Durations and switches as configuration files write them: human text (`"250ms"`, `"15m"`,
//! `"1h30m"`, `"1.5s"`), read by the crate's one duration parser
//! ([`parse_duration`](crate::rate_limit::parse_duration)), and `"off"` where a part can be
//! left out. A plain number is refused: it says nothing of its unit.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use crate::rate_limit::{parse_duration, HeaderError};

/// What a duration must look like, said in every refusal.
const HOW: &str = "a number and a unit (h, m, s, ms, us, ns), as \"30s\", \"250ms\" or \"1h30m\"";

/// Reads `text` as a duration, or says why it is not one.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let shown: String = text.chars().take(32).collect();
    let bare = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match parse_duration(text) {
        Ok(duration) => Ok(duration),
        Err(_) if bare => Err(no_unit(&shown)),
        Err(HeaderError::OutOfRange) => Err(format!(
            "{shown:?} is out of range: a duration is at least zero and at most 365 days (\"8760h\")"
        )),
        Err(_) => Err(format!("{shown:?} is not a duration: write {HOW}")),
    }
}

fn no_unit(number: &str) -> String {
    format!("{number} has no unit: write \"{number}s\" or \"{number}ms\" ({HOW})")
}

/// `duration` as [`parse`] reads it back: `"0s"`, `"250ms"`, `"1h30m"`, `"1.5s"`.
pub(crate) fn format(duration: Duration) -> String {
    let (secs, nanos) = (duration.as_secs(), duration.subsec_nanos());
    if secs == 0 {
        return match nanos {
            0 => "0s".to_owned(),
            n if n.is_multiple_of(1_000_000) => format!("{}ms", n / 1_000_000),
            n if n.is_multiple_of(1_000) => format!("{}us", n / 1_000),
            n => format!("{n}ns"),
        };
    }
    let mut text = String::new();
    let (hours, minutes, seconds) = (secs / 3600, secs % 3600 / 60, secs % 60);
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    if seconds > 0 || nanos > 0 {
        text.push_str(&seconds.to_string());
        if nanos > 0 {
            let fraction = format!("{nanos:09}");
            text.push('.');
            text.push_str(fraction.trim_end_matches('0'));
        }
        text.push('s');
    }
    text
}

/// A duration, or `None` for `"off"` when `off` allows it.
struct DurationVisitor {
    off: bool,
}

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.off {
            true => write!(f, "a duration ({HOW}) or \"off\""),
            false => write!(f, "a duration ({HOW})"),
        }
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if self.off && text == "off" {
            return Ok(None);
        }
        parse(text).map(Some).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
        Err(E::custom(no_unit(&n.to_string())))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
        Err(E::custom(no_unit(&n.to_string())))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
        Err(E::custom(no_unit(&n.to_string())))
    }
}

/// `Option<Duration>` fields: absent is `None`, present is a duration.
pub(crate) mod option {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match deserializer.deserialize_any(DurationVisitor { off: false })? {
            Some(duration) => Ok(Some(duration)),
            // The visitor gives `None` only for "off", which it refuses here.
            None => Err(de::Error::custom("\"off\" is not a duration")),
        }
    }

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_str(&format(*duration)),
            None => serializer.serialize_none(),
        }
    }
}

/// `Option<Option<Duration>>` fields: absent is `None`, `"off"` is `Some(None)`, a duration
/// `Some(Some(_))`.
pub(crate) mod or_off {
    use super::*;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<Duration>>, D::Error> {
        deserializer
            .deserialize_any(DurationVisitor { off: true })
            .map(Some)
    }

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Option<Duration>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(Some(duration)) => serializer.serialize_str(&format(*duration)),
            Some(None) => serializer.serialize_str("off"),
            None => serializer.serialize_none(),
        }
    }
}

/// `Option<Option<T>>` fields for a part that is `"off"` or a table of its settings: absent is
/// `None`, `"off"` is `Some(None)`, a table `Some(Some(_))`.
pub(crate) mod table_or_off {
    use super::*;

    struct TableVisitor<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for TableVisitor<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("\"off\" or a table of settings")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text {
                "off" => Ok(None),
                _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
            }
        }

        fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<Self::Value, M::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        deserializer
            .deserialize_any(TableVisitor(PhantomData))
            .map(Some)
    }

    pub(crate) fn serialize<S: Serializer, T: Serialize>(
        value: &Option<Option<T>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(Some(table)) => table.serialize(serializer),
            Some(None) => serializer.serialize_str("off"),
            None => serializer.serialize_none(),
        }
    }
}

/// `Option<Option<f64>>` fields: absent is `None`, `"off"` is `Some(None)`, a number
/// `Some(Some(_))`.
pub(crate) mod number_or_off {
    use super::*;

    struct NumberVisitor;

    impl Visitor<'_> for NumberVisitor {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or \"off\"")
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
            match text {
                "off" => Ok(None),
                _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
            }
        }

        fn visit_f64<E: de::Error>(self, n: f64) -> Result<Self::Value, E> {
            Ok(Some(n))
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Self::Value, E> {
            Ok(Some(n as f64))
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
            Ok(Some(n as f64))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Option<f64>>, D::Error> {
        deserializer.deserialize_any(NumberVisitor).map(Some)
    }

    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Option<f64>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(Some(n)) => serializer.serialize_f64(*n),
            Some(None) => serializer.serialize_str("off"),
            None => serializer.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_durations_are_read_by_the_crate_parser() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn a_bare_number_is_told_to_add_a_unit() {
        for text in ["30", "1.5"] {
            let message = parse(text).unwrap_err();
            assert!(message.contains("has no unit"), "{message}");
            assert!(message.contains(&format!("\"{text}s\"")), "{message}");
        }
        let message = parse("30 seconds").unwrap_err();
        assert!(message.contains("is not a duration"), "{message}");
        let message = parse("9000h").unwrap_err();
        assert!(message.contains("out of range"), "{message}");
        assert!(parse("-5s").unwrap_err().contains("out of range"));
    }

    #[test]
    fn formatted_durations_read_back_the_same() {
        for duration in [
            Duration::ZERO,
            Duration::from_nanos(7),
            Duration::from_micros(250),
            Duration::from_millis(250),
            Duration::from_millis(1500),
            Duration::from_secs(60),
            Duration::from_secs(5400),
            Duration::from_secs(3600 + 1) + Duration::from_nanos(1),
            Duration::from_secs(365 * 24 * 3600),
        ] {
            let text = format(duration);
            assert_eq!(parse(&text), Ok(duration), "{text}");
        }
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format(Duration::from_millis(250)), "250ms");
    }
}
