//! Client identities: with `--jwt-secret`, each connection gets its own
//! HS256 token whose `sub` is its account, so it may read its
//! `orders.<account>` topic (and, for order connections, place orders as
//! that account) on a gateway that checks tokens.

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;

use crate::topics::TopicSpace;

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
}

/// The account connection `conn` acts for: the one whose orders topic
/// it subscribes to (`ACC<conn mod orders>`), or its own without order
/// topics.
pub fn account_for(conn: u64, space: &TopicSpace) -> String {
    match space.orders {
        0 => format!("ACC{conn}"),
        n => format!("ACC{}", conn % u64::from(n)),
    }
}

/// Signs each connection's token with one key.
pub struct Minter {
    key: EncodingKey,
    space: TopicSpace,
    /// Expiry of every token (Unix seconds).
    exp: u64,
}

impl Minter {
    pub fn new(secret: &str, space: TopicSpace, exp: u64) -> Result<Minter, jsonwebtoken::errors::Error> {
        Ok(Minter { key: EncodingKey::from_secret(secret.as_bytes())?, space, exp })
    }

    /// Subscriber connection `conn`'s token.
    pub fn mint(&self, conn: u64) -> Result<String, jsonwebtoken::errors::Error> {
        self.mint_for(&account_for(conn, &self.space))
    }

    /// A token acting for `account` (order connections have their own).
    pub fn mint_for(&self, account: &str) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::default(), &Claims { sub: account, exp: self.exp }, &self.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    #[test]
    fn tokens_carry_the_account_and_verify_with_the_secret() {
        let space = TopicSpace { quotes: 10, orders: 4 };
        assert_eq!(account_for(6, &space), "ACC2");
        assert_eq!(space.name(space.quotes + 2), "orders.ACC2");
        let minter = Minter::new("s3cret", space, wire::now_ms() / 1000 + 60).unwrap();
        let token = minter.mint(6).unwrap();
        #[derive(serde::Deserialize)]
        struct Back {
            sub: String,
        }
        let back = jsonwebtoken::decode::<Back>(
            &token,
            &DecodingKey::from_secret(b"s3cret").unwrap(),
            &Validation::new(Algorithm::HS256),
        )
        .unwrap();
        assert_eq!(back.claims.sub, "ACC2");
        assert_eq!(account_for(6, &TopicSpace { quotes: 10, orders: 0 }), "ACC6");
    }
}
