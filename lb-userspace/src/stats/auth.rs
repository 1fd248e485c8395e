//! Who may see the stats page: the users file of `stats.auth` (HTTP basic
//! authentication against bcrypt or SHA-crypt hashes), and the CSRF token its admin
//! forms carry.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("cannot read the stats users file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin}:{line}: {message}")]
    Line {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{0}: no user (lines are name:hash)")]
    Empty(String),
}

/// A password hash scheme the users file may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scheme {
    /// `$2a$`, `$2b$`, `$2y$` (`htpasswd -B`).
    Bcrypt,
    /// `$5$` and `$6$` (`mkpasswd -m sha-512`, HAProxy's userlists).
    ShaCrypt,
}

impl Scheme {
    fn of(hash: &str) -> Option<Scheme> {
        ["$2a$", "$2b$", "$2y$"]
            .iter()
            .any(|p| hash.starts_with(p))
            .then_some(Scheme::Bcrypt)
            .or_else(|| {
                ["$5$", "$6$"]
                    .iter()
                    .any(|p| hash.starts_with(p))
                    .then_some(Scheme::ShaCrypt)
            })
    }

    fn verify(self, password: &str, hash: &str) -> bool {
        match self {
            Scheme::Bcrypt => bcrypt::verify(password, hash).unwrap_or(false),
            Scheme::ShaCrypt => {
                use sha_crypt::PasswordVerifier;
                sha_crypt::ShaCrypt::default()
                    .verify_password(password.as_bytes(), hash)
                    .is_ok()
            }
        }
    }
}

/// The users of the stats page. Hashes are slow on purpose (bcrypt: ~0.1 s); a
/// password once verified is remembered as a keyed digest, so that a page refreshing
/// every few seconds does not cost a hash each time. Wrong passwords are never
/// remembered: each costs a full hash.
pub struct Users {
    hashes: HashMap<String, (Scheme, String)>,
    secret: [u8; 32],
    verified: Mutex<HashMap<String, [u8; 32]>>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.hashes.keys().collect();
        names.sort();
        f.debug_struct("Users").field("names", &names).finish()
    }
}

impl Users {
    pub fn load(path: &Path) -> Result<Users, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Io {
            path: path.to_owned(),
            source,
        })?;
        Users::parse(&text, &path.display().to_string())
    }

    /// `name:hash` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str, origin: &str) -> Result<Users, UsersError> {
        let error = |line: usize, message: String| UsersError::Line {
            origin: origin.to_owned(),
            line: line + 1,
            message,
        };
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                return Err(error(n, "not name:hash".into()));
            };
            if name.is_empty() {
                return Err(error(n, "the name is empty".into()));
            }
            let Some(scheme) = Scheme::of(hash) else {
                return Err(error(
                    n,
                    format!(
                        "the password of {name:?} is not a bcrypt ($2b$, htpasswd -B) or SHA-crypt ($6$, mkpasswd -m sha-512) hash; plain text is refused"
                    ),
                ));
            };
            if hashes
                .insert(name.to_owned(), (scheme, hash.to_owned()))
                .is_some()
            {
                return Err(error(n, format!("user {name:?} is listed twice")));
            }
        }
        if hashes.is_empty() {
            return Err(UsersError::Empty(origin.to_owned()));
        }
        Ok(Users {
            hashes,
            secret: random_secret(),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The user an `Authorization` header authenticates, if any (slow: may hash).
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<String> {
        let (name, password) = basic_credentials(authorization?)?;
        let (scheme, hash) = self.hashes.get(&name)?;
        let digest = keyed_digest(&self.secret, &[name.as_bytes(), password.as_bytes()]);
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .is_some_and(|known| bool::from(known.ct_eq(&digest)));
        if remembered || scheme.verify(&password, hash) {
            self.verified
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), digest);
            return Some(name);
        }
        None
    }
}

/// The user and password of `Basic <base64(user:password)>`.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (name, password) = decoded.split_once(':')?;
    Some((name.to_owned(), password.to_owned()))
}

