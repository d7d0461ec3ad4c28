//! The CloudEvents envelope in Kafka headers (binary content mode).
//!
//! Reads `ce_id`, `ce_source`, `ce_time` and `content-type` without copying.
//! A record without CloudEvents headers is a bare payload whose time is the
//! Kafka timestamp. This module decides nothing about the payload itself.

/// The envelope attributes sluice writes as columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// `ce_id`, when present.
    pub id: Option<&'a str>,
    /// `ce_source`, when present.
    pub source: Option<&'a str>,
    /// Event time in µs since the Unix epoch: `ce_time`, else the Kafka
    /// timestamp, else the time sluice read the record.
    pub time_micros: i64,
    /// How the payload is encoded, from `content-type` (Protobuf when absent).
    pub encoding: Encoding,
    /// CloudEvents extension attributes (`ce_*` headers beyond the
    /// specification's own), without the `ce_` prefix. Allocates only when
    /// a record has some.
    pub extensions: Vec<(&'a str, &'a str)>,
    /// The value of the header that names the tenant, if present.
    pub tenant_header: Option<&'a str>,
    /// `ce_dataschema`: where the payload's schema is, for payloads that do
    /// not carry its id themselves.
    pub dataschema: Option<&'a str>,
}

/// `ce_*` attributes the CloudEvents specification defines; any other
/// `ce_*` header is an extension.
const SPEC_ATTRIBUTES: [&str; 8] = [
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_time",
    "ce_specversion",
    "ce_datacontenttype",
    "ce_dataschema",
    "ce_subject",
];

/// Payload encodings sluice reads, both against the same Protobuf schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// Protobuf binary (`application/protobuf`, `application/x-protobuf`).
    #[default]
    Protobuf,
    /// The canonical Protobuf JSON mapping (`application/json`), as mobile
    /// and web clients send.
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("header `{0}` is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("header `ce_time` is not an RFC 3339 timestamp: {0:?}")]
    BadTime(String),
    #[error(
        "content-type {0:?} is not supported (expected application/protobuf or application/json)"
    )]
    UnsupportedContentType(String),
}

impl<'a> Envelope<'a> {
    /// Reads the envelope from a record's headers. `kafka_timestamp_ms` is
    /// the record's Kafka timestamp, if it has one.
    /// `tenant_header` names the header to keep in [`Envelope::tenant_header`].
    pub fn parse(
        headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
        kafka_timestamp_ms: Option<i64>,
        tenant_header: &str,
    ) -> Result<Envelope<'a>, EnvelopeError> {
        let mut envelope = Envelope {
            id: None,
            source: None,
            time_micros: 0,
            encoding: Encoding::Protobuf,
            extensions: Vec::new(),
            tenant_header: None,
            dataschema: None,
        };
        let mut time = None;
        for (key, value) in headers {
            let Some(value) = value else { continue };
            match key {
                "ce_id" => envelope.id = Some(utf8("ce_id", value)?),
                "ce_source" => envelope.source = Some(utf8("ce_source", value)?),
                "ce_time" => time = Some(parse_time(utf8("ce_time", value)?)?),
                "ce_dataschema" => envelope.dataschema = Some(utf8("ce_dataschema", value)?),
                "content-type" => envelope.encoding = encoding(utf8("content-type", value)?)?,
                other if other == tenant_header => {
                    envelope.tenant_header = Some(utf8("tenant header", value)?);
                }
                other => {
                    if let Some(name) = other.strip_prefix("ce_")
                        && !SPEC_ATTRIBUTES.contains(&other)
                    {
                        let value = std::str::from_utf8(value)
                            .map_err(|_| EnvelopeError::NotUtf8("ce_ extension"))?;
                        envelope.extensions.push((name, value));
                    }
                }
            }
        }
        envelope.time_micros = match (time, kafka_timestamp_ms) {
            (Some(t), _) => t,
            (None, Some(ms)) => ms.saturating_mul(1000),
            (None, None) => now_micros(),
        };
        Ok(envelope)
    }
}

