//! Coinbase Developer Platform API keys and the JWT sent with every request: ES256 for EC P-256 keys
//! (signature as raw `r || s`, not DER), EdDSA for Ed25519 keys, header and claims as Coinbase's SDK
//! sends them. Also verification, for the simulator.
//!
//! Deliberately not here: HTTP. The private key never appears in `Debug`, logs or errors.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// How long a JWT lives, as Coinbase's SDK sets it.
pub const JWT_LIFETIME_SECONDS: i64 = 120;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the Coinbase key file {path}: {reason}")]
    ReadKey { path: String, reason: String },
    #[error(
        "the Coinbase private key is neither an EC P-256 PEM (-----BEGIN EC PRIVATE KEY-----) nor a base64 Ed25519 \
         secret: {0}"
    )]
    BadKey(String),
    #[error("the Coinbase key name is empty: set it to organizations/<org>/apiKeys/<key>")]
    NoName,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("unknown key {0:?}")]
    UnknownKey(String),
    #[error("token is for {actual:?}, not {expected:?}")]
    WrongUri { expected: String, actual: String },
}

#[derive(Clone)]
enum Signing {
    Es256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// A public key the simulator accepts tokens from.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Es256(p256::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

/// A CDP API key: its name and its private key.
#[derive(Clone)]
pub struct CdpKey {
    name: String,
    signing: Signing,
}

impl fmt::Debug for CdpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alg = match self.signing {
            Signing::Es256(_) => "ES256",
            Signing::Ed25519(_) => "EdDSA",
        };
        f.debug_struct("CdpKey")
            .field("name", &self.name)
            .field("alg", &alg)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// Coinbase's downloadable key file: `{"name": "...", "privateKey": "-----BEGIN EC PRIVATE KEY-----\n..."}`.
#[derive(Deserialize)]
struct KeyFile {
    name: String,
    #[serde(rename = "privateKey")]
    private_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    pub kid: String,
    pub nonce: String,
    pub typ: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub nbf: i64,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uri: Option<String>,
}

impl CdpKey {
    /// Parse a private key: an EC P-256 PEM (SEC1 or PKCS#8), or base64 of an Ed25519 secret (64 bytes whose
    /// first 32 are the seed, or the 32-byte seed alone). Escaped `\n` as found in JSON is accepted.
    ///
    /// # Errors
    /// `NoName` or `BadKey`, saying which forms are accepted; never the key itself.
    pub fn parse(name: &str, secret: &SecretString) -> Result<CdpKey, AuthError> {
        if name.trim().is_empty() {
            return Err(AuthError::NoName);
        }
        let text = secret.expose_secret().trim().replace("\\n", "\n");
        let signing = if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            let key = p256::SecretKey::from_sec1_pem(&text)
                .map_err(|_| AuthError::BadKey("the EC PEM does not parse".into()))?;
            Signing::Es256(key.into())
        } else if text.contains("-----BEGIN PRIVATE KEY-----") {
            let key = p256::SecretKey::from_pkcs8_pem(&text)
                .map_err(|_| AuthError::BadKey("the PKCS#8 PEM is not a P-256 key".into()))?;
            Signing::Es256(key.into())
        } else {
            let bytes =
                STANDARD.decode(text.as_bytes()).map_err(|_| AuthError::BadKey("not PEM and not base64".into()))?;
            let seed: [u8; 32] = match bytes.len() {
                32 | 64 => bytes[..32].try_into().map_err(|_| AuthError::BadKey("bad seed".into()))?,
                other => return Err(AuthError::BadKey(format!("base64 secret is {other} bytes, expected 64 (or 32)"))),
            };
            Signing::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed))
        };
        Ok(CdpKey { name: name.trim().to_string(), signing })
    }

    /// Read a key file: a bare private key (with `name` given), or Coinbase's JSON key file (its `name` is
    /// used when `name` is `None`).
    ///
    /// # Errors
    /// `ReadKey` when the file cannot be read, otherwise as `parse`.
    pub fn from_file(name: Option<&str>, path: &Path) -> Result<CdpKey, AuthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| AuthError::ReadKey { path: path.display().to_string(), reason: error.to_string() })?;
        let text = SecretString::from(text);
        if let Ok(file) = serde_json::from_str::<KeyFile>(text.expose_secret()) {
            return CdpKey::parse(name.unwrap_or(&file.name), &SecretString::from(file.private_key));
        }
        CdpKey::parse(name.ok_or(AuthError::NoName)?, &text)
    }

    /// A fresh ES256 key (the demo and the tests).
    pub fn generate(name: &str) -> CdpKey {
        CdpKey {
            name: name.to_string(),
            signing: Signing::Es256(p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng)),
        }
    }

    /// A fresh Ed25519 key and its base64 secret (64 bytes: seed then public key), as Coinbase hands them out.
    pub fn generate_ed25519(name: &str) -> (CdpKey, SecretString) {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let secret = SecretString::from(STANDARD.encode(key.to_keypair_bytes()));
        (CdpKey { name: name.to_string(), signing: Signing::Ed25519(key) }, secret)
    }

    /// The private key as SEC1 PEM, to write a key file (ES256 keys only).
    pub fn to_pem(&self) -> Option<SecretString> {
        match &self.signing {
            Signing::Es256(key) => {
                let secret = p256::SecretKey::from(key);
                secret.to_sec1_pem(LineEnding::LF).ok().map(|pem| SecretString::from(pem.to_string()))
            }
            Signing::Ed25519(_) => None,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> PublicKey {
        match &self.signing {
            Signing::Es256(key) => PublicKey::Es256(*key.verifying_key()),
            Signing::Ed25519(key) => PublicKey::Ed25519(key.verifying_key()),
        }
    }

    /// A JWT for one request. `uri` is `"<METHOD> <host><path>"` for REST, `None` for WebSocket.
    pub fn jwt(&self, uri: Option<&str>, now: i64) -> String {
        let alg = match self.signing {
            Signing::Es256(_) => "ES256",
            Signing::Ed25519(_) => "EdDSA",
        };
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        let header = Header { alg: alg.into(), kid: self.name.clone(), nonce: hex::encode(nonce), typ: "JWT".into() };
        let claims = Claims {
            sub: self.name.clone(),
            iss: "cdp".into(),
            nbf: now,
            exp: now + JWT_LIFETIME_SECONDS,
            uri: uri.map(str::to_string),
        };
        let encode = |value: &dyn erased::Json| URL_SAFE_NO_PAD.encode(value.to_json());
        let signing_input = format!("{}.{}", encode(&header), encode(&claims));
        let signature = match &self.signing {
            Signing::Es256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(signing_input.as_bytes());
                signature.to_bytes().to_vec()
            }
            Signing::Ed25519(key) => key.sign(signing_input.as_bytes()).to_bytes().to_vec(),
        };
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

mod erased {
    /// Serialise header and claims through one closure.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).expect("JWT header and claims are plain structs that always serialise")
        }
    }
}

