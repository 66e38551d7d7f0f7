//! The docker credential helper protocol: `docker-credential-NAME get|store|erase|list`, one
//! request on stdin, one answer on stdout (docker/docker-credential-helpers). `get` reads the
//! server address and answers `{"ServerURL","Username","Secret"}`; a helper that does not
//! know the server exits non-zero saying "credentials not found". `store` reads that JSON
//! object; `erase` reads the address. A username of `<token>` marks the secret as an identity
//! token. Runs the helper found on `PATH`, with a deadline, and never logs a secret.
//!
//! Uses `auth` (the credential types) only; called by `creds`.

use super::auth::{Credentials, Secret};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `Username` a helper stores for an identity token (docker's `tokenUsername`).
pub const TOKEN_USERNAME: &str = "<token>";

/// How long a helper may take to answer (it may ask a keyring or an agent).
const HELPER_DEADLINE: Duration = Duration::from_secs(60);

/// What went wrong talking to a helper; every message names the helper program.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("credential helper {program}: could not run it: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("credential helper {program} {action}: exited with {status}: {message}")]
    Failed {
        program: String,
        action: &'static str,
        status: String,
        message: String,
    },
    #[error("credential helper {program} {action}: no answer within {secs} s")]
    Timeout {
        program: String,
        action: &'static str,
        secs: u64,
    },
    #[error("credential helper {program} get: answer is not the protocol's JSON: {source}")]
    BadAnswer {
        program: String,
        #[source]
        source: serde_json::Error,
    },
}

#[derive(serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Wire {
    #[serde(rename = "ServerURL", default)]
    server_url: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    secret: String,
}

/// One credential helper, `docker-credential-<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Helper {
    program: String,
}

impl Helper {
    pub fn new(name: &str) -> Helper {
        Helper {
            program: format!("docker-credential-{name}"),
        }
    }

    pub fn program(&self) -> &str {
        &self.program
    }

    /// Credentials for `server`, `None` when the helper has none.
    pub fn get(&self, server: &str) -> Result<Option<Credentials>, HelperError> {
        let (ok, out, err) = self.run("get", server.as_bytes())?;
        if !ok {
            let text = format!("{} {}", String::from_utf8_lossy(&out), err);
            if text.to_ascii_lowercase().contains("credentials not found") {
                return Ok(None);
            }
            return Err(self.failed("get", "non-zero", &text));
        }
        let w: Wire = serde_json::from_slice(&out).map_err(|source| HelperError::BadAnswer {
            program: self.program.clone(),
            source,
        })?;
        if w.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(if w.username == TOKEN_USERNAME {
            Credentials::identity_token(String::new(), Secret::new(w.secret))
        } else {
            Credentials::basic(w.username, Secret::new(w.secret))
        }))
    }

    /// Store credentials for `server` (an identity token as username `<token>`).
    pub fn store(&self, server: &str, creds: &Credentials) -> Result<(), HelperError> {
        let w = match &creds.identity_token {
            Some(t) => Wire {
                server_url: server.to_string(),
                username: TOKEN_USERNAME.to_string(),
                secret: t.expose().to_string(),
            },
            None => Wire {
                server_url: server.to_string(),
                username: creds.username.clone(),
                secret: creds.password.expose().to_string(),
            },
        };
        // Serialising three strings cannot fail.
        let body = serde_json::to_vec(&w).unwrap_or_default();
        let (ok, out, err) = self.run("store", &body)?;
        if !ok {
            let text = format!("{} {}", String::from_utf8_lossy(&out), err);
            return Err(self.failed("store", "non-zero", &text));
        }
        Ok(())
    }

    /// Forget `server`; `Ok(false)` when the helper had nothing for it.
    pub fn erase(&self, server: &str) -> Result<bool, HelperError> {
        let (ok, out, err) = self.run("erase", server.as_bytes())?;
        if ok {
            return Ok(true);
        }
        let text = format!("{} {}", String::from_utf8_lossy(&out), err);
        if text.to_ascii_lowercase().contains("not found") {
            return Ok(false);
        }
        Err(self.failed("erase", "non-zero", &text))
    }

    fn failed(&self, action: &'static str, status: &str, text: &str) -> HelperError {
        HelperError::Failed {
            program: self.program.clone(),
            action,
            status: status.to_string(),
            message: text.trim().chars().take(300).collect(),
        }
    }

    /// Run `program action` with `input` on stdin: (success, stdout, stderr).
    fn run(
        &self,
        action: &'static str,
        input: &[u8],
    ) -> Result<(bool, Vec<u8>, String), HelperError> {
        let spawn_err = |source| HelperError::Spawn {
            program: self.program.clone(),
            source,
        };
        let mut child = Command::new(&self.program)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Some(mut stdin) = child.stdin.take() {
            // A helper that exits without reading gives EPIPE: its exit status tells.
            let _ = stdin.write_all(input);
        }
        let drain = |pipe: Option<Box<dyn Read + Send>>, limit: u64| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(p) = pipe {
                    let _ = p.take(limit).read_to_end(&mut buf);
                }
                buf
            })
        };
        let out_reader = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            1 << 20,
        );
        let err_reader = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            1 << 16,
        );
        let deadline = Instant::now() + HELPER_DEADLINE;
        let status = loop {
            match child.try_wait().map_err(spawn_err)? {
                Some(st) => break st,
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HelperError::Timeout {
                        program: self.program.clone(),
                        action,
                        secs: HELPER_DEADLINE.as_secs(),
                    });
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        };
        let out = out_reader.join().unwrap_or_default();
        let err = err_reader.join().unwrap_or_default();
        Ok((
            status.success(),
            out,
            String::from_utf8_lossy(&err).into_owned(),
        ))
    }
}
