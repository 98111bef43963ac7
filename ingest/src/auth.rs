//! Device authentication and topic ACLs.
//!
//! Users are configured with an Argon2 password hash in PHC form (`$argon2id$v=19$m=...,t=...,p=...$salt$hash`,
//! as made by [`hash_password`] or the `argon2` CLI); plain passwords never appear in the configuration.
//! Each user (and the anonymous user, when `allow_anonymous` is set) has two lists of topic filters:
//! `publish` (topics it may publish to) and `subscribe` (filters it may subscribe to). In a filter,
//! `${username}` and `${client_id}` are replaced by the connecting client's values, which gives per-client ACLs
//! such as `devices/${client_id}/#`. An absent list means `["#"]` (everything); an empty list means nothing.
//!
//! A subscription is allowed when the requested filter is *covered* by an allowed one: every topic the requested
//! filter can match, the allowed filter matches too (so `devices/+/x` is covered by `devices/#` but not by
//! `devices/a/x`).

use std::collections::HashMap;

use argon2::Argon2;
/// Argon2 cost parameters (re-exported so callers can hash with chosen costs).
pub use argon2::Params;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::error::{IngestError, Result};
use crate::rules::topic_matches;

/// `[gateway.auth]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Let clients without username connect (with the `anonymous` ACL).
    pub allow_anonymous: bool,
    /// ACL of anonymous clients.
    pub anonymous: Acl,
    pub users: Vec<UserConfig>,
}

/// One user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub username: String,
    /// Argon2 PHC string.
    pub password_hash: String,
    #[serde(flatten)]
    pub acl: Acl,
}

/// Allowed topic filters for publish and subscribe; `None` means everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Acl {
    pub publish: Option<Vec<String>>,
    pub subscribe: Option<Vec<String>>,
}

/// Hash a password for the configuration (Argon2id, default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String> {
    hash_password_with(password, Params::default())
}

/// Hash with explicit Argon2 parameters (tests use cheap ones; the parameters travel inside the hash).
pub fn hash_password_with(password: &str, params: Params) -> Result<String> {
    let mut salt_bytes = [0u8; 16];
    salt_bytes.copy_from_slice(&uuid::Uuid::new_v4().as_bytes()[..]);
    let salt = SaltString::encode_b64(&salt_bytes)
        .map_err(|e| IngestError::Config(format!("cannot make a salt: {e}")))?;
    Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| IngestError::Config(format!("cannot hash the password: {e}")))
}

/// Who a connection is, after CONNECT.
#[derive(Clone, Debug)]
pub struct Identity {
    pub username: Option<String>,
    pub client_id: String,
    publish: Vec<String>,
    subscribe: Vec<String>,
}

impl Identity {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|f| topic_matches(f, topic))
    }

    pub fn may_subscribe(&self, filter: &str) -> bool {
        // Shared subscriptions ($share/<group>/<filter>) are checked on the filter.
        let filter = match filter.strip_prefix("$share/") {
            Some(rest) => rest.split_once('/').map_or(rest, |(_, f)| f),
            None => filter,
        };
        self.subscribe.iter().any(|f| filter_covers(f, filter))
    }
}

/// Why a CONNECT was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    BadCredentials,
    NotAuthorized,
}

/// Checked users, ready to authenticate.
#[derive(Debug)]
pub struct Authenticator {
    allow_anonymous: bool,
    anonymous: Acl,
    users: HashMap<String, (String, Acl)>,
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self> {
        let mut users = HashMap::new();
        for u in &config.users {
            PasswordHash::new(&u.password_hash).map_err(|e| {
                IngestError::Config(format!(
                    "user {:?}: password_hash is not an Argon2 PHC string: {e}",
                    u.username
                ))
            })?;
            for f in acl_filters(&u.acl) {
                check_acl_filter(f)
                    .map_err(|e| IngestError::Config(format!("user {:?}: {e}", u.username)))?;
            }
            if users
                .insert(u.username.clone(), (u.password_hash.clone(), u.acl.clone()))
                .is_some()
            {
                return Err(IngestError::Config(format!(
                    "user {:?} is configured twice",
                    u.username
                )));
            }
        }
        for f in acl_filters(&config.anonymous) {
            check_acl_filter(f).map_err(|e| IngestError::Config(format!("anonymous: {e}")))?;
        }
        if !config.allow_anonymous && users.is_empty() {
            return Err(IngestError::Config(
                "no users are configured and allow_anonymous is false: no client could connect".into(),
            ));
        }
        Ok(Self {
            allow_anonymous: config.allow_anonymous,
            anonymous: config.anonymous.clone(),
            users,
        })
    }