impl PublicKey {
    /// Read a public key PEM, or derive it from a private key in any form `CdpKey::parse` accepts.
    ///
    /// # Errors
    /// `BadKey` when neither form parses.
    pub fn parse(text: &str) -> Result<PublicKey, AuthError> {
        if text.contains("-----BEGIN PUBLIC KEY-----") {
            if let Ok(key) = p256::PublicKey::from_public_key_pem(text) {
                return Ok(PublicKey::Es256(key.into()));
            }
            return ed25519_dalek::VerifyingKey::from_public_key_pem(text)
                .map(PublicKey::Ed25519)
                .map_err(|_| AuthError::BadKey("the public key PEM is neither P-256 nor Ed25519".into()));
        }
        CdpKey::parse("any", &SecretString::from(text.to_string())).map(|key| key.public_key())
    }

    /// The public key as PEM.
    pub fn to_pem(&self) -> String {
        match self {
            PublicKey::Es256(key) => p256::PublicKey::from(key).to_public_key_pem(LineEnding::LF).unwrap_or_default(),
            PublicKey::Ed25519(key) => key.to_public_key_pem(LineEnding::LF).unwrap_or_default(),
        }
    }
}

fn decode_part<T: serde::de::DeserializeOwned>(part: &str, what: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| AuthError::Invalid(format!("{what} is not base64url")))?;
    serde_json::from_slice(&bytes).map_err(|_| AuthError::Invalid(format!("{what} is not the expected JSON")))
}