fn utf8<'a>(name: &'static str, value: &'a [u8]) -> Result<&'a str, EnvelopeError> {
    std::str::from_utf8(value).map_err(|_| EnvelopeError::NotUtf8(name))
}

fn parse_time(text: &str) -> Result<i64, EnvelopeError> {
    if let Some(micros) = utc_micros(text.as_bytes()) {
        return Ok(micros);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_micros())
        .map_err(|_| EnvelopeError::BadTime(text.to_owned()))
}

/// µs since the epoch of the form producers almost always send,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, read without chrono (whose general
/// RFC 3339 parser cost about as much as the rest of the envelope). Anything else
/// (offsets, lowercase separators, leap seconds, a bad date) is `None` and
/// left to chrono, which decides.
fn utc_micros(text: &[u8]) -> Option<i64> {
    if text.len() < 20 {
        return None;
    }
    let (stamp, rest) = text.split_at(19);
    if [4, 7, 10, 13, 16].map(|i| stamp[i]) != *b"--T::" {
        return None;
    }
    let digits = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    let [year, month, day, hour, minute, second] =
        [0..4, 5..7, 8..10, 11..13, 14..16, 17..19].map(|range| digits(&stamp[range]));
    let (year, month, day) = (year?, month?, day?);
    let (hour, minute, second) = (hour?, minute?, second?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if day == 0 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let fraction_micros = match rest {
        [b'Z'] => 0,
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            let nanos = digits(fraction)? * 10u32.pow(9 - fraction.len() as u32);
            i64::from(nanos / 1000)
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date, counted in
    // 400-year eras that start on 1 March (leap days fall at an era's end).
    let (year, month) = (i64::from(year), i64::from(month));
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second);
    Some(seconds * 1_000_000 + fraction_micros)
}

fn encoding(value: &str) -> Result<Encoding, EnvelopeError> {
    let media = value.split(';').next().unwrap_or("").trim();
    let is = |name: &str| media.eq_ignore_ascii_case(name);
    if is("application/protobuf") || is("application/x-protobuf") {
        Ok(Encoding::Protobuf)
    } else if is("application/json") {
        Ok(Encoding::Json)
    } else {
        Err(EnvelopeError::UnsupportedContentType(value.to_owned()))
    }
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<'a>(
        headers: &'a [(&'a str, &'a [u8])],
        ts: Option<i64>,
    ) -> Result<Envelope<'a>, EnvelopeError> {
        Envelope::parse(headers.iter().map(|(k, v)| (*k, Some(*v))), ts, "baggage")
    }

    #[test]
    fn cloudevents_headers() {
        let headers: &[(&str, &[u8])] = &[
            ("ce_specversion", b"1.0"),
            ("ce_id", b"abc"),
            ("ce_source", b"/orders"),
            ("ce_type", b"x.y"),
            ("ce_time", b"2026-01-02T03:04:05.123456Z"),
            ("content-type", b"application/protobuf"),
        ];
        let e = parse(headers, Some(5)).unwrap();
        assert!(e.extensions.is_empty());
        assert_eq!(e.id, Some("abc"));
        assert_eq!(e.source, Some("/orders"));
        assert_eq!(e.time_micros, 1_767_323_045_123_456);
        assert_eq!(e.dataschema, None);
        let with_schema: &[(&str, &[u8])] = &[("ce_dataschema", b"https://r/schemas/ids/4")];
        let e = parse(with_schema, None).unwrap();
        assert_eq!(e.dataschema, Some("https://r/schemas/ids/4"));
        assert!(e.extensions.is_empty());
    }

    #[test]
    fn extension_attributes_are_collected() {
        let headers: &[(&str, &[u8])] = &[
            ("ce_id", b"abc"),
            ("ce_traceparent", b"00-ab-cd-01"),
            ("ce_partitionkey", b"k1"),
            ("ce_subject", b"not an extension"),
            ("baggage", b"tenant=test"),
        ];
        let e = parse(headers, None).unwrap();
        assert_eq!(
            e.extensions,
            vec![("traceparent", "00-ab-cd-01"), ("partitionkey", "k1")]
        );
        assert_eq!(e.tenant_header, Some("tenant=test"));
    }

    #[test]
    fn bare_record_uses_kafka_timestamp() {
        let e = parse(&[], Some(1_700_000_000_000)).unwrap();
        assert_eq!(e.id, None);
        assert_eq!(e.time_micros, 1_700_000_000_000_000);
    }

    #[test]
    fn offsets_in_ce_time_are_honoured() {
        let headers: &[(&str, &[u8])] = &[("ce_time", b"2026-01-02T05:04:05+02:00")];
        let e = parse(headers, None).unwrap();
        assert_eq!(e.time_micros, 1_767_323_045_000_000);
    }

    /// The fast path reads what chrono reads, to the microsecond, and
    /// leaves every other form (and every bad date) to chrono.
    #[test]
    fn utc_times_read_as_chrono_reads_them() {
        use chrono::{SecondsFormat, TimeZone, Utc};
        let chrono_micros = |text: &str| {
            chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.timestamp_micros())
        };
        // From 0001-01-01 to 9999-12-31T23:59:59, every 97 days and a bit.
        let mut seconds = -62_135_596_800i64;
        let mut checked = 0;
        while seconds < 253_402_300_799 {
            let nanos = (seconds.rem_euclid(1_000_000_007)) as u32 % 1_000_000_000;
            let time = Utc.timestamp_opt(seconds, nanos).unwrap();
            for format in [
                SecondsFormat::Secs,
                SecondsFormat::Millis,
                SecondsFormat::Micros,
                SecondsFormat::Nanos,
            ] {
                let text = time.to_rfc3339_opts(format, true);
                assert_eq!(utc_micros(text.as_bytes()), chrono_micros(&text), "{text}");
                checked += 1;
            }
            seconds += 86_400 * 97 + 3_601 * 7 + 13;
        }
        assert!(checked > 100_000, "{checked}");
        for (text, fast) in [
            ("2024-02-29T00:00:00Z", true),
            ("2000-02-29T12:00:00.5Z", true),
            ("2023-02-29T00:00:00Z", false),
            ("1900-02-29T00:00:00Z", false),
            ("2026-04-31T00:00:00Z", false),
            ("2026-13-01T00:00:00Z", false),
            ("2026-01-01T24:00:00Z", false),
            ("2026-06-30T23:59:60Z", false),
            ("2026-01-01T00:00:00.Z", false),
            ("2026-01-01T00:00:00.1234567891Z", false),
            ("2026-01-01t00:00:00z", false),
            ("2026-01-01T00:00:00+00:00", false),
            ("2026-01-01T00:00:00", false),
            ("2026-01-01T0a:00:00Z", false),
        ] {
            assert_eq!(utc_micros(text.as_bytes()).is_some(), fast, "{text}");
            assert_eq!(
                parse_time(text).ok(),
                chrono_micros(text),
                "{text} reads as chrono reads it"
            );
        }
    }

    #[test]
    fn bad_headers_are_errors() {
        let bad_time: &[(&str, &[u8])] = &[("ce_time", b"yesterday")];
        assert_eq!(
            parse(bad_time, None),
            Err(EnvelopeError::BadTime("yesterday".into()))
        );
        let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
        assert_eq!(parse(json, None).unwrap().encoding, Encoding::Json);
        let avro: &[(&str, &[u8])] = &[("content-type", b"avro/binary")];
        assert!(matches!(
            parse(avro, None),
            Err(EnvelopeError::UnsupportedContentType(_))
        ));
        let not_utf8: &[(&str, &[u8])] = &[("ce_id", &[0xff, 0xfe])];
        assert_eq!(parse(not_utf8, None), Err(EnvelopeError::NotUtf8("ce_id")));
        let with_params: &[(&str, &[u8])] =
            &[("content-type", b"application/x-protobuf; proto=x.Y")];
        assert!(parse(with_params, None).is_ok());
    }
}
