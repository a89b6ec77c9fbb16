//! Topic names: what is a valid one and which family it belongs to.
//!
//! The contract allows 1–128 characters of `A-Z a-z 0-9 . _ : -`. Two
//! families carry meaning: `quotes.<SYMBOL>` (public, latest value wins)
//! and `orders.<ACCOUNT>` (private to one account, nothing may be lost).

use std::fmt;
use std::sync::Arc;

/// Longest topic name the contract allows, in bytes (all allowed
/// characters are ASCII, so bytes and characters agree).
pub const MAX_TOPIC_LEN: usize = 128;

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic is empty")]
    Empty,
    #[error("topic is longer than {MAX_TOPIC_LEN} characters")]
    TooLong,
    #[error("topic may only contain A-Z a-z 0-9 . _ : -")]
    BadCharacter,
}

/// What a topic's name says about how it must be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicFamily {
    /// `quotes.<SYMBOL>`: public; a newer value supersedes an older one.
    Quotes,
    /// `orders.<ACCOUNT>`: private to the account; every update matters.
    Orders,
    /// Anything else: delivered as is, treated like orders (never conflated).
    Other,
}

/// A validated topic name, cheap to clone and share between tasks.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` against the contract's rules.
    pub fn parse(name: &str) -> Result<Topic, TopicError> {
        validate(name)?;
        Ok(Topic(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn family(&self) -> TopicFamily {
        family_of(&self.0)
    }

    /// The account an `orders.<ACCOUNT>` topic belongs to.
    pub fn account(&self) -> Option<&str> {
        self.0.strip_prefix("orders.")
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Checks a topic name without allocating.
pub fn validate(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::Empty);
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')) {
        return Err(TopicError::BadCharacter);
    }
    Ok(())
}

/// The family of a (valid) topic name.
pub fn family_of(name: &str) -> TopicFamily {
    if name.starts_with("quotes.") {
        TopicFamily::Quotes
    } else if name.starts_with("orders.") {
        TopicFamily::Orders
    } else {
        TopicFamily::Other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_contract_examples() {
        for ok in ["quotes.AAPL", "orders.acct-42", "a", "x:y_z-1.2", &"a".repeat(128)] {
            assert!(Topic::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(validate(""), Err(TopicError::Empty));
        assert_eq!(validate(&"a".repeat(129)), Err(TopicError::TooLong));
        for bad in ["a b", "a/b", "é", "a*", "quotes.AAPL\n", "{x}"] {
            assert_eq!(validate(bad), Err(TopicError::BadCharacter), "{bad:?}");
        }
    }

    #[test]
    fn families_and_accounts() {
        let t = Topic::parse("orders.acct1").unwrap();
        assert_eq!(t.family(), TopicFamily::Orders);
        assert_eq!(t.account(), Some("acct1"));
        assert_eq!(family_of("quotes.X"), TopicFamily::Quotes);
        assert_eq!(family_of("news.X"), TopicFamily::Other);
    }
}
