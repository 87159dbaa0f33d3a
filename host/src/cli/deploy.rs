//! `sluice transform deploy | rollback`: the admin API's client.
//!
//! `deploy` sends the component to `PUT /transforms/NAME`. Without vectors
//! or config the body is the component itself (`application/wasm`); with
//! them it is the JSON form (`{"module": base64, "vectors": …, "config":
//! …}`). The bearer token comes from an environment variable (never a
//! command-line argument, which other users can read in `ps`). The server's
//! JSON answer is printed as is; the exit code is 0 for a 2xx, 1 otherwise,
//! so a refused module fails a deploy script.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;

/// Where the test vectors of a deploy come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vectors {
    /// `MODULE.vectors.jsonl` if it exists.
    Sidecar,
    /// This file.
    File(PathBuf),
    /// None.
    None,
}

/// `sluice transform deploy` arguments.
#[derive(Debug, Clone)]
pub struct DeployArgs {
    /// The component file.
    pub module: PathBuf,
    /// The pipeline.
    pub pipeline: String,
    /// The admin API base URL.
    pub admin: String,
    /// The variable holding the token.
    pub token_env: String,
    /// Test vectors.
    pub vectors: Vectors,
    /// Config replacing the running one (empty: keep it).
    pub config: Vec<(String, String)>,
}

/// Validation (compile, vectors) may take a while on a small box.
const TIMEOUT: Duration = Duration::from_secs(300);

fn url(admin: &str, path: &str) -> String {
    format!("{}{path}", admin.trim_end_matches('/'))
}

fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

fn token(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|t| !t.is_empty())
}

fn read_vectors(module: &Path, vectors: &Vectors) -> anyhow::Result<Option<String>> {
    let path = match vectors {
        Vectors::None => return Ok(None),
        Vectors::File(path) => path.clone(),
        Vectors::Sidecar => {
            let path = crate::hotswap::vectors_path(module);
            if !path.is_file() {
                return Ok(None);
            }
            path
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read test vectors {}", path.display()))?;
    // Refuse a broken file here rather than after the upload.
    crate::hotswap::vectors::parse(&text)
        .with_context(|| format!("test vectors {}", path.display()))?;
    eprintln!("test vectors: {}", path.display());
    Ok(Some(text))
}

/// Sends `request`, prints the answer, returns the exit code.
async fn send(request: reqwest::RequestBuilder, token_env: &str) -> anyhow::Result<i32> {
    let request = match token(token_env) {
        Some(token) => request.bearer_auth(token),
        None => {
            eprintln!("note: ${token_env} is not set; sending no bearer token");
            request
        }
    };
    let response = request.send().await.context("admin API request failed")?;
    let status = response.status();
    let body = response
        .text()
        .await
        .context("cannot read the admin API's answer")?;
    println!("{}", body.trim_end());
    if status.is_success() {
        Ok(0)
    } else {
        eprintln!("error: the host answered {status}");
        Ok(1)
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `sluice transform deploy`.
pub fn deploy(args: &DeployArgs) -> anyhow::Result<i32> {
    let wasm = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}", args.module.display()))?;
    let vectors = read_vectors(&args.module, &args.vectors)?;
    let target = url(
        &args.admin,
        &format!("/transforms/{}", encode_segment(&args.pipeline)),
    );
    let request = client()?.put(target);
    let request = if vectors.is_none() && args.config.is_empty() {
        request
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(wasm)
    } else {
        let mut body = serde_json::json!({
            "module": base64::engine::general_purpose::STANDARD.encode(&wasm),
        });
        if let Some(vectors) = vectors {
            body["vectors"] = vectors.into();
        }
        if !args.config.is_empty() {
            let config: serde_json::Map<String, serde_json::Value> = args
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            body["config"] = config.into();
        }
        request
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
    };
    runtime()?.block_on(send(request, &args.token_env))
}

/// `sluice transform rollback`.
pub fn rollback(pipeline: &str, admin: &str, token_env: &str) -> anyhow::Result<i32> {
    let target = url(
        admin,
        &format!("/transforms/{}/rollback", encode_segment(pipeline)),
    );
    let request = client()?.post(target);
    runtime()?.block_on(send(request, token_env))
}

/// Pipeline names are letters, digits, `-`, `_`, `.`; anything else is
/// percent-encoded so a typo cannot change the path.
fn encode_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_segments() {
        assert_eq!(url("http://h:1/", "/x"), "http://h:1/x");
        assert_eq!(encode_segment("gw-1.a_b"), "gw-1.a_b");
        assert_eq!(encode_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn sidecar_vectors_are_checked_before_upload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let module = dir.path().join("gw.wasm");
        assert_eq!(
            read_vectors(&module, &Vectors::Sidecar).expect("none"),
            None
        );
        std::fs::write(dir.path().join("gw.vectors.jsonl"), "{\"input\":\"1\"}\n").expect("write");
        let err = read_vectors(&module, &Vectors::Sidecar).expect_err("no expect");
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        std::fs::write(
            dir.path().join("gw.vectors.jsonl"),
            "{\"input\":\"1\",\"expect\":{\"error\":\"any\"}}\n",
        )
        .expect("write");
        assert!(
            read_vectors(&module, &Vectors::Sidecar)
                .expect("ok")
                .is_some()
        );
        assert_eq!(read_vectors(&module, &Vectors::None).expect("none"), None);
    }
}
