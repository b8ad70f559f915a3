//! How durations and times are written in everything setpoint serializes (status,
//! events, logs, specs): durations as whole milliseconds, times as RFC 3339 with
//! milliseconds. One definition each, for `#[serde(with = "...")]`; each reads back
//! what it writes.

/// A `Duration` as whole milliseconds.
pub mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes whole milliseconds.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    /// Reads whole milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// An `Option<Duration>` as whole milliseconds, or null.
pub mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    /// Writes whole milliseconds, or null.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis().min(u128::from(u64::MAX)) as u64)),
            None => s.serialize_none(),
        }
    }

    /// Reads whole milliseconds, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// A `SystemTime` as RFC 3339 with milliseconds (`2026-12-02T01:37:26.123Z`).
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Writes RFC 3339.
    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    /// Reads RFC 3339.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

/// An `Option<SystemTime>` as RFC 3339 with milliseconds, or null.
pub mod opt_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    /// Writes RFC 3339, or null.
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&humantime::format_rfc3339_millis(*t)),
            None => s.serialize_none(),
        }
    }

    /// Reads RFC 3339, or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_rfc3339(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct All {
        #[serde(with = "super::millis")]
        d: Duration,
        #[serde(with = "super::opt_millis")]
        od: Option<Duration>,
        #[serde(with = "super::rfc3339")]
        t: SystemTime,
        #[serde(with = "super::opt_rfc3339")]
        ot: Option<SystemTime>,
    }

    #[test]
    fn each_reads_back_what_it_writes() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_123);
        let all = All {
            d: Duration::from_millis(1500),
            od: None,
            t,
            ot: Some(t),
        };
        let json = serde_json::to_string(&all).expect("serializes");
        assert_eq!(
            json,
            r#"{"d":1500,"od":null,"t":"2027-01-15T08:00:00.123Z","ot":"2027-01-15T08:00:00.123Z"}"#
        );
        assert_eq!(serde_json::from_str::<All>(&json).expect("reads back"), all);
    }
}
