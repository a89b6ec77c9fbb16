//! Who a connection is and what it may do.
//!
//! Clients authenticate with a JWT (HS256) passed as `?token=…` on the
//! upgrade URL or as `Authorization: Bearer …`; claim `sub` is the
//! account. `orders.<account>` is readable only with a token whose `sub`
//! is that account, and `order` actions act only for it. Other topics are
//! public unless `public_topics` is off. With no `jwt_secret` configured
//! authentication is off (development) and every topic is open.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use wire::{ErrorCode, Topic, TopicFamily};

use crate::config::Config;

pub struct Auth {
    /// None when authentication is off.
    key: Option<DecodingKey>,
    validation: Validation,
    public_topics: bool,
}

/// The authenticated (or anonymous) client behind one connection.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The token's `sub`; None for anonymous clients.
    pub account: Option<String>,
    /// When the token stops being valid (Unix seconds, leeway included).
    pub expires_at: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token rejected: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

impl Auth {
    pub fn from_config(config: &Config) -> Auth {
        let key = (!config.jwt_secret.expose().is_empty())
            .then(|| DecodingKey::from_secret(config.jwt_secret.expose().as_bytes()).ok())
            .flatten();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.jwt_leeway_secs;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth { key, validation, public_topics: config.public_topics }
    }

    pub fn enabled(&self) -> bool {
        self.key.is_some()
    }

    /// Checks the token a client presented, if any. No token means an
    /// anonymous client; a bad, expired or unsigned one is refused.
    pub fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthError> {
        let (Some(key), Some(token)) = (&self.key, token) else {
            return Ok(Identity::default());
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        if data.claims.sub.is_empty() {
            return Err(AuthError::Invalid("empty sub".into()));
        }
        Ok(Identity {
            account: Some(data.claims.sub),
            expires_at: Some(data.claims.exp.saturating_add(self.validation.leeway)),
        })
    }

    /// May `who` subscribe to `topic`? The error is the code to send.
    pub fn may_subscribe(&self, who: &Identity, topic: &Topic) -> Result<(), ErrorCode> {
        if !self.enabled() {
            return Ok(());
        }
        match (topic.family(), who.account.as_deref()) {
            (TopicFamily::Orders, None) => Err(ErrorCode::Unauthorized),
            (TopicFamily::Orders, Some(account)) if topic.account() != Some(account) => {
                Err(ErrorCode::Forbidden)
            }
            (TopicFamily::Orders, Some(_)) => Ok(()),
            (_, None) if !self.public_topics => Err(ErrorCode::Unauthorized),
            _ => Ok(()),
        }
    }

    /// The account an `order` acts for: the token's when authentication is
    /// on (required), none otherwise (the order names its own).
    pub fn order_account(&self, who: &Identity) -> Result<Option<String>, ErrorCode> {
        match (self.enabled(), &who.account) {
            (false, _) => Ok(None),
            (true, Some(account)) => Ok(Some(account.clone())),
            (true, None) => Err(ErrorCode::Unauthorized),
        }
    }
}

/// The token in `?token=…` or `Authorization: Bearer …` (query first).
pub fn token_from(query: Option<&str>, authorization: Option<&str>) -> Option<String> {
    let from_query = query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
    });
    from_query.or_else(|| authorization.and_then(|h| h.strip_prefix("Bearer ")).map(|t| t.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};

    fn token(secret: &str, sub: &str, exp: u64) -> String {
        let claims = serde_json::json!({"sub": sub, "exp": exp});
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    fn auth(secret: &str, public_topics: bool) -> Auth {
        let config = Config { jwt_secret: secret.into(), public_topics, ..Config::default() };
        Auth::from_config(&config)
    }

    fn in_an_hour() -> u64 {
        wire::now_ms() / 1000 + 3600
    }

    #[test]
    fn orders_are_private_to_their_account() {
        let auth = auth("k", true);
        let alice = auth.authenticate(Some(&token("k", "alice", in_an_hour()))).unwrap();
        let anon = auth.authenticate(None).unwrap();
        let t = |s| Topic::parse(s).unwrap();
        assert_eq!(auth.may_subscribe(&alice, &t("orders.alice")), Ok(()));
        assert_eq!(auth.may_subscribe(&alice, &t("orders.bob")), Err(ErrorCode::Forbidden));
        assert_eq!(auth.may_subscribe(&anon, &t("orders.alice")), Err(ErrorCode::Unauthorized));
        assert_eq!(auth.may_subscribe(&anon, &t("quotes.AAPL")), Ok(()));
        assert_eq!(auth.order_account(&alice), Ok(Some("alice".into())));
        assert_eq!(auth.order_account(&anon), Err(ErrorCode::Unauthorized));
    }

    #[test]
    fn bad_tokens_are_refused() {
        let auth = auth("k", true);
        assert!(auth.authenticate(Some(&token("other", "alice", in_an_hour()))).is_err());
        assert!(auth.authenticate(Some(&token("k", "alice", 1_000))).is_err(), "expired");
        assert!(auth.authenticate(Some("not.a.jwt")).is_err());
        assert!(auth.authenticate(Some("")).is_err());
    }

    #[test]
    fn private_mode_and_disabled_mode() {
        let private = auth("k", false);
        let anon = Identity::default();
        assert_eq!(
            private.may_subscribe(&anon, &Topic::parse("quotes.A").unwrap()),
            Err(ErrorCode::Unauthorized)
        );
        let off = auth("", true);
        assert!(!off.enabled());
        assert_eq!(off.may_subscribe(&anon, &Topic::parse("orders.x").unwrap()), Ok(()));
        assert_eq!(off.authenticate(Some("garbage")).unwrap().account, None, "tokens are ignored when off");
    }

    #[test]
    fn token_sources() {
        assert_eq!(token_from(Some("a=1&token=abc.def"), None).as_deref(), Some("abc.def"));
        assert_eq!(token_from(None, Some("Bearer xyz")).as_deref(), Some("xyz"));
        assert_eq!(token_from(Some("token=q"), Some("Bearer h")).as_deref(), Some("q"));
        assert_eq!(token_from(Some("token=a%2Eb"), None).as_deref(), Some("a.b"));
        assert_eq!(token_from(Some("token=%zz%"), None).as_deref(), Some("%zz%"));
        assert_eq!(token_from(Some("token=%C3%A9%"), None).as_deref(), Some("é%"));
        assert_eq!(token_from(None, Some("Basic x")), None);
    }
}