    /// Check a CONNECT's credentials. Argon2 is slow on purpose: call this off the async workers.
    pub fn authenticate(
        &self,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> std::result::Result<Identity, Refusal> {
        let (username, acl) = match login {
            None if self.allow_anonymous => (None, &self.anonymous),
            None => return Err(Refusal::NotAuthorized),
            Some((user, password)) => {
                let Some((hash, acl)) = self.users.get(user) else {
                    return Err(Refusal::BadCredentials);
                };
                let ok = PasswordHash::new(hash)
                    .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
                    .unwrap_or(false);
                if !ok {
                    return Err(Refusal::BadCredentials);
                }
                (Some(user.to_string()), acl)
            }
        };
        let expand = |list: &Option<Vec<String>>| -> Vec<String> {
            match list {
                None => vec!["#".to_string()],
                Some(filters) => filters
                    .iter()
                    .map(|f| {
                        f.replace("${username}", username.as_deref().unwrap_or(""))
                            .replace("${client_id}", client_id)
                    })
                    .collect(),
            }
        };
        Ok(Identity {
            publish: expand(&acl.publish),
            subscribe: expand(&acl.subscribe),
            username,
            client_id: client_id.to_string(),
        })
    }
}

fn acl_filters(acl: &Acl) -> impl Iterator<Item = &String> {
    acl.publish.iter().flatten().chain(acl.subscribe.iter().flatten())
}

fn check_acl_filter(filter: &str) -> std::result::Result<(), String> {
    let probe = filter.replace("${username}", "u").replace("${client_id}", "c");
    crate::rules::sql::validate_filter(&probe)
}

/// True when every topic that `requested` matches is matched by `allowed`.
pub fn filter_covers(allowed: &str, requested: &str) -> bool {
    let mut req = requested.split('/');
    for a in allowed.split('/') {
        if a == "#" {
            return !(requested.starts_with('$') && allowed.starts_with('#'));
        }
        match req.next() {
            None => return false,
            Some("#") => return false,
            Some("+") if a == "+" => {}
            Some("+") => return false,
            Some(level) if a == "+" || a == level => {}
            Some(_) => return false,
        }
    }
    req.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(256, 1, 1, None).unwrap()
    }

    #[test]
    fn covers() {
        let rows: &[(&str, &str, bool)] = &[
            ("#", "a/b", true),
            ("#", "#", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a", true),
            ("a/+", "a/b", true),
            ("a/+", "a/+", true),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b/c", false),
            ("a/+/c", "a/b/c", true),
            ("#", "$SYS/x", false),
        ];
        for (allowed, requested, expected) in rows {
            assert_eq!(
                filter_covers(allowed, requested),
                *expected,
                "{allowed} covers {requested}"
            );
        }
    }

    #[test]
    fn passwords_and_acls() {
        let config = AuthConfig {
            allow_anonymous: false,
            anonymous: Acl::default(),
            users: vec![UserConfig {
                username: "dev".into(),
                password_hash: hash_password_with("s3cret", cheap()).unwrap(),
                acl: Acl {
                    publish: Some(vec!["devices/${client_id}/#".into()]),
                    subscribe: Some(vec![]),
                },
            }],
        };
        let auth = Authenticator::new(&config).unwrap();
        assert_eq!(
            auth.authenticate("c1", Some(("dev", "wrong"))).unwrap_err(),
            Refusal::BadCredentials
        );
        assert_eq!(
            auth.authenticate("c1", Some(("nobody", "s3cret"))).unwrap_err(),
            Refusal::BadCredentials
        );
        assert_eq!(auth.authenticate("c1", None).unwrap_err(), Refusal::NotAuthorized);
        let id = auth.authenticate("c1", Some(("dev", "s3cret"))).unwrap();
        assert!(id.may_publish("devices/c1/telemetry"));
        assert!(!id.may_publish("devices/c2/telemetry"));
        assert!(!id.may_subscribe("devices/c1/telemetry"));
    }

    #[test]
    fn bad_config_is_refused() {
        let mut config = AuthConfig::default();
        assert!(Authenticator::new(&config).is_err());
        config.users.push(UserConfig {
            username: "u".into(),
            password_hash: "plain".into(),
            acl: Acl::default(),
        });
        let e = Authenticator::new(&config).unwrap_err().to_string();
        assert!(e.contains("not an Argon2 PHC string"), "{e}");
    }
}