/// Check a token as Coinbase does: known `kid`, matching algorithm and signature, `iss` `cdp`, inside its
/// `nbf`..`exp` window, and (for REST) the `uri` claim naming this request.
///
/// # Errors
/// The first check that fails.
pub fn verify(
    token: &str,
    keys: &HashMap<String, PublicKey>,
    expected_uri: Option<&str>,
    now: i64,
) -> Result<Claims, AuthError> {
    let parts: Vec<&str> = token.split('.').collect();
    let [header_part, claims_part, signature_part] = parts[..] else {
        return Err(AuthError::Invalid("not three dot-separated parts".into()));
    };
    let header: Header = decode_part(header_part, "header")?;
    let claims: Claims = decode_part(claims_part, "claims")?;
    let key = keys.get(&header.kid).ok_or_else(|| AuthError::UnknownKey(header.kid.clone()))?;
    let signature =
        URL_SAFE_NO_PAD.decode(signature_part).map_err(|_| AuthError::Invalid("signature is not base64url".into()))?;
    let signing_input = format!("{header_part}.{claims_part}");
    let valid = match (key, header.alg.as_str()) {
        (PublicKey::Es256(key), "ES256") => p256::ecdsa::Signature::from_slice(&signature)
            .map(|s| key.verify(signing_input.as_bytes(), &s).is_ok())
            .unwrap_or(false),
        (PublicKey::Ed25519(key), "EdDSA") => ed25519_dalek::Signature::from_slice(&signature)
            .map(|s| key.verify(signing_input.as_bytes(), &s).is_ok())
            .unwrap_or(false),
        _ => false,
    };
    if !valid {
        return Err(AuthError::Invalid("bad signature".into()));
    }
    if claims.iss != "cdp" || claims.sub != header.kid {
        return Err(AuthError::Invalid("iss must be cdp and sub the key name".into()));
    }
    if now < claims.nbf - 5 || now >= claims.exp {
        return Err(AuthError::Expired);
    }
    if let Some(expected) = expected_uri {
        if claims.uri.as_deref() != Some(expected) {
            return Err(AuthError::WrongUri {
                expected: expected.into(),
                actual: claims.uri.clone().unwrap_or_default(),
            });
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "organizations/org-1/apiKeys/key-1";
    const URI: &str = "GET api.coinbase.com/api/v3/brokerage/orders/historical/batch";

    fn keys(key: &CdpKey) -> HashMap<String, PublicKey> {
        HashMap::from([(key.name().to_string(), key.public_key())])
    }

    #[test]
    fn an_es256_token_has_coinbases_header_claims_and_a_raw_signature() {
        let key = CdpKey::generate(NAME);
        let token = key.jwt(Some(URI), 1_700_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        let header: Header = decode_part(parts[0], "header").unwrap();
        let claims: Claims = decode_part(parts[1], "claims").unwrap();
        assert_eq!((header.alg.as_str(), header.kid.as_str(), header.typ.as_str()), ("ES256", NAME, "JWT"));
        assert_eq!(header.nonce.len(), 32);
        assert_eq!(
            claims,
            Claims {
                sub: NAME.into(),
                iss: "cdp".into(),
                nbf: 1_700_000_000,
                exp: 1_700_000_120,
                uri: Some(URI.into())
            }
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64, "r || s, not DER");
        assert!(verify(&token, &keys(&key), Some(URI), 1_700_000_060).is_ok());
    }

    #[test]
    fn nonces_differ_between_tokens() {
        let key = CdpKey::generate(NAME);
        assert_ne!(key.jwt(None, 1), key.jwt(None, 1));
    }

    #[test]
    fn a_sec1_pem_round_trips_and_escaped_newlines_are_accepted() {
        let key = CdpKey::generate(NAME);
        let pem = key.to_pem().unwrap();
        let escaped = SecretString::from(pem.expose_secret().replace('\n', "\\n"));
        let parsed = CdpKey::parse(NAME, &escaped).unwrap();
        let token = parsed.jwt(Some(URI), 100);
        assert!(verify(&token, &keys(&key), Some(URI), 100).is_ok(), "same key pair");
    }

    #[test]
    fn ed25519_secrets_sign_eddsa_tokens() {
        let (key, secret) = CdpKey::generate_ed25519(NAME);
        let parsed = CdpKey::parse(NAME, &secret).unwrap();
        let token = parsed.jwt(Some(URI), 100);
        let header: Header = decode_part(token.split('.').next().unwrap(), "header").unwrap();
        assert_eq!(header.alg, "EdDSA");
        assert!(verify(&token, &keys(&key), Some(URI), 100).is_ok());
    }

    #[test]
    fn tokens_are_refused_for_a_wrong_key_expiry_or_uri() {
        let key = CdpKey::generate(NAME);
        let other = CdpKey::generate(NAME);
        let token = key.jwt(Some(URI), 100);
        assert_eq!(verify(&token, &keys(&other), Some(URI), 100), Err(AuthError::Invalid("bad signature".into())));
        assert_eq!(verify(&token, &keys(&key), Some(URI), 220), Err(AuthError::Expired));
        assert!(matches!(
            verify(&token, &keys(&key), Some("GET api.coinbase.com/other"), 100),
            Err(AuthError::WrongUri { .. })
        ));
        assert!(matches!(verify(&token, &HashMap::new(), Some(URI), 100), Err(AuthError::UnknownKey(_))));
        assert!(verify("a.b", &keys(&key), None, 100).is_err());
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        let secret =
            SecretString::from("-----BEGIN EC PRIVATE KEY-----\nTOPSECRET\n-----END EC PRIVATE KEY-----".to_string());
        let error = CdpKey::parse(NAME, &secret).unwrap_err().to_string();
        assert!(!error.contains("TOPSECRET"), "{error}");
        assert!(CdpKey::parse(NAME, &SecretString::from("bm90IGEga2V5".to_string())).is_err());
        assert_eq!(CdpKey::parse(" ", &SecretString::from(String::new())).unwrap_err(), AuthError::NoName);
    }

    #[test]
    fn debug_output_never_shows_the_private_key() {
        let key = CdpKey::generate(NAME);
        let pem = key.to_pem().unwrap();
        let debug = format!("{key:?}");
        assert!(debug.contains("<redacted>") && !debug.contains(pem.expose_secret().lines().nth(1).unwrap()));
    }

    #[test]
    fn public_keys_read_from_pem_or_derive_from_private_keys() {
        let key = CdpKey::generate(NAME);
        let token = key.jwt(None, 100);
        let from_pem = PublicKey::parse(&key.public_key().to_pem()).unwrap();
        let from_private = PublicKey::parse(key.to_pem().unwrap().expose_secret()).unwrap();
        for public in [from_pem, from_private] {
            let keys = HashMap::from([(NAME.to_string(), public)]);
            assert!(verify(&token, &keys, None, 100).is_ok());
        }
    }
}