/// The admin forms' token: a digest of the user under a secret of this agent's run, so
/// that another site cannot forge a form (it cannot read the page to learn it).
pub struct Csrf {
    secret: [u8; 32],
}

impl Default for Csrf {
    fn default() -> Self {
        Csrf {
            secret: random_secret(),
        }
    }
}

impl Csrf {
    pub fn token(&self, user: &str) -> String {
        keyed_digest(&self.secret, &[b"csrf", user.as_bytes()])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn check(&self, user: &str, token: &str) -> bool {
        bool::from(self.token(user).as_bytes().ct_eq(token.as_bytes()))
    }
}

fn keyed_digest(secret: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(secret);
    for part in parts {
        // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    // The kernel's generator does not fail once booted; a zero secret would be
    // guessable, so failing here is not an option to ignore.
    getrandom::getrandom(&mut secret).expect("the kernel's random generator");
    secret
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `admin`'s password is `s3cret` (bcrypt, cost 4 to keep tests fast).
    pub(crate) fn users() -> Users {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        Users::parse(&format!("# stats users\n\nadmin:{hash}\n"), "users").unwrap()
    }

    pub(crate) fn basic(user: &str, password: &str) -> String {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
    }

    #[test]
    fn basic_auth_missing_wrong_and_right() {
        let users = users();
        assert_eq!(users.authenticate(None), None);
        assert_eq!(users.authenticate(Some(&basic("admin", "wrong"))), None);
        assert_eq!(users.authenticate(Some(&basic("nobody", "s3cret"))), None);
        assert_eq!(users.authenticate(Some("Bearer s3cret")), None);
        assert_eq!(users.authenticate(Some("Basic !!!")), None);
        assert_eq!(
            users
                .authenticate(Some(&basic("admin", "s3cret")))
                .as_deref(),
            Some("admin")
        );
        // Remembered, and still only for the right password.
        assert_eq!(
            users
                .authenticate(Some(&basic("admin", "s3cret")))
                .as_deref(),
            Some("admin")
        );
        assert_eq!(users.authenticate(Some(&basic("admin", "s3cre"))), None);
    }

    #[test]
    fn sha_crypt_hashes_as_haproxy_userlists_have() {
        // `mkpasswd -m sha-512 -S saltsaltsalt s3cret`
        use sha_crypt::PasswordHasher;
        let hash = sha_crypt::ShaCrypt::default()
            .hash_password_with_salt(b"s3cret", b"saltsaltsalt")
            .unwrap()
            .to_string();
        assert!(hash.starts_with("$6$"), "{hash}");
        let users = Users::parse(&format!("ops:{hash}\n"), "users").unwrap();
        assert!(users.authenticate(Some(&basic("ops", "s3cret"))).is_some());
        assert!(users.authenticate(Some(&basic("ops", "s3cret!"))).is_none());
    }

    #[test]
    fn plain_text_and_bad_lines_are_refused() {
        let error = |text: &str| {
            Users::parse(text, "/etc/weir/users")
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            error("admin:hunter2\n"),
            "/etc/weir/users:1: the password of \"admin\" is not a bcrypt ($2b$, htpasswd -B) or SHA-crypt ($6$, mkpasswd -m sha-512) hash; plain text is refused"
        );
        assert_eq!(error("# x\nadmin\n"), "/etc/weir/users:2: not name:hash");
        assert_eq!(
            error("a:$2b$04$x\na:$2b$04$y\n"),
            "/etc/weir/users:2: user \"a\" is listed twice"
        );
        assert_eq!(
            error("# nobody\n"),
            "/etc/weir/users: no user (lines are name:hash)"
        );
    }

    #[test]
    fn csrf_tokens_are_per_user_and_per_run() {
        let csrf = Csrf::default();
        let token = csrf.token("admin");
        assert_eq!(token.len(), 64);
        assert!(csrf.check("admin", &token));
        assert!(!csrf.check("admin", ""));
        assert!(!csrf.check("admin", &token[1..]));
        assert!(!csrf.check("other", &token));
        assert!(!Csrf::default().check("admin", &token));
    }
}
