//! Which runners a worker may talk to: an allowlist of runner kinds and of endpoint URL
//! prefixes, so a misconfiguration (or a hostile config file) cannot point the worker at an
//! arbitrary service.

use crate::RunnerError;

/// Allowlists. Empty lists allow nothing; [`SandboxPolicy::default`] allows every real runner
/// kind on loopback only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPolicy {
    /// Allowed runner kinds.
    pub kinds: Vec<String>,
    /// Allowed URL prefixes (compared after lower-casing scheme and host).
    pub url_prefixes: Vec<String>,
}

impl Default for SandboxPolicy {
    fn default() -> Self {
        Self {
            kinds: ["llama-cpp", "openai", "ollama", "http"]
                .map(String::from)
                .to_vec(),
            url_prefixes: vec![
                "http://127.0.0.1:".into(),
                "http://localhost:".into(),
                "http://[::1]:".into(),
            ],
        }
    }
}

impl SandboxPolicy {
    /// Check `kind` and `url` against the allowlists.
    pub fn check(&self, kind: &str, url: &str) -> Result<(), RunnerError> {
        if !self.kinds.iter().any(|k| k == kind) {
            return Err(RunnerError::Refused(format!(
                "runner kind `{kind}` is not in the allowlist ({})",
                self.kinds.join(", ")
            )));
        }
        if kind == "mock" {
            return Ok(());
        }
        let lower = url.to_ascii_lowercase();
        if lower.contains('@') {
            return Err(RunnerError::Refused(
                "runner URL must not carry credentials".into(),
            ));
        }
        if !self
            .url_prefixes
            .iter()
            .any(|p| lower.starts_with(&p.to_ascii_lowercase()))
        {
            return Err(RunnerError::Refused(format!(
                "runner URL is outside the allowed prefixes ({})",
                self.url_prefixes.join(", ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_allows_loopback_runners_only() {
        let p = SandboxPolicy::default();
        assert!(p.check("llama-cpp", "http://127.0.0.1:8080").is_ok());
        assert!(p.check("openai", "http://LOCALHOST:8000/").is_ok());
        assert!(p.check("llama-cpp", "http://10.0.0.5:8080").is_err());
        assert!(
            p.check("llama-cpp", "http://127.0.0.1.evil.com:80")
                .is_err(),
            "prefix includes the port colon"
        );
        assert!(p.check("llama-cpp", "http://user:pw@127.0.0.1:1").is_err());
        assert!(
            p.check("mock", "").is_err(),
            "mock is for tests: not allowed by default"
        );
        assert!(p.check("exec", "http://127.0.0.1:1").is_err());
        let tests = SandboxPolicy {
            kinds: vec!["mock".into()],
            url_prefixes: vec![],
        };
        assert!(tests.check("mock", "").is_ok());
    }
}
