//! The key/value configuration a transform receives once, in `init`.

use std::fmt::Display;
use std::str::FromStr;

use crate::Error;

/// The read-only key/value configuration given to
/// [`Transform::init`](crate::Transform::init).
///
/// It is the transform's table from the host's config file, with every value
/// as a string. Keys keep the order the host gave them; when a key appears
/// twice the last value wins.
///
/// ```
/// use sluice_sdk::{Config, Qos};
///
/// let config = Config::from_pairs([("prefix", "plant"), ("qos", "2")]);
/// assert_eq!(config.get("prefix"), Some("plant"));
/// assert_eq!(config.get_or("unit", "C"), "C");
/// assert_eq!(config.parse::<Qos>("qos"), Ok(Some(Qos::ExactlyOnce)));
/// assert_eq!(config.parse::<u32>("missing"), Ok(None));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// An empty configuration.
    pub fn new() -> Self {
        Self::default()
    }

    /// A configuration from key/value pairs, for tests and native callers.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Config {
            entries: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Takes ownership of the pairs the host passed, without copying them.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn from_vec(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// The value of `key`, if it is set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when it is not set.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// The value of `key`, or an [`Error::InvalidConfig`] naming the key when
    /// it is not set.
    pub fn require(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::invalid_config(format!("`{key}` is required but not set")))
    }

    /// Parses the value of `key` with [`FromStr`].
    ///
    /// `Ok(None)` when the key is not set; an [`Error::InvalidConfig`] naming
    /// the key, the value and the reason when it does not parse.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value
                .parse()
                .map(Some)
                .map_err(|err| Error::invalid_config(format!("`{key}` = {value:?}: {err}"))),
        }
    }

    /// Like [`parse`](Self::parse), with a default for when the key is not
    /// set.
    pub fn parse_or<T>(&self, key: &str, default: T) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(key)?.unwrap_or(default))
    }

    /// All key/value pairs, in the order the host gave them (duplicates
    /// included).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn get_and_defaults() {
        let c = Config::from_pairs([("a", "1"), ("b", "two")]);
        assert_eq!(c.get("a"), Some("1"));
        assert_eq!(c.get("z"), None);
        assert_eq!(c.get_or("b", "x"), "two");
        assert_eq!(c.get_or("z", "x"), "x");
        assert_eq!(c.len(), 2);
        assert!(!c.is_empty());
        assert!(Config::new().is_empty());
    }

    #[test]
    fn last_duplicate_wins() {
        let c = Config::from_pairs([("a", "1"), ("a", "2")]);
        assert_eq!(c.get("a"), Some("2"));
        assert_eq!(c.iter().count(), 2);
    }

    #[test]
    fn parse_ok_missing_and_invalid() {
        let c = Config::from_pairs([("n", "42"), ("bad", "4x2")]);
        assert_eq!(c.parse::<u16>("n"), Ok(Some(42)));
        assert_eq!(c.parse::<u16>("missing"), Ok(None));
        assert_eq!(c.parse_or::<u16>("missing", 7), Ok(7));
        let err = c.parse::<u16>("bad").unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)));
        assert_eq!(
            err.to_string(),
            "invalid config: `bad` = \"4x2\": invalid digit found in string"
        );
    }

    #[test]
    fn require_names_the_key() {
        let c = Config::from_pairs([("a", "1")]);
        assert_eq!(c.require("a"), Ok("1"));
        assert_eq!(
            c.require("port"),
            Err(Error::invalid_config("`port` is required but not set"))
        );
    }

    #[test]
    fn iter_keeps_order() {
        let c = Config::from_pairs([("b".to_string(), "2".to_string()), ("a".into(), "1".into())]);
        let pairs: Vec<_> = c.iter().collect();
        assert_eq!(pairs, [("b", "2"), ("a", "1")]);
    }
}
