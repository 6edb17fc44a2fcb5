//! NATS decentralised auth (docs/security.md): an operator key signs one account, the
//! account's key signs a user per pool whose JWT lists the pool's own subjects. The server
//! trusts the operator and knows the account (a memory resolver), so users are never
//! registered with it: the Workpool operator mints a pool's user when it makes the pool,
//! and the server checks the signature and permissions on connect.
//!
//! The JWTs follow the NATS JWT v2 format: a `{"typ":"JWT","alg":"ed25519-nkey"}` header,
//! standard claims plus a `nats` object, base64url without padding, signed with the
//! issuer's nkey.

use std::path::Path;

use base64::Engine as _;
use nkeys::KeyPair;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::Digest as _;
use workpool_core::nats_permissions::Permissions;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("nkey: {0}")]
    Key(#[from] nkeys::error::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an account seed (it starts with SA)")]
    NotAccountSeed { path: std::path::PathBuf },
}

/// What trusts what: made once per NATS deployment (`make up`, a test, the chart's
/// bootstrap), then only the account key is needed, to mint users.
pub struct Trust {
    operator: KeyPair,
    system: KeyPair,
    account: AccountKey,
}

/// The key of the account every pool lives in; it signs users.
pub struct AccountKey(KeyPair);

impl Trust {
    pub fn generate() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            system: KeyPair::new_account(),
            account: AccountKey(KeyPair::new_account()),
        }
    }

    pub fn account(&self) -> &AccountKey {
        &self.account
    }

    /// The lines of `nats.conf` that turn auth on: the trusted operator, the system
    /// account and the Workpool account (with JetStream), preloaded in memory.
    pub fn server_config(&self) -> Result<String, AuthError> {
        let operator = self.operator.public_key();
        let system = self.system.public_key();
        let operator_jwt = encode(
            &self.operator,
            &operator,
            "workpool",
            json!({"type": "operator", "version": 2, "system_account": system}),
        )?;
        let system_jwt = encode(&self.operator, &system, "SYS", account_claims(false))?;
        let account = self.account.0.public_key();
        let account_jwt = encode(&self.operator, &account, "workpool", account_claims(true))?;
        Ok(format!(
            "operator: {operator_jwt}\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: {system_jwt}\n  {account}: {account_jwt}\n}}\n"
        ))
    }
}

/// An account's limits: none, and JetStream on (unlimited) for the Workpool account.
fn account_claims(jetstream: bool) -> Value {
    let storage = if jetstream { -1 } else { 0 };
    json!({
        "type": "account",
        "version": 2,
        "limits": {
            "subs": -1, "data": -1, "payload": -1,
            "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1,
            "mem_storage": storage, "disk_storage": storage, "streams": storage,
            "consumer": storage
        }
    })
}

impl AccountKey {
    /// Reads an account seed (`SA…`) from a file, as the operator's Secret holds it.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let key = KeyPair::from_seed(text.trim())?;
        if key.key_pair_type() != nkeys::KeyPairType::Account {
            return Err(AuthError::NotAccountSeed {
                path: path.to_owned(),
            });
        }
        Ok(Self(key))
    }

    pub fn seed(&self) -> Result<String, AuthError> {
        Ok(self.0.seed()?)
    }

    /// A `.creds` file (user JWT and seed) for a new user named `name`, allowed only
    /// `permissions`, or everything in the account when `None` (the operator's own user).
    pub fn user_creds(
        &self,
        name: &str,
        permissions: Option<&Permissions>,
    ) -> Result<String, AuthError> {
        let user = KeyPair::new_user();
        let mut claims = json!({
            "type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1,
        });
        if let Some(permissions) = permissions {
            claims["pub"] = json!({"allow": permissions.publish});
            claims["sub"] = json!({"allow": permissions.subscribe});
        }
        let jwt = encode(&self.0, &user.public_key(), name, claims)?;
        Ok(creds_file(&jwt, &user.seed()?))
    }
}

/// The standard JWT claims, in the order the NATS JWT library hashes them for `jti`.
#[derive(Serialize)]
struct Standard<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    jti: &'a str,
    iat: i64,
    iss: &'a str,
    name: &'a str,
    sub: &'a str,
}

fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> Result<String, AuthError> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let issuer_key = issuer.public_key();
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let mut standard = Standard {
        jti: "",
        iat,
        iss: &issuer_key,
        name,
        sub: subject,
    };
    let hashed = serde_json::to_vec(&standard).unwrap_or_default();
    let jti = data_encoding::BASE32_NOPAD.encode(&sha2::Sha512_256::digest(hashed));
    standard.jti = &jti;
    let mut claims = serde_json::to_value(&standard).unwrap_or_default();
    claims["nats"] = nats;
    let header = b64.encode(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let payload = b64.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let signature = issuer.sign(signed.as_bytes())?;
    Ok(format!("{signed}.{}", b64.encode(signature)))
}

fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims_of(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).expect("three parts");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    }

    #[test]
    fn a_pool_user_is_signed_by_the_account_and_carries_its_permissions() {
        let trust = Trust::generate();
        let permissions = Permissions {
            publish: vec!["a.>".into()],
            subscribe: vec!["b".into()],
        };
        let creds = trust
            .account()
            .user_creds("pool", Some(&permissions))
            .expect("creds");
        let jwt = creds.lines().nth(1).expect("jwt line");
        let claims = claims_of(jwt);
        assert_eq!(claims["iss"], trust.account.0.public_key());
        assert_eq!(claims["nats"]["pub"]["allow"], json!(["a.>"]));
        assert_eq!(claims["nats"]["sub"]["allow"], json!(["b"]));
        let (signed, signature) = jwt.rsplit_once('.').expect("signature");
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .expect("base64url");
        let account = KeyPair::from_public_key(&trust.account.0.public_key()).expect("key");
        account
            .verify(signed.as_bytes(), &signature)
            .expect("a valid signature");
    }

    #[test]
    fn an_account_seed_file_round_trips_and_other_seeds_are_refused() {
        let dir = std::env::temp_dir().join(format!("nats-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("account.seed");
        let trust = Trust::generate();
        std::fs::write(&path, trust.account().seed().expect("seed")).expect("write");
        let read = AccountKey::from_file(&path).expect("an account seed");
        assert_eq!(read.0.public_key(), trust.account.0.public_key());
        let user_seed = KeyPair::new_user().seed().expect("seed");
        std::fs::write(&path, user_seed).expect("write");
        assert!(matches!(
            AccountKey::from_file(&path),
            Err(AuthError::NotAccountSeed { .. })
        ));
        std::fs::remove_dir_all(&dir).ok();
    }
}
